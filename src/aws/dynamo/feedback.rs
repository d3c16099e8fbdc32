//! Provider feedback into the ledger (`crate::feedback`): one conditional
//! UpdateItem per report on the entry whose `messageId` is the report's;
//! and, when the delivery turns out lost, one idempotent UpdateItem on its
//! closed event (the key appended to `info.lostDeliveries`, its channel's
//! count moved from sent to failed, the event FAILED). A report that finds
//! its entry not yet recorded, or its event still PENDING (its run still
//! sending and about to write the event whole), fails the invocation so
//! that it is delivered again (Lambda's retries, then the failure queue).

use super::*;
use crate::feedback::{Applied, Feedback, FeedbackTracker, Report, SmsReport};
use crate::model::DeliveryOutcome;

/// The index of SMS ledger entries by SNS message ID (hash `smsMessageId`,
/// keys only): how an SMS delivery log line, which names only that ID,
/// finds its entry. The entry found is then updated under its own key, on
/// the condition that it holds that message ID.
pub const PROVIDER_INDEX: &str = "ProviderMessages";

/// SNS message IDs remembered per entry to count clicks once.
const MAX_FEEDBACK_IDS: usize = 100;

const OP: &str = "apply provider feedback";

fn outcome_of(item: Option<&Item>) -> Option<DeliveryOutcome> {
    item.and_then(|o| o.get("outcome"))
        .and_then(|v| v.as_s().ok())
        .and_then(|s| serde_json::from_value::<DeliveryOutcome>(serde_json::json!(s)).ok())
}

/// Where a report goes: the entry's key, its message ID and its event.
struct Entry {
    pk: String,
    sk: String,
    message_id: String,
    event_id: String,
    channel: &'static str,
}

impl FeedbackTracker for DynamoStore {
    async fn apply_feedback(&self, f: &Feedback) -> Result<Applied, StoreError> {
        let entry = Entry {
            pk: org_pk(&f.org),
            sk: format!("DELIVERY#{}#EMAIL#{}", f.event_id, f.contact),
            message_id: f.provider_message_id.clone(),
            event_id: f.event_id.clone(),
            channel: "EMAIL",
        };
        match &f.report {
            Report::Outcome(outcome, reason) => self.climb(&entry, *outcome, reason, f.at).await,
            Report::Click => self.click(&entry, &f.sns_message_id).await,
        }
    }

    async fn apply_sms_report(&self, r: &SmsReport) -> Result<Applied, StoreError> {
        let found = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PROVIDER_INDEX)
            .key_condition_expression("smsMessageId = :m")
            .expression_attribute_values(":m", AttributeValue::S(r.sns_message_id.clone()))
            .limit(5)
            .send()
            .await
            .map_err(unavailable(OP))?;
        let key_of = |i: &Item| -> Option<(String, String)> {
            let pk = i.get("pk")?.as_s().ok()?.clone();
            let sk = i.get("sk")?.as_s().ok()?.clone();
            sk.contains("#SMS#").then_some((pk, sk))
        };
        let Some((pk, sk)) = found.items.unwrap_or_default().iter().find_map(key_of) else {
            return Ok(Applied::Unknown);
        };
        // DELIVERY#{eventID}#SMS#{contact}
        let event_id = sk
            .strip_prefix("DELIVERY#")
            .and_then(|rest| rest.split('#').next())
            .unwrap_or_default()
            .to_owned();
        let entry = Entry {
            pk,
            sk,
            message_id: r.sns_message_id.clone(),
            event_id,
            channel: "SMS",
        };
        self.climb(&entry, r.outcome, &r.reason, r.at).await
    }
}

