//! The send engine at the settings production starts with (1 email a second,
//! Lambda's deadline, a store that fails half-way), over in-memory and
//! failing ports, with tokio's clock paused so that seconds pass at once:
//! when sends start, what the ledger says, and that retries finish the rest
//! with nobody sent twice and nobody lost.

use std::sync::Arc;
use std::time::Duration;

use notify_offer_contacts::memory::{self, MemoryProvider, MemoryQueue, MemoryStore, StoreOp};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};
use notify_offer_contacts::ports::WorkQueue;
use notify_offer_contacts::rate::{RateLimiter, RateLimits};
use notify_offer_contacts::work::{Work, WorkError};
use tokio::time::Instant;

const ORG: &str = "org1";

/// `n` contacts on offer o1, EMAIL only.
fn emails_only(n: usize) -> Arc<MemoryStore> {
    Arc::new(memory::offer_with_contacts(
        n,
        vec![NotificationChannel::Email],
    ))
}

fn keyed(key: &str, deadline: Option<Instant>) -> NotifyCommand {
    NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse(key).unwrap()),
        deadline,
        ..NotifyCommand::new(OrgId::parse(ORG).unwrap(), OfferId::parse("o1").unwrap())
    }
}

fn one_email_a_second() -> RateLimits {
    RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        ..RateLimits::default()
    }
}

fn count(ds: &[Delivery], status: DeliveryStatus) -> usize {
    ds.iter().filter(|d| d.status == status).count()
}

/// Every address emailed, sorted, with repeats kept.
fn emailed(p: &MemoryProvider) -> Vec<String> {
    let mut to: Vec<String> = p
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    to.sort();
    to
}

fn once_each(n: usize) -> Vec<String> {
    let mut to: Vec<String> = (0..n).map(|i| format!("c{i}@buyer.example.com")).collect();
    to.sort();
    to
}

#[tokio::test(start_paused = true)]
async fn at_one_email_a_second_the_answer_beats_the_deadline_and_retries_send_everyone_once() {
    // The scenario: no work queue, EMAIL_PER_SECOND=1, 30 email
    // contacts, a keyed request whose deadline is 8 s away.
    let store = emails_only(30);
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(150)));
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.rates = one_email_a_second();

    let start = Instant::now();
    let first = n
        .notify(keyed("k-30", Some(start + Duration::from_secs(8))))
        .await
        .unwrap();
    let answered = start.elapsed();
    // 3 s margin, 2 s of call time: sends start for 3 s only, at 0, 1, 2, 3 s.
    assert!(
        answered < Duration::from_secs(5),
        "answered after {answered:?}"
    );
    assert_eq!(first.event_status, Some(EventStatus::Pending));
    let id = first.event_id.clone().unwrap();
    assert_eq!(provider.emails().len(), 4);
    let ledger = store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 4);
    assert_eq!(count(&ledger, DeliveryStatus::NotStarted), 26);
    assert_eq!(
        count(&ledger, DeliveryStatus::Sending),
        0,
        "no intent without a send"
    );
    assert_eq!(first.info.as_ref().unwrap()["deliveriesNotStarted"], 26);

    // Each retry with the key, under the same deadline, sends the next few.
    let mut last = first;
    for _ in 0..10 {
        if last.event_status != Some(EventStatus::Pending) {
            break;
        }
        let start = Instant::now();
        last = n
            .notify(keyed("k-30", Some(start + Duration::from_secs(8))))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(8));
        assert_eq!(last.event_id.as_deref(), Some(id.as_str()));
    }
    assert_eq!(last.event_status, Some(EventStatus::Done));
    assert_eq!(
        emailed(&provider),
        once_each(30),
        "all 30, each exactly once"
    );
    assert_eq!(count(&store.deliveries(&id), DeliveryStatus::Sent), 30);
    // Only the first run's 4 were announced; the retries' sends each had an
    // entry already (NOT_STARTED), so theirs was an entry too: an
    // announcement never stands against an entry of its own.
    let mut announced = store.announced();
    announced.sort();
    let mut first_four: Vec<String> = ledger
        .iter()
        .filter(|d| d.status == DeliveryStatus::Sent)
        .map(Delivery::key)
        .collect();
    first_four.sort();
    assert_eq!(announced, first_four);
}

