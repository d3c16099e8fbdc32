//! The handler driven with the sample events of `events/`, against a real moto
//! server over the wire: every input kind and the main error cases.

mod common;

use common::{SENDER, TestEnv};
use serde_json::{Value, json};

#[tokio::test]
async fn http_api_notify_all_sends_email_sms_and_topic_then_stores_the_event() {
    let env = TestEnv::new().await;
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));

    let event = &answer.body;
    assert_eq!(event["action"], "NOTIFY_CONTACTS");
    assert_eq!(event["entityType"], "OFFER");
    assert_eq!(event["entityID"], "offer-demo");
    assert_eq!(event["organizationID"], "org-demo");
    assert_eq!(event["contactIds"], json!(["c-ann", "c-bob", "c-cat"]));
    assert_eq!(event["channels"], json!(["EMAIL", "SMS", "SNS"]));
    assert_eq!(event["eventStatus"], "DONE");
    assert_eq!(
        event["createdBy"],
        json!({"email": "sam@seller.example", "entityId": "user-42", "entityType": "USER", "name": "Sam Seller"})
    );
    assert_eq!(
        event["info"]["deliverySummary"],
        json!({
            "EMAIL": {"sent": 2, "skipped": 1, "failed": 0},
            "SMS": {"sent": 2, "skipped": 1, "failed": 0},
            "SNS": {"sent": 1, "skipped": 0, "failed": 0},
        })
    );

    // What moto says went out.
    let mut emails = env.moto.emails();
    emails.sort();
    assert_eq!(
        emails.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["ann@buyer.example.com", "bob@buyer.example.com"]
    );
    assert_eq!(
        emails[0].1,
        "Private offer on AWS Marketplace: Acme Analytics Enterprise, 3-year private offer"
    );
    assert!(
        emails[0].2.contains("Hello Ann Buyer,")
            && emails[0]
                .2
                .contains("https://aws.amazon.com/marketplace/ao/offer-demo")
    );
    let mut sms = env.moto.sms();
    sms.sort();
    assert_eq!(
        sms.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["+12065550100", "+442079460958"]
    );
    let topic = env.moto.topic_messages();
    assert_eq!(topic.len(), 1);
    let published: Value = serde_json::from_str(topic[0][1].as_str().unwrap()).unwrap();
    assert_eq!(published["eventID"], event["eventID"]);
    assert_eq!(
        topic[0][3]["organizationID"]["Value"], "org-demo",
        "{}",
        topic[0][3]
    );

    // The stored event is the answer, and the ledger names every delivery.
    let stored = env
        .items(
            "org-demo",
            &format!("EVENT#{}", event["eventID"].as_str().unwrap()),
        )
        .await;
    assert_eq!(stored.len(), 1);
    let mut stored = stored[0].clone();
    let obj = stored.as_object_mut().unwrap();
    assert_eq!(obj.remove("pk"), Some(json!("ORG#org-demo")));
    assert!(obj.remove("sk").is_some());
    // The read API's index key (EntityEvents), within the organisation.
    assert_eq!(
        obj.remove("entityIndex"),
        Some(json!("ORG#org-demo#OFFER#offer-demo"))
    );
    assert_eq!(&stored, event);
    let ledger = env
        .ledger("org-demo", event["eventID"].as_str().unwrap())
        .await;
    assert_eq!(ledger.len(), 7, "3 emails, 3 SMS, 1 topic");
    let skipped: Vec<(&str, &str)> = ledger
        .iter()
        .filter(|d| d["status"] == "SKIPPED")
        .map(|d| {
            (
                d["contactId"].as_str().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(skipped.contains(&("c-cat", "contact has no email address")));
    assert!(skipped.contains(&("c-bob", "contact has no phone number")));
}

#[tokio::test]
async fn rest_api_event_notifies_the_listed_contact_with_the_authorizer_identity() {
    let env = TestEnv::new().await;
    let answer = env.http("rest-api-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contactIds"], json!(["c-bob"]));
    assert_eq!(answer.body["createdBy"]["entityId"], "user-42");
    assert_eq!(env.moto.emails().len(), 1);
    assert_eq!(env.moto.sms().len(), 0, "Bob has no phone");
}

#[tokio::test]
async fn http_api_listed_duplicates_are_notified_once() {
    let env = TestEnv::new().await;
    let answer = env.http("http-api-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contactIds"], json!(["c-ann", "c-cat"]));
    assert_eq!(env.moto.emails().len(), 1, "Ann once; Cat has no email");
    assert_eq!(env.moto.sms().len(), 2);
}

