//! WEBHOOK: the organisation's own endpoint receives the final
//! NotificationEvent once the event is closed, signed per Standard Webhooks
//! 1.0. The target is the settings' `webhook.secret`, whose secret holds
//! `{"url", "signingSecret": "whsec_..."}`; any public https host is allowed
//! (the SSRF guard decides).
//!
//! Headers: `webhook-id` = `msg_{eventID}` (the same on every attempt: the
//! receiver's idempotency key), `webhook-timestamp` (epoch seconds of the
//! attempt), `webhook-signature` = `v1,` + base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` keyed with the base64-decoded `whsec_` secret.
//!
//! Answers: 2xx is SENT; 3xx FAILED (redirects are not followed); 410 FAILED
//! and the target disabled; 429, 502, 503, 504, timeouts and connection
//! failures are retried through the work queue after 5 s, 5 min, 30 min, 2 h
//! and 5 h (6 attempts), then FAILED; any other answer FAILED. Each attempt
//! is written to the ledger entry `WEBHOOK#-` (`attempts`, `retryAt`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use serde_json::Value;

use crate::model::{NotificationEvent, NotificationSettings};
use crate::ports::SendError;

use super::web::{WebAnswer, valid_target_name};

/// Waits before attempts 2 to 6.
pub const RETRY_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
];
/// Attempts at most (the first and the scheduled retries).
pub const MAX_ATTEMPTS: u32 = RETRY_SCHEDULE.len() as u32 + 1;
/// Bodies above this drop the event's long lists (`info.truncated` says so).
pub const MAX_BODY_BYTES: usize = 128 * 1024;
/// An attempt's timeout at most (less when the deadline is nearer).
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// The key `info` keeps the webhook's target name under, so whoever closes
/// the event (a worker, a resumed run) sends it without reading the settings.
pub const INFO_TARGET: &str = "webhookTarget";
/// The work batch of attempt `n` is named `wh{n}`.
pub const BATCH_PREFIX: &str = "wh";

/// The settings' webhook target, when there is one to send to; `Err` is why
/// the WEBHOOK delivery is skipped.
pub fn target(settings: &NotificationSettings) -> Result<&str, String> {
    let Some(t) = settings.webhook.as_ref() else {
        return Err("no webhook target in the organization's notification settings".into());
    };
    if let Some(d) = &t.disabled {
        return Err(format!(
            "the webhook target is disabled since {}: {}; fix the endpoint and remove `disabled` from the settings",
            d.at, d.reason
        ));
    }
    if !valid_target_name(&t.secret) {
        return Err(
            "the webhook target's secret name is not valid (1-64 letters, digits, - or _)".into(),
        );
    }
    Ok(&t.secret)
}

/// The `webhook-id` of an event: the same on every attempt.
pub fn message_id(event_id: &str) -> String {
    format!("msg_{event_id}")
}

/// `v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`, keyed with the
/// base64 part of a `whsec_` secret; `None` when the secret is not one.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let encoded = secret.trim().strip_prefix("whsec_")?;
    let key = B64
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .ok()?;
    if key.len() < 16 {
        return None;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The event as the webhook's body: the final event, bounded. Above
/// `MAX_BODY_BYTES` the contact lists and per-delivery details are dropped
/// and `info.truncated` is set.
pub fn body(event: &NotificationEvent) -> String {
    let full = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    if full.len() <= MAX_BODY_BYTES {
        return full;
    }
    let mut e = event.clone();
    let count = e.contact_ids.as_ref().map_or(0, Vec::len);
    e.contact_ids = None;
    e.cc_contact_ids = None;
    e.contact_emails = None;
    let info = e.info.get_or_insert_with(serde_json::Map::new);
    info.retain(|k, _| k == "deliveries" || k == "deliveryCount" || k == "deliveryMode");
    info.insert("truncated".into(), Value::Bool(true));
    info.insert("contactCount".into(), Value::from(count));
    let mut out = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
    if out.len() > MAX_BODY_BYTES {
        e.info = None;
        e.message = None;
        out = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
    }
    if out.len() > MAX_BODY_BYTES {
        // Only seller-controlled texts can still be this long: the event's
        // identity and status, nothing else.
        out = serde_json::json!({
            "eventID": event.event_id,
            "organizationID": event.organization_id,
            "entityType": event.entity_type,
            "entityID": event.entity_id,
            "eventStatus": event.event_status,
            "info": {"truncated": true, "contactCount": count},
        })
        .to_string();
    }
    out
}

/// The endpoint's answer as the attempt's outcome. `Err` with `permanent`
/// false is retried on the schedule.
pub fn classify(a: &WebAnswer) -> Result<String, SendError> {
    match a.status {
        200..=299 => Ok(format!("webhook:{}", a.status)),
        s @ 300..=399 => Err(SendError::permanent(
            "WebhookRedirected",
            format!("the endpoint answered {s}; redirects are not followed"),
        )),
        410 => Err(SendError {
            disables_target: true,
            ..SendError::permanent(
                "WebhookGone",
                "the endpoint answered 410 Gone: the target is disabled",
            )
        }),
        s @ (429 | 502 | 503 | 504) => Err(SendError {
            retry_after: a.retry_after,
            ..SendError::transient("WebhookUnavailable", format!("the endpoint answered {s}"))
        }),
        s => Err(SendError::permanent(
            "WebhookRefused",
            format!("the endpoint answered {s}"),
        )),
    }
}

/// When attempt `n + 1` is due after attempt `n` failed; `None` after the last.
pub fn next_wait(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let base = *RETRY_SCHEDULE.get(attempt.checked_sub(1)? as usize)?;
    Some(retry_after.map_or(base, |r| r.max(base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// libraries (standard-webhooks, `webhook_test.py`).
    #[test]
    fn signs_like_the_reference_implementation() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, ts, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(sign("nope", id, ts, body), None);
    }

    #[test]
    fn schedule_then_failed() {
        assert_eq!(next_wait(1, None), Some(Duration::from_secs(5)));
        assert_eq!(next_wait(5, None), Some(Duration::from_secs(5 * 3600)));
        assert_eq!(next_wait(6, None), None);
        assert_eq!(
            next_wait(1, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(MAX_ATTEMPTS, 6);
    }

    #[test]
    fn answers() {
        let a = |status| WebAnswer {
            status,
            ..WebAnswer::default()
        };
        assert!(classify(&a(204)).is_ok());
        assert!(classify(&a(302)).unwrap_err().permanent);
        assert!(classify(&a(410)).unwrap_err().disables_target);
        for s in [429, 502, 503, 504] {
            assert!(!classify(&a(s)).unwrap_err().permanent, "{s}");
        }
        assert!(classify(&a(500)).unwrap_err().permanent);
    }

    #[test]
    fn big_events_are_bounded() {
        let e = NotificationEvent {
            contact_ids: Some((0..20_000).map(|i| format!("contact-{i:08}")).collect()),
            ..NotificationEvent::default()
        };
        let b = body(&e);
        assert!(b.len() <= MAX_BODY_BYTES);
        assert!(b.contains("\"truncated\":true"));
    }
}
