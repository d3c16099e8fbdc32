//! SLACK, MICROSOFT_TEAMS and WEBHOOK over the wire: the function as
//! deployed (`app`), its targets' secrets in Secrets Manager (moto), its real
//! HTTPS poster reaching local receivers only through the test-only
//! allowance; and the SSRF guard's refusals, through the same poster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::receiver::{Answer, Receiver};
use common::{TestEnv, read_json, seed};
use notify_offer_contacts::channels::guard::{TestOnlyAllowance, check_url};
use notify_offer_contacts::channels::web::{Poster, WebPost};
use notify_offer_contacts::channels::{slack, teams};
use notify_offer_contacts::outbound::HttpsPoster;
use serde_json::Value;

const PREFIX: &str = "notify/targets/";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

struct Targets {
    slack: Receiver,
    teams: Receiver,
    hook: Receiver,
}

async fn chat_env() -> (TestEnv, Targets) {
    let t = Targets {
        slack: Receiver::start().await,
        teams: Receiver::start().await,
        hook: Receiver::start().await,
    };
    let allowed = vec![t.slack.target(), t.teams.target(), t.hook.target()];
    let env = TestEnv::with(|c| {
        c.secret_prefix = PREFIX.into();
        c.test_only_local_targets = allowed;
    })
    .await;
    seed(
        &env.sdk,
        &env.table,
        &read_json("tests/fixtures/chat-org.json"),
    )
    .await;
    let sm = aws_sdk_secretsmanager::Client::new(&env.sdk);
    for (name, value) in [
        (
            "sales-alerts",
            t.slack.url("/services/T0CHAT/B0CHAT/slacksecrettoken"),
        ),
        (
            "teams-deals",
            t.teams
                .url("/workflows/w1/triggers/manual/paths/invoke?sig=teamssecretsig"),
        ),
        (
            "erp",
            serde_json::json!({"url": t.hook.url("/hooks/notify"), "signingSecret": WHSEC})
                .to_string(),
        ),
    ] {
        sm.create_secret()
            .name(format!("{PREFIX}org-chat/{name}"))
            .secret_string(value)
            .send()
            .await
            .expect("secret");
    }
    (env, t)
}

/// Standard Webhooks verification from the specification, with aws-lc-rs.
fn verify(a: &common::receiver::Arrived) -> String {
    let id = a.header("webhook-id").unwrap();
    let ts = a.header("webhook-timestamp").unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{id}.{ts}.{}", a.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    );
    assert!(
        a.header("webhook-signature")
            .unwrap()
            .split(' ')
            .any(|s| s == expected),
        "the signature does not verify"
    );
    id.to_owned()
}

