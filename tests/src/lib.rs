//! The end-to-end test harness: starts the real `junction` binary on ephemeral loopback ports
//! with its own data directory, reads the addresses it prints, and stops it with SIGTERM (or
//! SIGKILL) when asked or dropped.
//!
//! The binary is `$JUNCTION_BIN`, or `target/debug/junction` in this workspace; the README's
//! test command builds it before the tests run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the broker gets to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the broker binary under test.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("JUNCTION_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("junction")
}

/// A fresh, empty directory for one broker's data.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("junction-test-{}-{label}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Which listeners a broker opens, each on a free loopback port; the others are off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listeners {
    /// AMQP only.
    Amqp,
    /// AMQP, MQTT over TCP, and MQTT over WebSocket on the HTTP and web-MQTT listeners.
    WithMqtt,
    /// AMQP, MQTT and STOMP, each over TCP; nothing over HTTP or WebSocket.
    Tcp,
}

impl Listeners {
    /// The command-line flags that open these listeners and turn the others off.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Listeners::Amqp => &[
                "--amqp",
                "127.0.0.1:0",
                "--mqtt",
                "off",
                "--stomp",
                "off",
                "--http",
                "off",
                "--web-stomp",
                "off",
                "--web-mqtt",
                "off",
                "--prometheus",
                "off",
            ],
            Listeners::WithMqtt => &[
                "--amqp",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--stomp",
                "off",
                "--http",
                "127.0.0.1:0",
                "--web-stomp",
                "off",
                "--web-mqtt",
                "127.0.0.1:0",
                "--prometheus",
                "off",
            ],
            Listeners::Tcp => &[
                "--amqp",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--stomp",
                "127.0.0.1:0",
                "--http",
                "off",
                "--web-stomp",
                "off",
                "--web-mqtt",
                "off",
                "--prometheus",
                "off",
            ],
        }
    }
}

/// A running broker process.
pub struct Broker {
    child: Child,
    /// Addresses by listener name, as printed (`amqp`, `mqtt`, ...).
    pub listeners: HashMap<String, SocketAddr>,
    /// Its data directory.
    pub data_dir: PathBuf,
    output: mpsc::Receiver<String>,
}

impl Broker {
    /// Starts a broker with only the AMQP listener, on a free loopback port.
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// Starts a broker with extra arguments (for example `--config FILE`).
    pub fn start_with(extra: &[&str]) -> Broker {
        let data_dir = temp_dir("broker");
        Self::start_in(data_dir, extra)
    }

    /// Starts a broker on an existing data directory.
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Broker {
        Self::launch(data_dir, Listeners::Amqp, extra)
    }

    /// Starts a broker with the AMQP, MQTT, HTTP and MQTT-over-WebSocket listeners, each on a
    /// free loopback port (see [`Broker::mqtt_addr`], [`Broker::http_addr`],
    /// [`Broker::web_mqtt_addr`]).
    pub fn start_mqtt() -> Broker {
        Self::start_mqtt_in(temp_dir("broker"), &[])
    }

    /// Like [`Broker::start_mqtt`], on an existing data directory and with extra arguments.
    pub fn start_mqtt_in(data_dir: PathBuf, extra: &[&str]) -> Broker {
        Self::launch(data_dir, Listeners::WithMqtt, extra)
    }

    /// Starts a broker on `data_dir` (fresh from [`temp_dir`], or one a stopped broker left)
    /// with the default configuration and the `listeners` given.
    pub fn start_listening(data_dir: PathBuf, listeners: Listeners) -> Broker {
        Self::launch(data_dir, listeners, &[])
    }

    /// Starts a broker on `data_dir` (fresh from [`temp_dir`], or one a stopped broker left)
    /// with the configuration `toml` and the `listeners` given. The configuration is written to
    /// a directory of its own, which is removed once the broker has read it.
    pub fn start_configured(data_dir: PathBuf, toml: &str, listeners: Listeners) -> Broker {
        let config_dir = temp_dir("config");
        let config = config_dir.join("junction.toml");
        std::fs::write(&config, toml).expect("write config");
        let config = config.to_string_lossy().into_owned();
        let broker = Self::launch(data_dir, listeners, &["--config", &config]);
        // The configuration is read at start.
        let _ = std::fs::remove_dir_all(&config_dir);
        broker
    }

    /// Starts another broker binary built on the `junction` crate (a broker with plugins of
    /// its own), with the AMQP listener and extra arguments.
    pub fn start_binary(bin: PathBuf, extra: &[&str]) -> Broker {
        Self::launch_binary(bin, temp_dir("broker"), Listeners::Amqp, extra)
    }

    fn launch(data_dir: PathBuf, listeners: Listeners, extra: &[&str]) -> Broker {
        Self::launch_binary(binary(), data_dir, listeners, extra)
    }

    fn launch_binary(
        bin: PathBuf,
        data_dir: PathBuf,
        listeners: Listeners,
        extra: &[&str],
    ) -> Broker {
        assert!(
            bin.exists(),
            "broker binary {} not found: run `cargo build -p junction` first (or set JUNCTION_BIN)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(listeners.flags())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listeners = HashMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    panic!("broker did not print 'ready' within {START_TIMEOUT:?}");
                }
            };
            if line == "ready" {
                break;
            }
            if let Some(rest) = line.strip_prefix("listening ")
                && let Some((name, addr)) = rest.split_once(' ')
            {
                let addr = addr.parse().expect("listener address");
                listeners.insert(name.to_owned(), addr);
            }
        }
        Broker {
            child,
            listeners,
            data_dir,
            output: rx,
        }
    }

    /// The AMQP listener's address.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.listeners["amqp"]
    }

    /// The address of listener `name` (`amqp`, `mqtt`, `stomp`, `http`, `web-mqtt`); panics if the
    /// broker did not open it.
    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.listeners.get(name) {
            Some(addr) => *addr,
            None => panic!("the broker has no '{name}' listener (see `Listeners`)"),
        }
    }

    /// The MQTT (TCP) listener's address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listener("mqtt")
    }

    /// The STOMP (TCP) listener's address.
    pub fn stomp_addr(&self) -> SocketAddr {
        self.listener("stomp")
    }

    /// The HTTP listener's address (MQTT over WebSocket at `/ws`).
    pub fn http_addr(&self) -> SocketAddr {
        self.listener("http")
    }

    /// The MQTT-over-WebSocket listener's address (path `/ws`).
    pub fn web_mqtt_addr(&self) -> SocketAddr {
        self.listener("web-mqtt")
    }

    /// An AMQP URI for guest on the default vhost.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to the broker.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `timeout`; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the broker printed on stdout after `ready`.
    pub fn more_output(&self) -> Vec<String> {
        self.output.try_iter().collect()
    }

    /// Stops the broker with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> bool {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15)).unwrap_or(false)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes; returns its last answer.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
