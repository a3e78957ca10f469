//! The dashboard through `oneshot`: sign-in and its cookie, every page as
//! an admin and as a reader, forms refused without the session's key or
//! without the role, escaping, and what every answer promises the browser
//! (no other origin, no caching, the asset budget).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

use super::{router, UiState, ASSETS};
use crate::domain::{GenerationId, MacAddr};
use crate::http::api::tests::Harness;
use crate::images::{ArtifactRef, Digest, Manifest};
use crate::inventory::ScriptRequest;

struct Ui {
    h: Harness,
    app: Router,
    /// Two generations of `worker`, `default` pointing at the first.
    first: GenerationId,
    second: GenerationId,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

fn manifest(cmdline: &str) -> Manifest {
    let artifact = |name: &str| ArtifactRef {
        name: name.into(),
        digest: Digest::of(name.as_bytes()),
        size: 1000,
    };
    Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(artifact("vmlinuz")),
        initrds: vec![artifact("initrd.img")],
        rootfs: None,
        cmdline: cmdline.into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    }
}

impl Ui {
    /// Three machines that booted and confirmed `worker` 1; one of them has
    /// a hostile hostname.
    async fn new() -> Self {
        let h = Harness::new().await;
        let inv = &h.state.inventory;
        let mut ids = Vec::new();
        for cmdline in ["console=ttyS0", "console=ttyS0 quiet"] {
            let m = manifest(cmdline);
            ids.push(
                inv.add_generation("worker", m.digest(), m, None)
                    .await
                    .unwrap()
                    .id
                    .clone(),
            );
        }
        inv.set_group_generation("default", &ids[0]).await.unwrap();
        for mac in [
            "52:54:00:00:00:01",
            "52:54:00:00:00:02",
            "52:54:00:00:00:03",
        ] {
            let mac: MacAddr = mac.parse().unwrap();
            let plan = inv.begin_boot(
                mac,
                &ScriptRequest {
                    mac: Some(mac),
                    buildarch: Some(crate::domain::Cpu::X86_64),
                    ..Default::default()
                },
            );
            inv.settle().await;
            inv.confirm(&plan.token).await.unwrap();
        }
        let mac: MacAddr = "52:54:00:00:00:03".parse().unwrap();
        let change = crate::fleet::changes::MachineChange {
            hostname: Some(Some("<script>alert(1)</script>".into())),
            ..Default::default()
        };
        inv.update_machine(mac, change).await.unwrap();
        let api = crate::http::api::router(h.state.clone());
        let state = UiState::new(
            api,
            h.state.tokens.clone(),
            Arc::new(vec!["http on test".into()]),
        );
        Self {
            app: router(state),
            first: ids[0].clone(),
            second: ids[1].clone(),
            h,
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        form: Option<&str>,
    ) -> Page {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "text/html");
        if let Some(t) = token {
            req = req.header(header::COOKIE, format!("other=1; ironboot_ui={t}"));
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(f.to_string())
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .unwrap();
        Page {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Page {
        self.send(Method::GET, uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, form: &str) -> Page {
        self.send(Method::POST, uri, Some(token), Some(form)).await
    }

    fn key(token: &str) -> String {
        super::session::Session::key_for(token)
    }
}

#[tokio::test]
async fn signing_in_takes_a_live_token_and_keeps_it_in_a_strict_httponly_cookie() {
    let ui = Ui::new().await;
    let page = ui.send(Method::GET, "/ui/", None, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers[header::LOCATION], "/ui/login");
    let form = ui.send(Method::GET, "/ui/login", None, None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text.contains(r#"<label for="token">"#));

    for bad in [
        "token=nope",
        "token=",
        "token=a%3Bb%3Dc",
        &format!("token={}x", ui.h.admin),
    ] {
        let page = ui.send(Method::POST, "/ui/login", None, Some(bad)).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(page.headers.get(header::SET_COOKIE).is_none(), "{bad}");
        assert!(page.text.contains("not a live API token"), "{bad}");
    }
    let page = ui
        .send(
            Method::POST,
            "/ui/login",
            None,
            Some(&format!("token={}", ui.h.reader)),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert_eq!(
        cookie,
        format!(
            "ironboot_ui={}; Path=/ui; HttpOnly; SameSite=Strict",
            ui.h.reader
        )
    );

    // A revoked token is signed out at its next click.
    let fleet = ui.get("/ui/", &ui.h.reader).await;
    assert_eq!(fleet.status, StatusCode::OK);
    let id = crate::auth::Tokens::list(&ui.h.state.store)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "viewer")
        .unwrap()
        .id;
    ui.h.state
        .tokens
        .revoke(&ui.h.state.store, id)
        .await
        .unwrap();
    let fleet = ui.get("/ui/", &ui.h.reader).await;
    assert_eq!(fleet.status, StatusCode::SEE_OTHER);
    // A fragment or a stream is told 401, not handed the sign-in page.
    let frag = ui
        .send(
            Method::GET,
            "/ui/machines/52:54:00:00:00:01/timeline",
            None,
            None,
        )
        .await;
    assert_eq!(frag.status, StatusCode::SEE_OTHER);
    let req = Request::get("/ui/live").body(Body::empty()).unwrap();
    let res = ui.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_page_renders_for_a_reader_with_no_admin_control_and_escapes_what_it_shows() {
    let ui = Ui::new().await;
    let reader = ui.h.reader.clone();
    let pages = [
        "/ui/",
        "/ui/?state=confirmed&group=default",
        "/ui/machines/52:54:00:00:00:03",
        "/ui/machines/52:54:00:00:00:03/timeline",
        "/ui/groups",
        "/ui/groups/default",
        "/ui/streams/worker",
        "/ui/rollouts",
        "/ui/watchdog",
        "/ui/events",
        "/ui/events?step=boot",
        "/ui/explain",
        "/ui/explain?mac=52:54:00:00:00:01",
    ];
    for uri in pages {
        let page = ui.get(uri, &reader).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.text);
        for admin_only in [
            "<form method=\"post\" action=\"/ui/rollouts\"",
            "Move the pointer",
            "Pause",
            "Clear:",
        ] {
            assert!(
                !page.text.contains(admin_only),
                "{uri} shows {admin_only} to a reader"
            );
        }
        assert!(
            !page.text.contains("<script>alert"),
            "{uri} did not escape a hostname"
        );
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{uri}");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store", "{uri}");
    }
    let machine = ui.get("/ui/machines/52:54:00:00:00:03", &reader).await;
    assert!(
        machine
            .text
            .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{}",
        machine.text
    );
    assert!(
        machine.text.contains("Boot 3 ·"),
        "the timeline shows its boots: {}",
        machine.text
    );
    let fleet = ui.get("/ui/", &reader).await;
    assert!(
        fleet.text.contains("3 machines running a generation"),
        "{}",
        fleet.text
    );
    assert!(
        fleet.text.contains(r#"<meter min="0" max="3" value="3""#),
        "{}",
        fleet.text
    );
}

#[tokio::test]
async fn filters_reach_the_api_and_its_refusals_are_shown_beside_the_form() {
    let ui = Ui::new().await;
    let admin = ui.h.admin.clone();
    let page = ui.get("/ui/?state=booting", &admin).await;
    assert!(page.text.contains("No machine matches"));
    let page = ui.get("/ui/?selector=role%20in%20(", &admin).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("role=\"alert\""), "{}", page.text);
    let page = ui.get("/ui/?generation=1&stream=worker", &admin).await;
    assert_eq!(page.text.matches("<a href=\"/ui/machines/").count(), 3);
    let page = ui.get("/ui/machines/not-a-mac", &admin).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    let page = ui.get("/ui/machines/52:54:00:00:09:99", &admin).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    // A name cannot reach another API path: it stays one segment.
    let page = ui.get("/ui/groups/..%2F..%2Ftokens", &admin).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.text);
    assert!(
        page.text.contains("does not exist (no_such_group)"),
        "{}",
        page.text
    );
}

#[tokio::test]
async fn forms_need_the_sessions_key_and_the_apis_admin_role() {
    let ui = Ui::new().await;
    let (admin, reader) = (ui.h.admin.clone(), ui.h.reader.clone());
    let pointer = format!("generation=worker%3A{}", ui.second.number);

    // No key, another session's key: refused before the API.
    for form in [
        pointer.clone(),
        format!("{pointer}&form_key={}", Ui::key(&reader)),
    ] {
        let page = ui
            .post("/ui/groups/default/generation", &admin, &form)
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{form}");
        assert!(page
            .text
            .contains("did not come from your dashboard session"));
    }
    // A reader's own key passes the form check; the API refuses the role.
    let forged = format!("{pointer}&form_key={}", Ui::key(&reader));
    let page = ui
        .post("/ui/groups/default/generation", &reader, &forged)
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.text);
    let default = ui.h.state.inventory.group("default").unwrap();
    assert_eq!(default.pointer.as_ref(), Some(&ui.first), "nothing moved");

    // The admin's form moves it, through the API.
    let form = format!("{pointer}&form_key={}", Ui::key(&admin));
    let page = ui
        .post("/ui/groups/default/generation", &admin, &form)
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let default = ui.h.state.inventory.group("default").unwrap();
    assert_eq!(default.pointer.as_ref(), Some(&ui.second));
    let page = ui.get("/ui/groups/default", &admin).await;
    assert!(page.text.contains("Move the pointer"));
}

#[tokio::test]
async fn a_rollout_is_started_paused_resumed_and_aborted_from_its_page() {
    let ui = Ui::new().await;
    let admin = ui.h.admin.clone();
    let key = Ui::key(&admin);
    let form = format!(
        "form_key={key}&group=default&stream=worker&to={}&strategy=canary&canary=1&steps=100%25&timeout=10m&rollback=yes",
        ui.second.number
    );
    let page = ui.post("/ui/rollouts", &admin, &form).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let at = page.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(at.starts_with("/ui/rollouts/"));
    let page = ui.get(&at, &admin).await;
    assert!(
        page.text.contains(r#"id="rollout-state">running<"#),
        "{}",
        page.text
    );
    assert!(page.text.contains("(canary)"));

    // A reader sees it and cannot pause it.
    let reader = ui.h.reader.clone();
    let page = ui.get(&at, &reader).await;
    assert!(!page.text.contains("Pause"));
    let page = ui
        .post(
            &format!("{at}/pause"),
            &reader,
            &format!("form_key={}", Ui::key(&reader)),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    for (verb, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("abort", "aborted"),
    ] {
        let page = ui
            .post(
                &format!("{at}/{verb}"),
                &admin,
                &format!("form_key={key}&reason=by+test"),
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{verb}: {}", page.text);
        let body = ui.get(&format!("{at}/body"), &admin).await;
        assert!(
            body.text.contains(&format!(">{state}<")),
            "{verb}: {}",
            body.text
        );
    }
    // The API's refusal (pausing an aborted rollout) is shown as such.
    let page = ui
        .post(&format!("{at}/pause"), &admin, &format!("form_key={key}"))
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.text);
    let page = ui
        .post(&format!("{at}/explode"), &admin, &format!("form_key={key}"))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    // A start the API refuses says why.
    let page = ui
        .post(
            "/ui/rollouts",
            &admin,
            &format!("form_key={key}&group=default&stream=worker&to=x"),
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("is not a number"));
}

#[tokio::test]
async fn assets_are_embedded_small_and_name_no_other_origin() {
    let ui = Ui::new().await;
    let total: usize = ASSETS.iter().map(|(_, _, text)| text.len()).sum();
    assert!(total < 300 * 1024, "{total} bytes of assets");
    for (name, mime, text) in ASSETS {
        let page = ui
            .send(Method::GET, &format!("/ui/assets/{name}"), None, None)
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.headers[header::CONTENT_TYPE], *mime);
        assert_eq!(page.text, *text);
        assert!(
            !text.contains("http:") && !text.contains("https:"),
            "{name}"
        );
    }
    for (name, text) in super::pages::TEMPLATES {
        assert!(
            !text.contains("http:") && !text.contains("https:") && !text.contains("src=\"//"),
            "{name}"
        );
        assert!(
            !text.contains("style=\"") && !text.contains("<script>"),
            "{name}: inline code the CSP refuses"
        );
    }
    let page = ui
        .send(Method::GET, "/ui/assets/../../etc/passwd", None, None)
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
}
