//! The hand-off to the work queue and the worker, against in-memory and
//! deliberately failing ports: who is sent what, how often, and who closes
//! the event. (`tests/sqs_worker.rs` runs the same over SQS on the wire.)

use std::sync::Arc;
use std::time::Duration;

use notify_offer_contacts::memory::{
    self, MemoryNotifier, MemoryProvider, MemoryQueue, MemoryStore, StoreOp,
};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};
use notify_offer_contacts::ports::{WorkBatch, WorkQueue};
use notify_offer_contacts::rate::{RateLimiter, RateLimits};
use notify_offer_contacts::work::{Work, WorkDone, WorkError};

struct Rig {
    n: MemoryNotifier,
    store: Arc<MemoryStore>,
    provider: Arc<MemoryProvider>,
    queue: Arc<MemoryQueue>,
}

/// Offer o1 of org1 with `contacts` contacts, EMAIL and SMS; a queue; the
/// hand-off threshold at `max_sync` recipients; 10 deliveries a message.
fn rig(contacts: usize, max_sync: usize) -> Rig {
    rig_with_latency(contacts, max_sync, Duration::ZERO)
}

/// The same, with a provider that takes `latency` a send.
fn rig_with_latency(contacts: usize, max_sync: usize, latency: Duration) -> Rig {
    let store = Arc::new(memory::offer_with_contacts(
        contacts,
        vec![NotificationChannel::Email, NotificationChannel::Sms],
    ));
    let provider = Arc::new(MemoryProvider::with_latency(latency));
    let queue = Arc::new(MemoryQueue::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.policy.hand_off.max_sync_recipients = max_sync;
    n.queue = Some(queue.clone() as Arc<dyn WorkQueue>);
    Rig {
        n,
        store,
        provider,
        queue,
    }
}

fn all() -> NotifyCommand {
    NotifyCommand::new(OrgId::parse("org1").unwrap(), OfferId::parse("o1").unwrap())
}

fn count(ds: &[Delivery], status: DeliveryStatus) -> usize {
    ds.iter().filter(|d| d.status == status).count()
}

/// Marks a queued delivery SENDING, as a worker that took it `ago` would
/// have left it; answers the entry.
fn take(r: &Rig, event_id: &str, key: &str, ago: time::Duration) -> Delivery {
    let mut taken = r
        .store
        .deliveries(event_id)
        .into_iter()
        .find(|d| d.key() == key)
        .expect("a queued delivery");
    taken.status = DeliveryStatus::Sending;
    taken.batch = None;
    taken.time -= ago;
    r.store.put_delivery(event_id, taken.clone());
    taken
}

/// Runs every queued message once (first receive); answers what each did.
async fn drain(r: &Rig) -> Vec<Result<notify_offer_contacts::work::Worked, WorkError>> {
    let mut out = Vec::new();
    for m in r.queue.drain() {
        out.push(r.n.work(m, 1, None).await);
    }
    out
}

#[tokio::test]
async fn a_small_request_stays_synchronous_even_with_a_queue() {
    let r = rig(3, 100);
    let event = r.n.notify(all()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done));
    assert!(r.queue.is_empty());
    assert_eq!(r.provider.emails().len(), 3);
    assert_eq!(r.provider.sms().len(), 3);
}

