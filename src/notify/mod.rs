//! The use case: resolve the recipients of an offer, plan one delivery per
//! recipient and channel, store the event (PENDING), deliver within the
//! rates and the deadline, then store every delivery's outcome and the final
//! status. It knows nothing of HTTP or AWS: it works through `ports`.
//!
//! The steps live in rooms of their own: `plan` (who gets what), `deliver`
//! (the send engine and what the ledger says when), `hand_off` (the work
//! queue), `resume` (a keyed retry, the sweeper).

mod deliver;
mod dry_run;
mod hand_off;
mod plan;
mod resume;
mod webhook;

pub use crate::channels::topic::{MAX_TOPIC_BYTES, TOPIC_CONTACT_IDS, allowed_topic, topic_body};
pub use resume::{Sweeper, Swept};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::model::event::now_millis;
use crate::model::{
    Contact, ContactId, ContactIdList, CreatedBy, CustomFields, Delivery, DeliveryStatus,
    EntityType, EventStatus, IdempotencyKey, NotificationChannel, NotificationEvent,
    NotificationEventAction, OfferId, OrgId,
};
use crate::ports::{
    Claim, ContactStore, EventStore, IdempotencyRecord, IdempotencyStatus, IdempotencyStore,
    KeyOutcome, OfferStore, StoreError, WorkQueue,
};
use crate::rate::RateLimits;

pub(crate) use crate::channels::{Action, Providers};

pub(crate) use deliver::{Announce, Hold};
pub(crate) use hand_off::failed_all;
pub(crate) use webhook::{WebhookWork, attempt_of, without_webhook};

/// Deliveries listed inline in the event's `info.deliveries` at most; beyond
/// that the ledger items alone hold them (keeps the event far below 400 KB).
pub const MAX_INLINE_DELIVERIES: usize = 100;

/// What a caller asks for, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyCommand {
    pub org_id: OrgId,
    pub offer_id: OfferId,
    /// `None` or empty: every contact of the offer.
    pub contact_ids: Option<ContactIdList>,
    pub created_by: Option<CreatedBy>,
    /// With a key, a repeat within the window answers with the stored event.
    pub idempotency_key: Option<IdempotencyKey>,
    /// When the Lambda will be stopped: every send ends, and the answer
    /// comes, before it.
    pub deadline: Option<tokio::time::Instant>,
    /// Answer what would happen; store, send, queue and claim nothing.
    pub dry_run: bool,
    /// Stored on the event; templates read them as `customFields.NAME`.
    pub custom_fields: Option<CustomFields>,
}

impl NotifyCommand {
    /// Every contact of the offer, no key, no deadline, no creator.
    pub fn new(org_id: OrgId, offer_id: OfferId) -> Self {
        Self {
            org_id,
            offer_id,
            contact_ids: None,
            created_by: None,
            idempotency_key: None,
            deadline: None,
            dry_run: false,
            custom_fields: None,
        }
    }
}

/// How long keys live and hold, how sends fit the deadline, and how long a
/// PENDING event may wait before the sweeper takes it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_window: std::time::Duration,
    /// How long a running request holds its key before a retry may resume it
    /// (default 60 s, above the function's 28 s timeout).
    pub idempotency_lock: std::time::Duration,
    /// Kept free before the deadline for recording the outcome and answering:
    /// every provider call ends before it (default 3 s).
    pub deadline_margin: std::time::Duration,
    /// A send starts only when its call can have at least this long before
    /// the margin (default 2 s).
    pub min_send_time: std::time::Duration,
    /// The longest one provider call may take (default 12 s, the SDK's
    /// operation timeout); near the deadline, the time left bounds it.
    pub send_timeout: std::time::Duration,
    /// The answer is given this long before the deadline at the latest, even
    /// if the store hangs (default 250 ms).
    pub answer_margin: std::time::Duration,
    /// Synchronous runs: how long after its last lease a PENDING event is
    /// taken over by the sweeper (default 5 min; above the longest function
    /// timeout, so no live run is ever swept).
    pub sync_lease: std::time::Duration,
    /// Queued events: the base of their lease (default 1 h), plus three times
    /// the sending estimate of their deliveries.
    pub queue_lease: std::time::Duration,
    /// Times the sweeper resumes an event before it closes it with what is
    /// left FAILED (default 3).
    pub max_sweeps: u32,
    /// Organisation topics must start with this ARN prefix (`TOPIC_ARN_PREFIX`);
    /// none: the SNS channel fails for every organisation.
    pub topic_arn_prefix: Option<String>,
    /// When a request's sends go to the work queue instead of being made at once.
    pub hand_off: HandOff,
}

