//! The send engine: starts each send only when it can go now, and records it
//! so that no crash, kill or storage failure can lose a recipient or send one
//! twice.
//!
//! A send starts only when all of these hold: a slot is free, its channel's
//! token bucket has a token now, and the time left before the deadline (minus
//! the margin kept for recording) covers a call of at least `min_send_time`.
//! Its call is then cut at that margin, so the last answer comes before it
//! whatever the provider's latency. The sends that start together are
//! announced in the ledger together, just before they start: on the
//! synchronous path one announcement listing their keys (the store keeps it as
//! one item; a delivery that already has an entry of its own, from an earlier
//! run, gets a SENDING entry instead), which also carries the outcomes
//! gathered so far; on a worker, the conditional take of their QUEUED entries.
//! So SENDING always means "this send was really started", and whatever was
//! not started reads no such thing.
//!
//! How many slots: Little's law per channel, in flight = rate x the channel's
//! observed call time (times 1.5, plus one), so a 1-a-second quota holds no
//! idle slots and an unlimited one is bounded only by `Notifier::concurrency`.
//! Ledger writes run beside the sends: while a group's intents are being
//! written, the sends already out go on and their outcomes are gathered; the
//! outcomes are written in the background.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::model::{Delivery, DeliveryStatus, NotificationChannel, OrgId};
use crate::ports::{ContactStore, EventStore, OfferStore, SendError, StoreError, Written};
use crate::rate::RateLimiter;

use super::{Action, Notifier};

/// Deliveries written to the ledger in one call at most (one BatchWriteItem).
pub(crate) const LEDGER_BATCH: usize = 25;
/// The most sends the synchronous path announces together (one item); a
/// worker takes at most `LEDGER_BATCH` in one TransactWriteItems.
const ANNOUNCE_MAX: usize = 100;
/// Outcomes are written at least this often while sends go on.
const LEDGER_FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Observed call times weigh in with this share (an exponential moving average).
const LATENCY_WEIGHT: f64 = 0.2;

/// How the sends that start are announced in the ledger.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Announce<'a> {
    /// The synchronous path: an announcement of the intents (one
    /// unconditional batch write); the keys in `entries` already have an
    /// entry of their own (an earlier run's), so theirs is a SENDING entry:
    /// an announcement never stands against an entry.
    Intent {
        entries: &'a std::collections::HashSet<String>,
    },
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
    /// Time spent in ledger writes and in provider calls, each summed over
    /// the calls (they overlap one another): where a run's time goes.
    pub(crate) writing: Duration,
    pub(crate) sending: Duration,
}

/// One channel's queue of actions, in plan order, and what the engine knows
/// of its calls.
struct Lane<'a> {
    channel: NotificationChannel,
    limiter: Option<Limit<'a>>,
    waiting: VecDeque<(usize, Action)>,
    /// Sends of this channel announced or in flight.
    busy: usize,
    /// The channel's call time, averaged (seconds).
    latency: f64,
}

/// A lane's rate: its channel's bucket, or its target's (Slack, Teams),
/// shared by every send to that target from this instance.
enum Limit<'a> {
    Channel(&'a RateLimiter),
    Target(std::sync::Arc<RateLimiter>),
}

impl std::ops::Deref for Limit<'_> {
    type Target = RateLimiter;
    fn deref(&self) -> &RateLimiter {
        match self {
            Limit::Channel(l) => l,
            Limit::Target(l) => l,
        }
    }
}

impl Lane<'_> {
    /// Slots this channel may hold: its rate times its call time (Little's
    /// law) with room to spare; unlimited: `max`.
    fn slots(&self, max: usize) -> usize {
        match self.limiter {
            None => max,
            Some(ref l) => {
                ((l.per_second() * self.latency * 1.5).ceil() as usize + 1).clamp(1, max)
            }
        }
    }
}

