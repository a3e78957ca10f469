//! `ironboot rollout …` and `ironboot watchdog …`: clients of
//! `/api/v1/rollouts` and `/api/v1/watchdog`.
//!
//! ```text
//! ironboot rollout start --group web --stream worker --to 42 --canary 1 --steps 50%,100% --timeout 10m
//! ironboot rollout status 3
//! ironboot rollout pause 3 | resume 3 | abort 3 --reason "change freeze"
//! ironboot rollout list
//! ironboot watchdog list | clear 52:54:00:12:34:56
//! ```

use clap::Subcommand;
use serde_json::{json, Value};

use super::{print, print_json, value_of, CliError, Connection, Output};
use crate::http::api::views::{GenerationRef, HealthView, RolloutList, RolloutView, WatchdogView};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start moving a group to a generation, canary first (or blue/green).
    Start {
        #[arg(long)]
        group: String,
        #[arg(long)]
        stream: String,
        /// The generation number to move to.
        #[arg(long)]
        to: i64,
        /// First wave: a count (1), a share (10%) or MACs (comma-separated).
        #[arg(long, default_value = "1", conflicts_with = "blue_green")]
        canary: String,
        /// Cumulative shares after the canary, e.g. 50%,100%.
        #[arg(long, conflicts_with = "blue_green")]
        steps: Option<String>,
        /// Half the group first, then the other half at once.
        #[arg(long)]
        blue_green: bool,
        /// How long each wave has to confirm.
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// A key=value the phone-home payload must carry to count.
        #[arg(long)]
        require: Option<String>,
        /// On a failed gate, stop where it is instead of rolling back.
        #[arg(long)]
        no_rollback: bool,
        /// A machine whose BMC cannot reboot it: the wave waits (until its
        /// timeout) or its gate fails at once.
        #[arg(long, value_parser = ["wait", "fail"], default_value = "wait")]
        on_bmc_failure: String,
    },
    /// Every wave and machine of a rollout, and why it stopped.
    Status { id: i64 },
    /// Hold the open gate (moved machines stay on the new generation).
    Pause { id: i64 },
    /// Continue a paused rollout (the open wave's timeout starts again).
    Resume { id: i64 },
    /// Send every moved machine back to the old generation.
    Abort {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every rollout, newest first.
    List,
}

#[derive(Debug, Subcommand)]
pub enum WatchdogCommand {
    /// Degraded machines (booting their last good generation) and the policy.
    List,
    /// Clear a machine's degraded mark: its next boot tries its target again.
    Clear { mac: String },
}

const LIST_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("GROUP", "group"),
    ("FROM", "from"),
    ("TO", "to"),
    ("STATE", "state"),
    ("WAVE", "wave"),
    ("CONFIRMED", "counts.confirmed"),
    ("WAITING", "counts.waiting"),
    ("FAILED", "counts.failed"),
    ("REASON", "reason"),
];

pub async fn rollout(conn: &Connection, cmd: &RolloutCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    let shown: RolloutView = match cmd {
        RolloutCommand::Start {
            group,
            stream,
            to,
            canary,
            steps,
            blue_green,
            timeout,
            require,
            no_rollback,
            on_bmc_failure,
        } => {
            let mut body = json!({
                "group": group, "stream": stream, "to": to,
                "timeout": timeout, "rollback": !no_rollback,
                "on_bmc_failure": on_bmc_failure,
            });
            if *blue_green {
                body["strategy"] = json!("blue_green");
            } else {
                body["canary"] = json!(canary);
                if let Some(s) = steps {
                    body["steps"] = json!(s);
                }
            }
            if let Some(r) = require {
                body["require"] = json!(r);
            }
            client.post_as("/api/v1/rollouts", &body).await?
        }
        RolloutCommand::Status { id } => client.get_as(&format!("/api/v1/rollouts/{id}")).await?,
        RolloutCommand::Pause { id } => {
            client
                .post_as(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
                .await?
        }
        RolloutCommand::Resume { id } => {
            client
                .post_as(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
                .await?
        }
        RolloutCommand::Abort { id, reason } => {
            client
                .post_as(
                    &format!("/api/v1/rollouts/{id}/abort"),
                    &json!({ "reason": reason }),
                )
                .await?
        }
        RolloutCommand::List => {
            let all: RolloutList = client.get_as("/api/v1/rollouts").await?;
            let rows: Vec<Value> = all.rollouts.iter().map(value_of).collect();
            print(conn.output, &value_of(&all), &rows, LIST_COLUMNS);
            return Ok(());
        }
    };
    show_rollout(conn.output, &shown);
    Ok(())
}

/// A rollout for people: a summary line, then each wave and its machines.
fn show_rollout(output: Output, r: &RolloutView) {
    if output == Output::Json {
        print_json(r);
        return;
    }
    let generation = |g: &GenerationRef| format!("{} gen {}", g.stream, g.generation);
    println!(
        "rollout {}  group {}  {} -> {}  {}",
        r.id,
        r.group,
        generation(&r.from),
        generation(&r.to),
        r.state,
    );
    if let Some(reason) = &r.reason {
        println!("reason: {reason}");
    }
    let c = &r.counts;
    println!(
        "machines {}: {} confirmed, {} waiting for a reboot or confirmation, {} failed, {} not moved yet",
        c.machines, c.confirmed, c.waiting, c.failed, c.pending
    );
    for w in &r.waves {
        println!("wave {} (gate {}):", w.wave, w.gate);
        for m in &w.machines {
            let mut line = format!("  {}  {}", m.mac, m.status);
            if m.rolled_back {
                line += "  (rolled back)";
            }
            if let Some(f) = &m.failed {
                line += &format!("  {f}");
            }
            println!("{line}");
        }
    }
}

pub async fn watchdog(conn: &Connection, cmd: &WatchdogCommand) -> Result<(), CliError> {
    let client = conn.client()?;
    match cmd {
        WatchdogCommand::List => {
            let all: WatchdogView = client.get_as("/api/v1/watchdog").await?;
            let rows: Vec<Value> = all.degraded.iter().map(value_of).collect();
            print(
                conn.output,
                &value_of(&all),
                &rows,
                &[
                    ("MAC", "mac"),
                    ("DEGRADED ON", "degraded.generation"),
                    ("REASON", "degraded.reason"),
                ],
            );
        }
        WatchdogCommand::Clear { mac } => {
            let h: HealthView = client
                .delete_as(&format!("/api/v1/machines/{mac}/degraded"))
                .await?;
            match conn.output {
                Output::Json => print_json(&h),
                Output::Table => {
                    println!("{mac}: degraded mark cleared; its next boot tries its target again")
                }
            }
        }
    }
    Ok(())
}
