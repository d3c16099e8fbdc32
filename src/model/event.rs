//! The `NotificationEvent` of the API, with its JSON names exactly as published
//! (mixed capitalisation included). Every field is optional, as in the API.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::enums::{
    EntityType, EventStatus, NotificationChannel, NotificationEventAction, Partner, Priority,
    TrackEventAction,
};

/// Who asked for the notification (from the authorizer context, or as given by
/// an invoking Lambda).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<EntityType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<TrackEventAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub timestamp: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<NotificationEventAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc_contact_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<NotificationChannel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_emails: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<CreatedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<Map<String, Value>>,
    #[serde(rename = "entityID", default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<EntityType>,
    #[serde(rename = "eventID", default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_status: Option<EventStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_action_item: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_update_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(
        rename = "organizationID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub organization_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<Partner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_audit: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub timestamp: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_events: Option<Vec<TrackEvent>>,
}

/// Now, to the millisecond (the API's timestamps carry milliseconds).
pub fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
}

/// A time as epoch milliseconds (leases, locks, queue delays).
pub fn epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_EXAMPLE: &str = r#"{
      "action": "", "ccContactIds": ["string"], "channels": ["EMAIL"],
      "contactEmails": ["string"], "contactIds": ["string"],
      "createdBy": {"email": "string", "entityId": "string", "entityType": "", "name": "string"},
      "customFields": {}, "entityID": "string", "entityName": "string", "entityStatus": "string",
      "entityType": "", "eventID": "string", "eventStatus": "", "isActionItem": true,
      "lastUpdateTime": "2024-07-29T15:51:28.071Z", "message": "string",
      "organizationID": "string", "partner": "", "priority": "", "requireAudit": true,
      "timestamp": "2024-07-29T15:51:28.071Z", "title": "string",
      "trackEvents": [{"action": "OPEN_EMAIL", "contactId": "string", "timestamp": "2024-07-29T15:51:28.071Z"}]
    }"#;

    #[test]
    fn the_reference_page_example_round_trips_exactly() {
        let event: NotificationEvent = serde_json::from_str(PAGE_EXAMPLE).unwrap();
        let back = serde_json::to_value(&event).unwrap();
        let original: Value = serde_json::from_str(PAGE_EXAMPLE).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn unknown_enum_values_from_storage_do_not_fail() {
        let event: NotificationEvent = serde_json::from_str(
            r#"{"action":"WEBHOOK","partner":"DATABRICKS","channels":["PIGEON"],"eventStatus":"LOST"}"#,
        )
        .unwrap();
        assert_eq!(event.partner, Some(Partner::Other("DATABRICKS".into())));
        assert_eq!(
            serde_json::to_value(&event).unwrap()["channels"][0],
            "PIGEON"
        );
    }
}
