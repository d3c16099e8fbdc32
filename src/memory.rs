//! In-memory implementations of the ports, for tests and benchmarks: they
//! record what they were asked, can be told to fail, and can simulate a
//! provider's latency.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::channels::{Mailer, OutgoingEmail, SmsSender, TopicMessage, TopicPublisher};
use crate::model::{
    Contact, ContactId, Delivery, IdempotencyKey, NotificationEvent, NotificationSettings, Offer,
    OfferId, OrgId, PhoneNumber,
};
use crate::ports::{
    Claim, ContactStore, Contacts, EventStore, IdempotencyRecord, IdempotencyStatus,
    IdempotencyStore, KeyOutcome, OfferStore, Replaced, SendError, StoreError, Written,
};
use futures::future::BoxFuture;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Store operations that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    ReadOffer,
    ReadSettings,
    ReadContacts,
    CreateEvent,
    SaveDeliveries,
    FinishEvent,
    Idempotency,
    /// Reads of a stored event or of chosen ledger entries (the worker's reads).
    ReadEvent,
    /// Opening and completing work batches.
    WorkBatches,
    /// A worker's conditional take of one queued delivery (counted per delivery).
    TakeQueued,
    /// Removing intents after a failed intent write.
    ForgetDeliveries,
    /// The sweeper's index and the event lease.
    Sweep,
}

#[derive(Default)]
pub struct MemoryStore {
    offers: HashMap<(String, String), Offer>,
    contacts: HashMap<(String, String), Contact>,
    /// Contact items another writer stored in a shape this code cannot read.
    unreadable: HashSet<(String, String)>,
    settings: Mutex<HashMap<String, NotificationSettings>>,
    events: Mutex<HashMap<(String, String), NotificationEvent>>,
    deliveries: Mutex<HashMap<String, Vec<Delivery>>>,
    keys: Mutex<HashMap<(String, String), IdempotencyRecord>>,
    /// Open work batches per event ID (absent: none were opened).
    batches: Mutex<HashMap<String, HashSet<String>>>,
    failing: Mutex<HashSet<StoreOp>>,
    /// Calls of an op that still succeed before it starts failing.
    failing_after: Mutex<HashMap<StoreOp, usize>>,
    /// Ops whose next failure is their last (a transient fault).
    failing_once: Mutex<HashSet<StoreOp>>,
    /// How long each ledger write takes (a slow store).
    write_delay: Mutex<Duration>,
    /// When set, writes are accepted and dropped (benchmarks that run a
    /// request many times must not grow the store).
    forgetful: bool,
    /// Calls made, for counting round trips.
    pub calls: AtomicUsize,
    /// Every key announced (as one group item would be, in DynamoDB), in order.
    announced: Mutex<Vec<String>>,
}

