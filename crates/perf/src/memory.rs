//! The broker's resident memory, read from `/proc/PID/status`: `VmRSS` now, `VmHWM` (the
//! highest it has been since the process started), and a sampler that notes the highest
//! `VmRSS` seen while a run goes on (which, unlike `VmHWM`, does not include what happened
//! before the run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often the sampler reads `VmRSS`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// One `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Samples a process's `VmRSS` until dropped or stopped, keeping the highest.
pub struct Sampler {
    pid: u32,
    start_kib: u64,
    peak_kib: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// What a sampler saw.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// `VmRSS` when sampling started, KiB.
    pub start_kib: u64,
    /// The highest `VmRSS` sampled, KiB.
    pub peak_kib: u64,
    /// `VmRSS` at the end, KiB.
    pub end_kib: u64,
    /// `VmHWM` at the end (the process's peak since it started), KiB.
    pub hwm_kib: u64,
}

impl Sampler {
    /// Starts sampling `pid`; `None` if its status cannot be read.
    pub fn start(pid: u32) -> Option<Sampler> {
        let start_kib = status_kib(pid, "VmRSS")?;
        let peak_kib = Arc::new(AtomicU64::new(start_kib));
        let task = {
            let peak_kib = peak_kib.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    ticks.tick().await;
                    match status_kib(pid, "VmRSS") {
                        Some(rss) => {
                            peak_kib.fetch_max(rss, Ordering::Relaxed);
                        }
                        None => return,
                    }
                }
            })
        };
        Some(Sampler {
            pid,
            start_kib,
            peak_kib,
            task,
        })
    }

    /// The highest `VmRSS` so far, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns the figures (with one last sample).
    pub fn stop(self) -> Figures {
        self.task.abort();
        let end_kib = status_kib(self.pid, "VmRSS").unwrap_or(0);
        let peak_kib = self.peak_kib().max(end_kib);
        Figures {
            start_kib: self.start_kib,
            peak_kib,
            end_kib,
            hwm_kib: status_kib(self.pid, "VmHWM").unwrap_or(peak_kib),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_process_has_a_resident_size() {
        let pid = std::process::id();
        let rss = status_kib(pid, "VmRSS").unwrap();
        assert!(rss > 0);
        let sampler = Sampler::start(pid).unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let figures = sampler.stop();
        assert!(figures.peak_kib >= figures.start_kib.min(figures.end_kib));
        assert!(figures.hwm_kib >= figures.end_kib);
        assert_eq!(status_kib(pid, "NoSuchField"), None);
    }
}
