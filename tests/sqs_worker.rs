//! The hand-off and the worker over the wire: moto's DynamoDB, SES, SNS and
//! SQS. The request enqueues with `SendMessageBatch`; the test plays Lambda's
//! SQS poller: it receives the messages with the SDK, builds the SQS event
//! JSON Lambda would send, invokes the handler, and deletes what the answer
//! does not name in `batchItemFailures`.

mod common;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::TestEnv;
use serde_json::{Value, json};

const MAX_RECEIVES: u32 = 2;

struct Queues {
    work: String,
    dlq: String,
    sqs: aws_sdk_sqs::Client,
}

/// A world whose function hands off any request of 2+ recipients, 2
/// deliveries a message, over a work queue with a DLQ after 2 receives.
async fn queued_env() -> (TestEnv, Queues) {
    let mut env = TestEnv::new().await;
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let dlq = sqs
        .create_queue()
        .queue_name("notify-work-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let work = sqs
        .create_queue()
        .queue_name("notify-work")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    env.config.work_queue_url = Some(work.clone());
    env.config.hand_off.max_sync_recipients = 1;
    env.config.hand_off.deliveries_per_message = 2;
    env.config.hand_off.max_receives = MAX_RECEIVES;
    env.config.email_per_second = None;
    env.config.sms_per_second = None;
    env.app = notify_offer_contacts::app(&env.sdk, &env.config);
    (env, Queues { work, dlq, sqs })
}

/// Receives what is visible, as Lambda's poller does: (SQS event, receipt handles).
async fn receive(q: &Queues, url: &str) -> (Value, Vec<(String, String)>) {
    let mut records = Vec::new();
    let mut handles = Vec::new();
    loop {
        let out = q
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let attrs = m.attributes.clone().unwrap_or_default();
            let attr = |a: MessageSystemAttributeName| attrs.get(&a).cloned().unwrap_or_default();
            let id = m.message_id.clone().unwrap();
            handles.push((id.clone(), m.receipt_handle.clone().unwrap()));
            // The record layout Lambda sends (AWS docs: "Using Lambda with Amazon SQS").
            records.push(json!({
                "messageId": id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {
                    "ApproximateReceiveCount": attr(MessageSystemAttributeName::ApproximateReceiveCount),
                    "SentTimestamp": attr(MessageSystemAttributeName::SentTimestamp),
                    "SenderId": attr(MessageSystemAttributeName::SenderId),
                    "ApproximateFirstReceiveTimestamp": attr(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp),
                },
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notify-work",
                "awsRegion": "us-east-1",
            }));
        }
    }
    (json!({ "Records": records }), handles)
}

