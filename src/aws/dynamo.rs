//! The one table of CONTRACT.md, through the DynamoDB SDK. Every key starts
//! with the path's organisation, so no call can reach another tenant's items.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, PutRequest, WriteRequest,
};

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::model::{
    Contact, ContactId, Delivery, IdempotencyKey, NotificationEvent, NotificationSettings, Offer,
    OfferId, OrgId,
};
use crate::ports::{
    BatchProgress, Claim, ContactStore, Contacts, EventStore, IdempotencyRecord, IdempotencyStore,
    KeyHold, KeyOutcome, OfferStore, Replaced, StaleEvents, StoreError, Written,
};
use crate::tracking::{Open, OpenTracker, Recorded, apply_open};
use futures::StreamExt;

/// BatchGetItem takes at most 100 keys, BatchWriteItem 25 items.
const BATCH_GET_MAX: usize = 100;
const BATCH_WRITE_MAX: usize = 25;
/// Attempts at a batch's unprocessed entries before giving up.
const BATCH_ATTEMPTS: u32 = 8;

type Item = HashMap<String, AttributeValue>;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

pub fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}
pub fn offer_sk(offer: &OfferId) -> String {
    format!("OFFER#{offer}")
}
pub fn contact_sk(contact: &str) -> String {
    format!("CONTACT#{contact}")
}
pub const SETTINGS_SK: &str = "NOTIFICATION_CONFIG";
pub fn event_sk(event_id: &str) -> String {
    format!("EVENT#{event_id}")
}
/// Delivery items sort after their event's ID, so one Query with
/// `begins_with(sk, "DELIVERY#{eventID}#")` lists an event's ledger.
pub fn delivery_sk(event_id: &str, d: &Delivery) -> String {
    format!("DELIVERY#{event_id}#{}", d.key())
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk)),
        ("sk".to_owned(), AttributeValue::S(sk)),
    ])
}

fn unavailable<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| {
        tracing::error!(op, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "DynamoDB call failed");
        StoreError::Unavailable {
            op,
            source: Box::new(e),
        }
    }
}

fn malformed(op: &'static str) -> impl FnOnce(serde_dynamo::Error) -> StoreError {
    move |e| StoreError::Malformed {
        op,
        detail: shape_error(&e),
    }
}

/// What serde found wrong with an item, without the item's values: serde's
/// own text quotes them (`invalid type: string "ann@example.com", ...`), and
/// error texts are logged. Keeps only the part that names our expectation.
pub fn shape_error(e: &serde_dynamo::Error) -> String {
    let text = e.to_string();
    if let Some(i) = text.find(", expected ") {
        let (what, _) = text.split_at(text.find(':').unwrap_or(0).min(i));
        return format!("{}{}", what.trim(), &text[i..]);
    }
    if text.starts_with("missing field") {
        return text;
    }
    "the item does not have the expected shape".into()
}

