//! Provider feedback (issue 12, items 1 and 3): what SES reported after it
//! accepted an email, through the configuration set's SNS destination, moved
//! into the delivery's ledger entry along `DeliveryOutcome`'s ladder.
//!
//! An SES event names its delivery by the tags every email carries
//! (`organizationID`, `eventID`, `contactId`) and is applied only when the
//! entry's `messageId` is the SES message ID the event reports: a report
//! about another organisation's or another message's email changes
//! nothing. The ladder only goes up (a late Delivery never replaces a
//! Bounce), so a redelivered or out-of-order SNS message is a no-op. A
//! failure (a hard bounce, a suppressed address, a reject) turns the
//! event's count for that delivery from sent to failed, and a closed
//! event's status to FAILED. Clicks are counted beside the outcome.
//!
//! No address, diagnostic code or message text is read from the report:
//! only its types (bounce type and sub-type, complaint type, delay type).

use serde_json::Value;
use time::OffsetDateTime;

use crate::model::{ContactId, DeliveryOutcome, OrgId};
use crate::ports::StoreError;
use crate::tracking::Dropped;

/// One SES report about one email.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub org: OrgId,
    pub event_id: String,
    pub contact: ContactId,
    /// The SES message ID (`mail.messageId`): must match the ledger's.
    pub provider_message_id: String,
    pub report: Report,
    pub at: OffsetDateTime,
    /// The SNS message that carried it (clicks are counted once per message).
    pub sns_message_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A step on the ladder, with the provider's reason.
    Outcome(DeliveryOutcome, String),
    /// A link clicked (engagement, beside the outcome).
    Click,
}

/// What applying a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry moved up to this outcome.
    Moved(DeliveryOutcome),
    /// A click counted.
    Counted,
    /// Already at this step or beyond (a redelivery, or out of order).
    Stale,
    /// No such entry, or its message ID is another (another org's or
    /// another message's report): nothing changed.
    Unknown,
}

pub trait FeedbackTracker: Send + Sync {
    fn apply_feedback(
        &self,
        f: &Feedback,
    ) -> impl std::future::Future<Output = Result<Applied, StoreError>> + Send;
    /// An SMS delivery log line, found by the SNS message ID its ledger
    /// entry holds.
    fn apply_sms_report(
        &self,
        r: &SmsReport,
    ) -> impl std::future::Future<Output = Result<Applied, StoreError>> + Send;
}

