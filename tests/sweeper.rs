//! No event stays PENDING for ever: the sweeper (a schedule) resumes or
//! closes events whose lease has run out, from their own recipient list and
//! ledger. Use-case tests over in-memory ports, then the index and the lease
//! over DynamoDB's wire protocol (moto), and the schedule through the handler.

mod common;

use std::sync::Arc;
use std::time::Duration;

use notify_offer_contacts::memory::{
    self, MemoryNotifier, MemoryProvider, MemoryQueue, MemoryStore, StoreOp,
};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{ErrorKind, NotifyCommand, NotifyContacts, Sweeper};
use notify_offer_contacts::ports::WorkQueue;
use notify_offer_contacts::rate::{RateLimiter, RateLimits};
use notify_offer_contacts::work::Work;

const ORG: &str = "org1";

fn all() -> NotifyCommand {
    NotifyCommand::new(OrgId::parse(ORG).unwrap(), OfferId::parse("o1").unwrap())
}

fn count(ds: &[Delivery], status: DeliveryStatus) -> usize {
    ds.iter().filter(|d| d.status == status).count()
}

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

struct Rig {
    n: MemoryNotifier,
    store: Arc<MemoryStore>,
    provider: Arc<MemoryProvider>,
    queue: Arc<MemoryQueue>,
}

/// `contacts` email contacts; with `queued`, a work queue that takes every request.
fn rig(contacts: usize, queued: bool) -> Rig {
    let store = Arc::new(memory::offer_with_contacts(
        contacts,
        vec![NotificationChannel::Email],
    ));
    let provider = Arc::new(MemoryProvider::default());
    let queue = Arc::new(MemoryQueue::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    if queued {
        n.policy.hand_off.max_sync_recipients = 1;
        n.queue = Some(queue.clone() as Arc<dyn WorkQueue>);
    }
    Rig {
        n,
        store,
        provider,
        queue,
    }
}

async fn drain(r: &Rig) {
    for m in r.queue.drain() {
        let _ = r.n.work(m, 1, None).await;
    }
}

fn only_event(r: &Rig) -> NotificationEvent {
    let events = r.store.events();
    assert_eq!(events.len(), 1);
    events.into_iter().next().unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_run_that_died_is_finished_by_the_sweeper_after_its_lease() {
    let mut r = rig(3, false);
    r.n.rates = RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        ..RateLimits::default()
    };
    // c0 goes out, then the store fails: a 500, and no key to retry with.
    r.store.fail_after(StoreOp::SaveDeliveries, 1);
    assert!(r.n.notify(all()).await.is_err());
    r.store.heal(StoreOp::SaveDeliveries);
    let event = only_event(&r);
    let id = event.event_id.clone().unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    assert!(
        event.info.as_ref().unwrap().contains_key("resumeAfter"),
        "a PENDING event carries its lease"
    );

    // Within its lease the sweeper leaves it alone.
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!((swept.stale, swept.finished), (0, 0));
    assert!(swept.oldest_pending_age_seconds.is_some());

    r.store.expire_lease(ORG, &id);
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!((swept.stale, swept.finished), (1, 1), "{swept:?}");
    assert_eq!(emailed(&r.provider), once_each(3));
    let ledger = r.store.deliveries(&id);
    assert_eq!(
        count(&ledger, DeliveryStatus::Unconfirmed),
        1,
        "c0 was in flight"
    );
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 2);
    let closed = r.store.event(ORG, &id).unwrap();
    assert_eq!(closed.event_status, Some(EventStatus::Failed));
    assert!(
        !closed.info.unwrap().contains_key("resumeAfter"),
        "a closed event has no lease"
    );
    assert_eq!(r.n.sweep(None).await.unwrap().stale, 0);
}

