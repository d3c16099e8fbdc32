//! Open tracking: SES publishes an `Open` event (through the configuration
//! set's SNS destination) naming, by the tags the email carried, the
//! organisation, the event and the contact. The first open per contact is
//! appended to the event's `trackEvents`; every open is counted in
//! `info.opens`. An SNS redelivery counts nothing twice. A malformed event, or
//! one naming an event that does not exist, is logged and dropped.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::model::{ContactId, NotificationEvent, OrgId, TrackEvent, TrackEventAction};
use crate::ports::StoreError;

/// One open, as SES reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub org: OrgId,
    pub event_id: String,
    pub contact: ContactId,
    pub at: OffsetDateTime,
    /// The SNS message that carried it: the key for deduplication.
    pub message_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The contact's first open: appended to `trackEvents`.
    First,
    /// A later open: counted.
    Again,
    /// This SNS message was already applied.
    Duplicate,
    /// No such event in that organisation.
    UnknownEvent,
}

pub trait OpenTracker: Send + Sync {
    fn record_open(
        &self,
        open: &Open,
    ) -> impl std::future::Future<Output = Result<Recorded, StoreError>> + Send;
}

/// Per-contact open counters and `trackEvents` entries an event keeps at most
/// (the item must stay far below DynamoDB's 400 KB); opens beyond are counted
/// in `info.opensOther` only.
pub const MAX_TRACKED_CONTACTS: usize = 1000;
/// One contact's open count stops here.
pub const MAX_OPENS_PER_CONTACT: u64 = 10_000;

/// Applies an open to an event in memory: `None` when this SNS message was
/// applied already, or names a contact the event did not notify. Keeps the
/// last 100 message IDs for that check; every list and counter is bounded.
pub fn apply_open(event: &mut NotificationEvent, open: &Open) -> Option<Recorded> {
    let recipient = event
        .contact_ids
        .iter()
        .chain(event.cc_contact_ids.iter())
        .flatten()
        .any(|c| c == open.contact.as_str());
    if !recipient {
        return None;
    }
    let info = event.info.get_or_insert_with(Map::new);
    let seen = info.entry("openMessageIds").or_insert_with(|| json!([]));
    let ids = seen.as_array_mut()?;
    if ids
        .iter()
        .any(|v| v.as_str() == Some(open.message_id.as_str()))
    {
        return None;
    }
    ids.push(json!(open.message_id));
    if ids.len() > 100 {
        ids.remove(0);
    }
    let opens = info.entry("opens").or_insert_with(|| json!({}));
    let mut counted = false;
    if let Some(map) = opens.as_object_mut()
        && (map.contains_key(open.contact.as_str()) || map.len() < MAX_TRACKED_CONTACTS)
    {
        let n = map
            .get(open.contact.as_str())
            .and_then(Value::as_u64)
            .unwrap_or(0);
        map.insert(
            open.contact.to_string(),
            json!((n + 1).min(MAX_OPENS_PER_CONTACT)),
        );
        counted = true;
    }
    if !counted {
        let other = info.get("opensOther").and_then(Value::as_u64).unwrap_or(0);
        info.insert("opensOther".into(), json!(other + 1));
    }
    let tracks = event.track_events.get_or_insert_with(Vec::new);
    let first = !tracks.iter().any(|t| {
        t.action == Some(TrackEventAction::OpenEmail)
            && t.contact_id.as_deref() == Some(open.contact.as_str())
    });
    if first && tracks.len() < MAX_TRACKED_CONTACTS {
        tracks.push(TrackEvent {
            action: Some(TrackEventAction::OpenEmail),
            contact_id: Some(open.contact.to_string()),
            timestamp: Some(open.at),
        });
    }
    event.last_update_time = Some(crate::model::event::now_millis());
    Some(if first {
        Recorded::First
    } else {
        Recorded::Again
    })
}

impl<X: OpenTracker + ?Sized> OpenTracker for std::sync::Arc<X> {
    fn record_open(
        &self,
        open: &Open,
    ) -> impl std::future::Future<Output = Result<Recorded, StoreError>> + Send {
        (**self).record_open(open)
    }
}

/// Why an SES event was dropped (for the log; never an error of the invocation).
pub type Dropped = &'static str;