/// A ledger write running beside the sends, and what it carried.
enum WriteDone {
    /// A group's intents (and the outcomes riding along) or takes.
    Announced {
        group: Vec<(usize, Action)>,
        /// The intents written (the synchronous path): announced, to take
        /// back on failure; and the keys written as entries, to put back.
        intents: (Vec<Delivery>, Vec<String>),
        riders: Vec<(usize, Delivery)>,
        /// Per send, whether it may start.
        started: Vec<Written>,
        failure: Option<StoreError>,
    },
    /// Outcomes.
    Flushed {
        items: Vec<(usize, Delivery)>,
        failure: Option<StoreError>,
    },
    /// Intents taken back (best effort).
    Undone(Result<(), StoreError>),
}

/// A send's result: `None` when it was announced but could not start in time.
type SendDone = (usize, Action, Option<(Result<String, SendError>, Duration)>);

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore,
{
    /// Sends `actions` under the slots, the channels' rates and the deadline,
    /// announcing each group of sends before it starts and writing outcomes
    /// as they come (25 at a time or every 200 ms), the writes beside the sends.
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
        let max = self.concurrency.max(1);
        let batch = match announce {
            Announce::Take { batch } => Some(batch),
            Announce::Intent { .. } => None,
        };

        let mut lanes: Vec<Lane<'_>> = Vec::new();
        for (i, a) in actions.into_iter().enumerate() {
            let channel = a.channel();
            match lanes.iter_mut().find(|l| l.channel == channel) {
                Some(lane) => lane.waiting.push_back((i, a)),
                None => lanes.push(Lane {
                    limiter: self.limiter(&a),
                    channel,
                    waiting: VecDeque::from([(i, a)]),
                    busy: 0,
                    latency: policy.hand_off.send_latency.as_secs_f64(),
                }),
            }
        }

        let mut out = Delivered::default();
        let mut in_flight: FuturesUnordered<BoxFuture<'_, SendDone>> = FuturesUnordered::new();
        let mut writes: FuturesUnordered<BoxFuture<'_, (WriteDone, Duration)>> =
            FuturesUnordered::new();
        let mut flushing = false;
        let mut unrecorded: Vec<(usize, Delivery)> = Vec::new();
        let mut recorded: Vec<(usize, Delivery)> = Vec::new();
        let mut tick = tokio::time::interval(LEDGER_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let mut next_token: Option<Instant> = None;
            if out.failure.is_some() {
                hold_all(&mut lanes, Hold::StoreFailed, &mut out.held);
            } else if last_start.is_some_and(|l| Instant::now() > l) {
                hold_all(&mut lanes, Hold::Deadline, &mut out.held);
            } else {
                // Start groups while slots are free: the slots all busy
                // channels may hold, at most `max`. With work out, wait until a
                // quarter is free, so that sends starting together share one write.
                loop {
                    let slots = lanes
                        .iter()
                        .filter(|l| l.busy > 0 || !l.waiting.is_empty())
                        .map(|l| l.slots(max))
                        .sum::<usize>()
                        .min(max);
                    let busy: usize = lanes.iter().map(|l| l.busy).sum();
                    let free = slots.saturating_sub(busy);
                    if free == 0 || (busy > 0 && free < slots.div_ceil(2)) {
                        break;
                    }
                    let (group, next) = take_ready(
                        &mut lanes,
                        free.min(match announce {
                            Announce::Intent { .. } => ANNOUNCE_MAX,
                            Announce::Take { .. } => LEDGER_BATCH,
                        }),
                        max,
                        last_start,
                        &mut out.held,
                    );
                    next_token = next;
                    if group.is_empty() {
                        break;
                    }
                    writes.push(timed(self.announce(
                        org,
                        event_id,
                        announce,
                        group,
                        &mut unrecorded,
                    )));
                }
            }
            if in_flight.is_empty() && writes.is_empty() {
                if lanes.iter().all(|l| l.waiting.is_empty()) {
                    break;
                }
                // Nothing out: wait for the next token.
                if let Some(at) = next_token {
                    tokio::time::sleep_until(at).await;
                }
                continue;
            }
            tokio::select! {
                Some(done) = in_flight.next() => {
                    settle(done, &mut lanes, batch, &mut unrecorded, &mut out);
                }
                Some((done, took)) = writes.next() => { out.writing += took; match done {
                    WriteDone::Announced { group, intents, riders, started, failure } => {
                        let ok = failure.is_none();
                        if let Some(e) = failure {
                            out.failure.get_or_insert(e);
                        }
                        // Riders were written only if the write succeeded.
                        if ok { recorded.extend(riders) } else { unrecorded.extend(riders) }
                        let (announced, entries) = intents;
                        let mut undo = false;
                        for ((i, action), written) in group.into_iter().zip(started) {
                            let lane = lane_of(&mut lanes, &action);
                            match written {
                                Written::Yes => {
                                    in_flight.push(self.send(i, action, last_start, calls_end));
                                }
                                Written::NotQueued => {
                                    lane.busy -= 1;
                                    out.taken_elsewhere += 1;
                                }
                                Written::Failed => {
                                    lane.busy -= 1;
                                    undo = true;
                                    // A resumed delivery's entry is not deleted (an earlier
                                    // announcement may list it): it is written back NOT_STARTED.
                                    let again = entries.contains(&action.key());
                                    out.held.push(Held { action, why: Hold::StoreFailed, announced: again });
                                }
                            }
                        }
                        if undo && !announced.is_empty() {
                            // Whatever of a failed intent write landed must not look like a send.
                            writes.push(timed(Box::pin(async move {
                                WriteDone::Undone(self.store.withdraw_sends(org, event_id, &announced).await)
                            })));
                        }
                        // Start them now, before anything else is awaited.
                        while let Some(Some(done)) = in_flight.next().now_or_never() {
                            settle(done, &mut lanes, batch, &mut unrecorded, &mut out);
                        }
                    }
                    WriteDone::Flushed { items, failure } => {
                        flushing = false;
                        match failure {
                            None => recorded.extend(items),
                            Some(e) => {
                                out.failure.get_or_insert(e);
                                unrecorded.extend(items);
                            }
                        }
                    }
                    WriteDone::Undone(Err(e)) => {
                        tracing::warn!(error = %crate::error_chain(&e), "could not undo a failed intent write");
                    }
                    WriteDone::Undone(Ok(())) => {}
                }},
                _ = tick.tick(), if !unrecorded.is_empty() && !flushing && out.failure.is_none() => {
                    flushing = true;
                    writes.push(timed(self.flush(org, event_id, &mut unrecorded)));
                }
                _ = sleep_until_some(next_token) => {}
            }
            if unrecorded.len() >= LEDGER_BATCH && !flushing && out.failure.is_none() {
                flushing = true;
                writes.push(timed(self.flush(org, event_id, &mut unrecorded)));
            }
        }
        // The last outcomes: once more even after a failure (the store may be back).
        if !unrecorded.is_empty() {
            let items: Vec<Delivery> = unrecorded.iter().map(|(_, d)| d.clone()).collect();
            let t = Instant::now();
            let saved = self.store.save_deliveries(org, event_id, &items).await;
            out.writing += t.elapsed();
            match saved {
                Ok(()) => recorded.append(&mut unrecorded),
                Err(e) => {
                    out.failure.get_or_insert(e);
                    // These went out (or may have), and their SENDING entries
                    // say so; a later run records them UNCONFIRMED.
                    tracing::error!(
                        unrecorded = unrecorded.len(),
                        "outcomes could not be recorded"
                    );
                }
            }
        }
        recorded.sort_by_key(|(i, _)| *i);
        out.recorded = recorded.into_iter().map(|(_, d)| d).collect();
        out
    }

    fn limiter(&self, action: &Action) -> Option<Limit<'_>> {
        match action {
            Action::Chat {
                channel,
                org,
                target,
                ..
            } => self
                .channels
                .web
                .limiter(channel, org, target)
                .map(Limit::Target),
            a => match a.channel() {
                NotificationChannel::Email => self.rates.email.as_ref(),
                NotificationChannel::Sms => self.rates.sms.as_ref(),
                NotificationChannel::Sns => self.rates.topic.as_ref(),
                _ => None,
            }
            .map(Limit::Channel),
        }
    }

    /// Marks a target that answered it is gone disabled in the settings
    /// (best effort: the delivery's FAILED reason says why either way).
    pub(crate) async fn disable_target(
        &self,
        org: &str,
        channel: &NotificationChannel,
        name: &str,
        e: &SendError,
    ) {
        let Ok(org) = OrgId::parse(org) else { return };
        match self
            .store
            .disable_target(&org, channel, name, &e.to_string())
            .await
        {
            Ok(()) => {
                tracing::warn!(channel = %channel, code = %e.code, "target disabled in the organization's settings")
            }
            Err(err) => {
                tracing::warn!(channel = %channel, error = %crate::error_chain(&err), "could not mark the target disabled")
            }
        }
    }

    /// The write that announces a group of sends about to start: intents,
    /// with the outcomes gathered so far riding along (one BatchWriteItem:
    /// the store keeps the intents as one item), or a worker's conditional takes.
    fn announce<'s>(
        &'s self,
        org: &'s OrgId,
        event_id: &'s str,
        announce: Announce<'s>,
        group: Vec<(usize, Action)>,
        unrecorded: &mut Vec<(usize, Delivery)>,
    ) -> BoxFuture<'s, WriteDone> {
        match announce {
            Announce::Intent { entries } => {
                let (again, fresh): (Vec<Delivery>, Vec<Delivery>) = group
                    .iter()
                    .map(|(_, a)| a.intent())
                    .partition(|d| entries.contains(&d.key()));
                let riders: Vec<(usize, Delivery)> = unrecorded
                    .drain(
                        ..unrecorded
                            .len()
                            .min((LEDGER_BATCH - 1).saturating_sub(again.len())),
                    )
                    .collect();
                Box::pin(async move {
                    let again_keys = again.iter().map(Delivery::key).collect();
                    let mut ridden = again;
                    ridden.extend(riders.iter().map(|(_, d)| d.clone()));
                    let result = self
                        .store
                        .announce_sends(org, event_id, &fresh, &ridden)
                        .await;
                    let intents = (fresh, again_keys);
                    let written = if result.is_ok() {
                        Written::Yes
                    } else {
                        Written::Failed
                    };
                    WriteDone::Announced {
                        started: vec![written; group.len()],
                        group,
                        intents,
                        riders,
                        failure: result.err(),
                    }
                })
            }
            Announce::Take { batch } => {
                let takes: Vec<Delivery> = group.iter().map(|(_, a)| a.taken(batch)).collect();
                Box::pin(async move {
                    let answer = self
                        .store
                        .replace_queued(org, event_id, batch, &takes)
                        .await;
                    WriteDone::Announced {
                        group,
                        intents: (Vec::new(), Vec::new()),
                        riders: Vec::new(),
                        started: answer.written,
                        failure: answer.failure,
                    }
                })
            }
        }
    }

    /// The write of the outcomes gathered so far (25 at most).
    fn flush<'s>(
        &'s self,
        org: &'s OrgId,
        event_id: &'s str,
        unrecorded: &mut Vec<(usize, Delivery)>,
    ) -> BoxFuture<'s, WriteDone> {
        let items: Vec<(usize, Delivery)> = unrecorded
            .drain(..unrecorded.len().min(LEDGER_BATCH))
            .collect();
        Box::pin(async move {
            let ds: Vec<Delivery> = items.iter().map(|(_, d)| d.clone()).collect();
            let failure = self.store.save_deliveries(org, event_id, &ds).await.err();
            WriteDone::Flushed { items, failure }
        })
    }

    /// One send, announced: it starts when first polled, unless that is past
    /// the last start; its call is cut at `calls_end` and at the per-call
    /// timeout (past it, the provider may or may not have the message).
    fn send<'s>(
        &'s self,
        i: usize,
        action: Action,
        last_start: Option<Instant>,
        calls_end: Option<Instant>,
    ) -> BoxFuture<'s, SendDone> {
        Box::pin(async move {
            let started = Instant::now();
            if last_start.is_some_and(|l| started > l) {
                return (i, action, None);
            }
            let end = calls_end.map_or(started + self.policy.send_timeout, |e| {
                e.min(started + self.policy.send_timeout)
            });
            let send = action.send(&self.channels);
            let result = match tokio::time::timeout_at(end, send).await {
                Ok(result) => result,
                Err(_) => Err(SendError::unknown(
                    "DeadlineTimeout",
                    format!(
                        "no answer within the {} ms the deadline left",
                        (end - started).as_millis()
                    ),
                )),
            };
            if let (
                Err(e),
                Action::Chat {
                    channel,
                    org,
                    target,
                    ..
                },
            ) = (&result, &action)
                && e.disables_target
            {
                // Best effort, bounded by the call's own end: never past the deadline.
                let disable = self.disable_target(org, channel, target, e);
                let _ = tokio::time::timeout_at(end, disable).await;
            }
            (i, action, Some((result, started.elapsed())))
        })
    }
}

