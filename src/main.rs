//! Start-up only: logs, typed config, AWS clients (once), then the runtime.
// The adapter, the use case and the SDK futures nest deeply; the default limit of 128 is too low for them.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use notify_offer_contacts::{aws, config::Config, event, telemetry};
use serde_json::Value;

// One thread: at the template's 128 MB, Lambda gives the function a small
// share of one vCPU, so a second worker thread only adds wake-ups and
// work-stealing (BENCHMARKS.md: a third less CPU a notification).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let sdk = aws::sdk_config().await;
    let app = Arc::new(notify_offer_contacts::app(&sdk, &config));
    let edge = Arc::new(event::Edge {
        access: config.access.clone(),
        metrics: Some(config.metrics.clone()),
    });
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
        let (app, edge) = (Arc::clone(&app), Arc::clone(&edge));
        async move { event::handle(&*app, &edge, ev).await }
    }))
    .await
}
