//! A Lambda Runtime API on loopback that behaves as Lambda's does where
//! cargo-lambda's emulator does not: each event comes with a real deadline
//! (`Lambda-Runtime-Deadline-Ms`, epoch milliseconds), so the binary's own
//! deadline handling is what is tested. The test pushes an event and waits
//! for the function's answer (or its error), timing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// The function's answer to one invocation: `Ok` its response, `Err` its error document.
pub type Answer = Result<Value, Value>;

struct Pending {
    id: String,
    deadline_ms: u64,
    payload: Value,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, oneshot::Sender<Answer>>,
}

pub struct RuntimeApi {
    /// For `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    events: mpsc::Sender<Pending>,
    _server: tokio::task::JoinHandle<()>,
    next_id: Mutex<u64>,
}

impl RuntimeApi {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::channel::<Pending>(16);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let state = Arc::new(Mutex::new(State::default()));
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rx, state) = (rx.clone(), state.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(req, rx.clone(), state.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            address,
            events: tx,
            _server: server,
            next_id: Mutex::new(0),
        }
    }

    /// Sends one event whose deadline is `within` from now; answers what the
    /// function answered and how long it took.
    pub async fn invoke(&self, payload: Value, within: Duration) -> (Answer, Duration) {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            format!("rt-{n:04}")
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (answer, rx) = oneshot::channel();
        let start = Instant::now();
        self.events
            .send(Pending {
                id,
                deadline_ms: now_ms + within.as_millis() as u64,
                payload,
                answer,
            })
            .await
            .expect("the Runtime API runs");
        let answer = tokio::time::timeout(within + Duration::from_secs(30), rx)
            .await
            .expect("the function answered")
            .expect("an answer");
        (answer, start.elapsed())
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

async fn serve(
    req: Request<Incoming>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path.ends_with("/runtime/invocation/next") {
        let Some(next) = rx.lock().await.recv().await else {
            return Ok(reply(StatusCode::GONE, Bytes::new()));
        };
        state
            .lock()
            .unwrap()
            .waiting
            .insert(next.id.clone(), next.answer);
        let mut r = reply(StatusCode::OK, Bytes::from(next.payload.to_string()));
        let h = r.headers_mut();
        h.insert("lambda-runtime-aws-request-id", next.id.parse().unwrap());
        h.insert(
            "lambda-runtime-deadline-ms",
            next.deadline_ms.to_string().parse().unwrap(),
        );
        h.insert(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:notify-offer-contacts"
                .parse()
                .unwrap(),
        );
        h.insert(
            "lambda-runtime-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
                .parse()
                .unwrap(),
        );
        return Ok(r);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.split('/').collect();
    // /2018-06-01/runtime/invocation/{id}/response | /error
    if let [.., "invocation", id, kind] = parts.as_slice() {
        let waiting = state.lock().unwrap().waiting.remove(*id);
        if let Some(tx) = waiting {
            let _ = tx.send(if *kind == "response" {
                Ok(value)
            } else {
                Err(value)
            });
        }
    }
    Ok(reply(StatusCode::ACCEPTED, Bytes::new()))
}
