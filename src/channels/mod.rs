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
//! | SLACK | `slack.rs` | the settings' `slack.secret`: a Secrets Manager secret holding the hook URL | `Poster` (HTTPS, SSRF-guarded) |
//! | MICROSOFT_TEAMS | `teams.rs` | the settings' `microsoftTeams.secret` (a Workflows webhook URL) | `Poster` |
//! | WEBHOOK | `webhook.rs` | the settings' `webhook.secret` (`{url, signingSecret}`); sent after the event closes | `Poster` |
//! | SALESFORCE, SUGER_SUPPORT | | | recorded skipped: not supported by this function |
//!
//! `web.rs` holds what the three web channels share (secrets, the poster,
//! per-target rates); `guard.rs` is the SSRF guard every outbound URL passes.

pub mod email;
pub mod guard;
pub mod offer_text;
pub mod slack;
pub mod sms;
pub mod teams;
pub mod template;
pub mod topic;
pub mod web;
pub mod webhook;

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
pub use web::{Poster, Secrets, WebTargets};

/// The providers the channels send through: AWS in the Lambda, in-memory
/// ones in tests.
#[derive(Clone)]
pub struct Providers {
    pub mailer: Arc<dyn Mailer>,
    pub sms: Arc<dyn SmsSender>,
    pub topics: Arc<dyn TopicPublisher>,
    /// Slack, Teams and webhooks: secrets, the guarded poster, per-target rates.
    pub web: Arc<WebTargets>,
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
    /// One message to an organisation's Slack or Teams webhook.
    Chat {
        channel: NotificationChannel,
        org: String,
        /// The target's name (its secret's last part).
        target: String,
        body: Arc<str>,
    },
}

impl Action {
    pub(crate) fn channel(&self) -> NotificationChannel {
        match self {
            Action::Email { .. } => NotificationChannel::Email,
            Action::Sms { .. } => NotificationChannel::Sms,
            Action::Topic(_) => NotificationChannel::Sns,
            Action::Chat { channel, .. } => channel.clone(),
        }
    }

    pub(crate) fn contact_id(&self) -> Option<String> {
        match self {
            Action::Email { contact_id, .. } | Action::Sms { contact_id, .. } => {
                Some(contact_id.clone())
            }
            Action::Topic(_) | Action::Chat { .. } => None,
        }
    }

    /// Sends it through its channel's port.
    pub(crate) fn send<'a>(&'a self, p: &'a Providers) -> BoxFuture<'a, Result<String, SendError>> {
        match self {
            Action::Email { email, .. } => p.mailer.send_email(email),
            Action::Sms { to, text, .. } => p.sms.send_sms(to, text),
            Action::Topic(m) => p.topics.publish(m),
            Action::Chat {
                channel,
                org,
                target,
                body,
            } => Box::pin(send_chat(&p.web, channel, org, target, body)),
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
    /// Bytes of rendered messages so far (`template::EVENT_RENDER_BUDGET`).
    pub(crate) rendered: usize,
}

impl Planning<'_> {
    /// The template variables of this event (no contact yet).
    pub(crate) fn vars(&self) -> template::Vars {
        template::Vars::new(
            self.offer,
            self.settings,
            self.event.custom_fields.as_ref(),
            &self.event_id,
            // The event's count, also when a worker plans one batch of it.
            self.event
                .contact_ids
                .as_ref()
                .map_or(self.recipients.ids.len(), Vec::len),
        )
    }

    /// Counts `bytes` of rendered message against the event's budget; `Err`
    /// is why this delivery fails.
    pub(crate) fn spend(&mut self, bytes: usize) -> Result<(), String> {
        self.rendered += bytes;
        if self.rendered > template::EVENT_RENDER_BUDGET {
            Err(format!(
                "this event's rendered messages pass {} MB; shorten the organization's templates",
                template::EVENT_RENDER_BUDGET / (1024 * 1024)
            ))
        } else {
            Ok(())
        }
    }
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
        rendered: 0,
    };
    for channel in settings.effective_channels() {
        match channel {
            NotificationChannel::Email => email::plan(&mut p),
            NotificationChannel::Sms => sms::plan(&mut p),
            NotificationChannel::Sns => topic::plan(&mut p),
            NotificationChannel::Slack => slack::plan(&mut p),
            NotificationChannel::MicrosoftTeams => teams::plan(&mut p),
            // Sent once the event is closed (its body is the final event);
            // only a target that cannot be used is decided now.
            NotificationChannel::Webhook => {
                if let Err(why) = webhook::target(settings) {
                    p.decided
                        .push(skipped(NotificationChannel::Webhook, None, why));
                }
            }
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

/// A Slack or Teams message for the settings' target, or why not: no
/// target, a disabled one (with the reason it was disabled), a bad name.
/// `body` is the rendered message, or why it could not be rendered (the
/// delivery is then FAILED with it, once the target is known to be usable).
pub(crate) fn plan_web_target(
    p: &mut Planning<'_>,
    channel: NotificationChannel,
    body: Result<Arc<str>, String>,
) {
    let Some(target) = p.settings.web_target(&channel) else {
        let key = match channel {
            NotificationChannel::Slack => "slack",
            _ => "microsoftTeams",
        };
        p.decided.push(skipped(
            channel,
            None,
            format!("no {key} target in the organization's notification settings"),
        ));
        return;
    };
    if let Some(d) = &target.disabled {
        p.decided.push(skipped(
            channel,
            None,
            format!(
                "the target is disabled since {}: {}; fix it and remove `disabled` from the settings",
                d.at, d.reason
            ),
        ));
        return;
    }
    if !web::valid_target_name(&target.secret) {
        let mut d = skipped(
            channel,
            None,
            "the target's secret name is not valid (1-64 letters, digits, - or _)",
        );
        d.status = DeliveryStatus::Failed;
        p.decided.push(d);
        return;
    }
    let body = match body {
        Ok(b) => b,
        Err(why) => {
            p.decided.push(crate::notify::failed(channel, None, why));
            return;
        }
    };
    p.actions.push(Action::Chat {
        channel,
        org: p.org.clone(),
        target: target.secret.clone(),
        body,
    });
}

type Classify = fn(&web::WebAnswer) -> Result<String, SendError>;

/// Reads the target, posts, and reads the answer with the channel's rules.
/// A 429 whose `Retry-After` is short is waited for once.
async fn send_chat(
    web: &WebTargets,
    channel: &NotificationChannel,
    org: &str,
    target: &str,
    body: &Arc<str>,
) -> Result<String, SendError> {
    let (hosts, classify): (&[&str], Classify) = match channel {
        NotificationChannel::Slack => (slack::HOSTS, slack::classify),
        _ => (teams::HOSTS, teams::classify),
    };
    let (_, url) = web.target(org, target, Some(hosts)).await?;
    let request = web::WebPost {
        url,
        headers: vec![("content-type", "application/json".into())],
        body: body.clone(),
        timeout: std::time::Duration::from_secs(10),
    };
    let mut retried = false;
    loop {
        let answer = web.poster.post(&request).await?;
        match classify(&answer) {
            Err(e) if e.throttled && !retried => match e.retry_after {
                Some(wait) if wait <= std::time::Duration::from_secs(3) => {
                    retried = true;
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(e),
            },
            result => return result,
        }
    }
}