#[tokio::test]
async fn jwt_claims_fill_created_by() {
    let env = TestEnv::new().await;
    let answer = env.http("http-api-jwt-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["createdBy"],
        json!({"entityId": "client-7", "entityType": "API_CLIENT", "name": "CRM sync"})
    );
}

#[tokio::test]
async fn alb_event_with_a_base64_body_is_served() {
    let env = TestEnv::new().await;
    let answer = env.http("alb-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contactIds"], json!(["c-ann"]));
    assert_eq!(answer.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn function_url_event_routes_by_its_path() {
    let env = TestEnv::new().await;
    let answer = env.http("function-url-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contactIds"], json!(["c-cat"]));
    assert_eq!(env.moto.sms().len(), 1);
}

async fn assert_refused(env: &TestEnv, file: &str, status: u16, message: &str) {
    let answer = env.http(file).await;
    assert_eq!(answer.status, status, "{file}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{file}"
    );
    assert_eq!(answer.message(), message, "{file}");
    assert!(
        env.moto.emails().is_empty()
            && env.moto.sms().is_empty()
            && env.moto.topic_messages().is_empty(),
        "{file}: nothing sent"
    );
    assert!(
        env.items("org-demo", "EVENT#").await.is_empty(),
        "{file}: nothing stored"
    );
}

#[tokio::test]
async fn bad_requests_get_a_sentence_and_nothing_is_sent() {
    let env = TestEnv::new().await;
    assert_refused(&env, "http-api-bad-body-object.json", 400,
        "the body must be a JSON array of contact ID strings, like [\"c1\",\"c2\"], or empty; it is an object").await;
    assert_refused(
        &env,
        "http-api-bad-body-json.json",
        400,
        "the body is not valid JSON: EOF while parsing a value at line 1 column 9",
    )
    .await;
    assert_refused(
        &env,
        "http-api-unknown-contact.json",
        400,
        "contact c-zed is not on offer offer-demo",
    )
    .await;
}

#[tokio::test]
async fn unknown_offer_is_404_other_org_is_403_other_method_is_405() {
    let env = TestEnv::new().await;
    assert_refused(
        &env,
        "http-api-unknown-offer.json",
        404,
        "offer offer-missing was not found",
    )
    .await;
    assert_refused(
        &env,
        "http-api-other-org.json",
        403,
        "these credentials do not grant access to organization org-demo",
    )
    .await;
    assert_refused(
        &env,
        "http-api-get-method.json",
        405,
        "method GET is not allowed on /org/{orgId}/offer/{offerId}/notifyContacts; use POST",
    )
    .await;
    assert_eq!(
        env.http("http-api-get-method.json").await.header("allow"),
        Some("POST")
    );
}

#[tokio::test]
async fn an_unknown_route_is_404() {
    let env = TestEnv::new().await;
    let mut event = common::read_json("events/http-api-notify-all.json");
    event["rawPath"] = json!("/org/org-demo/offers");
    event["requestContext"]["http"]["path"] = json!("/org/org-demo/offers");
    event.as_object_mut().unwrap().remove("pathParameters");
    let answer = common::HttpAnswer::from(env.invoke(event).await.unwrap());
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.message(),
        "no such route; the routes are POST /org/{orgId}/offer/{offerId}/notifyContacts, GET /org/{orgId}/notificationEvent[/{entityType}/{entityId}] and GET /org/{orgId}/notificationMessage[/{id}]"
    );
}