#[tokio::test]
async fn a_large_request_is_handed_off_and_the_last_batch_closes_the_event_once() {
    let r = rig(25, 10);
    let event = r.n.notify(all()).await.unwrap();
    // The answer: PENDING, with what was queued; nothing sent yet.
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    let info = event.info.clone().unwrap();
    assert_eq!(info["deliveryMode"], "QUEUED");
    assert_eq!(info["queuedDeliveries"], 50);
    assert_eq!(info["queueMessages"], 5);
    assert!(r.provider.emails().is_empty());
    let id = event.event_id.clone().unwrap();
    let ledger = r.store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Queued), 50);
    assert_eq!(r.queue.len(), 5);

    let messages = r.queue.drain();
    // Channels alternate inside each message, and no message holds addresses.
    assert_eq!(
        messages[0].deliveries[0].channel,
        NotificationChannel::Email
    );
    assert_eq!(messages[0].deliveries[1].channel, NotificationChannel::Sms);
    assert!(!serde_json::to_string(&messages).unwrap().contains('@'));

    let mut outcomes = Vec::new();
    for m in messages {
        outcomes.push(r.n.work(m, 1, None).await.unwrap().done);
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WorkDone::Recorded)
            .count(),
        4
    );
    assert_eq!(outcomes.last(), Some(&WorkDone::Closed(EventStatus::Done)));
    assert_eq!(r.provider.emails().len(), 25);
    assert_eq!(r.provider.sms().len(), 25);
    let stored = r.store.event("org1", &id).unwrap();
    assert_eq!(stored.event_status, Some(EventStatus::Done));
    let info = stored.info.unwrap();
    assert_eq!(info["deliverySummary"]["EMAIL"]["sent"], 25);
    assert_eq!(info["queuedDeliveries"], 50, "the hand-off figures stay");
    assert_eq!(count(&r.store.deliveries(&id), DeliveryStatus::Sent), 50);
}

#[tokio::test]
async fn a_redelivered_or_duplicated_message_never_sends_again() {
    // Sends take 20 ms, so the second copy arrives while the first is sending.
    let r = rig_with_latency(12, 1, Duration::from_millis(20));
    let event = r.n.notify(all()).await.unwrap();
    let id = event.event_id.unwrap();
    let messages = r.queue.drain();
    assert_eq!(messages.len(), 3);
    // Message 0 twice at the same time (SQS may deliver a message twice).
    let (a, b) = tokio::join!(
        r.n.work(messages[0].clone(), 1, None),
        r.n.work(messages[0].clone(), 1, None)
    );
    // Each copy takes a delivery from QUEUED just before sending it, so the
    // two share the 10 without overlap. A copy that met the other's takes
    // leaves the batch open (it fails, and SQS would deliver it again).
    assert!(
        [&a, &b]
            .iter()
            .any(|r| matches!(r, Err(WorkError::InFlightElsewhere(_)))),
        "{a:?} {b:?}"
    );
    let recorded: usize = [&a, &b]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|w| w.recorded.len())
        .sum();
    assert!(recorded <= 10);
    assert_eq!(r.provider.emails().len() + r.provider.sms().len(), 10);
    let mut to: Vec<String> = r
        .provider
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), r.provider.emails().len(), "nobody emailed twice");
    // Message 0 again later (redelivered): everything is recorded, nothing is sent.
    let again = r.n.work(messages[0].clone(), 2, None).await.unwrap();
    assert_eq!(again.done, WorkDone::Recorded);
    assert!(again.recorded.is_empty());
    assert_eq!(r.provider.emails().len() + r.provider.sms().len(), 10);
    for m in &messages[1..] {
        r.n.work(m.clone(), 1, None).await.unwrap();
    }
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
    // Every message again, after the close: nothing sent, nothing reopened.
    for m in &messages {
        assert_eq!(
            r.n.work(m.clone(), 3, None).await.unwrap().done,
            WorkDone::AlreadyClosed
        );
    }
    assert_eq!(r.provider.emails().len(), 12);
    assert_eq!(r.provider.sms().len(), 12);
}

#[tokio::test]
async fn a_delivery_left_sending_by_a_dead_worker_is_unconfirmed_not_resent() {
    let r = rig(5, 1);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let messages = r.queue.drain();
    // A worker took c0's email and died before recording the outcome.
    // Longer ago than the lease (15 min): its worker is gone.
    take(&r, &id, "EMAIL#c0", time::Duration::hours(1));
    assert_eq!(
        r.n.work(messages[0].clone(), 2, None).await.unwrap().done,
        WorkDone::Closed(EventStatus::Failed)
    );
    assert!(
        r.provider
            .emails()
            .iter()
            .all(|e| e.to.as_str() != "c0@buyer.example.com")
    );
    assert_eq!(r.provider.emails().len(), 4);
    let ledger = r.store.deliveries(&id);
    let c0 = ledger.iter().find(|d| d.key() == "EMAIL#c0").unwrap();
    assert_eq!(c0.status, DeliveryStatus::Unconfirmed);
    let event = r.store.event("org1", &id).unwrap();
    assert_eq!(
        event.info.unwrap()["deliverySummary"]["EMAIL"]["unconfirmed"],
        1
    );
}

