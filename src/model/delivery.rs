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
    /// What the provider reported after it accepted the message (SES
    /// events): the furthest state reached on `DeliveryOutcome`'s ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DeliveryOutcome>,
    /// The provider's reason for `outcome` (bounce type, complaint type...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub outcome_at: Option<OffsetDateTime>,
    /// Engagement, beside the outcome: opens and link clicks reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clicks: Option<u32>,
}

/// What happened to a message after the provider accepted it (`SENT`), as
/// its feedback reports it. A delivery only moves up this ladder (`rank`):
/// a late DELIVERED never replaces a BOUNCED, and a redelivered or
/// out-of-order report changes nothing.
///
/// | outcome | from (SES event) | rank | counts as |
/// |---|---|---|---|
/// | DELAYED | DeliveryDelay, a Transient or Undetermined Bounce | 1 | sent |
/// | DELIVERED | Delivery | 2 | sent |
/// | BOUNCED | Bounce, Permanent (not a suppression list) | 3 | failed |
/// | SUPPRESSED | Bounce, Permanent, OnAccountSuppressionList or OnSuppressionList | 3 | failed |
/// | REJECTED | Reject, RenderingFailure | 3 | failed |
/// | COMPLAINED | Complaint | 4 | sent (it arrived; the recipient complained) |
/// | OPTED_OUT | SMS log FAILURE: the number opted out | 3 | failed |
/// | UNDELIVERED | SMS log FAILURE: any other carrier answer | 3 | failed |
///
/// An SMS log SUCCESS is DELIVERED (the carrier acknowledged it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryOutcome {
    Delayed,
    Delivered,
    Bounced,
    Suppressed,
    Rejected,
    Complained,
    OptedOut,
    Undelivered,
}

impl DeliveryOutcome {
    pub fn rank(self) -> u8 {
        match self {
            DeliveryOutcome::Delayed => 1,
            DeliveryOutcome::Delivered => 2,
            DeliveryOutcome::Bounced
            | DeliveryOutcome::Suppressed
            | DeliveryOutcome::Rejected
            | DeliveryOutcome::OptedOut
            | DeliveryOutcome::Undelivered => 3,
            DeliveryOutcome::Complained => 4,
        }
    }
    /// The message did not reach its recipient: a failed delivery.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            DeliveryOutcome::Bounced
                | DeliveryOutcome::Suppressed
                | DeliveryOutcome::Rejected
                | DeliveryOutcome::OptedOut
                | DeliveryOutcome::Undelivered
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delayed => "DELAYED",
            DeliveryOutcome::Delivered => "DELIVERED",
            DeliveryOutcome::Bounced => "BOUNCED",
            DeliveryOutcome::Suppressed => "SUPPRESSED",
            DeliveryOutcome::Rejected => "REJECTED",
            DeliveryOutcome::Complained => "COMPLAINED",
            DeliveryOutcome::OptedOut => "OPTED_OUT",
            DeliveryOutcome::Undelivered => "UNDELIVERED",
        }
    }
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
            outcome: None,
            outcome_reason: None,
            outcome_at: None,
            opens: None,
            clicks: None,
        }
    }
    /// Sent and not reported lost since (a bounce, a suppression, a reject).
    pub fn reached(&self) -> bool {
        self.status == DeliveryStatus::Sent
            && !self.outcome.is_some_and(DeliveryOutcome::is_failure)
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
