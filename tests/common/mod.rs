//! Test harness: a moto server of its own for each test (real DynamoDB, SES v2
//! and SNS wire protocols), a table seeded from `tests/fixtures/demo-org.json`,
//! and the handler driven with the sample events of `events/`.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod receiver;
pub mod runtime_api;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use lambda_runtime::{Context, Diagnostic, LambdaEvent};
use notify_offer_contacts::config::Config;
use serde_json::{Value, json};

pub const SENDER: &str = "offers@seller.example.com";
pub const TOPIC_NAME: &str = "notify-org-demo";
/// The EventBridge source of `events/eventbridge-notify-listed.json`.
pub const EVENT_SOURCE: &str = "com.example.renewals";
/// Organisation topics allowed in tests: moto's account and region, each named `notify-{orgId}`.
pub const TOPIC_ARN_PREFIX: &str = "arn:aws:sns:us-east-1:123456789012:notify-";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port no other test process has taken: nextest runs each test in its
/// own process, and two of them asking the OS at the same moment can be
/// handed the same just-released port (one moto then fails to bind, and its
/// test talks to the other's). Each port handed out is reserved with a file
/// created exclusively under the system's temp folder; reservations older
/// than 15 minutes are stale (their test is over) and are reused.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("notify-offer-contacts-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let lock = dir.join(port.to_string());
        let stale = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(900)));
        if stale {
            let _ = std::fs::remove_file(&lock);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            return port;
        }
    }
    panic!("no free port after 50 tries")
}

/// A child process that is killed when the test ends, pass or fail.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn venv_bin(name: &str) -> PathBuf {
    let p = repo().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup first",
        p.display()
    );
    p
}

