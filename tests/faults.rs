//! Faults injected on the wire (tests/common/fault_proxy.rs) at each step of
//! the flow and for each service: after every one, the stored event tells the
//! truth about every recipient, and nobody got a message twice.

mod common;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use common::fault_proxy::{Fault, FaultProxy};
use common::{HttpAnswer, TestEnv};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

/// The function wired through the proxy, with production-like retries
/// (3 attempts, standard backoff) and a short attempt timeout.
async fn through_proxy(env: &TestEnv, proxy: &FaultProxy) -> notify_offer_contacts::App {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(notify_offer_contacts::aws::http::WebPkiClient::new(None).shared())
        .endpoint_url(&proxy.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(1))
                .build(),
        )
        .load()
        .await;
    let mut config = env.config.clone();
    config.email_per_second = None;
    config.sms_per_second = None;
    notify_offer_contacts::app(&sdk, &config)
}

async fn notify(app: &notify_offer_contacts::App) -> HttpAnswer {
    notify_with(
        app,
        common::read_json("events/http-api-notify-all-idempotent.json"),
    )
    .await
}

/// Invokes the handler with an HTTP event, as a local run (no authorizer needed).
async fn notify_with(app: &notify_offer_contacts::App, event: Value) -> HttpAnswer {
    let mut ctx = Context::default();
    ctx.request_id = "fault-test".into();
    HttpAnswer::from(
        notify_offer_contacts::event::handle(
            app,
            &notify_offer_contacts::event::Edge {
                access: notify_offer_contacts::config::Access::local(),
                metrics: None,
            },
            LambdaEvent::new(event, ctx),
        )
        .await
        .unwrap(),
    )
}

/// What moto says went out: each recipient at most once.
fn sent_once_each(env: &TestEnv) -> (usize, usize, usize) {
    let emails: Vec<String> = env.moto.emails().into_iter().map(|e| e.0).collect();
    let sms: Vec<String> = env.moto.sms().into_iter().map(|s| s.0).collect();
    for list in [&emails, &sms] {
        let mut unique = list.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            list.len(),
            "someone got a message twice: {list:?}"
        );
    }
    (emails.len(), sms.len(), env.moto.topic_messages().len())
}

/// The stored event and ledger agree with what moto recorded.
async fn stored_truth(env: &TestEnv, answer: &HttpAnswer) {
    let id = answer.body["eventID"].as_str().unwrap();
    let stored = &env.items("org-demo", &format!("EVENT#{id}")).await[0];
    assert_eq!(stored["eventStatus"], answer.body["eventStatus"]);
    let ledger = env.ledger("org-demo", id).await;
    let sent = |channel: &str| {
        ledger
            .iter()
            .filter(|d| d["channel"] == channel && d["status"] == "SENT")
            .count()
    };
    let (emails, sms, topic) = sent_once_each(env);
    assert_eq!(
        (sent("EMAIL"), sent("SMS"), sent("SNS")),
        (emails, sms, topic),
        "the ledger says what moto saw"
    );
    assert!(
        ledger.iter().all(|d| d["status"] != "SENDING"),
        "no delivery left in flight: {ledger:?}"
    );
    // The same, on the raw items: every key an announcement lists has an
    // entry of its own, none left SENDING.
    let raw = env.items("org-demo", &format!("DELIVERY#{id}#")).await;
    let (announcements, entries): (Vec<_>, Vec<_>) = raw
        .iter()
        .partition(|i| i["sk"].as_str().unwrap().contains("#~SENDING#"));
    let own: std::collections::HashSet<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}#{}",
                e["channel"].as_str().unwrap(),
                e["contactId"].as_str().unwrap_or("-")
            )
        })
        .collect();
    for key in announcements
        .iter()
        .flat_map(|a| a["keys"].as_array().unwrap())
    {
        assert!(
            own.contains(key.as_str().unwrap()),
            "{key} only announced: {raw:?}"
        );
    }
    assert!(entries.iter().all(|e| e["status"] != "SENDING"), "{raw:?}");
}

