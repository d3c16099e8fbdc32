//! Events: the stored NotificationEvent, its final write (keeping opens
//! recorded meanwhile), its lease and the sweeper's index, and opens.

use super::*;

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
        const OP: &str = "move event lease";
        let to_text = rfc3339(to, OP)?;
        let now_text = rfc3339(crate::model::event::now_millis(), OP)?;
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

    async fn close_event(&self, event: &NotificationEvent) -> Result<bool, StoreError> {
        match self.store_final(event, true).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { op: CLOSE_OP }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn save_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        self.save_deliveries_in(org, event_id, deliveries).await
    }

    async fn event_with_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError> {
        self.event_with_deliveries_in(org, event_id).await
    }

    async fn deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries_in(org, event_id, keys).await
    }

    async fn replace_queued(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        deliveries: &[Delivery],
    ) -> Replaced {
        self.replace_queued_in(org, event_id, batch, deliveries)
            .await
    }

    async fn announce_sends(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
        riders: &[Delivery],
    ) -> Result<(), StoreError> {
        self.announce_in(org, event_id, intents, riders).await
    }

    async fn withdraw_sends(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
    ) -> Result<(), StoreError> {
        self.withdraw_in(org, event_id, intents).await
    }

    async fn forget_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        self.forget_deliveries_in(org, event_id, keys).await
    }

    async fn open_batches(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_ids: &[String],
    ) -> Result<(), StoreError> {
        self.open_batches_in(org, event_id, batch_ids).await
    }

    async fn complete_batch(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> Result<BatchProgress, StoreError> {
        self.complete_batch_in(org, event_id, batch_id).await
    }
}

const CLOSE_OP: &str = "close event";

/// Every attribute of an event but the lists that grow with its recipients.
pub(super) const EVENT_WITHOUT_LISTS: &[&str] = &[
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

impl DynamoStore {
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
pub(super) fn pending_index(event: &NotificationEvent) -> Vec<(String, AttributeValue)> {
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