/// Invokes the worker with an SQS event; answers the failed message IDs.
async fn work(env: &TestEnv, event: Value) -> Vec<String> {
    let answer = env
        .invoke(event)
        .await
        .expect("an SQS batch always gets an answer");
    answer["batchItemFailures"]
        .as_array()
        .expect("batchItemFailures")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// What the poller does after the invocation: delete the successes, make the
/// failures visible again at once (instead of waiting out the visibility timeout).
async fn settle(q: &Queues, handles: &[(String, String)], failed: &[String]) {
    for (id, handle) in handles {
        if failed.contains(id) {
            q.sqs
                .change_message_visibility()
                .queue_url(&q.work)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        } else {
            q.sqs
                .delete_message()
                .queue_url(&q.work)
                .receipt_handle(handle)
                .send()
                .await
                .unwrap();
        }
    }
}

/// The deliveries a stored event lists as FAILED.
fn failed_deliveries(stored: &Value) -> Vec<&Value> {
    stored["info"]["deliveries"]
        .as_array()
        .expect("info.deliveries")
        .iter()
        .filter(|d| d["status"] == "FAILED")
        .collect()
}

async fn stored_event(env: &TestEnv, id: &str) -> Value {
    env.items("org-demo", &format!("EVENT#{id}")).await[0].clone()
}

#[tokio::test]
async fn a_handed_off_request_is_sent_by_the_worker_and_a_redelivery_sends_nothing_again() {
    let (env, q) = queued_env().await;
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let event = &answer.body;
    assert_eq!(event["eventStatus"], "PENDING");
    assert_eq!(event["info"]["deliveryMode"], "QUEUED");
    // ann and bob by EMAIL and SMS, and the topic: 5 deliveries, 3 messages.
    assert_eq!(event["info"]["queuedDeliveries"], 5);
    assert_eq!(event["info"]["queueMessages"], 3);
    assert!(
        env.moto.emails().is_empty(),
        "nothing is sent by the request"
    );
    let id = event["eventID"].as_str().unwrap().to_owned();

    let (sqs_event, handles) = receive(&q, &q.work).await;
    assert_eq!(handles.len(), 3);
    // The messages carry IDs only: no address, number or text.
    let bodies = sqs_event.to_string();
    assert!(!bodies.contains("@buyer.example.com") && !bodies.contains("+1206"));

    // First receive: all sent; the worker of the last batch closes the event.
    assert_eq!(work(&env, sqs_event.clone()).await, Vec::<String>::new());
    assert_eq!(env.moto.emails().len(), 2);
    assert_eq!(env.moto.sms().len(), 2);
    assert_eq!(env.moto.topic_messages().len(), 1);
    let stored = stored_event(&env, &id).await;
    assert_eq!(stored["eventStatus"], "DONE", "{stored}");
    assert_eq!(stored["info"]["deliverySummary"]["EMAIL"]["sent"], 2);
    assert_eq!(stored["info"]["deliverySummary"]["EMAIL"]["skipped"], 1);

    // The worker died before the poller deleted the messages: SQS delivers
    // them again (ApproximateReceiveCount 2). Nothing is sent twice.
    settle(
        &q,
        &handles,
        &handles.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
    )
    .await;
    let (again, handles) = receive(&q, &q.work).await;
    assert_eq!(again["Records"].as_array().unwrap().len(), 3);
    assert_eq!(
        again["Records"][0]["attributes"]["ApproximateReceiveCount"],
        "2"
    );
    assert_eq!(work(&env, again).await, Vec::<String>::new());
    settle(&q, &handles, &[]).await;
    assert_eq!(env.moto.emails().len(), 2);
    assert_eq!(env.moto.sms().len(), 2);
    assert_eq!(env.moto.topic_messages().len(), 1);
    assert_eq!(stored_event(&env, &id).await["eventStatus"], "DONE");
    let (left, _) = receive(&q, &q.work).await;
    assert_eq!(left["Records"].as_array().unwrap().len(), 0);

    // Every ledger entry is final; none is left QUEUED or SENDING.
    let ledger = env.items("org-demo", &format!("DELIVERY#{id}#")).await;
    assert_eq!(ledger.len(), 7);
    assert!(
        ledger
            .iter()
            .all(|d| d["status"] == "SENT" || d["status"] == "SKIPPED"),
        "{ledger:?}"
    );
    assert!(
        env.items("org-demo", &format!("WORK#{id}")).await[0]
            .get("pendingBatches")
            .is_none_or(|b| b.as_array().is_some_and(Vec::is_empty))
    );
}

#[tokio::test]
async fn a_failing_message_is_retried_then_lands_in_the_dlq_and_the_event_says_who_failed() {
    let (env, q) = queued_env().await;
    let answer = env.http("http-api-notify-all.json").await;
    let id = answer.body["eventID"].as_str().unwrap().to_owned();
    // The offer disappears before the workers run: every message fails.
    env.dynamo()
        .delete_item()
        .table_name(&env.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("ORG#org-demo".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("OFFER#offer-demo".into()),
        )
        .send()
        .await
        .unwrap();

    for receive_count in 1..=MAX_RECEIVES {
        let (event, handles) = receive(&q, &q.work).await;
        assert_eq!(handles.len(), 3, "receive {receive_count}");
        let failed = work(&env, event).await;
        assert_eq!(failed.len(), 3, "every message is reported failed");
        settle(&q, &handles, &failed).await;
        let status = stored_event(&env, &id).await["eventStatus"].clone();
        if receive_count < MAX_RECEIVES {
            assert_eq!(
                status, "PENDING",
                "retried, not given up, at receive {receive_count}"
            );
        }
    }
    // The last receive gave up: the event is closed and names who failed.
    let stored = stored_event(&env, &id).await;
    assert_eq!(stored["eventStatus"], "FAILED", "{stored}");
    let failed = failed_deliveries(&stored);
    assert_eq!(failed.len(), 5);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("offer offer-demo no longer exists")
    );
    assert!(env.moto.emails().is_empty());

    // SQS moves them to the DLQ on the next receive after maxReceiveCount.
    let (none, _) = receive(&q, &q.work).await;
    assert_eq!(none["Records"].as_array().unwrap().len(), 0);
    let (dead, _) = receive(&q, &q.dlq).await;
    assert_eq!(dead["Records"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_sample_sqs_event_is_answered_with_its_message_as_a_failure() {
    // events/sqs-work-batch.json names an event that does not exist here.
    let (env, _q) = queued_env().await;
    let answer = env.invoke_file("sqs-work-batch.json").await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [
            {"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"},
            {"itemIdentifier": "7b8c2f0a-5d3e-4c1b-9a6f-0e2d4c6b8a10"}
        ]})
    );
}

#[tokio::test]
async fn entries_sqs_fails_are_retried_and_a_refused_one_is_recorded_failed() {
    use common::fault_proxy::{Fault, FaultProxy};
    let (mut env, q) = queued_env().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    let sdk = common::sdk_config(&proxy.endpoint).await;
    env.app = notify_offer_contacts::app(&sdk, &env.config);

    // SQS fails one entry on its side (SenderFault false): sent again, queued.
    proxy.inject(
        "SQS.SendMessageBatch",
        Fault::FirstEntryFails {
            sender_fault: false,
        },
        0,
        1,
    );
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.body["eventStatus"], "PENDING", "{}", answer.body);
    assert_eq!(proxy.injected("SQS.SendMessageBatch"), 1);
    assert_eq!(
        proxy.calls("SQS.SendMessageBatch"),
        2,
        "the failed entry is sent again"
    );
    let (event, handles) = receive(&q, &q.work).await;
    assert_eq!(handles.len(), 3, "every message queued once");
    assert!(work(&env, event).await.is_empty());
    settle(&q, &handles, &[]).await;
    let id = answer.body["eventID"].as_str().unwrap();
    assert_eq!(stored_event(&env, id).await["eventStatus"], "DONE");

    // A sender fault will not heal: not sent again; its deliveries are FAILED
    // at once, the rest go out, and the event closes FAILED naming them.
    proxy.inject(
        "SQS.SendMessageBatch",
        Fault::FirstEntryFails { sender_fault: true },
        0,
        1,
    );
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.body["eventStatus"], "PENDING", "{}", answer.body);
    assert_eq!(
        proxy.calls("SQS.SendMessageBatch"),
        3,
        "no retry of a sender fault"
    );
    let (event, handles) = receive(&q, &q.work).await;
    assert_eq!(handles.len(), 2);
    assert!(work(&env, event).await.is_empty());
    settle(&q, &handles, &[]).await;
    let id = answer.body["eventID"].as_str().unwrap();
    let stored = stored_event(&env, id).await;
    assert_eq!(stored["eventStatus"], "FAILED", "{stored}");
    let failed = failed_deliveries(&stored);
    assert_eq!(failed.len(), 2);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("could not be queued: InvalidParameterValue")
    );
    // 2 emails from the first request, 1 from the second (the other was refused).
    assert_eq!(env.moto.emails().len() + env.moto.sms().len(), 4 + 2);
}