impl MemoryStore {
    pub fn with_offer(mut self, org: &str, offer: Offer) -> Self {
        self.offers.insert((org.into(), offer.id.clone()), offer);
        self
    }
    pub fn with_contact(mut self, org: &str, contact: Contact) -> Self {
        self.contacts
            .insert((org.into(), contact.id.clone()), contact);
        self
    }
    /// A contact item that exists but cannot be read (e.g. its `info` is a string).
    pub fn with_unreadable_contact(mut self, org: &str, id: &str) -> Self {
        self.unreadable.insert((org.into(), id.into()));
        self
    }
    /// Replaces an organisation's settings (an operator's edit).
    pub fn put_settings(&self, org: &str, settings: NotificationSettings) {
        lock(&self.settings).insert(org.into(), settings);
    }
    pub fn with_settings(self, org: &str, settings: NotificationSettings) -> Self {
        lock(&self.settings).insert(org.into(), settings);
        self
    }
    pub fn forgetful(mut self) -> Self {
        self.forgetful = true;
        self
    }
    /// Ends an injected failure.
    pub fn heal(&self, op: StoreOp) {
        lock(&self.failing).remove(&op);
        lock(&self.failing_after).remove(&op);
    }
    /// Lets `calls` more calls of `op` succeed, then fails every later one.
    pub fn fail_after(&self, op: StoreOp, calls: usize) {
        lock(&self.failing_after).insert(op, calls);
    }
    /// Lets `calls` more calls of `op` succeed, fails the next one, then heals.
    pub fn fail_once_after(&self, op: StoreOp, calls: usize) {
        lock(&self.failing_after).insert(op, calls);
        lock(&self.failing_once).insert(op);
    }
    /// Makes every ledger write take `delay` (a slow or throttled store).
    pub fn slow_writes(&self, delay: Duration) {
        *lock(&self.write_delay) = delay;
    }
    /// Makes a key look older than its window.
    pub fn expire_key(&self, org: &str, key: &str) {
        if let Some(r) = lock(&self.keys).get_mut(&(org.to_owned(), key.to_owned())) {
            r.expires_at = 0;
        }
    }
    pub fn fail(&self, op: StoreOp) {
        lock(&self.failing).insert(op);
    }
    pub fn event(&self, org: &str, event_id: &str) -> Option<NotificationEvent> {
        lock(&self.events)
            .get(&(org.to_owned(), event_id.to_owned()))
            .cloned()
    }
    pub fn events(&self) -> Vec<NotificationEvent> {
        lock(&self.events).values().cloned().collect()
    }
    pub fn key_record(&self, org: &str, key: &str) -> Option<IdempotencyRecord> {
        lock(&self.keys)
            .get(&(org.to_owned(), key.to_owned()))
            .cloned()
    }
    /// Sets a key's lock, as if a running (or killed) request held it until `until`.
    pub fn hold_lock(&self, org: &str, key: &str, until: i64) {
        if let Some(r) = lock(&self.keys).get_mut(&(org.to_owned(), key.to_owned())) {
            r.locked_until = until;
        }
    }
    /// Makes a key's lock look expired, as if its request had died long ago.
    pub fn expire_lock(&self, org: &str, key: &str) {
        if let Some(r) = lock(&self.keys).get_mut(&(org.to_owned(), key.to_owned())) {
            r.locked_until = 0;
        }
    }
    /// Makes a PENDING event's lease look run out, as if its run had died
    /// long ago: the sweeper takes it.
    pub fn expire_lease(&self, org: &str, event_id: &str) {
        if let Some(e) = lock(&self.events).get_mut(&(org.to_owned(), event_id.to_owned())) {
            let sweeps = e
                .info
                .as_ref()
                .and_then(|i| i.get("sweeps"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0) as u32;
            crate::notify::set_lease(
                e,
                time::OffsetDateTime::now_utc() - time::Duration::MINUTE,
                sweeps,
            );
        }
    }
    /// The work batches of an event still open (`None`: never handed off).
    pub fn open_batch_ids(&self, event_id: &str) -> Option<HashSet<String>> {
        lock(&self.batches).get(event_id).cloned()
    }
    /// Replaces a ledger entry as is, as if a run had stopped after writing it.
    pub fn put_delivery(&self, event_id: &str, d: Delivery) {
        let mut all = lock(&self.deliveries);
        let ledger = all.entry(event_id.to_owned()).or_default();
        ledger.retain(|old| old.key() != d.key());
        ledger.push(d);
    }
    /// Every key announced so far with `announce_sends`, in order (the keys
    /// an entry of their own came with are not among them).
    pub fn announced(&self) -> Vec<String> {
        lock(&self.announced).clone()
    }
    pub fn deliveries(&self, event_id: &str) -> Vec<Delivery> {
        lock(&self.deliveries)
            .get(event_id)
            .cloned()
            .unwrap_or_default()
    }
    /// Counts and gates a write: `Ok(false)` when a forgetful store drops it.
    fn write(&self, op: StoreOp) -> Result<bool, StoreError> {
        self.check(op)?;
        Ok(!self.forgetful)
    }
    fn check(&self, op: StoreOp) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(left) = lock(&self.failing_after).get_mut(&op) {
            if *left == 0 {
                lock(&self.failing).insert(op);
            } else {
                *left -= 1;
            }
        }
        if lock(&self.failing).contains(&op) {
            if lock(&self.failing_once).remove(&op) {
                lock(&self.failing).remove(&op);
                lock(&self.failing_after).remove(&op);
            }
            return Err(StoreError::Unavailable {
                op: "memory store",
                source: format!("injected failure of {op:?}").into(),
            });
        }
        Ok(())
    }
}