#[tokio::test]
async fn a_failing_message_is_retried_then_its_deliveries_are_recorded_failed() {
    let r = rig(12, 1);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let messages = r.queue.drain();
    for m in &messages[1..] {
        r.n.work(m.clone(), 1, None).await.unwrap();
    }
    // Message 0 cannot read the offer on any receive.
    r.store.fail(StoreOp::ReadOffer);
    for receive in 1..5 {
        assert!(matches!(
            r.n.work(messages[0].clone(), receive, None).await,
            Err(WorkError::Store(_))
        ));
        assert_eq!(
            r.store.event("org1", &id).unwrap().event_status,
            Some(EventStatus::Pending)
        );
    }
    // The 5th receive is the queue's last (maxReceiveCount 5): it gives up,
    // the message goes on to the DLQ, and the event closes saying who failed.
    assert!(r.n.work(messages[0].clone(), 5, None).await.is_err());
    let event = r.store.event("org1", &id).unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Failed));
    let ledger = r.store.deliveries(&id);
    let failed: Vec<&Delivery> = ledger
        .iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 10);
    assert!(
        failed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("gave up after 5 receives")
    );
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 14);
    assert_eq!(event.info.unwrap()["deliverySummary"]["EMAIL"]["failed"], 5);
}

#[tokio::test]
async fn a_message_naming_no_known_event_fails_and_sends_nothing() {
    let r = rig(2, 100);
    let ghost = WorkBatch {
        organization_id: "org1".into(),
        event_id: "no-such-event".into(),
        offer_id: "o1".into(),
        batch_id: "b00000".into(),
        deliveries: vec![],
        not_before: None,
    };
    assert!(matches!(
        r.n.work(ghost.clone(), 1, None).await,
        Err(WorkError::EventNotFound(_))
    ));
    assert!(r.n.work(ghost, 5, None).await.is_err());
    let mut bad = WorkBatch {
        organization_id: "org 1; DROP".into(),
        event_id: "e".into(),
        offer_id: "o1".into(),
        batch_id: "b".into(),
        deliveries: vec![],
        not_before: None,
    };
    assert!(matches!(
        r.n.work(bad.clone(), 1, None).await,
        Err(WorkError::Malformed(_))
    ));
    bad.organization_id = "org1".into();
    bad.event_id = "../EVENT#x".into();
    assert!(matches!(
        r.n.work(bad, 1, None).await,
        Err(WorkError::Malformed(_))
    ));
    assert!(r.provider.emails().is_empty());
}

#[tokio::test]
async fn when_the_queue_refuses_the_event_says_nobody_was_notified() {
    let r = rig(4, 1);
    r.queue.refuse_all(true);
    let event = r.n.notify(all()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Failed));
    let ledger = r.store.deliveries(event.event_id.as_deref().unwrap());
    assert_eq!(count(&ledger, DeliveryStatus::Failed), 8);
    assert!(
        ledger[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("could not be queued")
    );
    assert!(r.provider.emails().is_empty());
}

