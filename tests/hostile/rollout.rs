//! Rollouts on a hostile network, as the issue ran them: forged
//! confirmations must not pass a health gate, and script requests for the
//! canary's MAC from another host must not count its boot as failed and
//! roll a healthy rollout back. Three machines with declared addresses
//! (reservations) boot from those addresses; the attacker uses 127.0.0.1.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::api::Api;
use crate::common::fleet;
use crate::common::TestServer;

const MACHINES: [(&str, &str); 3] = [
    ("52:54:00:00:08:01", "127.1.0.61"),
    ("52:54:00:00:08:02", "127.1.0.62"),
    ("52:54:00:00:08:03", "127.1.0.63"),
];

struct Lab {
    api: Api,
}

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

impl Lab {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, v) = self.api.call(method, path, body).await;
        (status.as_u16(), v)
    }

    async fn import(&self, n: u8) -> i64 {
        let (kernel, initrd) = (vec![n; 4096], vec![n + 100; 4096]);
        self.api
            .import("worker", &kernel, &initrd, "console=ttyS0")
            .await
    }

    /// One network boot of `mac` from `client`: the token in its script.
    async fn boot(&self, client: &reqwest::Client, mac: &str) -> Option<String> {
        fleet::token_in(&fleet::script(client, &self.api.base, mac).await)
    }

    async fn confirm(&self, client: &reqwest::Client, token: &str, form: &str) -> u16 {
        fleet::phone_home(client, &self.api.base, token, form)
            .await
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_confirmations_and_sabotage_move_no_rollout() {
    let reservations: String = MACHINES
        .iter()
        .map(|(mac, ip)| format!("[[dhcp.reservation]]\nmac = \"{mac}\"\nip = \"{ip}\"\n"))
        .collect();
    let server = TestServer::full_bound(&reservations).await;
    let lab = Lab {
        api: Api::new(&server),
    };
    let a = lab.import(1).await;
    let b = lab.import(2).await;
    let (status, _) = lab
        .api(
            reqwest::Method::PUT,
            "/api/v1/groups/default/generation",
            Some(json!({ "stream": "worker", "generation": a })),
        )
        .await;
    assert_eq!(status, 200);
    for (mac, ip) in MACHINES {
        let machine = from(ip);
        let token = lab
            .boot(&machine, mac)
            .await
            .expect("a token for the bound machine");
        assert_eq!(lab.confirm(&machine, &token, "").await, 200);
    }
    let (status, r) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({ "group": "default", "stream": "worker", "to": b, "canary": 1,
                         "steps": ["100%"], "timeout": "1m", "require": "checks=passed" }),
            ),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_i64().unwrap();
    let canary = r["waves"][0]["machines"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let canary_ip = MACHINES.iter().find(|(m, _)| *m == canary).unwrap().1;

    // The attacker: scripts for every machine (twice: the sabotage), and
    // confirmations with whatever it can come up with.
    let attacker = from("127.0.0.1");
    for _ in 0..2 {
        for (mac, _) in MACHINES {
            assert_eq!(lab.boot(&attacker, mac).await, None, "no token for {mac}");
        }
    }
    for token in ["0".repeat(64), "f".repeat(64)] {
        assert_eq!(lab.confirm(&attacker, &token, "checks=passed").await, 403);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, r) = lab
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            None,
        )
        .await;
    assert_eq!(r["state"], "running", "neither passed nor rolled back: {r}");

    // The real canary boots B from its own address and passes the gate;
    // the others follow; the rollout succeeds.
    let canary_client = from(canary_ip);
    let token = lab
        .boot(&canary_client, &canary)
        .await
        .expect("canary's token");
    assert_eq!(
        lab.confirm(&canary_client, &token, "checks=passed").await,
        200
    );
    for _ in 0..100 {
        let (_, r) = lab
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/rollouts/{id}"),
                None,
            )
            .await;
        if r["state"] == "succeeded" {
            break;
        }
        for (mac, ip) in MACHINES.iter().filter(|(m, _)| *m != canary) {
            let machine = from(ip);
            if let Some(token) = lab.boot(&machine, mac).await {
                let _ = lab.confirm(&machine, &token, "checks=passed").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, r) = lab
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            None,
        )
        .await;
    assert_eq!(r["state"], "succeeded", "{r}");
    server.stop().await;
}
