//! What the use case needs from the outside world, split by capability, so a
//! test can hand it in-memory or deliberately failing implementations.
//! The AWS implementations live in `crate::aws`.

use std::future::Future;

use crate::model::{
    Contact, ContactId, Delivery, IdempotencyKey, NotificationChannel, NotificationEvent,
    NotificationSettings, Offer, OfferId, OrgId,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A storage call that did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the call (after the SDK's retries).
    #[error("{op} failed")]
    Unavailable {
        op: &'static str,
        #[source]
        source: BoxError,
    },
    /// An item was read but does not have the shape of docs/contract.md.
    #[error("{op}: stored item is malformed: {detail}")]
    Malformed { op: &'static str, detail: String },
    /// A batch call still had unprocessed entries after every retry.
    #[error("{op}: {left} entries still unprocessed after {attempts} attempts")]
    Incomplete {
        op: &'static str,
        left: usize,
        attempts: u32,
    },
    /// A conditional write found the item in another state than expected.
    #[error("{op}: condition failed")]
    Conflict { op: &'static str },
}

/// A provider's refusal to send one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SendError {
    /// The provider's error code (e.g. `MessageRejected`), or a transport class.
    pub code: String,
    /// The provider's message; it may name the recipient, so it is stored with
    /// the delivery but never logged.
    pub message: String,
    /// True when sending again later cannot help (bad address, rejected content).
    pub permanent: bool,
    /// True when the provider may have accepted the message all the same (a
    /// timeout, a connection lost mid-request): it must not be sent again.
    pub outcome_unknown: bool,
    /// True when the account's quota or rate refused it (after the SDK's
    /// retries), not the recipient: it is put back to be sent later, never
    /// recorded FAILED.
    pub throttled: bool,
    /// True when the target answered that it is gone for good (a revoked
    /// Slack hook, an archived channel, a webhook's 410): the organisation's
    /// settings mark it disabled, so later events skip it until it is fixed.
    pub disables_target: bool,
    /// How long the target asked us to wait (`Retry-After`), when it did.
    pub retry_after: Option<std::time::Duration>,
}

impl SendError {
    /// A refusal for which sending the same message again cannot help.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            permanent: true,
            outcome_unknown: false,
            throttled: false,
            disables_target: false,
            retry_after: None,
        }
    }
    /// A refusal that a later attempt may overcome.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            ..Self::permanent(code, message)
        }
    }
    /// No answer that says whether the provider took the message.
    pub fn unknown(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            outcome_unknown: true,
            ..Self::transient(code, message)
        }
    }
}