/// Exponential backoff with jitter for unprocessed batch entries: 25 ms, 50 ms,
/// ... capped at 1 s, each reduced by up to half at random.
async fn backoff(attempt: u32) {
    let base = 25u64.saturating_mul(1 << attempt.min(6)).min(1000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = u64::from(nanos) % (base / 2 + 1);
    tokio::time::sleep(Duration::from_millis(base - jitter)).await;
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn get(
        &self,
        op: &'static str,
        pk: String,
        sk: String,
    ) -> Result<Option<Item>, StoreError> {
        self.get_with(op, pk, sk, false).await
    }

    /// A GetItem; `consistent` for a strongly consistent read.
    async fn get_with(
        &self,
        op: &'static str,
        pk: String,
        sk: String,
        consistent: bool,
    ) -> Result<Option<Item>, StoreError> {
        self.get_projected(op, pk, sk, consistent, &[]).await
    }

    /// A GetItem of the chosen attributes only (none chosen: the whole item).
    async fn get_projected(
        &self,
        op: &'static str,
        pk: String,
        sk: String,
        consistent: bool,
        attributes: &[&str],
    ) -> Result<Option<Item>, StoreError> {
        let mut get = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(consistent);
        if !attributes.is_empty() {
            let mut names = Vec::with_capacity(attributes.len());
            for (i, a) in attributes.iter().enumerate() {
                names.push(format!("#a{i}"));
                get = get.expression_attribute_names(format!("#a{i}"), *a);
            }
            get = get.projection_expression(names.join(", "));
        }
        let out = get.send().await.map_err(unavailable(op))?;
        Ok(out.item)
    }

    /// A conditional put of an event, with the condition's values; `Conflict`
    /// when the condition does not hold.
    async fn put_with(
        &self,
        op: &'static str,
        pk: String,
        sk: String,
        event: &NotificationEvent,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(event).map_err(malformed(op))?;
        item.extend(key(pk, sk));
        item.extend(pending_index(event));
        match self.put_item_if(op, item, condition, &[], values).await? {
            true => Ok(()),
            false => Err(StoreError::Conflict { op }),
        }
    }

    /// A conditional PutItem: `Ok(false)` when the condition did not hold.
    async fn put_item_if(
        &self,
        op: &'static str,
        item: Item,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let names: HashMap<String, String> = names
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let values: HashMap<String, AttributeValue> =
            values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(op)(e)),
        }
    }

    /// Writes items in batches of 25, retrying unprocessed ones with backoff.
    async fn write_all(&self, op: &'static str, items: Vec<Item>) -> Result<(), StoreError> {
        for chunk in items.chunks(BATCH_WRITE_MAX) {
            let puts: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map_err(unavailable(op))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, StoreError>>()?;
            self.write_requests(op, puts).await?;
        }
        Ok(())
    }

    /// One BatchWriteItem of at most 25 requests, retrying unprocessed ones with backoff.
    async fn write_requests(
        &self,
        op: &'static str,
        mut pending: Vec<WriteRequest>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        while !pending.is_empty() {
            if attempt == BATCH_ATTEMPTS {
                return Err(StoreError::Incomplete {
                    op,
                    left: pending.len(),
                    attempts: attempt,
                });
            }
            if attempt > 0 {
                backoff(attempt).await;
            }
            attempt += 1;
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut pending))
                .send()
                .await
                .map_err(unavailable(op))?;
            pending = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
        }
        Ok(())
    }
}

impl OfferStore for DynamoStore {
    async fn offer(&self, org: &OrgId, offer: &OfferId) -> Result<Option<Offer>, StoreError> {
        let item = self.get("read offer", org_pk(org), offer_sk(offer)).await?;
        item.map(|i| serde_dynamo::from_item(i).map_err(malformed("read offer")))
            .transpose()
    }

    async fn offer_details(
        &self,
        org: &OrgId,
        offer: &OfferId,
    ) -> Result<Option<Offer>, StoreError> {
        const OP: &str = "read offer details";
        let item = self
            .get_projected(
                OP,
                org_pk(org),
                offer_sk(offer),
                false,
                &[
                    "id",
                    "organizationID",
                    "name",
                    "status",
                    "partner",
                    "info",
                    "expireTime",
                ],
            )
            .await?;
        item.map(|i| serde_dynamo::from_item(i).map_err(malformed(OP)))
            .transpose()
    }

    async fn settings(&self, org: &OrgId) -> Result<NotificationSettings, StoreError> {
        let item = self
            .get(
                "read notification settings",
                org_pk(org),
                SETTINGS_SK.to_owned(),
            )
            .await?;
        Ok(item
            .map(|i| serde_dynamo::from_item(i).map_err(malformed("read notification settings")))
            .transpose()?
            .unwrap_or_default())
    }
}

