//! One room per channel: what its recipient reads (rendering), how its
//! target is found and checked, and the port it sends through. The use case
//! (`notify`) plans with `plan`, and sends an `Action` with `Action::send`;
//! adding a channel is a file here, an arm in each of those two, and its
//! adapter in `aws/` (and `memory.rs` for tests).
//!
//! | channel | file | target | port |
//! |---|---|---|---|
//! | EMAIL | `email.rs` | the contact's `emailAddress` | `Mailer` (SES v2) |
//! | SMS | `sms.rs` | the contact's `info.phoneNumber` (E.164) | `SmsSender` (SNS) |
//! | SNS | `topic.rs` | the settings' `snsTopicArn` (this org's own topic) | `TopicPublisher` (SNS) |
//! | SLACK, MICROSOFT_TEAMS, WEBHOOK, SALESFORCE, SUGER_SUPPORT | | | recorded skipped: not supported |

pub mod email;
pub mod offer_text;
pub mod sms;
pub mod topic;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::model::{
    Delivery, DeliveryStatus, NotificationChannel, NotificationEvent, NotificationSettings, Offer,
    PhoneNumber,
};
use crate::notify::{Policy, Recipients, skipped};
use crate::ports::SendError;

pub use email::{Mailer, OutgoingEmail};
pub use sms::SmsSender;
pub use topic::{TopicMessage, TopicPublisher};

/// The providers the channels send through: AWS in the Lambda, in-memory
/// ones in tests.
#[derive(Clone)]
pub struct Providers {
    pub mailer: Arc<dyn Mailer>,
    pub sms: Arc<dyn SmsSender>,
    pub topics: Arc<dyn TopicPublisher>,
}

/// One planned send: a channel's message to one target.
pub(crate) enum Action {
    Email {
        contact_id: String,
        email: OutgoingEmail,
    },
    Sms {
        contact_id: String,
        to: PhoneNumber,
        text: Arc<str>,
    },
    Topic(TopicMessage),
}

impl Action {
    pub(crate) fn channel(&self) -> NotificationChannel {
        match self {
            Action::Email { .. } => NotificationChannel::Email,
            Action::Sms { .. } => NotificationChannel::Sms,
            Action::Topic(_) => NotificationChannel::Sns,
        }
    }

    pub(crate) fn contact_id(&self) -> Option<String> {
        match self {
            Action::Email { contact_id, .. } | Action::Sms { contact_id, .. } => {
                Some(contact_id.clone())
            }
            Action::Topic(_) => None,
        }
    }

    /// Sends it through its channel's port.
    pub(crate) fn send<'a>(&'a self, p: &'a Providers) -> BoxFuture<'a, Result<String, SendError>> {
        match self {
            Action::Email { email, .. } => p.mailer.send_email(email),
            Action::Sms { to, text, .. } => p.sms.send_sms(to, text),
            Action::Topic(m) => p.topics.publish(m),
        }
    }
}

/// What a channel's planning reads, and where it puts what it plans.
pub(crate) struct Planning<'a> {
    pub(crate) event: &'a NotificationEvent,
    pub(crate) offer: &'a Offer,
    pub(crate) settings: &'a NotificationSettings,
    pub(crate) recipients: &'a Recipients,
    pub(crate) policy: &'a Policy,
    pub(crate) org: String,
    pub(crate) event_id: String,
    pub(crate) actions: Vec<Action>,
    pub(crate) decided: Vec<Delivery>,
}

/// Recipients × the organisation's channels: the actions to perform, and the
/// deliveries already decided (skipped or failed, with why).
pub(crate) fn plan(
    event: &NotificationEvent,
    offer: &Offer,
    settings: &NotificationSettings,
    recipients: &Recipients,
    policy: &Policy,
) -> (Vec<Action>, Vec<Delivery>) {
    let mut p = Planning {
        event,
        offer,
        settings,
        recipients,
        policy,
        org: event.organization_id.clone().unwrap_or_default(),
        event_id: event.event_id.clone().unwrap_or_default(),
        actions: Vec::new(),
        decided: Vec::new(),
    };
    for channel in settings.effective_channels() {
        match channel {
            NotificationChannel::Email => email::plan(&mut p),
            NotificationChannel::Sms => sms::plan(&mut p),
            NotificationChannel::Sns => topic::plan(&mut p),
            other => p.decided.push(skipped(
                other.clone(),
                None,
                format!("channel {other} is not supported by this function"),
            )),
        }
    }
    (p.actions, p.decided)
}

/// A recipient whose stored contact cannot be read fails on every channel,
/// with a reason that quotes nothing of the item.
pub(crate) fn unreadable(channel: NotificationChannel, contact_id: &str) -> Delivery {
    let mut d = skipped(
        channel,
        Some(contact_id),
        "contact record unreadable: the stored item does not have a contact's shape",
    );
    d.status = DeliveryStatus::Failed;
    d
}
