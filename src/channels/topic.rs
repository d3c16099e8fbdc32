//! SNS: the event published once to the organisation's own topic, with
//! attributes subscribers can filter on. Its reader gets an allow-listed
//! summary of the event; its target is the settings' `snsTopicArn`, which is
//! tenant data and so must be exactly `TOPIC_ARN_PREFIX` + the organisation's
//! ID; it goes out through a `TopicPublisher` (SNS in the Lambda).

use futures::future::BoxFuture;

use crate::model::{
    DeliveryStatus, EntityType, NotificationChannel, NotificationEvent, NotificationEventAction,
};
use crate::ports::SendError;

use super::{Action, Planning};
use crate::notify::skipped;

/// A message published to a topic, with attributes subscribers can filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMessage {
    pub topic_arn: String,
    pub subject: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
}

pub trait TopicPublisher: Send + Sync {
    fn publish<'a>(&'a self, message: &'a TopicMessage)
    -> BoxFuture<'a, Result<String, SendError>>;
}

/// The event once to the organisation's topic, or why not.
pub(crate) fn plan(p: &mut Planning<'_>) {
    let channel = NotificationChannel::Sns;
    match p
        .settings
        .sns_topic_arn
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => p.decided.push(skipped(
            channel,
            None,
            "no snsTopicArn in the organization's notification settings",
        )),
        Some(arn) => match allowed_topic(arn, p.policy.topic_arn_prefix.as_deref(), &p.org) {
            Err(why) => {
                tracing::warn!(reason = why, "snsTopicArn refused");
                let mut d = skipped(channel, None, format!("snsTopicArn refused: {why}"));
                d.status = DeliveryStatus::Failed;
                p.decided.push(d);
            }
            Ok(()) => p.actions.push(Action::Topic(TopicMessage {
                topic_arn: arn.to_owned(),
                subject: "Private offer notification".into(),
                body: topic_body(p.event),
                attributes: vec![
                    (
                        "action".into(),
                        NotificationEventAction::NotifyContacts.as_str().into(),
                    ),
                    ("entityType".into(), EntityType::Offer.as_str().into()),
                    ("organizationID".into(), p.org.clone()),
                ],
            })),
        },
    }
}

/// Checks an organisation's `snsTopicArn` before anything is published to it:
/// a well-formed SNS topic ARN that is exactly `prefix` + the organisation's
/// ID (or that `.fifo`). The template sets the prefix to
/// `arn:{partition}:sns:{region}:{account}:{OrgTopicPrefix}`: so one
/// organisation's topic is never another's, nor one of the stack's. Without
/// a prefix configured, no topic is allowed. The reason names no part of the ARN.
pub fn allowed_topic(arn: &str, prefix: Option<&str>, org: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = arn.split(':').collect();
    let [head, partition, service, region, account, name] = parts.as_slice() else {
        return Err("it is not an SNS topic ARN");
    };
    let name_ok = |n: &str| {
        let base = n.strip_suffix(".fifo").unwrap_or(n);
        (1..=256).contains(&base.len())
            && base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if *head != "arn"
        || !partition.starts_with("aws")
        || *service != "sns"
        || region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || account.len() != 12
        || !account.chars().all(|c| c.is_ascii_digit())
        || !name_ok(name)
    {
        return Err("it is not an SNS topic ARN");
    }
    let Some(prefix) = prefix else {
        return Err("this deployment allows no organization topics (TOPIC_ARN_PREFIX is not set)");
    };
    let own = format!("{prefix}{org}");
    if arn == own || arn.strip_suffix(".fifo") == Some(own.as_str()) {
        Ok(())
    } else {
        Err(
            "it is not this organization's topic: the topic must be named the allowed prefix followed by the organization's ID, in this account and region",
        )
    }
}

/// SNS takes messages up to 256 KB; the topic gets a summary well below it.
pub const MAX_TOPIC_BYTES: usize = 200 * 1024;
/// Contact IDs listed in a topic message at most (`contactCount` has them all).
pub const TOPIC_CONTACT_IDS: usize = 100;
/// Longest text field (title, message, offer name) in a topic message.
const TOPIC_TEXT_CHARS: usize = 1000;

/// The event as the organisation's topic receives it: an allow-list of the
/// event's fields (no `contactEmails`, no `info`, whose delivery reasons may
/// quote a provider's words about a recipient, no creator's address), the
/// first contact IDs with the count, texts cut to 1,000 characters: bounded
/// whatever the recipient count or the offer's data.
pub fn topic_body(event: &NotificationEvent) -> String {
    let text = |t: &Option<String>| {
        t.as_ref()
            .map(|t| t.chars().take(TOPIC_TEXT_CHARS).collect::<String>())
    };
    let ids = |l: &Option<Vec<String>>| {
        l.as_ref().map(|l| {
            l.iter()
                .take(TOPIC_CONTACT_IDS)
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let creator = event.created_by.as_ref().map(|c| {
        serde_json::json!({"entityId": text(&c.entity_id), "entityType": c.entity_type, "name": text(&c.name)})
    });
    let summary = serde_json::json!({
        "action": event.action,
        "entityType": event.entity_type,
        "entityID": event.entity_id,
        "entityName": text(&event.entity_name),
        "entityStatus": text(&event.entity_status),
        "partner": event.partner,
        "organizationID": event.organization_id,
        "eventID": event.event_id,
        "eventStatus": event.event_status,
        "channels": event.channels,
        "contactIds": ids(&event.contact_ids),
        "ccContactIds": ids(&event.cc_contact_ids),
        "contactCount": event.contact_ids.as_ref().map_or(0, Vec::len),
        "createdBy": creator,
        "title": text(&event.title),
        "message": text(&event.message),
        "priority": event.priority,
        "timestamp": event.timestamp.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
    });
    // Drop what is not set, so the message reads like the API's event.
    let compact: serde_json::Map<String, serde_json::Value> = summary
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::Value::Object(compact).to_string()
}