#[tokio::test(start_paused = true)]
async fn near_the_deadline_a_worker_puts_the_rest_back_for_the_next_receive() {
    let r = rig(6, 1);
    let mut n = memory::notifier(r.store.clone(), r.provider.clone(), 1);
    n.policy.hand_off.max_sync_recipients = 1;
    n.queue = Some(r.queue.clone() as Arc<dyn WorkQueue>);
    // 1 email a second, and 5.5 s left: 3 s are the margin and a send needs
    // 2 s of call time, so sends may start for 0.5 s: one email, and the SMS.
    n.rates = RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        ..RateLimits::default()
    };
    let id = n.notify(all()).await.unwrap().event_id.unwrap();
    let messages = r.queue.drain();
    assert_eq!(messages.len(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(5_500);
    let first = n.work(messages[0].clone(), 1, Some(deadline)).await;
    let Err(WorkError::OutOfTime(left)) = first else {
        panic!("expected out of time, got {first:?}")
    };
    assert!(left > 0);
    assert_eq!(
        count(&r.store.deliveries(&id), DeliveryStatus::Queued),
        12 - (10 - left)
    );
    // The next receive sends only the rest.
    n.work(messages[0].clone(), 2, None).await.unwrap();
    n.work(messages[1].clone(), 1, None).await.unwrap();
    assert_eq!(r.provider.emails().len(), 6);
    assert_eq!(r.provider.sms().len(), 6);
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
}

#[tokio::test]
async fn a_keyed_retry_of_an_interrupted_hand_off_queues_the_rest_once() {
    let r = rig(30, 1);
    let keyed = NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
        ..all()
    };
    // The hand-off stops after storing the event and ledger, before enqueueing.
    r.store.fail(StoreOp::WorkBatches);
    assert!(r.n.notify(keyed.clone()).await.is_err());
    assert!(r.queue.is_empty());
    r.store.heal(StoreOp::WorkBatches);
    let event = r.n.notify(keyed.clone()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    assert_eq!(r.queue.len(), 6);
    // A third call with the key answers with the event, queueing nothing more.
    r.n.notify(keyed.clone()).await.unwrap();
    assert_eq!(r.queue.len(), 6);
    let outcomes = drain(&r).await;
    assert!(outcomes.iter().all(Result::is_ok));
    assert_eq!(r.provider.emails().len(), 30);
    let id = event.event_id.unwrap();
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
    // The key now replays the closed event.
    let replay = r.n.notify(keyed).await.unwrap();
    assert_eq!(replay.event_status, Some(EventStatus::Done));
}

#[tokio::test]
async fn the_estimate_follows_the_rates_and_the_budget_decides() {
    let r = rig(20, 1000);
    let mut n = memory::notifier(r.store.clone(), r.provider.clone(), 8);
    n.queue = Some(r.queue.clone() as Arc<dyn WorkQueue>);
    n.rates = RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        sms: Some(RateLimiter::new(10.0, 10)),
        ..RateLimits::default()
    };
    let channels = vec![NotificationChannel::Email; 20];
    assert_eq!(n.estimate(&channels), Duration::from_secs(20));
    // 20 emails at 1/s cannot finish in 14.5 s: queued although only 20 recipients.
    let event = n.notify(all()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    assert_eq!(r.queue.len(), 4);
}

#[tokio::test]
async fn a_message_can_only_send_what_the_request_queued() {
    // 3 contacts on the offer; the request (threshold 1) queues c0 and c1 only.
    let r = rig(3, 1);
    let listed = NotifyCommand {
        contact_ids: Some(ContactIdList::parse(&["c0", "c1"]).unwrap()),
        ..all()
    };
    let event = r.n.notify(listed).await.unwrap();
    let id = event.event_id.unwrap();
    let mut messages = r.queue.drain();
    assert_eq!(messages.len(), 1);
    // A forged or corrupted message adds c2 (a contact of the org, on the
    // offer, not in this event) and a topic delivery.
    let genuine = messages.remove(0);
    let mut forged = genuine.clone();
    for item in forged.deliveries.clone() {
        let mut other = item.clone();
        other.contact_id = Some("c2".into());
        forged.deliveries.push(other);
    }
    forged
        .deliveries
        .push(notify_offer_contacts::ports::WorkItem {
            channel: NotificationChannel::Sns,
            contact_id: None,
            cc: false,
        });
    // Refused whole: it names deliveries its batch does not hold. Nothing is
    // sent, and on its last receive it gives up nothing and closes nothing.
    let refused = r.n.work(forged.clone(), 1, None).await;
    assert!(
        matches!(refused, Err(WorkError::Malformed(_))),
        "{refused:?}"
    );
    let refused = r.n.work(forged, 5, None).await;
    assert!(
        matches!(refused, Err(WorkError::Malformed(_))),
        "{refused:?}"
    );
    // One that names its own deliveries twice is refused whole as well.
    let mut doubled = genuine.clone();
    doubled.deliveries.push(genuine.deliveries[0].clone());
    let refused = r.n.work(doubled, 5, None).await;
    assert!(
        matches!(&refused, Err(WorkError::Malformed(why)) if why.contains("twice")),
        "{refused:?}"
    );
    assert!(r.provider.emails().is_empty() && r.provider.sms().is_empty());
    assert_eq!(count(&r.store.deliveries(&id), DeliveryStatus::Queued), 4);
    assert_eq!(r.store.open_batch_ids(&id).map(|b| b.len()), Some(1));
    // The genuine message sends its own.
    r.n.work(genuine, 1, None).await.unwrap();
    assert_eq!(r.provider.emails().len(), 2);
    assert_eq!(r.provider.sms().len(), 2);
    assert!(r.provider.published().is_empty());
    assert!(
        r.provider
            .emails()
            .iter()
            .all(|e| !e.to.as_str().starts_with("c2@"))
    );
    assert!(
        r.store
            .deliveries(&id)
            .iter()
            .all(|d| d.contact_id.as_deref() != Some("c2"))
    );
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
}

#[tokio::test]
async fn cc_contacts_get_their_email_copy_through_the_queue_too() {
    let store = Arc::new(memory::offer_with_contacts(5, vec![]).with_settings(
        "org1",
        NotificationSettings {
            channels: Some(vec![NotificationChannel::Email, NotificationChannel::Sms]),
            cc_contact_ids: Some(vec!["c4".into()]),
            ..NotificationSettings::default()
        },
    ));
    let provider = Arc::new(MemoryProvider::default());
    let queue = Arc::new(MemoryQueue::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 4);
    n.policy.hand_off.max_sync_recipients = 1;
    n.queue = Some(queue.clone() as Arc<dyn WorkQueue>);
    let listed = NotifyCommand {
        contact_ids: Some(ContactIdList::parse(&["c0", "c1", "c2"]).unwrap()),
        ..all()
    };
    let event = n.notify(listed).await.unwrap();
    assert_eq!(event.cc_contact_ids, Some(vec!["c4".to_string()]));
    let messages = queue.drain();
    let cc: Vec<_> = messages
        .iter()
        .flat_map(|m| &m.deliveries)
        .filter(|d| d.cc)
        .collect();
    assert_eq!(cc.len(), 1);
    assert_eq!(cc[0].contact_id.as_deref(), Some("c4"));
    for m in messages {
        n.work(m, 1, None).await.unwrap();
    }
    let mut to: Vec<String> = provider
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    to.sort();
    assert_eq!(
        to,
        [
            "c0@buyer.example.com",
            "c1@buyer.example.com",
            "c2@buyer.example.com",
            "c4@buyer.example.com"
        ]
    );
    assert_eq!(provider.sms().len(), 3, "the cc contact gets no SMS");
}

#[tokio::test(start_paused = true)]
async fn a_synchronous_run_near_its_deadline_hands_the_rest_to_the_queue() {
    // 6 contacts, EMAIL and SMS: small enough to start synchronously.
    let store = Arc::new(memory::offer_with_contacts(
        6,
        vec![NotificationChannel::Email, NotificationChannel::Sms],
    ));
    // A provider slower than expected: 300 ms a send, one at a time.
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(300)));
    let queue = Arc::new(MemoryQueue::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 1);
    n.queue = Some(queue.clone() as Arc<dyn WorkQueue>);
    // 5.5 s left: sends may start for 0.5 s (3 s margin, 2 s of call time): 2 sends.
    let cmd = NotifyCommand {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(5_500)),
        ..all()
    };
    let event = n.notify(cmd).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    let info = event.info.clone().unwrap();
    assert_eq!(info["deliveryMode"], "QUEUED");
    let sent_here = provider.emails().len() + provider.sms().len();
    assert!(
        (1..12).contains(&sent_here),
        "{sent_here} sent before the deadline"
    );
    assert_eq!(info["queuedDeliveries"], 12 - sent_here);
    let id = event.event_id.unwrap();
    // Nothing is left SENDING: what was not started is QUEUED, not lost.
    let ledger = store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 0);
    assert_eq!(count(&ledger, DeliveryStatus::Queued), 12 - sent_here);

    let mut worker = memory::notifier(store.clone(), provider.clone(), 8);
    worker.queue = None;
    for m in queue.drain() {
        worker.work(m, 1, None).await.unwrap();
    }
    assert_eq!(provider.emails().len(), 6);
    assert_eq!(provider.sms().len(), 6);
    let closed = store.event("org1", &id).unwrap();
    assert_eq!(closed.event_status, Some(EventStatus::Done));
    assert_eq!(closed.info.unwrap()["deliverySummary"]["EMAIL"]["sent"], 6);
}

