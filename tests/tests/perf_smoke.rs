//! `junction-perf` against a debug Junction: each protocol for 2 seconds at a low fixed rate,
//! checking counts (everything sent arrived, the JSON line parses), never speed.
//!
//! Where the tool comes from: `$JUNCTION_PERF_BIN`, else `junction-perf` beside the broker
//! binary (`cargo build --workspace`, which the README's test command runs, puts it in
//! `target/debug`), else the test builds it once with `cargo build -p junction-perf` (a
//! binary crate cannot be a dev-dependency, and `CARGO_BIN_EXE_*` only names binaries of the
//! crate under test).
//!
//! The harness starts brokers with STOMP off, so the STOMP test starts its own broker with
//! the harness's binary and data directories.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use junction_tests::Broker;

mod support;

/// How long one run of the tool may take (2 s of publishing, then draining).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Messages per second per producer.
const RATE: u64 = 100;

/// Seconds of publishing.
const SECONDS: u64 = 2;

/// Runs the tool with `args` (plus the low rate, the short duration and the broker's pid);
/// returns its JSON figures after checking that it succeeded.
fn perf(pid: u32, args: &[&str]) -> HashMap<String, Json> {
    let (rate, seconds, pid) = (RATE.to_string(), SECONDS.to_string(), pid.to_string());
    let fixed = [
        "--rate",
        &rate,
        "--duration",
        &seconds,
        "--broker-pid",
        &pid,
        "--quiet",
    ];
    let out = support::perf::run(&[args, &fixed[..]].concat(), RUN_TIMEOUT);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("JSON ")).collect();
    assert_eq!(lines.len(), 1, "one JSON line expected in:\n{out}");
    parse_flat_json(&lines[0]["JSON ".len()..])
        .unwrap_or_else(|e| panic!("bad JSON line ({e}): {}", lines[0]))
}

/// Checks the counts of a run with `producers` producers and `copies` copies per message.
fn check_counts(figures: &HashMap<String, Json>, producers: u64, copies: u64, confirms: bool) {
    let number = |key: &str| match figures.get(key) {
        Some(Json::Number(n)) => *n,
        other => panic!("{key} is {other:?} in {figures:?}"),
    };
    let sent = number("sent") as u64;
    let most = RATE * SECONDS * producers + producers;
    assert!(
        sent > 0 && sent <= most,
        "sent {sent}, at most {most}: {figures:?}"
    );
    assert_eq!(number("received") as u64, sent * copies, "{figures:?}");
    assert_eq!(number("expected") as u64, sent * copies, "{figures:?}");
    assert_eq!(number("copies") as u64, copies, "{figures:?}");
    assert_eq!(number("foreign"), 0.0, "{figures:?}");
    if confirms {
        assert_eq!(number("confirmed") as u64, sent, "{figures:?}");
    }
    assert_eq!(figures.get("complete"), Some(&Json::Bool(true)));
    assert_eq!(figures.get("ok"), Some(&Json::Bool(true)));
    assert!(number("latency_count") as u64 == sent * copies);
    assert!(number("latency_p50_us") > 0.0 && number("latency_max_us") >= number("latency_p50_us"));
    assert!(number("broker_cpu_s") >= 0.0, "{figures:?}");
}

#[test]
fn amqp_confirmed_persistent_messages_all_arrive() {
    let broker = Broker::start();
    let url = broker.amqp_url();
    let figures = perf(
        broker.pid(),
        &[
            "amqp",
            "--url",
            &url,
            "--producers",
            "2",
            "--size",
            "256",
            "--confirm",
            "16",
            "--persistent",
            "--prefetch",
            "10",
        ],
    );
    assert_eq!(figures.get("protocol"), Some(&Json::String("amqp".into())));
    check_counts(&figures, 2, 1, true);
    assert!(broker.stop());
}

#[test]
fn amqp_fanout_delivers_a_copy_to_every_queue() {
    let broker = Broker::start();
    let url = broker.amqp_url();
    let figures = perf(
        broker.pid(),
        &[
            "amqp",
            "--url",
            &url,
            "--exchange-type",
            "fanout",
            "--queues",
            "3",
            "--consumers",
            "3",
            "--auto-ack",
        ],
    );
    check_counts(&figures, 1, 3, false);
    assert!(broker.stop());
}

