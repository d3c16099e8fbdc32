//! The read side (issue 12): the events of an organisation, of one offer,
//! and the per-recipient deliveries of an event as `NotificationMessage`s.
//! Every read is a key condition under the path's organisation (`pk`), or
//! the `EntityEvents` index whose key starts with it: no Scan, no filter
//! over another organisation's items, pages bounded.
//!
//! | route | reads |
//! |---|---|
//! | `GET /org/{orgId}/notificationEvent` | Query `pk = ORG#org AND sk BETWEEN EVENT#{from} AND EVENT#{to}`, newest first (event IDs are UUIDv7: time-ordered) |
//! | `GET /org/{orgId}/notificationEvent/{entityType}/{entityId}` | Query on `EntityEvents` (`entityIndex = ORG#org#OFFER#id`, range `sk`) |
//! | `GET /org/{orgId}/notificationMessage?eventId=` | the event and its ledger: one Query on `DELIVERY#{eventID}#` (plus the event) |
//! | `GET /org/{orgId}/notificationMessage/{id}` | one GetItem of the ledger entry |

use std::future::Future;

use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::model::{Delivery, NotificationEvent, OrgId};
use crate::ports::StoreError;

/// Which events a list reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The organisation's events created in `[from_ms, to_ms)`.
    Org { from_ms: i64, to_ms: i64 },
    /// The events of one entity (an offer), newest first.
    Entity {
        entity_type: String,
        entity_id: String,
    },
}

/// One page: `offset` events skipped, then at most `limit`, newest first;
/// with `before`, only events older than that event ID (a cursor that stays
/// correct while events are written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub scope: Scope,
    pub before: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// Events as listed: without `contactIds` and `contactEmails` (they grow
/// with the recipients; `notificationMessage` lists those), and whether
/// more follow.
#[derive(Debug, Clone, Default)]
pub struct EventList {
    pub events: Vec<NotificationEvent>,
    pub more: bool,
}

