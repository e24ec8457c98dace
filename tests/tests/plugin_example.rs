//! `examples/plugin`, a broker built on the `junction` crate with an exchange type and an auth
//! backend of its own: the test builds it with cargo, runs its binary with the usual command
//! line, logs in through its backend with lapin and routes through its exchange type.

mod common;

use std::path::PathBuf;

use common::*;
use junction_tests::Broker;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

/// Builds `examples/plugin` with cargo (a no-op when the workspace build already did) and
/// returns its binary, `junction-with-plugins`.
fn build_example() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--locked",
            "--quiet",
            "-p",
            "junction-example-plugin",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "examples/plugin does not build");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("junction-with-plugins")
}

#[tokio::test]
async fn the_example_broker_logs_in_through_its_backend_and_routes_round_robin() {
    let bin = build_example();
    let config = junction_tests::temp_dir("plugin-config").join("plugin.toml");
    std::fs::write(
        &config,
        "[auth]\nbackends = [\"shared-secret\", \"internal\"]\n\n[auth.shared-secret]\nsecret = \"s3cret\"\nvhosts = [\"/\"]\n",
    )
    .expect("write the configuration");
    let broker = Broker::start_binary(bin, &["--config", config.to_str().expect("utf-8 path")]);
    let url =
        |user: &str, password: &str| format!("amqp://{user}:{password}@{}/%2f", broker.amqp_addr());
    // Its backend lets any name in with the secret; the internal users still work after it.
    let connection = try_connect(&url("robot-7", "s3cret"))
        .await
        .expect("shared secret");
    try_connect(&url("guest", "guest"))
        .await
        .expect("internal user");
    assert!(try_connect(&url("robot-7", "wrong")).await.is_err());

    let ch = channel(&connection).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "turns".into(),
            ExchangeKind::Custom("x-round-robin".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare the plugin's exchange type");
    for queue in ["turn-a", "turn-b"] {
        declare(&ch, queue).await;
        bind(&ch, queue, "turns", "").await.expect("bind");
    }
    for n in 0..6 {
        publish(&ch, "turns", "", format!("m{n}").as_bytes()).await;
    }
    assert_eq!(ready(&ch, "turn-a").await, 3);
    assert_eq!(ready(&ch, "turn-b").await, 3);
}
