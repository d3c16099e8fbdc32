//! notify-offer-contacts: `POST /org/{orgId}/offer/{offerId}/notifyContacts`
//! as one AWS Lambda. See README.md for the flow and the contract.

pub mod aws;
pub mod channels;
pub mod config;
pub mod event;
pub mod feedback;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod outbound;
pub mod ports;
pub mod rate;
pub mod read;
pub mod telemetry;
pub mod tracking;
pub mod work;

use aws_config::SdkConfig;

use crate::aws::{dynamo::DynamoStore, ses::SesMailer, sns::SnsPublisher};
use crate::config::Config;
use crate::notify::Notifier;

/// The function as deployed: the use case wired to DynamoDB, SES and SNS.
pub type App = Notifier<DynamoStore>;

/// Builds the clients once and wires them to the use case.
pub fn app(sdk: &SdkConfig, config: &Config) -> App {
    let sns = SnsPublisher::new(aws::sns_client(sdk));
    let allowance = outbound::allowance(&config.test_only_local_targets);
    Notifier {
        store: DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            config.table_name.clone(),
        ),
        channels: channels::Providers {
            mailer: std::sync::Arc::new(SesMailer::new(
                aws::ses_client(sdk),
                config.sender_email.clone(),
                config.ses_configuration_set.clone(),
            )),
            sms: std::sync::Arc::new(sns.clone()),
            topics: std::sync::Arc::new(sns),
            web: std::sync::Arc::new(channels::WebTargets::new(
                std::sync::Arc::new(outbound::HttpsPoster::from_env(allowance.clone())),
                std::sync::Arc::new(channels::web::CachedSecrets::new(
                    std::sync::Arc::new(aws::secrets::SecretsManager::new(sdk)),
                    std::time::Duration::from_secs(300),
                    1000,
                )),
                config.secret_prefix.clone(),
                allowance,
            )),
        },
        concurrency: config.delivery_concurrency,
        rates: rate_limits(config),
        policy: notify::Policy {
            idempotency_window: config.idempotency_window,
            hand_off: config.hand_off.clone(),
            topic_arn_prefix: config.topic_arn_prefix.clone(),
            ..notify::Policy::default()
        },
        queue: config.work_queue_url.as_ref().map(|url| {
            std::sync::Arc::new(aws::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url))
                as std::sync::Arc<dyn ports::WorkQueue>
        }),
    }
}

/// One bucket per channel, holding one second of sends as its burst; with
/// `RATE_SPLIT` n, this instance's share of the rate (1/n of it).
pub fn rate_limits(config: &Config) -> rate::RateLimits {
    let split = f64::from(config.rate_split.max(1));
    let limiter = |r: Option<f64>| {
        r.map(|r| r / split)
            .map(|r| rate::RateLimiter::new(r, r.ceil().max(1.0) as u32))
    };
    rate::RateLimits {
        email: limiter(config.email_per_second),
        sms: limiter(config.sms_per_second),
        topic: limiter(config.topic_per_second),
    }
}

/// An error and its causes on one line, for logs (SDK errors included).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = aws_smithy_types::error::display::DisplayErrorContext(e).to_string();
    out.truncate(2000);
    out
}