/// The store's side of the read API.
pub trait EventReader: Send + Sync {
    fn list_events(
        &self,
        org: &OrgId,
        q: &ListQuery,
    ) -> impl Future<Output = Result<EventList, StoreError>> + Send;
    /// How many events the scope holds (counted by the key condition, not
    /// read); `None` when there were too many to count in one request.
    fn count_events(
        &self,
        org: &OrgId,
        scope: &Scope,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send;
    /// An event and its whole ledger (its messages).
    fn event_messages(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError>> + Send;
    /// One ledger entry, by its event, channel and contact (`-` for none).
    fn delivery(
        &self,
        org: &OrgId,
        event_id: &str,
        channel: &str,
        contact: &str,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send;
}

/// The most events one page answers (the API's limit).
pub const MAX_LIMIT: usize = 1000;
/// The deepest `offset` served (each skipped event is read); beyond, use
/// the cursor.
pub const MAX_OFFSET: usize = 2_000;
/// The widest day range one list reads.
pub const MAX_DAYS: i64 = 366;
/// An answer stays under Lambda's 6 MB response limit, which counts the
/// body once more escaped inside API Gateway's envelope: a page stops early
/// past this many bytes of events, and says where to go on.
pub const MAX_ANSWER_BYTES: usize = 2_500_000;

/// The event ID of a UUIDv7 as a sort-key bound: its first 48 bits are the
/// creation time in ms, written as the ID's first 13 characters.
pub fn time_bound(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// `YYYY-MM-DD` (UTC) as epoch ms at its midnight.
pub fn day_ms(day: &str) -> Option<i64> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| day.get(r)?.parse::<u16>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::from(y), month, u8::try_from(d).ok()?).ok()?;
    Some((date.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

const DAY_MS: i64 = 86_400_000;

/// The org-wide scope from `startDate`/`endDate` (inclusive days, UTC; the
/// default the 30 days up to today).
pub fn date_scope(
    start: Option<&str>,
    end: Option<&str>,
    now: OffsetDateTime,
) -> Result<Scope, String> {
    let today = (now.unix_timestamp_nanos() / 1_000_000) as i64 / DAY_MS * DAY_MS;
    let parse = |name: &str, v: Option<&str>| -> Result<Option<i64>, String> {
        v.map(|d| {
            day_ms(d).ok_or_else(|| format!("{name} must be a date as YYYY-MM-DD (UTC), not {d:?}"))
        })
        .transpose()
    };
    let end_day = parse("endDate", end)?.unwrap_or(today);
    let start_day = parse("startDate", start)?.unwrap_or(end_day - 29 * DAY_MS);
    if start_day > end_day {
        return Err("startDate is after endDate".into());
    }
    if (end_day - start_day) / DAY_MS >= MAX_DAYS {
        return Err(format!(
            "the days from startDate to endDate are more than {MAX_DAYS}; ask for a shorter range"
        ));
    }
    Ok(Scope::Org {
        from_ms: start_day,
        to_ms: end_day + DAY_MS,
    })
}

/// A message's ID: `{eventID}.{CHANNEL}.{contactId or -}`.
pub fn message_id(event_id: &str, d: &Delivery) -> String {
    format!(
        "{event_id}.{}.{}",
        d.channel,
        d.contact_id.as_deref().unwrap_or("-")
    )
}

/// The parts of a message ID, checked: an event ID (a UUID), a channel
/// name, a contact ID or `-`.
pub fn parse_message_id(id: &str) -> Option<(String, String, String)> {
    let mut parts = id.splitn(3, '.');
    let (event, channel, contact) = (parts.next()?, parts.next()?, parts.next()?);
    let event_ok = uuid::Uuid::parse_str(event).is_ok() && event.len() == 36;
    let channel_ok = !channel.is_empty()
        && channel.len() <= 32
        && channel.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    let contact_ok = contact == "-" || crate::model::ContactId::parse(contact).is_ok();
    (event_ok && channel_ok && contact_ok).then(|| {
        (
            event.to_ascii_lowercase(),
            channel.to_owned(),
            contact.to_owned(),
        )
    })
}

/// A ledger entry as the API's `NotificationMessage`: `recipient` is the
/// contact's ID (the address stays on the contact), `type` the channel;
/// `info.customFields` holds what this project adds: status, reason, the
/// provider's message ID, attempts.
pub fn message(
    org: &OrgId,
    event_id: &str,
    event: Option<&NotificationEvent>,
    d: &Delivery,
) -> Value {
    let mut custom = Map::new();
    custom.insert("eventID".into(), json!(event_id));
    // What happened last: the provider's report once there is one (DELIVERED,
    // BOUNCED, SUPPRESSED, COMPLAINED...), else what this function did.
    match d.outcome {
        Some(o) => {
            custom.insert("status".into(), json!(o));
            custom.insert("sendStatus".into(), json!(d.status));
        }
        None => {
            custom.insert("status".into(), json!(d.status));
        }
    }
    for (k, v) in [
        ("contactId", d.contact_id.as_ref().map(|c| json!(c))),
        ("reason", d.reason.as_ref().map(|r| json!(r))),
        ("providerMessageId", d.message_id.as_ref().map(|m| json!(m))),
        ("attempts", d.attempts.map(|a| json!(a))),
        (
            "retryAt",
            d.retry_at
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| json!(t)),
        ),
        ("outcomeReason", d.outcome_reason.as_ref().map(|r| json!(r))),
        (
            "outcomeAt",
            d.outcome_at
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| json!(t)),
        ),
        ("clicks", d.clicks.map(|c| json!(c))),
    ] {
        if let Some(v) = v {
            custom.insert(k.into(), v);
        }
    }
    let mut info = Map::new();
    info.insert("action".into(), json!("NOTIFY_CONTACTS"));
    if let Some(title) = event.and_then(|e| e.title.as_ref()) {
        info.insert("subject".into(), json!(title));
    }
    info.insert("customFields".into(), Value::Object(custom));
    json!({
        "id": message_id(event_id, d),
        "organizationID": org.as_str(),
        "recipient": d.contact_id.as_deref().unwrap_or(""),
        "type": d.channel,
        "creationTime": d.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "info": info,
    })
}

/// `ListNotificationEventsResponse`, plus `nextCursor` (the last event's ID:
/// pass it as `cursor` for the next page, stable while events are written).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub notification_events: Vec<Value>,
    pub next_offset: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_count: Option<usize>,
    pub next_cursor: Option<String>,
}

impl EventPage {
    /// The page of `list` read at `offset`; cut short (with a next offset
    /// and cursor) when the answer would pass `MAX_ANSWER_BYTES`.
    pub fn new(list: EventList, offset: usize, total_count: Option<usize>) -> Self {
        let mut events = Vec::with_capacity(list.events.len());
        let mut bytes = 0;
        let mut cut = false;
        for e in &list.events {
            let v = serde_json::to_value(e).unwrap_or(Value::Null);
            bytes += v.to_string().len();
            if bytes > MAX_ANSWER_BYTES && !events.is_empty() {
                cut = true;
                break;
            }
            events.push(v);
        }
        let more = list.more || cut;
        let next_cursor = more
            .then(|| {
                events
                    .last()
                    .and_then(|e| e["eventID"].as_str())
                    .map(str::to_owned)
            })
            .flatten();
        EventPage {
            next_offset: more.then_some(offset + events.len()),
            notification_events: events,
            total_count,
            next_cursor,
        }
    }
}

/// What a read route asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Events,
    EntityEvents {
        entity_type: String,
        entity_id: String,
    },
    Messages,
    Message(String),
}

/// A read route, its organisation checked by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRoute {
    pub org: OrgId,
    pub target: Target,
}

