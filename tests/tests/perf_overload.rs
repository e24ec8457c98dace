//! `junction-perf`'s overload tools (issue 14) against a debug Junction: a flat-out MQTT run
//! reports what the broker accepted and delivered, losses and the broker's memory; a backlog
//! one run leaves is drained by a later run with its order checked; the stalled consumer of
//! every protocol connects, subscribes and reports the broker's memory growth. Counts and
//! the presence of figures only, never speed or memory bounds (the brokers' own overload
//! tests assert those).
//!
//! The tool is `$JUNCTION_PERF_BIN`, else `junction-perf` beside the broker binary (build it
//! with `cargo build -p junction-perf`).

mod support;

use std::time::Duration;

use junction_tests::{Broker, Listeners, temp_dir};

/// How long one run of the tool may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the tool; returns its output after checking that it exited with 0.
fn run(args: &[&str]) -> String {
    support::perf::run(args, RUN_TIMEOUT)
}

/// The JSON line of a run's output.
fn json_line(out: &str) -> &str {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("JSON ")).collect();
    assert_eq!(lines.len(), 1, "one JSON line expected in:\n{out}");
    &lines[0]["JSON ".len()..]
}

/// The raw text of field `key` in a flat JSON object (numbers, null, true, false).
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let pattern = format!("\"{key}\":");
    let start = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim()
}

fn number(json: &str, key: &str) -> f64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn a_flat_out_mqtt_run_reports_acceptance_losses_and_broker_memory() {
    let broker = Broker::start_listening(temp_dir("perf-overload"), Listeners::Tcp);
    let port = broker.mqtt_addr().port().to_string();
    let pid = broker.pid().to_string();
    for qos in ["0", "1"] {
        let out = run(&[
            "mqtt",
            "--port",
            &port,
            "--producers",
            "3",
            "--consumers",
            "1",
            "--size",
            "64",
            "--qos",
            qos,
            "--count",
            "2000",
            "--duration",
            "60",
            "--drain",
            "60",
            "--broker-pid",
            &pid,
            "--quiet",
        ]);
        let json = json_line(&out);
        assert_eq!(number(json, "sent"), 6000.0, "{json}");
        assert!(number(json, "accepted_per_s") > 0.0, "{json}");
        assert!(number(json, "broker_hwm_kib") > 0.0, "{json}");
        assert!(
            number(json, "broker_rss_peak_kib") >= number(json, "broker_rss_start_kib"),
            "{json}"
        );
        assert_eq!(number(json, "out_of_order"), 0.0, "{json}");
        assert_eq!(
            number(json, "received") + number(json, "undelivered"),
            6000.0,
            "{json}"
        );
        if qos == "1" {
            assert_eq!(number(json, "confirmed"), 6000.0, "{json}");
            assert_eq!(number(json, "lost"), 0.0, "{json}");
            assert_eq!(number(json, "skipped"), 0.0, "{json}");
        } else {
            assert_eq!(field(json, "lost"), "null", "{json}");
        }
    }
    assert!(broker.stop());
}

#[test]
fn a_backlog_left_by_one_run_drains_in_order_in_the_next() {
    let broker = Broker::start_listening(temp_dir("perf-overload"), Listeners::Tcp);
    let port = broker.amqp_addr().port().to_string();
    let pid = broker.pid().to_string();
    let out = run(&[
        "amqp",
        "--port",
        &port,
        "--producers",
        "1",
        "--consumers",
        "0",
        "--size",
        "64",
        "--count",
        "5000",
        "--duration",
        "60",
        "--keep",
        "--run-id",
        "backlog",
        "--broker-pid",
        &pid,
        "--quiet",
    ]);
    assert_eq!(number(json_line(&out), "sent"), 5000.0);
    let out = run(&[
        "amqp",
        "--port",
        &port,
        "--producers",
        "0",
        "--consumers",
        "1",
        "--existing",
        "--expect",
        "5000",
        "--run-id",
        "backlog",
        "--drain",
        "60",
        "--duration",
        "1",
        "--broker-pid",
        &pid,
        "--quiet",
    ]);
    let json = json_line(&out);
    assert_eq!(number(json, "received"), 5000.0, "{json}");
    assert_eq!(number(json, "out_of_order"), 0.0, "{json}");
    assert_eq!(number(json, "skipped"), 0.0, "{json}");
    assert_eq!(field(json, "complete"), "true", "{json}");
    assert!(broker.stop());
}

#[test]
fn a_stalled_consumer_of_each_protocol_reports_the_brokers_growth() {
    let broker = Broker::start_listening(temp_dir("perf-overload"), Listeners::Tcp);
    let pid = broker.pid().to_string();
    let amqp = broker.amqp_addr().port().to_string();
    let stomp = broker.stomp_addr().port().to_string();
    let mqtt = broker.mqtt_addr().port().to_string();
    let fill = [
        "--producers",
        "1",
        "--consumers",
        "0",
        "--size",
        "2048",
        "--count",
        "500",
        "--duration",
        "60",
        "--quiet",
    ];
    run(&[
        &[
            "amqp",
            "--port",
            &amqp,
            "--persistent",
            "--confirm",
            "64",
            "--keep",
        ][..],
        &fill,
    ]
    .concat());
    run(&[
        &[
            "stomp",
            "--port",
            &stomp,
            "--destination",
            "/queue/stalled",
            "--persistent",
        ][..],
        &["--confirm", "64"],
        &fill,
    ]
    .concat());
    let session = [
        "stall",
        "--protocol",
        "mqtt",
        "--port",
        &mqtt,
        "--topic",
        "perf/stalled",
        "--qos",
        "1",
        "--client-id",
        "stalled-test",
    ];
    let out = run(&[&session[..], &["--prepare"]].concat());
    assert!(out.contains("subscribed"), "{out}");
    run(&[
        &[
            "mqtt",
            "--port",
            &mqtt,
            "--topic",
            "perf/stalled",
            "--qos",
            "1",
        ][..],
        &fill,
    ]
    .concat());

    for (protocol, stall) in [
        (
            "amqp",
            vec![
                "stall",
                "--protocol",
                "amqp",
                "--port",
                &amqp,
                "--queue",
                "perf-q-0",
            ],
        ),
        (
            "stomp",
            vec![
                "stall",
                "--protocol",
                "stomp",
                "--port",
                &stomp,
                "--destination",
                "/queue/stalled",
            ],
        ),
        ("mqtt", [&session[..], &["--clean-up"]].concat()),
    ] {
        let out = run(&[&stall[..], &["--hold", "1", "--broker-pid", &pid]].concat());
        let json = json_line(&out);
        assert_eq!(field(json, "protocol"), format!("\"{protocol}\""), "{json}");
        assert!(number(json, "broker_rss_start_kib") > 0.0, "{json}");
        assert!(
            number(json, "broker_rss_peak_kib") >= number(json, "broker_rss_start_kib"),
            "{json}"
        );
        number(json, "broker_rss_growth_kib");
    }
    assert!(broker.stop());
}
