//! EMAIL through SES v2 `SendEmail`: one message per contact, Simple content
//! (text and HTML), through the configuration set with tags when one is set.

use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message, MessageTag};

use crate::model::EmailAddress;
use futures::future::BoxFuture;

use crate::channels::{Mailer, OutgoingEmail};
use crate::ports::SendError;

/// SES codes for which sending the same message again cannot succeed.
const PERMANENT: &[&str] = &[
    "MessageRejected",
    "BadRequestException",
    "MailFromDomainNotVerifiedException",
    "NotFoundException",
    "AccountSuspendedException",
];

/// SES codes by which the account's sending rate or quota refused a message
/// (after the SDK's retries): not the recipient's fault, so it is put back.
const QUOTA: &[&str] = &[
    "TooManyRequestsException",
    "LimitExceededException",
    "SendingPausedException",
    "Throttling",
    "ThrottlingException",
];

#[derive(Clone)]
pub struct SesMailer {
    client: Client,
    sender: EmailAddress,
    configuration_set: Option<String>,
}

impl SesMailer {
    pub fn new(client: Client, sender: EmailAddress, configuration_set: Option<String>) -> Self {
        Self {
            client,
            sender,
            configuration_set,
        }
    }
}

fn content(data: &str) -> Result<Content, SendError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(build_error)
}

fn build_error(e: aws_sdk_sesv2::error::BuildError) -> SendError {
    SendError::permanent("InvalidRequest", e.to_string())
}

impl Mailer for SesMailer {
    fn send_email<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(self.send(email))
    }
}

impl SesMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<String, SendError> {
        let message = Message::builder()
            .subject(content(&email.subject)?)
            .body(
                Body::builder()
                    .text(content(&email.text)?)
                    .html(content(&email.html)?)
                    .build(),
            )
            .build();
        let tags = match &self.configuration_set {
            Some(_) => Some(
                email
                    .tags
                    .iter()
                    .map(|(n, v)| {
                        MessageTag::builder()
                            .name(n)
                            .value(v)
                            .build()
                            .map_err(build_error)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let out = self
            .client
            .send_email()
            .from_email_address(crate::channels::email::mailbox(
                email.from_name.as_deref(),
                self.sender.as_str(),
            ))
            .set_reply_to_addresses(email.reply_to.as_ref().map(|r| vec![r.as_str().to_owned()]))
            .destination(
                Destination::builder()
                    .to_addresses(email.to.as_str())
                    .build(),
            )
            .content(EmailContent::builder().simple(message).build())
            .set_configuration_set_name(self.configuration_set.clone())
            .set_email_tags(tags)
            .send()
            .await
            .map_err(|e| super::send_error(&e, PERMANENT, QUOTA))?;
        Ok(out.message_id.unwrap_or_default())
    }
}
