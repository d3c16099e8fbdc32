//! How many DynamoDB calls one notification costs, counted on the wire by an
//! SDK interceptor against moto: reads 2 + ceil(N/100); the event put twice;
//! the ledger: one outcome per delivery and one announcement per group of
//! sends starting together, in batch writes of up to 25 that carry the
//! announcement and the outcomes gathered meanwhile. Also how announcements
//! read back through the store.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use common::{SENDER, TestEnv};
use notify_offer_contacts::aws::{dynamo::DynamoStore, ses::SesMailer, sns::SnsPublisher};
use notify_offer_contacts::model::{OfferId, OrgId};
use notify_offer_contacts::notify::{Notifier, NotifyCommand, NotifyContacts};
use serde_json::json;

#[derive(Debug, Clone, Default)]
struct CallCounter(Arc<Mutex<HashMap<String, usize>>>);

/// Ledger items put by BatchWriteItem calls.
const ITEMS: &str = "items put by BatchWriteItem";

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }
    /// Counts each request as sent, by the operation its X-Amz-Target header names.
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        let puts = match (operation.as_str(), context.request().body().bytes()) {
            ("BatchWriteItem", Some(body)) => String::from_utf8_lossy(body)
                .matches("\"PutRequest\"")
                .count(),
            _ => 0,
        };
        let mut counts = self.0.lock().unwrap();
        *counts.entry(operation).or_default() += 1;
        *counts.entry(ITEMS.into()).or_default() += puts;
        Ok(())
    }
}

/// Offer `big` of org-bulk with `n` contacts by EMAIL, seeded in moto; the
/// notifier as the Lambda wires it (16 in flight, rates unlimited, no queue),
/// its DynamoDB calls counted.
async fn bulk_offer(env: &TestEnv, n: usize) -> (Notifier<DynamoStore>, CallCounter) {
    let ids: Vec<String> = (0..n).map(|i| format!("bulk-{i}")).collect();
    let mut items = vec![
        json!({"pk": "ORG#org-bulk", "sk": "OFFER#big", "id": "big", "organizationID": "org-bulk",
        "name": "Bulk offer", "status": "PENDING_ACCEPTANCE", "partner": "AWS", "contactIds": ids}),
    ];
    items.extend(ids.iter().map(|id| json!({"pk": "ORG#org-bulk", "sk": format!("CONTACT#{id}"), "id": id,
        "organizationID": "org-bulk", "name": id, "emailAddress": format!("{id}@buyer.example.com")})));
    common::seed(&env.sdk, &env.table, &json!({"items": items})).await;

    let counter = CallCounter::default();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&env.sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let sns = SnsPublisher::new(aws_sdk_sns::Client::new(&env.sdk));
    let app = Notifier {
        store: DynamoStore::new(dynamo, env.table.clone()),
        channels: notify_offer_contacts::channels::Providers {
            mailer: std::sync::Arc::new(SesMailer::new(
                aws_sdk_sesv2::Client::new(&env.sdk),
                notify_offer_contacts::model::EmailAddress::parse(SENDER).unwrap(),
                None,
            )),
            sms: std::sync::Arc::new(sns.clone()),
            topics: std::sync::Arc::new(sns),
            web: std::sync::Arc::new(notify_offer_contacts::channels::WebTargets::unconfigured()),
        },
        concurrency: 16,
        rates: Default::default(),
        policy: Default::default(),
        queue: None,
    };
    (app, counter)
}

