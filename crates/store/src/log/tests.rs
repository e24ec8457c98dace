//! The message log against a real directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::AtomicU64 as TestCounter;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use junction_core::Properties;

use junction_core::persistence::{Durability, NotStored};

use super::*;

fn dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("junction-log-test-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn key(queue: &str) -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        queue: queue.into(),
    }
}

fn message(body: &str) -> Message {
    Message::new(
        "",
        "q",
        Properties::default(),
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

/// Publishes and waits for the fsync.
fn publish_durably(log: &MessageLog, queues: &[QueueKey], body: &str) -> (u64, StoredAt) {
    let id = log.next_id();
    let (tx, rx) = std_mpsc::channel();
    let at = log
        .publish(
            id,
            queues,
            &message(body),
            Some(Box::new(move |_| {
                let _ = tx.send(());
            })),
        )
        .expect("placed");
    rx.recv_timeout(Duration::from_secs(10)).expect("durable");
    (id, at)
}

fn flush(log: &MessageLog) {
    let (tx, rx) = std_mpsc::channel();
    log.sync(Box::new(move |_| {
        let _ = tx.send(());
    }));
    rx.recv_timeout(Duration::from_secs(10)).expect("synced");
}

/// Reads back what was recovered for a queue.
fn bodies(log: &MessageLog, recovered: &[Recovered]) -> Vec<String> {
    recovered
        .iter()
        .map(|r| {
            let message = log.read(r.id, r.at).expect("readable");
            assert_eq!(message.store_id, Some(r.id));
            String::from_utf8_lossy(&message.body).into_owned()
        })
        .collect()
}

#[test]
fn messages_come_back_in_order_minus_the_removed_ones() {
    let dir = dir("order");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        let (a, at) = publish_durably(&log, &[key("q1"), key("q2")], "a");
        publish_durably(&log, &[key("q1")], "b");
        publish_durably(&log, &[key("q1")], "c");
        log.remove(&key("q1"), a, at);
        flush(&log);
    }
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    let q1 = log.take_recovered(&key("q1"));
    assert_eq!(bodies(&log, &q1), ["b", "c"]);
    let q2 = log.take_recovered(&key("q2"));
    assert_eq!(bodies(&log, &q2), ["a"]);
    assert!(log.take_recovered(&key("q1")).is_empty(), "taken once");
    assert_eq!(report.messages, 3);
    assert!(log.next_id() > 3);
}

#[test]
fn a_torn_tail_is_truncated_and_good_records_are_kept() {
    let dir = dir("torn");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        publish_durably(&log, &[key("q")], "kept-1");
        publish_durably(&log, &[key("q")], "kept-2");
    }
    let segment = segment_path(&dir.join("messages"), 1);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("segment");
    file.write_all(&[0, 0, 0, 40, 1, 2, 3, 4, 9, 9])
        .expect("torn write");
    drop(file);
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    let q = log.take_recovered(&key("q"));
    assert_eq!(bodies(&log, &q), ["kept-1", "kept-2"]);
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(report.truncated[0].1, 10);
}

#[test]
fn a_flipped_byte_ends_the_replay_at_the_damaged_record() {
    let dir = dir("flip");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        publish_durably(&log, &[key("q")], "first");
        publish_durably(&log, &[key("q")], "second");
    }
    let segment = segment_path(&dir.join("messages"), 1);
    let mut data = std::fs::read(&segment).expect("read");
    let last = data.len() - 2;
    data[last] ^= 0xff;
    std::fs::write(&segment, &data).expect("write");
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    let q = log.take_recovered(&key("q"));
    assert_eq!(bodies(&log, &q), ["first"]);
    assert_eq!(report.truncated.len(), 1);
}

#[test]
fn fully_removed_segments_are_deleted_at_the_next_start() {
    let dir = dir("gc");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        let (id, at) = publish_durably(&log, &[key("q")], "gone");
        log.remove(&key("q"), id, at);
        flush(&log);
    }
    let (_log, report) = MessageLog::open(&dir).expect("reopen");
    assert_eq!(report.messages, 0);
    assert!(
        !segment_path(&dir.join("messages"), 1).exists(),
        "empty segment deleted"
    );
}