#[tokio::test]
async fn a_hand_off_cut_half_way_without_a_key_is_rebuilt_and_queued_by_the_sweeper() {
    let r = rig(30, true);
    // The event is stored; the first 25 ledger entries land, then the store fails.
    r.store.fail_after(StoreOp::SaveDeliveries, 1);
    assert!(r.n.notify(all()).await.is_err());
    r.store.heal(StoreOp::SaveDeliveries);
    assert!(r.queue.is_empty());
    let id = only_event(&r).event_id.unwrap();
    assert_eq!(r.store.deliveries(&id).len(), 25);

    r.store.expire_lease(ORG, &id);
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!(swept.requeued, 1, "{swept:?}");
    assert_eq!(
        r.store.deliveries(&id).len(),
        30,
        "the missing 5 rebuilt from the event"
    );
    drain(&r).await;
    assert_eq!(emailed(&r.provider), once_each(30));
    assert_eq!(
        r.store.event(ORG, &id).unwrap().event_status,
        Some(EventStatus::Done)
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_killed_on_its_last_receive_leaves_nothing_pending_for_ever() {
    let mut r = rig(10, true);
    r.n.concurrency = 1;
    let slow = Arc::new(MemoryProvider::with_latency(Duration::from_millis(500)));
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let message = r.queue.drain().remove(0);
    // The last receive is killed mid-way (out of memory, timeout): the message
    // goes to the DLQ with deliveries SENDING and QUEUED, the event PENDING.
    let mut worker = memory::notifier(r.store.clone(), slow.clone(), 1);
    worker.policy = r.n.policy.clone();
    let killed =
        tokio::time::timeout(Duration::from_millis(1200), worker.work(message, 5, None)).await;
    assert!(killed.is_err());
    let ledger = r.store.deliveries(&id);
    assert!(count(&ledger, DeliveryStatus::Queued) > 0);
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 1);

    // After the lease (and the dead worker's), the sweeper queues the rest again.
    r.n.policy.hand_off.sending_lease = Duration::ZERO;
    r.store.expire_lease(ORG, &id);
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!(swept.requeued, 1, "{swept:?}");
    drain(&r).await;
    let closed = r.store.event(ORG, &id).unwrap();
    assert_ne!(closed.event_status, Some(EventStatus::Pending));
    let ledger = r.store.deliveries(&id);
    assert_eq!(
        count(&ledger, DeliveryStatus::Unconfirmed),
        1,
        "the one in flight"
    );
    assert_eq!(count(&ledger, DeliveryStatus::Sent), 9);
}

#[tokio::test]
async fn after_its_last_sweep_an_event_is_closed_with_what_is_left_failed() {
    let r = rig(12, true);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    // Every message is lost (say, the queue's retention ran out under a backlog).
    for sweep in 1..=3 {
        r.queue.drain();
        r.store.expire_lease(ORG, &id);
        let swept = r.n.sweep(None).await.unwrap();
        assert_eq!(swept.requeued, 1, "sweep {sweep}: {swept:?}");
        assert_eq!(
            r.store.event(ORG, &id).unwrap().info.unwrap()["sweeps"],
            sweep
        );
    }
    r.queue.drain();
    r.store.expire_lease(ORG, &id);
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!(swept.closed, 1, "{swept:?}");
    let closed = r.store.event(ORG, &id).unwrap();
    assert_eq!(closed.event_status, Some(EventStatus::Failed));
    let ledger = r.store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Failed), 12);
    assert!(
        ledger
            .iter()
            .all(|d| d.reason.as_deref().unwrap().starts_with("abandoned"))
    );
    // The messages, should they come back now, send nothing.
    r.store.expire_lease(ORG, &id);
    assert_eq!(r.n.sweep(None).await.unwrap().stale, 0);
    assert!(r.provider.emails().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_keyed_retry_and_the_sweeper_never_resume_one_event_together() {
    let store = Arc::new(memory::offer_with_contacts(
        4,
        vec![NotificationChannel::Email],
    ));
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(400)));
    let mut n = memory::notifier(store.clone(), provider.clone(), 1);
    n.rates = RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        ..RateLimits::default()
    };
    let keyed = NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
        ..all()
    };
    // c0 goes out, then the store fails: a 500; the key is released.
    store.fail_after(StoreOp::SaveDeliveries, 1);
    assert!(n.notify(keyed.clone()).await.is_err());
    store.heal(StoreOp::SaveDeliveries);
    let id = store.events()[0].event_id.clone().unwrap();
    store.expire_lease(ORG, &id);

    // The sweeper takes the event; a keyed retry arriving meanwhile is a 409.
    let (swept, retried) = tokio::join!(n.sweep(None), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n.notify(keyed.clone()).await
    });
    assert_eq!(swept.unwrap().finished, 1);
    assert_eq!(retried.unwrap_err().kind(), ErrorKind::KeyInProgress);
    // The sweeper completed the key: the retry now answers with the event.
    let replay = n.notify(keyed.clone()).await.unwrap();
    assert_ne!(replay.event_status, Some(EventStatus::Pending));
    assert_eq!(emailed(&provider), once_each(4), "nobody twice");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_leaves_an_event_to_the_keyed_retry_that_holds_its_key() {
    let store = Arc::new(memory::offer_with_contacts(
        4,
        vec![NotificationChannel::Email],
    ));
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(400)));
    let mut n = memory::notifier(store.clone(), provider.clone(), 1);
    n.rates = RateLimits {
        email: Some(RateLimiter::new(1.0, 1)),
        ..RateLimits::default()
    };
    let keyed = NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse("k-2").unwrap()),
        ..all()
    };
    store.fail_after(StoreOp::SaveDeliveries, 1);
    assert!(n.notify(keyed.clone()).await.is_err());
    store.heal(StoreOp::SaveDeliveries);
    let id = store.events()[0].event_id.clone().unwrap();
    store.expire_lease(ORG, &id);
    // The keyed retry runs; a sweep meanwhile finds the key held and skips.
    let (retried, swept) = tokio::join!(n.notify(keyed.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.expire_lease(ORG, &id);
        n.sweep(None).await
    });
    let swept = swept.unwrap();
    assert_eq!((swept.stale, swept.skipped), (1, 1), "{swept:?}");
    assert_ne!(retried.unwrap().event_status, Some(EventStatus::Pending));
    assert_eq!(emailed(&provider), once_each(4), "nobody twice");
}