/// A ledger write, timed.
fn timed(w: BoxFuture<'_, WriteDone>) -> BoxFuture<'_, (WriteDone, Duration)> {
    Box::pin(async move {
        let t = Instant::now();
        let done = w.await;
        (done, t.elapsed())
    })
}

fn lane_of<'l, 'a>(lanes: &'l mut [Lane<'a>], action: &Action) -> &'l mut Lane<'a> {
    let channel = action.channel();
    lanes
        .iter_mut()
        .find(|l| l.channel == channel)
        .expect("every action has its channel's lane")
}

/// Fills a group from the lanes in turn (one action a lane per round), each
/// within its channel's slots and with a token taken now; marks them busy.
/// Answers the group and when the next token of a waiting lane comes; a lane
/// whose next token comes after the last start is held whole.
fn take_ready(
    lanes: &mut [Lane<'_>],
    room: usize,
    max: usize,
    last_start: Option<Instant>,
    held: &mut Vec<Held>,
) -> (Vec<(usize, Action)>, Option<Instant>) {
    let mut group = Vec::new();
    let mut next: Option<Instant> = None;
    let mut blocked = vec![false; lanes.len()];
    while group.len() < room {
        let mut progress = false;
        for (lane, blocked) in lanes.iter_mut().zip(blocked.iter_mut()) {
            if group.len() == room
                || *blocked
                || lane.waiting.is_empty()
                || lane.busy >= lane.slots(max)
            {
                continue;
            }
            match lane
                .limiter
                .as_deref()
                .map_or(Ok(()), RateLimiter::try_take)
            {
                Ok(()) => {
                    group.extend(lane.waiting.pop_front());
                    lane.busy += 1;
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
/// when the provider's quota refused it, the whole channel put back; its
/// call time goes into the channel's average.
fn settle(
    (i, action, done): SendDone,
    lanes: &mut [Lane<'_>],
    batch: Option<&str>,
    unrecorded: &mut Vec<(usize, Delivery)>,
    out: &mut Delivered,
) {
    let lane = lane_of(lanes, &action);
    lane.busy -= 1;
    let Some((result, took)) = done else {
        // Announced, but too late to start: back to not started.
        out.held.push(Held {
            action,
            why: Hold::Deadline,
            announced: true,
        });
        return;
    };
    lane.latency += LATENCY_WEIGHT * (took.as_secs_f64() - lane.latency);
    out.sending += took;
    match result {
        Err(e) if e.throttled => {
            // The quota, not the recipient, refused: this send and the rest
            // of its channel are put back, none recorded FAILED.
            tracing::warn!(channel = %action.channel(), code = %e.code, "provider quota reached; the channel's remaining sends are put back");
            out.held
                .extend(lane.waiting.drain(..).map(|(_, action)| Held {
                    action,
                    why: Hold::Quota,
                    announced: false,
                }));
            out.held.push(Held {
                action,
                why: Hold::Quota,
                announced: true,
            });
        }
        result => {
            let mut d = outcome(&action, result);
            d.batch = batch.map(str::to_owned);
            unrecorded.push((i, d));
        }
    }
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
        Ok(id) if channel == NotificationChannel::MicrosoftTeams => (
            DeliveryStatus::Sent,
            Some(id),
            Some(crate::channels::teams::ACCEPTED.to_owned()),
        ),
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
    let mut d = Delivery::new(channel, contact_id, status);
    d.message_id = message_id;
    d.reason = reason;
    d
}
