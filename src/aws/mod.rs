//! The AWS implementations of the ports: DynamoDB for storage, SES v2 for
//! email, SNS for SMS and topics. Clients are built once, at start-up.

pub mod dynamo;
pub mod ses;
pub mod sns;

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::SendError;

/// The shared SDK configuration: region and credentials from the Lambda
/// environment, `AWS_ENDPOINT_URL` honoured (local stand-ins), standard
/// retries (throttling and 5xx, exponential backoff with jitter) set
/// explicitly, and timeouts well inside API Gateway's 29 s.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
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

/// Turns an SDK error into a per-message refusal, keeping the provider's code.
/// `permanent` lists the codes for which sending again cannot help.
pub(crate) fn send_error<E, R>(err: &SdkError<E, R>, permanent: &[&str]) -> SendError
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("ServiceError").to_owned();
            SendError {
                permanent: permanent.contains(&code.as_str()),
                message: err.message().unwrap_or_default().to_owned(),
                code,
            }
        }
        SdkError::TimeoutError(_) => transient("Timeout", "the provider did not answer in time"),
        SdkError::DispatchFailure(_) => {
            transient("DispatchFailure", "the request could not be sent")
        }
        _ => transient("ResponseError", "the provider's answer could not be read"),
    }
}

fn transient(code: &str, message: &str) -> SendError {
    SendError {
        code: code.into(),
        message: message.into(),
        permanent: false,
    }
}
