//! Who gets what: the recipients of a request (checked against the offer
//! and the organisation), and one planned delivery per recipient and channel,
//! with the content rendered and anything that cannot be sent decided now
//! (skipped or failed, with why).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{
    Contact, ContactId, Delivery, DeliveryStatus, EmailAddress, EntityType, NotificationChannel,
    NotificationEvent, NotificationEventAction, NotificationSettings, Offer, OrgId, PhoneNumber,
};
use crate::ports::{
    ContactStore, EventStore, Mailer, OfferStore, OutgoingEmail, SmsSender, StoreError,
    TopicMessage, TopicPublisher,
};
use crate::render;

use super::{Action, Notifier, NotifyCommand, NotifyError, Recipients, skipped};

/// A recipient whose stored contact cannot be read fails on every channel,
/// with a reason that quotes nothing of the item.
fn unreadable(channel: NotificationChannel, contact_id: &str) -> Delivery {
    let mut d = skipped(
        channel,
        Some(contact_id),
        "contact record unreadable: the stored item does not have a contact's shape",
    );
    d.status = DeliveryStatus::Failed;
    d
}

impl<S, M, P, T> Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    pub(crate) async fn resolve(
        &self,
        cmd: &NotifyCommand,
        offer: &Offer,
        settings: &NotificationSettings,
    ) -> Result<Recipients, NotifyError> {
        let on_offer: HashSet<&str> = offer.contact_ids.iter().map(String::as_str).collect();
        let requested: Vec<String> = match cmd.contact_ids.as_ref().filter(|l| !l.is_empty()) {
            Some(list) => {
                let missing: Vec<ContactId> = list
                    .as_slice()
                    .iter()
                    .filter(|id| !on_offer.contains(id.as_str()))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return Err(NotifyError::NotOnOffer {
                        offer: cmd.offer_id.clone(),
                        ids: missing,
                    });
                }
                list.as_slice()
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            }
            None => {
                let mut seen = HashSet::new();
                offer
                    .contact_ids
                    .iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .cloned()
                    .collect()
            }
        };
        if requested.is_empty() {
            return Err(NotifyError::NoContacts(cmd.offer_id.clone()));
        }
        let mut cc_ids: Vec<String> = Vec::new();
        for id in settings.cc_contact_ids.iter().flatten() {
            if !requested.contains(id) && !cc_ids.contains(id) {
                cc_ids.push(id.clone());
            }
        }

        let (contacts, unreadable) = self
            .contacts_by_id(&cmd.org_id, &requested, &cc_ids)
            .await?;

        if cmd.contact_ids.as_ref().is_some_and(|l| !l.is_empty()) {
            // A listed contact that does not exist in this organisation is
            // refused like one that is not on the offer, before anything is sent.
            // (One that exists but cannot be read is not unknown: its
            // deliveries fail with the reason, and the others go out.)
            let unknown: Vec<ContactId> = requested
                .iter()
                .filter(|id| !contacts.contains_key(*id) && !unreadable.contains(*id))
                .filter_map(|id| ContactId::parse(id).ok())
                .collect();
            if !unknown.is_empty() {
                return Err(NotifyError::NotOnOffer {
                    offer: cmd.offer_id.clone(),
                    ids: unknown,
                });
            }
        }
        Ok(Recipients {
            ids: requested,
            cc_ids,
            contacts,
            unreadable,
        })
    }

    /// The contacts of `org` among `ids` and `cc_ids`, by ID. Stored IDs that
    /// are not valid IDs cannot be keys; they stay unresolved, and their
    /// deliveries are recorded as skipped.
    pub(crate) async fn contacts_by_id(
        &self,
        org: &OrgId,
        ids: &[String],
        cc_ids: &[String],
    ) -> Result<(HashMap<String, Contact>, HashSet<String>), StoreError> {
        let keys: Vec<ContactId> = ids
            .iter()
            .chain(cc_ids)
            .filter_map(|id| ContactId::parse(id).ok())
            .collect();
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let read = self.store.contacts(org, &keys).await?;
        let found = read
            .found
            .into_iter()
            // Belt and braces: the store is keyed by org already.
            .filter(|c| {
                c.organization_id
                    .as_deref()
                    .is_none_or(|o| o == org.as_str())
            })
            .map(|c| (c.id.clone(), c))
            .collect();
        Ok((found, read.unreadable.into_iter().collect()))
    }

    /// The recipients a stored event names (its own list, not the request's),
    /// with their contacts read now: what a resumed run or a worker plans for.
    pub(crate) async fn recipients_of(
        &self,
        org: &OrgId,
        ids: Vec<String>,
        cc_ids: Vec<String>,
    ) -> Result<Recipients, StoreError> {
        let (contacts, unreadable) = self.contacts_by_id(org, &ids, &cc_ids).await?;
        Ok(Recipients {
            ids,
            cc_ids,
            contacts,
            unreadable,
        })
    }

    /// Turns recipients × channels into actions to perform and deliveries
    /// already decided (skipped, with why).
    pub(crate) fn plan(
        &self,
        event: &NotificationEvent,
        offer: &Offer,
        settings: &NotificationSettings,
        r: &Recipients,
    ) -> (Vec<Action>, Vec<Delivery>) {
        let mut actions = Vec::new();
        let mut decided = Vec::new();
        let event_id = event.event_id.clone().unwrap_or_default();
        let org = event.organization_id.clone().unwrap_or_default();
        let sms_text: Arc<str> = render::sms(offer).into();

        for channel in settings.effective_channels() {
            match channel {
                NotificationChannel::Email => {
                    for (id, is_cc) in r
                        .ids
                        .iter()
                        .map(|i| (i, false))
                        .chain(r.cc_ids.iter().map(|i| (i, true)))
                    {
                        if r.unreadable.contains(id) {
                            decided.push(unreadable(channel.clone(), id));
                            continue;
                        }
                        let Some(contact) = r.contacts.get(id) else {
                            let what = if is_cc { "cc contact" } else { "contact" };
                            decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                format!("{what} not found in this organization"),
                            ));
                            continue;
                        };
                        let address = match contact
                            .email_address
                            .as_deref()
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                        {
                            None => {
                                decided.push(skipped(
                                    channel.clone(),
                                    Some(id),
                                    "contact has no email address",
                                ));
                                continue;
                            }
                            Some(raw) => match EmailAddress::parse(raw) {
                                Ok(a) => a,
                                Err(e) => {
                                    decided.push(skipped(
                                        channel.clone(),
                                        Some(id),
                                        format!("contact's {e}"),
                                    ));
                                    continue;
                                }
                            },
                        };
                        let content = render::email(offer, Some(contact));
                        actions.push(Action::Email {
                            contact_id: id.clone(),
                            email: OutgoingEmail {
                                to: address,
                                subject: content.subject,
                                text: content.text,
                                html: content.html,
                                tags: vec![
                                    ("organizationID".into(), org.clone()),
                                    ("eventID".into(), event_id.clone()),
                                    ("contactId".into(), id.clone()),
                                ],
                            },
                        });
                    }
                }
                NotificationChannel::Sms => {
                    for id in &r.ids {
                        if r.unreadable.contains(id) {
                            decided.push(unreadable(channel.clone(), id));
                            continue;
                        }
                        let Some(contact) = r.contacts.get(id) else {
                            decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                "contact not found in this organization",
                            ));
                            continue;
                        };
                        let raw = contact
                            .info
                            .as_ref()
                            .and_then(|i| i.phone_number.as_deref())
                            .map(str::trim)
                            .filter(|s| !s.is_empty());
                        match raw.map(PhoneNumber::parse) {
                            None => decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                "contact has no phone number",
                            )),
                            Some(Err(e)) => decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                format!("contact's {e}"),
                            )),
                            Some(Ok(to)) => actions.push(Action::Sms {
                                contact_id: id.clone(),
                                to,
                                text: sms_text.clone(),
                            }),
                        }
                    }
                }
                NotificationChannel::Sns => match settings
                    .sns_topic_arn
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    None => decided.push(skipped(
                        channel.clone(),
                        None,
                        "no snsTopicArn in the organization's notification settings",
                    )),
                    // The ARN is tenant data: it may only name a topic of
                    // this account and region under the allowed name prefix.
                    Some(arn) => {
                        match allowed_topic(arn, self.policy.topic_arn_prefix.as_deref(), &org) {
                            Err(why) => {
                                tracing::warn!(reason = why, "snsTopicArn refused");
                                let mut d = skipped(
                                    channel.clone(),
                                    None,
                                    format!("snsTopicArn refused: {why}"),
                                );
                                d.status = DeliveryStatus::Failed;
                                decided.push(d);
                            }
                            Ok(()) => actions.push(Action::Topic(TopicMessage {
                                topic_arn: arn.to_owned(),
                                subject: "Private offer notification".into(),
                                body: topic_body(event),
                                attributes: vec![
                                    (
                                        "action".into(),
                                        NotificationEventAction::NotifyContacts.as_str().into(),
                                    ),
                                    ("entityType".into(), EntityType::Offer.as_str().into()),
                                    ("organizationID".into(), org.clone()),
                                ],
                            })),
                        }
                    }
                },
                other => decided.push(skipped(
                    other.clone(),
                    None,
                    format!("channel {other} is not supported by this function"),
                )),
            }
        }
        (actions, decided)
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
