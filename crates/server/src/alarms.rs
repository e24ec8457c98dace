//! Resource alarms: the process's resident memory against the memory watermark, and the free
//! space of the data directory's file system against the disk limit. Either raises the
//! broker's alarm for its resource while the condition holds.
//!
//! The disk is measured by a timer and also by the message log as it writes, at most every
//! 50 ms or 1 MiB written ([`DiskAlarm`] is shared by both), so a burst of publishes raises
//! the alarm soon after its writes cross the limit, before the disk is full, not only at a
//! timer tick.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use junction_core::Broker;
use tokio::sync::watch;

use crate::config::AlarmsConfig;

/// Resident memory of this process in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Total memory of the machine in bytes, from `/proc/meminfo`.
fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The watermark in bytes, or None when it cannot be determined (no alarm then).
pub fn watermark(config: &AlarmsConfig) -> Option<u64> {
    if config.memory_high_watermark_bytes > 0 {
        return Some(config.memory_high_watermark_bytes);
    }
    let total = total_memory_bytes()?;
    Some((total as f64 * config.memory_high_watermark) as u64)
}

/// Free bytes available to unprivileged users on the file system holding `path`.
fn available_bytes(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    Some(
        stats
            .blocks_available()
            .saturating_mul(stats.fragment_size()),
    )
}

/// Open file descriptors of this process and their limit.
fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    (used, limit)
}

/// Measures the node's resources for the management API.
pub fn resource_probe(config: AlarmsConfig, data_dir: PathBuf) -> junction_admin::ResourceProbe {
    Arc::new(move || {
        let (fd_used, fd_total) = file_descriptors();
        junction_admin::NodeResources {
            mem_used: resident_bytes().unwrap_or(0),
            mem_limit: watermark(&config).unwrap_or(0),
            disk_free: available_bytes(&data_dir).unwrap_or(0),
            disk_free_limit: config.disk_free_limit,
            fd_used,
            fd_total,
        }
    })
}

/// One resource alarm: raised and cleared with a log line on each change.
struct Alarm {
    resource: &'static str,
    reason: &'static str,
    raised: bool,
}

impl Alarm {
    fn update(&mut self, broker: &Broker, over: bool, used: u64, limit: u64) {
        if over == self.raised {
            return;
        }
        self.raised = over;
        if over {
            tracing::warn!(
                resource = self.resource,
                used,
                limit,
                "alarm raised: blocking publishers"
            );
            broker.set_alarm(self.resource, Some(self.reason.to_owned()));
        } else {
            tracing::info!(resource = self.resource, used, limit, "alarm cleared");
            broker.set_alarm(self.resource, None);
        }
    }
}

/// The disk alarm: raised while the data directory's file system has fewer free bytes than
/// the limit. Updated by the timer and by the message log as it writes. It holds the broker
/// weakly: the message log holds it (through its space watch) and the broker holds the log,
/// so a strong reference would keep all of them alive for ever.
pub struct DiskAlarm {
    broker: Weak<Broker>,
    limit: u64,
    alarm: Mutex<Alarm>,
}

impl DiskAlarm {
    /// The alarm for `broker` with the configured limit (0: never raised).
    pub fn new(broker: Arc<Broker>, limit: u64) -> Self {
        Self {
            broker: Arc::downgrade(&broker),
            limit,
            alarm: Mutex::new(Alarm {
                resource: "disk",
                reason: "low on disk",
                raised: false,
            }),
        }
    }

    /// Raises or clears the alarm for `free` bytes left (nothing once the broker is gone).
    pub fn update(&self, free: u64) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut alarm = match self.alarm.lock() {
            Ok(alarm) => alarm,
            Err(poisoned) => poisoned.into_inner(),
        };
        alarm.update(&broker, free < self.limit, free, self.limit);
    }
}

/// Watches memory and disk until `shutdown` turns true.
pub async fn watch_resources(
    broker: Arc<Broker>,
    config: AlarmsConfig,
    data_dir: PathBuf,
    disk: Arc<DiskAlarm>,
    mut shutdown: watch::Receiver<bool>,
) {
    let memory_limit = watermark(&config);
    match memory_limit {
        Some(limit) => tracing::info!(limit_bytes = limit, "memory high watermark"),
        None => tracing::warn!("cannot determine total memory; the memory alarm is off"),
    }
    tracing::info!(limit_bytes = config.disk_free_limit, "disk free limit");
    let mut memory = Alarm {
        resource: "memory",
        reason: "low on memory",
        raised: false,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(config.check_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let (Some(limit), Some(used)) = (memory_limit, resident_bytes()) {
            memory.update(&broker, used > limit, used, limit);
        }
        if let Some(free) = available_bytes(&data_dir) {
            disk.update(free);
        }
    }
}

#[cfg(test)]
mod tests {
    use junction_core::auth::Authorizer;
    use junction_core::{BrokerConfig, ExchangeTypeRegistry};

    use super::*;

    /// The message log holds the disk alarm and the broker holds the log: the alarm must not
    /// hold the broker, or neither is ever dropped.
    #[test]
    fn the_disk_alarm_does_not_keep_the_broker_alive() {
        let broker = Broker::new(
            BrokerConfig::default(),
            Arc::new(ExchangeTypeRegistry::with_builtins()),
            Authorizer::new(Vec::new(), std::time::Duration::ZERO),
        );
        let alarm = DiskAlarm::new(broker.clone(), 100);
        assert_eq!(Arc::strong_count(&broker), 1, "only the test holds it");
        alarm.update(10);
        assert!(broker.alarm().borrow().is_some(), "raised below the limit");
        alarm.update(1000);
        assert!(broker.alarm().borrow().is_none(), "cleared above it");
        drop(broker);
        alarm.update(10);
    }
}
