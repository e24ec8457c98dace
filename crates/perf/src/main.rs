//! `junction-perf`: a load generator and benchmark for AMQP 0-9-1, MQTT 3.1.1 and STOMP
//! brokers. See `junction-perf --help` and `crates/perf/README.md`.

mod amqp;
mod bench;
mod bindings;
mod cli;
mod delayed;
mod memory;
mod mqtt;
mod mqtt_wire;
mod net;
mod payload;
mod report;
mod stall;
mod stomp;

use clap::Parser;

use crate::cli::{Cli, Protocol};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The clock origin is taken before any task runs.
    payload::now_nanos();
    let runtime = match runtime_for(&cli.protocol).enable_all().build() {
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
            Protocol::Bindings(args) => bindings::run(args).await,
            Protocol::Stall(args) => stall::run(args).await,
            Protocol::Delayed(args) => delayed::run(args).await,
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

/// The runtime a run gets.
///
/// lapin does its socket I/O, frame parsing and serialisation on a thread of its own per
/// connection; our tasks only hand it publishes and take its deliveries. At an unlimited
/// rate the machine's cores are shared with the broker and the figure is throughput,
/// so the AMQP tool should spend as little CPU per message as it can: on a current-thread
/// runtime our tasks, lapin's timers and the reactor that tells lapin's threads when their
/// sockets are ready share one thread, so a delivery or a written batch wakes that one thread
/// instead of a parked worker of the multi-threaded runtime that then wakes the other to
/// steal work: fewer context switches and a little less CPU per message.
/// At a fixed rate the figure is latency, and there the producer's batch and the consumer's
/// deliveries should not wait for each other on one thread (in two runs at 20k msg/s the
/// median went from about 250 to 330 µs), so those runs keep the multi-threaded runtime; so
/// do MQTT and STOMP, whose clients do their I/O on the runtime itself.
fn runtime_for(protocol: &Protocol) -> tokio::runtime::Builder {
    match protocol {
        Protocol::Amqp(args) if args.common.rate <= 0.0 => {
            tokio::runtime::Builder::new_current_thread()
        }
        Protocol::Amqp(_)
        | Protocol::Mqtt(_)
        | Protocol::Stomp(_)
        | Protocol::Bindings(_)
        | Protocol::Stall(_)
        | Protocol::Delayed(_) => tokio::runtime::Builder::new_multi_thread(),
    }
}
