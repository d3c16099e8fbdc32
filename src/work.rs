//! The work-queue side of the use case: one queue message (a `WorkBatch`)
//! names deliveries of a handed-off event; a worker sends them under the rate
//! limits and records them, and the worker that completes the last batch
//! closes the event.
//!
//! Safe under redelivery: a worker sends only the deliveries it moved from
//! QUEUED to SENDING in the ledger (a conditional write), so a duplicate or
//! redelivered message never sends an accepted delivery again. A delivery a
//! crashed worker left SENDING becomes UNCONFIRMED and is not resent.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use tracing::Instrument;

use crate::model::{
    ContactId, Delivery, DeliveryStatus, EventStatus, IdempotencyKey, OfferId, OrgId,
};
use crate::notify::{
    Action, Announce, Hold, Notifier, WebhookWork, attempt_of, failed_all, skipped, unconfirm,
};
use crate::ports::{IdempotencyStore, StoreError, WorkBatch, WorkReads, WorkStore};

/// What became of one work message.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkDone {
    /// Its deliveries are recorded; other batches are still open.
    Recorded,
    /// Its deliveries are recorded and it was the last batch: the event is closed.
    Closed(EventStatus),
    /// The event was already closed: nothing to do.
    AlreadyClosed,
    /// A webhook attempt received before it is due: sent on with the rest of
    /// its delay.
    Deferred,
}

/// One message's work: what became of it, and the deliveries it recorded
/// (for the invocation's metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Worked {
    pub done: WorkDone,
    pub recorded: Vec<Delivery>,
}

