//! The send engine: starts each send only when it can go now, and records it
//! so that no crash, kill or storage failure can lose a recipient or send one
//! twice.
//!
//! A send starts only when all of these hold: a concurrency slot is free, its
//! channel's token bucket has a token now, and the time left before the
//! deadline (minus the margin kept for recording) covers a call of at least
//! `min_send_time`. Its call is then bounded by that time left, so the last
//! answer comes before the margin whatever the provider's latency. The sends
//! that start together are announced in the ledger together, just before they
//! start: a SENDING intent (the synchronous path), or the conditional take of
//! their QUEUED entries (a worker). So a SENDING entry always means "this send
//! was really started", and whatever was not started has no such entry.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::model::event::now_millis;
use crate::model::{Delivery, DeliveryStatus, NotificationChannel, OrgId};
use crate::ports::{
    ContactStore, EventStore, Mailer, OfferStore, SendError, SmsSender, StoreError, TopicPublisher,
    Written,
};
use crate::rate::RateLimiter;

use super::{Action, Notifier};

/// Deliveries written to the ledger in one call at most (one BatchWriteItem):
/// also the most sends announced together.
pub(crate) const LEDGER_BATCH: usize = 25;
/// Outcomes are written at least this often while sends go on.
const LEDGER_FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How the sends that start are announced in the ledger.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Announce<'a> {
    /// The synchronous path: SENDING intents (one unconditional batch write).
    Intent,
    /// A worker: the QUEUED entries of this work batch are taken (a
    /// conditional write each); only what was taken is sent.
    Take { batch: &'a str },
}

/// Why a planned send was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The time left could not cover a call.
    Deadline,
    /// The provider's quota refused this channel (after the SDK's retries).
    Quota,
    /// The store failed: nothing more starts.
    StoreFailed,
}

impl Hold {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Hold::Deadline => {
                "not started: the Lambda's deadline left too little time; the next retry with the same idempotency key, or the sweeper, sends it"
            }
            Hold::Quota => {
                "not started: the provider's sending quota refused the channel (not the recipient); it is sent later"
            }
            Hold::StoreFailed => "not started: the store failed",
        }
    }
}

/// A planned send that was not started.
pub(crate) struct Held {
    pub(crate) action: Action,
    pub(crate) why: Hold,
    /// Its entry was announced (SENDING) before the provider refused it (a
    /// quota refusal): whoever puts it back must overwrite that entry.
    pub(crate) announced: bool,
}

/// What the engine did.
#[derive(Default)]
pub(crate) struct Delivered {
    /// The outcomes it wrote to the ledger (SENT, FAILED, UNCONFIRMED), in
    /// the order of the actions.
    pub(crate) recorded: Vec<Delivery>,
    /// What it did not start, and why; no SENDING entry of this run names
    /// them unless `announced`.
    pub(crate) held: Vec<Held>,
    /// Worker: deliveries another receive of the message took first.
    pub(crate) taken_elsewhere: usize,
    /// The first storage failure. From it on nothing started; what was in
    /// flight ran to its end, and its outcome was written if the store let it.
    pub(crate) failure: Option<StoreError>,
}

/// One channel's queue of actions, in plan order.
struct Lane<'a> {
    channel: NotificationChannel,
    limiter: Option<&'a RateLimiter>,
    waiting: VecDeque<(usize, Action)>,
}

