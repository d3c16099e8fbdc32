//! Provider feedback over the wire to DynamoDB on moto: SES events (the
//! samples in `events/sns-ses-*.json`, aimed at real deliveries) move each
//! recipient to its own status, visible through GET notificationMessage; the
//! ladder only goes up, redeliveries and late reports change nothing, a
//! report about another organisation's or another message's email changes
//! nothing, and a lost delivery turns the event FAILED.

mod common;

use common::{HttpAnswer, TestEnv};
use serde_json::{Value, json};

/// The sample `name`, aimed at one delivery (its org, event, contact and SES
/// message ID), carried by SNS message `sns_id`.
/// One report of a sequence: what it is, the SES sample, the org, event and
/// contact its tags name, its SES and SNS message IDs, and the count of the
/// answer that must read 1.
type Step<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
);

fn report(name: &str, org: &str, event: &str, contact: &str, ses_id: &str, sns_id: &str) -> Value {
    let mut e = common::read_json(format!("events/{name}.json"));
    let mut ses: Value =
        serde_json::from_str(e["Records"][0]["Sns"]["Message"].as_str().unwrap()).unwrap();
    ses["mail"]["messageId"] = json!(ses_id);
    ses["mail"]["tags"]["organizationID"] = json!([org]);
    ses["mail"]["tags"]["eventID"] = json!([event]);
    ses["mail"]["tags"]["contactId"] = json!([contact]);
    e["Records"][0]["Sns"]["Message"] = json!(ses.to_string());
    e["Records"][0]["Sns"]["MessageId"] = json!(sns_id);
    e
}