#[test]
fn mqtt_qos0_and_qos1_messages_all_arrive() {
    let broker = Broker::start_mqtt();
    let port = broker.mqtt_addr().port().to_string();
    for qos in ["0", "1"] {
        let figures = perf(
            broker.pid(),
            &[
                "mqtt",
                "--port",
                &port,
                "--producers",
                "3",
                "--size",
                "64",
                "--qos",
                qos,
            ],
        );
        assert_eq!(figures.get("protocol"), Some(&Json::String("mqtt".into())));
        check_counts(&figures, 3, 1, qos == "1");
    }
    assert!(broker.stop());
}

#[test]
fn stomp_receipted_messages_all_arrive() {
    let broker = StompBroker::start();
    let port = broker.addr.port().to_string();
    for extra in [
        &["--auto-ack"][..],
        &["--confirm", "8", "--prefetch", "4"][..],
    ] {
        let figures = perf(
            broker.child.id(),
            &[&["stomp", "--port", &port][..], extra].concat(),
        );
        assert_eq!(figures.get("protocol"), Some(&Json::String("stomp".into())));
        check_counts(&figures, 1, 1, extra.contains(&"--confirm"));
    }
}

/// A broker with the STOMP listener on (the harness turns it off).
struct StompBroker {
    child: Child,
    addr: SocketAddr,
}

impl StompBroker {
    fn start() -> StompBroker {
        let mut child = Command::new(junction_tests::binary())
            .arg("--data-dir")
            .arg(junction_tests::temp_dir("perf-stomp"))
            .args(["--amqp", "off", "--mqtt", "off", "--stomp", "127.0.0.1:0"])
            .args([
                "--http",
                "off",
                "--web-stomp",
                "off",
                "--web-mqtt",
                "off",
                "--prometheus",
                "off",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn broker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = None;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the broker prints 'ready'");
            if line == "ready" {
                break;
            }
            if let Some(text) = line.strip_prefix("listening stomp ") {
                addr = Some(text.parse().expect("STOMP address"));
            }
        }
        StompBroker {
            child,
            addr: addr.expect("a STOMP listener"),
        }
    }
}

impl Drop for StompBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON value of a flat object (the tool's JSON line has no nested values).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
}

/// Parses a flat JSON object strictly (the test crate has no JSON library).
fn parse_flat_json(text: &str) -> Result<HashMap<String, Json>, String> {
    let mut chars = text.trim().chars().peekable();
    let mut object = HashMap::new();
    fn expect(chars: &mut std::iter::Peekable<std::str::Chars>, c: char) -> Result<(), String> {
        match chars.next() {
            Some(got) if got == c => Ok(()),
            got => Err(format!("expected {c:?}, got {got:?}")),
        }
    }
    fn string(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match chars.next().ok_or("unterminated string")? {
                '"' => return Ok(out),
                '\\' => match chars.next().ok_or("unterminated escape")? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    c @ ('"' | '\\' | '/') => out.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                c => out.push(c),
            }
        }
    }
    expect(&mut chars, '{')?;
    if chars.peek() == Some(&'}') {
        chars.next();
        return Ok(object);
    }
    loop {
        expect(&mut chars, '"')?;
        let key = string(&mut chars)?;
        expect(&mut chars, ':')?;
        let value = match chars.peek().copied().ok_or("missing value")? {
            '"' => {
                chars.next();
                Json::String(string(&mut chars)?)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut number = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_digit() || "+-.eE".contains(c) {
                        number.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                Json::Number(number.parse().map_err(|_| format!("bad number {number}"))?)
            }
            _ => {
                let word: String =
                    std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphabetic())).collect();
                match word.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    "null" => Json::Null,
                    _ => return Err(format!("unexpected {word:?}")),
                }
            }
        };
        if object.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate key {key}"));
        }
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => return Err(format!("expected , or }}, got {other:?}")),
        }
    }
    match chars.next() {
        None => Ok(object),
        Some(c) => Err(format!("trailing {c:?}")),
    }
}

#[test]
fn the_json_parser_is_strict() {
    let parsed = parse_flat_json(r#"{"a":1.5,"b":"x\"y","c":true,"d":null,"e":-2}"#).unwrap();
    assert_eq!(parsed["a"], Json::Number(1.5));
    assert_eq!(parsed["b"], Json::String("x\"y".into()));
    assert_eq!(parsed["c"], Json::Bool(true));
    assert_eq!(parsed["d"], Json::Null);
    assert_eq!(parsed["e"], Json::Number(-2.0));
    assert!(parse_flat_json(r#"{"a":1,}"#).is_err());
    assert!(parse_flat_json(r#"{"a":1} x"#).is_err());
    assert!(parse_flat_json(r#"{"a":tru}"#).is_err());
}