impl OfferStore for MemoryStore {
    async fn offer(&self, org: &OrgId, offer: &OfferId) -> Result<Option<Offer>, StoreError> {
        self.check(StoreOp::ReadOffer)?;
        Ok(self
            .offers
            .get(&(org.to_string(), offer.to_string()))
            .cloned())
    }
    async fn offer_details(
        &self,
        org: &OrgId,
        offer: &OfferId,
    ) -> Result<Option<Offer>, StoreError> {
        Ok(self.offer(org, offer).await?.map(|mut o| {
            o.contact_ids.clear();
            o
        }))
    }
    async fn settings(&self, org: &OrgId) -> Result<NotificationSettings, StoreError> {
        self.check(StoreOp::ReadSettings)?;
        Ok(lock(&self.settings)
            .get(org.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn disable_target(
        &self,
        org: &OrgId,
        channel: &crate::model::NotificationChannel,
        name: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.check(StoreOp::SaveDeliveries)?;
        let mut settings = lock(&self.settings);
        let Some(s) = settings.get_mut(org.as_str()) else {
            return Ok(());
        };
        let target = match channel {
            crate::model::NotificationChannel::Slack => s.slack.as_mut(),
            crate::model::NotificationChannel::MicrosoftTeams => s.microsoft_teams.as_mut(),
            crate::model::NotificationChannel::Webhook => s.webhook.as_mut(),
            _ => None,
        };
        if let Some(t) = target.filter(|t| t.secret == name) {
            t.disabled = Some(crate::model::Disabled {
                reason: reason.to_owned(),
                at: "now".into(),
            });
        }
        Ok(())
    }
}

impl ContactStore for MemoryStore {
    async fn contacts(&self, org: &OrgId, ids: &[ContactId]) -> Result<Contacts, StoreError> {
        self.check(StoreOp::ReadContacts)?;
        let mut out = Contacts::default();
        for id in ids {
            let k = (org.to_string(), id.to_string());
            if self.unreadable.contains(&k) {
                out.unreadable.push(id.to_string());
            } else if let Some(c) = self.contacts.get(&k) {
                out.found.push(c.clone());
            }
        }
        Ok(out)
    }
}

fn event_key(event: &NotificationEvent) -> (String, String) {
    (
        event.organization_id.clone().unwrap_or_default(),
        event.event_id.clone().unwrap_or_default(),
    )
}

/// The separate reads, side by side (the trait's default).
impl crate::ports::WorkStore for MemoryStore {}

impl EventStore for MemoryStore {
    /// As the port's default (entries), noting which keys were announced.
    async fn announce_sends(
        &self,
        org: &OrgId,
        event_id: &str,
        intents: &[Delivery],
        riders: &[Delivery],
    ) -> Result<(), StoreError> {
        let all: Vec<Delivery> = intents.iter().chain(riders).cloned().collect();
        self.save_deliveries(org, event_id, &all).await?;
        lock(&self.announced).extend(intents.iter().map(Delivery::key));
        Ok(())
    }
    async fn create_event(&self, event: &NotificationEvent) -> Result<(), StoreError> {
        if !self.write(StoreOp::CreateEvent)? {
            return Ok(());
        }
        let mut events = lock(&self.events);
        if events.contains_key(&event_key(event)) {
            return Err(StoreError::Conflict {
                op: "store new event",
            });
        }
        events.insert(event_key(event), event.clone());
        Ok(())
    }
    async fn save_deliveries(
        &self,
        _org: &OrgId,
        event_id: &str,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        // 25 items a call, as BatchWriteItem: a failure can land half-way.
        for chunk in deliveries.chunks(25) {
            let delay = *lock(&self.write_delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if !self.write(StoreOp::SaveDeliveries)? {
                continue;
            }
            // One item per delivery key, as in DynamoDB: a later write replaces it.
            let mut all = lock(&self.deliveries);
            let ledger = all.entry(event_id.to_owned()).or_default();
            for d in chunk {
                ledger.retain(|old| old.key() != d.key());
                ledger.push(d.clone());
            }
        }
        Ok(())
    }
    async fn finish_event(&self, event: &NotificationEvent) -> Result<(), StoreError> {
        if !self.write(StoreOp::FinishEvent)? {
            return Ok(());
        }
        match lock(&self.events).get_mut(&event_key(event)) {
            Some(e) => {
                *e = event.clone();
                Ok(())
            }
            None => Err(StoreError::Conflict {
                op: "store final event",
            }),
        }
    }
    async fn event_with_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        Ok(self
            .event(org.as_str(), event_id)
            .map(|e| (e, self.deliveries(event_id))))
    }
    async fn event(
        &self,
        org: &OrgId,
        event_id: &str,
        lists: bool,
    ) -> Result<Option<NotificationEvent>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        Ok(
            MemoryStore::event(self, org.as_str(), event_id).map(|mut e| {
                if !lists {
                    e.contact_ids = None;
                    e.contact_emails = None;
                }
                e
            }),
        )
    }
    async fn deliveries(
        &self,
        _org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        Ok(MemoryStore::deliveries(self, event_id)
            .into_iter()
            .filter(|d| keys.contains(&d.key()))
            .collect())
    }
    async fn replace_queued(
        &self,
        _org: &OrgId,
        event_id: &str,
        batch: &str,
        deliveries: &[Delivery],
    ) -> Replaced {
        let mut failure = None;
        let mut written = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            // Each conditional put is its own call, as in DynamoDB: some may
            // land and the next fail.
            if let Err(e) = self.check(StoreOp::TakeQueued) {
                failure.get_or_insert(e);
                written.push(Written::Failed);
                continue;
            }
            let mut all = lock(&self.deliveries);
            let ledger = all.entry(event_id.to_owned()).or_default();
            let held = ledger.iter().position(|old| old.key() == d.key());
            written.push(match held {
                Some(i)
                    if ledger[i].status == crate::model::DeliveryStatus::Queued
                        && ledger[i].batch.as_deref() == Some(batch) =>
                {
                    ledger[i] = d.clone();
                    Written::Yes
                }
                // Only what the request queued in this batch can be taken.
                _ => Written::NotQueued,
            });
        }
        Replaced { written, failure }
    }
    async fn forget_deliveries(
        &self,
        _org: &OrgId,
        event_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        if !self.write(StoreOp::ForgetDeliveries)? {
            return Ok(());
        }
        if let Some(ledger) = lock(&self.deliveries).get_mut(event_id) {
            ledger.retain(|d| !keys.contains(&d.key()));
        }
        Ok(())
    }
    async fn stale_events(
        &self,
        now: time::OffsetDateTime,
        limit: usize,
    ) -> Result<crate::ports::StaleEvents, StoreError> {
        self.check(StoreOp::Sweep)?;
        let mut out = crate::ports::StaleEvents::default();
        let mut pending: Vec<(time::OffsetDateTime, time::OffsetDateTime, String, String)> =
            lock(&self.events)
                .iter()
                .filter(|(_, e)| e.event_status == Some(crate::model::EventStatus::Pending))
                .filter_map(|((org, id), e)| {
                    let resume = crate::notify::resume_after(e)?;
                    Some((
                        e.timestamp.unwrap_or(resume),
                        resume,
                        org.clone(),
                        id.clone(),
                    ))
                })
                .collect();
        pending.sort();
        for (since, resume, org, id) in pending {
            let ms = (since.unix_timestamp_nanos() / 1_000_000) as i64;
            out.oldest_pending_ms = Some(out.oldest_pending_ms.map_or(ms, |o| o.min(ms)));
            if resume <= now
                && out.stale.len() < limit
                && let Ok(org) = OrgId::parse(&org)
            {
                out.stale.push((org, id));
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
        self.check(StoreOp::Sweep)?;
        let mut events = lock(&self.events);
        let Some(e) = events.get_mut(&(org.to_string(), event_id.to_owned())) else {
            return Ok(false);
        };
        let held = e
            .info
            .as_ref()
            .and_then(|i| i.get("resumeAfter"))
            .and_then(serde_json::Value::as_str);
        if e.event_status != Some(crate::model::EventStatus::Pending) || held != from {
            return Ok(false);
        }
        let e = &mut *e;
        crate::notify::set_lease(e, to, sweeps);
        e.last_update_time = Some(crate::model::event::now_millis());
        Ok(true)
    }
    async fn open_batches(
        &self,
        _org: &OrgId,
        event_id: &str,
        batch_ids: &[String],
    ) -> Result<(), StoreError> {
        self.check(StoreOp::WorkBatches)?;
        lock(&self.batches)
            .entry(event_id.to_owned())
            .or_insert_with(|| batch_ids.iter().cloned().collect());
        Ok(())
    }
    async fn complete_batch(
        &self,
        _org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> Result<crate::ports::BatchProgress, StoreError> {
        self.check(StoreOp::WorkBatches)?;
        let mut batches = lock(&self.batches);
        let open = batches.entry(event_id.to_owned()).or_default();
        Ok(crate::ports::BatchProgress {
            removed: open.remove(batch_id),
            remaining: open.len(),
        })
    }
    async fn close_event(&self, event: &NotificationEvent) -> Result<bool, StoreError> {
        self.check(StoreOp::FinishEvent)?;
        match lock(&self.events).get_mut(&event_key(event)) {
            Some(e) if e.event_status == Some(crate::model::EventStatus::Pending) => {
                // Opens recorded meanwhile are kept, as the DynamoDB store does.
                let mut closed = event.clone();
                closed.track_events = e.track_events.take();
                if let Some(opens) = e.info.as_ref().and_then(|i| i.get("opens")) {
                    closed
                        .info
                        .get_or_insert_with(Default::default)
                        .insert("opens".into(), opens.clone());
                }
                *e = closed;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(StoreError::Conflict { op: "close event" }),
        }
    }
}

impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        record: &IdempotencyRecord,
        now_s: i64,
    ) -> Result<Claim, StoreError> {
        self.check(StoreOp::Idempotency)?;
        let mut keys = lock(&self.keys);
        let k = (org.to_string(), key.to_string());
        match keys.get(&k) {
            Some(held) if held.expires_at >= now_s => Ok(Claim::Existing(held.clone())),
            _ => {
                keys.insert(k, record.clone());
                Ok(Claim::Claimed)
            }
        }
    }
    async fn take_over(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        previous_lock: i64,
        locked_until: i64,
    ) -> Result<bool, StoreError> {
        self.check(StoreOp::Idempotency)?;
        match lock(&self.keys).get_mut(&(org.to_string(), key.to_string())) {
            Some(r)
                if r.status == IdempotencyStatus::InProgress && r.locked_until == previous_lock =>
            {
                r.locked_until = locked_until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn hold_for_sweep(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        event_id: &str,
        now_ms: i64,
        locked_until: i64,
    ) -> Result<crate::ports::KeyHold, StoreError> {
        self.check(StoreOp::Idempotency)?;
        Ok(
            match lock(&self.keys)
                .get_mut(&(org.to_string(), key.to_string()))
                .filter(|r| r.event_id == event_id)
            {
                Some(r) if r.status == IdempotencyStatus::InProgress && r.locked_until < now_ms => {
                    r.locked_until = locked_until;
                    crate::ports::KeyHold::Held
                }
                Some(r) if r.status == IdempotencyStatus::InProgress => crate::ports::KeyHold::Busy,
                _ => crate::ports::KeyHold::Free,
            },
        )
    }
    async fn finish(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        outcome: KeyOutcome,
    ) -> Result<(), StoreError> {
        self.check(StoreOp::Idempotency)?;
        if let Some(r) = lock(&self.keys).get_mut(&(org.to_string(), key.to_string())) {
            match outcome {
                KeyOutcome::Completed => r.status = IdempotencyStatus::Completed,
                KeyOutcome::Released => r.locked_until = 0,
            }
        }
        Ok(())
    }
}

impl crate::read::EventReader for MemoryStore {
    async fn list_events(
        &self,
        org: &OrgId,
        q: &crate::read::ListQuery,
    ) -> Result<crate::read::EventList, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        let mut found = self.in_scope(org, &q.scope);
        if let Some(b) = &q.before {
            found.retain(|e| e.event_id.as_deref().is_some_and(|id| id < b.as_str()));
        }
        let more = found.len() > q.offset + q.limit;
        let events = found
            .into_iter()
            .skip(q.offset)
            .take(q.limit)
            .map(|mut e| {
                e.contact_ids = None;
                e.contact_emails = None;
                e
            })
            .collect();
        Ok(crate::read::EventList { events, more })
    }

    async fn count_events(
        &self,
        org: &OrgId,
        scope: &crate::read::Scope,
    ) -> Result<Option<usize>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        Ok(Some(self.in_scope(org, scope).len()))
    }

    async fn event_messages(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        Ok(
            MemoryStore::event(self, org.as_str(), event_id)
                .map(|e| (e, self.deliveries(event_id))),
        )
    }

    async fn delivery(
        &self,
        org: &OrgId,
        event_id: &str,
        channel: &str,
        contact: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        self.check(StoreOp::ReadEvent)?;
        if MemoryStore::event(self, org.as_str(), event_id).is_none() {
            return Ok(None);
        }
        Ok(self
            .deliveries(event_id)
            .into_iter()
            .find(|d| d.key() == format!("{channel}#{contact}")))
    }
}

impl MemoryStore {
    /// The organisation's events in `scope`, newest first (IDs are UUIDv7).
    fn in_scope(&self, org: &OrgId, scope: &crate::read::Scope) -> Vec<NotificationEvent> {
        use crate::read::{Scope, time_bound};
        let mut found: Vec<NotificationEvent> = lock(&self.events)
            .iter()
            .filter(|((o, _), _)| o == org.as_str())
            .map(|(_, e)| e.clone())
            .filter(|e| {
                let id = e.event_id.as_deref().unwrap_or_default();
                match scope {
                    Scope::Org { from_ms, to_ms } => {
                        id >= time_bound(*from_ms).as_str() && id < time_bound(*to_ms).as_str()
                    }
                    Scope::Entity {
                        entity_type,
                        entity_id,
                    } => {
                        e.entity_type.as_ref().map(|t| t.as_str()) == Some(entity_type.as_str())
                            && e.entity_id.as_deref() == Some(entity_id.as_str())
                    }
                }
            })
            .collect();
        found.sort_by(|a, b| b.event_id.cmp(&a.event_id));
        found
    }
}

impl crate::feedback::FeedbackTracker for MemoryStore {
    async fn apply_feedback(
        &self,
        f: &crate::feedback::Feedback,
    ) -> Result<crate::feedback::Applied, StoreError> {
        use crate::feedback::{Applied, Report};
        self.check(StoreOp::ReadEvent)?;
        if MemoryStore::event(self, f.org.as_str(), &f.event_id).is_none() {
            return Ok(Applied::Unknown);
        }
        let mut all = lock(&self.deliveries);
        let Some(d) = all.get_mut(&f.event_id).and_then(|l| {
            l.iter_mut().rev().find(|d| {
                d.channel == crate::model::NotificationChannel::Email
                    && d.contact_id.as_deref() == Some(f.contact.as_str())
                    && d.status == crate::model::DeliveryStatus::Sent
                    && d.message_id.as_deref() == Some(f.provider_message_id.as_str())
            })
        }) else {
            return Ok(Applied::Unknown);
        };
        Ok(match &f.report {
            Report::Click => {
                d.clicks = Some(d.clicks.unwrap_or(0) + 1);
                Applied::Counted
            }
            Report::Outcome(o, _) if d.outcome.is_some_and(|now| now.rank() >= o.rank()) => {
                Applied::Stale
            }
            Report::Outcome(o, reason) => {
                d.outcome = Some(*o);
                d.outcome_reason = Some(reason.clone());
                d.outcome_at = Some(f.at);
                Applied::Moved(*o)
            }
        })
    }

    async fn apply_sms_report(
        &self,
        r: &crate::feedback::SmsReport,
    ) -> Result<crate::feedback::Applied, StoreError> {
        use crate::feedback::Applied;
        self.check(StoreOp::ReadEvent)?;
        let mut all = lock(&self.deliveries);
        let found = all.values_mut().flatten().find(|d| {
            d.channel == crate::model::NotificationChannel::Sms
                && d.status == crate::model::DeliveryStatus::Sent
                && d.message_id.as_deref() == Some(r.sns_message_id.as_str())
        });
        Ok(match found {
            None => Applied::Unknown,
            Some(d) if d.outcome.is_some_and(|now| now.rank() >= r.outcome.rank()) => {
                Applied::Stale
            }
            Some(d) => {
                d.outcome = Some(r.outcome);
                d.outcome_reason = Some(r.reason.clone());
                d.outcome_at = Some(r.at);
                Applied::Moved(r.outcome)
            }
        })
    }
}

impl crate::tracking::OpenTracker for MemoryStore {
    async fn record_open(
        &self,
        open: &crate::tracking::Open,
    ) -> Result<crate::tracking::Recorded, StoreError> {
        self.check(StoreOp::FinishEvent)?;
        let mut events = lock(&self.events);
        let Some(event) = events.get_mut(&(open.org.to_string(), open.event_id.clone())) else {
            return Ok(crate::tracking::Recorded::UnknownEvent);
        };
        Ok(
            crate::tracking::apply_open(event, open)
                .unwrap_or(crate::tracking::Recorded::Duplicate),
        )
    }
}

/// Records every message; refuses chosen recipients; can wait like a provider.
#[derive(Default)]
pub struct MemoryProvider {
    pub latency: Duration,
    emails: Mutex<Vec<OutgoingEmail>>,
    sms: Mutex<Vec<(String, String)>>,
    published: Mutex<Vec<TopicMessage>>,
    refuse: Mutex<HashMap<String, SendError>>,
    in_flight: AtomicUsize,
    /// Most sends that were in flight at the same time.
    pub max_in_flight: AtomicUsize,
}

impl MemoryProvider {
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
    /// Makes sends to `recipient` (an address, a number or a topic ARN) fail with `err`.
    pub fn refuse(&self, recipient: &str, err: SendError) {
        lock(&self.refuse).insert(recipient.to_owned(), err);
    }
    pub fn emails(&self) -> Vec<OutgoingEmail> {
        lock(&self.emails).clone()
    }
    pub fn sms(&self) -> Vec<(String, String)> {
        lock(&self.sms).clone()
    }
    pub fn published(&self) -> Vec<TopicMessage> {
        lock(&self.published).clone()
    }
    async fn send(&self, recipient: &str) -> Result<String, SendError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        match lock(&self.refuse).get(recipient) {
            Some(e) => Err(e.clone()),
            None => Ok(uuid::Uuid::now_v7().to_string()),
        }
    }
}

impl Mailer for MemoryProvider {
    fn send_email<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let id = self.send(email.to.as_str()).await?;
            lock(&self.emails).push(email.clone());
            Ok(id)
        })
    }
}

