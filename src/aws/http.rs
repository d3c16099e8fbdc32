//! The SDK clients' HTTPS client: hyper with rustls, trusting the Mozilla root
//! set compiled into the binary (`webpki-roots`: trust anchors, nothing to
//! read or parse at start-up), plus the PEM certificates of `SSL_CERT_FILE`
//! when it is set (a private CA, a local stand-in). The SDK's default client
//! loads and parses the system's CA bundle when it is built, which was most of
//! this function's cold start (BENCHMARKS.md).
//!
//! It applies the connect timeout and the read timeout the SDK asks for, and
//! reports failures in the SDK's own kinds (timeout, I/O, other), which the
//! retry rules of `aws::NoRetryWhenOutcomeUnknown` depend on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;

type Hyper = Client<HttpsConnector<TcpConnector>, SdkBody>;

/// The rustls configuration: the compiled-in roots, and `extra_pem` (the
/// contents of `SSL_CERT_FILE`) when given.
fn tls_config(extra_pem: Option<&[u8]>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_pem {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
        let (added, ignored) = roots.add_parsable_certificates(certs);
        tracing::info!(added, ignored, "SSL_CERT_FILE certificates trusted as well");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the provider supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The TLS configuration of every outbound connection (the SDK clients and
/// the chat and webhook poster): built once per process, `SSL_CERT_FILE`
/// read once.
pub(crate) fn tls_from_env() -> Arc<rustls::ClientConfig> {
    static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let extra = std::env::var_os("SSL_CERT_FILE").and_then(|path| {
            std::fs::read(&path)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "SSL_CERT_FILE cannot be read; ignored"),
                )
                .ok()
        });
        Arc::new(tls_config(extra.as_deref()))
    })
    .clone()
}

/// The HTTP client every SDK client of the function shares (one connection
/// pool, one TLS configuration).
#[derive(Debug, Clone)]
pub struct WebPkiClient {
    tls: Arc<rustls::ClientConfig>,
    /// One hyper client per connect timeout asked for (in practice one).
    clients: Arc<Mutex<HashMap<Option<Duration>, Hyper>>>,
}

impl WebPkiClient {
    /// The client, trusting the compiled-in roots and `SSL_CERT_FILE`'s.
    pub fn from_env() -> Self {
        Self {
            tls: tls_from_env(),
            clients: Arc::default(),
        }
    }

    pub fn new(extra_pem: Option<&[u8]>) -> Self {
        Self {
            tls: Arc::new(tls_config(extra_pem)),
            clients: Arc::default(),
        }
    }

    pub fn shared(self) -> SharedHttpClient {
        SharedHttpClient::new(self)
    }

    fn client(&self, connect_timeout: Option<Duration>) -> Hyper {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut tcp = TcpConnector::new();
                tcp.enforce_http(false);
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(connect_timeout);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*self.tls).clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(https)
            })
            .clone()
    }
}

impl HttpClient for WebPkiClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Connector {
            client: self.client(settings.connect_timeout()),
            read_timeout: settings.read_timeout(),
        })
    }
}

#[derive(Debug)]
struct Connector {
    client: Hyper,
    read_timeout: Option<Duration>,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => {
                return HttpConnectorFuture::ready(Err(ConnectorError::other(e.into(), None)));
            }
        };
        let client = self.client.clone();
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let call = client.request(request);
            let response = match read_timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(r) => r,
                    Err(elapsed) => return Err(ConnectorError::timeout(elapsed.into())),
                },
                None => call.await,
            }
            .map_err(classify)?;
            let response = response.map(SdkBody::from_body_1_x);
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// hyper's failure as the SDK's kind: a connection that could not be made or
/// broke is I/O (the request may or may not have reached the provider); a
/// timeout is a timeout; the rest is other.
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let timed_out = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if timed_out {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || std::error::Error::source(&e).is_some() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_roots_need_no_file_and_a_bad_extra_file_is_ignored() {
        // Amazon Trust Services' roots, which AWS endpoints chain to, are in
        // the compiled-in set.
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
        assert!(
            webpki_roots::TLS_SERVER_ROOTS
                .iter()
                .any(|a| String::from_utf8_lossy(a.subject.as_ref()).contains("Amazon Root CA 1"))
        );
        // Not a certificate: ignored, not a panic.
        let _ = tls_config(Some(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        ));
    }
}
