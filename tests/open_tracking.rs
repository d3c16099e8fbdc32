//! SES Open events (SNS-wrapped, `events/sns-ses-open.json`) against moto:
//! the first open per contact in `trackEvents`, every open counted, SNS
//! redelivery applied once, bad events dropped, and opens kept across the
//! notify run's own final write.

mod common;

use common::TestEnv;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

/// The sample SES open event, aimed at `event_id`/`contact`, carried by SNS message `sns_id`.
fn open_event(event_id: &str, contact: &str, sns_id: &str) -> Value {
    let mut event = common::read_json("events/sns-ses-open.json");
    let mut ses: Value =
        serde_json::from_str(event["Records"][0]["Sns"]["Message"].as_str().unwrap()).unwrap();
    ses["mail"]["tags"]["eventID"] = json!([event_id]);
    ses["mail"]["tags"]["contactId"] = json!([contact]);
    event["Records"][0]["Sns"]["Message"] = json!(ses.to_string());
    event["Records"][0]["Sns"]["MessageId"] = json!(sns_id);
    event
}

async fn stored(env: &TestEnv, event_id: &str) -> Value {
    env.items("org-demo", &format!("EVENT#{event_id}"))
        .await
        .remove(0)
}

#[tokio::test]
async fn the_first_open_per_contact_is_tracked_and_redelivery_counts_once() {
    let env = TestEnv::new().await;
    let answer = env.http("http-api-notify-all.json").await;
    let id = answer.body["eventID"].as_str().unwrap().to_owned();

    let out = env.invoke(open_event(&id, "c-ann", "sns-1")).await.unwrap();
    assert_eq!(
        out,
        json!({"opensRecorded": 1, "feedbackApplied": 0, "duplicates": 0, "ignored": 0, "dropped": 0})
    );
    let out = env.invoke(open_event(&id, "c-ann", "sns-1")).await.unwrap();
    assert_eq!(out["duplicates"], 1, "an SNS redelivery is applied once");
    env.invoke(open_event(&id, "c-ann", "sns-2")).await.unwrap();
    env.invoke(open_event(&id, "c-bob", "sns-3")).await.unwrap();

    let event = stored(&env, &id).await;
    assert_eq!(
        event["trackEvents"],
        json!([
            {"action": "OPEN_EMAIL", "contactId": "c-ann", "timestamp": "2026-11-29T16:30:00Z"},
            {"action": "OPEN_EMAIL", "contactId": "c-bob", "timestamp": "2026-11-29T16:30:00Z"}
        ])
    );
    assert_eq!(event["info"]["opens"], json!({"c-ann": 2, "c-bob": 1}));
    assert_eq!(
        event["eventStatus"], "DONE",
        "the delivery outcome is untouched"
    );
    assert_eq!(
        event["info"]["deliverySummary"],
        answer.body["info"]["deliverySummary"]
    );
}

#[tokio::test]
async fn unknown_malformed_and_other_ses_events_are_dropped_never_a_crash() {
    let env = TestEnv::new().await;
    let out = env.invoke_file("sns-ses-open.json").await.unwrap();
    assert_eq!(
        out["dropped"], 1,
        "the sample names an event this table does not have"
    );

    let mut bad = common::read_json("events/sns-ses-open.json");
    bad["Records"][0]["Sns"]["Message"] = json!("{not json");
    assert_eq!(env.invoke(bad).await.unwrap()["dropped"], 1);

    let mut tricky = open_event("01a0-0000", "c-ann", "sns-9");
    let mut ses: Value =
        serde_json::from_str(tricky["Records"][0]["Sns"]["Message"].as_str().unwrap()).unwrap();
    ses["mail"]["tags"]["organizationID"] = json!(["org-demo#x"]);
    tricky["Records"][0]["Sns"]["Message"] = json!(ses.to_string());
    assert_eq!(env.invoke(tricky).await.unwrap()["dropped"], 1);

    // A Delivery is feedback now (tests/feedback.rs): without tags, dropped.
    let mut delivery = common::read_json("events/sns-ses-open.json");
    delivery["Records"][0]["Sns"]["Message"] =
        json!(json!({"eventType": "Delivery", "mail": {}}).to_string());
    assert_eq!(env.invoke(delivery).await.unwrap()["dropped"], 1);
    // A Send says nothing the ledger does not: ignored.
    let mut send = common::read_json("events/sns-ses-open.json");
    send["Records"][0]["Sns"]["Message"] =
        json!(json!({"eventType": "Send", "mail": {}}).to_string());
    assert_eq!(env.invoke(send).await.unwrap()["ignored"], 1);
}

#[tokio::test]
async fn opens_recorded_during_a_run_survive_its_final_write() {
    let env = TestEnv::new().await;
    // A keyed run stopped by its deadline before sending: the event stays PENDING.
    let mut ctx = Context::default();
    ctx.request_id = "r1".into();
    ctx.deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1000;
    let request = common::read_json("events/http-api-notify-all-idempotent.json");
    let first = notify_offer_contacts::event::handle(
        &env.app,
        &env.edge,
        LambdaEvent::new(request.clone(), ctx),
    )
    .await
    .unwrap();
    let first = common::HttpAnswer::from(first);
    assert_eq!(first.body["eventStatus"], "PENDING", "{}", first.body);
    let id = first.body["eventID"].as_str().unwrap().to_owned();

    // An open arrives for that event (say, an earlier attempt's email).
    env.invoke(open_event(&id, "c-ann", "sns-1")).await.unwrap();

    // The retry resumes and finishes the event; the open is still there.
    let done = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(done.body["eventStatus"], "DONE");
    let event = stored(&env, &id).await;
    assert_eq!(event["trackEvents"][0]["contactId"], "c-ann");
    assert_eq!(event["info"]["opens"], json!({"c-ann": 1}));
    assert_eq!(event["eventStatus"], "DONE");
}