#[tokio::test(start_paused = true)]
async fn a_provider_slower_than_the_time_left_cannot_push_the_answer_past_the_deadline() {
    let store = emails_only(3);
    // 20 s a send, far past the 8 s deadline.
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_secs(20)));
    let n = memory::notifier(store.clone(), provider.clone(), 8);
    let start = Instant::now();
    let event = n
        .notify(keyed("k-slow", Some(start + Duration::from_secs(8))))
        .await
        .unwrap();
    // Each call is cut when 3 s are left (the margin): the answer follows.
    assert!(
        start.elapsed() <= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    let ledger = store.deliveries(event.event_id.as_deref().unwrap());
    // The provider may have the messages: at most once, so UNCONFIRMED, and
    // never sent again.
    assert_eq!(count(&ledger, DeliveryStatus::Unconfirmed), 3);
    assert_eq!(event.event_status, Some(EventStatus::Failed));
    let again = n.notify(keyed("k-slow", None)).await.unwrap();
    assert_eq!(again.event_status, Some(EventStatus::Failed));
    assert!(provider.emails().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_right_after_the_first_send_loses_nobody() {
    // The scenario: ["c0","c1"], default rates (1 email a second), the
    // store down right after the first SendEmail.
    let store = emails_only(2);
    let provider = Arc::new(MemoryProvider::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.rates = one_email_a_second();
    // The first ledger write (c0's intent) lands; every later one fails.
    store.fail_after(StoreOp::SaveDeliveries, 1);
    let cmd = NotifyCommand {
        contact_ids: Some(ContactIdList::parse(&["c0", "c1"]).unwrap()),
        ..keyed("k-outage", None)
    };
    let failed = n.notify(cmd.clone()).await;
    assert!(failed.is_err(), "a 500: {failed:?}");
    assert_eq!(emailed(&provider), ["c0@buyer.example.com"]);
    let id = store.events()[0].event_id.clone().unwrap();
    // c1 never started: nothing in the ledger claims it did.
    let ledger = store.deliveries(&id);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].contact_id.as_deref(), Some("c0"));
    assert_eq!(ledger[0].status, DeliveryStatus::Sending);

    store.heal(StoreOp::SaveDeliveries);
    let retry = n.notify(cmd).await.unwrap();
    assert_eq!(retry.event_id.as_deref(), Some(id.as_str()));
    // c0 was in flight when the store failed: UNCONFIRMED, not sent again.
    // c1 was never started: the retry mails it.
    assert_eq!(emailed(&provider), once_each(2));
    let ledger = store.deliveries(&id);
    let status = |c: &str| {
        ledger
            .iter()
            .find(|d| d.contact_id.as_deref() == Some(c))
            .map(|d| d.status)
    };
    assert_eq!(status("c0"), Some(DeliveryStatus::Unconfirmed));
    assert_eq!(status("c1"), Some(DeliveryStatus::Sent));
}

#[tokio::test(start_paused = true)]
async fn a_failed_intent_write_starts_nothing_and_leaves_no_intent() {
    let store = emails_only(3);
    let provider = Arc::new(MemoryProvider::default());
    let n = memory::notifier(store.clone(), provider.clone(), 8);
    store.fail(StoreOp::SaveDeliveries);
    assert!(n.notify(keyed("k-intent", None)).await.is_err());
    assert!(provider.emails().is_empty());
    let id = store.events()[0].event_id.clone().unwrap();
    assert!(store.deliveries(&id).is_empty());
    store.heal(StoreOp::SaveDeliveries);
    let done = n.notify(keyed("k-intent", None)).await.unwrap();
    assert_eq!(done.event_status, Some(EventStatus::Done));
    assert_eq!(emailed(&provider), once_each(3));
}

/// A handed-off offer of `n` email contacts (threshold 1), one message per 10.
fn queued_rig(
    n: usize,
) -> (
    memory::MemoryNotifier,
    Arc<MemoryStore>,
    Arc<MemoryProvider>,
    Arc<MemoryQueue>,
) {
    let store = emails_only(n);
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(600)));
    let queue = Arc::new(MemoryQueue::default());
    let mut w = memory::notifier(store.clone(), provider.clone(), 1);
    w.policy.hand_off.max_sync_recipients = 1;
    w.queue = Some(queue.clone() as Arc<dyn WorkQueue>);
    w.rates = one_email_a_second();
    (w, store, provider, queue)
}