impl SmsSender for MemoryProvider {
    fn send_sms<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a str,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let id = self.send(to.as_str()).await?;
            lock(&self.sms).push((to.as_str().to_owned(), text.to_owned()));
            Ok(id)
        })
    }
}

impl TopicPublisher for MemoryProvider {
    fn publish<'a>(
        &'a self,
        message: &'a TopicMessage,
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let id = self.send(&message.topic_arn).await?;
            lock(&self.published).push(message.clone());
            Ok(id)
        })
    }
}

/// A work queue that keeps what it was given, in order, and can refuse
/// chosen batches (by position) or everything.
#[derive(Default)]
pub struct MemoryQueue {
    messages: Mutex<Vec<crate::ports::WorkBatch>>,
    refuse_all: std::sync::atomic::AtomicBool,
}

impl MemoryQueue {
    /// Takes every queued message out, oldest first.
    pub fn drain(&self) -> Vec<crate::ports::WorkBatch> {
        std::mem::take(&mut *lock(&self.messages))
    }
    pub fn len(&self) -> usize {
        lock(&self.messages).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes every later enqueue fail (true) or work again (false).
    pub fn refuse_all(&self, refuse: bool) {
        self.refuse_all.store(refuse, Ordering::SeqCst);
    }
}

impl crate::ports::WorkQueue for MemoryQueue {
    fn enqueue<'a>(
        &'a self,
        batches: &'a [crate::ports::WorkBatch],
    ) -> futures::future::BoxFuture<'a, Vec<Result<(), SendError>>> {
        Box::pin(async move {
            if self.refuse_all.load(Ordering::SeqCst) {
                let refused = SendError::transient("ServiceUnavailable", "injected queue failure");
                return batches.iter().map(|_| Err(refused.clone())).collect();
            }
            lock(&self.messages).extend(batches.iter().cloned());
            batches.iter().map(|_| Ok(())).collect()
        })
    }
}

