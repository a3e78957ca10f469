//! The server's CPU time and memory, read from `/proc/PID` (Linux): what an
//! operator sizing a server wants next to the boot times.

use std::time::Duration;

use tokio::sync::oneshot;

/// CPU time consumed so far and the resident set high-water mark.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    /// `VmHWM`: the peak resident set since the process started.
    pub peak_rss: u64,
    pub rss: u64,
}

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, which Linux fixes
/// at 100 for every architecture's userspace ABI.
const USER_HZ: u64 = 100;

pub fn sample(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

fn parse(stat: &str, status: &str) -> Option<Usage> {
    // Fields after the command name (which may contain spaces) in `(…)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / USER_HZ),
        peak_rss: kb("VmHWM:")? * 1024,
        rss: kb("VmRSS:")? * 1024,
    })
}

/// Samples `VmRSS` every 100 ms during the run: the peak during the storm
/// itself, which `VmHWM` cannot tell apart from earlier peaks.
pub struct PeakSampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl PeakSampler {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = tick.tick() => {
                        if let Some(u) = sample(pid) {
                            peak = Some(peak.unwrap_or(0).max(u.rss));
                        }
                    }
                }
            }
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_and_memory() {
        let stat = "1234 (iron boot) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200";
        let status = "Name:\tironboot\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n";
        let u = parse(stat, status).unwrap();
        assert_eq!(u.cpu, Duration::from_secs(3));
        assert_eq!(u.peak_rss, 51200 * 1024);
        assert_eq!(u.rss, 40000 * 1024);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let u = sample(std::process::id()).unwrap();
        assert!(u.peak_rss >= u.rss && u.rss > 0);
    }
}