impl DynamoStore {
    /// Moves the entry up to `outcome` (only up), then, when it is lost,
    /// counts it on its event (also when this report was applied before:
    /// a retry whose event step had failed).
    async fn climb(
        &self,
        e: &Entry,
        outcome: DeliveryOutcome,
        reason: &str,
        at: time::OffsetDateTime,
    ) -> Result<Applied, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(e.pk.clone(), e.sk.clone())))
            .update_expression(
                "SET outcome = :o, outcomeReason = :r, outcomeAt = :at, outcomeRank = :rank",
            )
            .condition_expression(
                "attribute_exists(pk) AND #mid = :mid AND #st = :sent AND (attribute_not_exists(outcomeRank) OR outcomeRank < :rank)",
            )
            .expression_attribute_names("#mid", "messageId")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":mid", AttributeValue::S(e.message_id.clone()))
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()))
            .expression_attribute_values(":o", AttributeValue::S(outcome.as_str().into()))
            .expression_attribute_values(":r", AttributeValue::S(reason.to_owned()))
            .expression_attribute_values(":at", AttributeValue::S(rfc3339(at, OP)?))
            .expression_attribute_values(":rank", AttributeValue::N(outcome.rank().to_string()))
            .send()
            .await;
        let (applied, now) = match result {
            Ok(_) => (Applied::Moved(outcome), Some(outcome)),
            Err(err) if conditional_failed(&err) => match self.current(e).await? {
                Current::Ours(now) => (Applied::Stale, now),
                Current::NotYet => {
                    return Err(StoreError::Conflict {
                        op: "apply provider feedback: the delivery is not recorded as sent yet (retried)",
                    });
                }
                Current::NotOurs => return Ok(Applied::Unknown),
            },
            Err(err) => return Err(unavailable(OP)(err)),
        };
        if now.is_some_and(DeliveryOutcome::is_failure) {
            self.count_lost(e).await?;
        }
        Ok(applied)
    }

    async fn click(&self, e: &Entry, sns_message_id: &str) -> Result<Applied, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(e.pk.clone(), e.sk.clone())))
            .update_expression("ADD clicks :one, feedbackIds :ids")
            .condition_expression(
                "attribute_exists(pk) AND #mid = :mid AND #st = :sent AND (attribute_not_exists(feedbackIds) OR (NOT contains(feedbackIds, :id) AND size(feedbackIds) < :cap))",
            )
            .expression_attribute_names("#mid", "messageId")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":mid", AttributeValue::S(e.message_id.clone()))
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":ids", AttributeValue::Ss(vec![sns_message_id.to_owned()]))
            .expression_attribute_values(":id", AttributeValue::S(sns_message_id.to_owned()))
            .expression_attribute_values(":cap", AttributeValue::N(MAX_FEEDBACK_IDS.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Applied::Counted),
            Err(err) if conditional_failed(&err) => Ok(match self.current(e).await? {
                Current::Ours(_) => Applied::Stale,
                Current::NotYet | Current::NotOurs => Applied::Unknown,
            }),
            Err(err) => Err(unavailable(OP)(err)),
        }
    }

    /// The entry as it is now, when a conditional update did not apply.
    async fn current(&self, e: &Entry) -> Result<Current, StoreError> {
        let item = self
            .get_projected(
                OP,
                e.pk.clone(),
                e.sk.clone(),
                true,
                &["messageId", "status", "outcome"],
            )
            .await?;
        let s = |k: &str| {
            item.as_ref()
                .and_then(|i| i.get(k))
                .and_then(|v| v.as_s().ok())
                .cloned()
        };
        Ok(match (s("status").as_deref(), s("messageId")) {
            (Some("SENT"), Some(m)) if m == e.message_id => {
                Current::Ours(outcome_of(item.as_ref()))
            }
            // Its intent is written, its outcome not yet (a 200 ms flush).
            (Some("SENDING"), _) => Current::NotYet,
            // Announced with its group, its outcome not written yet: the
            // same, for the synchronous path.
            (None, _) if item.is_none() && self.is_announced(e).await? => Current::NotYet,
            _ => Current::NotOurs,
        })
    }

    /// Whether an announcement of the entry's event lists it (it has no
    /// entry of its own yet).
    async fn is_announced(&self, e: &Entry) -> Result<bool, StoreError> {
        // DELIVERY#{eventID}#{channel}#{contact}
        let prefix = format!("DELIVERY#{}#", e.event_id);
        let (Some(key), Some(org)) = (
            e.sk.strip_prefix(&prefix),
            e.pk.strip_prefix("ORG#").and_then(|o| OrgId::parse(o).ok()),
        ) else {
            return Ok(false);
        };
        Ok(self.announced_in(&org, &e.event_id, key).await?.is_some())
    }

    /// A lost delivery on its event, once: its key appended to
    /// `info.lostDeliveries`, its channel's count moved from sent to failed,
    /// the event FAILED. Only on a closed event: a PENDING one is about to be
    /// written whole by its run, so the report is retried until it closes.
    async fn count_lost(&self, e: &Entry) -> Result<(), StoreError> {
        const OP: &str = "count a lost delivery";
        let lost = format!(
            "{}#{}",
            e.channel,
            e.sk.rsplit('#').next().unwrap_or_default()
        );
        let now = rfc3339(crate::model::event::now_millis(), OP)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(e.pk.clone(), event_sk(&e.event_id))))
            .update_expression(
                "SET info.lostDeliveries = list_append(if_not_exists(info.lostDeliveries, :none), :lost), info.deliverySummary.#ch.sent = info.deliverySummary.#ch.sent - :one, info.deliverySummary.#ch.failed = info.deliverySummary.#ch.failed + :one, eventStatus = :failed, lastUpdateTime = :now",
            )
            .condition_expression(
                "attribute_exists(pk) AND eventStatus <> :pending AND NOT contains(info.lostDeliveries, :key) AND info.deliverySummary.#ch.sent > :zero",
            )
            .expression_attribute_names("#ch", e.channel)
            .expression_attribute_values(":none", AttributeValue::L(vec![]))
            .expression_attribute_values(":lost", AttributeValue::L(vec![AttributeValue::S(lost.clone())]))
            .expression_attribute_values(":key", AttributeValue::S(lost))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":failed", AttributeValue::S("FAILED".into()))
            .expression_attribute_values(":pending", AttributeValue::S("PENDING".into()))
            .expression_attribute_values(":now", AttributeValue::S(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if conditional_failed(&err) => {
                // Counted already, or no such event: nothing to do. Still
                // PENDING: try again later.
                let status = self
                    .get_projected(
                        OP,
                        e.pk.clone(),
                        event_sk(&e.event_id),
                        true,
                        &["eventStatus"],
                    )
                    .await?
                    .and_then(|i| i.get("eventStatus").and_then(|v| v.as_s().ok()).cloned());
                if status.as_deref() == Some("PENDING") {
                    Err(StoreError::Conflict {
                        op: "count a lost delivery: its event is still PENDING (retried)",
                    })
                } else {
                    Ok(())
                }
            }
            Err(err) => Err(unavailable(OP)(err)),
        }
    }
}

enum Current {
    /// The entry holds this message, SENT, at this outcome.
    Ours(Option<DeliveryOutcome>),
    /// Its send is not recorded yet.
    NotYet,
    /// No such entry, or another message's.
    NotOurs,
}