/// The knobs of the hand-off to the work queue (used only with a queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOff {
    /// The time the synchronous path may spend sending: a share of the API's
    /// 29 s limit (default 50%, 14.5 s). A request whose estimate exceeds it is queued.
    pub sync_budget: std::time::Duration,
    /// A request with more recipients than this is queued whatever the estimate (default 500).
    pub max_sync_recipients: usize,
    /// Deliveries per queue message (default 10): one worker sends them together.
    pub deliveries_per_message: usize,
    /// The queue's `maxReceiveCount`: on that receive a failing message gives
    /// up, records its deliveries as FAILED, and goes on to the DLQ (default 5).
    pub max_receives: u32,
    /// Assumed time of one provider call, for the estimate (default 100 ms).
    pub send_latency: std::time::Duration,
    /// How long a SENDING ledger entry is taken to belong to a live worker
    /// (default 15 min, Lambda's longest timeout). A younger one found by
    /// another receive of its message is left alone (the message is retried
    /// later); an older one is a dead worker's, and becomes UNCONFIRMED.
    pub sending_lease: std::time::Duration,
}

impl Default for HandOff {
    fn default() -> Self {
        Self {
            sync_budget: std::time::Duration::from_millis(14_500),
            max_sync_recipients: 500,
            deliveries_per_message: 10,
            max_receives: 5,
            send_latency: std::time::Duration::from_millis(100),
            sending_lease: std::time::Duration::from_secs(15 * 60),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idempotency_window: std::time::Duration::from_secs(24 * 3600),
            idempotency_lock: std::time::Duration::from_secs(60),
            deadline_margin: std::time::Duration::from_secs(3),
            min_send_time: std::time::Duration::from_secs(2),
            send_timeout: std::time::Duration::from_secs(12),
            answer_margin: std::time::Duration::from_millis(250),
            sync_lease: std::time::Duration::from_secs(5 * 60),
            queue_lease: std::time::Duration::from_secs(3600),
            max_sweeps: 3,
            topic_arn_prefix: None,
            hand_off: HandOff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("offer {0} was not found")]
    OfferNotFound(OfferId),
    #[error("{} {} {} not on offer {offer}", if ids.len() == 1 { "contact" } else { "contacts" }, join(ids), if ids.len() == 1 { "is" } else { "are" })]
    NotOnOffer { offer: OfferId, ids: Vec<ContactId> },
    #[error("offer {0} has no contacts to notify; add contacts to the offer first")]
    NoContacts(OfferId),
    #[error(
        "idempotency key {0} was already used for a different request; use a new key for a new request"
    )]
    KeyReused(IdempotencyKey),
    #[error("a request with idempotency key {0} is still running; retry after it ends")]
    KeyInProgress(IdempotencyKey),
    /// The store did not answer before the Lambda's deadline: the request
    /// answers now rather than be killed without an answer.
    #[error("the Lambda's deadline came before the outcome could be stored")]
    OutOfTime,
    /// Another run (the sweeper) holds the event's lease.
    #[error("event {0} is being finished by another run; retry after it ends")]
    EventBusy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(ids: &[ContactId]) -> String {
    ids.iter()
        .map(ContactId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An answered request: the event, and what this invocation itself recorded
/// (for its metrics: a replay or a resume does not count again what an
/// earlier invocation sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Notified {
    pub event: NotificationEvent,
    pub recorded: Vec<Delivery>,
    /// The answer is a stored event given back for a repeated key.
    pub replay: bool,
}

impl Notified {
    fn fresh(event: NotificationEvent, recorded: Vec<Delivery>) -> Self {
        Self {
            event,
            recorded,
            replay: false,
        }
    }
}

/// The use case as the edges (HTTP, direct invocation) see it.
pub trait NotifyContacts: Send + Sync {
    /// Notifies, and says what this invocation recorded.
    fn notify_counted(
        &self,
        cmd: NotifyCommand,
    ) -> impl Future<Output = Result<Notified, NotifyError>> + Send;

    /// Notifies; the answer is the event.
    fn notify(
        &self,
        cmd: NotifyCommand,
    ) -> impl Future<Output = Result<NotificationEvent, NotifyError>> + Send {
        async move { self.notify_counted(cmd).await.map(|n| n.event) }
    }
}

pub struct Notifier<S> {
    pub store: S,
    /// What each channel sends through.
    pub channels: Providers,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Sends a second per channel (none: unlimited).
    pub rates: RateLimits,
    pub policy: Policy,
    /// The work queue large requests are handed to; `None`: every request is
    /// served synchronously.
    pub queue: Option<Arc<dyn WorkQueue>>,
}

/// The ledger's view of a planned send.
impl Action {
    /// The entry in `status`, for this action's delivery.
    pub(crate) fn entry(&self, status: DeliveryStatus) -> Delivery {
        Delivery::new(self.channel(), self.contact_id(), status)
    }
    /// The record written just before the send.
    pub(crate) fn intent(&self) -> Delivery {
        self.entry(DeliveryStatus::Sending)
    }
    /// The record a worker writes when it takes the delivery to send it now.
    pub(crate) fn taken(&self, batch: &str) -> Delivery {
        let mut d = self.intent();
        d.batch = Some(batch.to_owned());
        d
    }
    /// The record of a delivery handed to work batch `batch`.
    pub(crate) fn queued(&self, batch: &str) -> Delivery {
        let mut d = self.entry(DeliveryStatus::Queued);
        d.batch = Some(batch.to_owned());
        d
    }
    /// The record of a delivery not started, with why.
    pub(crate) fn not_started(&self, why: Hold) -> Delivery {
        let mut d = self.entry(DeliveryStatus::NotStarted);
        d.reason = Some(why.reason().into());
        d
    }
    /// The same key as the `Delivery` this action produces.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}#{}",
            self.channel(),
            self.contact_id().as_deref().unwrap_or("-")
        )
    }
}