impl ContactStore for DynamoStore {
    async fn contacts(&self, org: &OrgId, ids: &[ContactId]) -> Result<Contacts, StoreError> {
        const OP: &str = "read contacts";
        let keys = ids
            .iter()
            .map(|id| key(org_pk(org), contact_sk(id.as_str())))
            .collect();
        let mut out = Contacts::default();
        for item in self.batch_get(OP, keys, false).await? {
            // The ID from the key, not from the item: the key is ours.
            let id = match item.get("sk") {
                Some(AttributeValue::S(sk)) => sk.strip_prefix("CONTACT#").map(str::to_owned),
                _ => None,
            };
            match serde_dynamo::from_item::<_, Contact>(item) {
                Ok(contact) => out.found.push(contact),
                Err(e) => {
                    // Another writer's data: that recipient fails, the others go
                    // out. Only the contact ID and the expected shape are logged.
                    tracing::warn!(
                        op = OP,
                        contact_id = id.as_deref().unwrap_or("-"),
                        problem = %shape_error(&e),
                        "contact record unreadable"
                    );
                    out.unreadable.extend(id);
                }
            }
        }
        Ok(out)
    }
}

impl DynamoStore {
    /// Reads items by key, 100 a call, retrying unprocessed keys with backoff.
    async fn batch_get(
        &self,
        op: &'static str,
        keys: Vec<Item>,
        consistent: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_MAX) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(consistent)
                    .build()
                    .map_err(unavailable(op))?,
            );
            let mut attempt = 0;
            while let Some(request) = pending.take() {
                if attempt == BATCH_ATTEMPTS {
                    let left = request.keys().len();
                    return Err(StoreError::Incomplete {
                        op,
                        left,
                        attempts: attempt,
                    });
                }
                if attempt > 0 {
                    backoff(attempt).await;
                }
                attempt += 1;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(unavailable(op))?;
                found.extend(
                    out.responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
            }
        }
        Ok(found)
    }
}

pub fn idempotency_sk(key: &IdempotencyKey) -> String {
    format!("IDEMPOTENCY#{key}")
}

fn conditional_failed<E: ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

impl IdempotencyStore for DynamoStore {
    async fn claim(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        record: &IdempotencyRecord,
        now_s: i64,
    ) -> Result<Claim, StoreError> {
        const OP: &str = "claim idempotency key";
        let mut item: Item = serde_dynamo::to_item(record).map_err(malformed(OP))?;
        item.extend(self::key(org_pk(org), idempotency_sk(key)));
        let claimed = self
            .put_item_if(
                OP,
                item,
                // Free, or past its window (DynamoDB's TTL deletes late; the code does not rely on it).
                "attribute_not_exists(pk) OR expiresAt < :now",
                &[],
                vec![(":now", AttributeValue::N(now_s.to_string()))],
            )
            .await?;
        if claimed {
            return Ok(Claim::Claimed);
        }
        let held = self
            .get_with(OP, org_pk(org), idempotency_sk(key), true)
            .await?
            .ok_or(StoreError::Conflict { op: OP })?;
        Ok(Claim::Existing(
            serde_dynamo::from_item(held).map_err(malformed(OP))?,
        ))
    }