/// The use case over in-memory ports.
pub type MemoryNotifier = crate::notify::Notifier<Arc<MemoryStore>>;

/// Wires the use case to `store`, with `provider` for every channel, no rate
/// limit and the default policy (set `rates` or `policy` on the result to change them).
pub fn notifier(
    store: Arc<MemoryStore>,
    provider: Arc<MemoryProvider>,
    concurrency: usize,
) -> MemoryNotifier {
    crate::notify::Notifier {
        store,
        channels: crate::channels::Providers {
            mailer: provider.clone(),
            sms: provider.clone(),
            topics: provider,
            web: Arc::new(crate::channels::WebTargets::unconfigured()),
        },
        concurrency,
        rates: crate::rate::RateLimits::default(),
        policy: crate::notify::Policy::default(),
        queue: None,
    }
}

/// A seeded store for benchmarks: org `org1`, offer `o1` with `n` contacts,
/// each with an email address and a phone number, channels as given.
pub fn offer_with_contacts(
    n: usize,
    channels: Vec<crate::model::NotificationChannel>,
) -> MemoryStore {
    use crate::model::{ContactInfo, OfferInfo, Partner};
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let offer = Offer {
        id: "o1".into(),
        organization_id: Some("org1".into()),
        name: Some("Enterprise plan, 3 years".into()),
        status: Some("PENDING_ACCEPTANCE".into()),
        partner: Some(Partner::Aws),
        contact_ids: ids.clone(),
        info: Some(OfferInfo {
            private_offer_url: Some("https://aws.amazon.com/marketplace/ao/o1".into()),
        }),
        expire_time: None,
    };
    let mut store = MemoryStore::default()
        .with_offer("org1", offer)
        .with_settings(
            "org1",
            NotificationSettings {
                channels: Some(channels),
                ..NotificationSettings::default()
            },
        );
    for (i, id) in ids.into_iter().enumerate() {
        let contact = Contact {
            id: id.clone(),
            organization_id: Some("org1".into()),
            name: Some(format!("Buyer {i}")),
            email_address: Some(format!("{id}@buyer.example.com")),
            info: Some(ContactInfo {
                phone_number: Some(format!("+1206{:07}", i % 10_000_000)),
                ..ContactInfo::default()
            }),
        };
        store = store.with_contact("org1", contact);
    }
    store
}

