//! Finishing what a run left PENDING: a retry with the same idempotency key,
//! or the sweeper (a schedule) for events whose lease has passed. Both plan
//! from the event's own recipient list, take the event's lease first (so two
//! never resume one event at once), and send only what no earlier run sent.
//! After `max_sweeps` sweeps, the sweeper closes the event with what is left
//! FAILED: no event stays PENDING for ever.

use std::collections::{BTreeMap, HashSet};

use tracing::Instrument;

use crate::model::event::now_millis;
use crate::model::{Delivery, DeliveryStatus, EventStatus, NotificationEvent, Offer, OfferId};
use crate::ports::{
    ContactStore, EventStore, IdempotencyStore, KeyHold, KeyOutcome, OfferStore, StoreError,
};

use super::{
    Action, Notified, Notifier, NotifyError, conclude, event_ids, is_queued, lease_text, set_lease,
    sweeps, unconfirm,
};

/// Who resumes an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A retry with the request's idempotency key: FAILED deliveries are tried again.
    KeyedRetry,
    /// The sweeper: it finishes what was not started; FAILED stays FAILED.
    Sweep,
}

/// Stale events one sweep takes at most.
const SWEEP_LIMIT: usize = 25;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swept {
    /// Events found past their lease.
    pub stale: usize,
    /// Resumed and finished (DONE or FAILED) by this sweep.
    pub finished: usize,
    /// Resumed and handed (again) to the work queue: still PENDING.
    pub requeued: usize,
    /// Closed with what was left FAILED (after `max_sweeps`, or the offer is gone).
    pub closed: usize,
    /// Taken by another run first, or no longer PENDING.
    pub skipped: usize,
    /// Could not be handled (a storage failure); the next sweep tries again.
    pub failed: usize,
    /// Age in seconds of the oldest PENDING event, stale or not.
    pub oldest_pending_age_seconds: Option<i64>,
    /// Deliveries this sweep recorded (for its metrics).
    pub recorded: Vec<Delivery>,
}