pub(crate) fn skipped(
    channel: NotificationChannel,
    contact_id: Option<&str>,
    reason: impl Into<String>,
) -> Delivery {
    let mut d = Delivery::new(
        channel,
        contact_id.map(str::to_owned),
        DeliveryStatus::Skipped,
    );
    d.reason = Some(reason.into());
    d
}

/// A delivery decided FAILED before any send, with why.
pub(crate) fn failed(
    channel: NotificationChannel,
    contact_id: Option<&str>,
    reason: impl Into<String>,
) -> Delivery {
    let mut d = skipped(channel, contact_id, reason);
    d.status = DeliveryStatus::Failed;
    d
}

/// A request read and planned, nothing written yet.
pub(crate) struct Prepared {
    pub(crate) event: NotificationEvent,
    pub(crate) actions: Vec<Action>,
    pub(crate) decided: Vec<Delivery>,
    /// Recipients and cc contacts, for the hand-off decision.
    pub(crate) recipients: usize,
}

/// The recipients, resolved: who gets what.
pub(crate) struct Recipients {
    /// Contact IDs to notify, in request (or offer) order.
    pub(crate) ids: Vec<String>,
    /// Extra email-only recipients from the settings' `ccContactIds`.
    pub(crate) cc_ids: Vec<String>,
    pub(crate) contacts: HashMap<String, Contact>,
    /// Contacts whose stored item exists but cannot be read.
    pub(crate) unreadable: HashSet<String>,
}