#[tokio::test]
async fn a_hand_off_whose_ledger_write_failed_on_the_wire_is_rebuilt_by_the_keyed_retry() {
    use common::fault_proxy::{Fault, FaultProxy};
    let (mut env, q) = queued_env().await;
    let proxy = FaultProxy::start(&env.moto.endpoint).await;
    let sdk = common::sdk_config(&proxy.endpoint).await;
    env.app = notify_offer_contacts::app(&sdk, &env.config);

    // The event is stored QUEUED; then every ledger write fails.
    proxy.inject("DynamoDB.BatchWriteItem", Fault::ServerError, 0, usize::MAX);
    let failed = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(proxy.injected("DynamoDB.BatchWriteItem") > 0);
    let (nothing, _) = receive(&q, &q.work).await;
    assert_eq!(
        nothing["Records"].as_array().unwrap().len(),
        0,
        "nothing queued"
    );
    let events = env.items("org-demo", "EVENT#").await;
    assert_eq!(events[0]["eventStatus"], "PENDING");
    assert_eq!(events[0]["info"]["deliveryMode"], "QUEUED");
    let id = events[0]["eventID"].as_str().unwrap().to_owned();
    assert!(
        env.items("org-demo", &format!("DELIVERY#{id}#"))
            .await
            .is_empty()
    );

    // The store is back; the keyed retry rebuilds the ledger from the event
    // and queues it all; the worker sends everyone once.
    proxy.clear();
    let retried = env.http("http-api-notify-all-idempotent.json").await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.body["eventID"], id.as_str());
    let ledger = env.items("org-demo", &format!("DELIVERY#{id}#")).await;
    assert_eq!(ledger.iter().filter(|d| d["status"] == "QUEUED").count(), 5);
    let (event, handles) = receive(&q, &q.work).await;
    assert!(work(&env, event).await.is_empty());
    settle(&q, &handles, &[]).await;
    assert_eq!(stored_event(&env, &id).await["eventStatus"], "DONE");
    assert_eq!((env.moto.emails().len(), env.moto.sms().len()), (2, 2));
    assert_eq!(env.moto.topic_messages().len(), 1);
}

