//! A stand-in for SES v2 `SendEmail` and SNS `Publish` that answers every
//! call with success after a fixed latency: the providers of the side-by-side
//! benchmark (`scripts/compare`), the same for this project and for the plain
//! implementation it is compared with. It counts what it answered.
//!
//! usage: latency_provider PORT LATENCY_MS
//! GET /count answers the number of calls answered so far.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn answer(
    req: Request<Incoming>,
    latency: Duration,
    count: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/count" {
        let n = count.load(Ordering::SeqCst);
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    let ses = req.uri().path().starts_with("/v2/email/outbound-emails");
    // Read the whole request, as a provider would, before answering.
    let _ = req.into_body().collect().await;
    tokio::time::sleep(latency).await;
    count.fetch_add(1, Ordering::SeqCst);
    let id = uuid::Uuid::now_v7();
    let (content_type, body) = if ses {
        ("application/json", format!("{{\"MessageId\":\"{id}\"}}"))
    } else {
        (
            "text/xml",
            format!(
                "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult><MessageId>{id}</MessageId></PublishResult><ResponseMetadata><RequestId>{id}</RequestId></ResponseMetadata></PublishResponse>"
            ),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    resp.headers_mut()
        .insert("x-amzn-requestid", id.to_string().parse().unwrap());
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(4567);
    let latency = Duration::from_millis(args.get(2).and_then(|l| l.parse().ok()).unwrap_or(25));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let count = Arc::new(AtomicUsize::new(0));
    eprintln!(
        "latency provider on 127.0.0.1:{port}, {} ms a call",
        latency.as_millis()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let count = count.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, latency, count.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
