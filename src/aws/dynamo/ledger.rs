//! The ledger: one item per delivery, `DELIVERY#{eventID}#{channel}#{contactId or -}`,
//! and one announcement per group of synchronous sends about to start,
//! `DELIVERY#{eventID}#~SENDING#{ms}#{first key}`, listing the group's keys:
//! each of them reads back `SENDING` until an entry of its own is written
//! (the outcome, NOT_STARTED, UNCONFIRMED). The engine announces only keys
//! that have no entry yet, so an entry always wins, with no clock to compare.
//! One item instead of one per send: 100 keys of UUIDs are about 4.5 KB, 5
//! write units instead of 100.

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

/// What marks an announcement's sort key inside its event's ledger
/// (`DELIVERY#{eventID}#~SENDING#...`): `~` sorts after every channel's
/// name, so a listing meets them last.
const ANNOUNCED: &str = "#~SENDING#";

/// The announcement of `intents`: its sort key follows from them (their
/// latest time and the first key), so it can be taken back.
fn announcement_sk(event_id: &str, intents: &[Delivery]) -> Option<(String, time::OffsetDateTime)> {
    let at = intents.iter().map(|d| d.time).max()?;
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    Some((
        format!("DELIVERY#{event_id}{ANNOUNCED}{ms}#{}", intents[0].key()),
        at,
    ))
}

fn announcement_item(
    org: &OrgId,
    event_id: &str,
    intents: &[Delivery],
) -> Result<Option<Item>, StoreError> {
    const OP: &str = "announce sends";
    let Some((sk, at)) = announcement_sk(event_id, intents) else {
        return Ok(None);
    };
    let mut item = key(org_pk(org), sk);
    item.insert("eventID".into(), AttributeValue::S(event_id.to_owned()));
    item.insert("organizationID".into(), AttributeValue::S(org.to_string()));
    item.insert("time".into(), AttributeValue::S(rfc3339(at, OP)?));
    item.insert(
        "keys".into(),
        AttributeValue::L(intents.iter().map(|d| AttributeValue::S(d.key())).collect()),
    );
    Ok(Some(item))
}

/// An announcement read back (`None`: another item): when, and the keys it
/// announced; `op` names the read for the error.
fn announced(
    item: &Item,
    op: &'static str,
) -> Option<Result<(time::OffsetDateTime, Vec<String>), StoreError>> {
    match item.get("sk") {
        Some(AttributeValue::S(sk)) if sk.contains(ANNOUNCED) => {}
        _ => return None,
    }
    let at = match item.get("time") {
        Some(AttributeValue::S(t)) => {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("an announcement's time: {e}"))
        }
        _ => Err("an announcement without its time".to_owned()),
    };
    let keys = match item.get("keys") {
        Some(AttributeValue::L(keys)) => keys
            .iter()
            .map(|k| match k {
                AttributeValue::S(k) => Ok(k.clone()),
                _ => Err("an announcement's key is not a string".to_owned()),
            })
            .collect(),
        _ => Err("an announcement without its keys".to_owned()),
    };
    Some(
        at.and_then(|at| Ok((at, keys?)))
            .map_err(|detail| StoreError::Malformed { op, detail }),
    )
}

/// The SENDING entry an announcement at `time` holds for `key`.
fn sending(key: &str, time: time::OffsetDateTime) -> Option<Delivery> {
    let (channel, contact) = key.split_once('#')?;
    let mut d = Delivery::new(
        channel.into(),
        (contact != "-").then(|| contact.to_owned()),
        crate::model::DeliveryStatus::Sending,
    );
    d.time = time;
    Some(d)
}

/// The ledger with the announcements applied: each announced key reads
/// `SENDING` (at the announcement's time) unless it has an entry of its own
/// (its outcome, or what a later run recorded): only keys without one are
/// announced, so any entry came after.
fn with_announced(
    mut ledger: Vec<Delivery>,
    announcements: Vec<(time::OffsetDateTime, Vec<String>)>,
) -> Vec<Delivery> {
    let mut seen: std::collections::HashSet<String> = ledger.iter().map(Delivery::key).collect();
    for (time, keys) in announcements {
        for k in keys {
            if let Some(intent) = sending(&k, time)
                && seen.insert(k)
            {
                ledger.push(intent);
            }
        }
    }
    ledger
}

impl DynamoStore {
    /// One BatchWriteItem: the group's announcement and the riders (24 at
    /// most ride in the same call).
    pub(super) async fn announce_in(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
        riders: &[Delivery],
    ) -> Result<(), StoreError> {
        const OP: &str = "announce sends";
        let mut items: Vec<Item> = announcement_item(org, event_id, intents)?
            .into_iter()
            .collect();
        for d in riders {
            items.push(delivery_item(org, event_id, d).map_err(malformed(OP))?);
        }
        self.write_all(OP, items).await
    }