/// The SES message ID the ledger holds for a contact's email.
/// The provider's message ID of a contact's delivery by `channel`, from the ledger.
async fn message_id(env: &TestEnv, org: &str, event: &str, channel: &str, contact: &str) -> String {
    env.items(org, &format!("DELIVERY#{event}#{channel}#{contact}"))
        .await
        .first()
        .and_then(|d| d["messageId"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{contact}'s {channel} delivery in the ledger"))
}

async fn ses_id(env: &TestEnv, org: &str, event: &str, contact: &str) -> String {
    message_id(env, org, event, "EMAIL", contact).await
}

/// `status` of each message of the event, read through the GET route.
async fn statuses(env: &TestEnv, org: &str, event: &str) -> Vec<(String, String, Value)> {
    let get = common::http_get(
        &format!("/org/{org}/notificationMessage"),
        &[("eventId", event)],
        org,
    );
    let a = HttpAnswer::from(env.invoke(get).await.unwrap());
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["notificationMessages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "EMAIL")
        .map(|m| {
            (
                m["recipient"].as_str().unwrap().to_owned(),
                m["info"]["customFields"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["info"]["customFields"].clone(),
            )
        })
        .collect()
}

fn status_of(all: &[(String, String, Value)], contact: &str) -> String {
    all.iter()
        .find(|(c, _, _)| c == contact)
        .map(|(_, s, _)| s.clone())
        .unwrap_or_else(|| panic!("{contact}"))
}

#[tokio::test]
async fn bounced_complained_suppressed_and_delivered_recipients_each_end_in_their_own_status() {
    let env = TestEnv::with_brand_org().await;
    let demo = env.notified("org-demo", "offer-demo").await;
    let brand = env.notified("org-brand", "offer-brand").await;
    let ann = ses_id(&env, "org-demo", &demo, "c-ann").await;
    let bob = ses_id(&env, "org-demo", &demo, "c-bob").await;
    let eve = ses_id(&env, "org-brand", &brand, "c-eve").await;
    let fay = ses_id(&env, "org-brand", &brand, "c-fay").await;

    // Each report in turn: what it is, the SES sample, the org, event and
    // contact its tags name, its SES and SNS message IDs, and the count of the
    // answer that must read 1 (`None`: the answer's success is enough).
    let someone_elses = String::from("someone-elses");
    let steps: [Step; 9] = [
        (
            "Ann: a hard bounce",
            "sns-ses-bounce",
            "org-demo",
            &demo,
            "c-ann",
            &ann,
            "s1",
            Some("feedbackApplied"),
        ),
        (
            "Ann: a late delivery never replaces a bounce",
            "sns-ses-delivery",
            "org-demo",
            &demo,
            "c-ann",
            &ann,
            "s2",
            Some("duplicates"),
        ),
        (
            "Bob: delivered",
            "sns-ses-delivery",
            "org-demo",
            &demo,
            "c-bob",
            &bob,
            "s3",
            None,
        ),
        (
            "Bob: then a complaint",
            "sns-ses-complaint",
            "org-demo",
            &demo,
            "c-bob",
            &bob,
            "s4",
            None,
        ),
        (
            "Bob: the complaint redelivered",
            "sns-ses-complaint",
            "org-demo",
            &demo,
            "c-bob",
            &bob,
            "s4",
            Some("duplicates"),
        ),
        (
            "Eve: on the account's suppression list",
            "sns-ses-bounce-suppressed",
            "org-brand",
            &brand,
            "c-eve",
            &eve,
            "s5",
            None,
        ),
        (
            "Fay: delivered",
            "sns-ses-delivery",
            "org-brand",
            &brand,
            "c-fay",
            &fay,
            "s6",
            None,
        ),
        // Reports that are not about our message change nothing.
        (
            "another organisation's tag on org-demo's event",
            "sns-ses-bounce",
            "org-other",
            &demo,
            "c-bob",
            &bob,
            "s7",
            Some("dropped"),
        ),
        (
            "another SES message ID",
            "sns-ses-bounce",
            "org-brand",
            &brand,
            "c-fay",
            &someone_elses,
            "s8",
            Some("dropped"),
        ),
    ];
    for (what, name, org, event, contact, id, sns, counted) in steps {
        let out = env
            .invoke(report(name, org, event, contact, id, sns))
            .await
            .unwrap();
        if let Some(count) = counted {
            assert_eq!(out[count], 1, "{what}: {out}");
        }
    }

    let demo_now = statuses(&env, "org-demo", &demo).await;
    let brand_now = statuses(&env, "org-brand", &brand).await;
    println!("org-demo: {demo_now:#?}\norg-brand: {brand_now:#?}");
    assert_eq!(status_of(&demo_now, "c-ann"), "BOUNCED");
    assert_eq!(status_of(&demo_now, "c-bob"), "COMPLAINED");
    assert_eq!(status_of(&brand_now, "c-eve"), "SUPPRESSED");
    assert_eq!(status_of(&brand_now, "c-fay"), "DELIVERED");
    let ann_fields = &demo_now.iter().find(|(c, _, _)| c == "c-ann").unwrap().2;
    assert_eq!(ann_fields["sendStatus"], "SENT");
    assert_eq!(ann_fields["outcomeReason"], "permanent bounce (General)");
    assert!(
        !ann_fields.to_string().contains("@"),
        "no address from the report"
    );

    // The events follow: a lost delivery is a failed one.
    let stored = |org: &'static str, id: String| {
        let env = &env;
        async move { env.items(org, &format!("EVENT#{id}")).await.remove(0) }
    };
    let e = stored("org-demo", demo.clone()).await;
    assert_eq!(e["eventStatus"], "FAILED");
    assert_eq!(e["info"]["deliverySummary"]["EMAIL"]["failed"], 1);
    assert_eq!(e["info"]["deliverySummary"]["EMAIL"]["sent"], 1);
    let e = stored("org-brand", brand.clone()).await;
    assert_eq!(e["eventStatus"], "FAILED");
    assert_eq!(e["info"]["deliverySummary"]["EMAIL"]["sent"], 1);
}

/// A CloudWatch Logs subscription event of `group` carrying SNS SMS
/// delivery log lines (gzip, base64), as CloudWatch Logs invokes a function.
fn sms_logs(group: &str, lines: &[Value]) -> Value {
    use base64::Engine as _;
    use std::io::Write as _;
    let doc = json!({
        "messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": group,
        "logStream": "stream", "subscriptionFilters": ["notify-offer-contacts-SmsDelivered"],
        "logEvents": lines.iter().enumerate().map(|(i, l)| json!({"id": i.to_string(), "timestamp": 1796000000000u64, "message": l.to_string()})).collect::<Vec<_>>(),
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(doc.to_string().as_bytes()).unwrap();
    json!({"awslogs": {"data": base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())}})
}

/// One SNS SMS delivery log line, as SNS writes it.
fn sms_line(message_id: &str, status: &str, answer: &str, number: &str) -> Value {
    json!({
        "notification": {"messageId": message_id, "timestamp": "2026-11-30 10:00:00.123"},
        "delivery": {"mnc": 0, "numberOfMessageParts": 1, "destination": number, "priceInUSD": 0.00645,
            "smsType": "Transactional", "mcc": 310, "providerResponse": answer, "dwellTimeMs": 599, "dwellTimeMsUntilDeviceAck": 1344},
        "status": status
    })
}

async fn sms_id(env: &TestEnv, event: &str, contact: &str) -> String {
    message_id(env, "org-demo", event, "SMS", contact).await
}

#[tokio::test]
async fn sms_delivery_logs_end_in_delivered_and_opted_out_and_never_hold_the_number() {
    let env = TestEnv::new().await;
    let event = env.notified("org-demo", "offer-demo").await;
    let (ann, cat) = (
        sms_id(&env, &event, "c-ann").await,
        sms_id(&env, &event, "c-cat").await,
    );
    let ok = sms_logs(
        "sns/us-east-1/123456789012/DirectPublishToPhoneNumber",
        &[sms_line(
            &ann,
            "SUCCESS",
            "Message has been accepted by phone carrier",
            "+12065550100",
        )],
    );
    let out = env.invoke(ok.clone()).await.unwrap();
    assert_eq!(out["applied"], 1, "{out}");
    assert_eq!(
        env.invoke(ok).await.unwrap()["duplicates"],
        1,
        "a redelivery changes nothing"
    );
    let failed = sms_logs(
        "sns/us-east-1/123456789012/DirectPublishToPhoneNumber/Failure",
        &[
            sms_line(
                &cat,
                "FAILURE",
                "Phone number is opted out",
                "+442079460958",
            ),
            sms_line(
                "00000000-0000-4000-8000-000000000000",
                "FAILURE",
                "Unknown error attempting to reach phone",
                "+15555550123",
            ),
        ],
    );
    let out = env.invoke(failed).await.unwrap();
    assert_eq!(
        (out["applied"].clone(), out["dropped"].clone()),
        (json!(1), json!(1)),
        "{out}"
    );
    // Not an SMS log group: dropped, nothing read.
    let other = sms_logs(
        "/aws/lambda/someone",
        &[sms_line(&ann, "FAILURE", "x", "+1")],
    );
    assert_eq!(env.invoke(other).await.unwrap()["dropped"], 1);

    let get = common::http_get(
        "/org/org-demo/notificationMessage",
        &[("eventId", &event)],
        "org-demo",
    );
    let a = HttpAnswer::from(env.invoke(get).await.unwrap());
    let sms: Vec<&Value> = a.body["notificationMessages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "SMS")
        .collect();
    let status = |c: &str| {
        sms.iter()
            .find(|m| m["recipient"] == c)
            .map(|m| m["info"]["customFields"]["status"].clone())
            .unwrap()
    };
    assert_eq!(status("c-ann"), "DELIVERED");
    assert_eq!(status("c-cat"), "OPTED_OUT");
    let text = a.body.to_string();
    assert!(
        !text.contains("2079460958") && !text.contains("5550100"),
        "no number from the logs: {text}"
    );
    let e = env
        .items("org-demo", &format!("EVENT#{event}"))
        .await
        .remove(0);
    assert_eq!(e["info"]["deliverySummary"]["SMS"]["failed"], 1);
    assert_eq!(e["eventStatus"], "FAILED");
}

#[test]
fn every_ses_sample_in_events_reads_as_its_step() {
    use notify_offer_contacts::feedback::{Report, parse_feedback};
    use notify_offer_contacts::model::DeliveryOutcome::*;
    for (name, expected) in [
        ("sns-ses-send", None),
        ("sns-ses-open", None),
        ("sns-ses-delivery", Some(Some(Delivered))),
        ("sns-ses-delivery-delay", Some(Some(Delayed))),
        ("sns-ses-bounce", Some(Some(Bounced))),
        ("sns-ses-bounce-suppressed", Some(Some(Suppressed))),
        ("sns-ses-complaint", Some(Some(Complained))),
        ("sns-ses-reject", Some(Some(Rejected))),
        ("sns-ses-rendering-failure", Some(Some(Rejected))),
        ("sns-ses-click", Some(None)),
    ] {
        let e = common::read_json(format!("events/{name}.json"));
        let sns = &e["Records"][0]["Sns"];
        let parsed = parse_feedback(
            sns["MessageId"].as_str().unwrap(),
            sns["Message"].as_str().unwrap(),
        )
        .unwrap_or_else(|why| panic!("{name}: {why}"));
        let got = parsed.map(|f| match f.report {
            Report::Outcome(o, reason) => {
                assert!(!reason.contains('@'), "{name}: {reason}");
                Some(o)
            }
            Report::Click => None,
        });
        assert_eq!(got, expected, "{name}");
    }
    // The SMS sample: one SUCCESS line.
    let logs = common::read_json("events/cloudwatch-logs-sms.json");
    let lines =
        notify_offer_contacts::feedback::parse_sms_logs(logs["awslogs"]["data"].as_str().unwrap())
            .unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].as_ref().unwrap().outcome, Delivered);
}

#[tokio::test]
async fn a_report_for_a_pending_event_is_retried_and_a_loss_is_counted_once() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::new().await;
    let event = env.notified("org-demo", "offer-demo").await;
    let ann = ses_id(&env, "org-demo", &event, "c-ann").await;
    let set_status = |s: &'static str| {
        let env = &env;
        let event = event.clone();
        async move {
            env.dynamo()
                .update_item()
                .table_name(&env.table)
                .key("pk", AttributeValue::S("ORG#org-demo".into()))
                .key("sk", AttributeValue::S(format!("EVENT#{event}")))
                .update_expression("SET eventStatus = :s")
                .expression_attribute_values(":s", AttributeValue::S(s.into()))
                .send()
                .await
                .unwrap();
        }
    };
    // The run is still sending (PENDING): the ledger moves, the event waits,
    // and the invocation fails so that the report comes again.
    set_status("PENDING").await;
    let bounce = report("sns-ses-bounce", "org-demo", &event, "c-ann", &ann, "p1");
    let e = env.invoke(bounce.clone()).await.unwrap_err();
    assert_eq!(e.error_type, "InternalError", "{e:?}");
    set_status("DONE").await;
    // Delivered again (Lambda's retry), twice: counted once.
    env.invoke(bounce.clone()).await.unwrap();
    env.invoke(bounce).await.unwrap();
    let stored = env
        .items("org-demo", &format!("EVENT#{event}"))
        .await
        .remove(0);
    assert_eq!(stored["eventStatus"], "FAILED");
    assert_eq!(stored["info"]["deliverySummary"]["EMAIL"]["failed"], 1);
    assert_eq!(stored["info"]["deliverySummary"]["EMAIL"]["sent"], 1);
    assert_eq!(stored["info"]["lostDeliveries"], json!(["EMAIL#c-ann"]));
}

/// A report that arrives before the synchronous run wrote its delivery's
/// outcome (the send is only announced with its group) is retried, not
/// dropped: once the outcome is written, it applies.
#[tokio::test]
async fn a_report_for_a_send_still_only_announced_is_retried_until_its_outcome_is_written() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use notify_offer_contacts::model::{Delivery, DeliveryStatus, NotificationChannel, OrgId};
    use notify_offer_contacts::ports::EventStore;
    let env = TestEnv::new().await;
    let event = env.notified("org-demo", "offer-demo").await;
    let ann = ses_id(&env, "org-demo", &event, "c-ann").await;
    let sk = format!("DELIVERY#{event}#EMAIL#c-ann");
    let outcome = env.items("org-demo", &sk).await.remove(0);
    // As it stood while the send was in flight: announced, no entry of its own.
    env.dynamo()
        .delete_item()
        .table_name(&env.table)
        .key("pk", AttributeValue::S("ORG#org-demo".into()))
        .key("sk", AttributeValue::S(sk.clone()))
        .send()
        .await
        .unwrap();
    let store = notify_offer_contacts::aws::dynamo::DynamoStore::new(env.dynamo(), &env.table);
    let intent = Delivery::new(
        NotificationChannel::Email,
        Some("c-ann".into()),
        DeliveryStatus::Sending,
    );
    store
        .announce_sends(&OrgId::parse("org-demo").unwrap(), &event, &[intent], &[])
        .await
        .unwrap();

    let bounce = report("sns-ses-bounce", "org-demo", &event, "c-ann", &ann, "p1");
    let e = env.invoke(bounce.clone()).await.unwrap_err();
    assert_eq!(e.error_type, "InternalError", "retried: {e:?}");

    // The run writes the outcome; the report's next delivery applies.
    env.dynamo()
        .put_item()
        .table_name(&env.table)
        .set_item(Some(serde_dynamo::to_item(&outcome).unwrap()))
        .send()
        .await
        .unwrap();
    env.invoke(bounce).await.unwrap();
    let now = env.items("org-demo", &sk).await.remove(0);
    assert_eq!(now["outcome"], "BOUNCED", "{now}");
}
