//! The hand-off to the work queue: when a request goes there, how its
//! deliveries become queue messages (work batches), and how the last
//! finished batch closes the event. Every delivery is on record (QUEUED,
//! naming its batch) before the first message is sent; a hand-off cut
//! half-way is rebuilt from the event's own recipient list.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::model::event::now_millis;
use crate::model::{
    Delivery, DeliveryStatus, EventStatus, NotificationChannel, NotificationEvent, OrgId,
};
use crate::ports::{
    ContactStore, EventStore, IdempotencyStore, OfferStore, StoreError, WorkBatch, WorkItem,
    WorkQueue,
};

use super::{
    Action, Notified, Notifier, NotifyError, QUEUED_MODE, conclude, event_ids, is_queued,
    set_lease, summarise, sweeps,
};

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    /// How long sending deliveries on `channels` here and now would take: the
    /// slowest channel at its rate, or the provider calls through the concurrency.
    pub fn estimate(&self, channels: &[NotificationChannel]) -> std::time::Duration {
        let mut per_channel: HashMap<&NotificationChannel, usize> = HashMap::new();
        for c in channels {
            *per_channel.entry(c).or_default() += 1;
        }
        let rated = per_channel
            .iter()
            .filter_map(|(c, n)| {
                // A chat message goes to one target, at that target's rate.
                let per_second = match c {
                    NotificationChannel::Email => self.rates.email.as_ref().map(|l| l.per_second()),
                    NotificationChannel::Sms => self.rates.sms.as_ref().map(|l| l.per_second()),
                    NotificationChannel::Sns => self.rates.topic.as_ref().map(|l| l.per_second()),
                    c => crate::channels::web::per_target_rate(c),
                }?;
                Some(*n as f64 / per_second)
            })
            .fold(0.0_f64, f64::max);
        let rounds = channels.len().div_ceil(self.concurrency.max(1));
        let called = self.policy.hand_off.send_latency.as_secs_f64() * rounds as f64;
        std::time::Duration::from_secs_f64(rated.max(called))
    }

    pub(crate) fn should_queue(&self, recipients: usize, actions: &[Action]) -> bool {
        if actions.is_empty() {
            return false;
        }
        let knobs = &self.policy.hand_off;
        let channels: Vec<NotificationChannel> = actions.iter().map(Action::channel).collect();
        let estimate = self.estimate(&channels);
        let queue = recipients > knobs.max_sync_recipients || estimate > knobs.sync_budget;
        tracing::info!(
            recipients,
            deliveries = actions.len(),
            estimate_ms = estimate.as_millis() as u64,
            budget_ms = knobs.sync_budget.as_millis() as u64,
            queue,
            "synchronous or queued"
        );
        queue
    }

    /// The lease of a queued event: long enough for its own deliveries at
    /// the rates, three times over, plus the base.
    fn queue_lease(&self, actions: &[Action]) -> time::Duration {
        let channels: Vec<NotificationChannel> = actions.iter().map(Action::channel).collect();
        let lease = self.policy.queue_lease + 3 * self.estimate(&channels);
        time::Duration::try_from(lease).unwrap_or(time::Duration::DAY)
    }

    /// Stores the event with every planned delivery QUEUED, then enqueues the
    /// work; answers with the stored (PENDING) event.
    pub(crate) async fn hand_off(
        &self,
        queue: &dyn WorkQueue,
        mut event: NotificationEvent,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        key: Option<&crate::model::IdempotencyKey>,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        let lease = self.queue_lease(&actions);
        let (batches, queued) = batches(&event, actions, "b", self.per_message());
        let mut ledger = decided.clone();
        ledger.extend(queued);
        let (summary, _, _) = summarise(&ledger);
        let mut info = Map::new();
        // Whoever closes the event sends its webhook: the target's name stays.
        if let Some(target) = event
            .info
            .as_ref()
            .and_then(|i| i.get(crate::channels::webhook::INFO_TARGET))
        {
            info.insert(crate::channels::webhook::INFO_TARGET.into(), target.clone());
        }
        info.insert("deliverySummary".into(), Value::Object(summary));
        info.insert("deliveryCount".into(), json!(ledger.len()));
        event.info = Some(info);
        let queued = mark_queued(&mut event, &batches);
        set_lease(&mut event, now_millis() + lease, 0);
        super::record_key(&mut event, key);
        // The event says QUEUED before any worker can see a message, so a
        // fast worker never finds it half-written. If what follows fails, a
        // keyed retry or the sweeper rebuilds the rest from the event.
        match self.store.create_event(&event).await {
            Err(StoreError::Conflict { .. }) => {}
            other => other?,
        }
        self.store.save_deliveries(&org, &event_id, &ledger).await?;
        let ids: Vec<String> = batches.iter().map(|b| b.batch_id.clone()).collect();
        self.store.open_batches(&org, &event_id, &ids).await?;
        tracing::info!(
            queued,
            messages = batches.len(),
            "handing off to the work queue"
        );
        let (event, refused) = self.enqueue(queue, &org, event, batches).await?;
        let mut recorded = decided;
        recorded.extend(refused);
        Ok(Notified::fresh(event, recorded))
    }

    fn per_message(&self) -> usize {
        self.policy.hand_off.deliveries_per_message.max(1)
    }

    /// A synchronous run that could not start everything (the deadline, the
    /// provider's quota) hands the rest to the queue: QUEUED entries first,
    /// the event stored PENDING and QUEUED, then the messages.
    pub(crate) async fn hand_off_rest(
        &self,
        queue: &dyn WorkQueue,
        mut event: NotificationEvent,
        mut recorded: Vec<Delivery>,
        not_started: Vec<Action>,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        let lease = self.queue_lease(&not_started);
        let prefix = if is_queued(&event) {
            rebuild_prefix()
        } else {
            "b".to_owned()
        };
        let (batches, queued) = batches(&event, not_started, &prefix, self.per_message());
        // Entries a quota refusal left SENDING become QUEUED: never sent here.
        self.store.save_deliveries(&org, &event_id, &queued).await?;
        recorded.retain(|d| !queued.iter().any(|q| q.key() == d.key()));
        recorded.extend(queued);
        conclude(&mut event, &recorded);
        mark_queued(&mut event, &batches);
        let sweeps = sweeps(&event);
        set_lease(&mut event, now_millis() + lease, sweeps);
        self.store.finish_event(&event).await?;
        let ids: Vec<String> = batches.iter().map(|b| b.batch_id.clone()).collect();
        self.store.open_batches(&org, &event_id, &ids).await?;
        tracing::info!(
            queued = ids.len(),
            "not everything could start here: handing the rest to the work queue"
        );
        let (event, refused) = self.enqueue(queue, &org, event, batches).await?;
        Ok(Notified::fresh(event, refused))
    }

    /// A keyed retry or the sweeper, for a handed-off event: what the planned
    /// deliveries (from the event's own recipient list) lack in the ledger is
    /// written QUEUED in new batches; SENDING entries older than the lease
    /// become UNCONFIRMED; every batch with QUEUED deliveries is recorded
    /// open and enqueued again. Duplicates are harmless: a worker sends only
    /// what it takes from QUEUED.
    pub(crate) async fn requeue(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        let Some(queue) = self.queue.as_deref() else {
            // No queue here: send what is missing or still queued right away.
            return Box::pin(self.resume_here(event, ledger, actions, decided, None)).await;
        };
        let have: HashSet<String> = ledger.iter().map(Delivery::key).collect();
        let mut written: Vec<Delivery> = decided
            .into_iter()
            .filter(|d| !have.contains(&d.key()))
            .collect();
        let missing: Vec<Action> = actions
            .into_iter()
            .filter(|a| !have.contains(&a.key()))
            .collect();
        let (new_batches, queued) = batches(&event, missing, &rebuild_prefix(), self.per_message());
        written.extend(queued);
        let lease = time::Duration::try_from(self.policy.hand_off.sending_lease)
            .unwrap_or(time::Duration::MAX);
        let now = now_millis();
        for d in &ledger {
            if d.status == DeliveryStatus::Sending && now - d.time >= lease {
                let mut d = d.clone();
                super::unconfirm(&mut d, "its worker stopped between sending and recording");
                written.push(d);
            }
        }
        if !written.is_empty() {
            tracing::info!(
                rebuilt = written.len(),
                "ledger entries the hand-off had not written are rebuilt"
            );
            self.store
                .save_deliveries(&org, &event_id, &written)
                .await?;
        }
        let mut grouped: BTreeMap<String, Vec<WorkItem>> = BTreeMap::new();
        for d in ledger.iter().filter(|d| d.status == DeliveryStatus::Queued) {
            if let Some(batch) = &d.batch {
                grouped.entry(batch.clone()).or_default().push(work_item(
                    &event,
                    d.channel.clone(),
                    d.contact_id.clone(),
                ));
            }
        }
        let mut all_batches: Vec<WorkBatch> = grouped
            .into_iter()
            .map(|(batch_id, deliveries)| WorkBatch {
                organization_id: org.to_string(),
                event_id: event_id.clone(),
                offer_id: event.entity_id.clone().unwrap_or_default(),
                batch_id,
                deliveries,
                not_before: None,
            })
            .collect();
        all_batches.extend(new_batches);
        let ids: Vec<String> = all_batches.iter().map(|b| b.batch_id.clone()).collect();
        self.store.open_batches(&org, &event_id, &ids).await?;
        if all_batches.is_empty() {
            // Everything is settled: close it (a worker's close may have been lost).
            let closed = self.complete(&org, &event_id, None).await?;
            return Ok(Notified::fresh(closed.unwrap_or(event), written));
        }
        tracing::info!(messages = ids.len(), "enqueuing again what is still queued");
        let (event, refused) = self.enqueue(queue, &org, event, all_batches).await?;
        written.extend(refused);
        Ok(Notified::fresh(event, written))
    }

    /// Sends the batches to the queue. A batch the queue refused (after the
    /// adapter's retries) has its deliveries recorded FAILED and is completed,
    /// so the event still closes and says who was not notified. Answers the
    /// event (closed, if this closed it) and the deliveries recorded FAILED.
    async fn enqueue(
        &self,
        queue: &dyn WorkQueue,
        org: &OrgId,
        event: NotificationEvent,
        batches: Vec<WorkBatch>,
    ) -> Result<(NotificationEvent, Vec<Delivery>), NotifyError> {
        let event_id = event.event_id.clone().unwrap_or_default();
        let results = queue.enqueue(&batches).await;
        let mut closed = None;
        let mut refused = Vec::new();
        for (batch, result) in batches.iter().zip(results) {
            let Err(e) = result else { continue };
            tracing::error!(batch = %batch.batch_id, code = %e.code, "work batch could not be queued");
            let failed = failed_all(batch, &format!("could not be queued: {e}"));
            let written = self
                .store
                .replace_queued(org, &event_id, &batch.batch_id, &failed)
                .await
                .all_or_error()?;
            refused.extend(
                failed
                    .into_iter()
                    .zip(written)
                    .filter_map(|(d, ok)| ok.then_some(d)),
            );
            if let Some(c) = self.complete(org, &event_id, Some(&batch.batch_id)).await? {
                closed = Some(c);
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                failed = refused.len(),
                "some work batches were not queued; their deliveries are recorded FAILED"
            );
        }
        Ok((closed.unwrap_or(event), refused))
    }

    /// Marks a batch finished (none: only checks); the call that finishes
    /// the last one closes the event, and only when every delivery the event
    /// planned is on record and settled (returned when this call closed it).
    pub(crate) async fn complete(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: Option<&str>,
    ) -> Result<Option<NotificationEvent>, StoreError> {
        if let Some(batch_id) = batch_id {
            let progress = self.store.complete_batch(org, event_id, batch_id).await?;
            tracing::debug!(
                batch = batch_id,
                removed = progress.removed,
                remaining = progress.remaining,
                "work batch completed"
            );
            if progress.remaining > 0 {
                return Ok(None);
            }
        }
        let Some((mut event, ledger)) = self.store.event_with_deliveries(org, event_id).await?
        else {
            return Ok(None);
        };
        let ledger = super::without_webhook(ledger);
        if event.event_status != Some(EventStatus::Pending) {
            return Ok(None);
        }
        let planned = event
            .info
            .as_ref()
            .and_then(|i| i.get("deliveryCount"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let unsettled = ledger.iter().filter(|d| !d.is_settled()).count();
        if unsettled > 0 || ledger.len() < planned {
            // A forged message completed a batch early, or the hand-off was cut
            // half-way: the real message, a keyed retry or the sweeper finishes it.
            tracing::warn!(
                unsettled,
                missing = planned.saturating_sub(ledger.len()),
                "no batch is open but the ledger is not complete; the event stays PENDING"
            );
            return Ok(None);
        }
        let status = conclude(&mut event, &ledger);
        let webhook = self.owe_webhook(org, &event).await?;
        if self.store.close_event(&event).await? {
            tracing::info!(status = %status, deliveries = ledger.len(), "event closed by the last work batch");
            if webhook {
                self.dispatch_webhook(org, &event, None).await;
            }
            Ok(Some(event))
        } else {
            // Another worker closed it first: exactly one close wins.
            Ok(None)
        }
    }
}

/// A batch-ID prefix no earlier hand-off of the event used.
fn rebuild_prefix() -> String {
    format!("r{:x}-", uuid::Uuid::now_v7().as_u128() as u32)
}

/// Splits actions into queue messages (channels interleaved), and the QUEUED
/// ledger entries that name them.
fn batches(
    event: &NotificationEvent,
    actions: Vec<Action>,
    prefix: &str,
    per_message: usize,
) -> (Vec<WorkBatch>, Vec<Delivery>) {
    let event_id = event.event_id.clone().unwrap_or_default();
    let mut batches = Vec::new();
    let mut queued = Vec::new();
    for (n, chunk) in interleave(actions).chunks(per_message).enumerate() {
        let batch_id = format!("{prefix}{n:05}");
        queued.extend(chunk.iter().map(|a| a.queued(&batch_id)));
        batches.push(WorkBatch {
            organization_id: event.organization_id.clone().unwrap_or_default(),
            event_id: event_id.clone(),
            offer_id: event.entity_id.clone().unwrap_or_default(),
            batch_id,
            deliveries: chunk
                .iter()
                .map(|a| work_item(event, a.channel(), a.contact_id()))
                .collect(),
            not_before: None,
        });
    }
    (batches, queued)
}

/// Says in the event's `info` that its deliveries went to the work queue;
/// answers how many (this time).
fn mark_queued(event: &mut NotificationEvent, batches: &[WorkBatch]) -> usize {
    let queued: usize = batches.iter().map(|b| b.deliveries.len()).sum();
    let info = event.info.get_or_insert_with(Map::new);
    info.insert("deliveryMode".into(), json!(QUEUED_MODE));
    info.insert("queuedDeliveries".into(), json!(queued));
    info.insert("queueMessages".into(), json!(batches.len()));
    queued
}

/// Every delivery of a queue message, recorded FAILED with `reason`.
pub(crate) fn failed_all(batch: &WorkBatch, reason: &str) -> Vec<Delivery> {
    batch
        .deliveries
        .iter()
        .map(|item| {
            let mut d = super::skipped(item.channel.clone(), item.contact_id.as_deref(), reason);
            d.status = DeliveryStatus::Failed;
            d.batch = Some(batch.batch_id.clone());
            d
        })
        .collect()
}

/// One delivery as a queue message names it; a contact of the settings'
/// `ccContactIds` is marked as such (it gets the email copy only).
fn work_item(
    event: &NotificationEvent,
    channel: NotificationChannel,
    contact_id: Option<String>,
) -> WorkItem {
    let cc = channel == NotificationChannel::Email
        && contact_id
            .as_ref()
            .is_some_and(|c| event.cc_contact_ids.iter().flatten().any(|x| x == c));
    WorkItem {
        channel,
        contact_id,
        cc,
    }
}

/// Orders actions so that channels alternate (EMAIL, SMS, EMAIL, SMS, ...):
/// every queue message then keeps each channel's rate busy.
fn interleave(actions: Vec<Action>) -> Vec<Action> {
    let mut lanes: Vec<(NotificationChannel, std::collections::VecDeque<Action>)> = Vec::new();
    for a in actions {
        let c = a.channel();
        match lanes.iter_mut().find(|(lane, _)| *lane == c) {
            Some((_, q)) => q.push_back(a),
            None => lanes.push((c, std::collections::VecDeque::from([a]))),
        }
    }
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for (_, q) in lanes.iter_mut() {
            if let Some(a) = q.pop_front() {
                out.push(a);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}
