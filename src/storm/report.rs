//! What a storm run found: completions, failures by step, time to the last
//! boot, per-step latency percentiles, bytes, and the server's CPU and RSS.
//! Printed as a table for people and as JSON for scripts.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::proc::Usage;
use super::{failures_by_step, Outcome, Plan, Step};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machines: usize,
    pub subset: bool,
    pub tftp_only: bool,
    /// Machines that finished every step (confirmed, unless `subset`).
    pub completed: usize,
    pub failed: usize,
    pub failures: Vec<Failure>,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
    /// From the start of the run to the last machine's completed boot.
    pub time_to_last_boot_s: Option<f64>,
    pub steps: Vec<StepStats>,
    pub server: Option<ServerUsage>,
    /// Machines that started over after a failed boot, and their restarts.
    pub restarted: usize,
    pub restarts: u64,
    /// Addresses ACKed to more than one machine (must be 0), with the
    /// first few as examples.
    pub addresses_shared: usize,
    pub shared_examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub step: &'static str,
    pub machines: usize,
    /// The first error seen at this step.
    pub example: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: &'static str,
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub bytes: u64,
    /// Resends and retries, summed over machines.
    pub retries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_s: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores: f64,
    /// `VmHWM` at the end (the process's lifetime peak).
    pub peak_rss_mb: f64,
    /// Highest `VmRSS` sampled during the run.
    pub run_peak_rss_mb: Option<f64>,
}

const MB: f64 = 1024.0 * 1024.0;

impl Report {
    pub(crate) fn new(
        plan: &Plan,
        outcomes: &[Outcome],
        elapsed: Duration,
        before: Option<Usage>,
        after: Option<Usage>,
        run_peak: Option<u64>,
    ) -> Self {
        let completed = outcomes.iter().filter(|o| o.failed.is_none()).count();
        let failures = failures_by_step(outcomes)
            .into_iter()
            .map(|(step, (machines, example))| Failure {
                step: step.name(),
                machines,
                example,
            })
            .collect();
        let steps = Step::ALL
            .iter()
            .filter_map(|step| {
                let mut took: Vec<Duration> = Vec::new();
                let (mut bytes, mut retries) = (0, 0);
                for s in outcomes
                    .iter()
                    .flat_map(|o| &o.samples)
                    .filter(|s| s.step == *step)
                {
                    took.push(s.took);
                    bytes += s.bytes;
                    retries += s.retries as u64;
                }
                if took.is_empty() {
                    return None;
                }
                took.sort_unstable();
                Some(StepStats {
                    step: step.name(),
                    count: took.len(),
                    p50_ms: ms(percentile(&took, 50.0)),
                    p99_ms: ms(percentile(&took, 99.0)),
                    max_ms: ms(*took.last().unwrap_or(&Duration::ZERO)),
                    bytes,
                    retries,
                })
            })
            .collect();
        let server = match (plan.server_pid, before, after) {
            (Some(pid), Some(b), Some(a)) => {
                let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
                Some(ServerUsage {
                    pid,
                    cpu_s: cpu,
                    cores: cpu / elapsed.as_secs_f64().max(1e-9),
                    peak_rss_mb: a.peak_rss as f64 / MB,
                    run_peak_rss_mb: run_peak.map(|b| b as f64 / MB),
                })
            }
            _ => None,
        };
        let shared = shared_addresses(outcomes);
        Self {
            restarted: outcomes.iter().filter(|o| o.restarts > 0).count(),
            restarts: outcomes.iter().map(|o| u64::from(o.restarts)).sum(),
            addresses_shared: shared.len(),
            shared_examples: shared.into_iter().take(5).collect(),
            machines: outcomes.len(),
            subset: plan.subset,
            tftp_only: plan.tftp_only.is_some(),
            completed,
            failed: outcomes.len() - completed,
            failures,
            elapsed_s: elapsed.as_secs_f64(),
            time_to_last_boot_s: outcomes
                .iter()
                .filter(|o| o.failed.is_none())
                .map(|o| o.finished.as_secs_f64())
                .reduce(f64::max),
            steps,
            server,
        }
    }
}

/// Every address ACKed to more than one machine, as `address: n machines`.
fn shared_addresses(outcomes: &[Outcome]) -> Vec<String> {
    let mut holders: std::collections::BTreeMap<
        std::net::Ipv4Addr,
        std::collections::BTreeSet<usize>,
    > = Default::default();
    for (machine, o) in outcomes.iter().enumerate() {
        for ip in &o.acked {
            holders.entry(*ip).or_default().insert(machine);
        }
    }
    holders
        .into_iter()
        .filter(|(_, machines)| machines.len() > 1)
        .map(|(ip, machines)| format!("{ip}: {} machines", machines.len()))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = if self.tftp_only {
            "TFTP only"
        } else if self.subset {
            "subset: dhcp, tftp, dhcp-ipxe, script, kernel, initrd"
        } else {
            "full flow"
        };
        writeln!(f, "boot storm: {} machines ({flow})", self.machines)?;
        writeln!(
            f,
            "  completed {}  failed {}  elapsed {:.2} s  last boot at {}",
            self.completed,
            self.failed,
            self.elapsed_s,
            self.time_to_last_boot_s
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "-".into())
        )?;
        if self.restarted > 0 {
            writeln!(
                f,
                "  restarted {} machines ({} restarts in all)",
                self.restarted, self.restarts
            )?;
        }
        if self.addresses_shared > 0 {
            writeln!(
                f,
                "  ADDRESSES ACKED TO MORE THAN ONE MACHINE: {} (e.g. {})",
                self.addresses_shared,
                self.shared_examples.join(", ")
            )?;
        }
        for x in &self.failures {
            writeln!(
                f,
                "  FAILED at {}: {} machines (e.g. {})",
                x.step, x.machines, x.example
            )?;
        }
        writeln!(
            f,
            "  {:<10} {:>6} {:>10} {:>10} {:>10} {:>12} {:>8}",
            "step", "count", "p50 ms", "p99 ms", "max ms", "MB", "retries"
        )?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:<10} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>8}",
                s.step,
                s.count,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.bytes as f64 / MB,
                s.retries
            )?;
        }
        if let Some(s) = &self.server {
            write!(
                f,
                "  server pid {}: cpu {:.2} s ({:.2} cores)  peak RSS {:.1} MB",
                s.pid, s.cpu_s, s.cores, s.peak_rss_mb
            )?;
            if let Some(p) = s.run_peak_rss_mb {
                write!(f, " (during the run {p:.1} MB)")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
    }
}
