//! The overflow against a real directory.

use bytes::Bytes;
use junction_core::Properties;

use super::*;

fn dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "junction-overflow-test-{}-{label}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn key() -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        queue: "q".into(),
    }
}

fn message(n: usize) -> Message {
    let body = format!("{n:0>1000}");
    Message::new("", "q", Properties::default(), Bytes::from(body))
}

fn number(message: &Message) -> usize {
    std::str::from_utf8(&message.body)
        .ok()
        .and_then(|body| body.parse().ok())
        .expect("a numbered body")
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("overflow"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[test]
fn messages_read_back_in_memory_and_after_a_flush_alike() {
    let dir = dir("round-trip");
    let files_ = OverflowFiles::open_with_segment_size(&dir, 64 * 1024).expect("open");
    let overflow = files_.open(&key());
    let places: Vec<PagedAt> = (0..3000)
        .map(|n| overflow.append(&message(n)).expect("appended"))
        .collect();
    assert!(
        places.windows(2).any(|w| w[0].segment != w[1].segment),
        "rolled"
    );
    let read = overflow.read(&places[..10]);
    assert_eq!(
        read.iter().flatten().map(number).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert!(overflow.wants_flush());
    overflow.flush();
    assert_eq!(overflow.unwritten_bytes(), 0);
    assert!(files(&dir) > 10);
    // A batch spanning segments, out of order, reads back whole.
    let mut wanted: Vec<PagedAt> = places.iter().step_by(7).copied().collect();
    wanted.swap(0, 5);
    let read = overflow.read(&wanted);
    for (at, message) in wanted.iter().zip(read) {
        let index = places.iter().position(|p| p == at).expect("known");
        assert_eq!(number(&message.expect("read back")), index);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn released_segments_are_deleted_and_an_empty_overflow_starts_over() {
    let dir = dir("release");
    let files_ = OverflowFiles::open_with_segment_size(&dir, 64 * 1024).expect("open");
    let overflow = files_.open(&key());
    let places: Vec<PagedAt> = (0..1000)
        .map(|n| overflow.append(&message(n)).expect("appended"))
        .collect();
    overflow.flush();
    let before = files(&dir);
    for at in &places[..500] {
        overflow.release(*at);
    }
    assert!(
        overflow.wants_flush(),
        "emptied segments wait for the flush"
    );
    overflow.flush();
    let after = files(&dir);
    assert!(after < before && after > 0, "{before} -> {after}");
    let rest = overflow.read(&places[500..]);
    assert_eq!(rest.iter().flatten().count(), 500);
    for at in &places[500..] {
        overflow.release(*at);
    }
    overflow.flush();
    assert_eq!(files(&dir), 0);
    let again = overflow.append(&message(7)).expect("appended");
    assert_eq!(again.offset, 0);
    assert_eq!(
        number(&overflow.read(&[again])[0].clone().expect("read")),
        7
    );
    overflow.close();
    assert_eq!(files(&dir), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_a_previous_run_left_is_emptied_at_start_up() {
    let dir = dir("start-up");
    {
        let files_ = OverflowFiles::open(&dir).expect("open");
        let overflow = files_.open(&key());
        for n in 0..2000 {
            overflow.append(&message(n)).expect("appended");
        }
        overflow.flush();
        assert!(files(&dir) > 0);
    }
    let _reopened = OverflowFiles::open(&dir).expect("open");
    assert_eq!(files(&dir), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_persistent_message_keeps_its_store_id() {
    let dir = dir("store-id");
    let files_ = OverflowFiles::open(&dir).expect("open");
    let overflow = files_.open(&key());
    let mut persistent = message(1);
    persistent.store_id = Some(42);
    let at = overflow.append(&persistent).expect("appended");
    overflow.flush();
    let read = overflow.read(&[at]).pop().flatten().expect("read");
    assert_eq!(read.store_id, Some(42));
    let _ = std::fs::remove_dir_all(&dir);
}
