//! What the chat and webhook channels (SLACK, MICROSOFT_TEAMS, WEBHOOK) share:
//! their targets live in Secrets Manager, referenced by name from the
//! organisation's settings; their requests go out through a `Poster` that
//! checks every URL with the SSRF guard (`guard.rs`) and connects only to an
//! address it checked; each target has its own rate.
//!
//! A target's secret is named `{SECRET_PREFIX}{orgId}/{name}` (the IAM policy
//! grants the function that prefix only), and holds either the URL alone or
//! `{"url": "...", "signingSecret": "whsec_..."}`. The URL and the signing
//! secret never reach a log line, a delivery's reason or an error text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::model::NotificationChannel;
use crate::ports::SendError;
use crate::rate::RateLimiter;

use super::guard::{TargetUrl, TestOnlyAllowance, check_url};

/// A secret's value as read: `None` when there is no such secret.
pub trait Secrets: Send + Sync {
    fn secret<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, SendError>>;
}

/// One outbound POST, to an address the guard accepted.
pub struct WebPost {
    pub url: TargetUrl,
    pub headers: Vec<(&'static str, String)>,
    pub body: Arc<str>,
    pub timeout: Duration,
}

/// What the target answered: the status, `Retry-After` when given, a run or
/// request ID header when given, and the body's first bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebAnswer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub request_id: Option<String>,
    pub body: String,
}

/// Sends a POST. Implementations resolve the host once, refuse it unless
/// every address is public (or the test-only allowance names it), and connect
/// to a checked address; they follow no redirects. Errors never quote the URL:
/// refused before sending is permanent, no connection is transient, no answer
/// after sending is an unknown outcome.
pub trait Poster: Send + Sync {
    fn post<'a>(&'a self, request: &'a WebPost) -> BoxFuture<'a, Result<WebAnswer, SendError>>;
}

/// A target's secret: its URL, and a webhook's signing key.
#[derive(Clone)]
pub struct TargetSecret {
    pub url: String,
    pub signing_secret: Option<String>,
}

/// Never prints the URL or the key.
impl std::fmt::Debug for TargetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetSecret(<redacted>)")
    }
}

impl TargetSecret {
    /// The secret's value: a bare URL, or `{"url", "signingSecret"}`.
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let value = value.trim();
        if value.starts_with('{') {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Shape {
                url: String,
                #[serde(default)]
                signing_secret: Option<String>,
            }
            let s: Shape = serde_json::from_str(value)
                .map_err(|_| "the target's secret is not {\"url\", \"signingSecret\"} JSON")?;
            Ok(Self {
                url: s.url,
                signing_secret: s.signing_secret,
            })
        } else {
            Ok(Self {
                url: value.to_owned(),
                signing_secret: None,
            })
        }
    }
}