/// The webhook's retry outlives the invocation: attempt 1 is a queue message;
/// its 503 queues attempt 2 with `DelaySeconds` (SQS, not the function,
/// holds it back); attempt 2 is delivered with the same `webhook-id`.
#[tokio::test]
async fn a_webhook_503_is_retried_through_sqs_with_a_delay_and_the_same_id() {
    use common::receiver::{Answer, Receiver};
    let (mut env, q) = queued_env().await;
    let hook = Receiver::start().await;
    env.config.secret_prefix = "t/".into();
    env.config.test_only_local_targets = vec![hook.target()];
    env.app = notify_offer_contacts::app(&env.sdk, &env.config);
    common::seed(
        &env.sdk,
        &env.table,
        &common::read_json("tests/fixtures/chat-org.json"),
    )
    .await;
    let sm = aws_sdk_secretsmanager::Client::new(&env.sdk);
    sm.create_secret()
        .name("t/org-chat/erp")
        .secret_string(
            json!({"url": hook.url("/hooks"), "signingSecret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    // Only the webhook: the other targets have no secrets here.
    let answer = env
        .invoke(json!({"orgId": "org-chat", "offerId": "offer-chat"}))
        .await
        .unwrap();
    let event_id = answer["eventID"].as_str().unwrap().to_owned();
    assert!(
        hook.arrived().is_empty(),
        "the answer does not wait for the endpoint"
    );

    hook.then(Answer::status(503, ""));
    let (event, handles) = receive(&q, &q.work).await;
    assert_eq!(handles.len(), 1, "attempt 1 is one message");
    let failed = work(&env, event).await;
    settle(&q, &handles, &failed).await;
    assert_eq!(hook.arrived().len(), 1);
    let entry = |items: Vec<Value>| {
        items
            .into_iter()
            .find(|i| i["channel"] == "WEBHOOK")
            .unwrap()
    };
    let w = entry(
        env.items("org-chat", &format!("DELIVERY#{event_id}#"))
            .await,
    );
    assert_eq!(
        (w["status"].as_str(), w["attempts"].as_u64()),
        (Some("QUEUED"), Some(1))
    );
    assert!(w["retryAt"].is_string());

    // SQS holds attempt 2 back for its delay.
    let (_, early) = receive(&q, &q.work).await;
    assert!(early.is_empty(), "attempt 2 was visible before its delay");
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
    let (event, handles) = receive(&q, &q.work).await;
    assert_eq!(handles.len(), 1);
    let failed = work(&env, event).await;
    settle(&q, &handles, &failed).await;
    let arrived = hook.arrived();
    assert_eq!(arrived.len(), 2);
    assert_eq!(
        arrived[0].header("webhook-id"),
        arrived[1].header("webhook-id")
    );
    assert_ne!(arrived[0].header("webhook-timestamp"), None);
    let w = entry(
        env.items("org-chat", &format!("DELIVERY#{event_id}#"))
            .await,
    );
    assert_eq!(
        (w["status"].as_str(), w["attempts"].as_u64()),
        (Some("SENT"), Some(2))
    );
    let (_, rest) = receive(&q, &q.work).await;
    assert!(rest.is_empty());
}
