//! A dry run answers what would happen and does nothing: checked on moto
//! (nothing in its sent records, nothing in the table) and over in-memory
//! ports (the same validations, bounded content, no key claimed).

mod common;

use std::sync::Arc;

use common::TestEnv;
use notify_offer_contacts::memory::{self, MemoryProvider, MemoryQueue, MemoryStore};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts, NotifyError};
use serde_json::{Value, json};

fn plan(answer: &Value) -> Vec<Value> {
    answer["info"]["plan"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_dry_run_over_http_shows_each_recipients_content_and_sends_and_stores_nothing() {
    let env = TestEnv::new().await;
    let answer = env.http("http-api-dry-run.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let event = &answer.body;
    assert_eq!(event["info"]["dryRun"], true);
    assert!(event.get("eventID").is_none() && event.get("eventStatus").is_none());
    let p = plan(event);
    let email = p
        .iter()
        .find(|d| d["channel"] == "EMAIL" && d["contactId"] == "c-ann")
        .expect("Ann's email");
    assert_eq!(email["status"], "PLANNED");
    assert_eq!(email["content"]["to"], "ann@buyer.example.com");
    assert!(
        email["content"]["subject"]
            .as_str()
            .unwrap()
            .contains("Acme Analytics")
    );
    assert!(
        email["content"]["html"]
            .as_str()
            .unwrap()
            .contains("https://aws.amazon.com/marketplace/ao/offer-demo")
    );
    let sms = p
        .iter()
        .find(|d| d["channel"] == "SMS" && d["contactId"] == "c-cat")
        .unwrap();
    assert_eq!(sms["content"]["to"], "+442079460958");
    // Cat has no email: decided now, with why.
    let skipped = p
        .iter()
        .find(|d| d["channel"] == "EMAIL" && d["contactId"] == "c-cat")
        .unwrap();
    assert_eq!(skipped["status"], "SKIPPED");
    assert!(skipped["reason"].is_string());
    let topic = p.iter().find(|d| d["channel"] == "SNS").unwrap();
    assert!(topic["content"]["message"].is_string());

    // Nothing went out, nothing was stored.
    assert!(env.moto.emails().is_empty());
    assert!(env.moto.sms().is_empty());
    assert!(env.moto.topic_messages().is_empty());
    assert!(env.items("org-demo", "EVENT#").await.is_empty());
    assert!(env.items("org-demo", "DELIVERY#").await.is_empty());
    assert!(env.items("org-demo", "IDEMPOTENCY#").await.is_empty());
}

#[tokio::test]
async fn a_dry_run_is_checked_like_a_real_request() {
    let env = TestEnv::new().await;
    // Direct invocation.
    let answer = env.invoke_file("direct-dry-run.json").await.unwrap();
    assert_eq!(answer["info"]["dryRun"], true);
    assert!(env.moto.emails().is_empty());
    // An unknown contact: the same error as for real, nothing stored.
    let refused = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["c-zed"], "dryRun": true}))
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "BadRequest");
    // Another organisation's offer through HTTP: 403 before anything is read.
    let mut other = common::read_json("events/http-api-other-org.json");
    other["queryStringParameters"] = json!({"dryRun": "true"});
    other["rawQueryString"] = json!("dryRun=true");
    let answer = env.invoke(other).await.unwrap();
    assert_eq!(answer["statusCode"], 403);
    // A dryRun that is not a boolean.
    let mut bad = common::read_json("events/http-api-dry-run.json");
    bad["queryStringParameters"] = json!({"dryRun": "yes"});
    bad["rawQueryString"] = json!("dryRun=yes");
    let answer = env.invoke(bad).await.unwrap();
    assert_eq!(answer["statusCode"], 400);
    assert!(answer["body"].as_str().unwrap().contains("dryRun"));
    assert!(env.items("org-demo", "EVENT#").await.is_empty());
}

fn offer_with(n: usize) -> MemoryStore {
    memory::offer_with_contacts(
        n,
        vec![NotificationChannel::Email, NotificationChannel::Sms],
    )
}

#[tokio::test]
async fn content_is_bounded_no_key_is_claimed_and_nothing_is_queued() {
    let store = Arc::new(offer_with(30));
    let provider = Arc::new(MemoryProvider::default());
    let queue = Arc::new(MemoryQueue::default());
    let mut n = memory::notifier(store.clone(), provider.clone(), 8);
    n.queue = Some(queue.clone());
    n.policy.hand_off.max_sync_recipients = 1;
    let cmd = NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
        dry_run: true,
        ..NotifyCommand::new(OrgId::parse("org1").unwrap(), OfferId::parse("o1").unwrap())
    };
    let answer = n.notify(cmd.clone()).await.unwrap();
    let info = answer.info.unwrap();
    assert_eq!(info["plannedDeliveries"], 60);
    assert_eq!(info["contentOmitted"], 40);
    assert_eq!(info["deliveryMode"], "QUEUED");
    let p = info["plan"].as_array().unwrap();
    assert_eq!(p.len(), 60);
    assert_eq!(p.iter().filter(|d| d.get("content").is_some()).count(), 20);
    assert!(provider.emails().is_empty() && provider.sms().is_empty());
    assert!(queue.is_empty());
    assert!(store.events().is_empty());
    assert!(store.key_record("org1", "k-1").is_none());

    // The real request with the same key afterwards is not a replay.
    let real = n
        .notify(NotifyCommand {
            dry_run: false,
            ..cmd
        })
        .await
        .unwrap();
    assert!(real.event_id.is_some());

    // The same validations: a contact not on the offer.
    let e = n
        .notify(NotifyCommand {
            contact_ids: Some(ContactIdList::parse(&["nope"]).unwrap()),
            dry_run: true,
            ..NotifyCommand::new(OrgId::parse("org1").unwrap(), OfferId::parse("o1").unwrap())
        })
        .await
        .unwrap_err();
    assert!(matches!(e, NotifyError::NotOnOffer { .. }));
}

#[tokio::test]
async fn what_would_fail_is_listed_first_and_counted_by_reason() {
    let store = offer_with(600).with_settings(
        "org1",
        NotificationSettings {
            channels: Some(vec![NotificationChannel::Sms, NotificationChannel::Email]),
            sender_name: Some("Acme <evil@x.example>".into()),
            ..NotificationSettings::default()
        },
    );
    let n = memory::notifier(Arc::new(store), Arc::new(MemoryProvider::default()), 8);
    let answer = n
        .notify(NotifyCommand {
            dry_run: true,
            ..NotifyCommand::new(OrgId::parse("org1").unwrap(), OfferId::parse("o1").unwrap())
        })
        .await
        .unwrap();
    let info = answer.info.unwrap();
    let p = info["plan"].as_array().unwrap();
    assert_eq!(p.len(), 500);
    assert_eq!(p[0]["status"], "FAILED");
    assert!(p[0]["reason"].as_str().unwrap().contains("senderName"));
    assert_eq!(info["decidedDeliveries"], 600);
    let reasons = info["decidedReasons"].as_object().unwrap();
    assert_eq!(
        reasons.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        600
    );
    assert!(p.iter().any(|d| d["status"] == "PLANNED"));
}