#[tokio::test]
async fn a_delivery_another_copy_is_sending_is_left_to_it_and_the_batch_stays_open() {
    let r = rig(5, 1);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let messages = r.queue.drain();
    assert_eq!(messages.len(), 1);
    // Another copy of the message took c0's email a moment ago and is sending it.
    let mut taken = take(&r, &id, "EMAIL#c0", time::Duration::ZERO);
    let busy = r.n.work(messages[0].clone(), 1, None).await;
    assert!(
        matches!(busy, Err(WorkError::InFlightElsewhere(1))),
        "{busy:?}"
    );
    // The rest went out; c0's email was not sent by this copy; nothing closed.
    assert_eq!(r.provider.emails().len(), 4);
    assert_eq!(r.provider.sms().len(), 5);
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Pending)
    );
    assert_eq!(r.store.open_batch_ids(&id).map(|b| b.len()), Some(1));
    // The other copy records its outcome; the message's next receive completes the batch.
    taken.status = DeliveryStatus::Sent;
    r.store.put_delivery(&id, taken);
    let done = r.n.work(messages[0].clone(), 2, None).await.unwrap();
    assert_eq!(done.done, WorkDone::Closed(EventStatus::Done));
    assert_eq!(r.provider.emails().len(), 4, "nothing sent again");
}