/// The sweeper as the edge (the schedule) sees it.
pub trait Sweeper: Send + Sync {
    /// One sweep: every PENDING event past its lease (up to 25) is resumed or
    /// closed, while the deadline leaves time for it.
    fn sweep(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> impl std::future::Future<Output = Result<Swept, StoreError>> + Send;
}

impl<S> Sweeper for Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    async fn sweep(&self, deadline: Option<tokio::time::Instant>) -> Result<Swept, StoreError> {
        let now = now_millis();
        let found = self.store.stale_events(now, SWEEP_LIMIT).await?;
        let now_ms = crate::model::event::epoch_ms(now);
        let mut swept = Swept {
            stale: found.stale.len(),
            oldest_pending_age_seconds: found.oldest_pending_ms.map(|t| (now_ms - t) / 1000),
            ..Swept::default()
        };
        // Each event needs time to plan, send and record: stop early rather
        // than start one the deadline would cut.
        let room = self.policy.deadline_margin + 2 * self.policy.min_send_time;
        for (org, event_id) in found.stale {
            if deadline
                .is_some_and(|d| d.saturating_duration_since(tokio::time::Instant::now()) < room)
            {
                break;
            }
            let span = tracing::info_span!("sweep", event_id = %event_id);
            let stored = match self
                .store
                .event_with_deliveries(&org, &event_id)
                .instrument(span.clone())
                .await
            {
                Ok(Some((event, ledger))) => (event, super::without_webhook(ledger)),
                Ok(None) => {
                    swept.skipped += 1;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "sweeper could not read a stale event");
                    swept.failed += 1;
                    continue;
                }
            };
            let abandoned = |n: &Notified| {
                n.event
                    .info
                    .as_ref()
                    .is_some_and(|i| i.contains_key("abandoned"))
            };
            match Box::pin(
                self.resume(stored.0, stored.1, deadline, Trigger::Sweep)
                    .instrument(span),
            )
            .await
            {
                Ok(n) => {
                    if abandoned(&n) {
                        swept.closed += 1;
                    } else if n.event.event_status == Some(EventStatus::Pending) {
                        swept.requeued += 1;
                    } else {
                        swept.finished += 1;
                    }
                    swept.recorded.extend(n.recorded);
                }
                Err(NotifyError::EventBusy(_)) => swept.skipped += 1,
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "sweeper could not resume a stale event");
                    swept.failed += 1;
                }
            }
        }
        tracing::info!(
            stale = swept.stale,
            finished = swept.finished,
            requeued = swept.requeued,
            closed = swept.closed,
            skipped = swept.skipped,
            failed = swept.failed,
            oldest_pending_age_seconds = swept.oldest_pending_age_seconds,
            "sweep done"
        );
        Ok(swept)
    }
}

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    /// Finishes a stored event from its own recipient list and its ledger.
    pub(crate) async fn resume(
        &self,
        mut event: NotificationEvent,
        ledger: Vec<Delivery>,
        deadline: Option<tokio::time::Instant>,
        trigger: Trigger,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        if event.event_status != Some(EventStatus::Pending) {
            // Finished meanwhile (its key's close was lost): answer with it.
            return Ok(Notified::fresh(event, Vec::new()));
        }
        let sweeps = sweeps(&event) + u32::from(trigger == Trigger::Sweep);

        // Take the lease first, before any read that could fail for good (a
        // malformed offer or settings item): the sweep is counted and the lease
        // moved on either way, so no event can hold the sweeper up for ever.
        let lease = if is_queued(&event) {
            let channels: Vec<_> = ledger.iter().map(|d| d.channel.clone()).collect();
            self.policy.queue_lease + self.estimate(&channels)
        } else {
            self.policy.sync_lease
        };
        let until = now_millis() + time::Duration::try_from(lease).unwrap_or(time::Duration::DAY);
        let moved = self
            .store
            .move_lease(
                &org,
                &event_id,
                lease_text(&event).as_deref(),
                until,
                sweeps,
            )
            .await?;
        // The sweeper needs the lease, and the event's key if it has one: a
        // keyed retry holding the key resumes it, not the sweeper. A keyed
        // retry already holds the key, so a sweeper cannot be resuming now
        // (its lease move is then only to keep the sweeper away a while).
        let mut held_key = None;
        if trigger == Trigger::Sweep {
            if !moved {
                return Err(NotifyError::EventBusy(event_id));
            }
            if let Some(key) = super::event_key(&event) {
                let now_ms = crate::model::event::epoch_ms(now_millis());
                let lock_ms = self.policy.sync_lease.as_millis() as i64;
                match self
                    .store
                    .hold_for_sweep(&org, &key, &event_id, now_ms, now_ms + lock_ms)
                    .await?
                {
                    KeyHold::Busy => return Err(NotifyError::EventBusy(event_id)),
                    KeyHold::Held => held_key = Some(key),
                    KeyHold::Free => {}
                }
            }
        }
        set_lease(&mut event, until, sweeps);
        let result = Box::pin(self.resume_planned(event, ledger, deadline, trigger)).await;
        if let Some(key) = held_key {
            let outcome = match &result {
                Ok(n)
                    if n.event.event_status != Some(EventStatus::Pending)
                        || is_queued(&n.event) =>
                {
                    KeyOutcome::Completed
                }
                _ => KeyOutcome::Released,
            };
            if let Err(e) = self.store.finish(&org, &key, outcome).await {
                tracing::warn!(error = %crate::error_chain(&e), "could not release the event's idempotency key");
            }
        }
        result
    }

    /// Plans the held event from its own recipient list, then resumes it. An
    /// event that cannot be planned any more (the offer gone, stored data
    /// another writer broke) is closed on its last sweep from what the event
    /// itself says was planned.
    async fn resume_planned(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        deadline: Option<tokio::time::Instant>,
        trigger: Trigger,
    ) -> Result<Notified, NotifyError> {
        let last_sweep = trigger == Trigger::Sweep && sweeps(&event) > self.policy.max_sweeps;
        match self.plan_stored(&event).await {
            Ok((actions, decided, false)) => {
                Box::pin(self.resume_held(event, ledger, actions, decided, deadline, trigger)).await
            }
            Ok((actions, decided, true)) => {
                let expected = expected(&actions, &decided);
                self.close_abandoned(event, ledger, expected, "the offer no longer exists")
                    .await
            }
            Err(e) if last_sweep => {
                tracing::warn!(error = %crate::error_chain(&e), "the event cannot be planned any more; closing it");
                let expected = planned_from_event(&event);
                let why = "abandoned: the event could not be planned again (its offer, settings or contacts cannot be read)";
                self.close_abandoned(event, ledger, expected, why).await
            }
            Err(e) => Err(e),
        }
    }

    /// Plans a stored event from its own recipient list: the actions, the
    /// decided deliveries, and whether the offer is gone.
    async fn plan_stored(
        &self,
        event: &NotificationEvent,
    ) -> Result<(Vec<Action>, Vec<Delivery>, bool), NotifyError> {
        let (org, _) = event_ids(event)?;
        let offer_id =
            OfferId::parse(event.entity_id.as_deref().unwrap_or_default()).map_err(|_| {
                StoreError::Malformed {
                    op: "resume event",
                    detail: "the event's entityID is not a valid offer ID".into(),
                }
            })?;
        let (offer, settings) = tokio::try_join!(
            self.store.offer_details(&org, &offer_id),
            self.store.settings(&org)
        )?;
        let offer_gone = offer.is_none();
        let offer = offer.unwrap_or_else(|| Offer {
            id: offer_id.to_string(),
            ..Offer::default()
        });
        let recipients = self
            .recipients_of(
                &org,
                event.contact_ids.clone().unwrap_or_default(),
                event.cc_contact_ids.clone().unwrap_or_default(),
            )
            .await?;
        let (actions, decided) = self.plan(event, &offer, &settings, &recipients);
        Ok((actions, decided, offer_gone))
    }

    /// The part of `resume` that runs once the lease (and the key) are held.
    #[allow(clippy::too_many_arguments)]
    async fn resume_held(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        deadline: Option<tokio::time::Instant>,
        trigger: Trigger,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        let sweeps = sweeps(&event);
        tracing::info!(
            ?trigger,
            sweeps,
            queued = is_queued(&event),
            "resuming a PENDING event"
        );

        if trigger == Trigger::Sweep && sweeps > self.policy.max_sweeps {
            let why = format!(
                "abandoned: still not sent after {} resumptions by the sweeper",
                self.policy.max_sweeps
            );
            let expected = expected(&actions, &decided);
            return self.close_abandoned(event, ledger, expected, &why).await;
        }
        if is_queued(&event) {
            return Box::pin(self.requeue(event, ledger, actions, decided)).await;
        }
        let retry_failed = trigger == Trigger::KeyedRetry;
        if trigger == Trigger::Sweep
            && let Some(queue) = self.queue.as_deref()
        {
            // The sweeper hands what is left to the workers at once.
            let (settled, actions, decided) = self
                .settle(&org, &event_id, ledger, actions, decided, retry_failed)
                .await?;
            if !decided.is_empty() {
                self.store
                    .save_deliveries(&org, &event_id, &decided)
                    .await?;
            }
            let mut all = settled;
            all.extend(decided.iter().cloned());
            if actions.is_empty() {
                return self.finish_resumed(event, all, decided).await;
            }
            let mut n = Box::pin(self.hand_off_rest(queue, event, all, actions)).await?;
            let mut recorded = decided;
            recorded.append(&mut n.recorded);
            n.recorded = recorded;
            return Ok(n);
        }
        let entries: HashSet<String> = ledger.iter().map(Delivery::key).collect();
        let (settled, actions, decided) = self
            .settle(&org, &event_id, ledger, actions, decided, retry_failed)
            .await?;
        Box::pin(self.deliver_and_record(event, actions, decided, (settled, &entries), deadline))
            .await
    }

    /// A resumed synchronous event with a ledger and no queue to hand to.
    pub(crate) async fn resume_here(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        let entries: HashSet<String> = ledger.iter().map(Delivery::key).collect();
        let (settled, actions, decided) = self
            .settle(&org, &event_id, ledger, actions, decided, false)
            .await?;
        Box::pin(self.deliver_and_record(event, actions, decided, (settled, &entries), deadline))
            .await
    }

    /// Splits the ledger into what stays (SENT, UNCONFIRMED, and FAILED unless
    /// `retry_failed`) and what is still to do. A SENDING entry may have gone
    /// out: the run that wrote it is over (its key's lock or the event's
    /// lease says so), so it becomes UNCONFIRMED and is not sent again.
    async fn settle(
        &self,
        org: &crate::model::OrgId,
        event_id: &str,
        ledger: Vec<Delivery>,
        mut actions: Vec<Action>,
        mut decided: Vec<Delivery>,
        retry_failed: bool,
    ) -> Result<(Vec<Delivery>, Vec<Action>, Vec<Delivery>), StoreError> {
        let mut kept: Vec<Delivery> = Vec::new();
        let mut unconfirmed = Vec::new();
        for mut d in ledger {
            match d.status {
                DeliveryStatus::Sent | DeliveryStatus::Unconfirmed => {}
                DeliveryStatus::Failed if !retry_failed => {}
                DeliveryStatus::Sending => {
                    unconfirm(&mut d, "the run stopped between sending and recording");
                    unconfirmed.push(d.clone());
                }
                DeliveryStatus::Failed
                | DeliveryStatus::Skipped
                | DeliveryStatus::Queued
                | DeliveryStatus::NotStarted => continue,
            }
            kept.push(d);
        }
        if !unconfirmed.is_empty() {
            self.store
                .save_deliveries(org, event_id, &unconfirmed)
                .await?;
        }
        let done: HashSet<String> = kept.iter().map(Delivery::key).collect();
        let before = actions.len();
        actions.retain(|a| !done.contains(&a.key()));
        decided.retain(|d| !done.contains(&d.key()));
        tracing::info!(
            settled = before - actions.len(),
            unconfirmed = unconfirmed.len(),
            to_send = actions.len(),
            "resuming"
        );
        Ok((kept, actions, decided))
    }

    /// Stores a resumed event whose every delivery is settled.
    async fn finish_resumed(
        &self,
        mut event: NotificationEvent,
        all: Vec<Delivery>,
        recorded: Vec<Delivery>,
    ) -> Result<Notified, NotifyError> {
        let status = conclude(&mut event, &all);
        let (org, _) = event_ids(&event)?;
        let webhook = status != EventStatus::Pending && self.owe_webhook(&org, &event).await?;
        self.store.finish_event(&event).await?;
        let mut recorded = recorded;
        if webhook && let Some(d) = self.dispatch_webhook(&org, &event, None).await {
            recorded.push(d);
        }
        Ok(Notified::fresh(event, recorded))
    }

    /// Closes an event nobody can finish: every expected delivery not settled
    /// is recorded FAILED with `why` (a SENDING one UNCONFIRMED), and the
    /// event is closed with the true summary. A handed-off event's delivery a
    /// live worker took moments ago is left to it: the event then stays open
    /// for that worker to close.
    async fn close_abandoned(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        expected: Vec<Delivery>,
        why: &str,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        tracing::warn!(reason = why, "closing an abandoned event");
        let queued_mode = is_queued(&event);
        let lease = time::Duration::try_from(self.policy.hand_off.sending_lease)
            .unwrap_or(time::Duration::MAX);
        let now = now_millis();
        let mut all: BTreeMap<String, Delivery> =
            ledger.into_iter().map(|d| (d.key(), d)).collect();
        let mut written: Vec<Delivery> = Vec::new();
        let mut from_queue: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        let failed = |mut d: Delivery| {
            d.status = DeliveryStatus::Failed;
            d.reason = Some(why.to_owned());
            d.time = now_millis();
            d
        };
        for d in all.values_mut() {
            match d.status {
                // A worker's take younger than its lease may still be sending.
                DeliveryStatus::Sending if queued_mode && now - d.time < lease => {}
                DeliveryStatus::Sending => {
                    unconfirm(d, "its run stopped between sending and recording");
                    written.push(d.clone());
                }
                // A worker may still take these: only what is still QUEUED fails.
                DeliveryStatus::Queued => {
                    let batch = d.batch.clone().unwrap_or_default();
                    from_queue.entry(batch).or_default().push(failed(d.clone()));
                }
                DeliveryStatus::NotStarted => {
                    *d = failed(d.clone());
                    written.push(d.clone());
                }
                _ => {}
            }
        }
        for d in expected {
            if !all.contains_key(&d.key()) {
                let d = if d.status == DeliveryStatus::Skipped {
                    d
                } else {
                    failed(d)
                };
                all.insert(d.key(), d.clone());
                written.push(d);
            }
        }
        if !written.is_empty() {
            self.store
                .save_deliveries(&org, &event_id, &written)
                .await?;
        }
        for (batch, ds) in from_queue {
            let took = self
                .store
                .replace_queued(&org, &event_id, &batch, &ds)
                .await
                .all_or_error()?;
            for (d, ok) in ds.into_iter().zip(took) {
                if ok {
                    all.insert(d.key(), d.clone());
                    written.push(d);
                }
            }
        }
        let mut event = event;
        // Says why in the event too, for whoever reads it.
        event
            .info
            .get_or_insert_with(Default::default)
            .insert("abandoned".into(), serde_json::json!(why));
        let ledger: Vec<Delivery> = all.into_values().collect();
        if ledger.iter().any(|d| !d.is_settled()) {
            // A live worker still sends some: every other batch is finished
            // here, so that worker's completion is the last, and it closes.
            let mut open: BTreeMap<&str, bool> = BTreeMap::new();
            for d in &ledger {
                if let Some(b) = d.batch.as_deref() {
                    *open.entry(b).or_default() |= !d.is_settled();
                }
            }
            for (batch, _) in open.into_iter().filter(|(_, unsettled)| !unsettled) {
                self.store.complete_batch(&org, &event_id, batch).await?;
            }
            return Ok(Notified::fresh(event, written));
        }
        conclude(&mut event, &ledger);
        let webhook = self.owe_webhook(&org, &event).await?;
        if self.store.close_event(&event).await? && webhook {
            self.dispatch_webhook(&org, &event, None).await;
        }
        Ok(Notified::fresh(event, written))
    }
}