    /// The entry an announcement holds for `key` (`SENDING`), when some
    /// announcement of the event lists it: for a read of one entry that
    /// found none of its own (a synchronous send in flight, or one a crash
    /// interrupted before a later run recorded it).
    pub(super) async fn announced_in(
        &self,
        org: &OrgId,
        event_id: &str,
        key_of: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        const OP: &str = "read announcements";
        let prefix = format!("DELIVERY#{event_id}{ANNOUNCED}");
        for item in self.query_prefix(OP, org, &prefix).await? {
            if let Some(a) = announced(&item, OP) {
                let (at, keys) = a?;
                if keys.iter().any(|k| k == key_of) {
                    return Ok(sending(key_of, at));
                }
            }
        }
        Ok(None)
    }

    /// Every item of the organisation whose sort key starts with `prefix`,
    /// page after page (a consistent read).
    async fn query_prefix(
        &self,
        op: &'static str,
        org: &OrgId,
        prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", AttributeValue::S(org_pk(org)))
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable(op))?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    pub(super) async fn withdraw_in(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
    ) -> Result<(), StoreError> {
        const OP: &str = "withdraw an announcement";
        let Some((sk, _)) = announcement_sk(event_id, intents) else {
            return Ok(());
        };
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), sk)))
            .send()
            .await
            .map_err(unavailable(OP))?;
        Ok(())
    }

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
        let mut announcements = Vec::new();
        for item in self
            .query_prefix(OP, org, &format!("DELIVERY#{event_id}#"))
            .await?
        {
            match announced(&item, OP) {
                Some(a) => announcements.push(a?),
                None => ledger.push(serde_dynamo::from_item(item).map_err(malformed(OP))?),
            }
        }
        Ok(Some((event, with_announced(ledger, announcements))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeliveryStatus, NotificationChannel};
    use time::Duration;

    fn entry(key: &str, status: DeliveryStatus, at: time::OffsetDateTime) -> Delivery {
        let (channel, contact) = key.split_once('#').unwrap();
        let mut d = Delivery::new(channel.into(), Some(contact.to_owned()), status);
        d.time = at;
        d
    }

    fn statuses(ledger: &[Delivery]) -> Vec<(String, DeliveryStatus)> {
        let mut s: Vec<_> = ledger.iter().map(|d| (d.key(), d.status)).collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s
    }

    #[test]
    fn an_announced_key_is_sending_until_an_entry_of_its_own() {
        let t = time::OffsetDateTime::now_utc();
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let ledger = vec![
            // Its outcome, written after the announcement: the outcome.
            entry(
                "EMAIL#a",
                DeliveryStatus::Sent,
                t + Duration::milliseconds(30),
            ),
            // An entry wins whatever its clock said (UNCONFIRMED written by
            // a later run on a host whose clock is behind).
            entry(
                "EMAIL#b",
                DeliveryStatus::Unconfirmed,
                t - Duration::seconds(60),
            ),
            // Not announced: as it is.
            entry("SMS#d", DeliveryStatus::Failed, t),
        ];
        let out = with_announced(
            ledger,
            vec![
                (t, keys(&["EMAIL#a", "EMAIL#b", "EMAIL#c", "SNS#-"])),
                // Listed twice (a withdrawal that failed, then announced
                // again): SENDING once, at the first's time.
                (t - Duration::seconds(60), keys(&["EMAIL#c"])),
            ],
        );
        assert_eq!(
            statuses(&out),
            vec![
                ("EMAIL#a".to_owned(), DeliveryStatus::Sent),
                ("EMAIL#b".to_owned(), DeliveryStatus::Unconfirmed),
                ("EMAIL#c".to_owned(), DeliveryStatus::Sending),
                ("SMS#d".to_owned(), DeliveryStatus::Failed),
                ("SNS#-".to_owned(), DeliveryStatus::Sending),
            ]
        );
        let topic = out.iter().find(|d| d.key() == "SNS#-").unwrap();
        assert_eq!(topic.channel, NotificationChannel::Sns);
        assert_eq!(topic.contact_id, None);
        assert_eq!(out.iter().find(|d| d.key() == "EMAIL#c").unwrap().time, t);
    }

    #[test]
    fn an_announcement_reads_back_what_was_written() {
        let org = OrgId::parse("org-a").unwrap();
        let intents = vec![
            Delivery::new(
                NotificationChannel::Email,
                Some("c-1".into()),
                DeliveryStatus::Sending,
            ),
            Delivery::new(NotificationChannel::Sns, None, DeliveryStatus::Sending),
        ];
        let item = announcement_item(&org, "ev-1", &intents).unwrap().unwrap();
        let (sk, _) = announcement_sk("ev-1", &intents).unwrap();
        assert!(sk.starts_with("DELIVERY#ev-1#~SENDING#"), "{sk}");
        assert!(sk.ends_with("#EMAIL#c-1"), "{sk}");
        let (at, keys) = announced(&item, "test").expect("an announcement").unwrap();
        assert_eq!(keys, ["EMAIL#c-1", "SNS#-"]);
        // Stored at a second's precision or better: the newest intent's time.
        let newest = intents.iter().map(|d| d.time).max().unwrap();
        assert!((newest - at).abs() < Duration::milliseconds(1));
        // An ordinary entry is not one.
        let entry = delivery_item(&org, "ev-1", &intents[0]).unwrap();
        assert!(announced(&entry, "test").is_none());
        // Nothing announced, nothing written.
        assert!(announcement_item(&org, "ev-1", &[]).unwrap().is_none());
    }
}
