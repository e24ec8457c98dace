//! Definitions import: `Definitions::parse` on arbitrary bytes (JSON, depth-limited, then
//! RabbitMQ's definitions shape); what parses is imported into a fresh in-memory broker
//! through the management API's `Admin::import`, as `POST /api/definitions` does. Never
//! panics; whatever was imported exports to a document that parses again.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use junction_admin::Admin;
use junction_admin::definitions::Definitions;
use junction_core::{Authorizer, Broker, BrokerConfig, ExchangeTypeRegistry, InternalUsers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(definitions) = Definitions::parse(data) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let users = Arc::new(InternalUsers::new());
        let auth = Authorizer::new(vec![users.clone()], Duration::from_secs(5));
        let broker = Broker::new(
            BrokerConfig::default(),
            Arc::new(ExchangeTypeRegistry::with_builtins()),
            auth,
        );
        let admin = Admin::new(broker, Some(users), None);
        let _ = admin.import(&definitions, None, false).await;
        let exported = admin.export(None).expect("everything exports");
        let text = serde_json::to_vec(&exported).expect("JSON");
        if let Err(error) = Definitions::parse(&text) {
            panic!("the export does not parse again: {error}");
        }
    });
});
