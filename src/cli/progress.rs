//! Progress of the long steps of an import (hashing, computing a hash tree,
//! uploading), on stderr: one line redrawn on a terminal, else a line at
//! every tenth so a log shows it without filling up. Files under
//! [`SHOWN_FROM`] import in a moment and show nothing.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Smaller files show no progress.
pub const SHOWN_FROM: u64 = 64 << 20;

pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    tty: bool,
    /// The last tenth (or, on a terminal, percent) shown.
    shown: u64,
}

impl Progress {
    /// `what` (e.g. `root.squashfs: hashing`) over `total` bytes; `None`
    /// for a small file.
    pub fn new(what: String, total: u64) -> Option<Self> {
        (total >= SHOWN_FROM).then(|| Self {
            what,
            total,
            done: 0,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            shown: 0,
        })
    }

    /// `n` more bytes done.
    pub fn add(&mut self, n: u64) {
        self.done = (self.done + n).min(self.total);
        let steps = if self.tty { 100 } else { 10 };
        let step = self.done * steps / self.total;
        if step == self.shown {
            return;
        }
        self.shown = step;
        let mib = |b: u64| b as f64 / 1048576.0;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "{}: {:.0}/{:.0} MiB ({}%, {:.0} MiB/s)",
            self.what,
            mib(self.done),
            mib(self.total),
            step * 100 / steps,
            mib(self.done) / secs
        );
        let mut err = std::io::stderr().lock();
        let _ = if !self.tty {
            writeln!(err, "{line}")
        } else if self.done == self.total {
            writeln!(err, "\r{line}\x1b[K")
        } else {
            write!(err, "\r{line}\x1b[K")
        };
    }
}

/// A reader that adds what it reads to a [`Progress`].
pub struct Reading<R> {
    pub inner: R,
    pub progress: Option<Progress>,
}

impl<R: std::io::Read> std::io::Read for Reading<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = self.progress.as_mut() {
            p.add(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_show_nothing_and_tenths_are_shown_once() {
        assert!(Progress::new("x".into(), SHOWN_FROM - 1).is_none());
        let mut p = Progress::new("x".into(), 100 << 20).unwrap();
        p.tty = false;
        p.add(5 << 20);
        assert_eq!(p.shown, 0);
        p.add(6 << 20);
        assert_eq!(p.shown, 1);
        p.add(1 << 40);
        assert_eq!((p.done, p.shown), (100 << 20, 10));
    }
}