/// A moto server on a free port, stopped when dropped.
pub struct Moto {
    _process: Killed,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            _process: Killed(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/moto-api/data.json", moto.endpoint))
            .call()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// What moto recorded as sent (emails, SMS, topic messages).
    pub fn data(&self) -> Value {
        let mut resp = ureq::get(&format!("{}/moto-api/data.json", self.endpoint))
            .call()
            .expect("data.json");
        resp.body_mut().read_json().expect("data.json is JSON")
    }

    /// Emails sent: (to, subject, body).
    pub fn emails(&self) -> Vec<(String, String, String)> {
        let data = self.data();
        data["ses"]["Message"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let to = m["destinations"]["ToAddresses"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                (
                    to,
                    m["subject"].as_str().unwrap_or_default().to_owned(),
                    m["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// SMS sent: (number, text).
    pub fn sms(&self) -> Vec<(String, String)> {
        let data = self.data();
        data["sns"]["SMS"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["phone_number"].as_str().unwrap_or_default().to_owned(),
                    m["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Messages published to topics: [id, message, subject, attributes, group].
    pub fn topic_messages(&self) -> Vec<Value> {
        let data = self.data();
        data["sns"]["Topic"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| {
                t["sent_notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        // The function's own HTTP client, so the wire tests go through it.
        .http_client(notify_offer_contacts::aws::http::WebPkiClient::new(None).shared())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        // One retry: moto does not throttle, and an expected error should not wait out backoff.
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await
}

pub fn read_json(path: impl AsRef<Path>) -> Value {
    let path = repo().join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One test's world: its moto, its table (seeded), its function.
pub struct TestEnv {
    pub moto: Moto,
    pub sdk: SdkConfig,
    pub table: String,
    pub config: Config,
    pub app: notify_offer_contacts::App,
    pub edge: notify_offer_contacts::event::Edge,
}

impl TestEnv {
    /// The demo organisations, and org-brand with its own templates
    /// (`tests/fixtures/brand-org.json`).
    pub async fn with_brand_org() -> Self {
        let env = Self::new().await;
        seed(
            &env.sdk,
            &env.table,
            &read_json("tests/fixtures/brand-org.json"),
        )
        .await;
        env
    }

    /// Notifies every contact of `offer` through a direct invocation; the
    /// stored event's ID.
    pub async fn notified(&self, org: &str, offer: &str) -> String {
        let event = self
            .invoke(serde_json::json!({"orgId": org, "offerId": offer}))
            .await
            .unwrap_or_else(|e| panic!("{org}/{offer} not notified: {e:?}"));
        event["eventID"]
            .as_str()
            .unwrap_or_else(|| panic!("{event}"))
            .to_owned()
    }

    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A seeded world whose function config `tweak` may change (e.g. the sender).
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let moto = Moto::start();
        let sdk = sdk_config(&moto.endpoint).await;
        let table = format!("notify-{}", uuid::Uuid::now_v7().simple());
        create_table(&sdk, &table).await;
        seed(&sdk, &table, &read_json("tests/fixtures/demo-org.json")).await;
        aws_sdk_sesv2::Client::new(&sdk)
            .create_email_identity()
            .email_identity(SENDER)
            .send()
            .await
            .expect("SES identity");
        aws_sdk_sns::Client::new(&sdk)
            .create_topic()
            .name(TOPIC_NAME)
            .send()
            .await
            .expect("SNS topic");
        let mut config = Config::from_lookup(|k| match k {
            "TABLE_NAME" => Some(table.clone()),
            "SENDER_EMAIL" => Some(SENDER.into()),
            // Local runs: the sample events without an authorizer (Function
            // URL, ALB) and direct invocations are served; tests of the
            // deployed settings take these away.
            "ALLOW_WITHOUT_AUTHORIZER" => Some("direct,http".into()),
            "EVENT_SOURCES" => Some(EVENT_SOURCE.into()),
            "TOPIC_ARN_PREFIX" => Some(TOPIC_ARN_PREFIX.into()),
            _ => None,
        })
        .expect("config");
        tweak(&mut config);
        let app = notify_offer_contacts::app(&sdk, &config);
        let edge = notify_offer_contacts::event::Edge {
            access: config.access.clone(),
            metrics: None,
        };
        TestEnv {
            moto,
            sdk,
            table,
            config,
            app,
            edge,
        }
    }

    pub fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    /// Invokes the handler with a JSON event, as the runtime would.
    pub async fn invoke(&self, payload: Value) -> Result<Value, Diagnostic> {
        let mut ctx = Context::default();
        ctx.request_id = "test-request-1".into();
        notify_offer_contacts::event::handle(&self.app, &self.edge, LambdaEvent::new(payload, ctx))
            .await
    }

    /// Invokes the handler with a file of `events/`.
    pub async fn invoke_file(&self, name: &str) -> Result<Value, Diagnostic> {
        self.invoke(read_json(format!("events/{name}"))).await
    }

    /// Invokes with an HTTP event file and splits the answer.
    pub async fn http(&self, name: &str) -> HttpAnswer {
        HttpAnswer::from(
            self.invoke_file(name)
                .await
                .expect("HTTP events always get a response"),
        )
    }

    /// An event's ledger as the function reads it (the synchronous path's
    /// announcements applied: a send announced and not yet recorded reads
    /// SENDING), one JSON object per delivery, as the API names its fields.
    pub async fn ledger(&self, org: &str, event_id: &str) -> Vec<Value> {
        use notify_offer_contacts::ports::EventStore;
        let store =
            notify_offer_contacts::aws::dynamo::DynamoStore::new(self.dynamo(), &self.table);
        let org = notify_offer_contacts::model::OrgId::parse(org).expect("org");
        let (_, ledger) = store
            .event_with_deliveries(&org, event_id)
            .await
            .expect("read the ledger")
            .expect("the event exists");
        ledger
            .iter()
            .map(|d| serde_json::to_value(d).expect("json"))
            .collect()
    }

    /// Every item under an organisation whose sort key starts with `prefix`.
    pub async fn items(&self, org: &str, prefix: &str) -> Vec<Value> {
        let out = self
            .dynamo()
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("ORG#{org}")))
            .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
            .send()
            .await
            .expect("query");
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(|i| serde_dynamo::from_item(i).expect("item"))
            .collect()
    }
}

/// A GET through the HTTP API (payload v2), as the caller of `claim_org`.
pub fn http_get(path: &str, query: &[(&str, &str)], claim_org: &str) -> Value {
    let mut e = read_json("events/http-api-notify-all.json");
    let raw_query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    e["routeKey"] = json!(format!("GET {path}"));
    e["rawPath"] = json!(path);
    e["rawQueryString"] = json!(raw_query.join("&"));
    e["requestContext"]["http"]["method"] = json!("GET");
    e["requestContext"]["http"]["path"] = json!(path);
    e["requestContext"]["authorizer"]["lambda"]["organizationID"] = json!(claim_org);
    let q: serde_json::Map<String, Value> =
        query.iter().map(|(k, v)| ((*k).into(), json!(v))).collect();
    if q.is_empty() {
        e.as_object_mut().unwrap().remove("queryStringParameters");
    } else {
        e["queryStringParameters"] = Value::Object(q);
    }
    let o = e.as_object_mut().unwrap();
    o.remove("pathParameters");
    o.remove("body");
    e
}

pub struct HttpAnswer {
    pub status: u16,
    pub headers: Value,
    pub body: Value,
}

impl From<Value> for HttpAnswer {
    fn from(v: Value) -> Self {
        let status = v["statusCode"].as_u64().expect("statusCode") as u16;
        let text = v["body"].as_str().unwrap_or_default();
        let body =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
        HttpAnswer {
            status,
            headers: v["headers"].clone(),
            body,
        }
    }
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }
    /// The body of an error answer: a JSON string.
    pub fn message(&self) -> &str {
        self.body
            .as_str()
            .unwrap_or_else(|| panic!("expected a JSON string body, got {}", self.body))
    }
}

pub async fn create_table(sdk: &SdkConfig, table: &str) {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |n: &str, t| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    // The sweeper's index, as template.yaml declares it.
    let pending = GlobalSecondaryIndex::builder()
        .index_name(notify_offer_contacts::aws::dynamo::PENDING_INDEX)
        .key_schema(key("pendingIndex", KeyType::Hash))
        .key_schema(key("resumeAt", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .non_key_attributes("pendingSince")
                .build(),
        )
        .build()
        .unwrap();
    // The read API's index of events by entity, as template.yaml declares it.
    let entity = GlobalSecondaryIndex::builder()
        .index_name(notify_offer_contacts::aws::dynamo::ENTITY_INDEX)
        .key_schema(key("entityIndex", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .unwrap();
    // SMS ledger entries by SNS message ID (SMS delivery logs).
    let provider = GlobalSecondaryIndex::builder()
        .index_name(notify_offer_contacts::aws::dynamo::PROVIDER_INDEX)
        .key_schema(key("smsMessageId", KeyType::Hash))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .unwrap();
    aws_sdk_dynamodb::Client::new(sdk)
        .create_table()
        .table_name(table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .attribute_definitions(attr("pendingIndex"))
        .attribute_definitions(attr("entityIndex"))
        .attribute_definitions(attr("smsMessageId"))
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("resumeAt")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(pending)
        .global_secondary_indexes(entity)
        .global_secondary_indexes(provider)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

pub async fn seed(sdk: &SdkConfig, table: &str, fixture: &Value) {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    for item in fixture["items"].as_array().expect("items") {
        let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(item).expect("item");
        client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .expect("seed put");
    }
}

/// Log lines captured in memory (a `tracing_subscriber` writer), to check
/// what reaches the log.
#[derive(Clone, Default)]
pub struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogSink {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
