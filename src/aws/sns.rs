//! SMS and the SNS channel through SNS `Publish`: transactional SMS to an
//! E.164 number, and the event JSON to the organisation's topic with
//! attributes subscribers can filter on.

use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;

use crate::model::PhoneNumber;
use futures::future::BoxFuture;

use crate::channels::{SmsSender, TopicMessage, TopicPublisher};
use crate::ports::SendError;

/// SNS codes for which publishing the same message again cannot succeed.
const PERMANENT: &[&str] = &[
    "InvalidParameter",
    "InvalidParameterValue",
    "NotFound",
    "AuthorizationError",
    "EndpointDisabled",
    "OptedOut",
    "KMSDisabled",
    "InvalidSecurity",
];

/// SNS codes by which the account's rate (or its KMS key's) refused a
/// message after the SDK's retries: put back, not FAILED.
const QUOTA: &[&str] = &["Throttled", "ThrottlingException", "KMSThrottling"];

#[derive(Clone)]
pub struct SnsPublisher {
    client: Client,
}

impl SnsPublisher {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, SendError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| SendError::permanent("InvalidRequest", e.to_string()))
}

impl SmsSender for SnsPublisher {
    fn send_sms<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a str,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(self.sms(to, text))
    }
}

impl TopicPublisher for SnsPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a TopicMessage,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(self.topic(message))
    }
}

impl SnsPublisher {
    async fn sms(&self, to: &PhoneNumber, text: &str) -> Result<String, SendError> {
        let out = self
            .client
            .publish()
            .phone_number(to.as_str())
            .message(text)
            .message_attributes("AWS.SNS.SMS.SMSType", string_attribute("Transactional")?)
            .send()
            .await
            .map_err(|e| super::send_error(&e, PERMANENT, QUOTA))?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn topic(&self, message: &TopicMessage) -> Result<String, SendError> {
        let mut request = self
            .client
            .publish()
            .topic_arn(&message.topic_arn)
            .subject(&message.subject)
            .message(&message.body);
        for (name, value) in &message.attributes {
            request = request.message_attributes(name, string_attribute(value)?);
        }
        let out = request
            .send()
            .await
            .map_err(|e| super::send_error(&e, PERMANENT, QUOTA))?;
        Ok(out.message_id.unwrap_or_default())
    }
}