#[tokio::test(start_paused = true)]
async fn a_killed_worker_leaves_unconfirmed_only_what_was_in_flight() {
    let (mut w, store, provider, queue) = queued_rig(10);
    let id = w
        .notify(NotifyCommand::new(
            OrgId::parse(ORG).unwrap(),
            OfferId::parse("o1").unwrap(),
        ))
        .await
        .unwrap()
        .event_id
        .unwrap();
    let message = queue.drain().remove(0);
    // Killed at 1.3 s: the first email went at 0 s (done at 0.6 s), the second
    // started at 1 s and is in flight; the other 8 never started.
    let killed = tokio::time::timeout(
        Duration::from_millis(1300),
        w.work(message.clone(), 1, None),
    )
    .await;
    assert!(killed.is_err(), "the worker was killed");
    let ledger = store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 1);
    assert_eq!(
        count(&ledger, DeliveryStatus::Sending),
        1,
        "only the send in flight"
    );
    assert_eq!(
        count(&ledger, DeliveryStatus::Queued),
        8,
        "not taken: still QUEUED"
    );

    // The next receive, after the dead worker's lease: the one in flight is
    // UNCONFIRMED, the 8 go out.
    w.policy.hand_off.sending_lease = Duration::ZERO;
    w.work(message, 2, None).await.unwrap();
    let ledger = store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Unconfirmed), 1);
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 9);
    // The cancelled send never reached the in-memory provider: 9 emails, none twice.
    let sent = emailed(&provider);
    let mut unique = sent.clone();
    unique.dedup();
    assert_eq!((sent.len(), unique.len()), (9, 9));
    assert_eq!(
        store.event(ORG, &id).unwrap().event_status,
        Some(EventStatus::Failed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_take_that_fails_half_way_sends_what_it_took_and_leaves_the_rest_queued() {
    let (mut w, store, provider, queue) = queued_rig(10);
    w.rates = RateLimits::default();
    w.concurrency = 8;
    let id = w
        .notify(NotifyCommand::new(
            OrgId::parse(ORG).unwrap(),
            OfferId::parse("o1").unwrap(),
        ))
        .await
        .unwrap()
        .event_id
        .unwrap();
    let message = queue.drain().remove(0);
    // Three conditional takes land, then the store fails.
    store.fail_after(StoreOp::TakeQueued, 3);
    let failed = w.work(message.clone(), 1, None).await;
    assert!(matches!(failed, Err(WorkError::Store(_))), "{failed:?}");
    let ledger = store.deliveries(&id);
    assert_eq!(
        count(&ledger, DeliveryStatus::Sent),
        3,
        "what was taken was sent"
    );
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 0);
    assert_eq!(count(&ledger, DeliveryStatus::Queued), 7);
    store.heal(StoreOp::TakeQueued);
    w.work(message, 2, None).await.unwrap();
    assert_eq!(emailed(&provider), once_each(10));
    assert_eq!(
        store.event(ORG, &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_obeys_the_deadline_whatever_the_provider_latency() {
    let (mut w, store, _provider, queue) = queued_rig(10);
    w.rates = RateLimits::default();
    w.concurrency = 8;
    let id = w
        .notify(NotifyCommand::new(
            OrgId::parse(ORG).unwrap(),
            OfferId::parse("o1").unwrap(),
        ))
        .await
        .unwrap()
        .event_id
        .unwrap();
    let message = queue.drain().remove(0);
    let slow = Arc::new(MemoryProvider::with_latency(Duration::from_secs(60)));
    let mut slow_worker = memory::notifier(store.clone(), slow, 8);
    slow_worker.policy = w.policy.clone();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    let result = slow_worker.work(message, 1, Some(deadline)).await;
    assert!(
        start.elapsed() <= Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    // Eight started at once and were cut when 3 s were left; the last two
    // could not start: the message is reported failed, to be received again.
    assert!(matches!(result, Err(WorkError::OutOfTime(2))), "{result:?}");
    let ledger = store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Unconfirmed), 8);
    assert_eq!(
        count(&ledger, DeliveryStatus::Queued),
        2,
        "the rest waits for the next receive"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quota_refusal_puts_the_channel_back_and_the_others_go_on() {
    let store = Arc::new(memory::offer_with_contacts(
        3,
        vec![NotificationChannel::Email, NotificationChannel::Sms],
    ));
    let provider = Arc::new(MemoryProvider::default());
    let n = memory::notifier(store.clone(), provider.clone(), 8);
    let throttled = notify_offer_contacts::ports::SendError {
        throttled: true,
        ..notify_offer_contacts::ports::SendError::transient(
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
        )
    };
    provider.refuse("c0@buyer.example.com", throttled);
    let event = n.notify(keyed("k-quota", None)).await.unwrap();
    let ledger = store.deliveries(event.event_id.as_deref().unwrap());
    assert_eq!(
        count(&ledger, DeliveryStatus::Failed),
        0,
        "the recipients did nothing wrong"
    );
    assert_eq!(provider.sms().len(), 3, "SMS go on");
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    assert!(count(&ledger, DeliveryStatus::NotStarted) >= 1);
}

#[tokio::test]
async fn an_unreadable_contact_fails_alone_and_the_others_are_notified() {
    let store = Arc::new(
        memory::offer_with_contacts(
            3,
            vec![NotificationChannel::Email, NotificationChannel::Sms],
        )
        .with_unreadable_contact(ORG, "c1"),
    );
    let provider = Arc::new(MemoryProvider::default());
    let n = memory::notifier(store.clone(), provider.clone(), 8);
    // Listed by ID too: it exists, so it is not "not on the offer".
    let event = n
        .notify(NotifyCommand {
            contact_ids: Some(ContactIdList::parse(&["c0", "c1", "c2"]).unwrap()),
            ..NotifyCommand::new(OrgId::parse(ORG).unwrap(), OfferId::parse("o1").unwrap())
        })
        .await
        .unwrap();
    assert_eq!(provider.emails().len(), 2);
    assert_eq!(provider.sms().len(), 2);
    let ledger = store.deliveries(event.event_id.as_deref().unwrap());
    let bad: Vec<&Delivery> = ledger
        .iter()
        .filter(|d| d.contact_id.as_deref() == Some("c1"))
        .collect();
    assert_eq!(bad.len(), 2, "EMAIL and SMS");
    assert!(bad.iter().all(|d| {
        d.status == DeliveryStatus::Failed
            && d.reason
                .as_deref()
                .unwrap()
                .starts_with("contact record unreadable")
    }));
    assert_eq!(event.event_status, Some(EventStatus::Failed));
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_cannot_make_a_send_start_late_or_end_past_the_margin() {
    // Every ledger write takes 1 s (a token refills meanwhile); 1 email a
    // second; each send takes 5 s; 12 s to the deadline.
    let store = emails_only(6);
    store.slow_writes(Duration::from_secs(1));
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_secs(5)));
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.rates = one_email_a_second();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(12);
    let event = n.notify(keyed("k-slow-store", Some(deadline))).await;
    let answered = start.elapsed();
    let event = event.expect("an answer, not a cut-off");
    assert!(
        answered < Duration::from_millis(11_750),
        "answered after {answered:?}"
    );
    let ledger = store.deliveries(event.event_id.as_deref().unwrap());
    // Nothing SENDING: every send started as soon as it was announced, was
    // cut at the margin if it had to be (UNCONFIRMED), and was recorded.
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 0, "{ledger:?}");
    assert_eq!(
        count(&ledger, DeliveryStatus::Sent)
            + count(&ledger, DeliveryStatus::Unconfirmed)
            + count(&ledger, DeliveryStatus::NotStarted),
        6
    );
    assert!(count(&ledger, DeliveryStatus::Sent) >= 1);
    assert_eq!(
        provider.emails().len(),
        count(&ledger, DeliveryStatus::Sent)
    );
}

#[tokio::test(start_paused = true)]
async fn a_send_refused_for_quota_is_put_back_even_when_the_store_then_fails() {
    let store = emails_only(2);
    let provider = Arc::new(MemoryProvider::default());
    let n = memory::notifier(store.clone(), provider.clone(), 8);
    provider.refuse(
        "c0@buyer.example.com",
        notify_offer_contacts::ports::SendError {
            throttled: true,
            ..notify_offer_contacts::ports::SendError::transient("TooManyRequestsException", "rate")
        },
    );
    // The intents land; the outcome write fails once; then the store is back.
    store.fail_once_after(StoreOp::SaveDeliveries, 1);
    assert!(n.notify(keyed("k-q", None)).await.is_err());
    let id = store.events()[0].event_id.clone().unwrap();
    let entry = |c: &str| {
        store
            .deliveries(&id)
            .into_iter()
            .find(|d| d.contact_id.as_deref() == Some(c))
            .unwrap()
            .status
    };
    // c0 never went out: NOT_STARTED, not SENDING (which a retry would turn
    // into UNCONFIRMED and never send).
    assert_eq!(entry("c0"), DeliveryStatus::NotStarted);
    assert_eq!(
        entry("c1"),
        DeliveryStatus::Sending,
        "c1 went out, unrecorded"
    );
    provider.refuse(
        "nobody",
        notify_offer_contacts::ports::SendError::transient("x", "y"),
    );
    let provider2 = Arc::new(MemoryProvider::default());
    let n2 = memory::notifier(store.clone(), provider2.clone(), 8);
    n2.notify(keyed("k-q", None)).await.unwrap();
    assert_eq!(emailed(&provider2), ["c0@buyer.example.com"]);
    assert_eq!(entry("c1"), DeliveryStatus::Unconfirmed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_intent_write_on_a_retry_puts_resumed_entries_back_not_started() {
    // A retry resumes deliveries that have an entry (NOT_STARTED); its intent
    // write fails. The entry must be written back NOT_STARTED, not deleted:
    // in DynamoDB an earlier run's announcement may list that key, and with
    // no entry it would read SENDING and never be sent.
    let store = emails_only(30);
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(150)));
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.rates = one_email_a_second();
    let first = n
        .notify(keyed(
            "k-back",
            Some(Instant::now() + Duration::from_secs(8)),
        ))
        .await
        .unwrap();
    let id = first.event_id.clone().unwrap();
    assert_eq!(
        count(&store.deliveries(&id), DeliveryStatus::NotStarted),
        26
    );

    store.fail_once_after(StoreOp::SaveDeliveries, 0);
    let failed = n
        .notify(keyed(
            "k-back",
            Some(Instant::now() + Duration::from_secs(8)),
        ))
        .await;
    assert!(failed.is_err(), "{failed:?}");
    let ledger = store.deliveries(&id);
    assert_eq!(ledger.len(), 30, "no entry deleted: {ledger:?}");
    assert_eq!(count(&ledger, DeliveryStatus::NotStarted), 26);
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 0);
    assert_eq!(provider.emails().len(), 4, "nothing started");

    let mut last = failed;
    for _ in 0..12 {
        if matches!(&last, Ok(e) if e.event_status == Some(EventStatus::Done)) {
            break;
        }
        last = n
            .notify(keyed(
                "k-back",
                Some(Instant::now() + Duration::from_secs(8)),
            ))
            .await;
    }
    assert_eq!(last.unwrap().event_status, Some(EventStatus::Done));
    assert_eq!(
        emailed(&provider),
        once_each(30),
        "all 30, each exactly once"
    );
}
