//! The AWS implementations of the ports: DynamoDB for storage, SES v2 for
//! email, SNS for SMS and topics. Clients are built once, at start-up.

pub mod dynamo;
pub mod http;
pub mod secrets;
pub mod ses;
pub mod sns;
pub mod sqs;

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::SendError;

/// The shared SDK configuration: region and credentials from the Lambda
/// environment, `AWS_ENDPOINT_URL` honoured (local stand-ins), standard
/// retries (throttling and 5xx, exponential backoff with jitter) set
/// explicitly, and timeouts well inside API Gateway's 29 s.
///
/// In Lambda the region and the credentials are environment variables:
/// naming them skips building the default chains (profile files, IMDS, ECS,
/// web identity), most of the SDK's share of a cold start. Where they are not
/// set, the default chains apply as before (environment first in both).
pub async fn sdk_config() -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        loader = loader.region(aws_config::Region::new(region));
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|k| !k.is_empty())
        && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some_and(|k| !k.is_empty())
    {
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    loader
        .http_client(http::WebPkiClient::from_env().shared())
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        )
        .load()
        .await
}

/// For SES and SNS sends: never retry when the provider may have accepted the
/// message (a timeout, or the connection failing while the request was out).
/// Neither takes an idempotency token, so such a retry could deliver twice;
/// the delivery is recorded UNCONFIRMED instead. Throttling and 5xx answers,
/// where the provider says it did not take the message, are still retried.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRetryWhenOutcomeUnknown;

impl ClassifyRetry for NoRetryWhenOutcomeUnknown {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(e))
                if outcome_unknown(
                    e.is_timeout_error(),
                    e.is_response_error(),
                    e.as_connector_error(),
                ) =>
            {
                RetryAction::RetryForbidden
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "NoRetryWhenOutcomeUnknown"
    }
}

fn outcome_unknown(
    timeout: bool,
    response_error: bool,
    connector: Option<&ConnectorError>,
) -> bool {
    timeout
        || response_error
        || connector.is_some_and(|c| c.is_timeout() || c.is_io() || c.is_other())
}

/// The SES v2 client for sends.
pub fn ses_client(sdk: &SdkConfig) -> aws_sdk_sesv2::Client {
    aws_sdk_sesv2::Client::from_conf(
        aws_sdk_sesv2::config::Builder::from(sdk)
            .retry_classifier(NoRetryWhenOutcomeUnknown)
            .build(),
    )
}

/// The SNS client for sends.
pub fn sns_client(sdk: &SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(sdk)
            .retry_classifier(NoRetryWhenOutcomeUnknown)
            .build(),
    )
}

/// Turns an SDK error into a per-message refusal, keeping the provider's code.
/// `permanent` lists the codes for which sending again cannot help;
/// `quota` the codes by which the account's rate or quota (not the
/// recipient) refused it.
pub(crate) fn send_error<E, R>(
    err: &SdkError<E, R>,
    permanent: &[&str],
    quota: &[&str],
) -> SendError
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("ServiceError").to_owned();
            let message = err.message().unwrap_or_default().to_owned();
            if quota.contains(&code.as_str()) {
                SendError {
                    throttled: true,
                    ..SendError::transient(code, message)
                }
            } else if permanent.contains(&code.as_str()) {
                SendError::permanent(code, message)
            } else {
                SendError::transient(code, message)
            }
        }
        SdkError::TimeoutError(_) => {
            SendError::unknown("Timeout", "the provider did not answer in time")
        }
        SdkError::DispatchFailure(_) => SendError::unknown(
            "DispatchFailure",
            "the connection failed while the request was being sent",
        ),
        SdkError::ResponseError(_) => {
            SendError::unknown("ResponseError", "the provider's answer could not be read")
        }
        _ => SendError::permanent("InvalidRequest", "the request could not be built"),
    }
}
