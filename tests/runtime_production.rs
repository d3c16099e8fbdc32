//! The built binary under a Runtime API that behaves as Lambda's (real
//! deadlines), at the settings a real account and a deployed stack start
//! with: 1 email a second, no trust without an authorizer, data from other
//! writers. moto behind it, over the real wire protocol.

mod common;

use std::process::Command;
use std::time::Duration;

use common::runtime_api::RuntimeApi;
use common::{Killed, Moto, SENDER, read_json};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_notify-offer-contacts");

struct Function {
    _process: Killed,
    log: std::path::PathBuf,
}

impl Function {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the binary against `api` and `moto`, with the stack's settings
/// plus `env`.
fn start(api: &RuntimeApi, moto: &Moto, table: &str, env: &[(&str, &str)]) -> Function {
    let log = std::env::temp_dir().join(format!(
        "notify-prod-{}-{}.log",
        std::process::id(),
        api.address.replace([':', '.'], "-")
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BINARY);
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "notify-offer-contacts")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("TABLE_NAME", table)
        .env("SENDER_EMAIL", SENDER)
        .env("TOPIC_ARN_PREFIX", common::TOPIC_ARN_PREFIX)
        .env("AWS_LAMBDA_LOG_LEVEL", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("the function starts");
    Function {
        _process: Killed(child),
        log,
    }
}

async fn world() -> (Moto, String, aws_config::SdkConfig) {
    let moto = Moto::start();
    let sdk = common::sdk_config(&moto.endpoint).await;
    let table = format!("notify-prod-{}", uuid::Uuid::now_v7().simple());
    common::create_table(&sdk, &table).await;
    common::seed(&sdk, &table, &read_json("tests/fixtures/demo-org.json")).await;
    aws_sdk_sesv2::Client::new(&sdk)
        .create_email_identity()
        .email_identity(SENDER)
        .send()
        .await
        .unwrap();
    (moto, table, sdk)
}

/// The scenario: no work queue, EMAIL_PER_SECOND=1, an offer of N
/// email contacts (10 here; `DEADLINE_SCENARIO_CONTACTS=30` for the issue's
/// figure), a keyed request whose deadline is 8 s away, retried until done.
#[tokio::test]
async fn at_one_email_a_second_every_answer_beats_an_8_s_deadline_and_retries_mail_everyone_once() {
    let n: usize = std::env::var("DEADLINE_SCENARIO_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (moto, table, sdk) = world().await;
    let ids: Vec<String> = (0..n).map(|i| format!("d-{i:02}")).collect();
    let mut items = vec![
        json!({"pk": "ORG#org-demo", "sk": "OFFER#offer-deadline", "id": "offer-deadline",
        "organizationID": "org-demo", "name": "Deadline offer", "partner": "AWS", "contactIds": ids}),
    ];
    items.extend(ids.iter().map(|id| {
        json!({"pk": "ORG#org-demo", "sk": format!("CONTACT#{id}"), "id": id,
        "organizationID": "org-demo", "emailAddress": format!("{id}@buyer.example.com")})
    }));
    items.push(json!({"pk": "ORG#org-demo", "sk": "NOTIFICATION_CONFIG", "channels": ["EMAIL"]}));
    common::seed(&sdk, &table, &json!({"items": items})).await;

    let api = RuntimeApi::start().await;
    let _f = start(
        &api,
        &moto,
        &table,
        &[
            ("ALLOW_WITHOUT_AUTHORIZER", "direct"),
            ("EMAIL_PER_SECOND", "1"),
        ],
    );
    let request =
        json!({"orgId": "org-demo", "offerId": "offer-deadline", "idempotencyKey": "deadline-1"});
    let deadline = Duration::from_secs(8);
    let mut answers = Vec::new();
    let mut last = Value::Null;
    for _ in 0..(n / 3 + 3) {
        let (answer, took) = api.invoke(request.clone(), deadline).await;
        let event = answer.expect("an answer, not an error");
        eprintln!(
            "answered in {:.2} s of {} s: {} sent so far, status {}",
            took.as_secs_f64(),
            deadline.as_secs(),
            moto.emails().len(),
            event["eventStatus"]
        );
        assert!(took < deadline, "answered after {took:?}");
        answers.push(took);
        last = event;
        if last["eventStatus"] != "PENDING" {
            break;
        }
    }
    assert_eq!(last["eventStatus"], "DONE", "{last}");
    let mut to: Vec<String> = moto.emails().into_iter().map(|e| e.0).collect();
    to.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .map(|id| format!("{id}@buyer.example.com"))
        .collect();
    expected.sort();
    assert_eq!(to, expected, "every contact exactly once");
    eprintln!(
        "{n} contacts: {} invocations, slowest answer {:.2} s",
        answers.len(),
        answers.iter().max().unwrap().as_secs_f64()
    );
}

#[tokio::test]
async fn the_deployed_settings_refuse_every_request_that_no_authorizer_ties_to_the_org() {
    let (moto, table, _) = world().await;
    let api = RuntimeApi::start().await;
    // As the stack sets the API function: nothing trusted without an authorizer.
    let f = start(&api, &moto, &table, &[]);
    for sample in [
        "http-api-jwt-no-org-claim.json",
        "rest-api-principal-only.json",
        "function-url-notify-listed.json",
    ] {
        let (answer, _) = api
            .invoke(
                read_json(format!("events/{sample}")),
                Duration::from_secs(20),
            )
            .await;
        let answer = answer.expect("an HTTP answer");
        assert_eq!(answer["statusCode"], 403, "{sample}: {answer}");
    }
    let (refused, _) = api
        .invoke(
            read_json("events/direct-notify-listed.json"),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(refused.unwrap_err()["errorType"], "Forbidden");
    assert!(moto.emails().is_empty() && moto.sms().is_empty());
    // A token that names the org is served.
    let (answer, _) = api
        .invoke(
            read_json("events/http-api-jwt-notify-listed.json"),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(answer.unwrap()["statusCode"], 200);
    assert_eq!(moto.emails().len(), 1);
    assert!(f.log().contains("\"status\":403") || f.log().contains("403"));
}

#[tokio::test]
async fn an_unreadable_contact_fails_alone_and_nothing_of_it_reaches_the_log() {
    let (moto, table, sdk) = world().await;
    // Another writer stored c-bad with `info` as a string.
    common::seed(
        &sdk,
        &table,
        &json!({"items": [
            {"pk": "ORG#org-demo", "sk": "OFFER#offer-mixed", "id": "offer-mixed", "organizationID": "org-demo",
             "name": "Mixed offer", "contactIds": ["c-ann", "c-bad"]},
            {"pk": "ORG#org-demo", "sk": "CONTACT#c-bad", "id": "c-bad", "organizationID": "org-demo",
             "emailAddress": "leaky@secret.example", "info": "phone +15550100 SECRET-NOTE"}
        ]}),
    )
    .await;
    let api = RuntimeApi::start().await;
    let f = start(
        &api,
        &moto,
        &table,
        &[("ALLOW_WITHOUT_AUTHORIZER", "direct")],
    );
    let (answer, _) = api
        .invoke(
            json!({"orgId": "org-demo", "offerId": "offer-mixed"}),
            Duration::from_secs(20),
        )
        .await;
    let event = answer.expect("an answer, not a 500");
    let deliveries = event["info"]["deliveries"].as_array().unwrap();
    let bad: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["contactId"] == "c-bad")
        .collect();
    assert!(!bad.is_empty());
    assert!(bad.iter().all(|d| {
        d["status"] == "FAILED"
            && d["reason"]
                .as_str()
                .unwrap()
                .starts_with("contact record unreadable")
    }));
    assert_eq!(
        moto.emails().into_iter().map(|e| e.0).collect::<Vec<_>>(),
        ["ann@buyer.example.com"]
    );
    let log = f.log();
    assert!(log.contains("contact record unreadable"), "{log}");
    for secret in ["SECRET-NOTE", "+15550100", "leaky@secret.example"] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
    assert!(!event.to_string().contains("SECRET-NOTE"));
}
