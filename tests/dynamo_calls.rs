//! How many DynamoDB calls one notification costs, counted on the wire by an
//! SDK interceptor against moto: reads 2 + ceil(N/100); the event put twice;
//! the ledger: exactly two items per delivery (its intent, its outcome), in
//! batch writes of up to 25 that carry the intents of the sends starting
//! together and the outcomes gathered meanwhile.

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

#[tokio::test]
async fn one_notification_of_250_contacts_costs_5_reads_and_batched_writes() {
    let env = TestEnv::new().await;
    let n = 250;
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
    // The ledger: two items per delivery, never more (intent, outcome).
    assert_eq!(calls.remove(ITEMS), Some(2 * 250));
    // Sends start in groups of at least half the concurrency (8 of 16), each
    // announced in one write that also carries the outcomes gathered so far;
    // outcomes left over go in every 200 ms or 25 at a time.
    let batch_writes = calls.remove("BatchWriteItem").unwrap_or(0);
    let (least, most) = (
        2 * 250usize.div_ceil(25),
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
    assert_eq!(env.items("org-bulk", "DELIVERY#").await.len(), 250);
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