impl<S, M, P, T> Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    /// Sends `actions` under the concurrency bound, the channels' rates and
    /// the deadline, announcing each group of sends before it starts and
    /// writing outcomes as they come (25 at a time or every 200 ms).
    pub(crate) async fn deliver(
        &self,
        org: &OrgId,
        event_id: &str,
        actions: Vec<Action>,
        deadline: Option<Instant>,
        announce: Announce<'_>,
    ) -> Delivered {
        let policy = &self.policy;
        // Every call ends by `calls_end`; none starts after `last_start`.
        let calls_end = deadline.map(|d| d.checked_sub(policy.deadline_margin).unwrap_or(d));
        let last_start = calls_end.map(|e| e.checked_sub(policy.min_send_time).unwrap_or(e));
        let concurrency = self.concurrency.max(1);
        // With sends in flight, wait until this many slots are free before
        // starting more: the sends that start together share one announcement.
        let group_min = concurrency.div_ceil(2);

        let mut lanes: Vec<Lane<'_>> = Vec::new();
        for (i, a) in actions.into_iter().enumerate() {
            let channel = a.channel();
            match lanes.iter_mut().find(|l| l.channel == channel) {
                Some(lane) => lane.waiting.push_back((i, a)),
                None => lanes.push(Lane {
                    limiter: self.limiter(&channel),
                    channel,
                    waiting: VecDeque::from([(i, a)]),
                }),
            }
        }

        let mut out = Delivered::default();
        let mut in_flight = FuturesUnordered::new();
        let mut unrecorded: Vec<(usize, Delivery)> = Vec::new();
        let mut recorded: Vec<(usize, Delivery)> = Vec::new();
        let mut tick = tokio::time::interval(LEDGER_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch = match announce {
            Announce::Take { batch } => Some(batch),
            Announce::Intent => None,
        };

        loop {
            let mut next_token: Option<Instant> = None;
            if out.failure.is_some() {
                hold_all(&mut lanes, Hold::StoreFailed, &mut out.held);
            } else if last_start.is_some_and(|l| Instant::now() > l) {
                hold_all(&mut lanes, Hold::Deadline, &mut out.held);
            } else {
                let free = concurrency - in_flight.len();
                if free > 0 && (free >= group_min || in_flight.is_empty()) {
                    let (group, next) = take_ready(
                        &mut lanes,
                        free.min(LEDGER_BATCH),
                        last_start,
                        &mut out.held,
                    );
                    next_token = next;
                    if !group.is_empty() {
                        let mut started = self
                            .announce(
                                org,
                                event_id,
                                announce,
                                group,
                                &mut unrecorded,
                                &mut recorded,
                                &mut out,
                            )
                            .await;
                        if last_start.is_some_and(|l| Instant::now() > l) && !started.is_empty() {
                            // The announcement itself took the time left (a slow
                            // store): these do not start after all.
                            self.unannounce(
                                org,
                                event_id,
                                announce,
                                std::mem::take(&mut started),
                                &mut out,
                            )
                            .await;
                        }
                        for (i, a) in started {
                            in_flight.push(async move {
                                // A send starts when it is first polled: if that is
                                // past the last start (the loop was held up), it does
                                // not start at all.
                                if last_start.is_some_and(|l| Instant::now() > l) {
                                    return (i, a, None);
                                }
                                let result = self.perform(&a, calls_end).await;
                                (i, a, Some(result))
                            });
                        }
                        // Start them now, before anything else is awaited.
                        while let Some(Some(done)) = in_flight.next().now_or_never() {
                            if settle(done, &mut lanes, batch, &mut unrecorded, &mut out) {
                                self.flush(org, event_id, &mut unrecorded, &mut recorded, &mut out)
                                    .await;
                            }
                        }
                        continue;
                    }
                }
            }
            if in_flight.is_empty() {
                if lanes.iter().all(|l| l.waiting.is_empty()) {
                    break;
                }
                // Nothing in flight: wait for the next token, writing
                // outcomes meanwhile.
                let Some(at) = next_token else { continue };
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = tick.tick(), if !unrecorded.is_empty() && out.failure.is_none() => {
                        self.flush(org, event_id, &mut unrecorded, &mut recorded, &mut out).await;
                    }
                }
                continue;
            }
            tokio::select! {
                Some(done) = in_flight.next() => {
                    if settle(done, &mut lanes, batch, &mut unrecorded, &mut out) {
                        self.flush(org, event_id, &mut unrecorded, &mut recorded, &mut out).await;
                    }
                }
                // After a failure, outcomes wait for one last attempt at the end.
                _ = tick.tick(), if !unrecorded.is_empty() && out.failure.is_none() => {
                    self.flush(org, event_id, &mut unrecorded, &mut recorded, &mut out).await;
                }
                _ = sleep_until_some(next_token) => {}
            }
        }
        self.flush(org, event_id, &mut unrecorded, &mut recorded, &mut out)
            .await;
        if !unrecorded.is_empty() {
            // The store failed: these went out (or may have), and their
            // SENDING entries say so; a later run records them UNCONFIRMED.
            tracing::error!(
                unrecorded = unrecorded.len(),
                "outcomes could not be recorded"
            );
        }
        recorded.sort_by_key(|(i, _)| *i);
        out.recorded = recorded.into_iter().map(|(_, d)| d).collect();
        out
    }

    fn limiter(&self, channel: &NotificationChannel) -> Option<&RateLimiter> {
        match channel {
            NotificationChannel::Email => self.rates.email.as_ref(),
            NotificationChannel::Sms => self.rates.sms.as_ref(),
            NotificationChannel::Sns => self.rates.topic.as_ref(),
            _ => None,
        }
    }

    /// Announces a group of sends about to start; answers the ones that may
    /// start. Intents carry the outcomes gathered so far in the same write.
    /// On a storage failure none of the failed part starts, the failure is
    /// kept, and an intent write that failed is undone (best effort: what of
    /// it landed must not look like a send).
    #[allow(clippy::too_many_arguments)]
    async fn announce(
        &self,
        org: &OrgId,
        event_id: &str,
        announce: Announce<'_>,
        group: Vec<(usize, Action)>,
        unrecorded: &mut Vec<(usize, Delivery)>,
        recorded: &mut Vec<(usize, Delivery)>,
        out: &mut Delivered,
    ) -> Vec<(usize, Action)> {
        match announce {
            Announce::Intent => {
                let intents: Vec<Delivery> = group.iter().map(|(_, a)| a.intent()).collect();
                let riders = unrecorded
                    .len()
                    .min(LEDGER_BATCH.saturating_sub(intents.len()));
                let mut items = intents.clone();
                items.extend(unrecorded[..riders].iter().map(|(_, d)| d.clone()));
                match self.store.save_deliveries(org, event_id, &items).await {
                    Ok(()) => {
                        recorded.extend(unrecorded.drain(..riders));
                        group
                    }
                    Err(e) => {
                        let keys: Vec<String> = intents.iter().map(Delivery::key).collect();
                        if let Err(undo) = self.store.forget_deliveries(org, event_id, &keys).await
                        {
                            tracing::warn!(error = %crate::error_chain(&undo), "could not undo a failed intent write");
                        }
                        out.held.extend(group.into_iter().map(|(_, action)| Held {
                            action,
                            why: Hold::StoreFailed,
                            announced: false,
                        }));
                        out.failure = Some(e);
                        Vec::new()
                    }
                }
            }
            Announce::Take { batch } => {
                let takes: Vec<Delivery> = group
                    .iter()
                    .map(|(_, a)| {
                        let mut d = a.intent();
                        d.batch = Some(batch.to_owned());
                        d
                    })
                    .collect();
                let answer = self
                    .store
                    .replace_queued(org, event_id, batch, &takes)
                    .await;
                let mut started = Vec::new();
                for ((i, action), written) in group.into_iter().zip(answer.written) {
                    match written {
                        Written::Yes => started.push((i, action)),
                        // Another receive of the message took it first.
                        Written::NotQueued => out.taken_elsewhere += 1,
                        Written::Failed => out.held.push(Held {
                            action,
                            why: Hold::StoreFailed,
                            announced: false,
                        }),
                    }
                }
                if let Some(e) = answer.failure {
                    out.failure.get_or_insert(e);
                }
                started
            }
        }
    }

    /// Takes back an announcement whose sends will not start: intents are
    /// removed, taken entries go back to QUEUED in their batch. They are held
    /// for the deadline.
    async fn unannounce(
        &self,
        org: &OrgId,
        event_id: &str,
        announce: Announce<'_>,
        group: Vec<(usize, Action)>,
        out: &mut Delivered,
    ) {
        let undone = match announce {
            Announce::Intent => {
                let keys: Vec<String> = group.iter().map(|(_, a)| a.key()).collect();
                self.store.forget_deliveries(org, event_id, &keys).await
            }
            Announce::Take { batch } => {
                let back: Vec<Delivery> = group.iter().map(|(_, a)| a.queued(batch)).collect();
                self.store.save_deliveries(org, event_id, &back).await
            }
        };
        if let Err(e) = undone {
            tracing::warn!(error = %crate::error_chain(&e), "could not take back sends that will not start");
            out.failure.get_or_insert(e);
        }
        out.held.extend(group.into_iter().map(|(_, action)| Held {
            action,
            why: Hold::Deadline,
            announced: false,
        }));
    }

    /// Writes the outcomes gathered so far. A failure is kept (and stops new
    /// sends); the outcomes stay to be tried once more at the end.
    async fn flush(
        &self,
        org: &OrgId,
        event_id: &str,
        unrecorded: &mut Vec<(usize, Delivery)>,
        recorded: &mut Vec<(usize, Delivery)>,
        out: &mut Delivered,
    ) {
        if unrecorded.is_empty() {
            return;
        }
        let batch: Vec<Delivery> = unrecorded.iter().map(|(_, d)| d.clone()).collect();
        match self.store.save_deliveries(org, event_id, &batch).await {
            Ok(()) => recorded.append(unrecorded),
            Err(e) => {
                out.failure.get_or_insert(e);
            }
        }
    }

    /// One provider call, cut at `calls_end` (the deadline less its margin)
    /// and at the per-call timeout: past it, the provider may or may not have
    /// the message, so the outcome is unknown.
    async fn perform(
        &self,
        action: &Action,
        calls_end: Option<Instant>,
    ) -> Result<String, SendError> {
        let started = Instant::now();
        let end = calls_end.map_or(started + self.policy.send_timeout, |e| {
            e.min(started + self.policy.send_timeout)
        });
        let send = async {
            match action {
                Action::Email { email, .. } => self.mailer.send_email(email).await,
                Action::Sms { to, text, .. } => self.sms.send_sms(to, text).await,
                Action::Topic(m) => self.topics.publish(m).await,
            }
        };
        match tokio::time::timeout_at(end, send).await {
            Ok(result) => result,
            Err(_) => Err(SendError::unknown(
                "DeadlineTimeout",
                format!(
                    "no answer within the {} ms the deadline left",
                    (end - started).as_millis()
                ),
            )),
        }
    }
}

