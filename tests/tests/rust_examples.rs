//! The lapin tutorial programs of `examples/rust` run against the real broker, as the README
//! says: hello world, RPC and topics.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use junction_tests::Broker;

const DEADLINE: Duration = Duration::from_secs(20);

fn example(name: &str) -> PathBuf {
    let bin = junction_tests::binary().with_file_name(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// Starts a consumer and waits for its `Waiting` line; returns it and a receiver of its lines.
fn start_consumer(broker: &Broker, name: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(example(name))
        .args(args)
        .env("AMQP_URL", broker.amqp_url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(DEADLINE).expect("consumer is ready");
    assert!(
        first.starts_with("Waiting"),
        "unexpected first line {first:?}"
    );
    (child, rx)
}

fn run(broker: &Broker, name: &str, args: &[&str]) -> Output {
    let output = Command::new(example(name))
        .args(args)
        .env("AMQP_URL", broker.amqp_url())
        .output()
        .expect("run example");
    assert!(output.status.success(), "{name} failed: {output:?}");
    output
}

fn finish(mut child: Child, rx: &mpsc::Receiver<String>, expected: &[&str]) {
    for want in expected {
        let line = rx.recv_timeout(DEADLINE).expect("consumer output");
        assert_eq!(line, *want);
    }
    let status = child.wait().expect("consumer exits after --count");
    assert!(status.success());
}

#[test]
fn hello_world_delivers_the_message() {
    let broker = Broker::start();
    let (child, rx) = start_consumer(&broker, "hello_receive", &["--count", "1"]);
    run(&broker, "hello_send", &["hi", "there"]);
    finish(child, &rx, &["Received hi there"]);
}

#[test]
fn rpc_replies_are_matched_by_correlation_id() {
    let broker = Broker::start();
    let (child, _rx) = start_consumer(&broker, "rpc_server", &["--count", "3"]);
    let output = run(&broker, "rpc_client", &["10", "20", "5"]);
    let text = String::from_utf8_lossy(&output.stdout);
    for answer in ["fib(10) = 55", "fib(20) = 6765", "fib(5) = 5"] {
        assert!(text.contains(answer), "{answer} missing from {text}");
    }
    let mut child = child;
    assert!(child.wait().expect("server exits").success());
}

#[test]
fn topic_patterns_pick_their_messages() {
    let broker = Broker::start();
    let (child, rx) = start_consumer(
        &broker,
        "topic_receive",
        &["--count", "2", "kern.#", "*.critical"],
    );
    run(&broker, "topic_emit", &["kern", "boot"]);
    run(&broker, "topic_emit", &["user.info", "ignored"]);
    run(&broker, "topic_emit", &["disk.critical", "full"]);
    finish(child, &rx, &["kern:boot", "disk.critical:full"]);
}