/// One transient fault at one step: absorbed by a retry, everything sent once.
async fn absorbed(op: &str, fault: Fault, skip: usize) {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    proxy.inject(op, fault, skip, 1);
    let app = through_proxy(&env, &proxy).await;
    let answer = notify(&app).await;
    assert_eq!(proxy.injected(op), 1, "{op} {fault:?} was injected");
    assert_eq!(answer.status, 200, "{op} {fault:?}: {}", answer.body);
    assert_eq!(
        answer.body["eventStatus"], "DONE",
        "{op} {fault:?}: {}",
        answer.body
    );
    assert_eq!(sent_once_each(&env), (2, 2, 1), "{op} {fault:?}");
    stored_truth(&env, &answer).await;
    assert_eq!(
        env.items("org-demo", "IDEMPOTENCY#").await[0]["status"],
        "COMPLETED",
        "{op} {fault:?}"
    );
}

#[tokio::test]
async fn reading_the_offer_throttled_once() {
    absorbed("DynamoDB.GetItem", Fault::Throttle, 0).await;
}
#[tokio::test]
async fn reading_the_settings_fails_once_with_a_500() {
    absorbed("DynamoDB.GetItem", Fault::ServerError, 1).await;
}
#[tokio::test]
async fn reading_the_contacts_comes_back_unprocessed() {
    absorbed("DynamoDB.BatchGetItem", Fault::Unprocessed, 0).await;
}

/// The proxy hands the unprocessed keys back alone, as moto does: the retry
/// still asks for the projected attributes (not whole contacts).
#[tokio::test]
async fn a_retry_of_unprocessed_contacts_keeps_its_projection() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    proxy.inject("DynamoDB.BatchGetItem", Fault::Unprocessed, 0, 1);
    let app = through_proxy(&env, &proxy).await;
    let answer = notify(&app).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let bodies = proxy.bodies("DynamoDB.BatchGetItem");
    assert!(bodies.len() >= 2, "{bodies:?}");
    for body in &bodies[..2] {
        let request: Value = serde_json::from_str(body).unwrap();
        let (_, contacts) = request["RequestItems"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        assert!(
            contacts["ProjectionExpression"].is_string(),
            "a contacts read without its projection: {body}"
        );
    }
    assert_eq!(sent_once_each(&env), (2, 2, 1));
}
#[tokio::test]
async fn reading_the_contacts_loses_its_connection() {
    absorbed("DynamoDB.BatchGetItem", Fault::Drop, 0).await;
}
#[tokio::test]
async fn claiming_the_key_answers_too_late() {
    absorbed(
        "DynamoDB.PutItem",
        Fault::Slow(Duration::from_millis(1500)),
        0,
    )
    .await;
}
#[tokio::test]
async fn storing_the_new_event_fails_once_with_a_500() {
    absorbed("DynamoDB.PutItem", Fault::ServerError, 1).await;
}
#[tokio::test]
async fn recording_intents_is_throttled_once() {
    absorbed("DynamoDB.BatchWriteItem", Fault::Throttle, 1).await;
}
#[tokio::test]
async fn recording_outcomes_comes_back_unprocessed() {
    absorbed("DynamoDB.BatchWriteItem", Fault::Unprocessed, 2).await;
}
#[tokio::test]
async fn storing_the_final_event_answers_slowly() {
    absorbed(
        "DynamoDB.PutItem",
        Fault::Slow(Duration::from_millis(1500)),
        2,
    )
    .await;
}
#[tokio::test]
async fn closing_the_key_fails_once_with_a_500() {
    absorbed("DynamoDB.UpdateItem", Fault::ServerError, 0).await;
}
#[tokio::test]
async fn ses_throttles_one_email() {
    absorbed("SES.SendEmail", Fault::Throttle, 0).await;
}
#[tokio::test]
async fn ses_fails_one_email_with_a_500() {
    absorbed("SES.SendEmail", Fault::ServerError, 1).await;
}
/// A send whose outcome is unknown: recorded UNCONFIRMED, never sent again
/// (not by the SDK's retries, not by a retry of the request).
async fn unconfirmed_once(op: &str, fault: Fault, expect_delivered: (usize, usize, usize)) {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    proxy.inject(op, fault, 0, 1);
    let app = through_proxy(&env, &proxy).await;
    let answer = notify(&app).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        proxy.calls(op),
        2,
        "two recipients, one call each: no retry of the unknown one"
    );
    assert_eq!(answer.body["eventStatus"], "FAILED");
    let unknown: Vec<&Value> = answer.body["info"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "UNCONFIRMED")
        .collect();
    assert_eq!(unknown.len(), 1, "{}", answer.body);
    assert!(
        unknown[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not sent again")
    );
    // The provider finishes late (a slow answer) or never saw it (a drop).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sent_once_each(&env), expect_delivered);
    // A retry of the request sends nothing more.
    let again = notify(&app).await;
    assert_eq!(again.body["eventID"], answer.body["eventID"]);
    assert_eq!(sent_once_each(&env), expect_delivered);
}