/// Fills a group from the lanes in turn (one action a lane per round), each
/// with a token taken now. Answers the group and when the next token of a
/// waiting lane comes; a lane whose next token comes after the last start
/// is held whole.
fn take_ready(
    lanes: &mut [Lane<'_>],
    room: usize,
    last_start: Option<Instant>,
    held: &mut Vec<Held>,
) -> (Vec<(usize, Action)>, Option<Instant>) {
    let mut group = Vec::new();
    let mut next: Option<Instant> = None;
    let mut blocked = vec![false; lanes.len()];
    while group.len() < room {
        let mut progress = false;
        for (lane, blocked) in lanes.iter_mut().zip(blocked.iter_mut()) {
            if group.len() == room || *blocked || lane.waiting.is_empty() {
                continue;
            }
            match lane.limiter.map_or(Ok(()), RateLimiter::try_take) {
                Ok(()) => {
                    group.extend(lane.waiting.pop_front());
                    progress = true;
                }
                Err(at) if last_start.is_some_and(|l| at > l) => {
                    held.extend(lane.waiting.drain(..).map(|(_, action)| Held {
                        action,
                        why: Hold::Deadline,
                        announced: false,
                    }));
                    *blocked = true;
                }
                Err(at) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    *blocked = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    (group, next)
}

/// Takes in one finished (or never started) send: its outcome to record, or,
/// when the provider's quota refused it, the whole channel put back. Answers
/// whether enough outcomes are waiting for a write.
fn settle(
    (i, action, result): (usize, Action, Option<Result<String, SendError>>),
    lanes: &mut [Lane<'_>],
    batch: Option<&str>,
    unrecorded: &mut Vec<(usize, Delivery)>,
    out: &mut Delivered,
) -> bool {
    match result {
        // Announced, but too late to start: back to not started.
        None => out.held.push(Held {
            action,
            why: Hold::Deadline,
            announced: true,
        }),
        Some(Err(e)) if e.throttled => {
            // The quota, not the recipient, refused: this send and the rest
            // of its channel are put back, none recorded FAILED.
            tracing::warn!(channel = %action.channel(), code = %e.code, "provider quota reached; the channel's remaining sends are put back");
            let channel = action.channel();
            out.held.push(Held {
                action,
                why: Hold::Quota,
                announced: true,
            });
            if let Some(lane) = lanes.iter_mut().find(|l| l.channel == channel) {
                out.held
                    .extend(lane.waiting.drain(..).map(|(_, action)| Held {
                        action,
                        why: Hold::Quota,
                        announced: false,
                    }));
            }
        }
        Some(result) => {
            let mut d = outcome(&action, result);
            d.batch = batch.map(str::to_owned);
            unrecorded.push((i, d));
        }
    }
    unrecorded.len() >= LEDGER_BATCH && out.failure.is_none()
}

fn hold_all(lanes: &mut [Lane<'_>], why: Hold, held: &mut Vec<Held>) {
    for lane in lanes {
        held.extend(lane.waiting.drain(..).map(|(_, action)| Held {
            action,
            why,
            announced: false,
        }));
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The ledger entry of a finished call.
fn outcome(action: &Action, result: Result<String, SendError>) -> Delivery {
    let channel = action.channel();
    let contact_id = action.contact_id();
    let (status, message_id, reason) = match result {
        Ok(id) => (DeliveryStatus::Sent, Some(id), None),
        Err(e) if e.outcome_unknown => {
            tracing::warn!(channel = %channel, contact_id = contact_id.as_deref().unwrap_or("-"), code = %e.code, "delivery outcome unknown; not retried");
            (
                DeliveryStatus::Unconfirmed,
                None,
                Some(format!(
                    "{e}; the provider may have accepted it, so it is not sent again"
                )),
            )
        }
        Err(e) => {
            // The provider's message may name the recipient: log the code only.
            tracing::warn!(channel = %channel, contact_id = contact_id.as_deref().unwrap_or("-"), code = %e.code, permanent = e.permanent, "delivery failed");
            (DeliveryStatus::Failed, None, Some(e.to_string()))
        }
    };
    Delivery {
        channel,
        contact_id,
        status,
        message_id,
        reason,
        time: now_millis(),
        batch: None,
    }
}
