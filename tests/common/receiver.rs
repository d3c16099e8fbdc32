//! A local HTTP receiver for the chat and webhook channels, as moto is for
//! SES and SNS: it records every request that arrives (path, headers, body)
//! and answers from a script (then 200 `ok`). Reached only through the
//! function's test-only allowance (`NOTIFY_TEST_ONLY_LOCAL_TARGETS`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Arrived {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Arrived {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer: status, headers, body, and a delay before it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    arrived: Arc<Mutex<Vec<Arrived>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            port,
            arrived: Arc::default(),
            script: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, hyper::Error>(me.answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.arrived.lock().unwrap().push(Arrived {
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let a = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Answer::status(200, "ok"));
        tokio::time::sleep(a.delay).await;
        let mut b = Response::builder().status(a.status);
        for (k, v) in &a.headers {
            b = b.header(*k, v);
        }
        b.body(Full::new(Bytes::from(a.body))).unwrap()
    }

    pub fn then(&self, a: Answer) {
        self.script.lock().unwrap().push_back(a);
    }

    pub fn arrived(&self) -> Vec<Arrived> {
        self.arrived.lock().unwrap().clone()
    }

    /// `host:port` for the allowance.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