#[tokio::test]
async fn a_hand_off_whose_ledger_write_failed_is_rebuilt_by_the_keyed_retry() {
    // Nothing of the ledger landed, then 25 of 60 entries: either way the
    // retry rebuilds the rest from the event's own recipient list.
    for landed in [0, 1] {
        let r = rig(30, 1);
        let keyed = NotifyCommand {
            idempotency_key: Some(IdempotencyKey::parse("k-rebuild").unwrap()),
            ..all()
        };
        r.store.fail_after(StoreOp::SaveDeliveries, landed);
        assert!(r.n.notify(keyed.clone()).await.is_err());
        r.store.heal(StoreOp::SaveDeliveries);
        assert!(
            r.queue.is_empty(),
            "nothing was queued before the ledger was whole"
        );
        let id = r.store.events()[0].event_id.clone().unwrap();
        assert_eq!(r.store.deliveries(&id).len(), 25 * landed);

        let retried = r.n.notify(keyed.clone()).await.unwrap();
        assert_eq!(retried.event_status, Some(EventStatus::Pending));
        let ledger = r.store.deliveries(&id);
        assert_eq!(
            count(&ledger, DeliveryStatus::Queued),
            60,
            "landed {landed}"
        );
        let messages = r.queue.drain();
        let queued: usize = messages.iter().map(|m| m.deliveries.len()).sum();
        assert_eq!(queued, 60);
        for m in messages {
            r.n.work(m, 1, None).await.unwrap();
        }
        let closed = r.store.event("org1", &id).unwrap();
        assert_eq!(
            closed.event_status,
            Some(EventStatus::Done),
            "landed {landed}"
        );
        assert_eq!(r.provider.emails().len(), 30);
        assert_eq!(r.provider.sms().len(), 30);
    }
}

#[tokio::test]
async fn a_batch_completed_early_never_closes_the_event_over_unsent_deliveries() {
    let r = rig(12, 1);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let messages = r.queue.drain();
    assert_eq!(messages.len(), 3);
    // A forged message reuses batch b00000's ID but names only two of its deliveries.
    let mut forged = messages[0].clone();
    forged.deliveries.truncate(2);
    r.n.work(forged, 1, None).await.unwrap();
    for m in &messages[1..] {
        r.n.work(m.clone(), 1, None).await.unwrap();
    }
    // b00000's other 8 deliveries are still QUEUED: the event stays open.
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Pending)
    );
    // The genuine message arrives: it sends the rest and closes the event.
    r.n.work(messages[0].clone(), 1, None).await.unwrap();
    assert_eq!(
        r.store.event("org1", &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
    assert_eq!(r.provider.emails().len() + r.provider.sms().len(), 24);
}