#[tokio::test]
async fn an_event_that_cannot_be_planned_any_more_is_closed_and_holds_nobody_up() {
    let r = rig(3, false);
    // Two events die PENDING; the settings then become unreadable for good.
    r.store.fail(StoreOp::FinishEvent);
    assert!(r.n.notify(all()).await.is_err());
    assert!(r.n.notify(all()).await.is_err());
    r.store.heal(StoreOp::FinishEvent);
    r.store.fail(StoreOp::ReadSettings);
    let ids: Vec<String> = r
        .store
        .events()
        .iter()
        .map(|e| e.event_id.clone().unwrap())
        .collect();
    for sweep in 1..=3 {
        for id in &ids {
            r.store.expire_lease(ORG, id);
        }
        let swept = r.n.sweep(None).await.unwrap();
        // Each is counted and its lease moved on, although it fails.
        assert_eq!(
            (swept.stale, swept.failed),
            (2, 2),
            "sweep {sweep}: {swept:?}"
        );
        for id in &ids {
            assert_eq!(
                r.store.event(ORG, id).unwrap().info.unwrap()["sweeps"],
                sweep
            );
        }
    }
    for id in &ids {
        r.store.expire_lease(ORG, id);
    }
    let swept = r.n.sweep(None).await.unwrap();
    assert_eq!(swept.closed, 2, "{swept:?}");
    for id in &ids {
        // Every email had gone out before the run died: closed DONE, with why.
        let closed = r.store.event(ORG, id).unwrap();
        assert_eq!(closed.event_status, Some(EventStatus::Done));
        assert!(
            closed.info.unwrap()["abandoned"]
                .as_str()
                .unwrap()
                .contains("could not be planned")
        );
        assert_eq!(count(&r.store.deliveries(id), DeliveryStatus::Sent), 3);
    }
}

