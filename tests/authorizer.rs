//! Who may ask, at the settings the stack deploys with: every HTTP request
//! must carry an authorizer that names the caller's organisation in the
//! configured claim (fail closed); a run without one, and direct or
//! EventBridge invocations, only where the configuration says so. Each test:
//! the handler fed a sample event of `events/`, moto behind it, and a check
//! that a refusal read and sent nothing.

mod common;

use common::TestEnv;
use notify_offer_contacts::config::Access;

/// The API function as the stack configures it: no input trusted without an
/// authorizer, EventBridge only from the listed source.
async fn deployed(org_claim: &str) -> TestEnv {
    let claim = org_claim.to_owned();
    TestEnv::with(move |c| {
        c.access = Access {
            org_claim: claim,
            event_sources: vec![common::EVENT_SOURCE.into()],
            direct_invocations: true,
            ..Access::default()
        }
    })
    .await
}

async fn nothing_happened(env: &TestEnv) {
    assert!(env.moto.emails().is_empty(), "nothing was sent");
    assert!(env.moto.sms().is_empty());
    assert!(
        env.items("org-demo", "EVENT#").await.is_empty(),
        "no event was stored"
    );
}

#[tokio::test]
async fn a_token_without_the_organization_claim_is_refused_and_nothing_is_read() {
    let env = deployed("organizationID").await;
    // A Cognito access token: sub, client_id, scope; no organisation.
    let answer = env.http("http-api-jwt-no-org-claim.json").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.message().contains("name no organization"));
    assert!(answer.message().contains("organizationID"));
    nothing_happened(&env).await;
}

#[tokio::test]
async fn a_rest_authorizer_with_only_a_principal_is_refused() {
    let env = deployed("organizationID").await;
    let answer = env.http("rest-api-principal-only.json").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    nothing_happened(&env).await;
}

#[tokio::test]
async fn the_claim_name_is_configurable_for_a_cognito_id_token() {
    // custom:organizationID, as a Cognito user pool's custom attribute.
    let env = deployed("custom:organizationID").await;
    let answer = env.http("http-api-cognito-id-token.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["createdBy"]["email"], "sam@seller.example");
    assert_eq!(env.moto.emails().len(), 1);
    // The same token where the default claim name is configured: refused.
    let env = deployed("organizationID").await;
    assert_eq!(env.http("http-api-cognito-id-token.json").await.status, 403);
    nothing_happened(&env).await;
}

#[tokio::test]
async fn a_request_with_no_authorizer_is_refused_unless_the_configuration_allows_it() {
    let env = deployed("organizationID").await;
    for sample in ["function-url-notify-listed.json", "alb-notify-listed.json"] {
        let answer = env.http(sample).await;
        assert_eq!(answer.status, 403, "{sample}: {}", answer.body);
        assert!(answer.message().contains("authorized"), "{sample}");
    }
    nothing_happened(&env).await;
    // A local run (cargo lambda watch, sam local) says so explicitly.
    let local = TestEnv::with(|c| c.access = Access::local()).await;
    assert_eq!(
        local.http("function-url-notify-listed.json").await.status,
        200
    );
}

#[tokio::test]
async fn direct_invocations_are_served_only_where_the_configuration_says_so() {
    let env = TestEnv::with(|c| c.access = Access::default()).await;
    let refused = env
        .invoke_file("direct-notify-listed.json")
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "Forbidden");
    nothing_happened(&env).await;
    let allowed = deployed("organizationID").await;
    assert!(
        allowed
            .invoke_file("direct-notify-listed.json")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn eventbridge_events_are_served_only_from_the_listed_sources_and_checked_strictly() {
    let env = deployed("organizationID").await;
    let refused = env
        .invoke_file("eventbridge-unknown-source.json")
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "Forbidden");
    nothing_happened(&env).await;

    // A detail with a key the contract does not have: refused, not ignored.
    let mut odd = common::read_json("events/eventbridge-notify-listed.json");
    odd["detail"]["contactIDs"] = serde_json::json!(["c-ann"]);
    let refused = env.invoke(odd).await.unwrap_err();
    assert_eq!(refused.error_type, "BadRequest");
    assert!(!refused.error_message.contains("c-ann"), "no value echoed");
    nothing_happened(&env).await;

    let answer = env
        .invoke_file("eventbridge-notify-listed.json")
        .await
        .unwrap();
    assert_eq!(answer["eventStatus"], "DONE", "{answer}");
}

#[tokio::test]
async fn a_function_takes_only_the_kinds_of_event_its_triggers_send() {
    // The worker, as the stack configures it: queue messages and the schedule.
    let env = TestEnv::with(|c| {
        c.access = Access {
            inputs: vec![
                notify_offer_contacts::config::InputKind::Sqs,
                notify_offer_contacts::config::InputKind::Schedule,
            ],
            ..Access::default()
        }
    })
    .await;
    // An HTTP-shaped event whose claims name the org, sent straight to the
    // worker by someone IAM lets invoke it: refused, not served.
    let refused = env
        .invoke_file("http-api-jwt-notify-listed.json")
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "Forbidden");
    let refused = env
        .invoke_file("direct-notify-listed.json")
        .await
        .unwrap_err();
    assert_eq!(refused.error_type, "Forbidden");
    nothing_happened(&env).await;
    assert!(env.invoke_file("scheduled-sweep.json").await.is_ok());
}