/// A provider word kept for a reason: letters and digits, 40 at most;
/// anything else is "Unknown".
fn word(v: &Value) -> &str {
    v.as_str()
        .filter(|s| (1..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("Unknown")
}

/// Reads one SNS record's SES event. `Ok(None)`: nothing to apply here (an
/// open, handled by `tracking`; a Send, which the ledger already says).
pub fn parse_feedback(sns_message_id: &str, message: &str) -> Result<Option<Feedback>, Dropped> {
    feedback_from(sns_message_id, &crate::tracking::read_ses(message)?)
}

/// The report an SES event (read once by `tracking::read_ses`) makes, if any.
pub fn feedback_from(
    sns_message_id: &str,
    (ses, kind): &(Value, String),
) -> Result<Option<Feedback>, Dropped> {
    use DeliveryOutcome::*;
    let (report, at_field) = match kind.as_str() {
        "Delivery" => (
            Report::Outcome(Delivered, "delivered to the recipient's mail server".into()),
            &ses["delivery"]["timestamp"],
        ),
        "Bounce" => {
            let b = &ses["bounce"];
            let (kind, sub) = (word(&b["bounceType"]), word(&b["bounceSubType"]));
            let outcome = match (kind, sub) {
                ("Permanent", "OnAccountSuppressionList" | "OnSuppressionList") => Report::Outcome(
                    Suppressed,
                    format!(
                        "the address is on the {} suppression list: SES did not send to it",
                        if sub == "OnAccountSuppressionList" {
                            "account's"
                        } else {
                            "global"
                        }
                    ),
                ),
                ("Permanent", _) => Report::Outcome(Bounced, format!("permanent bounce ({sub})")),
                _ => Report::Outcome(
                    Delayed,
                    format!(
                        "{} bounce ({sub}): the mail server may accept it later",
                        kind.to_lowercase()
                    ),
                ),
            };
            (outcome, &b["timestamp"])
        }
        "Complaint" => {
            let c = &ses["complaint"];
            let t = c
                .get("complaintFeedbackType")
                .map(word)
                .unwrap_or("unspecified");
            (
                Report::Outcome(
                    Complained,
                    format!("the recipient reported it as unwanted ({t})"),
                ),
                &c["timestamp"],
            )
        }
        "Reject" => (
            Report::Outcome(
                Rejected,
                "rejected by SES before sending (it found a virus or bad content)".into(),
            ),
            &ses["mail"]["timestamp"],
        ),
        "Rendering Failure" | "RenderingFailure" => (
            Report::Outcome(Rejected, "SES could not render the message".into()),
            &ses["mail"]["timestamp"],
        ),
        "DeliveryDelay" => {
            let d = &ses["deliveryDelay"];
            (
                Report::Outcome(
                    Delayed,
                    format!("delivery delayed ({})", word(&d["delayType"])),
                ),
                &d["timestamp"],
            )
        }
        "Click" => (Report::Click, &ses["click"]["timestamp"]),
        _ => return Ok(None),
    };
    let (org, contact, event_id) = crate::tracking::ses_tags(ses)?;
    let provider_message_id = ses["mail"]["messageId"]
        .as_str()
        .filter(|m| (1..=200).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("no valid mail.messageId")?
        .to_owned();
    let at = at_field
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    if sns_message_id.is_empty() || sns_message_id.len() > 100 {
        return Err("no valid SNS MessageId");
    }
    Ok(Some(Feedback {
        org,
        event_id,
        contact,
        provider_message_id,
        report,
        at,
        sns_message_id: sns_message_id.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ses(kind: &str, extra: Value) -> String {
        let mut v = serde_json::json!({"eventType": kind, "mail": {"messageId": "0100-ses", "timestamp": "2026-11-30T10:00:00Z",
            "tags": {"organizationID": ["org-demo"], "eventID": ["01a22cb5-3bf2-7391-b43b-26ac30363f8a"], "contactId": ["c-ann"]}}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    fn outcome(kind: &str, extra: Value) -> (DeliveryOutcome, String) {
        match parse_feedback("sns-1", &ses(kind, extra))
            .unwrap()
            .unwrap()
            .report
        {
            Report::Outcome(o, r) => (o, r),
            Report::Click => panic!("a click"),
        }
    }

    #[test]
    fn each_report_is_a_step_with_a_reason_and_no_address() {
        use serde_json::json;
        assert_eq!(outcome("Delivery", json!({"delivery": {"timestamp": "2026-11-30T10:00:01Z", "recipients": ["ann@x.example"]}})).0, DeliveryOutcome::Delivered);
        let (o, r) = outcome(
            "Bounce",
            json!({"bounce": {"bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "ann@x.example", "diagnosticCode": "550 5.1.1 <ann@x.example> unknown"}]}}),
        );
        assert_eq!(
            (o, r.as_str()),
            (DeliveryOutcome::Bounced, "permanent bounce (General)")
        );
        let (o, r) = outcome(
            "Bounce",
            json!({"bounce": {"bounceType": "Permanent", "bounceSubType": "OnAccountSuppressionList"}}),
        );
        assert_eq!(o, DeliveryOutcome::Suppressed);
        assert!(r.contains("account's suppression list"));
        assert_eq!(
            outcome(
                "Bounce",
                json!({"bounce": {"bounceType": "Transient", "bounceSubType": "MailboxFull"}})
            )
            .0,
            DeliveryOutcome::Delayed
        );
        assert_eq!(
            outcome(
                "Complaint",
                json!({"complaint": {"complaintFeedbackType": "abuse"}})
            )
            .1,
            "the recipient reported it as unwanted (abuse)"
        );
        assert_eq!(
            outcome("Reject", json!({"reject": {"reason": "Bad content"}})).0,
            DeliveryOutcome::Rejected
        );
        assert_eq!(
            outcome(
                "DeliveryDelay",
                json!({"deliveryDelay": {"delayType": "MailboxFull"}})
            )
            .0,
            DeliveryOutcome::Delayed
        );
        // A sub-type that is not a plain word is not copied.
        let (_, r) = outcome(
            "Bounce",
            json!({"bounce": {"bounceType": "Permanent", "bounceSubType": "<b>ann@x.example</b>"}}),
        );
        assert_eq!(r, "permanent bounce (Unknown)");
    }

    #[test]
    fn opens_sends_and_bad_tags_are_not_applied() {
        use serde_json::json;
        assert_eq!(parse_feedback("s", &ses("Open", json!({}))), Ok(None));
        assert_eq!(parse_feedback("s", &ses("Send", json!({}))), Ok(None));
        let bad = json!({"eventType": "Delivery", "mail": {"messageId": "m", "tags": {"organizationID": ["org-demo"], "eventID": ["EVENT#x"], "contactId": ["c"]}}});
        assert!(parse_feedback("s", &bad.to_string()).is_err());
        let no_id = json!({"eventType": "Delivery", "mail": {"tags": {"organizationID": ["o"], "eventID": ["01a22cb5-3bf2-7391-b43b-26ac30363f8a"], "contactId": ["c"]}}});
        assert!(parse_feedback("s", &no_id.to_string()).is_err());
    }
}

/// One SMS delivery log line, as SNS writes it to CloudWatch Logs
/// (`sns/{region}/{account}/DirectPublishToPhoneNumber[/Failure]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SmsReport {
    /// The SNS message ID the ledger holds for the SMS.
    pub sns_message_id: String,
    pub outcome: DeliveryOutcome,
    pub reason: String,
    pub at: OffsetDateTime,
}

/// Most bytes a subscription payload may inflate to (CloudWatch Logs sends
/// at most 1 MB of events per invocation; more is dropped, not parsed).
const MAX_LOG_BYTES: u64 = 2 * 1024 * 1024;

/// The carrier's answer as a reason: words only (no digits, so no number
/// can pass), 120 characters at most.
fn carrier_words(s: &str) -> String {
    let kept: String = s
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || matches!(c, ' ' | '.' | ',' | '\'' | '-'))
        .take(120)
        .collect();
    let kept = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    if kept.is_empty() {
        "no answer given".into()
    } else {
        kept
    }
}

/// Reads a CloudWatch Logs subscription event's `awslogs.data` (base64 of
/// gzip of JSON): one report per SMS log line; a line that cannot be read is
/// an `Err` (dropped, logged). The destination number is never read.
pub fn parse_sms_logs(data: &str) -> Result<Vec<Result<SmsReport, Dropped>>, Dropped> {
    use base64::Engine as _;
    use std::io::Read as _;
    let zipped = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| "awslogs.data is not base64")?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .take(MAX_LOG_BYTES)
        .read_to_string(&mut text)
        .map_err(|_| "awslogs.data is not gzip of UTF-8 text")?;
    let doc: Value = serde_json::from_str(&text).map_err(|_| "awslogs.data is not JSON")?;
    if doc["messageType"] == "CONTROL_MESSAGE" {
        return Ok(Vec::new());
    }
    let group = doc["logGroup"].as_str().unwrap_or_default();
    if !(group.starts_with("sns/")
        && (group.ends_with("/DirectPublishToPhoneNumber")
            || group.ends_with("/DirectPublishToPhoneNumber/Failure")))
    {
        return Err("not an SNS SMS delivery log group");
    }
    let lines = doc["logEvents"].as_array().ok_or("no logEvents")?;
    Ok(lines
        .iter()
        .map(|l| {
            let m: Value = serde_json::from_str(
                l["message"]
                    .as_str()
                    .ok_or("a log event without a message")?,
            )
            .map_err(|_| "a log line that is not JSON")?;
            let id = m["notification"]["messageId"]
                .as_str()
                .filter(|i| {
                    (1..=100).contains(&i.len())
                        && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .ok_or("a log line without a valid notification.messageId")?;
            let answer = m["delivery"]["providerResponse"]
                .as_str()
                .unwrap_or_default();
            let (outcome, reason) = match m["status"].as_str() {
                Some("SUCCESS") => (
                    DeliveryOutcome::Delivered,
                    format!("the carrier accepted it: {}", carrier_words(answer)),
                ),
                Some("FAILURE") if answer.to_ascii_lowercase().contains("opted out") => (
                    DeliveryOutcome::OptedOut,
                    "the number has opted out of SMS from this account".to_owned(),
                ),
                Some("FAILURE") => (
                    DeliveryOutcome::Undelivered,
                    format!("the carrier did not deliver it: {}", carrier_words(answer)),
                ),
                _ => return Err("a log line without a SUCCESS or FAILURE status"),
            };
            let at = m["notification"]["timestamp"]
                .as_str()
                .and_then(|t| {
                    // SNS writes "2026-11-30 10:00:00.123".
                    OffsetDateTime::parse(
                        &format!("{}Z", t.replacen(' ', "T", 1)),
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()
                })
                .unwrap_or_else(OffsetDateTime::now_utc);
            Ok(SmsReport {
                sns_message_id: id.to_owned(),
                outcome,
                reason,
                at,
            })
        })
        .collect())
}
