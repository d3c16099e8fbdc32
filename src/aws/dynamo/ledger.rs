//! The ledger: one item per delivery, `DELIVERY#{eventID}#{channel}#{contactId or -}`.

use super::*;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

/// Delivery items sort after their event's ID, so one Query with
/// `begins_with(sk, "DELIVERY#{eventID}#")` lists an event's ledger.
pub fn delivery_sk(event_id: &str, d: &Delivery) -> String {
    format!("DELIVERY#{event_id}#{}", d.key())
}

/// Conditional writes in flight at once when a list cannot be one transaction.
const CONDITIONAL_WRITES_IN_FLIGHT: usize = 10;
/// TransactWriteItems takes at most 100 actions.
const TRANSACT_MAX: usize = 100;

fn delivery_item(org: &OrgId, event_id: &str, d: &Delivery) -> Result<Item, serde_dynamo::Error> {
    let mut item: Item = serde_dynamo::to_item(d)?;
    item.insert("eventID".into(), AttributeValue::S(event_id.to_owned()));
    item.insert("organizationID".into(), AttributeValue::S(org.to_string()));
    item.extend(key(org_pk(org), delivery_sk(event_id, d)));
    // The ProviderMessages index: SMS entries by SNS message ID (their
    // delivery logs name nothing else).
    if let (crate::model::NotificationChannel::Sms, Some(id)) = (&d.channel, &d.message_id)
        && !id.is_empty()
    {
        item.insert("smsMessageId".into(), AttributeValue::S(id.clone()));
    }
    Ok(item)
}