#[tokio::test]
async fn closing_an_abandoned_event_leaves_a_live_workers_send_to_it() {
    let r = rig(12, true);
    let id = r.n.notify(all()).await.unwrap().event_id.unwrap();
    let message = r.queue.drain().remove(0);
    // A live worker took one delivery of the first message a moment ago.
    let mut taken = r
        .store
        .deliveries(&id)
        .into_iter()
        .find(|d| d.batch.as_deref() == Some(message.batch_id.as_str()))
        .unwrap();
    taken.status = DeliveryStatus::Sending;
    r.store.put_delivery(&id, taken.clone());
    for _ in 0..4 {
        r.queue.drain();
        r.store.expire_lease(ORG, &id);
        r.n.sweep(None).await.unwrap();
    }
    // The rest is closed FAILED, but not the live worker's send: the event
    // stays open for that worker to record and close.
    let ledger = r.store.deliveries(&id);
    assert_eq!(count(&ledger, DeliveryStatus::Sending), 1);
    assert_eq!(count(&ledger, DeliveryStatus::Failed), 11);
    assert_eq!(
        r.store.event(ORG, &id).unwrap().event_status,
        Some(EventStatus::Pending)
    );
    taken.status = DeliveryStatus::Sent;
    r.store.put_delivery(&id, taken);
    r.n.work(message, 2, None).await.unwrap();
    assert_eq!(
        r.store.event(ORG, &id).unwrap().event_status,
        Some(EventStatus::Failed)
    );
}

#[tokio::test]
async fn a_key_reused_for_another_event_is_not_held_by_the_sweeper() {
    use notify_offer_contacts::ports::{IdempotencyStore, KeyHold};
    let r = rig(3, false);
    let keyed = NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse("k-old").unwrap()),
        ..all()
    };
    r.store.fail(StoreOp::FinishEvent);
    assert!(r.n.notify(keyed).await.is_err());
    r.store.heal(StoreOp::FinishEvent);
    let org = OrgId::parse(ORG).unwrap();
    let key = IdempotencyKey::parse("k-old").unwrap();
    let event_id = r.store.events()[0].event_id.clone().unwrap();
    // The key record names this event: held. Another event: free, untouched.
    r.store.expire_lock(ORG, "k-old");
    assert_eq!(
        r.store
            .hold_for_sweep(&org, &key, "another-event", 0, 1)
            .await
            .unwrap(),
        KeyHold::Free
    );
    assert_eq!(r.store.key_record(ORG, "k-old").unwrap().locked_until, 0);
    let now = i64::MAX / 2;
    assert_eq!(
        r.store
            .hold_for_sweep(&org, &key, &event_id, now, now + 1)
            .await
            .unwrap(),
        KeyHold::Held
    );
}

// ---- the index and the lease over DynamoDB's wire protocol (moto) ----

fn pending_event(id: &str, resume_after: time::OffsetDateTime) -> NotificationEvent {
    let mut event = NotificationEvent {
        organization_id: Some("org-demo".into()),
        event_id: Some(id.into()),
        entity_id: Some("offer-demo".into()),
        event_status: Some(EventStatus::Pending),
        timestamp: Some(resume_after - time::Duration::minutes(10)),
        last_update_time: Some(resume_after - time::Duration::minutes(10)),
        ..NotificationEvent::default()
    };
    notify_offer_contacts::notify::set_lease(&mut event, resume_after, 0);
    event
}