#[tokio::test]
async fn direct_invocation_answers_with_the_event_or_a_typed_error() {
    let env = TestEnv::new().await;
    let event = env.invoke_file("direct-notify-all.json").await.unwrap();
    assert_eq!(event["eventStatus"], "DONE");
    assert_eq!(event["createdBy"]["name"], "renewals-lambda");
    assert_eq!(env.moto.emails().len(), 2);

    let err = env
        .invoke_file("direct-unknown-contact.json")
        .await
        .unwrap_err();
    assert_eq!(
        (err.error_type.as_str(), err.error_message.as_str()),
        ("BadRequest", "contact c-zed is not on offer offer-demo")
    );
    let err = env
        .invoke_file("direct-unknown-offer.json")
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "NotFound");
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["ann@buyer.example.com"]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "BadRequest");
    assert_eq!(
        err.error_message,
        "contact ID at position 0: contact ID may contain only letters, digits, '-' and '_'",
        "the refused value is not repeated (errors are logged)"
    );
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": [1]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "BadRequest");
    assert!(
        err.error_message
            .starts_with("the direct invocation must be"),
        "{}",
        err.error_message
    );
    let err = env.invoke(json!({"Records": []})).await.unwrap_err();
    assert_eq!(err.error_type, "BadRequest");
    assert!(
        err.error_message.starts_with("unsupported event"),
        "{}",
        err.error_message
    );
}

#[tokio::test]
async fn another_organisations_contact_cannot_be_notified_by_any_input() {
    let env = TestEnv::new().await;
    // org-other has an offer with the same ID and the contact c-zed.
    let answer = env.http("http-api-unknown-contact.json").await;
    assert_eq!(answer.status, 400);
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["c-zed"]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "BadRequest");
    assert!(env.moto.emails().iter().all(|e| !e.0.contains("elsewhere")));
}

#[tokio::test]
async fn an_unverified_sender_is_recorded_as_failed_per_recipient() {
    let env = TestEnv::with(|c| {
        c.sender_email =
            notify_offer_contacts::model::EmailAddress::parse("nobody@unverified.example.com")
                .unwrap()
    })
    .await;
    let answer = env.http("rest-api-notify-listed.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["eventStatus"], "FAILED");
    let deliveries = answer.body["info"]["deliveries"].as_array().unwrap();
    let d = deliveries.iter().find(|d| d["channel"] == "EMAIL").unwrap();
    assert_eq!(d["status"], "FAILED");
    assert!(
        d["reason"].as_str().unwrap().starts_with("MessageRejected"),
        "{d}"
    );
    assert!(env.moto.emails().is_empty());
    let _ = SENDER;
}

#[tokio::test]
async fn a_storage_failure_is_a_500_naming_the_request_id_and_nothing_else() {
    let env = TestEnv::with(|c| c.table_name = "no-such-table".into()).await;
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.message(),
        "internal error; quote request id test-request-1 when reporting it"
    );
    assert!(env.moto.emails().is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_a_400() {
    // Function URLs and API Gateway base64-encode a body that is not text.
    let env = TestEnv::new().await;
    let mut event = common::read_json("events/http-api-notify-all.json");
    event["body"] = json!("/xDA"); // the bytes ff 10 c0
    event["isBase64Encoded"] = json!(true);
    let answer = common::HttpAnswer::from(env.invoke(event).await.unwrap());
    assert_eq!(answer.status, 400);
    assert_eq!(answer.message(), "the body is not valid UTF-8 text");
    assert!(env.moto.emails().is_empty());
}

#[tokio::test]
async fn an_eventbridge_event_notifies_once_even_when_redelivered() {
    let env = TestEnv::new().await;
    let first = env
        .invoke_file("eventbridge-notify-listed.json")
        .await
        .unwrap();
    assert_eq!(first["contactIds"], json!(["c-bob"]));
    assert_eq!(first["createdBy"]["name"], "renewals");
    // EventBridge delivers at least once: the same event again sends nothing.
    let again = env
        .invoke_file("eventbridge-notify-listed.json")
        .await
        .unwrap();
    assert_eq!(again["eventID"], first["eventID"]);
    assert_eq!(env.moto.emails().len(), 1);
    let record = &env.items("org-demo", "IDEMPOTENCY#").await[0];
    assert_eq!(
        record["sk"],
        "IDEMPOTENCY#6a7e8feb-b491-4cf7-a9f1-bf3703467718"
    );
    // A detail that is not a notification request is refused as a bad request.
    let mut bad = common::read_json("events/eventbridge-notify-listed.json");
    bad["detail"] = json!({"orgId": "org-demo"});
    assert_eq!(env.invoke(bad).await.unwrap_err().error_type, "BadRequest");
}
