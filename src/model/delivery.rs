//! One delivery: the outcome of sending the event to one recipient on one
//! channel. These form the event's delivery ledger.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::enums::NotificationChannel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    /// The provider accepted the message (its id is in `messageId`).
    Sent,
    /// Not attempted: the recipient lacks what the channel needs, or the
    /// channel is not available; `reason` says which.
    Skipped,
    /// Attempted and refused or not answered; `reason` holds the provider's code.
    Failed,
    /// Written just before the send: a record still in this state after its
    /// run means the run stopped between sending and recording.
    Sending,
    /// Found `SENDING` by a resumed run: the provider may or may not have
    /// accepted it, and it is not sent again (at most once per recipient).
    Unconfirmed,
    /// Handed to the work queue, not yet taken by a worker (`batch` names
    /// the queue message that carries it).
    Queued,
    /// Planned but not started: the Lambda's deadline came, or the provider's
    /// quota (not the recipient) refused it; `reason` says which. The next
    /// keyed retry or the sweeper sends it.
    NotStarted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub channel: NotificationChannel,
    /// The contact this delivery was for; absent for a topic (SNS) delivery
    /// or a channel skipped as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    pub status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The queue message (work batch) that carries this delivery, while it is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Attempts made so far (WEBHOOK, which is retried on a schedule); each
    /// attempt's outcome is written here as it comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// When the next attempt is due (a QUEUED webhook waiting for its retry).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub retry_at: Option<OffsetDateTime>,
}

impl Delivery {
    /// A new entry in `status`, stamped now; the optional fields unset.
    pub fn new(
        channel: NotificationChannel,
        contact_id: Option<String>,
        status: DeliveryStatus,
    ) -> Self {
        Self {
            channel,
            contact_id,
            status,
            message_id: None,
            reason: None,
            time: crate::model::event::now_millis(),
            batch: None,
            attempts: None,
            retry_at: None,
        }
    }
    /// True once nothing more will happen to it: sent, skipped, failed or unconfirmed.
    pub fn is_settled(&self) -> bool {
        !matches!(
            self.status,
            DeliveryStatus::Queued | DeliveryStatus::Sending | DeliveryStatus::NotStarted
        )
    }
    /// The delivery's key inside its event: channel and recipient.
    pub fn key(&self) -> String {
        format!(
            "{}#{}",
            self.channel,
            self.contact_id.as_deref().unwrap_or("-")
        )
    }
}