#[tokio::test]
async fn one_notification_of_250_contacts_costs_5_reads_and_batched_writes() {
    let env = TestEnv::new().await;
    let n = 250;
    let (app, counter) = bulk_offer(&env, n).await;
    let started = std::time::Instant::now();
    let event = app
        .notify(NotifyCommand::new(
            OrgId::parse("org-bulk").unwrap(),
            OfferId::parse("big").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(event.info.as_ref().unwrap()["deliveryCount"], 250);
    assert_eq!(env.moto.emails().len(), 250);

    let elapsed_ms = started.elapsed().as_millis() as usize;
    let mut calls = counter.0.lock().unwrap().clone();
    // The ledger: one outcome per delivery, and one announcement per group
    // of sends starting together (8 to 16 of them with 16 in flight): at
    // most 1.13 items a delivery, where one intent each made it 2.
    let items = calls.remove(ITEMS).unwrap_or(0);
    println!("synchronous path, 250 deliveries: {items} ledger items written; calls: {calls:?}");
    let (groups_least, groups_most) = (250usize.div_ceil(16), 250usize.div_ceil(16 / 2));
    assert!(
        (250 + groups_least..=250 + groups_most).contains(&items),
        "{items} items written for 250 deliveries"
    );
    // Sends start in groups of at least half the concurrency (8 of 16), each
    // announced in one write that also carries the outcomes gathered so far;
    // outcomes left over go in every 200 ms or 25 at a time.
    let batch_writes = calls.remove("BatchWriteItem").unwrap_or(0);
    let (least, most) = (
        items.div_ceil(25),
        250usize.div_ceil(16 / 2) + elapsed_ms / 200 + 2,
    );
    assert!(
        (least..=most).contains(&batch_writes),
        "{batch_writes} BatchWriteItem calls in {elapsed_ms} ms; expected {least} to {most}"
    );
    let expected: HashMap<String, usize> = [("GetItem", 2), ("BatchGetItem", 3), ("PutItem", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(
        calls, expected,
        "reads 2 + ceil(250/100), and the event put twice"
    );
    // Every send announced exactly once, and each has its outcome.
    let (announcements, entries): (Vec<_>, Vec<_>) = env
        .items("org-bulk", "DELIVERY#")
        .await
        .into_iter()
        .partition(|i| i["sk"].as_str().unwrap().contains("#~SENDING#"));
    assert_eq!(entries.len(), 250);
    assert!(entries.iter().all(|e| e["status"] == "SENT"));
    assert_eq!(announcements.len(), items - 250);
    let mut announced: Vec<&str> = announcements
        .iter()
        .flat_map(|a| a["keys"].as_array().unwrap())
        .map(|k| k.as_str().unwrap())
        .collect();
    announced.sort_unstable();
    let before = announced.len();
    announced.dedup();
    assert_eq!((before, announced.len()), (250, 250));
}

/// Puts `items` with BatchWriteItem, 25 at a time.
async fn put_all(env: &TestEnv, items: Vec<serde_json::Value>) {
    let client = env.dynamo();
    for chunk in items.chunks(25) {
        let writes = chunk
            .iter()
            .map(|i| {
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(
                        aws_sdk_dynamodb::types::PutRequest::builder()
                            .set_item(Some(serde_dynamo::to_item(i).unwrap()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        client
            .batch_write_item()
            .request_items(&env.table, writes)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn each_read_route_costs_a_query_or_two_for_1000_events_and_1000_messages() {
    use notify_offer_contacts::read::{ReadRoute, Target, serve};
    let env = TestEnv::new().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // 1,000 events over the last 10 days, as the function stores them.
    let events: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            let at = (now - i * 864) as u64;
            let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, at, 0)).to_string();
            json!({"pk": "ORG#org-bulk", "sk": format!("EVENT#{id}"), "eventID": id,
                "organizationID": "org-bulk", "entityType": "OFFER", "entityID": "big",
                "entityIndex": "ORG#org-bulk#OFFER#big", "eventStatus": "DONE", "action": "NOTIFY_CONTACTS",
                "title": "Private offer on AWS Marketplace: Bulk offer", "message": "m".repeat(300),
                "contactIds": ["a", "b", "c"], "contactEmails": ["a@x.example"],
                "info": {"deliverySummary": {"EMAIL": {"sent": 3, "skipped": 0, "failed": 0}}}})
        })
        .collect();
    let busy = events[0]["eventID"].as_str().unwrap().to_owned();
    put_all(&env, events).await;
    // 1,000 messages in the newest event's ledger.
    let ledger: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            json!({"pk": "ORG#org-bulk", "sk": format!("DELIVERY#{busy}#EMAIL#c{i}"), "channel": "EMAIL",
                "contactId": format!("c{i}"), "status": "SENT", "messageId": format!("ses-{i}"),
                "time": "2026-11-30T10:00:00Z", "eventID": busy, "organizationID": "org-bulk"})
        })
        .collect();
    put_all(&env, ledger).await;

    let counter = CallCounter::default();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&env.sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let store = DynamoStore::new(dynamo, env.table.clone());
    let org = OrgId::parse("org-bulk").unwrap();
    let mut measured = Vec::new();
    for (name, target, query) in [
        (
            "GET notificationEvent (30 days, limit 1000)",
            Target::Events,
            vec![],
        ),
        (
            "GET notificationEvent/OFFER/big (limit 1000)",
            Target::EntityEvents {
                entity_type: "OFFER".into(),
                entity_id: "big".into(),
            },
            vec![],
        ),
        (
            "GET notificationMessage?eventId (1000 messages)",
            Target::Messages,
            vec![("eventId".to_owned(), busy.clone())],
        ),
        (
            "GET notificationMessage/{id}",
            Target::Message(format!("{busy}.EMAIL.c7")),
            vec![],
        ),
    ] {
        counter.0.lock().unwrap().clear();
        let route = ReadRoute {
            org: org.clone(),
            target,
        };
        let answer = serve(&store, &route, &query.into_iter().collect())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut calls = counter.0.lock().unwrap().clone();
        calls.remove(ITEMS);
        calls.retain(|_, n| *n > 0);
        println!("{name}: {calls:?}");
        measured.push((name, calls, answer));
    }
    let count = |i: usize, op: &str| measured[i].1.get(op).copied().unwrap_or(0);
    // The list and its count: one Query each (a page holds the 1,000).
    assert_eq!(
        measured[0].2["notificationEvents"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    assert_eq!(measured[0].2["totalCount"], 1000);
    assert_eq!((count(0, "Query"), measured[0].1.len()), (2, 1));
    assert_eq!(
        measured[1].2["notificationEvents"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    assert_eq!((count(1, "Query"), measured[1].1.len()), (2, 1));
    // The event (GetItem) and its ledger (one Query).
    assert_eq!(
        measured[2].2["notificationMessages"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    assert_eq!((count(2, "GetItem"), count(2, "Query")), (1, 1));
    assert_eq!((count(3, "GetItem"), measured[3].1.len()), (1, 1));
    assert_eq!(measured[3].2["recipient"], "c7");
    // No Scan anywhere.
    assert!(measured.iter().all(|(_, c, _)| !c.contains_key("Scan")));
}

/// Offer `big` of org-bulk with 100 contacts by EMAIL, notified through a
/// queue (threshold 10): the notifier (its DynamoDB calls counted from now
/// on) and the 10 messages of 10 deliveries it queued.
async fn handed_off_100(
    env: &TestEnv,
) -> (
    Notifier<DynamoStore>,
    CallCounter,
    Vec<notify_offer_contacts::ports::WorkBatch>,
) {
    let n = 100;
    let (mut app, counter) = bulk_offer(env, n).await;
    let queue = std::sync::Arc::new(notify_offer_contacts::memory::MemoryQueue::default());
    app.queue = Some(queue.clone() as std::sync::Arc<dyn notify_offer_contacts::ports::WorkQueue>);
    app.policy.hand_off.max_sync_recipients = 10;
    app.notify(NotifyCommand::new(
        OrgId::parse("org-bulk").unwrap(),
        OfferId::parse("big").unwrap(),
    ))
    .await
    .unwrap();
    let messages = queue.drain();
    assert_eq!(messages.len(), 10, "100 deliveries, 10 a message");
    counter.0.lock().unwrap().clear();
    (app, counter, messages)
}

/// The worker's side: a request of 100 contacts by EMAIL is handed to the
/// queue (threshold 10), and each message of 10 deliveries is worked once.
/// Counted per message: the reads, the takes, the outcomes and the batch's
/// completion, against the synchronous path's floor of one write call per
/// group for the intents (here, the takes) and one for the outcomes.
#[tokio::test]
async fn a_work_message_of_10_deliveries_costs_a_handful_of_calls() {
    use notify_offer_contacts::work::{Work, WorkDone};
    let env = TestEnv::new().await;
    let (app, counter, messages) = handed_off_100(&env).await;

    let mut closed = 0;
    for m in messages {
        let worked = app.work(m, 1, None).await.unwrap();
        assert_eq!(worked.recorded.len(), 10);
        closed += usize::from(matches!(worked.done, WorkDone::Closed(_)));
    }
    assert_eq!(closed, 1, "the last message closes the event");
    assert_eq!(env.moto.emails().len(), 100);

    let mut calls = counter.0.lock().unwrap().clone();
    calls.remove(ITEMS);
    let total: usize = calls.values().sum();
    let mut table: Vec<_> = calls.iter().collect();
    table.sort();
    println!(
        "worker calls for 10 messages of 10 deliveries: {table:?}; {total} in all, {:.2} a delivery",
        total as f64 / 100.0
    );
    // Per message: 2 reads (BatchGetItem), 1 take (TransactWriteItems), the
    // outcomes in 1 or 2 BatchWriteItem, 1 completion (UpdateItem); the last
    // message also reads the event and its ledger and puts it closed (3 more).
    // Before the takes were one transaction: 183 calls (5 reads and 10
    // conditional PutItem a message).
    assert_eq!(calls.get("BatchGetItem"), Some(&20), "{table:?}");
    assert_eq!(calls.get("TransactWriteItems"), Some(&10), "{table:?}");
    assert_eq!(calls.get("UpdateItem"), Some(&10), "{table:?}");
    assert_eq!(
        calls.get("PutItem"),
        Some(&1),
        "no take is a call of its own; one put closes the event: {table:?}"
    );
    assert!(
        total <= 10 * 6 + 3,
        "{total} calls for 100 deliveries: {table:?}"
    );
}

/// Three deliveries of a message are SENDING under another copy of it. The
/// worker reads that and takes the other seven (one transaction); and where
/// the three are taken between its read and its take, the transaction is
/// cancelled, names them, and is sent again without them.
#[tokio::test]
async fn a_take_contested_by_another_copy_takes_only_what_is_still_queued() {
    use notify_offer_contacts::model::DeliveryStatus;
    use notify_offer_contacts::ports::{EventStore, Written};
    use notify_offer_contacts::work::{Work, WorkError};
    let env = TestEnv::new().await;
    let (app, counter, messages) = handed_off_100(&env).await;
    let org = OrgId::parse("org-bulk").unwrap();
    let hold_three = async |message: &notify_offer_contacts::ports::WorkBatch| {
        let keys: Vec<String> = message.deliveries.iter().map(|d| d.key()).collect();
        let mut held = app
            .store
            .deliveries(&org, &message.event_id, &keys[..3])
            .await
            .unwrap();
        assert_eq!(held.len(), 3);
        for d in &mut held {
            d.status = DeliveryStatus::Sending;
        }
        app.store
            .save_deliveries(&org, &message.event_id, &held)
            .await
            .unwrap();
        keys
    };

    // Seen at the read: the worker takes the seven.
    let message = messages[0].clone();
    let keys = hold_three(&message).await;
    counter.0.lock().unwrap().clear();
    let err = app.work(message.clone(), 1, None).await.unwrap_err();
    assert!(matches!(err, WorkError::InFlightElsewhere(3)), "{err}");
    assert_eq!(env.moto.emails().len(), 7, "the seven still QUEUED, once");
    let calls = counter.0.lock().unwrap().clone();
    assert_eq!(calls.get("TransactWriteItems"), Some(&1), "{calls:?}");
    let ledger = app
        .store
        .deliveries(&org, &message.event_id, &keys)
        .await
        .unwrap();
    let sent = ledger
        .iter()
        .filter(|d| d.status == DeliveryStatus::Sent)
        .count();
    assert_eq!(sent, 7, "{ledger:?}");
    // The same message again while the three are still held: nothing twice.
    let again = app.work(message, 2, None).await.unwrap_err();
    assert!(matches!(again, WorkError::InFlightElsewhere(3)), "{again}");
    assert_eq!(env.moto.emails().len(), 7);

    // Taken between the read and the take: the store's answer names them.
    let message = messages[1].clone();
    let keys = hold_three(&message).await;
    let mut takes = app
        .store
        .deliveries(&org, &message.event_id, &keys[3..])
        .await
        .unwrap();
    takes.splice(
        0..0,
        app.store
            .deliveries(&org, &message.event_id, &keys[..3])
            .await
            .unwrap(),
    );
    for d in &mut takes {
        d.status = DeliveryStatus::Sending;
    }
    counter.0.lock().unwrap().clear();
    let answer = app
        .store
        .replace_queued(&org, &message.event_id, &message.batch_id, &takes)
        .await;
    assert!(answer.failure.is_none(), "{:?}", answer.failure);
    let mut expected = vec![Written::NotQueued; 3];
    expected.extend([Written::Yes; 7]);
    assert_eq!(answer.written, expected);
    let calls = counter.0.lock().unwrap().clone();
    assert_eq!(
        calls.get("TransactWriteItems"),
        Some(&2),
        "cancelled once, then the seven: {calls:?}"
    );
    let ledger = app
        .store
        .deliveries(&org, &message.event_id, &keys)
        .await
        .unwrap();
    assert!(ledger.iter().all(|d| d.status == DeliveryStatus::Sending));
}

/// The synchronous path's announcements, on moto: each announced key reads
/// SENDING (in the event's ledger and through the read API's one-entry read)
/// until its own entry is written; a withdrawn announcement leaves nothing.
#[tokio::test]
async fn an_announcement_reads_sending_until_recorded_and_can_be_withdrawn() {
    use notify_offer_contacts::model::{
        Delivery, DeliveryStatus as S, NotificationChannel as C, NotificationEvent,
    };
    use notify_offer_contacts::ports::EventStore;
    use notify_offer_contacts::read::EventReader;

    let env = TestEnv::new().await;
    let store = DynamoStore::new(env.dynamo(), &env.table);
    let org = OrgId::parse("org-demo").unwrap();
    let ev = "01900000-0000-7000-8000-00000000a001";
    store
        .create_event(&NotificationEvent {
            organization_id: Some(org.to_string()),
            event_id: Some(ev.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = |c: C, who: Option<&str>, st: S| Delivery::new(c, who.map(str::to_owned), st);
    let status_of = |ledger: &[Delivery]| {
        let mut s: Vec<(String, S)> = ledger.iter().map(|d| (d.key(), d.status)).collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s
    };

    let intents = [
        d(C::Email, Some("c-ann"), S::Sending),
        d(C::Email, Some("c-bob"), S::Sending),
        d(C::Sns, None, S::Sending),
    ];
    let rider = d(C::Sms, Some("c-cat"), S::Sent);
    store
        .announce_sends(&org, ev, &intents, std::slice::from_ref(&rider))
        .await
        .unwrap();
    // One item for the three intents, one for the rider.
    assert_eq!(
        env.items("org-demo", &format!("DELIVERY#{ev}#"))
            .await
            .len(),
        2
    );
    store
        .save_deliveries(&org, ev, &[d(C::Email, Some("c-ann"), S::Sent)])
        .await
        .unwrap();
    let (_, ledger) = store
        .event_with_deliveries(&org, ev)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status_of(&ledger),
        [
            ("EMAIL#c-ann".to_owned(), S::Sent),
            ("EMAIL#c-bob".to_owned(), S::Sending),
            ("SMS#c-cat".to_owned(), S::Sent),
            ("SNS#-".to_owned(), S::Sending),
        ]
    );
    let one = |channel: &'static str, who: &'static str| {
        let store = store.clone();
        let org = org.clone();
        async move { store.delivery(&org, ev, channel, who).await.unwrap() }
    };
    assert_eq!(one("EMAIL", "c-bob").await.unwrap().status, S::Sending);
    assert_eq!(one("EMAIL", "c-ann").await.unwrap().status, S::Sent);
    assert!(one("EMAIL", "c-dan").await.is_none());

    // A write whose answer was an error is taken back: nothing reads SENDING.
    let failed = [d(C::Email, Some("c-dan"), S::Sending)];
    store.announce_sends(&org, ev, &failed, &[]).await.unwrap();
    assert_eq!(one("EMAIL", "c-dan").await.unwrap().status, S::Sending);
    store.withdraw_sends(&org, ev, &failed).await.unwrap();
    assert!(one("EMAIL", "c-dan").await.is_none());
    let (_, ledger) = store
        .event_with_deliveries(&org, ev)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger.len(), 4, "{ledger:?}");
}
