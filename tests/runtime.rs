//! The built binary under the Lambda runtime emulator of cargo-lambda
//! (`cargo lambda watch --only-lambda-apis`): the real runtime client, the
//! real start-up path, real JSON logs, with moto behind it.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Killed, Moto, SENDER, TOPIC_NAME, free_port, read_json, repo, venv_bin};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_notify-offer-contacts");

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Invokes the function through the emulator's Invoke API.
fn invoke(port: u16, payload: &Value) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut resp = agent
        .post(&format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .header("content-type", "application/json")
        .send(payload.to_string())
        .expect("the emulator answers");
    resp.body_mut().read_json().expect("a JSON answer")
}

#[tokio::test]
async fn the_built_binary_serves_events_under_the_runtime_emulator() {
    let moto = Moto::start();
    let sdk = common::sdk_config(&moto.endpoint).await;
    let table = format!("notify-rt-{}", std::process::id());
    common::create_table(&sdk, &table).await;
    common::seed(&sdk, &table, &read_json("tests/fixtures/demo-org.json")).await;
    aws_sdk_sesv2::Client::new(&sdk)
        .create_email_identity()
        .email_identity(SENDER)
        .send()
        .await
        .unwrap();
    aws_sdk_sns::Client::new(&sdk)
        .create_topic()
        .name(TOPIC_NAME)
        .send()
        .await
        .unwrap();

    let port = free_port();
    let _emulator = Killed(
        Command::new(venv_bin("cargo-lambda"))
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo lambda watch starts"),
    );
    wait_for_port(port);

    let log_path = std::env::temp_dir().join(format!("notify-rt-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let _function = Killed(
        Command::new(BINARY)
            .env_clear()
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("TABLE_NAME", &table)
            .env("SENDER_EMAIL", SENDER)
            .env("ALLOW_WITHOUT_AUTHORIZER", "direct")
            .env("TOPIC_ARN_PREFIX", common::TOPIC_ARN_PREFIX)
            .env("AWS_LAMBDA_LOG_LEVEL", "debug")
            .env("POWERTOOLS_METRICS_NAMESPACE", "NotifyTest")
            .env("POWERTOOLS_SERVICE_NAME", "notify-test")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the function starts"),
    );

    let answer = invoke(port, &read_json("events/http-api-notify-all.json"));
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let event: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["eventStatus"], "DONE", "{event}");
    assert_eq!(moto.emails().len(), 2);
    assert_eq!(moto.sms().len(), 2);

    let answer = invoke(port, &read_json("events/http-api-get-method.json"));
    assert_eq!(answer["statusCode"], 405, "{answer}");

    let answer = invoke(port, &read_json("events/direct-unknown-contact.json"));
    assert_eq!(answer["errorType"], "BadRequest", "{answer}");
    assert_eq!(
        answer["errorMessage"],
        "contact c-zed is not on offer offer-demo"
    );

    let answer = invoke(port, &read_json("events/direct-notify-listed.json"));
    assert_eq!(
        answer["contactIds"],
        serde_json::json!(["c-ann"]),
        "{answer}"
    );

    // An SQS event from the work queue: its unreadable and unknown messages
    // are reported for redelivery, one by one.
    let answer = invoke(port, &read_json("events/sqs-work-batch.json"));
    assert_eq!(
        answer["batchItemFailures"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );

    // Logs: JSON lines with the request id, and no address, number or body in clear.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "event finished"
            && l["spans"][0]["requestId"].is_string()
            && l["spans"][1]["event_id"].is_string()),
        "{logs}"
    );
    // Metrics: CloudWatch EMF documents among the lines, one set per invocation.
    let emf: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    let requests: Vec<&&Value> = emf.iter().filter(|d| d.get("Requests").is_some()).collect();
    assert_eq!(
        requests.len(),
        5,
        "one invocation document per request: {emf:?}"
    );
    assert_eq!(
        requests[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "NotifyTest"
    );
    assert_eq!(requests[0]["service"], "notify-test");
    assert_eq!(
        requests[0]["ColdStart"], 1,
        "the first invocation is the cold start"
    );
    assert!(requests[1].get("ColdStart").is_none());
    assert_eq!(requests[0]["Recipients"], 3);
    assert!(requests[0]["FanOutDuration"].as_i64().is_some());
    let outcomes: Vec<&str> = requests
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "method_not_allowed", "bad_request", "ok", "work"]
    );
    let email = emf
        .iter()
        .find(|d| d["channel"] == "EMAIL")
        .expect("a per-channel document");
    assert_eq!(
        (
            email["DeliveriesSent"].as_u64(),
            email["DeliveriesSkipped"].as_u64(),
            email["DeliveriesFailed"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    assert_eq!(
        email["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["service", "channel"]])
    );

    for secret in [
        "@buyer.example.com",
        "+12065550100",
        "2065550100",
        "+442079460958",
        "Hello Ann",
        "Acme Analytics",
    ] {
        assert!(!logs.contains(secret), "the logs hold {secret:?}:\n{logs}");
    }
}

#[test]
fn start_up_fails_with_a_clear_message_when_a_variable_is_missing() {
    let out = Command::new(BINARY)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("SENDER_EMAIL", SENDER)
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("environment variable TABLE_NAME is required but not set"),
        "{all}"
    );
}
