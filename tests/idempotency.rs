//! Idempotency keys and resume against moto's DynamoDB over the wire: the
//! key's record, its conditional claim and take-over, and the ledger.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::TestEnv;
use notify_offer_contacts::model::{OfferId, OrgId};
use notify_offer_contacts::notify::{NotifyCommand, request_hash};
use serde_json::json;

const KEY: &str = "notify-offer-demo-2026-11-29";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The hash the function computes for "every contact of offer-demo".
fn every_contact_hash() -> String {
    request_hash(&NotifyCommand::new(
        OrgId::parse("org-demo").unwrap(),
        OfferId::parse("offer-demo").unwrap(),
    ))
}

async fn put_record(
    env: &TestEnv,
    event_id: &str,
    status: &str,
    locked_until: i64,
    expires_at: i64,
) {
    let item = json!({"pk": "ORG#org-demo", "sk": format!("IDEMPOTENCY#{KEY}"), "requestHash": every_contact_hash(),
        "eventID": event_id, "status": status, "lockedUntil": locked_until, "expiresAt": expires_at});
    common::seed(&env.sdk, &env.table, &json!({"items": [item]})).await;
}

#[tokio::test]
async fn a_repeated_header_answers_with_the_stored_event_and_sends_nothing() {
    let env = TestEnv::new().await;
    let first = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the stored answer, unchanged");
    assert_eq!(env.moto.emails().len(), 2, "nothing was sent again");
    assert_eq!(env.moto.sms().len(), 2);
    assert_eq!(env.moto.topic_messages().len(), 1);

    let record = &env.items("org-demo", "IDEMPOTENCY#").await[0];
    assert_eq!(record["status"], "COMPLETED");
    assert_eq!(record["eventID"], first.body["eventID"]);
    let ttl = record["expiresAt"].as_i64().unwrap();
    assert!(
        (ttl - now_ms() / 1000 - 24 * 3600).abs() < 60,
        "expires in 24 h: {ttl}"
    );
}

#[tokio::test]
async fn the_same_key_for_another_request_is_422_and_sends_nothing() {
    let env = TestEnv::new().await;
    assert_eq!(
        env.http("http-api-notify-all-idempotent.json").await.status,
        200
    );
    let mut other = common::read_json("events/http-api-notify-all-idempotent.json");
    other["body"] = json!("[\"c-bob\"]");
    let answer = common::HttpAnswer::from(env.invoke(other).await.unwrap());
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.message(),
        format!(
            "idempotency key {KEY} was already used for a different request; use a new key for a new request"
        )
    );
    assert_eq!(env.moto.emails().len(), 2);
}

#[tokio::test]
async fn a_key_held_by_a_running_request_is_409() {
    let env = TestEnv::new().await;
    put_record(
        &env,
        "01a00000-0000-7000-8000-000000000001",
        "IN_PROGRESS",
        now_ms() + 60_000,
        now_ms() / 1000 + 3600,
    )
    .await;
    let answer = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.message(),
        format!("a request with idempotency key {KEY} is still running; retry after it ends")
    );
    assert!(env.moto.emails().is_empty());
}

#[tokio::test]
async fn a_run_that_died_half_way_is_resumed_and_nobody_is_sent_twice() {
    let env = TestEnv::new().await;
    // The first attempt stored its event, got Ann's email accepted, and died.
    let event_id = "01a00000-0000-7000-8000-0000000000aa";
    put_record(
        &env,
        event_id,
        "IN_PROGRESS",
        now_ms() - 1000,
        now_ms() / 1000 + 3600,
    )
    .await;
    // As the previous version stored it: no lease in `info` yet.
    let event = json!({"pk": "ORG#org-demo", "sk": format!("EVENT#{event_id}"), "eventID": event_id, "organizationID": "org-demo",
        "action": "NOTIFY_CONTACTS", "eventStatus": "PENDING", "timestamp": "2026-11-29T10:00:00Z",
        "entityID": "offer-demo", "entityType": "OFFER", "contactIds": ["c-ann", "c-bob", "c-cat"],
        "channels": ["EMAIL", "SMS", "SNS"]});
    let ann = json!({"pk": "ORG#org-demo", "sk": format!("DELIVERY#{event_id}#EMAIL#c-ann"), "eventID": event_id,
        "channel": "EMAIL", "contactId": "c-ann", "status": "SENT", "messageId": "earlier", "time": "2026-11-29T10:00:01Z"});
    common::seed(&env.sdk, &env.table, &json!({"items": [event, ann]})).await;

    let answer = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["eventID"], event_id);
    assert_eq!(answer.body["eventStatus"], "DONE");
    assert_eq!(
        answer.body["timestamp"], "2026-11-29T10:00:00Z",
        "the first attempt's creation time"
    );
    let emails: Vec<String> = env.moto.emails().into_iter().map(|e| e.0).collect();
    assert_eq!(
        emails,
        ["bob@buyer.example.com"],
        "Ann was not emailed again"
    );
    assert_eq!(
        answer.body["info"]["deliverySummary"]["EMAIL"],
        json!({"sent": 2, "skipped": 1, "failed": 0})
    );
    let ledger = env
        .items("org-demo", &format!("DELIVERY#{event_id}#EMAIL#c-ann"))
        .await;
    assert_eq!(ledger[0]["messageId"], "earlier");
    assert_eq!(
        env.items("org-demo", "IDEMPOTENCY#").await[0]["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn a_key_past_its_window_starts_a_new_request_even_before_ttl_deletes_it() {
    let env = TestEnv::new().await;
    put_record(
        &env,
        "01a00000-0000-7000-8000-0000000000bb",
        "COMPLETED",
        0,
        now_ms() / 1000 - 10,
    )
    .await;
    let answer = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_ne!(
        answer.body["eventID"],
        "01a00000-0000-7000-8000-0000000000bb"
    );
    assert_eq!(env.moto.emails().len(), 2);
}

#[tokio::test]
async fn a_direct_invocation_key_is_scoped_to_its_organisation() {
    let env = TestEnv::new().await;
    let first = env.invoke_file("direct-notify-listed.json").await.unwrap();
    let again = env.invoke_file("direct-notify-listed.json").await.unwrap();
    assert_eq!(first["eventID"], again["eventID"]);
    assert_eq!(env.moto.emails().len(), 1);
    // The key lives under the org's partition: another org's identical key is another record.
    let rec = env
        .dynamo()
        .get_item()
        .table_name(&env.table)
        .key("pk", AttributeValue::S("ORG#org-demo".into()))
        .key(
            "sk",
            AttributeValue::S("IDEMPOTENCY#renewal-2026-11-29-offer-demo".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(rec.item.is_some());
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["c-bob"], "idempotencyKey": "renewal-2026-11-29-offer-demo"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "KeyReused");
}