#[test]
fn a_message_is_readable_from_where_publish_said_it_lies() {
    let dir = dir("read");
    let (log, _) = MessageLog::open(&dir).expect("open");
    let (id, first) = publish_durably(&log, &[key("q")], "one");
    let (second_id, second) = publish_durably(&log, &[key("q")], "two");
    assert_ne!(first, second);
    let message = log.read(id, first).expect("readable");
    assert_eq!(message.store_id, Some(id));
    assert_eq!(&message.body[..], b"one");
    assert_eq!(
        &log.read(second_id, second).expect("readable").body[..],
        b"two"
    );
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("messages"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A segment holding removals of messages published in an older, still live segment must
/// outlive it: deleting it would lose the removals and bring acknowledged messages back.
#[test]
fn removals_outlive_the_publishes_they_settle() {
    let dir = dir("prefix");
    {
        let (log, _) = MessageLog::open_with_segment_size(&dir, 256).expect("open");
        let _kept = publish_durably(&log, &[key("q")], "kept");
        let (gone, gone_at) = publish_durably(&log, &[key("q")], "acked");
        // Move on to later segments, record the removal of "acked" there, then move on again:
        // those later segments end up with nothing live but hold that removal.
        let filler = |log: &MessageLog| {
            for _ in 0..4 {
                let (id, at) = publish_durably(log, &[key("q")], "filler");
                log.remove(&key("q"), id, at);
            }
        };
        filler(&log);
        log.remove(&key("q"), gone, gone_at);
        filler(&log);
        flush(&log);
        assert!(
            segments(&dir).len() > 1,
            "the test needs several segments: {:?}",
            segments(&dir)
        );
    }
    // Twice: a start deletes dead segments after reading them, so a lost removal would only
    // show at the start after.
    for _ in 0..2 {
        let (log, _) = MessageLog::open_with_segment_size(&dir, 256).expect("reopen");
        let q = log.take_recovered(&key("q"));
        assert_eq!(
            bodies(&log, &q),
            ["kept"],
            "acknowledged messages stay gone"
        );
    }
}

/// Publishes and returns what its completion reported.
fn publish_outcome(
    log: &MessageLog,
    queues: &[QueueKey],
    body: &str,
) -> Result<(u64, StoredAt, Durability), NotStored> {
    let id = log.next_id();
    let (tx, rx) = std_mpsc::channel();
    let at = log.publish(
        id,
        queues,
        &message(body),
        Some(Box::new(move |durability| {
            let _ = tx.send(durability);
        })),
    )?;
    let durability = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("completion ran");
    Ok((id, at, durability))
}

/// A failed write is never reported durable, leaves no torn record behind, refuses publishes
/// while the disk is full, and the log takes writes again once it has room, without a
/// restart.
#[test]
fn a_failed_write_fails_its_completions_and_the_log_recovers_when_the_disk_has_room() {
    let dir = dir("disk-full");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        let (kept, kept_at) = publish_durably(&log, &[key("q")], "kept");
        let (acked, acked_at) = publish_durably(&log, &[key("q")], "acked");
        log.faults.disk_full.store(true, Ordering::Relaxed);

        let (lost, lost_at, durability) =
            publish_outcome(&log, &[key("q")], "lost").expect("placed before the failure");
        assert_eq!(
            durability,
            Durability::Failed,
            "a failed write is not durable"
        );
        assert_eq!(
            log.publish(log.next_id(), &[key("q")], &message("refused"), None),
            Err(NotStored),
            "publishes are refused while the disk is full"
        );
        // A removal while failing waits; one of a message never written writes nothing.
        log.remove(&key("q"), acked, acked_at);
        log.remove(&key("q"), lost, lost_at);
        let (tx, rx) = std_mpsc::channel();
        log.sync(Box::new(move |durability| {
            let _ = tx.send(durability);
        }));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).expect("synced"),
            Durability::Failed
        );

        log.faults.disk_full.store(false, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            match publish_outcome(&log, &[key("q")], "after") {
                Ok((id, _, Durability::OnDisk)) => break id,
                Ok((_, _, Durability::Failed)) | Err(NotStored) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the log never resumed"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        assert!(after > lost);
        assert_eq!(
            &log.read(kept, kept_at).expect("readable").body[..],
            b"kept"
        );
        assert_eq!(kept, 1);
        flush(&log);
    }
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    assert!(
        report.truncated.is_empty(),
        "no torn record: {:?}",
        report.truncated
    );
    let q = log.take_recovered(&key("q"));
    assert_eq!(
        bodies(&log, &q),
        ["kept", "after"],
        "the removal kept while failing was written; the failed publish is gone"
    );
}

/// Records placed behind a failed batch fail too, and the records written after recovery lie
/// where publish said they would.
#[test]
fn places_given_after_recovery_hold() {
    let dir = dir("replace");
    let (log, _) = MessageLog::open(&dir).expect("open");
    publish_durably(&log, &[key("q")], "one");
    log.faults.disk_full.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for n in 0..20 {
        let (tx, rx) = std_mpsc::channel();
        if log
            .publish(
                log.next_id(),
                &[key("q")],
                &message(&format!("failing-{n}")),
                Some(Box::new(move |durability| {
                    let _ = tx.send(durability);
                })),
            )
            .is_ok()
        {
            outcomes.push(rx);
        }
    }
    for rx in outcomes {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).expect("ran"),
            Durability::Failed
        );
    }
    log.faults.disk_full.store(false, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut written = Vec::new();
    while written.len() < 5 {
        match publish_outcome(&log, &[key("q")], &format!("later-{}", written.len())) {
            Ok((id, at, Durability::OnDisk)) => written.push((id, at)),
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the log never resumed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for (n, (id, at)) in written.into_iter().enumerate() {
        let body = log.read(id, at).expect("readable").body;
        assert_eq!(&body[..], format!("later-{n}").as_bytes());
    }
}

#[test]
fn each_batch_reports_the_free_space() {
    let dir = dir("space");
    let (log, _) = MessageLog::open(&dir).expect("open");
    let (tx, rx) = std_mpsc::channel();
    log.watch_space(Box::new(move |free| {
        let _ = tx.send(free);
    }));
    publish_durably(&log, &[key("q")], "measured");
    let free = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
    assert!(free > 0);
}

/// Once every message is removed, a large active segment is replaced by a fresh one, so
/// emptying the queues gives the disk space back (a full disk recovers by a purge).
#[test]
fn an_all_dead_log_starts_over_in_a_fresh_segment() {
    let dir = dir("start-over");
    let (log, _) = MessageLog::open(&dir).expect("open");
    let big = "x".repeat(300 * 1024);
    let mut stored = Vec::new();
    for _ in 0..4 {
        stored.push(publish_durably(&log, &[key("q")], &big));
    }
    assert_eq!(segments(&dir), ["0000000001.seg"]);
    let (kept, kept_at) = stored.pop().expect("one");
    for (id, at) in stored {
        log.remove(&key("q"), id, at);
    }
    flush(&log);
    assert_eq!(
        segments(&dir),
        ["0000000001.seg"],
        "a live message stays put"
    );
    log.remove(&key("q"), kept, kept_at);
    flush(&log);
    flush(&log);
    assert_eq!(
        segments(&dir),
        ["0000000002.seg"],
        "the dead segment is gone"
    );
    let (id, at) = publish_durably(&log, &[key("q")], "after");
    assert_eq!(at.segment, 2);
    assert_eq!(&log.read(id, at).expect("readable").body[..], b"after");
    drop(log);
    let (log, _) = MessageLog::open(&dir).expect("reopen");
    assert_eq!(bodies(&log, &log.take_recovered(&key("q"))), ["after"]);
}

/// On a full disk removals cannot be written, so they alone would never free anything: when
/// they settle every message in the log, the log starts over in a fresh segment without
/// writing them, which gives the space back.
#[test]
fn removing_every_message_while_the_disk_is_full_frees_the_segment() {
    let dir = dir("full-purge");
    let (log, _) = MessageLog::open(&dir).expect("open");
    let stored: Vec<_> = (0..3)
        .map(|n| publish_durably(&log, &[key("q")], &format!("m{n}")))
        .collect();
    log.faults.disk_full.store(true, Ordering::Relaxed);
    let (_, _, durability) = publish_outcome(&log, &[key("q")], "lost").expect("placed");
    assert_eq!(durability, Durability::Failed);
    for (id, at) in stored {
        log.remove(&key("q"), id, at);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments(&dir) != ["0000000002.seg"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the emptied segment stayed: {:?}",
            segments(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    log.faults.disk_full.store(false, Ordering::Relaxed);
    let (_, at, durability) = publish_outcome(&log, &[key("q")], "after").expect("taken");
    assert_eq!(durability, Durability::OnDisk);
    assert_eq!(at.segment, 2);
    drop(log);
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    assert!(report.truncated.is_empty());
    assert_eq!(bodies(&log, &log.take_recovered(&key("q"))), ["after"]);
}

/// Publishes until the log takes writes again (after a fault is cleared), returning the
/// messages written meanwhile.
fn publish_until_on_disk(log: &MessageLog, body: &str) -> (u64, StoredAt) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match publish_outcome(log, &[key("q")], body) {
            Ok((id, at, Durability::OnDisk)) => return (id, at),
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the log never resumed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A failed publish's place is taken by a later record once the log resumes: reading the
/// failed message there finds nothing, never the other message.
#[test]
fn a_stale_place_does_not_read_another_message() {
    let dir = dir("stale-place");
    let (log, _) = MessageLog::open(&dir).expect("open");
    publish_durably(&log, &[key("q")], "kept");
    log.faults.disk_full.store(true, Ordering::Relaxed);
    let (lost, lost_at, durability) = publish_outcome(&log, &[key("q")], "lost").expect("placed");
    assert_eq!(durability, Durability::Failed);
    log.faults.disk_full.store(false, Ordering::Relaxed);
    let (other, other_at) = publish_until_on_disk(&log, "other-vhost-message");
    assert_eq!(other_at, lost_at, "the test needs the place reused");
    assert!(
        log.read(lost, lost_at).is_none(),
        "the failed message's place holds another message"
    );
    let read = log.read(other, other_at).expect("readable");
    assert_eq!(&read.body[..], b"other-vhost-message");
}

/// While the failed bytes cannot be cut off the segment, the log keeps refusing writes:
/// once it resumes, every record lies where publish said, and recovery keeps them all.
#[test]
fn the_log_stays_failing_until_the_failed_bytes_are_cut_off() {
    let dir = dir("uncut");
    {
        let (log, _) = MessageLog::open(&dir).expect("open");
        publish_durably(&log, &[key("q")], "kept");
        log.faults.cut_fails.store(true, Ordering::Relaxed);
        log.faults.disk_full.store(true, Ordering::Relaxed);
        let (_, _, durability) = publish_outcome(&log, &[key("q")], "lost").expect("placed");
        assert_eq!(durability, Durability::Failed);
        log.faults.disk_full.store(false, Ordering::Relaxed);
        // Give the log a few retries with the cut still failing; whatever it took meanwhile
        // must read back from its place.
        let mut written = Vec::new();
        let until = std::time::Instant::now() + writer::RETRY * 3;
        while std::time::Instant::now() < until {
            if let Ok((id, at, Durability::OnDisk)) = publish_outcome(&log, &[key("q")], "during") {
                written.push((id, at));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(written.is_empty(), "the log took writes behind torn bytes");
        log.faults.cut_fails.store(false, Ordering::Relaxed);
        let (id, at) = publish_until_on_disk(&log, "after");
        assert_eq!(&log.read(id, at).expect("readable").body[..], b"after");
        flush(&log);
    }
    let (log, report) = MessageLog::open(&dir).expect("reopen");
    assert!(
        report.truncated.is_empty(),
        "no torn record: {:?}",
        report.truncated
    );
    assert_eq!(
        bodies(&log, &log.take_recovered(&key("q"))),
        ["kept", "after"]
    );
}

/// A publish that reaches the writer while the log is failing (placement refuses them, so
/// only a stray one could) is reported failed when the log resumes, never on disk; a sync
/// placed after it still runs.
#[test]
fn a_stray_publish_placed_while_failing_is_reported_failed() {
    let dir = dir("stray");
    let (log, _) = MessageLog::open(&dir).expect("open");
    publish_durably(&log, &[key("q")], "kept");
    log.faults.disk_full.store(true, Ordering::Relaxed);
    let (_, _, durability) = publish_outcome(&log, &[key("q")], "lost").expect("placed");
    assert_eq!(durability, Durability::Failed);
    let (stray_tx, stray_rx) = std_mpsc::channel();
    let (sync_tx, sync_rx) = std_mpsc::channel();
    {
        // Holding the placement lock, the writer cannot resume before both are queued, and
        // then finds them among the requests placed while failing.
        let tail = lock(&log.tail);
        assert!(tail.failing);
        log.faults.disk_full.store(false, Ordering::Relaxed);
        let id = log.next_id();
        tail.requests
            .send(Request::Write {
                record: record::publish(id, &[key("q")], &message("stray")),
                message: id,
                publish_holders: 1,
                removes: None,
                on_durable: Some(Box::new(move |durability| {
                    let _ = stray_tx.send(durability);
                })),
            })
            .expect("sent");
        tail.requests
            .send(Request::Sync(Box::new(move |durability| {
                let _ = sync_tx.send(durability);
            })))
            .expect("sent");
    }
    assert_eq!(
        stray_rx.recv_timeout(Duration::from_secs(10)).expect("ran"),
        Durability::Failed
    );
    sync_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the sync placed with it ran");
}

#[test]
fn publishes_beyond_the_backlog_bound_wait_and_all_get_written() {
    let dir = dir("backlog");
    // Room for about two records waiting: every other publish waits for the writer.
    let (log, _) = MessageLog::open_with_limits(&dir, SEGMENT_BYTES, 200).expect("open");
    let log = Arc::new(log);
    let written = Arc::new(TestCounter::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let log = log.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                for n in 0..200 {
                    let id = log.next_id();
                    let written = written.clone();
                    // A completion that publishes again runs on the writer thread: it must not
                    // wait for the writer itself.
                    let again = (n % 50 == 0).then(|| log.clone());
                    log.publish(
                        id,
                        &[key("q")],
                        &message(&format!("{p}-{n}")),
                        Some(Box::new(move |_| {
                            written.fetch_add(1, Ordering::Relaxed);
                            if let Some(log) = again {
                                let id = log.next_id();
                                let _ = log.publish(id, &[key("q")], &message("again"), None);
                            }
                        })),
                    )
                    .expect("placed");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("a publisher");
    }
    flush(&log);
    assert_eq!(written.load(Ordering::Relaxed), 800);
    flush(&log);
    assert_eq!(log.backlog.queued(), 0);
}

#[test]
fn reads_keep_a_few_segment_files_open_and_drop_deleted_ones() {
    let dir = dir("read-files");
    let (log, _) = MessageLog::open_with_segment_size(&dir, 256).expect("open");
    let stored: Vec<(u64, StoredAt)> = (0..20)
        .map(|n| publish_durably(&log, &[key("q")], &format!("body-{n}")))
        .collect();
    let segments: std::collections::HashSet<u32> =
        stored.iter().map(|(_, at)| at.segment).collect();
    assert!(segments.len() > 8, "{} segments", segments.len());
    for _ in 0..3 {
        for (n, (id, at)) in stored.iter().enumerate() {
            let read = log.read(*id, *at).expect("readable");
            assert_eq!(read.body, format!("body-{n}").as_bytes());
        }
    }
    assert_eq!(log.files.open_count(), 8);
    for (id, at) in &stored {
        log.remove(&key("q"), *id, *at);
    }
    flush(&log);
    flush(&log);
    assert_eq!(
        log.files.open_count(),
        0,
        "deleted segments leave the cache"
    );
}