/// Secrets held in memory, by ID; counts reads (to see the cache work).
#[derive(Default)]
pub struct MemorySecrets {
    values: Mutex<HashMap<String, String>>,
    pub reads: AtomicUsize,
}

impl MemorySecrets {
    pub fn with(self, id: &str, value: &str) -> Self {
        lock(&self.values).insert(id.into(), value.into());
        self
    }
}

impl crate::channels::Secrets for MemorySecrets {
    fn secret<'a>(
        &'a self,
        id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, SendError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(lock(&self.values).get(id).cloned()) })
    }
}

/// What a `MemoryPoster` was asked to send (the URL's host and path, the
/// headers, the body).
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A poster that records requests and answers from a script (then 200 `ok`),
/// or with an error.
#[derive(Default)]
pub struct MemoryPoster {
    pub posted: Mutex<Vec<Posted>>,
    script: Mutex<std::collections::VecDeque<Result<crate::channels::web::WebAnswer, SendError>>>,
}

impl MemoryPoster {
    /// The next answers, in order.
    pub fn answer(&self, a: Result<crate::channels::web::WebAnswer, SendError>) {
        lock(&self.script).push_back(a);
    }
    pub fn status(&self, status: u16, body: &str) {
        self.answer(Ok(crate::channels::web::WebAnswer {
            status,
            body: body.into(),
            ..Default::default()
        }));
    }
    pub fn posted(&self) -> Vec<Posted> {
        lock(&self.posted).clone()
    }
}

impl crate::channels::Poster for MemoryPoster {
    fn post<'a>(
        &'a self,
        r: &'a crate::channels::web::WebPost,
    ) -> futures::future::BoxFuture<'a, Result<crate::channels::web::WebAnswer, SendError>> {
        Box::pin(async move {
            lock(&self.posted).push(Posted {
                host: r.url.host.clone(),
                path: r.url.path.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                body: r.body.to_string(),
            });
            lock(&self.script).pop_front().unwrap_or_else(|| {
                Ok(crate::channels::web::WebAnswer {
                    status: 200,
                    body: "ok".into(),
                    ..Default::default()
                })
            })
        })
    }
}
