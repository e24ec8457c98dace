//! `junction-perf`: a load generator and benchmark for AMQP 0-9-1, MQTT 3.1.1 and STOMP
//! brokers. See `junction-perf --help` and `crates/perf/README.md`.

mod amqp;
mod bench;
mod cli;
mod mqtt;
mod payload;
mod report;
mod stomp;

use clap::Parser;

use crate::cli::{Cli, Protocol};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The clock origin is taken before any task runs.
    payload::now_nanos();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("junction-perf: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.protocol {
            Protocol::Amqp(args) => amqp::run(args).await,
            Protocol::Mqtt(args) => mqtt::run(args).await,
            Protocol::Stomp(args) => stomp::run(args).await,
        }
    });
    // Connections that are still closing must not hold the process up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("junction-perf: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
