//! Hostile input through the handler, against moto: every request of
//! `tests/fixtures/hostile-requests.json` is a 400 with its sentence and
//! nothing sent or stored; hostile data already stored (an offer name with
//! CR/LF or script, a `javascript:` link) reaches the buyer inert.

mod common;

use common::TestEnv;
use serde_json::{Value, json};

#[tokio::test]
async fn every_hostile_request_is_a_400_and_nothing_is_sent_or_stored() {
    let env = TestEnv::new().await;
    let corpus = common::read_json("tests/fixtures/hostile-requests.json");
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut event = common::read_json("events/http-api-notify-all.json");
        if let Some(body) = case["body"].as_str() {
            event["body"] = json!(body);
        }
        if let Some(b64) = case["bodyBase64"].as_str() {
            event["body"] = json!(b64);
            event["isBase64Encoded"] = json!(true);
        }
        for (field, param) in [("orgId", "orgId"), ("offerId", "offerId")] {
            if let Some(v) = case[field].as_str() {
                event["pathParameters"][param] = json!(v);
            }
        }
        if let Some(k) = case["idempotencyKey"].as_str() {
            event["headers"]["idempotency-key"] = json!(k);
        }
        // The authorizer's org must not mask the path check.
        event["requestContext"]["authorizer"]["lambda"]["organizationID"] =
            event["pathParameters"]["orgId"].clone();
        let answer = common::HttpAnswer::from(
            env.invoke(event)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}")),
        );
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        let message = answer.message();
        match (case["message"].as_str(), case["contains"].as_str()) {
            (Some(m), _) => assert_eq!(message, m, "{name}"),
            (_, Some(c)) => assert!(message.contains(c), "{name}: {message}"),
            _ => panic!("{name}: the corpus row names no expected message"),
        }
        assert!(message.len() < 300, "{name}: the sentence stays short");
    }
    assert!(
        env.moto.emails().is_empty()
            && env.moto.sms().is_empty()
            && env.moto.topic_messages().is_empty()
    );
    assert!(env.items("org-demo", "EVENT#").await.is_empty());
}

#[tokio::test]
async fn hostile_offer_data_reaches_the_buyer_inert() {
    let env = TestEnv::new().await;
    let offer = json!({"pk": "ORG#org-demo", "sk": "OFFER#offer-evil", "id": "offer-evil", "organizationID": "org-demo",
        "name": "Deal\r\nBcc: everyone@evil.example\r\n\r\n<script>alert(document.cookie)</script><img src=x onerror=alert(1)>",
        "status": "PENDING_ACCEPTANCE", "partner": "AWS", "contactIds": ["c-ann"],
        "info": {"privateOfferUrl": "javascript:alert(1)"}});
    let settings =
        json!({"pk": "ORG#org-demo", "sk": "NOTIFICATION_CONFIG", "channels": ["EMAIL"]});
    common::seed(&env.sdk, &env.table, &json!({"items": [offer, settings]})).await;
    let mut event = common::read_json("events/http-api-notify-all.json");
    event["pathParameters"]["offerId"] = json!("offer-evil");
    let answer = common::HttpAnswer::from(env.invoke(event).await.unwrap());
    assert_eq!(answer.status, 200, "{}", answer.body);

    let emails = env.moto.emails();
    assert_eq!(emails.len(), 1);
    let (to, subject, html) = &emails[0];
    assert_eq!(
        to, "ann@buyer.example.com",
        "the Bcc in the name added no recipient"
    );
    assert!(
        !subject.contains('\r') && !subject.contains('\n'),
        "{subject:?}"
    );
    let lower = html.to_lowercase();
    assert!(
        !lower.contains("<script") && !lower.contains("<img") && !lower.contains("javascript:"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(document.cookie)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("Sign in to the marketplace"),
        "no link at all rather than a javascript: one"
    );
    let stored: Value = env.items("org-demo", "EVENT#").await[0].clone();
    assert!(!stored["title"].as_str().unwrap().contains('\n'));
}
