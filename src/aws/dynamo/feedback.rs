//! Provider feedback into the ledger (`crate::feedback`): one conditional
//! UpdateItem per report, on the entry whose `messageId` is the report's;
//! and, when a delivery turns out lost, one on its event's summary.

use super::*;
use crate::feedback::{Applied, Feedback, FeedbackTracker, Report, SmsReport};
use crate::model::DeliveryOutcome;

/// The index of ledger entries by provider message ID (hash `messageId`,
/// keys only): how an SMS delivery log line, which names only the SNS
/// message ID, finds its entry. Message IDs are the providers' own,
/// unguessable; the entry found is then updated under its own key.
pub const PROVIDER_INDEX: &str = "ProviderMessages";

/// SNS message IDs remembered per entry to count clicks once.
const MAX_FEEDBACK_IDS: usize = 100;

fn rfc3339(t: time::OffsetDateTime, op: &'static str) -> Result<String, StoreError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Malformed {
            op,
            detail: e.to_string(),
        })
}

impl FeedbackTracker for DynamoStore {
    async fn apply_feedback(&self, f: &Feedback) -> Result<Applied, StoreError> {
        const OP: &str = "apply provider feedback";
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                org_pk(&f.org),
                format!("DELIVERY#{}#EMAIL#{}", f.event_id, f.contact),
            )))
            .expression_attribute_names("#mid", "messageId")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":mid", AttributeValue::S(f.provider_message_id.clone()))
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()));
        let result = match &f.report {
            Report::Outcome(outcome, reason) => {
                update
                    .update_expression(
                        "SET outcome = :o, outcomeReason = :r, outcomeAt = :at, outcomeRank = :rank",
                    )
                    .condition_expression(
                        "attribute_exists(pk) AND #mid = :mid AND #st = :sent AND (attribute_not_exists(outcomeRank) OR outcomeRank < :rank)",
                    )
                    .expression_attribute_values(":o", AttributeValue::S(outcome.as_str().into()))
                    .expression_attribute_values(":r", AttributeValue::S(reason.clone()))
                    .expression_attribute_values(":at", AttributeValue::S(rfc3339(f.at, OP)?))
                    .expression_attribute_values(":rank", AttributeValue::N(outcome.rank().to_string()))
                    .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                    .send()
                    .await
            }
            Report::Click => {
                update
                    .update_expression("ADD clicks :one, feedbackIds :ids")
                    .condition_expression(
                        "attribute_exists(pk) AND #mid = :mid AND #st = :sent AND (attribute_not_exists(feedbackIds) OR (NOT contains(feedbackIds, :id) AND size(feedbackIds) < :cap))",
                    )
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .expression_attribute_values(":ids", AttributeValue::Ss(vec![f.sns_message_id.clone()]))
                    .expression_attribute_values(":id", AttributeValue::S(f.sns_message_id.clone()))
                    .expression_attribute_values(":cap", AttributeValue::N(MAX_FEEDBACK_IDS.to_string()))
                    .send()
                    .await
            }
        };
        let old = match result {
            Ok(out) => out.attributes,
            Err(e) if conditional_failed(&e) => return self.why_not(f).await,
            Err(e) => return Err(unavailable(OP)(e)),
        };
        let Report::Outcome(outcome, _) = &f.report else {
            return Ok(Applied::Counted);
        };
        let was_lost = old
            .as_ref()
            .and_then(|o| o.get("outcome"))
            .and_then(|v| v.as_s().ok())
            .and_then(|s| serde_json::from_value::<DeliveryOutcome>(serde_json::json!(s)).ok())
            .is_some_and(DeliveryOutcome::is_failure);
        if outcome.is_failure() && !was_lost {
            self.count_as_failed(org_pk(&f.org), &f.event_id, "EMAIL")
                .await?;
        }
        Ok(Applied::Moved(*outcome))
    }

    async fn apply_sms_report(&self, r: &SmsReport) -> Result<Applied, StoreError> {
        const OP: &str = "apply an SMS delivery log";
        let found = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PROVIDER_INDEX)
            .key_condition_expression("messageId = :m")
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
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), sk.clone())))
            .update_expression(
                "SET outcome = :o, outcomeReason = :r, outcomeAt = :at, outcomeRank = :rank",
            )
            .condition_expression(
                "attribute_exists(pk) AND #mid = :mid AND #st = :sent AND (attribute_not_exists(outcomeRank) OR outcomeRank < :rank)",
            )
            .expression_attribute_names("#mid", "messageId")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":mid", AttributeValue::S(r.sns_message_id.clone()))
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()))
            .expression_attribute_values(":o", AttributeValue::S(r.outcome.as_str().into()))
            .expression_attribute_values(":r", AttributeValue::S(r.reason.clone()))
            .expression_attribute_values(":at", AttributeValue::S(rfc3339(r.at, OP)?))
            .expression_attribute_values(":rank", AttributeValue::N(r.outcome.rank().to_string()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await;
        let old = match result {
            Ok(out) => out.attributes,
            Err(e) if conditional_failed(&e) => return Ok(Applied::Stale),
            Err(e) => return Err(unavailable(OP)(e)),
        };
        let was_lost = old
            .as_ref()
            .and_then(|o| o.get("outcome"))
            .and_then(|v| v.as_s().ok())
            .and_then(|s| serde_json::from_value::<DeliveryOutcome>(serde_json::json!(s)).ok())
            .is_some_and(DeliveryOutcome::is_failure);
        if r.outcome.is_failure() && !was_lost {
            self.count_as_failed(pk, &event_id, "SMS").await?;
        }
        Ok(Applied::Moved(r.outcome))
    }
}

impl DynamoStore {
    /// Why a report changed nothing: no such entry (or another message's),
    /// or it is already there or beyond.
    async fn why_not(&self, f: &Feedback) -> Result<Applied, StoreError> {
        let item = self
            .get_projected(
                "apply provider feedback",
                org_pk(&f.org),
                format!("DELIVERY#{}#EMAIL#{}", f.event_id, f.contact),
                true,
                &["messageId", "status"],
            )
            .await?;
        let ours = item.as_ref().is_some_and(|i| {
            i.get("messageId").and_then(|v| v.as_s().ok()) == Some(&f.provider_message_id)
                && i.get("status")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    == Some("SENT")
        });
        Ok(if ours {
            Applied::Stale
        } else {
            Applied::Unknown
        })
    }

    /// A delivery counted as sent turned out lost: the event's count for
    /// its channel moves from sent to failed and a closed event becomes
    /// FAILED. A PENDING event is left to its final write, which counts from
    /// the ledger (where the outcome now is).
    async fn count_as_failed(
        &self,
        pk: String,
        event_id: &str,
        channel: &'static str,
    ) -> Result<(), StoreError> {
        const OP: &str = "count a lost delivery";
        let now = rfc3339(crate::model::event::now_millis(), OP)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, event_sk(event_id))))
            .update_expression(
                "SET info.deliverySummary.#ch.sent = info.deliverySummary.#ch.sent - :one, info.deliverySummary.#ch.failed = info.deliverySummary.#ch.failed + :one, eventStatus = :failed, lastUpdateTime = :now",
            )
            .condition_expression(
                "attribute_exists(pk) AND eventStatus <> :pending AND info.deliverySummary.#ch.sent > :zero",
            )
            .expression_attribute_names("#ch", channel)
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":failed", AttributeValue::S("FAILED".into()))
            .expression_attribute_values(":pending", AttributeValue::S("PENDING".into()))
            .expression_attribute_values(":now", AttributeValue::S(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => Ok(()),
            Err(e) => Err(unavailable(OP)(e)),
        }
    }
}
