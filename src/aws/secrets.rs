//! Secrets Manager: the chat and webhook targets' secrets, read by name
//! (`GetSecretValue`). A missing secret is `None`; access denied is a
//! permanent refusal (the function may read its prefix only); anything else
//! transient. The value is never logged.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use futures::future::BoxFuture;

use crate::channels::Secrets;
use crate::ports::SendError;

/// The client is built on the first secret read: most organisations have no
/// chat or webhook target, and building an SDK client is part of every cold
/// start (BENCHMARKS.md measures it).
#[derive(Clone)]
pub struct SecretsManager {
    client: std::sync::Arc<std::sync::OnceLock<Client>>,
    sdk: aws_config::SdkConfig,
}

impl SecretsManager {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: std::sync::Arc::default(),
            sdk: sdk.clone(),
        }
    }

    fn client(&self) -> &Client {
        self.client.get_or_init(|| Client::new(&self.sdk))
    }
}

impl Secrets for SecretsManager {
    fn secret<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, SendError>> {
        Box::pin(async move {
            match self.client().get_secret_value().secret_id(id).send().await {
                Ok(out) => Ok(out.secret_string().map(str::to_owned)),
                Err(e) => match e.code() {
                    Some("ResourceNotFoundException") => Ok(None),
                    Some(
                        code @ ("AccessDeniedException"
                        | "DecryptionFailure"
                        | "InvalidRequestException"),
                    ) => Err(SendError::permanent(
                        code,
                        "the target's secret cannot be read by this function",
                    )),
                    code => {
                        tracing::warn!(
                            code = code.unwrap_or("-"),
                            "reading a target's secret failed"
                        );
                        Err(SendError::transient(
                            code.unwrap_or("SecretsUnavailable"),
                            "the target's secret could not be read now",
                        ))
                    }
                },
            }
        })
    }
}