/// A target's name in the settings: what its secret's name ends with.
pub fn valid_target_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Secrets, cached per warm instance for at most `ttl` (a rotated URL is
/// picked up within it), at most `capacity` of them.
pub struct CachedSecrets {
    inner: Arc<dyn Secrets>,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl CachedSecrets {
    pub fn new(inner: Arc<dyn Secrets>, ttl: Duration, capacity: usize) -> Self {
        Self {
            inner,
            ttl,
            capacity: capacity.max(1),
            cache: Mutex::default(),
        }
    }
}

impl Secrets for CachedSecrets {
    fn secret<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, SendError>> {
        Box::pin(async move {
            let now = Instant::now();
            if let Some((at, v)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id)
                && now.duration_since(*at) < self.ttl
            {
                return Ok(v.clone());
            }
            let value = self.inner.secret(id).await?;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= self.capacity {
                cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
                if cache.len() >= self.capacity {
                    cache.clear();
                }
            }
            cache.insert(id.to_owned(), (now, value.clone()));
            Ok(value)
        })
    }
}

/// The chat and webhook channels' outside world: the poster, the secrets,
/// this deployment's secret prefix, the test-only allowance (empty in the
/// stack) and one rate limiter per target.
pub struct WebTargets {
    pub poster: Arc<dyn Poster>,
    pub secrets: Arc<dyn Secrets>,
    pub secret_prefix: String,
    pub allowance: TestOnlyAllowance,
    limits: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl WebTargets {
    pub fn new(
        poster: Arc<dyn Poster>,
        secrets: Arc<dyn Secrets>,
        secret_prefix: impl Into<String>,
        allowance: TestOnlyAllowance,
    ) -> Self {
        Self {
            poster,
            secrets,
            secret_prefix: secret_prefix.into(),
            allowance,
            limits: Mutex::default(),
        }
    }

    /// No targets configured: every chat and webhook send fails with why.
    pub fn unconfigured() -> Self {
        Self::new(
            Arc::new(Unconfigured),
            Arc::new(Unconfigured),
            "",
            TestOnlyAllowance::default(),
        )
    }

    /// The secret's name for an organisation's target.
    pub fn secret_id(&self, org: &str, name: &str) -> String {
        format!("{}{org}/{name}", self.secret_prefix)
    }

    /// The target's rate limiter, shared by every send to it from this
    /// instance (Slack: 1 a second per webhook; Teams: 4).
    pub fn limiter(
        &self,
        channel: &NotificationChannel,
        org: &str,
        name: &str,
    ) -> Option<Arc<RateLimiter>> {
        let per_second = per_target_rate(channel)?;
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.len() > 10_000 {
            limits.clear();
        }
        Some(
            limits
                .entry(format!("{channel}#{org}/{name}"))
                .or_insert_with(|| Arc::new(RateLimiter::new(per_second, 1)))
                .clone(),
        )
    }

    /// The target's secret, read (through the cache) and its URL checked
    /// syntactically; `hosts` are the channel's known hosts.
    pub async fn target(
        &self,
        org: &str,
        name: &str,
        hosts: Option<&[&str]>,
    ) -> Result<(TargetSecret, TargetUrl), SendError> {
        if self.secret_prefix.is_empty() {
            return Err(SendError::permanent(
                "TargetsNotConfigured",
                "this deployment has no SECRET_PREFIX: chat and webhook targets cannot be read",
            ));
        }
        let id = self.secret_id(org, name);
        let value = self.secrets.secret(&id).await?.ok_or_else(|| {
            SendError::permanent(
                "TargetSecretNotFound",
                format!("the target's secret '{name}' does not exist for this organization"),
            )
        })?;
        let secret = TargetSecret::parse(&value)
            .map_err(|why| SendError::permanent("TargetSecretMalformed", why))?;
        let url = check_url(&secret.url, hosts, &self.allowance).map_err(|why| {
            SendError::permanent("TargetRefused", format!("target URL refused: {why}"))
        })?;
        Ok((secret, url))
    }
}

/// Messages a second per target, for the channels that have a documented limit.
pub fn per_target_rate(channel: &NotificationChannel) -> Option<f64> {
    match channel {
        NotificationChannel::Slack => Some(1.0),
        NotificationChannel::MicrosoftTeams => Some(4.0),
        _ => None,
    }
}

struct Unconfigured;

impl Poster for Unconfigured {
    fn post<'a>(&'a self, _: &'a WebPost) -> BoxFuture<'a, Result<WebAnswer, SendError>> {
        Box::pin(async {
            Err(SendError::permanent(
                "TargetsNotConfigured",
                "this deployment sends no chat or webhook messages",
            ))
        })
    }
}

impl Secrets for Unconfigured {
    fn secret<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<String>, SendError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A target's short answer code (Slack's `channel_not_found`), when the body
/// is one: lower-case letters and underscores only, so nothing else of a
/// body is ever quoted.
pub fn answer_code(body: &str) -> Option<&str> {
    let b = body.trim();
    ((1..=48).contains(&b.len()) && b.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .then_some(b)
}

/// A `Retry-After` value in seconds (dates are not honoured: a bounded default).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_either_shape_and_never_print() {
        let s = TargetSecret::parse("https://hooks.slack.com/services/T/B/X").unwrap();
        assert_eq!(s.signing_secret, None);
        let s =
            TargetSecret::parse(r#"{"url":"https://a.example/h","signingSecret":"whsec_AAAA"}"#)
                .unwrap();
        assert_eq!(s.signing_secret.as_deref(), Some("whsec_AAAA"));
        assert!(!format!("{s:?}").contains("example"));
        assert!(TargetSecret::parse("{nope").is_err());
    }

    #[test]
    fn only_short_code_bodies_are_quoted() {
        assert_eq!(
            answer_code("channel_not_found\n"),
            Some("channel_not_found")
        );
        assert_eq!(answer_code("<html>you@x.com</html>"), None);
        assert_eq!(answer_code(""), None);
    }

    #[test]
    fn target_names_are_plain() {
        assert!(valid_target_name("sales-alerts_1"));
        assert!(!valid_target_name("../other-org/x"));
        assert!(!valid_target_name(""));
    }
}
