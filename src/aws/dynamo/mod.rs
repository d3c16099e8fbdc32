//! The one table of docs/contract.md, through the DynamoDB SDK, by item kind:
//! `reads.rs` (offers, contacts, settings), `keys.rs` (idempotency keys),
//! `events.rs` (events, their lease and the sweeper's index, opens),
//! `ledger.rs` (deliveries), `work.rs` (work batches). Every key starts with
//! the path's organisation, so no call can reach another tenant's items.

mod events;
mod feedback;
mod history;
mod keys;
mod ledger;
mod reads;
mod work;

pub use events::PENDING_INDEX;
pub use feedback::PROVIDER_INDEX;
pub use history::ENTITY_INDEX;
pub use ledger::delivery_sk;
pub use work::work_sk;

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
    KeyHold, KeyOutcome, OfferStore, Replaced, StaleEvents, StoreError, WorkReads, WorkStore,
    Written,
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
/// A time as the items store it (RFC 3339); `op` names the write for the error.
pub(super) fn rfc3339(t: time::OffsetDateTime, op: &'static str) -> Result<String, StoreError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Malformed {
            op,
            detail: e.to_string(),
        })
}

pub fn event_sk(event_id: &str) -> String {
    format!("EVENT#{event_id}")
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
            let (expression, names) = projection(attributes.iter().copied());
            get = get
                .projection_expression(expression)
                .set_expression_attribute_names(Some(names));
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
        item.extend(events::pending_index(event));
        item.extend(history::entity_index(event));
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

impl DynamoStore {
    /// Reads items by key, 100 a call, retrying unprocessed keys with backoff.
    async fn batch_get(
        &self,
        op: &'static str,
        keys: Vec<Item>,
        consistent: bool,
    ) -> Result<Vec<Item>, StoreError> {
        self.batch_get_projected(op, keys, consistent, &[]).await
    }

    /// The same, of the chosen attributes only (none chosen: whole items).
    async fn batch_get_projected(
        &self,
        op: &'static str,
        keys: Vec<Item>,
        consistent: bool,
        attributes: &[&str],
    ) -> Result<Vec<Item>, StoreError> {
        let projected = (!attributes.is_empty()).then(|| projection(attributes.iter().copied()));
        // Each request, the first and every retry of its unprocessed keys,
        // asks for the same projection and consistency: a server may hand
        // back only the keys (moto does), and a retry must not then read
        // whole items, or eventually consistent ones.
        let ask = |keys: Vec<Item>| {
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent);
            if let Some((expression, names)) = &projected {
                request = request
                    .projection_expression(expression)
                    .set_expression_attribute_names(Some(names.clone()));
            }
            request.build().map_err(unavailable(op))
        };
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_MAX) {
            let mut pending = Some(ask(chunk.to_vec())?);
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
                pending = match out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)) {
                    Some(left) if !left.keys().is_empty() => Some(ask(left.keys)?),
                    _ => None,
                };
            }
        }
        Ok(found)
    }
}

/// A projection of `attributes`: the expression (`#a0, #a1, ...`) and the
/// names it stands for (any attribute name is safe this way, reserved words
/// included).
fn projection<'a>(
    attributes: impl IntoIterator<Item = &'a str>,
) -> (String, HashMap<String, String>) {
    let names: HashMap<String, String> = attributes
        .into_iter()
        .enumerate()
        .map(|(i, a)| (format!("#a{i}"), a.to_owned()))
        .collect();
    let expression = (0..names.len())
        .map(|i| format!("#a{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    (expression, names)
}

pub fn idempotency_sk(key: &IdempotencyKey) -> String {
    format!("IDEMPOTENCY#{key}")
}

fn conditional_failed<E: ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

use crate::model::event::epoch_ms;
