//! Machines through the API: filters, paging, updates with If-Match,
//! delete with and without purge.

use axum::http::{header, Method, StatusCode};
use serde_json::json;

use super::super::tests::{assert_error, Harness};
use crate::images::{ArtifactRef, Digest, Manifest};

fn live() -> Manifest {
    let a = ArtifactRef {
        name: "vmlinuz".into(),
        digest: Digest::of(b"k"),
        size: 1,
    };
    Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(a.clone()),
        initrds: vec![a],
        rootfs: None,
        cmdline: String::new(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    }
}

fn macs(a: &super::super::tests::Answer) -> Vec<String> {
    a.body["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mac"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn list_filters_and_pages_in_mac_order() {
    let h = Harness::new().await;
    for i in 1..=5 {
        h.machine(&format!("52:54:00:00:00:0{i}")).await;
    }
    let admin = h.admin.clone();
    for (mac, labels) in [
        ("52:54:00:00:00:01", json!({ "role": "db", "rack": "r1" })),
        ("52:54:00:00:00:02", json!({ "role": "web", "rack": "r1" })),
        ("52:54:00:00:00:03", json!({ "role": "db", "rack": "r2" })),
    ] {
        let a = h
            .call(
                Method::PATCH,
                &format!("/api/v1/machines/{mac}"),
                Some(&admin),
                Some(json!({ "labels": labels })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let a = h
        .call(
            Method::PATCH,
            "/api/v1/machines/52:54:00:00:00:05",
            Some(&admin),
            Some(json!({ "kind": "switch" })),
            &[],
        )
        .await;
    assert_eq!(a.body["kind"], "switch");

    let all = h.get("/api/v1/machines").await;
    assert_eq!(macs(&all).len(), 5);
    assert!(all.body["next"].is_null());
    let m = &all.body["machines"][0];
    assert_eq!(m["state"], "new", "served nothing yet: {m}");
    assert_eq!(m["cpu"], "x86_64");
    assert_eq!(m["group"], "default");

    let cases: &[(&str, &[&str])] = &[
        ("selector=role%3Ddb", &["01", "03"]),
        ("selector=role%3Ddb,rack%3Dr2", &["03"]),
        ("selector=rack%20in%20(r1,r2),role!%3Ddb", &["02"]),
        ("selector=!role", &["04", "05"]),
        ("selector=role%3Dweb%20%7C%7C%20rack%3Dr2", &["02", "03"]),
        ("kind=switch", &["05"]),
        ("kind=server&selector=role", &["01", "02", "03"]),
        ("arch=x86_64", &["01", "02", "03", "04", "05"]),
        ("arch=arm64", &[]),
        ("group=default&state=new", &["01", "02", "03", "04", "05"]),
        ("state=confirmed", &[]),
        ("stream=worker", &[]),
        ("seen_since=0", &["01", "02", "03", "04", "05"]),
        ("seen_before=2000-01-01T00:00:00Z", &[]),
    ];
    for (query, want) in cases {
        let a = h.get(&format!("/api/v1/machines?{query}")).await;
        assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.body);
        let want: Vec<String> = want.iter().map(|s| format!("52:54:00:00:00:{s}")).collect();
        assert_eq!(macs(&a), want, "{query}");
    }

    // Pages of two: 01 02 | 03 04 | 05.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/machines?limit=2".to_string();
    for _ in 0..5 {
        let a = h.get(&uri).await;
        seen.extend(macs(&a));
        match a.body["next"].as_str() {
            Some(next) => uri = format!("/api/v1/machines?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, macs(&all));

    for (query, field) in [
        ("selector=role%3D", "selector"),
        ("kind=router", "kind"),
        ("seen_since=yesterday", "seen_since"),
        ("cursor=zzz", "cursor"),
    ] {
        let a = h.get(&format!("/api/v1/machines?{query}")).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
        assert_eq!(a.body["error"]["field"], field, "{query}");
    }
    let a = h.get("/api/v1/machines?state=sleeping").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
    let a = h.get("/api/v1/machines?colour=red").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid");
}

/// Pages of a filtered list read in chunks (seven rows under test): each
/// filter, walked page by page, gives exactly the matching machines once,
/// in MAC order.
#[tokio::test]
async fn filtered_pages_cross_chunks_and_miss_nothing() {
    let h = Harness::new().await;
    let admin = h.admin.clone();
    let mut all = Vec::new();
    for i in 0..40u8 {
        let mac = format!("52:54:00:00:01:{i:02x}");
        h.machine(&mac).await;
        let labels = json!({ "rack": format!("r{}", i % 4) });
        let a = h
            .call(
                Method::PATCH,
                &format!("/api/v1/machines/{mac}"),
                Some(&admin),
                Some(json!({ "labels": labels })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        all.push((i, mac));
    }
    type Wanted = fn(u8) -> bool;
    let cases: &[(&str, Wanted)] = &[
        ("selector=rack%3Dr1", |i| i % 4 == 1),
        ("selector=rack%20in%20(r0,r3)", |i| i % 4 == 0 || i % 4 == 3),
        ("selector=rack%3Dr2&arch=x86_64", |i| i % 4 == 2),
        ("selector=rack%3Dr9", |_| false),
        ("arch=x86_64", |_| true),
        ("arch=bios", |_| false),
        ("state=new", |_| true),
    ];
    for (filter, wanted) in cases {
        for limit in [1, 3, 8, 100] {
            let mut seen = Vec::new();
            let mut uri = format!("/api/v1/machines?limit={limit}&{filter}");
            for _ in 0..50 {
                let a = h.get(&uri).await;
                assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
                let page = macs(&a);
                assert!(page.len() <= limit, "{uri}");
                seen.extend(page);
                match a.body["next"].as_str() {
                    Some(next) => {
                        uri = format!("/api/v1/machines?limit={limit}&{filter}&cursor={next}")
                    }
                    None => break,
                }
            }
            let want: Vec<String> = all
                .iter()
                .filter(|(i, _)| wanted(*i))
                .map(|(_, mac)| mac.clone())
                .collect();
            assert_eq!(seen, want, "{filter} in pages of {limit}");
        }
    }
}

#[tokio::test]
async fn an_update_is_whole_checked_against_if_match_and_seen_by_the_boot_path() {
    let h = Harness::new().await;
    let mac = h.machine("52:54:00:00:00:10").await;
    let gen = h
        .state
        .inventory
        .add_generation("worker", live().digest(), live(), None)
        .await
        .unwrap();
    let uri = format!("/api/v1/machines/{mac}");
    let admin = h.admin.clone();
    let first = h.get(&uri).await;
    let tag = first.headers[header::ETAG].to_str().unwrap().to_string();

    let a = h
        .call(
            Method::PATCH,
            &uri,
            Some(&admin),
            Some(json!({ "hostname": "node7", "labels": { "role": "db" },
                         "pin": { "stream": "worker", "generation": gen.id.number } })),
            &[("if-match", &tag)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["hostname"], "node7");
    assert_eq!(a.body["pin"]["generation"], gen.id.number);
    let tag2 = a.headers[header::ETAG].to_str().unwrap().to_string();
    assert_ne!(tag, tag2);
    let m = h.state.inventory.machine(mac).unwrap();
    assert_eq!(m.hostname.as_deref(), Some("node7"));
    assert_eq!(m.pin.as_ref(), Some(&gen.id));
    assert_eq!(m.labels["role"], "db");

    // The second operator still holds the first tag: refused, unchanged.
    let a = h
        .call(
            Method::PATCH,
            &uri,
            Some(&admin),
            Some(json!({ "hostname": "node8" })),
            &[("if-match", &tag)],
        )
        .await;
    assert_error(&a, StatusCode::PRECONDITION_FAILED, "etag_mismatch");
    assert_eq!(h.get(&uri).await.body["hostname"], "node7");

    // Nothing half-applied: a bad field among good ones changes nothing.
    for (body, status, code) in [
        (
            json!({ "hostname": "ok", "labels": { "bad key": "x" } }),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            json!({ "hostname": "ok", "group": "nope" }),
            StatusCode::NOT_FOUND,
            "no_such_group",
        ),
        (
            json!({ "hostname": "ok", "pin": { "stream": "worker", "generation": 99 } }),
            StatusCode::NOT_FOUND,
            "no_such_generation",
        ),
        (
            json!({ "hostname": "-bad-" }),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            json!({ "kind": "router" }),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            json!({ "colour": "red" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
    ] {
        let a = h
            .call(Method::PATCH, &uri, Some(&admin), Some(body.clone()), &[])
            .await;
        assert_error(&a, status, code);
        assert_eq!(h.get(&uri).await.body["hostname"], "node7", "{body}");
    }

    // Labels merge; null removes; no If-Match applies unconditionally.
    let a = h
        .call(
            Method::PATCH,
            &uri,
            Some(&admin),
            Some(
                json!({ "labels": { "rack": "r9", "role": null }, "hostname": null, "pin": null }),
            ),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["labels"], json!({ "rack": "r9" }));
    assert!(a.body["hostname"].is_null() && a.body["pin"].is_null());
    assert!(h.state.inventory.machine(mac).unwrap().pin.is_none());

    // Group assignment to a group that exists.
    h.state
        .inventory
        .set_group_generation("web", &gen.id)
        .await
        .unwrap();
    let a = h
        .call(
            Method::PATCH,
            &uri,
            Some(&admin),
            Some(json!({ "group": "web" })),
            &[],
        )
        .await;
    assert_eq!(a.body["group"], "web", "{}", a.body);
    assert_eq!(a.body["group_assigned"], true);
    assert_eq!(h.state.inventory.machine(mac).unwrap().group, "web");
    let a = h
        .call(
            Method::PATCH,
            &uri,
            Some(&admin),
            Some(json!({ "group": null })),
            &[],
        )
        .await;
    assert_eq!(
        (&a.body["group"], &a.body["group_assigned"]),
        (&json!("default"), &json!(false)),
        "{}",
        a.body
    );
    assert_eq!(h.state.inventory.machine(mac).unwrap().group, "default");

    let reader = h.reader.clone();
    let a = h
        .call(Method::PATCH, &uri, Some(&reader), Some(json!({})), &[])
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = h
        .call(
            Method::PATCH,
            "/api/v1/machines/52:54:00:00:00:99",
            Some(&admin),
            Some(json!({})),
            &[],
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "no_such_machine");
}

#[tokio::test]
async fn delete_keeps_history_unless_purged() {
    let h = Harness::new().await;
    let admin = h.admin.clone();
    let count = |h: &Harness, mac: &str| {
        let pool = h.state.store.sqlite_pool().clone();
        let mac = mac.to_string();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM boots WHERE mac = ?")
                .bind(mac)
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    for mac in ["52:54:00:00:00:21", "52:54:00:00:00:22"] {
        h.machine(mac).await;
    }
    let a = h
        .call(
            Method::DELETE,
            "/api/v1/machines/52:54:00:00:00:21",
            Some(&admin),
            None,
            &[("if-match", "\"stale\"")],
        )
        .await;
    assert_error(&a, StatusCode::PRECONDITION_FAILED, "etag_mismatch");
    let a = h
        .call(
            Method::DELETE,
            "/api/v1/machines/52:54:00:00:00:21",
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["purged"], false);
    assert_eq!(count(&h, "52:54:00:00:00:21").await, 1, "history kept");
    assert!(h
        .state
        .inventory
        .machine("52:54:00:00:00:21".parse().unwrap())
        .is_none());
    let a = h.get("/api/v1/machines/52:54:00:00:00:21").await;
    assert_error(&a, StatusCode::NOT_FOUND, "no_such_machine");

    let a = h
        .call(
            Method::DELETE,
            "/api/v1/machines/52:54:00:00:00:22?purge=true",
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["boots_deleted"], 1);
    assert_eq!(count(&h, "52:54:00:00:00:22").await, 0, "history purged");
    let a = h
        .call(
            Method::DELETE,
            "/api/v1/machines/52:54:00:00:00:22",
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "no_such_machine");
}