#[tokio::test]
async fn ses_dropping_the_connection_is_unconfirmed_not_retried() {
    unconfirmed_once("SES.SendEmail", Fault::Drop, (1, 2, 1)).await;
}

#[tokio::test]
async fn ses_answering_after_the_timeout_is_unconfirmed_and_delivered_once() {
    unconfirmed_once(
        "SES.SendEmail",
        Fault::Slow(Duration::from_millis(1500)),
        (2, 2, 1),
    )
    .await;
}

#[tokio::test]
async fn sns_dropping_an_sms_connection_is_unconfirmed_not_retried() {
    unconfirmed_once("SNS.PublishSms", Fault::Drop, (2, 1, 1)).await;
}
#[tokio::test]
async fn sns_throttles_one_sms() {
    absorbed("SNS.PublishSms", Fault::Throttle, 0).await;
}
#[tokio::test]
async fn sns_answers_one_sms_slowly_within_the_timeout() {
    absorbed("SNS.PublishSms", Fault::Slow(Duration::from_millis(500)), 0).await;
}
#[tokio::test]
async fn sns_fails_the_topic_publish_once_with_a_500() {
    absorbed("SNS.PublishTopic", Fault::ServerError, 0).await;
}

#[tokio::test]
async fn ses_throttling_every_email_puts_the_emails_back_and_a_retry_sends_them() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    proxy.inject("SES.SendEmail", Fault::Throttle, 0, usize::MAX);
    let app = through_proxy(&env, &proxy).await;
    let answer = notify(&app).await;
    assert_eq!(answer.status, 200);
    // The quota refused, not the recipients: nobody is FAILED, the emails
    // are NOT_STARTED, and the event waits for them.
    assert_eq!(answer.body["eventStatus"], "PENDING", "{}", answer.body);
    assert!(
        proxy.calls("SES.SendEmail") <= 6,
        "at most 2 emails x 3 attempts"
    );
    assert_eq!(
        answer.body["info"]["deliverySummary"]["EMAIL"],
        json!({"sent": 0, "skipped": 1, "failed": 0, "notStarted": 2})
    );
    let held: Vec<&Value> = answer.body["info"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "NOT_STARTED")
        .collect();
    assert_eq!(held.len(), 2);
    assert!(
        held.iter()
            .all(|d| d["reason"].as_str().unwrap().contains("quota")),
        "{held:?}"
    );
    assert_eq!(
        sent_once_each(&env),
        (0, 2, 1),
        "SMS and topic still went out"
    );
    stored_truth(&env, &answer).await;

    // The quota recovers; the retry with the same key sends the emails, once.
    proxy.clear();
    let retry = notify(&app).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["eventStatus"], "DONE", "{}", retry.body);
    assert_eq!(sent_once_each(&env), (2, 2, 1));
    stored_truth(&env, &retry).await;
}

