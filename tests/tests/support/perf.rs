//! Running `junction-perf` from a test: where the binary is, and one run with a deadline that
//! returns its standard output.
//!
//! The tool is `$JUNCTION_PERF_BIN`, else `junction-perf` beside the broker binary (`cargo
//! build --workspace`, which the README's test command runs, puts it in `target/debug`), else
//! it is built once with `cargo build -p junction-perf` (a binary crate cannot be a
//! dev-dependency, and `CARGO_BIN_EXE_*` only names binaries of the crate under test).

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `junction-perf` binary, built on first use if it is not there.
pub fn binary() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    if let Ok(path) = std::env::var("JUNCTION_PERF_BIN") {
        return PathBuf::from(path);
    }
    let beside_broker = junction_tests::binary().with_file_name("junction-perf");
    let path = if beside_broker.exists() {
        beside_broker
    } else {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "junction-perf"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p junction-perf");
        assert!(status.success(), "cargo build -p junction-perf failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("junction-perf")
    };
    assert!(path.exists(), "{} not found", path.display());
    *built = Some(path.clone());
    path
}

/// Runs the tool with `args`; returns its standard output after checking that it exited
/// with 0 within `timeout`.
pub fn run<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], timeout: Duration) -> String {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn junction-perf");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((out, err));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for junction-perf") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("junction-perf {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = rx.recv_timeout(Duration::from_secs(10)).expect("output");
    assert!(
        status.success(),
        "junction-perf {args:?} failed ({status}):\n{out}\n{err}"
    );
    out
}
