//! `ironboot status`: the servers that use the answering server's database
//! (`GET /api/v1/servers`), one line each: id, role, peer, state, how long
//! ago its last heartbeat was, when it started, its version and HTTP URL.

use serde_json::{json, Value};

use super::{print, value_of, CliError, Connection, Output};
use crate::http::api::views::{ServerList, ServerView};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The same as `-o json`.
    #[arg(long)]
    pub json: bool,
}

const COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("ROLE", "role"),
    ("PEER", "peer"),
    ("STATE", "state_shown"),
    ("LAST HEARTBEAT", "heartbeat_age"),
    ("STARTED", "started"),
    ("VERSION", "version"),
    ("HTTP", "http"),
];

pub async fn status(conn: &Connection, args: &StatusArgs) -> Result<(), CliError> {
    let client = conn.client()?;
    let list: ServerList = client.get_as("/api/v1/servers").await?;
    let output = if args.json { Output::Json } else { conn.output };
    let rows: Vec<Value> = list.servers.iter().map(row).collect();
    print(output, &value_of(&list), &rows, COLUMNS);
    Ok(())
}

/// A table row: the view, with its state marked when it is the server
/// that answered, and times people read.
fn row(s: &ServerView) -> Value {
    let mut r = value_of(s);
    r["state_shown"] = json!(if s.this {
        format!("{} (this)", s.state)
    } else {
        s.state.clone()
    });
    r["heartbeat_age"] = json!(format!("{} ago", age(s.heartbeat_age_ms)));
    r["started"] = json!(humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.started_ms.max(0) as u64)
    )
    .to_string());
    r
}

/// `4s`, `3m12s`, `2h5m`, `3d4h`: two units at most.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_in_two_units() {
        for (ms, want) in [
            (0, "0s"),
            (4_999, "4s"),
            (192_000, "3m12s"),
            (7_500_000, "2h5m"),
            (273_600_000, "3d4h"),
            (-5, "0s"),
        ] {
            assert_eq!(age(ms), want, "{ms}");
        }
    }
}