#[tokio::test]
async fn the_index_lists_pending_events_past_their_lease_until_they_close() {
    use notify_offer_contacts::ports::EventStore;
    let env = common::TestEnv::new().await;
    let store =
        notify_offer_contacts::aws::dynamo::DynamoStore::new(env.dynamo(), env.table.clone());
    let now = time::OffsetDateTime::now_utc();
    let stale = pending_event(
        "01a00000-0000-7000-8000-00000000000a",
        now - time::Duration::minutes(1),
    );
    let fresh = pending_event(
        "01a00000-0000-7000-8000-00000000000b",
        now + time::Duration::minutes(5),
    );
    store.create_event(&stale).await.unwrap();
    store.create_event(&fresh).await.unwrap();
    let found = store.stale_events(now, 25).await.unwrap();
    assert_eq!(
        found.stale,
        [(
            OrgId::parse("org-demo").unwrap(),
            stale.event_id.clone().unwrap()
        )]
    );
    let oldest = (stale.timestamp.unwrap().unix_timestamp_nanos() / 1_000_000) as i64;
    assert_eq!(found.oldest_pending_ms, Some(oldest));

    // The lease moves only from the value read: one of two sweepers wins.
    let org = OrgId::parse("org-demo").unwrap();
    let id = stale.event_id.clone().unwrap();
    let held = notify_offer_contacts::notify::resume_after(&stale)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = now + time::Duration::minutes(5);
    assert!(
        store
            .move_lease(&org, &id, Some(&held), later, 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .move_lease(&org, &id, Some(&held), later, 1)
            .await
            .unwrap()
    );
    assert!(store.stale_events(now, 25).await.unwrap().stale.is_empty());

    // Closed: out of the index.
    let mut closed = stale.clone();
    closed.event_status = Some(EventStatus::Done);
    store.finish_event(&closed).await.unwrap();
    let found = store
        .stale_events(now + time::Duration::hours(1), 25)
        .await
        .unwrap();
    assert_eq!(found.stale.len(), 1, "only the other one: {found:?}");
    assert_eq!(found.stale[0].1, fresh.event_id.clone().unwrap());
}

#[tokio::test]
async fn an_event_stored_before_leases_existed_gets_one_on_its_first_resume() {
    use notify_offer_contacts::ports::EventStore;
    let env = common::TestEnv::new().await;
    let store =
        notify_offer_contacts::aws::dynamo::DynamoStore::new(env.dynamo(), env.table.clone());
    let id = "01a00000-0000-7000-8000-00000000000c";
    common::seed(
        &env.sdk,
        &env.table,
        &serde_json::json!({"items": [{"pk": "ORG#org-demo", "sk": format!("EVENT#{id}"), "eventID": id,
            "organizationID": "org-demo", "eventStatus": "PENDING"}]}),
    )
    .await;
    let org = OrgId::parse("org-demo").unwrap();
    let until = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    assert!(store.move_lease(&org, id, None, until, 0).await.unwrap());
    assert!(
        !store.move_lease(&org, id, None, until, 0).await.unwrap(),
        "only once"
    );
    let (event, _) = store
        .event_with_deliveries(&org, id)
        .await
        .unwrap()
        .unwrap();
    assert!(notify_offer_contacts::notify::resume_after(&event).is_some());
}

#[tokio::test]
async fn a_lease_move_is_seen_by_writers_that_rewrite_the_whole_event() {
    use notify_offer_contacts::ports::EventStore;
    use notify_offer_contacts::tracking::{Open, OpenTracker};
    let env = common::TestEnv::new().await;
    let store =
        notify_offer_contacts::aws::dynamo::DynamoStore::new(env.dynamo(), env.table.clone());
    let now = time::OffsetDateTime::now_utc();
    let mut event = pending_event(
        "01a00000-0000-7000-8000-00000000000d",
        now - time::Duration::minutes(1),
    );
    event.contact_ids = Some(vec!["c-ann".into()]);
    store.create_event(&event).await.unwrap();
    let org = OrgId::parse("org-demo").unwrap();
    let id = event.event_id.clone().unwrap();
    let held = notify_offer_contacts::notify::resume_after(&event)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = now + time::Duration::minutes(30);
    assert!(
        store
            .move_lease(&org, &id, Some(&held), later, 2)
            .await
            .unwrap()
    );
    // An open arrives: its write is conditional on lastUpdateTime, so it
    // re-reads and keeps the moved lease and the sweep count.
    let open = Open {
        org: org.clone(),
        event_id: id.clone(),
        contact: ContactId::parse("c-ann").unwrap(),
        at: now,
        message_id: "sns-1".into(),
    };
    store.record_open(&open).await.unwrap();
    let (stored, _) = store
        .event_with_deliveries(&org, &id)
        .await
        .unwrap()
        .unwrap();
    let info = stored.info.unwrap();
    assert_eq!(info["sweeps"], 2);
    assert_eq!(
        info["resumeAfter"].as_str().unwrap(),
        later
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        "the moved lease, not the one the open's writer first read"
    );
    assert_eq!(info["opens"]["c-ann"], 1);
}

#[tokio::test]
async fn the_schedule_runs_a_sweep_through_the_handler() {
    let env = common::TestEnv::new().await;
    let answer = env.invoke_file("scheduled-sweep.json").await.unwrap();
    assert_eq!(answer["stale"], 0, "{answer}");
    assert_eq!(answer["failed"], 0);
}
