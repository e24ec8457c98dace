//! The memory alarm: measures the process's resident memory and raises the broker's resource
//! alarm while it is above the configured watermark.

use std::sync::Arc;
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

/// Watches memory until `shutdown` turns true.
pub async fn watch_memory(
    broker: Arc<Broker>,
    config: AlarmsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(limit) = watermark(&config) else {
        tracing::warn!("cannot determine total memory; the memory alarm is off");
        return;
    };
    tracing::info!(limit_bytes = limit, "memory high watermark");
    let mut tick = tokio::time::interval(Duration::from_millis(config.check_interval_ms.max(10)));
    let mut raised = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(used) = resident_bytes() else {
            continue;
        };
        let over = used > limit;
        if over != raised {
            raised = over;
            if over {
                tracing::warn!(used, limit, "memory alarm raised: blocking publishers");
                broker.set_alarm(Some("low on memory".to_owned()));
            } else {
                tracing::info!(used, limit, "memory alarm cleared");
                broker.set_alarm(None);
            }
        }
    }
}