/// The organisation, contact and event an SES event names by the tags every
/// email carries, checked (they become key parts).
pub(crate) fn ses_tags(ses: &Value) -> Result<(OrgId, ContactId, String), Dropped> {
    let tag = |name: &str| ses["mail"]["tags"][name].get(0).and_then(Value::as_str);
    let org = tag("organizationID")
        .and_then(|o| OrgId::parse(o).ok())
        .ok_or("no valid organizationID tag")?;
    let contact = tag("contactId")
        .and_then(|c| ContactId::parse(c).ok())
        .ok_or("no valid contactId tag")?;
    let event_id = tag("eventID")
        .filter(|e| {
            (1..=64).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
        .ok_or("no valid eventID tag")?
        .to_ascii_lowercase();
    Ok((org, contact, event_id))
}

/// Reads one SNS record's SES event. `Ok(None)`: not an open (deliveries,
/// clicks...), nothing to do.
pub fn parse_open(sns_message_id: &str, message: &str) -> Result<Option<Open>, Dropped> {
    open_from(sns_message_id, &read_ses(message)?)
}

/// An SNS message's SES event, parsed once, with its type.
pub fn read_ses(message: &str) -> Result<(Value, String), Dropped> {
    let ses: Value = serde_json::from_str(message).map_err(|_| "the SNS message is not JSON")?;
    let kind = ses
        .get("eventType")
        .or_else(|| ses.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or("no eventType")?
        .to_owned();
    Ok((ses, kind))
}

/// The open an SES event reports, if it is one.
pub fn open_from(
    sns_message_id: &str,
    (ses, kind): &(Value, String),
) -> Result<Option<Open>, Dropped> {
    if kind != "Open" {
        return Ok(None);
    }
    let (org, contact, event_id) = ses_tags(ses)?;
    let at = ses["open"]["timestamp"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .ok_or("no valid open.timestamp")?;
    if sns_message_id.is_empty() {
        return Err("no SNS MessageId");
    }
    Ok(Some(Open {
        org,
        event_id,
        contact,
        at,
        message_id: sns_message_id.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ses(kind: &str, tags: Value) -> String {
        serde_json::json!({"eventType": kind, "mail": {"messageId": "m", "tags": tags}, "open": {"timestamp": "2026-11-29T16:30:00.000Z"}}).to_string()
    }

    #[test]
    fn an_open_names_org_event_and_contact() {
        let tags = serde_json::json!({"organizationID": ["org-demo"], "eventID": ["01a2-beef"], "contactId": ["c-ann"]});
        let open = parse_open("sns-1", &ses("Open", tags)).unwrap().unwrap();
        assert_eq!(
            (
                open.org.as_str(),
                open.event_id.as_str(),
                open.contact.as_str()
            ),
            ("org-demo", "01a2-beef", "c-ann")
        );
    }

    #[test]
    fn other_events_are_ignored_and_bad_ones_dropped() {
        assert_eq!(
            parse_open("s", &ses("Delivery", serde_json::json!({}))),
            Ok(None)
        );
        assert!(parse_open("s", "not json").is_err());
        assert!(parse_open("s", &ses("Open", serde_json::json!({"organizationID": ["org/../x"], "eventID": ["e"], "contactId": ["c"]}))).is_err());
        assert!(parse_open("s", &ses("Open", serde_json::json!({"organizationID": ["o"], "eventID": ["EVENT#x"], "contactId": ["c"]}))).is_err());
    }

    fn open(contact: &str, message_id: &str) -> Open {
        Open {
            org: OrgId::parse("org1").unwrap(),
            event_id: "e1".into(),
            contact: ContactId::parse(contact).unwrap(),
            at: OffsetDateTime::UNIX_EPOCH,
            message_id: message_id.into(),
        }
    }

    #[test]
    fn opens_are_bounded_whatever_arrives() {
        let ids: Vec<String> = (0..MAX_TRACKED_CONTACTS + 50)
            .map(|i| format!("c{i}"))
            .collect();
        let mut event = NotificationEvent {
            contact_ids: Some(ids.clone()),
            ..NotificationEvent::default()
        };
        // A contact the event did not notify changes nothing.
        assert_eq!(apply_open(&mut event, &open("stranger", "m0")), None);
        assert!(event.track_events.is_none());
        for (n, id) in ids.iter().enumerate() {
            apply_open(&mut event, &open(id, &format!("m{n}")));
        }
        let info = event.info.as_ref().unwrap();
        assert_eq!(
            info["opens"].as_object().unwrap().len(),
            MAX_TRACKED_CONTACTS
        );
        assert_eq!(info["opensOther"], 50);
        assert_eq!(info["openMessageIds"].as_array().unwrap().len(), 100);
        assert_eq!(
            event.track_events.as_ref().unwrap().len(),
            MAX_TRACKED_CONTACTS
        );
        // One contact opening again and again: one trackEvent, a capped count.
        for n in 0..(MAX_OPENS_PER_CONTACT + 5) {
            apply_open(&mut event, &open("c0", &format!("again-{n}")));
        }
        let info = event.info.as_ref().unwrap();
        assert_eq!(info["opens"]["c0"], MAX_OPENS_PER_CONTACT);
        assert_eq!(
            event.track_events.as_ref().unwrap().len(),
            MAX_TRACKED_CONTACTS
        );
    }
}