    async fn take_over(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        previous_lock: i64,
        locked_until: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))))
            .update_expression("SET lockedUntil = :new")
            .condition_expression("#s = :running AND lockedUntil = :prev")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":new", AttributeValue::N(locked_until.to_string()))
            .expression_attribute_values(":prev", AttributeValue::N(previous_lock.to_string()))
            .expression_attribute_values(":running", AttributeValue::S("IN_PROGRESS".into()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("take over idempotency key")(e)),
        }
    }

    async fn hold_for_sweep(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        event_id: &str,
        now_ms: i64,
        locked_until: i64,
    ) -> Result<KeyHold, StoreError> {
        const OP: &str = "hold idempotency key for the sweeper";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))))
            .update_expression("SET lockedUntil = :new")
            .condition_expression("#s = :running AND lockedUntil < :now AND eventID = :e")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":new", AttributeValue::N(locked_until.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":running", AttributeValue::S("IN_PROGRESS".into()))
            .expression_attribute_values(":e", AttributeValue::S(event_id.to_owned()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(KeyHold::Held),
            Err(e) if conditional_failed(&e) => {
                let held = self
                    .get_with(OP, org_pk(org), idempotency_sk(key), true)
                    .await?;
                let attr = |k: &str| held.as_ref().and_then(|i| i.get(k));
                // Busy only while a request holds *this event's* key.
                let busy = attr("status") == Some(&AttributeValue::S("IN_PROGRESS".into()))
                    && attr("eventID") == Some(&AttributeValue::S(event_id.to_owned()));
                Ok(if busy { KeyHold::Busy } else { KeyHold::Free })
            }
            Err(e) => Err(unavailable(OP)(e)),
        }
    }

    async fn finish(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        outcome: KeyOutcome,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))));
        let update = match outcome {
            KeyOutcome::Completed => update
                .update_expression("SET #s = :done")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":done", AttributeValue::S("COMPLETED".into())),
            KeyOutcome::Released => update
                .update_expression("SET lockedUntil = :zero")
                .expression_attribute_values(":zero", AttributeValue::N("0".into())),
        };
        update
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(unavailable("finish idempotency key"))?;
        Ok(())
    }
}

impl EventStore for DynamoStore {
    async fn create_event(&self, event: &NotificationEvent) -> Result<(), StoreError> {
        let (org, id) = event_key(event)?;
        self.put_with(
            "store new event",
            org,
            event_sk(&id),
            event,
            "attribute_not_exists(pk)",
            vec![],
        )
        .await
    }