pub trait OfferStore: Send + Sync {
    /// The offer, read under the organisation's key; `None` when it does not exist there.
    fn offer(
        &self,
        org: &OrgId,
        offer: &OfferId,
    ) -> impl Future<Output = Result<Option<Offer>, StoreError>> + Send;
    /// The offer without its contact list: what rendering needs, read without
    /// the list's size (a worker reads it once per queue message).
    fn offer_details(
        &self,
        org: &OrgId,
        offer: &OfferId,
    ) -> impl Future<Output = Result<Option<Offer>, StoreError>> + Send;
    /// The organisation's notification settings (the defaults when it has none).
    fn settings(
        &self,
        org: &OrgId,
    ) -> impl Future<Output = Result<NotificationSettings, StoreError>> + Send;
    /// Marks the settings' target of `channel` (SLACK, MICROSOFT_TEAMS,
    /// WEBHOOK) disabled with `reason`, when the settings still name the
    /// target `name` (a target set up since is left alone): later events
    /// skip it, saying why, until someone removes the mark.
    fn disable_target(
        &self,
        org: &OrgId,
        channel: &NotificationChannel,
        name: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The contacts found among the IDs asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contacts {
    pub found: Vec<Contact>,
    /// IDs whose stored item exists but cannot be read as a contact (another
    /// writer's data): their deliveries fail with a reason; nothing of the
    /// item is kept or logged.
    pub unreadable: Vec<String>,
}

pub trait ContactStore: Send + Sync {
    /// The contacts of `org` among `ids` (no duplicates in `ids`); IDs with no
    /// contact in that organisation are simply absent from the answer.
    fn contacts(
        &self,
        org: &OrgId,
        ids: &[ContactId],
    ) -> impl Future<Output = Result<Contacts, StoreError>> + Send;
}

/// Everything a worker reads for one queue message.
#[derive(Debug, Clone, Default)]
pub struct WorkReads {
    /// The event: its head, or the whole of it when asked.
    pub event: Option<NotificationEvent>,
    /// The offer's details (without its contact list).
    pub offer: Option<Offer>,
    pub settings: NotificationSettings,
    /// The ledger entries asked for that exist.
    pub ledger: Vec<Delivery>,
    pub contacts: Contacts,
}

/// A worker's reads, in as few calls as the store can make them. The default
/// makes the five reads side by side; DynamoDB makes two BatchGetItem calls.
pub trait WorkStore: OfferStore + ContactStore + EventStore {
    /// The event (whole when `whole`, else its head), the offer's details,
    /// the settings, the ledger entries under `keys` and the contacts `ids`.
    fn work_reads(
        &self,
        org: &OrgId,
        event_id: &str,
        whole: bool,
        offer: &OfferId,
        keys: &[String],
        ids: &[ContactId],
    ) -> impl Future<Output = Result<WorkReads, StoreError>> + Send {
        async move {
            let contacts = async {
                if ids.is_empty() {
                    Ok(Contacts::default())
                } else {
                    self.contacts(org, ids).await
                }
            };
            let (event, offer, settings, ledger, contacts) = futures::try_join!(
                self.event(org, event_id, whole),
                self.offer_details(org, offer),
                self.settings(org),
                self.deliveries(org, event_id, keys),
                contacts
            )?;
            Ok(WorkReads {
                event,
                offer,
                settings,
                ledger,
                contacts,
            })
        }
    }
}

/// The state of one idempotency key (scoped to the organisation, docs/contract.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// Hash of what was asked (offer, contact IDs): a different request with the same key is refused.
    pub request_hash: String,
    /// The event this key's request creates or created.
    #[serde(rename = "eventID")]
    pub event_id: String,
    pub status: IdempotencyStatus,
    /// Until when (epoch ms) a running request holds the key; past it, a retry may resume.
    pub locked_until: i64,
    /// When (epoch seconds) the key is forgotten; also DynamoDB's TTL attribute.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IdempotencyStatus {
    InProgress,
    Completed,
}

/// The answer to claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (or expired): the caller now holds it.
    Claimed,
    /// The key is held or was used: here is its live record.
    Existing(IdempotencyRecord),
}