/// Counts per channel and status, and the final status of the event.
pub fn summarise(
    deliveries: &[Delivery],
) -> (Map<String, Value>, EventStatus, Vec<NotificationChannel>) {
    let mut per_channel: Map<String, Value> = Map::new();
    let mut used: Vec<NotificationChannel> = Vec::new();
    let (mut sent, mut failed, mut open) = (0usize, 0usize, 0usize);
    for d in deliveries {
        let entry = per_channel
            .entry(d.channel.as_str().to_owned())
            .or_insert_with(|| json!({"sent": 0, "skipped": 0, "failed": 0}));
        let key = match d.status {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Sending | DeliveryStatus::Unconfirmed => "unconfirmed",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::NotStarted => "notStarted",
        };
        entry[key] = json!(entry[key].as_u64().unwrap_or(0) + 1);
        match d.status {
            DeliveryStatus::Sent => sent += 1,
            // Not known to be accepted: the event cannot say DONE.
            DeliveryStatus::Failed | DeliveryStatus::Sending | DeliveryStatus::Unconfirmed => {
                failed += 1
            }
            DeliveryStatus::Queued | DeliveryStatus::NotStarted => open += 1,
            DeliveryStatus::Skipped => continue,
        }
        if !used.contains(&d.channel) {
            used.push(d.channel.clone());
        }
    }
    // PENDING while something is still to be sent. DONE: something went out
    // and nothing attempted failed. Nothing sent at all (every recipient
    // skipped) is FAILED too: nobody was notified.
    let status = if open > 0 {
        EventStatus::Pending
    } else if failed == 0 && sent > 0 {
        EventStatus::Done
    } else {
        EventStatus::Failed
    };
    (per_channel, status, used)
}

