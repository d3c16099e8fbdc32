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
    ContactStore, EventStore, IdempotencyStore, KeyHold, KeyOutcome, Mailer, OfferStore, SmsSender,
    StoreError, TopicPublisher,
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

impl<S, M, P, T> Sweeper for Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    async fn sweep(&self, deadline: Option<tokio::time::Instant>) -> Result<Swept, StoreError> {
        let now = now_millis();
        let found = self.store.stale_events(now, SWEEP_LIMIT).await?;
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
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
                Ok(Some(s)) => s,
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
                n.recorded.iter().any(|d| {
                    d.reason.as_deref().is_some_and(|r| {
                        r.starts_with("abandoned") || r.starts_with("the offer no longer")
                    })
                })
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

impl<S, M, P, T> Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
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
            id: event.entity_id.clone().unwrap_or_default(),
            ..Offer::default()
        });
        let recipients = self
            .recipients_of(
                &org,
                event.contact_ids.clone().unwrap_or_default(),
                event.cc_contact_ids.clone().unwrap_or_default(),
            )
            .await?;
        let (actions, decided) = self.plan(&event, &offer, &settings, &recipients);

        // Take the lease: from here on this run alone resumes the event.
        let lease = if is_queued(&event) {
            self.policy.queue_lease
                + self.estimate(&actions.iter().map(Action::channel).collect::<Vec<_>>())
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
                let now_ms = (now_millis().unix_timestamp_nanos() / 1_000_000) as i64;
                let lock_ms = self.policy.sync_lease.as_millis() as i64;
                match self
                    .store
                    .hold_for_sweep(&org, &key, now_ms, now_ms + lock_ms)
                    .await?
                {
                    KeyHold::Busy => return Err(NotifyError::EventBusy(event_id)),
                    KeyHold::Held => held_key = Some(key),
                    KeyHold::Free => {}
                }
            }
        }
        set_lease(&mut event, until, sweeps);
        let result = Box::pin(self.resume_held(
            event, ledger, actions, decided, offer_gone, deadline, trigger,
        ))
        .await;
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

    /// The part of `resume` that runs once the lease (and the key) are held.
    #[allow(clippy::too_many_arguments)]
    async fn resume_held(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        offer_gone: bool,
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

        if offer_gone {
            return self
                .close_abandoned(
                    event,
                    ledger,
                    &actions,
                    &decided,
                    "the offer no longer exists",
                )
                .await;
        }
        if trigger == Trigger::Sweep && sweeps > self.policy.max_sweeps {
            let why = format!(
                "abandoned: still not sent after {} resumptions by the sweeper",
                self.policy.max_sweeps
            );
            return self
                .close_abandoned(event, ledger, &actions, &decided, &why)
                .await;
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
        let (settled, actions, decided) = self
            .settle(&org, &event_id, ledger, actions, decided, retry_failed)
            .await?;
        Box::pin(self.deliver_and_record(event, actions, decided, settled, deadline)).await
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
        let (settled, actions, decided) = self
            .settle(&org, &event_id, ledger, actions, decided, false)
            .await?;
        Box::pin(self.deliver_and_record(event, actions, decided, settled, deadline)).await
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
        conclude(&mut event, &all);
        self.store.finish_event(&event).await?;
        Ok(Notified::fresh(event, recorded))
    }

    /// Closes an event nobody can finish: every planned delivery not settled
    /// is recorded FAILED with `why` (a SENDING one UNCONFIRMED), and the
    /// event is closed with the true summary.
    async fn close_abandoned(
        &self,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
        actions: &[Action],
        decided: &[Delivery],
        why: &str,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        tracing::warn!(reason = why, "closing an abandoned event");
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
        let missing: Vec<Delivery> = actions
            .iter()
            .map(|a| failed(a.entry(DeliveryStatus::Failed)))
            .chain(decided.iter().cloned())
            .filter(|d| !all.contains_key(&d.key()))
            .collect();
        for d in missing {
            all.insert(d.key(), d.clone());
            written.push(d);
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
        let ledger: Vec<Delivery> = all.into_values().collect();
        if ledger.iter().any(|d| !d.is_settled()) {
            // A worker took some meanwhile: it closes the event when it is done.
            return Ok(Notified::fresh(event, written));
        }
        conclude(&mut event, &ledger);
        self.store.close_event(&event).await?;
        Ok(Notified::fresh(event, written))
    }
}
