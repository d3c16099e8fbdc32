//! A fault-injecting HTTP proxy in front of moto: a real network hop that
//! passes requests on, except the chosen AWS calls, which it answers with
//! throttling, a 500, a slow answer, a dropped connection, or (for DynamoDB
//! batch calls) every entry unprocessed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Throttle,
    ServerError,
    /// Waits, then passes the request on (the server acts on it late).
    Slow(Duration),
    /// Closes the connection without an answer, before passing anything on.
    Drop,
    /// DynamoDB BatchGetItem/BatchWriteItem: answers with every entry
    /// unprocessed (BatchGetItem's as moto does: the keys alone, without the
    /// request's projection or consistency, which the client must keep).
    Unprocessed,
    /// SQS SendMessageBatch: passes on every entry but the first, and answers
    /// that one as failed with this `SenderFault` (a real partial failure).
    FirstEntryFails {
        sender_fault: bool,
    },
}

#[derive(Debug)]
struct Rule {
    op: String,
    fault: Fault,
    /// Matching calls let through before the fault starts.
    skip: usize,
    /// Matching calls that get the fault, then it stops (usize::MAX: always).
    times: usize,
    seen: usize,
    injected: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    calls: Vec<(String, bool)>,
    /// Each call's request body, by operation.
    bodies: Vec<(String, Bytes)>,
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    _server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let (st, up) = (state.clone(), upstream.trim_end_matches('/').to_owned());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, up, client) = (st.clone(), up.clone(), client.clone());
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| handle(req, st.clone(), up.clone(), client.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            state,
            _server: server,
        }
    }

    /// Gives `times` matching calls of `op` (e.g. `DynamoDB.GetItem`, `SES.SendEmail`,
    /// `SNS.PublishSms`, `SNS.PublishTopic`) the fault, after letting `skip` through.
    pub fn inject(&self, op: &str, fault: Fault, skip: usize, times: usize) {
        self.state.lock().unwrap().rules.push(Rule {
            op: op.into(),
            fault,
            skip,
            times,
            seen: 0,
            injected: 0,
        });
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// How many calls of `op` got a fault.
    pub fn injected(&self, op: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(o, f)| o == op && *f)
            .count()
    }

    /// The request bodies of `op`'s calls, in order (what the wire carried).
    pub fn bodies(&self, op: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// How many calls of `op` passed through the proxy, faulted or not.
    pub fn calls(&self, op: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(o, _)| o == op)
            .count()
    }
}

/// Names the AWS call, as the rules do.
fn operation(req: &hyper::http::request::Parts, body: &[u8]) -> String {
    if let Some(target) = req
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let call = target.rsplit('.').next().unwrap_or("");
        return if target.starts_with("AmazonSQS") {
            format!("SQS.{call}")
        } else {
            format!("DynamoDB.{call}")
        };
    }
    let path = req.uri.path();
    if path.starts_with("/v2/email/outbound-emails") {
        return "SES.SendEmail".into();
    }
    if path.starts_with("/v2/email") {
        return "SES.Other".into();
    }
    let form = String::from_utf8_lossy(body);
    if form.contains("Action=Publish") {
        return if form.contains("PhoneNumber=") {
            "SNS.PublishSms".into()
        } else {
            "SNS.PublishTopic".into()
        };
    }
    "Other".into()
}

fn respond(status: u16, headers: &[(&str, &str)], body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

fn sns_error(status: u16, code: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        &[("content-type", "text/xml")],
        format!(
            "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the fault proxy</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
        ),
    )
}