/// What a plan says should be on record: every action's delivery, and the
/// decided ones (skipped, failed) as they are.
fn expected(actions: &[Action], decided: &[Delivery]) -> Vec<Delivery> {
    actions
        .iter()
        .map(|a| a.entry(DeliveryStatus::Failed))
        .chain(decided.iter().cloned())
        .collect()
}

/// What an event says was planned, when it cannot be planned again: one
/// delivery per recipient on each of its channels (cc contacts by email),
/// one for a topic, one for a channel this function does not send on.
fn planned_from_event(event: &NotificationEvent) -> Vec<Delivery> {
    use crate::model::NotificationChannel;
    let ids = event.contact_ids.clone().unwrap_or_default();
    let cc = event.cc_contact_ids.clone().unwrap_or_default();
    let mut out = Vec::new();
    for channel in event.channels.clone().unwrap_or_default() {
        let entry = |contact: Option<&str>| {
            let mut d = super::skipped(channel.clone(), contact, "");
            d.status = DeliveryStatus::Failed;
            d.reason = None;
            d
        };
        match channel {
            NotificationChannel::Email => {
                out.extend(ids.iter().chain(&cc).map(|c| entry(Some(c))));
            }
            NotificationChannel::Sms => out.extend(ids.iter().map(|c| entry(Some(c)))),
            // Sent after the close, with its own entry: never "planned" here.
            NotificationChannel::Webhook => {}
            _ => out.push(entry(None)),
        }
    }
    out
}