impl DynamoStore {
    pub(super) async fn save_deliveries_in(
        &self,
        org: &OrgId,
        event_id: &str,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        const OP: &str = "store deliveries";
        let items = deliveries
            .iter()
            .map(|d| delivery_item(org, event_id, d).map_err(malformed(OP)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write_all(OP, items).await
    }

    pub(super) async fn event_with_deliveries_in(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError> {
        const OP: &str = "read event and ledger";
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), event_sk(event_id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable(OP))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let event: NotificationEvent = serde_dynamo::from_item(item).map_err(malformed(OP))?;
        let mut ledger = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", AttributeValue::S(org_pk(org)))
                .expression_attribute_values(
                    ":prefix",
                    AttributeValue::S(format!("DELIVERY#{event_id}#")),
                )
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable(OP))?;
            for item in page.items.unwrap_or_default() {
                ledger.push(serde_dynamo::from_item(item).map_err(malformed(OP))?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(Some((event, ledger)))
    }

    pub(super) async fn deliveries_in(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        const OP: &str = "read deliveries";
        let keys = keys
            .iter()
            .map(|k| key(org_pk(org), format!("DELIVERY#{event_id}#{k}")))
            .collect();
        self.batch_get(OP, keys, true)
            .await?
            .into_iter()
            .map(|item| serde_dynamo::from_item(item).map_err(malformed(OP)))
            .collect()
    }

    /// Writes each delivery where the ledger holds it QUEUED in `batch`:
    /// one TransactWriteItems of conditional puts per 100. A transaction is
    /// all or nothing, so when some entries are not QUEUED any more DynamoDB
    /// cancels it and names them; it is sent again without them. (Each take
    /// costs two write units instead of one; one call instead of ten.)
    pub(super) async fn replace_queued_in(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        deliveries: &[Delivery],
    ) -> Replaced {
        let distinct = deliveries
            .iter()
            .map(Delivery::key)
            .collect::<std::collections::HashSet<_>>()
            .len();
        if distinct < deliveries.len() {
            // A transaction may not name an item twice: one conditional write
            // each (10 in flight), so at most one of the repeats lands.
            return self
                .replace_queued_one_by_one(org, event_id, batch, deliveries)
                .await;
        }
        let mut written = Vec::with_capacity(deliveries.len());
        let mut failure = None;
        for chunk in deliveries.chunks(TRANSACT_MAX) {
            let (w, e) = self.take_all_or_none(org, event_id, batch, chunk).await;
            written.extend(w);
            if let Some(e) = e {
                failure.get_or_insert(e);
            }
        }
        Replaced { written, failure }
    }

    /// One chunk's conditional puts as transactions: what is still QUEUED in
    /// `batch` is written; an entry whose condition failed is `NotQueued`; one
    /// the store refused, or whose fate is unknown, is `Failed`, with why.
    async fn take_all_or_none(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        chunk: &[Delivery],
    ) -> (Vec<Written>, Option<StoreError>) {
        const OP: &str = "take queued deliveries";
        let mut out = vec![Written::NotQueued; chunk.len()];
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        let mut failure = None;
        let mut attempt = 0;
        let fail_all = |out: &mut Vec<Written>, pending: &[usize]| {
            for &i in pending {
                out[i] = Written::Failed;
            }
        };
        while !pending.is_empty() {
            if attempt == BATCH_ATTEMPTS {
                fail_all(&mut out, &pending);
                let left = pending.len();
                return (
                    out,
                    Some(StoreError::Incomplete {
                        op: OP,
                        left,
                        attempts: attempt,
                    }),
                );
            }
            attempt += 1;
            let puts = pending
                .iter()
                .map(|&i| {
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(
                            delivery_item(org, event_id, &chunk[i]).map_err(malformed(OP))?,
                        ))
                        // The entry must exist, QUEUED in this message's batch:
                        // a message can neither add deliveries nor take another
                        // batch's.
                        .condition_expression("#st = :queued AND #b = :batch")
                        .expression_attribute_names("#st", "status")
                        .expression_attribute_names("#b", "batch")
                        .expression_attribute_values(":queued", AttributeValue::S("QUEUED".into()))
                        .expression_attribute_values(":batch", AttributeValue::S(batch.to_owned()))
                        .build()
                        .map_err(unavailable(OP))?;
                    Ok(TransactWriteItem::builder().put(put).build())
                })
                .collect::<Result<Vec<_>, StoreError>>();
            let puts = match puts {
                Ok(p) => p,
                Err(e) => {
                    fail_all(&mut out, &pending);
                    return (out, Some(e));
                }
            };
            // The SDK sets one ClientRequestToken per call and keeps it across
            // its retries, so a retried call whose first answer was lost is
            // answered as the first, not refused by its own writes.
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(puts))
                .send()
                .await;
            let reasons = match result {
                Ok(_) => {
                    for &i in &pending {
                        out[i] = Written::Yes;
                    }
                    return (out, failure);
                }
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c))
                        if c.cancellation_reasons().len() == pending.len() =>
                    {
                        c.cancellation_reasons().to_vec()
                    }
                    _ => {
                        fail_all(&mut out, &pending);
                        return (out, Some(unavailable(OP)(e)));
                    }
                },
            };
            let before = pending.len();
            let mut retry = Vec::with_capacity(pending.len());
            for (i, r) in pending.into_iter().zip(reasons) {
                match r.code() {
                    Some("ConditionalCheckFailed") => out[i] = Written::NotQueued,
                    // Only cancelled alongside others, or a passing conflict,
                    // throttle or capacity refusal: again.
                    None
                    | Some(
                        "None"
                        | "TransactionConflict"
                        | "ThrottlingError"
                        | "ProvisionedThroughputExceeded"
                        | "RequestLimitExceeded",
                    ) => retry.push(i),
                    // A refusal that will not clear (validation, size): that
                    // entry fails, the others go on.
                    Some(code) => {
                        out[i] = Written::Failed;
                        failure.get_or_insert(StoreError::Unavailable {
                            op: OP,
                            source: format!("DynamoDB refused a take: {code}").into(),
                        });
                    }
                }
            }
            pending = retry;
            // Nothing settled this round: a pause before the next.
            if pending.len() == before {
                backoff(attempt).await;
            }
        }
        (out, failure)
    }

    /// The same, one conditional PutItem each (10 in flight).
    async fn replace_queued_one_by_one(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        deliveries: &[Delivery],
    ) -> Replaced {
        let writes: Vec<_> = deliveries
            .iter()
            .map(|d| self.put_if_queued(org, event_id, batch, d))
            .collect();
        let mut failure = None;
        let written = futures::stream::iter(writes)
            .buffered(CONDITIONAL_WRITES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|r| match r {
                Ok(true) => Written::Yes,
                Ok(false) => Written::NotQueued,
                Err(e) => {
                    failure.get_or_insert(e);
                    Written::Failed
                }
            })
            .collect();
        Replaced { written, failure }
    }

    pub(super) async fn forget_deliveries_in(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        const OP: &str = "forget intents";
        for chunk in keys.chunks(BATCH_WRITE_MAX) {
            let deletes = chunk
                .iter()
                .map(|k| {
                    let delete = DeleteRequest::builder()
                        .set_key(Some(key(org_pk(org), format!("DELIVERY#{event_id}#{k}"))))
                        .build()
                        .map_err(unavailable(OP))?;
                    Ok(WriteRequest::builder().delete_request(delete).build())
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.write_requests(OP, deletes).await?;
        }
        Ok(())
    }

    /// Writes one delivery where the ledger holds it QUEUED in `batch`.
    async fn put_if_queued(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        d: &Delivery,
    ) -> Result<bool, StoreError> {
        const OP: &str = "take queued deliveries";
        let item = delivery_item(org, event_id, d).map_err(malformed(OP))?;
        // The entry must exist, QUEUED in this message's batch: a message can
        // neither add deliveries nor take another batch's.
        self.put_item_if(
            OP,
            item,
            "#st = :queued AND #b = :batch",
            &[("#st", "status"), ("#b", "batch")],
            vec![
                (":queued", AttributeValue::S("QUEUED".into())),
                (":batch", AttributeValue::S(batch.to_owned())),
            ],
        )
        .await
    }
}