#[tokio::test]
async fn a_storage_outage_before_sending_sends_nothing() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    proxy.inject("DynamoDB.GetItem", Fault::ServerError, 0, usize::MAX);
    let answer = notify(&through_proxy(&env, &proxy).await).await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.message(),
        "internal error; quote request id fault-test when reporting it"
    );
    assert_eq!(sent_once_each(&env), (0, 0, 0));
}

#[tokio::test]
async fn an_outage_after_sending_then_a_retry_never_sends_twice() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    // Skipped deliveries and intents are recorded; every outcome write then fails.
    proxy.inject("DynamoDB.BatchWriteItem", Fault::ServerError, 2, usize::MAX);
    let app = through_proxy(&env, &proxy).await;
    let first = notify(&app).await;
    assert_eq!(first.status, 500);
    assert_eq!(
        sent_once_each(&env),
        (2, 2, 1),
        "everything was accepted before the outage"
    );

    proxy.clear();
    let retry = notify(&app).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(
        sent_once_each(&env),
        (2, 2, 1),
        "the retry sent nothing again"
    );
    assert_eq!(
        retry.body["eventStatus"], "FAILED",
        "outcomes unknown: the event does not claim DONE"
    );
    let summary = &retry.body["info"]["deliverySummary"];
    assert_eq!(summary["EMAIL"]["unconfirmed"], 2);
    assert_eq!(summary["SMS"]["unconfirmed"], 2);
    let id = retry.body["eventID"].as_str().unwrap();
    let ledger = env.ledger("org-demo", id).await;
    assert!(
        ledger
            .iter()
            .all(|d| d["status"] == "UNCONFIRMED" || d["status"] == "SKIPPED"),
        "{ledger:?}"
    );
}

/// The scenario on the wire: a keyed `["c-ann","c-bob"]` by email at
/// the default rate (1 a second), the store down right after the first
/// SendEmail (every ledger write after the first fails). Then the store is
/// back, and the retry with the same key finishes.
#[tokio::test]
async fn the_store_down_right_after_the_first_email_loses_nobody_on_the_wire() {
    let env = TestEnv::new().await;
    common::seed(
        &env.sdk,
        &env.table,
        &json!({"items": [{"pk": "ORG#org-demo", "sk": "NOTIFICATION_CONFIG", "channels": ["EMAIL"]}]}),
    )
    .await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    let sdk = common::sdk_config(&proxy.endpoint).await;
    // The production default: 1 email a second.
    let app = notify_offer_contacts::app(&sdk, &env.config);
    let mut request = common::read_json("events/http-api-notify-all-idempotent.json");
    request["body"] = json!("[\"c-ann\",\"c-bob\"]");
    // The first BatchWriteItem (c-ann's intent) passes; every later one fails.
    proxy.inject("DynamoDB.BatchWriteItem", Fault::ServerError, 1, usize::MAX);
    let failed = notify_with(&app, request.clone()).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    let emails =
        |env: &TestEnv| -> Vec<String> { env.moto.emails().into_iter().map(|e| e.0).collect() };
    assert_eq!(
        emails(&env),
        ["ann@buyer.example.com"],
        "c-bob never started"
    );

    proxy.clear();
    let retried = notify_with(&app, request).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    let mut sent = emails(&env);
    sent.sort();
    assert_eq!(
        sent,
        ["ann@buyer.example.com", "bob@buyer.example.com"],
        "each exactly once"
    );
    let id = retried.body["eventID"].as_str().unwrap();
    let ledger = env.ledger("org-demo", id).await;
    let status = |c: &str| {
        ledger
            .iter()
            .find(|d| d["contactId"] == c)
            .map(|d| d["status"].as_str().unwrap().to_owned())
    };
    // c-ann was in flight when the store went down: UNCONFIRMED (it did arrive).
    assert_eq!(status("c-ann").as_deref(), Some("UNCONFIRMED"));
    assert_eq!(status("c-bob").as_deref(), Some("SENT"));
}