impl<S> NotifyContacts for Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    async fn notify_counted(&self, cmd: NotifyCommand) -> Result<Notified, NotifyError> {
        // Whatever the store does, the answer comes before the deadline: a
        // run cut here is like a killed one (a retry with the key resumes it).
        let Some(deadline) = cmd.deadline else {
            return self.keyed(cmd).await;
        };
        let answer_by = deadline
            .checked_sub(self.policy.answer_margin)
            .unwrap_or(deadline);
        match tokio::time::timeout_at(answer_by, self.keyed(cmd)).await {
            Ok(result) => result,
            Err(_) => Err(NotifyError::OutOfTime),
        }
    }
}

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    /// The idempotency key's part: claim it, replay, refuse, or resume.
    async fn keyed(&self, cmd: NotifyCommand) -> Result<Notified, NotifyError> {
        if cmd.dry_run {
            // Checked like a real request, but no key is claimed: a dry run
            // never stands in for the real one.
            return self.dry_run(&cmd).await;
        }
        let Some(key) = cmd.idempotency_key.clone() else {
            return self.run(&cmd, new_event_id(), false).await;
        };
        let org = &cmd.org_id;
        let now_ms = epoch_ms();
        let lock_ms = self.policy.idempotency_lock.as_millis() as i64;
        let claim = IdempotencyRecord {
            request_hash: request_hash(&cmd),
            event_id: new_event_id(),
            status: IdempotencyStatus::InProgress,
            locked_until: now_ms + lock_ms,
            expires_at: now_ms / 1000 + self.policy.idempotency_window.as_secs() as i64,
        };
        let (event_id, resume) = match self.store.claim(org, &key, &claim, now_ms / 1000).await? {
            Claim::Claimed => (claim.event_id.clone(), false),
            // A retried claim whose first attempt did land (it timed out on the way back): ours.
            Claim::Existing(held) if held.event_id == claim.event_id => {
                (claim.event_id.clone(), false)
            }
            Claim::Existing(held) if held.request_hash != claim.request_hash => {
                return Err(NotifyError::KeyReused(key));
            }
            Claim::Existing(held) if held.status == IdempotencyStatus::Completed => {
                tracing::info!(event_id = %held.event_id, "idempotent repeat: answering with the stored event");
                return match self.store.event(org, &held.event_id, true).await? {
                    Some(event) => Ok(Notified {
                        event,
                        recorded: Vec::new(),
                        replay: true,
                    }),
                    None => Err(NotifyError::Store(StoreError::Malformed {
                        op: "replay idempotent request",
                        detail: "the key's event is missing".into(),
                    })),
                };
            }
            Claim::Existing(held) if held.locked_until > now_ms => {
                return Err(NotifyError::KeyInProgress(key));
            }
            Claim::Existing(held) => {
                // The first attempt stopped or died: resume its event, once.
                if !self
                    .store
                    .take_over(org, &key, held.locked_until, now_ms + lock_ms)
                    .await?
                {
                    return Err(NotifyError::KeyInProgress(key));
                }
                tracing::info!(event_id = %held.event_id, "resuming an interrupted request");
                (held.event_id, true)
            }
        };
        let result = self.run(&cmd, event_id, resume).await;
        let outcome = match &result {
            Ok(n) if n.event.event_status != Some(EventStatus::Pending) => KeyOutcome::Completed,
            // Handed to the queue: the workers finish it; a repeat answers with the event.
            Ok(n) if is_queued(&n.event) => KeyOutcome::Completed,
            _ => KeyOutcome::Released,
        };
        if let Err(e) = self.store.finish(org, &key, outcome).await {
            // The record stays in progress until its lock runs out; a repeat then
            // resumes, finds every delivery recorded, and completes it.
            tracing::warn!(error = %crate::error_chain(&e), "could not record the idempotency key's outcome");
        }
        result
    }

    /// Resolves, plans and delivers the event `event_id`; with `resume`, the
    /// event may already exist: it is then finished from its own recipient
    /// list and ledger, sending only what was not sent.
    async fn run(
        &self,
        cmd: &NotifyCommand,
        event_id: String,
        resume: bool,
    ) -> Result<Notified, NotifyError> {
        let span = tracing::info_span!("event", event_id = %event_id);
        if resume
            && let Some((stored, ledger)) = self
                .store
                .event_with_deliveries(&cmd.org_id, &event_id)
                .instrument(span.clone())
                .await?
                .map(|(e, ledger)| (e, without_webhook(ledger)))
        {
            return Box::pin(
                self.resume(stored, ledger, cmd.deadline, resume::Trigger::KeyedRetry)
                    .instrument(span),
            )
            .await;
        }
        let Prepared {
            mut event,
            actions,
            decided,
            recipients,
        } = self.prepare(cmd, &event_id).await?;
        let now = event.timestamp.unwrap_or_else(now_millis);

        // From here on every log line names the event.
        async move {
            if let Some(queue) = self.queue.as_deref()
                && self.should_queue(recipients, &actions)
            {
                return Box::pin(self.hand_off(
                    queue,
                    event,
                    actions,
                    decided,
                    cmd.idempotency_key.as_ref(),
                ))
                .await;
            }
            // A PENDING event always carries its lease: if this run dies, the
            // sweeper (or a keyed retry) finishes it after the lease.
            set_lease(&mut event, now + self.policy.sync_lease, 0);
            record_key(&mut event, cmd.idempotency_key.as_ref());
            match self.store.create_event(&event).await {
                // The event ID is new to this run: a conflict is our own earlier
                // attempt that landed after timing out.
                Err(StoreError::Conflict { .. }) => {}
                other => other?,
            }
            let none = HashSet::new();
            Box::pin(self.deliver_and_record(
                event,
                actions,
                decided,
                (Vec::new(), &none),
                cmd.deadline,
            ))
            .await
        }
        .instrument(span)
        .await
    }

    /// What a request would do, read and planned but nothing written: the
    /// offer and settings (read in parallel), the recipients (every check of
    /// the request made), the event as it would be stored, and the plan.
    pub(crate) async fn prepare(
        &self,
        cmd: &NotifyCommand,
        event_id: &str,
    ) -> Result<Prepared, NotifyError> {
        let (offer, settings) = tokio::try_join!(
            self.store.offer(&cmd.org_id, &cmd.offer_id),
            self.store.settings(&cmd.org_id)
        )?;
        let offer = offer
            .filter(|o| {
                o.organization_id
                    .as_deref()
                    .is_none_or(|org| org == cmd.org_id.as_str())
            })
            .ok_or_else(|| NotifyError::OfferNotFound(cmd.offer_id.clone()))?;
        let recipients = self.resolve(cmd, &offer, &settings).await?;

        let now = now_millis();
        let mut event = NotificationEvent {
            action: Some(NotificationEventAction::NotifyContacts),
            entity_type: Some(EntityType::Offer),
            entity_id: Some(offer.id.clone()),
            entity_name: offer.name.clone(),
            entity_status: offer.status.clone(),
            partner: offer.partner.clone(),
            organization_id: Some(cmd.org_id.to_string()),
            event_id: Some(event_id.to_owned()),
            event_status: Some(EventStatus::Pending),
            contact_ids: Some(recipients.ids.clone()),
            cc_contact_ids: (!recipients.cc_ids.is_empty()).then(|| recipients.cc_ids.clone()),
            channels: Some(settings.effective_channels()),
            created_by: cmd.created_by.clone(),
            custom_fields: cmd.custom_fields.as_ref().map(|c| c.as_map().clone()),
            is_action_item: Some(false),
            require_audit: Some(false),
            timestamp: Some(now),
            last_update_time: Some(now),
            ..NotificationEvent::default()
        };
        let (title, message) = crate::channels::email::event_text(
            &offer,
            &settings,
            event.custom_fields.as_ref(),
            event_id,
            recipients.ids.len(),
        );
        event.title = Some(title);
        event.message = Some(message);
        let (actions, decided) = self.plan(&event, &offer, &settings, &recipients);
        webhook::note_target(&mut event, &settings);
        event.contact_emails = Some(
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Email { email, .. } => Some(email.to.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
        );

        let recipients = recipients.ids.len() + recipients.cc_ids.len();
        Ok(Prepared {
            event,
            actions,
            decided,
            recipients,
        })
    }

    /// Delivers with the send engine, then stores the outcome. What the
    /// deadline or the provider's quota kept from starting goes to the work
    /// queue when there is one, else is recorded NOT_STARTED for a retry.
    /// `earlier` holds what earlier runs recorded that stays (a resume), and
    /// the key of every entry the ledger already holds.
    pub(crate) async fn deliver_and_record(
        &self,
        mut event: NotificationEvent,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        (settled, entries): (Vec<Delivery>, &HashSet<String>),
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Notified, NotifyError> {
        let (org, event_id) = event_ids(&event)?;
        tracing::info!(
            recipients = event.contact_ids.as_ref().map_or(0, Vec::len),
            planned = actions.len(),
            decided = decided.len(),
            "event stored, delivering"
        );
        let mut fresh: Vec<Delivery> = Vec::new();
        if !decided.is_empty() {
            self.store
                .save_deliveries(&org, &event_id, &decided)
                .await?;
            fresh.extend(decided);
        }
        let delivering = tokio::time::Instant::now();
        let delivered = Box::pin(self.deliver(
            &org,
            &event_id,
            actions,
            deadline,
            Announce::Intent { entries },
        ))
        .await;
        // Where the time goes (ledger writes and provider calls overlap; each
        // is summed over its calls).
        tracing::info!(
            deliver_ms = delivering.elapsed().as_millis() as u64,
            ledger_writes_ms = delivered.writing.as_millis() as u64,
            provider_calls_ms = delivered.sending.as_millis() as u64,
            "delivered"
        );
        fresh.extend(delivered.recorded);
        if let Some(e) = delivered.failure {
            // The event stays PENDING with its lease; what was not started has
            // no intent, so a keyed retry or the sweeper sends it. A send the
            // provider refused (quota) after its intent was written is put back
            // too, if the store lets us: it must not look as if it went out.
            let back: Vec<Delivery> = delivered
                .held
                .iter()
                .filter(|h| h.announced)
                .map(|h| h.action.not_started(h.why))
                .collect();
            if !back.is_empty()
                && let Err(undo) = self.store.save_deliveries(&org, &event_id, &back).await
            {
                tracing::warn!(error = %crate::error_chain(&undo), "could not put back sends that did not go out");
            }
            return Err(e.into());
        }
        let held = delivered.held;
        if !held.is_empty()
            && let Some(queue) = self.queue.as_deref()
        {
            let mut all = settled;
            all.extend(fresh.iter().cloned());
            let actions = held.into_iter().map(|h| h.action).collect();
            let mut n = Box::pin(self.hand_off_rest(queue, event, all, actions)).await?;
            fresh.append(&mut n.recorded);
            n.recorded = fresh;
            return Ok(n);
        }
        if !held.is_empty() {
            // On record, so the ledger says what became of everyone; a retry
            // with the same key (or the sweeper) sends them.
            let not_started: Vec<Delivery> =
                held.iter().map(|h| h.action.not_started(h.why)).collect();
            self.store
                .save_deliveries(&org, &event_id, &not_started)
                .await?;
            fresh.extend(not_started);
        }
        let mut all = settled;
        all.extend(fresh.iter().cloned());
        let status = conclude(&mut event, &all);
        if status == EventStatus::Pending {
            let sweeps = sweeps(&event);
            set_lease(&mut event, now_millis() + self.policy.sync_lease, sweeps);
        }
        let webhook = status != EventStatus::Pending && self.owe_webhook(&org, &event).await?;
        self.store.finish_event(&event).await?;
        tracing::info!(status = %status, "event finished");
        if webhook && let Some(d) = self.dispatch_webhook(&org, &event, deadline).await {
            fresh.push(d);
        }
        Ok(Notified::fresh(event, fresh))
    }
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn epoch_ms() -> i64 {
    crate::model::event::epoch_ms(OffsetDateTime::now_utc())
}

/// What a request asks for, independent of ID order and duplicates: the same
/// key with another hash is another request.
pub fn request_hash(cmd: &NotifyCommand) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<&str> = cmd
        .contact_ids
        .iter()
        .flat_map(|l| l.as_slice())
        .map(ContactId::as_str)
        .collect();
    ids.sort_unstable();
    let mut canonical = format!("offer={}\ncontacts={}", cmd.offer_id, ids.join(","));
    if let Some(c) = &cmd.custom_fields {
        // Sorted by name: the same fields, the same text.
        let sorted: std::collections::BTreeMap<_, _> = c.as_map().iter().collect();
        canonical.push_str(&format!(
            "\ncustomFields={}",
            serde_json::to_string(&sorted).unwrap_or_default()
        ));
    }
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The organisation and ID of an event the use case built or read.
pub(crate) fn event_ids(event: &NotificationEvent) -> Result<(OrgId, String), StoreError> {
    let org = event
        .organization_id
        .as_deref()
        .and_then(|o| OrgId::parse(o).ok());
    match (org, event.event_id.clone()) {
        (Some(org), Some(id)) => Ok((org, id)),
        _ => Err(StoreError::Malformed {
            op: "use event",
            detail: "event has no valid organizationID or eventID".into(),
        }),
    }
}

/// `info.deliveryMode` of an event handed to the work queue.
pub const QUEUED_MODE: &str = "QUEUED";

pub(crate) fn is_queued(event: &NotificationEvent) -> bool {
    event
        .info
        .as_ref()
        .and_then(|i| i.get("deliveryMode"))
        .and_then(Value::as_str)
        == Some(QUEUED_MODE)
}

/// When the sweeper may take a PENDING event over (`info.resumeAfter`).
pub fn resume_after(event: &NotificationEvent) -> Option<OffsetDateTime> {
    let text = event.info.as_ref()?.get("resumeAfter")?.as_str()?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The text of `info.resumeAfter`, as stored (the lease's compare-and-set value).
pub(crate) fn lease_text(event: &NotificationEvent) -> Option<String> {
    event
        .info
        .as_ref()?
        .get("resumeAfter")?
        .as_str()
        .map(str::to_owned)
}

/// How many times the sweeper resumed the event (`info.sweeps`).
pub(crate) fn sweeps(event: &NotificationEvent) -> u32 {
    event
        .info
        .as_ref()
        .and_then(|i| i.get("sweeps"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32
}

/// Sets a PENDING event's lease: `info.resumeAfter` and `info.sweeps`.
pub fn set_lease(event: &mut NotificationEvent, until: OffsetDateTime, sweeps: u32) {
    let text = until
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let info = event.info.get_or_insert_with(Map::new);
    info.insert("resumeAfter".into(), json!(text));
    if sweeps > 0 {
        info.insert("sweeps".into(), json!(sweeps));
    }
}

/// Names the request's idempotency key in `info.idempotencyKey`, so that the
/// sweeper holds the key too while it resumes the event (no keyed retry
/// resumes it at the same time).
pub(crate) fn record_key(event: &mut NotificationEvent, key: Option<&IdempotencyKey>) {
    if let Some(key) = key {
        event
            .info
            .get_or_insert_with(Map::new)
            .insert("idempotencyKey".into(), json!(key.as_str()));
    }
}

/// The key an event was created under, if any.
pub(crate) fn event_key(event: &NotificationEvent) -> Option<IdempotencyKey> {
    let text = event.info.as_ref()?.get("idempotencyKey")?.as_str()?;
    IdempotencyKey::parse(text).ok()
}

/// A delivery found SENDING by a later run: it may have gone out, so it is
/// not sent again.
pub(crate) fn unconfirm(d: &mut Delivery, why: &str) {
    d.status = DeliveryStatus::Unconfirmed;
    d.reason = Some(format!(
        "{why}; not sent again, so it reached the recipient at most once"
    ));
    d.time = now_millis();
}

/// Writes the outcome into the event: per-channel counts, the deliveries
/// inline (or, for a large event, the ones that did not go out), the status
/// (PENDING while any is QUEUED or NOT_STARTED). Keeps what `info` already
/// holds (the queue figures, opens, the lease).
pub(crate) fn conclude(event: &mut NotificationEvent, recorded: &[Delivery]) -> EventStatus {
    let (summary, status, used) = summarise(recorded);
    let not_started = recorded
        .iter()
        .filter(|d| d.status == DeliveryStatus::NotStarted)
        .count();
    let info = event.info.get_or_insert_with(Map::new);
    info.insert("deliverySummary".into(), Value::Object(summary));
    info.insert("deliveryCount".into(), json!(recorded.len()));
    if not_started > 0 {
        info.insert("deliveriesNotStarted".into(), json!(not_started));
    } else {
        info.remove("deliveriesNotStarted");
    }
    if status != EventStatus::Pending {
        info.remove("resumeAfter");
    }
    if recorded.len() <= MAX_INLINE_DELIVERIES {
        info.insert(
            "deliveries".into(),
            serde_json::to_value(recorded).unwrap_or(Value::Null),
        );
    } else {
        let problems: Vec<&Delivery> = recorded
            .iter()
            .filter(|d| !matches!(d.status, DeliveryStatus::Sent | DeliveryStatus::Skipped))
            .take(MAX_INLINE_DELIVERIES)
            .collect();
        if !problems.is_empty() {
            info.insert(
                "failedDeliveries".into(),
                serde_json::to_value(problems).unwrap_or(Value::Null),
            );
        }
    }
    event.channels = Some(used);
    event.event_status = Some(status.clone());
    event.last_update_time = Some(now_millis());
    status
}

impl<S: crate::read::EventReader> crate::read::EventReader for Notifier<S> {
    fn list_events(
        &self,
        org: &OrgId,
        q: &crate::read::ListQuery,
    ) -> impl Future<Output = Result<crate::read::EventList, StoreError>> + Send {
        self.store.list_events(org, q)
    }
    fn count_events(
        &self,
        org: &OrgId,
        scope: &crate::read::Scope,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        self.store.count_events(org, scope)
    }
    fn event_messages(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError>> + Send
    {
        self.store.event_messages(org, event_id)
    }
    fn delivery(
        &self,
        org: &OrgId,
        event_id: &str,
        channel: &str,
        contact: &str,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send {
        self.store.delivery(org, event_id, channel, contact)
    }
}

impl<S: crate::feedback::FeedbackTracker> crate::feedback::FeedbackTracker for Notifier<S> {
    fn apply_feedback(
        &self,
        f: &crate::feedback::Feedback,
    ) -> impl Future<Output = Result<crate::feedback::Applied, StoreError>> + Send {
        self.store.apply_feedback(f)
    }
    fn apply_sms_report(
        &self,
        r: &crate::feedback::SmsReport,
    ) -> impl Future<Output = Result<crate::feedback::Applied, StoreError>> + Send {
        self.store.apply_sms_report(r)
    }
}

impl<S: crate::tracking::OpenTracker> crate::tracking::OpenTracker for Notifier<S> {
    fn record_open(
        &self,
        open: &crate::tracking::Open,
    ) -> impl Future<Output = Result<crate::tracking::Recorded, StoreError>> + Send {
        self.store.record_open(open)
    }
}

/// How the edges should present an error: the caller's fault, a missing
/// thing, or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    /// The idempotency key belongs to another request (HTTP 422).
    KeyReused,
    /// The idempotency key's request is still running (HTTP 409).
    KeyInProgress,
    Internal,
}

impl NotifyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NotifyError::OfferNotFound(_) => ErrorKind::NotFound,
            NotifyError::NotOnOffer { .. } | NotifyError::NoContacts(_) => ErrorKind::BadRequest,
            NotifyError::KeyReused(_) => ErrorKind::KeyReused,
            NotifyError::KeyInProgress(_) | NotifyError::EventBusy(_) => ErrorKind::KeyInProgress,
            NotifyError::OutOfTime | NotifyError::Store(_) => ErrorKind::Internal,
        }
    }
}
