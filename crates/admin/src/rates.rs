//! Message rates, as RabbitMQ shows them beside each counter (`publish_details.rate`): a
//! background task samples the counters of the node, vhosts, queues and exchanges every
//! [`SAMPLE_INTERVAL`] and keeps, per object, the rate of each counter over the last
//! interval (a falling gauge has a negative rate, as in RabbitMQ). Objects that are gone are
//! forgotten at the next sample.
//!
//! Connections are not sampled in the background (a broker may hold a million idle MQTT
//! connections, and nobody may ever look): their byte rates are observed when the API lists
//! them, over the time since the previous listing, and forgotten once a listing no longer
//! shows them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use junction_core::ConnectionId;
use parking_lot::Mutex;

/// The shortest interval over which a connection's rate is observed again.
const OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often counters are sampled (RabbitMQ's `collect_statistics_interval` default).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// One object's last sample and the rates it gave.
struct Sample {
    at: Instant,
    values: Vec<u64>,
    rates: Vec<f64>,
}

/// Rates per object (`queue:/:orders`, `node`, ...), per counter.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<HashMap<String, Sample>>,
    /// Connections' byte counts when last listed, and the rates they gave.
    observed: Mutex<HashMap<ConnectionId, Observed>>,
}

/// When a connection's byte counts (received, sent) were observed, and the rates then.
type Observed = (Instant, [u64; 2], [f64; 2]);

impl Rates {
    /// Records the counters of every object now (`objects`: key and counter values); keys not
    /// in it are forgotten.
    pub fn sample(&self, objects: Vec<(String, Vec<u64>)>) {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        let mut next = HashMap::with_capacity(objects.len());
        for (key, values) in objects {
            let rates = match samples.remove(&key) {
                Some(previous) if previous.values.len() == values.len() => {
                    let seconds = now.duration_since(previous.at).as_secs_f64().max(0.001);
                    values
                        .iter()
                        .zip(&previous.values)
                        .map(|(now, before)| (*now as f64 - *before as f64) / seconds)
                        .collect()
                }
                _ => vec![0.0; values.len()],
            };
            next.insert(
                key,
                Sample {
                    at: now,
                    values,
                    rates,
                },
            );
        }
        *samples = next;
    }

    /// A connection's byte rates: over the time since it was last listed (at least
    /// [`OBSERVE_INTERVAL`]; within it, the rates last computed).
    pub fn observe(&self, id: ConnectionId, bytes: [u64; 2]) -> [f64; 2] {
        let now = Instant::now();
        let mut observed = self.observed.lock();
        let entry = observed.entry(id).or_insert((now, bytes, [0.0; 2]));
        let seconds = now.duration_since(entry.0).as_secs_f64();
        if seconds >= OBSERVE_INTERVAL.as_secs_f64() {
            let rate = |i: usize| bytes[i].saturating_sub(entry.1[i]) as f64 / seconds;
            *entry = (now, bytes, [rate(0), rate(1)]);
        }
        entry.2
    }

    /// Forgets the observed rates of connections not in `listed` (a complete listing).
    pub fn keep_observed(&self, listed: impl Iterator<Item = ConnectionId>) {
        let listed: HashSet<ConnectionId> = listed.collect();
        self.observed.lock().retain(|id, _| listed.contains(id));
    }

    /// The rates of `key`'s counters over the last interval (zeros before two samples).
    pub fn of(&self, key: &str, counters: usize) -> Vec<f64> {
        self.samples
            .lock()
            .get(key)
            .map(|s| s.rates.clone())
            .filter(|rates| rates.len() == counters)
            .unwrap_or_else(|| vec![0.0; counters])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_change_over_the_interval_and_gone_objects_are_forgotten() {
        let rates = Rates::default();
        rates.sample(vec![("q".into(), vec![0, 10])]);
        assert_eq!(rates.of("q", 2), vec![0.0, 0.0]);
        std::thread::sleep(Duration::from_millis(20));
        rates.sample(vec![("q".into(), vec![100, 10])]);
        let [publish, ack] = rates.of("q", 2)[..] else {
            panic!("two rates")
        };
        assert!(publish > 0.0 && ack == 0.0);
        rates.sample(Vec::new());
        assert_eq!(rates.of("q", 2), vec![0.0, 0.0]);
    }
}
