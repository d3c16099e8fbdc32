//! The `Poster` of the chat and webhook channels: HTTPS over hyper and
//! rustls (the same compiled-in roots as the SDK clients), no redirects, no
//! proxy, no connection reuse across targets. The host is resolved once; the
//! SSRF guard (`channels::guard::public_only`) checks every address; the
//! connection goes to a checked address, so a second lookup cannot rebind the
//! name to an internal one. Plain http is possible only for a receiver the
//! test-only allowance names (`NOTIFY_TEST_ONLY_LOCAL_TARGETS`), which the
//! stack never sets. No error text holds the URL.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::channels::guard::{TestOnlyAllowance, public_only};
use crate::channels::web::{Poster, WebAnswer, WebPost, parse_retry_after};
use crate::ports::SendError;

/// At most this much of an answer's body is read.
const ANSWER_BYTES: usize = 4096;

pub struct HttpsPoster {
    tls: tokio_rustls::TlsConnector,
    allowance: TestOnlyAllowance,
}

impl HttpsPoster {
    pub fn new(tls: Arc<rustls::ClientConfig>, allowance: TestOnlyAllowance) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(tls),
            allowance,
        }
    }

    /// Trusting the compiled-in roots and `SSL_CERT_FILE`'s.
    pub fn from_env(allowance: TestOnlyAllowance) -> Self {
        Self::new(crate::aws::http::tls_from_env(), allowance)
    }

    async fn post_once(&self, r: &WebPost) -> Result<WebAnswer, SendError> {
        let end = Instant::now() + r.timeout;
        let u = &r.url;
        let local = self.allowance.allows(&u.host, u.port);
        let refused =
            |why: &str| SendError::permanent("TargetRefused", format!("target URL refused: {why}"));
        let addrs: Vec<std::net::SocketAddr> =
            match timeout_at(end, tokio::net::lookup_host((u.host.as_str(), u.port))).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(_)) => {
                    return Err(SendError::transient(
                        "DnsFailed",
                        "the target's host did not resolve",
                    ));
                }
                Err(_) => {
                    return Err(SendError::transient(
                        "DnsTimeout",
                        "the target's host did not resolve in time",
                    ));
                }
            };
        let addrs = public_only(&addrs, local).map_err(refused)?;
        if !u.scheme_https && !local {
            return Err(refused("only https URLs are allowed"));
        }
        let mut tcp = None;
        for addr in addrs {
            if let Ok(Ok(s)) = timeout_at(end, TcpStream::connect(addr)).await {
                tcp = Some(s);
                break;
            }
        }
        let Some(tcp) = tcp else {
            return Err(SendError::transient(
                "ConnectFailed",
                "no connection to the target could be made",
            ));
        };
        let _ = tcp.set_nodelay(true);
        let request = self.request(r)?;
        if u.scheme_https {
            let name = rustls_pki_types::ServerName::try_from(u.host.clone())
                .map_err(|_| refused("the host is not a valid name"))?;
            let tls = match timeout_at(end, self.tls.connect(name, tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    return Err(SendError::transient(
                        "TlsFailed",
                        "the TLS handshake with the target failed",
                    ));
                }
            };
            exchange(TokioIo::new(tls), request, end).await
        } else {
            exchange(TokioIo::new(tcp), request, end).await
        }
    }

    fn request(&self, r: &WebPost) -> Result<http::Request<Full<Bytes>>, SendError> {
        let u = &r.url;
        let default_port = if u.scheme_https { 443 } else { 80 };
        let host = if u.port == default_port {
            u.host.clone()
        } else {
            format!("{}:{}", u.host, u.port)
        };
        let mut b = http::Request::post(u.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "notify-offer-contacts")
            .header(http::header::CONTENT_LENGTH, r.body.len());
        for (k, v) in &r.headers {
            b = b.header(*k, v);
        }
        b.body(Full::new(Bytes::copy_from_slice(r.body.as_bytes())))
            .map_err(|_| {
                SendError::permanent(
                    "InvalidRequest",
                    "the request to the target could not be built",
                )
            })
    }
}

/// One request on a fresh connection; the answer's first bytes.
async fn exchange<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
    end: Instant,
) -> Result<WebAnswer, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let lost = || {
        SendError::unknown(
            "ConnectionLost",
            "the connection to the target failed while the request was being sent",
        )
    };
    let (mut sender, conn) = match timeout_at(end, hyper::client::conn::http1::handshake(io)).await
    {
        Ok(Ok(x)) => x,
        _ => {
            return Err(SendError::transient(
                "ConnectFailed",
                "no HTTP connection to the target could be made",
            ));
        }
    };
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = match timeout_at(end, sender.send_request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(lost()),
            Err(_) => {
                return Err(SendError::unknown(
                    "Timeout",
                    "the target did not answer in time",
                ));
            }
        };
        let status = response.status().as_u16();
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
        let request_id = header("x-ms-workflow-run-id")
            .or_else(|| header("x-request-id"))
            .filter(|id| {
                id.len() <= 128
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            });
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while bytes.len() < ANSWER_BYTES {
            match timeout_at(end, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        let room = ANSWER_BYTES - bytes.len();
                        bytes.extend_from_slice(&d[..d.len().min(room)]);
                    }
                }
                _ => break,
            }
        }
        bytes.truncate(ANSWER_BYTES);
        Ok(WebAnswer {
            status,
            retry_after,
            request_id,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
    .await;
    driver.abort();
    result
}

impl Poster for HttpsPoster {
    fn post<'a>(&'a self, request: &'a WebPost) -> BoxFuture<'a, Result<WebAnswer, SendError>> {
        Box::pin(self.post_once(request))
    }
}

/// The test-only allowance of `NOTIFY_TEST_ONLY_LOCAL_TARGETS` (see
/// `Config::test_only_local_targets`), announced loudly when not empty.
pub fn allowance(local_targets: &[String]) -> TestOnlyAllowance {
    if !local_targets.is_empty() {
        tracing::warn!(
            targets = local_targets.len(),
            "NOTIFY_TEST_ONLY_LOCAL_TARGETS is set: local receivers are reachable (tests only)"
        );
    }
    TestOnlyAllowance {
        local_targets: local_targets.to_vec(),
    }
}