fn deliveries(answer: &Value) -> Vec<Value> {
    answer["info"]["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn status_of(answer: &Value, channel: &str) -> String {
    deliveries(answer)
        .iter()
        .find(|d| d["channel"] == channel)
        .map(|d| d["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_slack_message_a_teams_card_and_a_signed_webhook_arrive() {
    let (env, t) = chat_env().await;
    t.teams.then(Answer::status(202, ""));
    let answer = env
        .invoke_file("direct-notify-chat-org.json")
        .await
        .unwrap();
    assert_eq!(answer["eventStatus"], "DONE", "{answer:#}");
    assert_eq!(status_of(&answer, "EMAIL"), "SENT");
    assert_eq!(status_of(&answer, "SLACK"), "SENT");
    assert_eq!(status_of(&answer, "MICROSOFT_TEAMS"), "SENT");

    let slack = t.slack.arrived();
    assert_eq!(slack.len(), 1);
    assert_eq!(slack[0].path, "/services/T0CHAT/B0CHAT/slacksecrettoken");
    assert_eq!(slack[0].header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&slack[0].body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("Globex Data Platform")
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert!(blocks.len() <= slack::MAX_BLOCKS);
    assert!(blocks.iter().any(|b| b["type"] == "actions"
        && b["elements"][0]["url"] == "https://aws.amazon.com/marketplace/ao/offer-chat"));

    let teams = t.teams.arrived();
    assert_eq!(teams.len(), 1);
    assert!(teams[0].body.len() < teams::MAX_BODY_BYTES);
    let card: Value = serde_json::from_str(&teams[0].body).unwrap();
    assert_eq!(
        card["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["attachments"][0]["content"]["version"], "1.4");

    // The webhook: no work queue here, so one attempt in line, after the close.
    let hook = t.hook.arrived();
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0].path, "/hooks/notify");
    let id = verify(&hook[0]);
    assert_eq!(id, format!("msg_{}", answer["eventID"].as_str().unwrap()));
    let sent: Value = serde_json::from_str(&hook[0].body).unwrap();
    assert_eq!(sent["eventStatus"], "DONE");
    assert_eq!(sent["eventID"], answer["eventID"]);

    // Each target's ledger entry, the webhook's with its attempt.
    let event_id = answer["eventID"].as_str().unwrap();
    let items = env.ledger("org-chat", event_id).await;
    let webhook = items
        .iter()
        .find(|i| i["channel"] == "WEBHOOK")
        .expect("webhook entry");
    assert_eq!(webhook["status"], "SENT");
    assert_eq!(webhook["attempts"], 1);
    let teams_entry = items
        .iter()
        .find(|i| i["channel"] == "MICROSOFT_TEAMS")
        .unwrap();
    assert!(
        teams_entry["reason"]
            .as_str()
            .unwrap()
            .contains("not a confirmation")
    );

    // No target URL or secret in the stored event.
    let stored = serde_json::to_string(&env.items("org-chat", "EVENT#").await).unwrap();
    for secret in ["slacksecrettoken", "teamssecretsig", "C2FVsBQIhrscChlQIMV"] {
        assert!(!stored.contains(secret), "{secret} stored");
        assert!(!answer.to_string().contains(secret), "{secret} answered");
    }
}

#[tokio::test]
async fn an_archived_slack_channel_disables_the_target_in_the_stored_settings() {
    let (env, t) = chat_env().await;
    t.slack.then(Answer::status(410, "channel_is_archived"));
    let first = env
        .invoke_file("direct-notify-chat-org.json")
        .await
        .unwrap();
    assert_eq!(status_of(&first, "SLACK"), "FAILED");
    let settings = env.items("org-chat", "NOTIFICATION_CONFIG").await;
    let disabled = &settings[0]["slack"]["disabled"];
    assert!(
        disabled["reason"]
            .as_str()
            .unwrap()
            .contains("channel_is_archived"),
        "{settings:?}"
    );
    assert_eq!(settings[0]["slack"]["secret"], "sales-alerts");

    let second = env
        .invoke_file("direct-notify-chat-org.json")
        .await
        .unwrap();
    assert_eq!(status_of(&second, "SLACK"), "SKIPPED");
    assert_eq!(t.slack.arrived().len(), 1);
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_a_missing_secret_is_named() {
    let (env, t) = chat_env().await;
    t.hook.then(Answer {
        headers: vec![("location", t.slack.url("/elsewhere"))],
        ..Answer::status(307, "")
    });
    env.invoke_file("direct-notify-chat-org.json")
        .await
        .unwrap();
    assert_eq!(t.hook.arrived().len(), 1);
    assert_eq!(t.slack.arrived().len(), 1, "only the Slack message itself");
    let items = env.items("org-chat", "DELIVERY#").await;
    let w = items.iter().find(|i| i["channel"] == "WEBHOOK").unwrap();
    assert_eq!(w["status"], "FAILED");
    assert!(
        w["reason"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed")
    );

    aws_sdk_secretsmanager::Client::new(&env.sdk)
        .delete_secret()
        .secret_id(format!("{PREFIX}org-chat/teams-deals"))
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    // The cache still holds it for its TTL; a fresh instance does not.
    let fresh = notify_offer_contacts::app(&env.sdk, &env.config);
    let answer = notify_offer_contacts::event::handle(
        &fresh,
        &env.edge,
        lambda_runtime::LambdaEvent::new(
            read_json("events/direct-notify-chat-org.json"),
            lambda_runtime::Context::default(),
        ),
    )
    .await
    .unwrap();
    let teams = deliveries(&answer)
        .into_iter()
        .find(|d| d["channel"] == "MICROSOFT_TEAMS")
        .unwrap();
    assert_eq!(teams["status"], "FAILED");
    assert!(
        teams["reason"]
            .as_str()
            .unwrap()
            .contains("'teams-deals' does not exist")
    );
}

/// Every hostile URL is refused before anything is sent, by the real poster
/// (resolution included); the table is printed for the record.
#[tokio::test]
async fn hostile_urls_are_refused_and_nothing_reaches_a_local_receiver() {
    let r = Receiver::start().await;
    let port = r.port;
    let allowance = TestOnlyAllowance {
        local_targets: vec![format!("127.0.0.1:{port}")],
    };
    let poster = HttpsPoster::from_env(allowance.clone());
    let hostile: Vec<(String, Option<&[&str]>)> = vec![
        (format!("https://localhost:{port}/hook"), None),
        (format!("http://localhost:{port}/hook"), None),
        ("http://hooks.seller.example/hook".into(), None),
        ("https://127.0.0.1/hook".into(), None),
        ("https://2130706433/hook".into(), None),
        ("https://0x7f000001/hook".into(), None),
        ("https://0177.0.0.1/hook".into(), None),
        ("https://127.1/hook".into(), None),
        ("https://[::1]/hook".into(), None),
        ("https://[::ffff:127.0.0.1]/hook".into(), None),
        ("https://169.254.169.254/latest/meta-data/".into(), None),
        ("https://100.64.0.1/hook".into(), None),
        ("https://10.0.0.5/hook".into(), None),
        ("https://[fd00::1]/hook".into(), None),
        ("https://[fe80::1]/hook".into(), None),
        (
            "https://user:pass@hooks.slack.com/services/x".into(),
            Some(slack::HOSTS),
        ),
        (
            "https://hooks.slack.com.evil.example/services/x".into(),
            Some(slack::HOSTS),
        ),
        (
            "https://evil.example/workflows/x".into(),
            Some(teams::HOSTS),
        ),
        (
            "https://logic.azure.com.evil.example/x".into(),
            Some(teams::HOSTS),
        ),
        ("file:///etc/passwd".into(), None),
        ("gopher://hooks.seller.example/".into(), None),
    ];
    println!("| URL | answer |\n|---|---|");
    for (url, hosts) in &hostile {
        let answer = match check_url(url, *hosts, &allowance) {
            Err(why) => why.to_string(),
            Ok(target) => {
                let request = WebPost {
                    url: target,
                    headers: vec![],
                    body: Arc::from("{}"),
                    timeout: Duration::from_secs(3),
                };
                match poster.post(&request).await {
                    Ok(a) => panic!("{url} was sent: {}", a.status),
                    Err(e) => {
                        assert!(e.permanent, "{url}: {e}");
                        assert!(
                            !e.to_string().contains("localhost"),
                            "the refusal quotes the URL"
                        );
                        e.to_string()
                    }
                }
            }
        };
        println!("| `{url}` | {answer} |");
    }
    assert!(r.arrived().is_empty(), "a hostile URL reached the receiver");

    // The allowance itself works (the same receiver by its allowed address).
    let ok = poster
        .post(&WebPost {
            url: check_url(&r.url("/hook"), None, &allowance).unwrap(),
            headers: vec![],
            body: Arc::from("{}"),
            timeout: Duration::from_secs(3),
        })
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(r.arrived().len(), 1);
}

#[tokio::test]
async fn a_slow_target_times_out_as_an_unknown_outcome() {
    let r = Receiver::start().await;
    r.then(Answer {
        delay: Duration::from_secs(3),
        ..Answer::status(200, "ok")
    });
    let allowance = TestOnlyAllowance {
        local_targets: vec![r.target()],
    };
    let poster = HttpsPoster::from_env(allowance.clone());
    let e = poster
        .post(&WebPost {
            url: check_url(&r.url("/slow"), None, &allowance).unwrap(),
            headers: vec![],
            body: Arc::from("{}"),
            timeout: Duration::from_millis(500),
        })
        .await
        .unwrap_err();
    assert!(e.outcome_unknown, "{e}");
    // Nothing listens: no connection, a transient failure (retried for a webhook).
    let closed = common::free_port();
    let allowance = TestOnlyAllowance {
        local_targets: vec![format!("127.0.0.1:{closed}")],
    };
    let e = HttpsPoster::from_env(allowance.clone())
        .post(&WebPost {
            url: check_url(&format!("http://127.0.0.1:{closed}/x"), None, &allowance).unwrap(),
            headers: vec![],
            body: Arc::from("{}"),
            timeout: Duration::from_secs(2),
        })
        .await
        .unwrap_err();
    assert!(!e.permanent && !e.outcome_unknown, "{e}");
}

/// At TRACE, through the function's own log filter (the SDK and hyper capped
/// at DEBUG: their TRACE lines print raw bodies), no URL or signing key of a
/// target, and no address, reaches a log line.
#[tokio::test]
async fn no_target_secret_or_address_reaches_the_logs_at_trace() {
    let logs = common::LogSink::default();
    use tracing_subscriber::layer::SubscriberExt;
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(notify_offer_contacts::telemetry::filter("trace"))
            .with(notify_offer_contacts::telemetry::caps())
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(logs.clone()),
            ),
    );
    let (env, t) = chat_env().await;
    t.slack.then(Answer::status(404, "channel_not_found"));
    env.invoke_file("direct-notify-chat-org.json")
        .await
        .unwrap();
    assert_eq!(t.hook.arrived().len(), 1);
    let text = logs.text();
    assert!(
        text.contains("GetSecretValue"),
        "the SDK's DEBUG lines must be captured"
    );
    for secret in [
        "slacksecrettoken",
        "teamssecretsig",
        "C2FVsBQIhrscChlQIMV",
        "/hooks/notify",
        "dan@buyer.example.com",
    ] {
        assert!(!text.contains(secret), "{secret} reached the logs");
    }
}