/// Why a work message must be delivered again (or, at the last receive, go
/// to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("the work message is not valid: {0}")]
    Malformed(String),
    #[error("event {0} does not exist")]
    EventNotFound(String),
    #[error("offer {0} no longer exists")]
    OfferGone(OfferId),
    #[error("the invocation's deadline came before {0} deliveries could start")]
    OutOfTime(usize),
    #[error("{0} deliveries are being sent by another receive of this message")]
    InFlightElsewhere(usize),
    #[error("the provider's quota refused {0} deliveries; they are queued again")]
    Throttled(usize),
    #[error("a webhook message due later could not be sent on ({0})")]
    Requeue(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The worker as the edge (the SQS event handler) sees it.
pub trait Work: Send + Sync {
    /// Processes one message, received for the `receive_count`-th time.
    fn work(
        &self,
        batch: WorkBatch,
        receive_count: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> impl Future<Output = Result<Worked, WorkError>> + Send;
}

impl<S> Work for Notifier<S>
where
    S: WorkStore + IdempotencyStore,
{
    async fn work(
        &self,
        batch: WorkBatch,
        receive_count: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Worked, WorkError> {
        let span = tracing::info_span!("work", event_id = %batch.event_id, batch = %batch.batch_id, receive_count);
        async move {
            let result = self.work_once(&batch, deadline).await;
            match &result {
                Ok(w) => tracing::info!(done = ?w.done, recorded = w.recorded.len(), "work message done"),
                Err(e) => tracing::warn!(error = %crate::error_chain(e), "work message failed; it will be delivered again"),
            }
            let last = receive_count >= self.policy.hand_off.max_receives;
            if let (Err(e), true) = (&result, last) {
                // The queue gives up after this receive: say so in the ledger,
                // so the event closes and names who was not notified.
                if let Err(e2) = self.give_up(&batch, e).await {
                    tracing::error!(error = %crate::error_chain(&e2), "could not record the abandoned deliveries");
                }
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// The IDs a message names, checked like any input.
struct Ids {
    org: OrgId,
    offer: OfferId,
    event_id: String,
    /// The contacts its deliveries name, each once.
    contacts: Vec<ContactId>,
}

fn ids(batch: &WorkBatch) -> Result<Ids, WorkError> {
    let bad = |what: &str| WorkError::Malformed(format!("{what} is not a valid ID"));
    let org = OrgId::parse(&batch.organization_id).map_err(|_| bad("organizationID"))?;
    let offer = OfferId::parse(&batch.offer_id).map_err(|_| bad("offerId"))?;
    // Event IDs are ours (UUIDs); the same rule as idempotency keys keeps them inert in keys.
    IdempotencyKey::parse(&batch.event_id).map_err(|_| bad("eventID"))?;
    if IdempotencyKey::parse(&batch.batch_id).is_err() {
        return Err(bad("batchId"));
    }
    let mut contacts = Vec::new();
    let (mut seen, mut seen_contacts) = (HashSet::new(), HashSet::new());
    for item in &batch.deliveries {
        if let Some(c) = &item.contact_id {
            let id = ContactId::parse(c).map_err(|_| bad("a delivery's contactId"))?;
            if seen_contacts.insert(c.as_str()) {
                contacts.push(id);
            }
        }
        // The hand-off names each delivery once; a repeat is not its message
        // (and DynamoDB refuses a read that names a key twice).
        if !seen.insert(item.key()) {
            return Err(WorkError::Malformed(
                "it names the same delivery twice".into(),
            ));
        }
    }
    Ok(Ids {
        org,
        offer,
        event_id: batch.event_id.clone(),
        contacts,
    })
}

impl<S> Notifier<S>
where
    S: WorkStore + IdempotencyStore,
{
    async fn work_once(
        &self,
        batch: &WorkBatch,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Worked, WorkError> {
        let Ids {
            org,
            offer: offer_id,
            event_id,
            contacts: contact_ids,
        } = ids(batch)?;
        if let Some(n) = attempt_of(&batch.batch_id)
            && let [item] = batch.deliveries.as_slice()
            && item.channel == crate::model::NotificationChannel::Webhook
            && item.contact_id.is_none()
        {
            return Ok(match self.work_webhook(&org, batch, n, deadline).await? {
                WebhookWork::Deferred => Worked {
                    done: WorkDone::Deferred,
                    recorded: Vec::new(),
                },
                WebhookWork::Nothing => Worked {
                    done: WorkDone::AlreadyClosed,
                    recorded: Vec::new(),
                },
                WebhookWork::Attempted(d) => Worked {
                    done: WorkDone::Recorded,
                    recorded: vec![*d],
                },
            });
        }
        let started = tokio::time::Instant::now();
        // Everything the message needs, read at once: the topic delivery
        // publishes the whole event, the others need only its head (reads that
        // do not grow with the recipients); the contacts are all those the
        // message names (those already settled are read for nothing, rarely).
        let whole = batch.deliveries.iter().any(|i| i.contact_id.is_none());
        let keys: Vec<String> = batch.deliveries.iter().map(|i| i.key()).collect();
        let WorkReads {
            event,
            offer,
            settings,
            ledger,
            contacts,
        } = self
            .store
            .work_reads(&org, &event_id, whole, &offer_id, &keys, &contact_ids)
            .await?;
        let event = event.ok_or_else(|| WorkError::EventNotFound(event_id.clone()))?;
        if event.event_status != Some(EventStatus::Pending) {
            return Ok(Worked {
                done: WorkDone::AlreadyClosed,
                recorded: Vec::new(),
            });
        }
        let offer = offer
            .filter(|o| {
                o.organization_id
                    .as_deref()
                    .is_none_or(|o| o == org.as_str())
            })
            .ok_or_else(|| WorkError::OfferGone(offer_id.clone()))?;

        // Where each named delivery stands now. Every one must be in the
        // ledger under this message's batch: a message that names anything
        // else (forged, or corrupted) is refused whole, and sends nothing.
        let ledger: HashMap<String, Delivery> = ledger.into_iter().map(|d| (d.key(), d)).collect();
        let foreign = keys
            .iter()
            .filter(|k| match ledger.get(*k) {
                None => true,
                Some(d) if d.status == DeliveryStatus::Queued => {
                    d.batch.as_deref() != Some(batch.batch_id.as_str())
                }
                // Settled entries keep their batch; older ones may have none.
                Some(d) => d
                    .batch
                    .as_deref()
                    .is_some_and(|b| b != batch.batch_id.as_str()),
            })
            .count();
        if foreign > 0 {
            tracing::warn!(
                foreign,
                "the message names deliveries that are not in its batch; refused whole"
            );
            return Err(WorkError::Malformed(format!(
                "it names {foreign} deliveries that its batch does not hold"
            )));
        }
        let mut unconfirmed = Vec::new();
        let mut busy = 0;
        let lease = time::Duration::try_from(self.policy.hand_off.sending_lease)
            .unwrap_or(time::Duration::MAX);
        let now = crate::model::event::now_millis();
        let mut queued: HashSet<String> = HashSet::new();
        for d in ledger.into_values() {
            match d.status {
                DeliveryStatus::Queued => {
                    queued.insert(d.key());
                }
                // Taken moments ago: another copy of this message (SQS may deliver
                // one twice) is sending it. Not ours to send or to settle.
                DeliveryStatus::Sending if now - d.time < lease => busy += 1,
                DeliveryStatus::Sending => {
                    let mut d = d;
                    unconfirm(
                        &mut d,
                        "an earlier receive of this message stopped between sending and recording",
                    );
                    unconfirmed.push(d);
                }
                _ => {}
            }
        }
        if !unconfirmed.is_empty() {
            self.store
                .save_deliveries(&org, &event_id, &unconfirmed)
                .await?;
        }
        let wanted: Vec<&crate::ports::WorkItem> = batch
            .deliveries
            .iter()
            .filter(|i| queued.contains(&i.key()))
            .collect();

        // Plan again, for the wanted deliveries only: contacts and settings
        // are read now, and the content rendered now.
        let mut recipient_ids: Vec<String> = Vec::new();
        let mut cc_ids: Vec<String> = Vec::new();
        for item in &wanted {
            let Some(c) = item.contact_id.as_deref() else {
                continue;
            };
            let list = if item.cc {
                &mut cc_ids
            } else {
                &mut recipient_ids
            };
            if !list.iter().any(|r| r == c) {
                list.push(c.to_owned());
            }
        }
        let recipients = self.recipients_from(&org, recipient_ids, cc_ids, contacts);
        let wanted_keys: HashSet<String> = wanted.iter().map(|i| i.key()).collect();
        let (actions, decided) = self.plan(&event, &offer, &settings, &recipients);
        let actions: Vec<Action> = actions
            .into_iter()
            .filter(|a| wanted_keys.contains(&a.key()))
            .collect();
        let mut decided: Vec<Delivery> = decided
            .into_iter()
            .filter(|d| wanted_keys.contains(&d.key()))
            .collect();
        let covered: HashSet<String> = actions
            .iter()
            .map(Action::key)
            .chain(decided.iter().map(Delivery::key))
            .collect();
        for item in wanted.iter().filter(|i| !covered.contains(&i.key())) {
            decided.push(skipped(
                item.channel.clone(),
                item.contact_id.as_deref(),
                "no longer planned: the contact or the organization's channels changed after the request",
            ));
        }
        for d in &mut decided {
            d.batch = Some(batch.batch_id.clone());
        }

        // What needs no send is recorded now (only where still QUEUED); each
        // send is taken from QUEUED by the engine just before it starts.
        let written = self
            .store
            .replace_queued(&org, &event_id, &batch.batch_id, &decided)
            .await
            .all_or_error()?;
        let mut recorded: Vec<Delivery> = decided
            .into_iter()
            .zip(&written)
            .filter_map(|(d, ok)| ok.then_some(d))
            .collect();
        busy += written.iter().filter(|ok| !**ok).count();
        tracing::info!(
            to_send = actions.len(),
            recorded = recorded.len(),
            "sending a work batch"
        );

        let reads = started.elapsed();
        let delivering = tokio::time::Instant::now();
        let delivered = Box::pin(self.deliver(
            &org,
            &event_id,
            actions,
            deadline,
            Announce::Take {
                batch: &batch.batch_id,
            },
        ))
        .await;
        recorded.extend(delivered.recorded);
        busy += delivered.taken_elsewhere;
        let (writing, sending) = (delivered.writing, delivered.sending);
        // A send the quota refused after it was taken goes back to QUEUED,
        // so the message's next receive sends it.
        let back: Vec<Delivery> = delivered
            .held
            .iter()
            .filter(|h| h.announced)
            .map(|h| h.action.queued(&batch.batch_id))
            .collect();
        if !back.is_empty() {
            self.store.save_deliveries(&org, &event_id, &back).await?;
        }
        if let Some(e) = delivered.failure {
            return Err(WorkError::Store(e));
        }
        if let Some(first) = delivered.held.first() {
            let n = delivered.held.len();
            return Err(match first.why {
                Hold::Quota => WorkError::Throttled(n),
                _ => WorkError::OutOfTime(n),
            });
        }
        if busy > 0 {
            // The batch is complete only when all of it is recorded: the other
            // copy completes it, or this message's next receive does.
            return Err(WorkError::InFlightElsewhere(busy));
        }
        let deliver_time = delivering.elapsed();
        let completing = tokio::time::Instant::now();
        let done = match self
            .complete(&org, &event_id, Some(&batch.batch_id))
            .await?
        {
            Some(closed) => WorkDone::Closed(closed.event_status.unwrap_or(EventStatus::Failed)),
            None => WorkDone::Recorded,
        };
        // Where a message's time goes (the ledger writes and provider calls
        // overlap each other inside `deliver`; each is summed over its calls).
        tracing::info!(
            reads_ms = reads.as_millis() as u64,
            deliver_ms = deliver_time.as_millis() as u64,
            ledger_writes_ms = writing.as_millis() as u64,
            provider_calls_ms = sending.as_millis() as u64,
            complete_ms = completing.elapsed().as_millis() as u64,
            deliveries = batch.deliveries.len(),
            "work message timing"
        );
        Ok(Worked { done, recorded })
    }

    /// The last receive failed: every delivery of the message still QUEUED in
    /// its batch is recorded FAILED with the reason, one it left SENDING
    /// becomes UNCONFIRMED, and the batch is completed (closing the event if
    /// it was the last). A message refused as not valid gives up nothing: it
    /// may be forged, and its batch is not its own to close.
    async fn give_up(&self, batch: &WorkBatch, why: &WorkError) -> Result<(), StoreError> {
        let Ok(Ids { org, event_id, .. }) = ids(batch) else {
            return Ok(());
        };
        if matches!(why, WorkError::EventNotFound(_) | WorkError::Malformed(_)) {
            return Ok(());
        }
        let reason = format!(
            "gave up after {} receives of its queue message: {why}",
            self.policy.hand_off.max_receives
        );
        let failed = failed_all(batch, &reason);
        self.store
            .replace_queued(&org, &event_id, &batch.batch_id, &failed)
            .await
            .all_or_error()?;
        let keys: Vec<String> = batch.deliveries.iter().map(|i| i.key()).collect();
        let mut left: Vec<Delivery> = self
            .store
            .deliveries(&org, &event_id, &keys)
            .await?
            .into_iter()
            .filter(|d| {
                d.status == DeliveryStatus::Sending
                    && d.batch.as_deref() == Some(batch.batch_id.as_str())
            })
            .collect();
        for d in &mut left {
            unconfirm(d, "its queue message was abandoned after it was taken");
        }
        if !left.is_empty() {
            self.store.save_deliveries(&org, &event_id, &left).await?;
        }
        tracing::warn!(
            deliveries = batch.deliveries.len(),
            "work message abandoned; its deliveries are recorded FAILED"
        );
        self.complete(&org, &event_id, Some(&batch.batch_id))
            .await?;
        Ok(())
    }
}
