//! No organisation reaches another's offer, contacts, settings or events, by
//! any input kind: REST (v1) and HTTP API (v2) with Lambda and JWT
//! authorizers, ALB, Function URL, and the direct invocation.

mod common;

use common::{HttpAnswer, TestEnv};
use serde_json::{Value, json};

/// The same request in every input kind's shape, aimed at `org`/`offer` with `body`.
fn every_kind(org: &str, offer: &str, body: &str) -> Vec<(&'static str, Value)> {
    let path = format!("/org/{org}/offer/{offer}/notifyContacts");
    let mut out = Vec::new();
    for (kind, file) in [
        ("http-api", "http-api-notify-all.json"),
        ("http-api-jwt", "http-api-jwt-notify-listed.json"),
    ] {
        let mut e = common::read_json(format!("events/{file}"));
        e["pathParameters"] = json!({"orgId": org, "offerId": offer});
        e["rawPath"] = json!(path);
        e["requestContext"]["http"]["path"] = json!(path);
        e["body"] = json!(body);
        out.push((kind, e));
    }
    let mut rest = common::read_json("events/rest-api-notify-listed.json");
    rest["pathParameters"] = json!({"orgId": org, "offerId": offer});
    rest["path"] = json!(path);
    rest["body"] = json!(body);
    out.push(("rest-api", rest));
    let mut alb = common::read_json("events/alb-notify-listed.json");
    alb["path"] = json!(path);
    alb["body"] = json!(body);
    alb["isBase64Encoded"] = json!(false);
    out.push(("alb", alb));
    let mut url = common::read_json("events/function-url-notify-listed.json");
    url["rawPath"] = json!(path);
    url["requestContext"]["http"]["path"] = json!(path);
    url["body"] = json!(body);
    out.push(("function-url", url));
    out
}

/// The authorizer contexts of the kinds that carry one, set to `caller_org`.
fn as_caller(kind: &str, event: &mut Value, caller_org: &str) {
    match kind {
        "http-api" => {
            event["requestContext"]["authorizer"]["lambda"]["organizationID"] = json!(caller_org)
        }
        "http-api-jwt" => {
            event["requestContext"]["authorizer"]["jwt"]["claims"]["organizationID"] =
                json!(caller_org)
        }
        "rest-api" => event["requestContext"]["authorizer"]["organizationID"] = json!(caller_org),
        _ => {}
    }
}

fn nothing_reached_org_other(env: &TestEnv) {
    assert!(
        env.moto.emails().iter().all(|e| !e.0.contains("elsewhere")),
        "{:?}",
        env.moto.emails()
    );
    assert!(
        env.moto
            .topic_messages()
            .iter()
            .all(|m| !m.to_string().contains("org-other"))
    );
}

#[tokio::test]
async fn another_organisations_offer_is_not_found_by_any_input_kind() {
    let env = TestEnv::new().await;
    for (kind, event) in every_kind("org-demo", "offer-other-only", "") {
        let answer = HttpAnswer::from(env.invoke(event).await.unwrap());
        assert_eq!(
            (kind, answer.status),
            (kind, 404),
            "{kind}: {}",
            answer.body
        );
        assert_eq!(
            answer.message(),
            "offer offer-other-only was not found",
            "{kind}"
        );
    }
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-other-only"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "NotFound");
    nothing_reached_org_other(&env);
    assert!(env.items("org-demo", "EVENT#").await.is_empty());
}

#[tokio::test]
async fn another_organisations_contact_is_refused_by_any_input_kind() {
    let env = TestEnv::new().await;
    for (kind, event) in every_kind("org-demo", "offer-demo", "[\"c-zed\"]") {
        let answer = HttpAnswer::from(env.invoke(event).await.unwrap());
        assert_eq!(
            (kind, answer.status),
            (kind, 400),
            "{kind}: {}",
            answer.body
        );
        assert_eq!(
            answer.message(),
            "contact c-zed is not on offer offer-demo",
            "{kind}"
        );
    }
    let err = env
        .invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["c-zed"]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "BadRequest");
    nothing_reached_org_other(&env);
}

#[tokio::test]
async fn a_caller_of_another_organisation_is_403_by_every_authorizer_kind() {
    let env = TestEnv::new().await;
    for (kind, mut event) in every_kind("org-other", "offer-demo", "") {
        if !["http-api", "http-api-jwt", "rest-api"].contains(&kind) {
            continue;
        }
        as_caller(kind, &mut event, "org-demo");
        let answer = HttpAnswer::from(env.invoke(event).await.unwrap());
        assert_eq!(
            (kind, answer.status),
            (kind, 403),
            "{kind}: {}",
            answer.body
        );
        assert_eq!(
            answer.message(),
            "these credentials do not grant access to organization org-other"
        );
    }
    assert!(env.moto.emails().is_empty() && env.moto.sms().is_empty());
    assert!(
        env.items("org-other", "EVENT#").await.is_empty(),
        "nothing was written for org-other"
    );
}

#[tokio::test]
async fn one_organisations_settings_never_apply_to_another() {
    let env = TestEnv::new().await;
    // org-other's settings name a secret topic and cc c-zed; org-demo's do not.
    let answer = env.http("http-api-notify-all.json").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.get("ccContactIds").is_none(), "{}", answer.body);
    let topics: Vec<String> = env
        .moto
        .topic_messages()
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(topics.len(), 1);
    nothing_reached_org_other(&env);
    assert_eq!(answer.body["channels"], json!(["EMAIL", "SMS", "SNS"]));
}

#[tokio::test]
async fn the_same_idempotency_key_in_two_organisations_is_two_requests() {
    let env = TestEnv::new().await;
    let key = "shared-key-1";
    let demo = env.invoke(json!({"orgId": "org-demo", "offerId": "offer-demo", "contactIds": ["c-ann"], "idempotencyKey": key})).await.unwrap();
    let other = env
        .invoke(json!({"orgId": "org-other", "offerId": "offer-other-only", "idempotencyKey": key}))
        .await
        .unwrap();
    assert_ne!(
        demo["eventID"], other["eventID"],
        "org-other did not get org-demo's stored event"
    );
    assert_eq!(other["organizationID"], "org-other");
    assert_eq!(env.items("org-demo", "EVENT#").await.len(), 1);
    assert_eq!(env.items("org-other", "EVENT#").await.len(), 1);
    // And org-demo's event is not reachable by replaying with org-demo's key from org-other.
    let again = env
        .invoke(json!({"orgId": "org-other", "offerId": "offer-other-only", "idempotencyKey": key}))
        .await
        .unwrap();
    assert_eq!(again["eventID"], other["eventID"]);
}