use crate::http::ApiError;

fn bad(s: impl Into<String>) -> ApiError {
    ApiError::BadRequest(s.into())
}

/// An integer query parameter in `[min, max]`, or its default.
fn number(
    q: &std::collections::HashMap<String, String>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| bad(format!("{name} must be a whole number from {min} to {max}"))),
    }
}

fn event_id_param(v: &str, name: &str) -> Result<String, ApiError> {
    if v.len() == 36 && uuid::Uuid::parse_str(v).is_ok() {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(bad(format!("{name} must be an event ID (a UUID)")))
    }
}

fn store_failed(e: StoreError) -> ApiError {
    ApiError::Internal(crate::notify::NotifyError::Store(e))
}

/// Serves a read route (GET) for an organisation the caller may read.
pub async fn serve<R: EventReader>(
    reader: &R,
    route: &ReadRoute,
    q: &std::collections::HashMap<String, String>,
) -> Result<Value, ApiError> {
    let org = &route.org;
    match &route.target {
        Target::Events | Target::EntityEvents { .. } => {
            let scope = match &route.target {
                Target::EntityEvents {
                    entity_type,
                    entity_id,
                } => {
                    if !crate::model::EntityType::KNOWN.contains(&entity_type.as_str()) {
                        return Err(bad(format!(
                            "entityType {:?} is not an entity type (e.g. OFFER)",
                            entity_type.chars().take(40).collect::<String>()
                        )));
                    }
                    crate::model::OfferId::parse(entity_id)
                        .map_err(|e| bad(format!("entityId: {e}")))?;
                    Scope::Entity {
                        entity_type: entity_type.clone(),
                        entity_id: entity_id.clone(),
                    }
                }
                _ => date_scope(
                    q.get("startDate").map(String::as_str),
                    q.get("endDate").map(String::as_str),
                    OffsetDateTime::now_utc(),
                )
                .map_err(bad)?,
            };
            let limit = number(q, "limit", MAX_LIMIT, 1, MAX_LIMIT)?;
            let offset = number(q, "offset", 0, 0, MAX_OFFSET)?;
            let before = q
                .get("cursor")
                .map(|c| event_id_param(c, "cursor"))
                .transpose()?;
            let query = ListQuery {
                scope: scope.clone(),
                before: before.clone(),
                offset,
                limit,
            };
            let list = reader
                .list_events(org, &query)
                .await
                .map_err(store_failed)?;
            let total = if offset == 0 && before.is_none() {
                reader
                    .count_events(org, &scope)
                    .await
                    .map_err(store_failed)?
            } else {
                None
            };
            Ok(serde_json::to_value(EventPage::new(list, offset, total)).unwrap_or(Value::Null))
        }
        Target::Messages => {
            let event_id = event_id_param(
                q.get("eventId").ok_or_else(|| {
                    bad("eventId is required: the messages of one event (from notificationEvent)")
                })?,
                "eventId",
            )?;
            let limit = number(q, "limit", MAX_LIMIT, 1, MAX_LIMIT)?;
            let offset = number(q, "offset", 0, 0, MAX_OFFSET)?;
            let Some((event, mut ledger)) = reader
                .event_messages(org, &event_id)
                .await
                .map_err(store_failed)?
            else {
                return Err(ApiError::NotFound(format!(
                    "no event {event_id} in organization {org}"
                )));
            };
            ledger.sort_by_key(|d| d.key());
            let total = ledger.len();
            let messages: Vec<Value> = ledger
                .iter()
                .skip(offset)
                .take(limit)
                .map(|d| message(org, &event_id, Some(&event), d))
                .collect();
            let next = (offset + messages.len() < total).then_some(offset + messages.len());
            let mut answer = json!({
                "notificationMessages": messages,
                "nextOffset": next,
            });
            if offset == 0 {
                answer["totalCount"] = json!(total);
            }
            Ok(answer)
        }
        Target::Message(id) => {
            let (event_id, channel, contact) = parse_message_id(id).ok_or_else(|| {
                bad("the message ID must be {eventID}.{CHANNEL}.{contactId or -}, as notificationMessage lists it")
            })?;
            let d = reader
                .delivery(org, &event_id, &channel, &contact)
                .await
                .map_err(store_failed)?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no message {id} in organization {org}"))
                })?;
            Ok(message(org, &event_id, None, &d))
        }
    }
}
