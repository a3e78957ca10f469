//! Boots and events through the API: filters, paging, the live stream.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::super::tests::{assert_error, Harness};

fn ids(v: &Value, key: &str) -> Vec<i64> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn boots_and_events_filter_and_page_newest_first() {
    let h = Harness::new().await;
    let a = h.machine("52:54:00:00:01:01").await;
    let b = h.machine("52:54:00:00:01:02").await;
    h.machine("52:54:00:00:01:01").await;
    for (mac, step) in [(a, "dhcp.offer"), (a, "dhcp.ack"), (b, "tftp.complete")] {
        h.ledger
            .event(Some(mac), None, step, json!({ "file": "x" }), Some(7));
    }
    h.state.inventory.settle().await;

    let all = h.get("/api/v1/boots").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(ids(&all.body, "boots"), vec![3, 2, 1]);
    assert!(all.body["boots"][0]["steps"].as_array().unwrap().is_empty());
    assert_eq!(all.body["boots"][0]["state"], "nothing");
    let mine = h.get(&format!("/api/v1/boots?mac={a}")).await;
    assert_eq!(ids(&mine.body, "boots"), vec![3, 1]);
    let mine = h.get(&format!("/api/v1/machines/{a}/boots?limit=1")).await;
    assert_eq!(ids(&mine.body, "boots"), vec![3]);
    assert_eq!(mine.body["next"], 3);
    let rest = h
        .get(&format!("/api/v1/machines/{a}/boots?limit=1&cursor=3"))
        .await;
    assert_eq!(ids(&rest.body, "boots"), vec![1]);
    assert!(rest.body["next"].is_null());
    for (query, want) in [
        ("result=nothing", vec![3, 2, 1]),
        ("result=confirmed", vec![]),
        ("stream=worker", vec![]),
        ("generation=1", vec![]),
        ("since=0&until=2100-01-01T00:00:00Z", vec![3, 2, 1]),
        ("until=0", vec![]),
    ] {
        let r = h.get(&format!("/api/v1/boots?{query}")).await;
        assert_eq!(ids(&r.body, "boots"), want, "{query}");
    }
    for (query, field) in [
        ("result=great", "result"),
        ("since=soon", "since"),
        ("mac=nope", "mac"),
    ] {
        let r = h.get(&format!("/api/v1/boots?{query}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid");
        assert_eq!(r.body["error"]["field"], field);
    }
    let r = h.get(&format!("/api/v1/machines/{a}/boots?mac={b}")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid");

    let ev = h.get("/api/v1/events").await;
    let steps: Vec<&str> = ev.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["tftp.complete", "dhcp.ack", "dhcp.offer"]);
    assert_eq!(ev.body["events"][0]["bytes"], 7);
    let dhcp = h.get("/api/v1/events?step=dhcp").await;
    assert_eq!(dhcp.body["events"].as_array().unwrap().len(), 2);
    let ack = h
        .get(&format!("/api/v1/machines/{a}/events?step=dhcp.ack"))
        .await;
    assert_eq!(ack.body["events"].as_array().unwrap().len(), 1);
    let page = h.get("/api/v1/events?limit=2").await;
    let next = page.body["next"].as_i64().unwrap();
    let rest = h
        .get(&format!("/api/v1/events?limit=2&cursor={next}"))
        .await;
    assert_eq!(rest.body["events"][0]["step"], "dhcp.offer");
    let none = h
        .get(&format!("/api/v1/machines/{b}/events?step=dhcp"))
        .await;
    assert!(none.body["events"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_live_stream_sends_matching_events_as_they_are_recorded() {
    let h = Harness::new().await;
    let mac: crate::domain::MacAddr = "52:54:00:00:01:09".parse().unwrap();
    let req = Request::get(format!("/api/v1/events/stream?mac={mac}&step=tftp"))
        .header(header::AUTHORIZATION, format!("Bearer {}", h.reader))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    // Not this machine, not this step, then the one it waits for.
    h.ledger.event(None, None, "tftp.complete", json!({}), None);
    h.ledger.event(Some(mac), None, "dhcp.ack", json!({}), None);
    h.ledger.event(
        Some(mac),
        None,
        "tftp.complete",
        json!({ "file": "undionly.kpxe" }),
        Some(9),
    );
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let e: Value = serde_json::from_str(data).unwrap();
    assert_eq!(e["step"], "tftp.complete");
    assert_eq!(e["mac"], mac.to_string());
    assert_eq!(e["detail"]["file"], "undionly.kpxe");

    // Shutdown ends the stream.
    h.state.shutdown.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends at shutdown");
}