pub trait IdempotencyStore: Send + Sync {
    /// Stores `record` unless a live (unexpired at `now_s`) record holds the key.
    fn claim(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        record: &IdempotencyRecord,
        now_s: i64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    /// Takes over an in-progress record whose lock ran out: succeeds only if
    /// it still has `previous_lock` (so two retries cannot both resume).
    fn take_over(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        previous_lock: i64,
        locked_until: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The sweeper's hold on the key of event `event_id`: locks an
    /// in-progress key whose lock ran out (so no keyed retry resumes the
    /// event at the same time), says `Free` for a key that is completed, gone
    /// or now another request's (no retry will resume this event), `Busy` when
    /// a run holds it now.
    fn hold_for_sweep(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        event_id: &str,
        now_ms: i64,
        locked_until: i64,
    ) -> impl Future<Output = Result<KeyHold, StoreError>> + Send;
    /// Marks the key's request as done (or frees its lock at once with `Released`).
    fn finish(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        outcome: KeyOutcome,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The sweeper's answer for an event's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHold {
    /// The sweeper now holds the key's lock.
    Held,
    /// Completed or forgotten: nobody will resume the event with it.
    Free,
    /// A request holds the key right now.
    Busy,
}

/// How a keyed request ended, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// The event is complete: repeats get it back.
    Completed,
    /// The request stopped early (an error, or the deadline): a repeat may resume at once.
    Released,
}

pub trait EventStore: Send + Sync {
    /// Stores a new event; fails with `Conflict` when its ID is taken.
    fn create_event(
        &self,
        event: &NotificationEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores the delivery ledger of an event.
    fn save_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces a stored event with its final state.
    fn finish_event(
        &self,
        event: &NotificationEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A stored event and its ledger, when the event exists.
    fn event_with_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError>> + Send;

    /// The stored event alone (a consistent read), when it exists. With
    /// `lists` false, without `contactIds` and `contactEmails`, which grow
    /// with the recipients (a worker reads it once per queue message).
    fn event(
        &self,
        org: &OrgId,
        event_id: &str,
        lists: bool,
    ) -> impl Future<Output = Result<Option<NotificationEvent>, StoreError>> + Send;
    /// The ledger entries of `keys` (`Delivery::key`) that exist (a consistent read).
    fn deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;
    /// Writes each delivery only where the ledger holds it as `QUEUED` in
    /// work batch `batch`: the answer says, per delivery in order, whether it
    /// was written. This is how a worker takes a queued delivery, so two
    /// workers never both send it, and no message can make a worker send (or
    /// fail) what the request did not queue in that message's batch.
    fn replace_queued(
        &self,
        org: &OrgId,
        event_id: &str,
        batch: &str,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Replaced> + Send;
    /// Removes ledger entries (best effort, after an intent write whose answer
    /// was an error: whatever of it landed must not look like a send).
    fn forget_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Announces sends about to start (the synchronous path's intents, each
    /// `SENDING`), with outcomes gathered so far riding along, in one write.
    /// Once it succeeds, every intent reads back `SENDING` from
    /// `event_with_deliveries` until a later entry for its key is saved. The
    /// default saves them as entries; a store may keep the group as one item.
    fn announce_sends(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
        riders: &[Delivery],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let all: Vec<Delivery> = intents.iter().chain(riders).cloned().collect();
            self.save_deliveries(org, event_id, &all).await
        }
    }
    /// Takes back an announcement whose write answered with an error (best
    /// effort: whatever of it landed must not look like a send). `intents`
    /// are the ones given to `announce_sends`.
    fn withdraw_sends(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let keys: Vec<String> = intents.iter().map(Delivery::key).collect();
            self.forget_deliveries(org, event_id, &keys).await
        }
    }
    /// Records the queue messages (work batches) of a handed-off event, unless
    /// they are already recorded.
    fn open_batches(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_ids: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Marks one work batch as finished, once: says whether this call removed
    /// it and how many batches are still open.
    fn complete_batch(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> impl Future<Output = Result<BatchProgress, StoreError>> + Send;
    /// Replaces a PENDING event with its final state; `false` when it is no
    /// longer PENDING (another worker closed it first).
    fn close_event(
        &self,
        event: &NotificationEvent,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// PENDING events of every organisation whose `info.resumeAfter` is past
    /// (at most `limit`), and when the oldest PENDING event was created: the
    /// sweeper's view.
    fn stale_events(
        &self,
        now: time::OffsetDateTime,
        limit: usize,
    ) -> impl Future<Output = Result<StaleEvents, StoreError>> + Send;
    /// Moves a PENDING event's lease to `to` (`info.resumeAfter`) with
    /// `info.sweeps` = `sweeps`, only if it still says `from`: whoever moves
    /// it resumes the event; `false` when another did first, or it is closed.
    fn move_lease(
        &self,
        org: &OrgId,
        event_id: &str,
        from: Option<&str>,
        to: time::OffsetDateTime,
        sweeps: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// PENDING events past their lease, for the sweeper.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaleEvents {
    pub stale: Vec<(OrgId, String)>,
    /// Creation time (epoch ms) of the oldest PENDING event, stale or not.
    pub oldest_pending_ms: Option<i64>,
}

/// What became of each delivery of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The ledger does not hold it QUEUED in that batch: not written.
    NotQueued,
    /// The store failed; whether it landed is unknown.
    Failed,
}

/// The answer to `replace_queued`: per delivery, in order, what became of
/// it, and the first failure when there was one.
#[derive(Debug)]
pub struct Replaced {
    pub written: Vec<Written>,
    pub failure: Option<StoreError>,
}

impl Replaced {
    /// Which were written, or the failure when any write failed.
    pub fn all_or_error(self) -> Result<Vec<bool>, StoreError> {
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.written.iter().map(|w| *w == Written::Yes).collect()),
        }
    }
}

/// Where a handed-off event stands after a batch completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProgress {
    /// This call removed the batch (false: an earlier delivery of the message did).
    pub removed: bool,
    /// Batches still open; at 0 the event can be closed.
    pub remaining: usize,
}

/// One queued delivery: its channel and, except for a topic, its contact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkItem {
    pub channel: crate::model::NotificationChannel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// The contact gets a copy as one of the settings' `ccContactIds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cc: bool,
}

impl WorkItem {
    /// The same key as the `Delivery` it becomes.
    pub fn key(&self) -> String {
        format!(
            "{}#{}",
            self.channel,
            self.contact_id.as_deref().unwrap_or("-")
        )
    }
}

/// The body of one work-queue message: which deliveries of which event one
/// worker sends together. IDs only: no address, number or text leaves the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkBatch {
    #[serde(rename = "organizationID")]
    pub organization_id: String,
    #[serde(rename = "eventID")]
    pub event_id: String,
    pub offer_id: String,
    pub batch_id: String,
    pub deliveries: Vec<WorkItem>,
    /// Not to be worked before this time (epoch ms): a webhook's scheduled
    /// retry. The queue delays the message by up to 15 minutes at a time; a
    /// worker that receives it early sends it on again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
}

/// The work queue (SQS in production). Object-safe, so the use case can hold
/// one optionally.
pub trait WorkQueue: Send + Sync {
    /// Enqueues the batches; the answer says, per batch in order, whether it
    /// was queued, or the provider's refusal.
    fn enqueue<'a>(
        &'a self,
        batches: &'a [WorkBatch],
    ) -> futures::future::BoxFuture<'a, Vec<Result<(), SendError>>>;
}

// A shared implementation (an `Arc`, a reference) serves as well as an owned one.
macro_rules! delegate {
    ($($wrapper:ty),+) => {$(
        impl<X: OfferStore + ?Sized> OfferStore for $wrapper {
            fn offer(&self, org: &OrgId, offer: &OfferId) -> impl Future<Output = Result<Option<Offer>, StoreError>> + Send {
                (**self).offer(org, offer)
            }
            fn offer_details(&self, org: &OrgId, offer: &OfferId) -> impl Future<Output = Result<Option<Offer>, StoreError>> + Send {
                (**self).offer_details(org, offer)
            }
            fn settings(&self, org: &OrgId) -> impl Future<Output = Result<NotificationSettings, StoreError>> + Send {
                (**self).settings(org)
            }
            fn disable_target(&self, org: &OrgId, channel: &NotificationChannel, name: &str, reason: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).disable_target(org, channel, name, reason)
            }
        }
        impl<X: ContactStore + ?Sized> ContactStore for $wrapper {
            fn contacts(&self, org: &OrgId, ids: &[ContactId]) -> impl Future<Output = Result<Contacts, StoreError>> + Send {
                (**self).contacts(org, ids)
            }
        }
        impl<X: EventStore + ?Sized> EventStore for $wrapper {
            fn create_event(&self, event: &NotificationEvent) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).create_event(event)
            }
            fn save_deliveries(&self, org: &OrgId, event_id: &str, deliveries: &[Delivery]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).save_deliveries(org, event_id, deliveries)
            }
            fn finish_event(&self, event: &NotificationEvent) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).finish_event(event)
            }
            fn event_with_deliveries(&self, org: &OrgId, event_id: &str) -> impl Future<Output = Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError>> + Send {
                (**self).event_with_deliveries(org, event_id)
            }
            fn event(&self, org: &OrgId, event_id: &str, lists: bool) -> impl Future<Output = Result<Option<NotificationEvent>, StoreError>> + Send {
                (**self).event(org, event_id, lists)
            }
            fn deliveries(&self, org: &OrgId, event_id: &str, keys: &[String]) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send {
                (**self).deliveries(org, event_id, keys)
            }
            fn replace_queued(&self, org: &OrgId, event_id: &str, batch: &str, deliveries: &[Delivery]) -> impl Future<Output = Replaced> + Send {
                (**self).replace_queued(org, event_id, batch, deliveries)
            }
            fn forget_deliveries(&self, org: &OrgId, event_id: &str, keys: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).forget_deliveries(org, event_id, keys)
            }
            fn announce_sends(&self, org: &OrgId, event_id: &str, intents: &[Delivery], riders: &[Delivery]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).announce_sends(org, event_id, intents, riders)
            }
            fn withdraw_sends(&self, org: &OrgId, event_id: &str, intents: &[Delivery]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).withdraw_sends(org, event_id, intents)
            }
            fn open_batches(&self, org: &OrgId, event_id: &str, batch_ids: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).open_batches(org, event_id, batch_ids)
            }
            fn complete_batch(&self, org: &OrgId, event_id: &str, batch_id: &str) -> impl Future<Output = Result<BatchProgress, StoreError>> + Send {
                (**self).complete_batch(org, event_id, batch_id)
            }
            fn close_event(&self, event: &NotificationEvent) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).close_event(event)
            }
            fn stale_events(&self, now: time::OffsetDateTime, limit: usize) -> impl Future<Output = Result<StaleEvents, StoreError>> + Send {
                (**self).stale_events(now, limit)
            }
            fn move_lease(&self, org: &OrgId, event_id: &str, from: Option<&str>, to: time::OffsetDateTime, sweeps: u32) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).move_lease(org, event_id, from, to, sweeps)
            }
        }
        impl<X: WorkStore + ?Sized> WorkStore for $wrapper {
            fn work_reads(&self, org: &OrgId, event_id: &str, whole: bool, offer: &OfferId, keys: &[String], ids: &[ContactId]) -> impl Future<Output = Result<WorkReads, StoreError>> + Send {
                (**self).work_reads(org, event_id, whole, offer, keys, ids)
            }
        }
        impl<X: IdempotencyStore + ?Sized> IdempotencyStore for $wrapper {
            fn claim(&self, org: &OrgId, key: &IdempotencyKey, record: &IdempotencyRecord, now_s: i64) -> impl Future<Output = Result<Claim, StoreError>> + Send {
                (**self).claim(org, key, record, now_s)
            }
            fn take_over(&self, org: &OrgId, key: &IdempotencyKey, previous_lock: i64, locked_until: i64) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).take_over(org, key, previous_lock, locked_until)
            }
            fn hold_for_sweep(&self, org: &OrgId, key: &IdempotencyKey, event_id: &str, now_ms: i64, locked_until: i64) -> impl Future<Output = Result<KeyHold, StoreError>> + Send {
                (**self).hold_for_sweep(org, key, event_id, now_ms, locked_until)
            }
            fn finish(&self, org: &OrgId, key: &IdempotencyKey, outcome: KeyOutcome) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).finish(org, key, outcome)
            }
        }
    )+};
}
delegate!(std::sync::Arc<X>, &X);