fn injected(op: &str, fault: Fault, body: &[u8]) -> Response<Full<Bytes>> {
    let ddb = |status, kind: &str| {
        respond(status, &[("content-type", "application/x-amz-json-1.0")], json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": "injected by the fault proxy"}).to_string())
    };
    let ses = |status, kind: &str| {
        respond(
            status,
            &[
                ("content-type", "application/json"),
                ("x-amzn-errortype", kind),
            ],
            json!({"message": "injected by the fault proxy"}).to_string(),
        )
    };
    match (op.split('.').next().unwrap_or(""), fault) {
        ("DynamoDB", Fault::Throttle) => ddb(400, "ThrottlingException"),
        ("DynamoDB", Fault::ServerError) => ddb(500, "InternalServerError"),
        ("DynamoDB", Fault::Unprocessed) => {
            let request: Value = serde_json::from_slice(body).unwrap_or_default();
            let answer = if op.ends_with("BatchGetItem") {
                let keys_only: serde_json::Map<String, Value> = request["RequestItems"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(table, r)| (table.clone(), json!({"Keys": r["Keys"]})))
                    .collect();
                json!({"Responses": {}, "UnprocessedKeys": keys_only})
            } else {
                json!({"UnprocessedItems": request["RequestItems"]})
            };
            respond(
                200,
                &[("content-type", "application/x-amz-json-1.0")],
                answer.to_string(),
            )
        }
        ("SES", Fault::Throttle) => ses(429, "TooManyRequestsException"),
        ("SES", Fault::ServerError) => ses(500, "InternalFailure"),
        ("SNS", Fault::Throttle) => sns_error(400, "Throttling"),
        ("SNS", Fault::ServerError) => sns_error(500, "InternalError"),
        (service, fault) => panic!("no {fault:?} for {service}"),
    }
}

/// Sends a SendMessageBatch on without its first entry; answers with that
/// entry added to `Failed`.
async fn first_entry_fails(
    parts: hyper::http::request::Parts,
    body: &[u8],
    upstream: &str,
    client: &Client<HttpConnector, Full<Bytes>>,
    sender_fault: bool,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let mut request: Value = serde_json::from_slice(body).map_err(std::io::Error::other)?;
    let entries = request["Entries"].as_array_mut().expect("Entries");
    let first = entries.remove(0);
    let rest = entries.len();
    let body = Bytes::from(request.to_string());
    let mut forward = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{}", parts.uri.path()));
    for (k, v) in parts.headers.iter() {
        if k != hyper::header::CONTENT_LENGTH {
            forward = forward.header(k, v);
        }
    }
    let mut answer: Value = if rest == 0 {
        json!({"Successful": []})
    } else {
        let answer = client
            .request(forward.body(Full::new(body)).expect("request"))
            .await
            .map_err(std::io::Error::other)?;
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)?
    };
    answer["Failed"] = json!([{
        "Id": first["Id"],
        "SenderFault": sender_fault,
        "Code": if sender_fault { "InvalidParameterValue" } else { "InternalError" },
        "Message": "injected by the fault proxy",
    }]);
    Ok(respond(
        200,
        &[("content-type", "application/x-amz-json-1.0")],
        answer.to_string(),
    ))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let op = operation(&parts, &body);
    let fault = {
        let mut st = state.lock().unwrap();
        let mut chosen = None;
        for rule in st.rules.iter_mut().filter(|r| r.op == op) {
            rule.seen += 1;
            if chosen.is_none() && rule.seen > rule.skip && rule.injected < rule.times {
                rule.injected += 1;
                chosen = Some(rule.fault);
            }
        }
        st.calls.push((op.clone(), chosen.is_some()));
        st.bodies.push((op.clone(), body.clone()));
        chosen
    };
    let delay = match fault {
        Some(Fault::Drop) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "dropped by the fault proxy",
            ));
        }
        Some(Fault::Slow(d)) => Some(d),
        Some(Fault::FirstEntryFails { sender_fault }) => {
            return first_entry_fails(parts, &body, &upstream, &client, sender_fault).await;
        }
        Some(f) => return Ok(injected(&op, f, &body)),
        None => None,
    };
    // Detached, like a real server: a slow request is acted on even after the
    // client has given up waiting and hung up.
    let work = tokio::spawn(async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let uri = format!(
            "{upstream}{}",
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let mut forward = Request::builder().method(parts.method.clone()).uri(uri);
        for (k, v) in parts.headers.iter() {
            forward = forward.header(k, v);
        }
        let forward = forward.body(Full::new(body)).expect("request");
        let answer = client
            .request(forward)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = answer.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Response::from_parts(parts, Full::new(body)))
    });
    work.await.map_err(std::io::Error::other)?
}