    async fn save_deliveries(
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

    async fn event_with_deliveries(
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

    async fn finish_event(&self, event: &NotificationEvent) -> Result<(), StoreError> {
        self.store_final(event, false).await
    }

    async fn event(
        &self,
        org: &OrgId,
        event_id: &str,
        lists: bool,
    ) -> Result<Option<NotificationEvent>, StoreError> {
        const OP: &str = "read event";
        if lists {
            return Ok(self
                .current_event(&org_pk(org), event_id)
                .await?
                .map(|(event, _)| event));
        }
        let item = self
            .get_projected(
                OP,
                org_pk(org),
                event_sk(event_id),
                true,
                EVENT_WITHOUT_LISTS,
            )
            .await?;
        item.map(|i| serde_dynamo::from_item(i).map_err(malformed(OP)))
            .transpose()
    }

    async fn deliveries(
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

    async fn replace_queued(
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

    async fn forget_deliveries(
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

    async fn open_batches(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_ids: &[String],
    ) -> Result<(), StoreError> {
        if batch_ids.is_empty() {
            return Ok(());
        }
        // ADD: a retried or rebuilt hand-off adds what is missing; a batch
        // already there stays once.
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), work_sk(event_id))))
            .update_expression("ADD pendingBatches :ids SET eventID = :e, organizationID = :o")
            .expression_attribute_values(":ids", AttributeValue::Ss(batch_ids.to_vec()))
            .expression_attribute_values(":e", AttributeValue::S(event_id.to_owned()))
            .expression_attribute_values(":o", AttributeValue::S(org.to_string()))
            .send()
            .await
            .map_err(unavailable("record work batches"))?;
        Ok(())
    }

    async fn stale_events(
        &self,
        now: time::OffsetDateTime,
        limit: usize,
    ) -> Result<StaleEvents, StoreError> {
        const OP: &str = "find stale events";
        let now_ms = epoch_ms(now);
        let mut out = StaleEvents::default();
        let mut start: Option<Item> = None;
        for _ in 0..SWEEP_PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PENDING_INDEX)
                .key_condition_expression("pendingIndex = :p")
                .expression_attribute_values(":p", AttributeValue::S(PENDING.into()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable(OP))?;
            for item in page.items.unwrap_or_default() {
                let number = |k: &str| match item.get(k) {
                    Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
                    _ => None,
                };
                let text = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(s)) => Some(s.as_str()),
                    _ => None,
                };
                if let Some(since) = number("pendingSince") {
                    out.oldest_pending_ms =
                        Some(out.oldest_pending_ms.map_or(since, |o| o.min(since)));
                }
                let org = text("pk")
                    .and_then(|pk| pk.strip_prefix("ORG#"))
                    .and_then(|o| OrgId::parse(o).ok());
                let id = text("sk").and_then(|sk| sk.strip_prefix("EVENT#"));
                if let (Some(org), Some(id), Some(at)) = (org, id, number("resumeAt"))
                    && at <= now_ms
                    && out.stale.len() < limit
                {
                    out.stale.push((org, id.to_owned()));
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn move_lease(
        &self,
        org: &OrgId,
        event_id: &str,
        from: Option<&str>,
        to: time::OffsetDateTime,
        sweeps: u32,
    ) -> Result<bool, StoreError> {
        let rfc3339 = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| StoreError::Malformed {
                    op: "move event lease",
                    detail: e.to_string(),
                })
        };
        let to_text = rfc3339(to)?;
        let now_text = rfc3339(crate::model::event::now_millis())?;
        let update = || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(org_pk(org), event_sk(event_id))))
                .expression_attribute_values(":ms", AttributeValue::N(epoch_ms(to).to_string()))
                .expression_attribute_values(":pending", AttributeValue::S(PENDING.into()))
                // Writers that rewrite the whole item (opens, a merged final
                // write) are conditional on lastUpdateTime: they see the move.
                .expression_attribute_values(":now", AttributeValue::S(now_text.clone()))
        };
        let attempt = match from {
            Some(from) => {
                update()
                    .update_expression(
                        "SET info.resumeAfter = :to, info.sweeps = :n, resumeAt = :ms, lastUpdateTime = :now",
                    )
                    .condition_expression("eventStatus = :pending AND info.resumeAfter = :from")
                    .expression_attribute_values(":to", AttributeValue::S(to_text.clone()))
                    .expression_attribute_values(":n", AttributeValue::N(sweeps.to_string()))
                    .expression_attribute_values(":from", AttributeValue::S(from.to_owned()))
                    .send()
                    .await
            }
            // An event stored before leases existed: give it its first one.
            None => {
                let first = update()
                    .update_expression("SET info = :info, resumeAt = :ms, lastUpdateTime = :now")
                    .condition_expression("eventStatus = :pending AND attribute_not_exists(info)")
                    .expression_attribute_values(
                        ":info",
                        AttributeValue::M(HashMap::from([
                            ("resumeAfter".to_owned(), AttributeValue::S(to_text.clone())),
                            ("sweeps".to_owned(), AttributeValue::N(sweeps.to_string())),
                        ])),
                    )
                    .send()
                    .await;
                match first {
                    Err(e) if conditional_failed(&e) => {
                        update()
                            .update_expression(
                                "SET info.resumeAfter = :to, info.sweeps = :n, resumeAt = :ms, lastUpdateTime = :now",
                            )
                            .condition_expression(
                                "eventStatus = :pending AND attribute_exists(info) AND attribute_not_exists(info.resumeAfter)",
                            )
                            .expression_attribute_values(":to", AttributeValue::S(to_text.clone()))
                            .expression_attribute_values(":n", AttributeValue::N(sweeps.to_string()))
                            .send()
                            .await
                    }
                    other => other,
                }
            }
        };
        match attempt {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("move event lease")(e)),
        }
    }

    async fn complete_batch(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> Result<BatchProgress, StoreError> {
        const OP: &str = "complete work batch";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), work_sk(event_id))))
            .update_expression("DELETE pendingBatches :done")
            .condition_expression("contains(pendingBatches, :id)")
            .expression_attribute_values(":done", AttributeValue::Ss(vec![batch_id.to_owned()]))
            .expression_attribute_values(":id", AttributeValue::S(batch_id.to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        let (removed, item) = match result {
            Ok(out) => (true, out.attributes),
            Err(e) if conditional_failed(&e) => {
                // Completed before (a redelivered message): read where things stand.
                (
                    false,
                    self.get_with(OP, org_pk(org), work_sk(event_id), true)
                        .await?,
                )
            }
            Err(e) => return Err(unavailable(OP)(e)),
        };
        let remaining = match item.as_ref().and_then(|i| i.get("pendingBatches")) {
            Some(AttributeValue::Ss(left)) => left.len(),
            _ => 0,
        };
        Ok(BatchProgress { removed, remaining })
    }

    async fn close_event(&self, event: &NotificationEvent) -> Result<bool, StoreError> {
        match self.store_final(event, true).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { op: CLOSE_OP }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

const CLOSE_OP: &str = "close event";

/// Every attribute of an event but the lists that grow with its recipients.
const EVENT_WITHOUT_LISTS: &[&str] = &[
    "action",
    "ccContactIds",
    "channels",
    "createdBy",
    "customFields",
    "entityID",
    "entityName",
    "entityStatus",
    "entityType",
    "eventID",
    "eventStatus",
    "info",
    "isActionItem",
    "lastUpdateTime",
    "message",
    "organizationID",
    "partner",
    "priority",
    "requireAudit",
    "timestamp",
    "title",
    "trackEvents",
];
/// Conditional writes a worker has in flight at once when taking deliveries.
const CONDITIONAL_WRITES_IN_FLIGHT: usize = 10;

/// The item that lists a handed-off event's open work batches.
pub fn work_sk(event_id: &str) -> String {
    format!("WORK#{event_id}")
}

fn delivery_item(org: &OrgId, event_id: &str, d: &Delivery) -> Result<Item, serde_dynamo::Error> {
    let mut item: Item = serde_dynamo::to_item(d)?;
    item.insert("eventID".into(), AttributeValue::S(event_id.to_owned()));
    item.insert("organizationID".into(), AttributeValue::S(org.to_string()));
    item.extend(key(org_pk(org), delivery_sk(event_id, d)));
    Ok(item)
}

impl DynamoStore {
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

    /// Stores an event's final state, keeping opens recorded meanwhile. With
    /// `only_pending`, only a PENDING event is replaced (`Conflict` otherwise).
    async fn store_final(
        &self,
        event: &NotificationEvent,
        only_pending: bool,
    ) -> Result<(), StoreError> {
        let op = if only_pending {
            CLOSE_OP
        } else {
            "store final event"
        };
        let (pk, id) = event_key(event)?;
        let pending = AttributeValue::S("PENDING".into());
        let and_pending = if only_pending {
            " AND eventStatus = :pending"
        } else {
            ""
        };
        // Usually nobody has opened an email yet: one write, no read.
        let first = self
            .put_with(
                op,
                pk.clone(),
                event_sk(&id),
                event,
                &format!("attribute_exists(pk) AND attribute_not_exists(trackEvents) AND attribute_not_exists(info.opens){and_pending}"),
                only_pending.then(|| (":pending", pending.clone())).into_iter().collect(),
            )
            .await;
        if !matches!(first, Err(StoreError::Conflict { .. })) {
            return first;
        }
        // Opens were recorded while we ran: keep them.
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let Some((current, last)) = self.current_event(&pk, &id).await? else {
                return Err(StoreError::Conflict { op });
            };
            if only_pending && current.event_status != Some(crate::model::EventStatus::Pending) {
                return Err(StoreError::Conflict { op });
            }
            let mut merged = event.clone();
            merged.track_events = current.track_events;
            let kept = current.info.unwrap_or_default();
            let info = merged.info.get_or_insert_with(Default::default);
            for k in ["opens", "openMessageIds"] {
                if let Some(v) = kept.get(k) {
                    info.insert(k.to_owned(), v.clone());
                }
            }
            match self
                .put_with(
                    op,
                    pk.clone(),
                    event_sk(&id),
                    &merged,
                    "lastUpdateTime = :last",
                    vec![(":last", last)],
                )
                .await
            {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        // Not "closed by another": an error, so the caller (a worker) tries again.
        Err(StoreError::Conflict {
            op: "store final event: too many concurrent writers",
        })
    }
}

/// The sweeper's index over PENDING events of every organisation: an event
/// is in it while it is PENDING with an `info.resumeAfter`; a final write
/// (a whole new item without these attributes) takes it out.
pub const PENDING_INDEX: &str = "PendingEvents";
const PENDING: &str = "PENDING";
/// Pages of the index one sweep reads at most (each up to 1 MB of keys).
const SWEEP_PAGES: usize = 10;

/// `pendingIndex`, `pendingSince` (creation, epoch ms) and `resumeAt` (epoch
/// ms) for a PENDING event with a lease; nothing for any other.
fn pending_index(event: &NotificationEvent) -> Vec<(String, AttributeValue)> {
    if event.event_status != Some(crate::model::EventStatus::Pending) {
        return Vec::new();
    }
    let Some(resume) = crate::notify::resume_after(event) else {
        return Vec::new();
    };
    let since = event.timestamp.unwrap_or(resume);
    vec![
        ("pendingIndex".into(), AttributeValue::S(PENDING.into())),
        (
            "pendingSince".into(),
            AttributeValue::N(epoch_ms(since).to_string()),
        ),
        (
            "resumeAt".into(),
            AttributeValue::N(epoch_ms(resume).to_string()),
        ),
    ]
}

fn epoch_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Attempts of a read-modify-write before giving up to a concurrent writer.
const OPTIMISTIC_ATTEMPTS: usize = 5;

impl DynamoStore {
    /// The stored event and its `lastUpdateTime` as stored (for a conditional write).
    async fn current_event(
        &self,
        pk: &str,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, AttributeValue)>, StoreError> {
        const OP: &str = "read event";
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.to_owned(), event_sk(event_id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable(OP))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let last = item
            .get("lastUpdateTime")
            .cloned()
            .unwrap_or(AttributeValue::Null(true));
        Ok(Some((
            serde_dynamo::from_item(item).map_err(malformed(OP))?,
            last,
        )))
    }
}

impl OpenTracker for DynamoStore {
    async fn record_open(&self, open: &Open) -> Result<Recorded, StoreError> {
        let pk = org_pk(&open.org);
        for attempt in 0..OPTIMISTIC_ATTEMPTS as u32 {
            if attempt > 0 {
                // Another writer won the last round: back off, with jitter.
                backoff(attempt).await;
            }
            let Some((mut event, last)) = self.current_event(&pk, &open.event_id).await? else {
                return Ok(Recorded::UnknownEvent);
            };
            let Some(recorded) = apply_open(&mut event, open) else {
                return Ok(Recorded::Duplicate);
            };
            match self
                .put_with(
                    "record open",
                    pk.clone(),
                    event_sk(&open.event_id),
                    &event,
                    "lastUpdateTime = :last",
                    vec![(":last", last)],
                )
                .await
            {
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(recorded),
            }
        }
        Err(StoreError::Conflict { op: "record open" })
    }
}

fn event_key(event: &NotificationEvent) -> Result<(String, String), StoreError> {
    match (&event.organization_id, &event.event_id) {
        (Some(org), Some(id)) => Ok((format!("ORG#{org}"), id.clone())),
        _ => Err(StoreError::Malformed {
            op: "store event",
            detail: "event has no organizationID or eventID".into(),
        }),
    }
}
