//! Typed settings, read once at start-up from the environment.

use crate::metrics::MetricsConfig;
use crate::model::EmailAddress;

/// The most deliveries in flight at once when `DELIVERY_CONCURRENCY` is not
/// set. Each channel holds only what its rate needs (rate x call time, Little's
/// law); this bounds an unlimited or very high quota.
pub const DEFAULT_DELIVERY_CONCURRENCY: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `TABLE_NAME`: the one DynamoDB table.
    pub table_name: String,
    /// `SENDER_EMAIL`: the verified SES identity emails come from.
    pub sender_email: EmailAddress,
    /// `SES_CONFIGURATION_SET`: when set, emails go through it, tagged.
    pub ses_configuration_set: Option<String>,
    /// `DELIVERY_CONCURRENCY` (1-512, default 128): the most deliveries in
    /// flight at once; each channel holds rate x call time of them.
    pub delivery_concurrency: usize,
    /// `EMAIL_PER_SECOND`, `SMS_PER_SECOND`, `TOPIC_PER_SECOND`: sends a second
    /// per channel; `None` (the value `0`) is unlimited.
    pub email_per_second: Option<f64>,
    pub sms_per_second: Option<f64>,
    pub topic_per_second: Option<f64>,
    /// `POWERTOOLS_METRICS_NAMESPACE`, `POWERTOOLS_SERVICE_NAME`.
    pub metrics: MetricsConfig,
    /// `IDEMPOTENCY_WINDOW_HOURS` (1-168, default 24): how long a key is remembered.
    pub idempotency_window: std::time::Duration,
    /// `WORK_QUEUE_URL`: the SQS queue large requests are handed to; unset:
    /// every request is served synchronously.
    pub work_queue_url: Option<String>,
    /// The hand-off knobs: `API_TIME_LIMIT_SECONDS` (default 29) times
    /// `SYNC_BUDGET_SHARE` (0-1, default 0.5) is the synchronous budget;
    /// `SYNC_MAX_RECIPIENTS` (default 500); `QUEUE_MESSAGE_DELIVERIES` (1-100,
    /// default 10); `WORK_QUEUE_MAX_RECEIVES` (1-1000, default 5, the queue's
    /// `maxReceiveCount`).
    pub hand_off: crate::notify::HandOff,
    /// `RATE_SPLIT` (1-1000, default 1): how many instances share the rates
    /// above; each sends at rate / `RATE_SPLIT`. A sum is accepted (`3+2`: the
    /// API function's reserved concurrency plus the workers' `MaximumConcurrency`).
    pub rate_split: u32,
    /// Who may call without an authorizer, and which claim names the org.
    pub access: Access,
    /// `TOPIC_ARN_PREFIX`: organisation topics must start with it (the
    /// template sets `arn:{partition}:sns:{region}:{account}:{OrgTopicPrefix}`);
    /// unset: the SNS channel fails for every organisation.
    pub topic_arn_prefix: Option<String>,
    /// `SECRET_PREFIX` (e.g. `notify-offer-contacts/targets/`): the Slack,
    /// Teams and webhook targets' secrets are `{prefix}{orgId}/{name}`; the
    /// IAM policy grants this prefix only. Unset: those channels fail with why.
    pub secret_prefix: String,
    /// `NOTIFY_TEST_ONLY_LOCAL_TARGETS` (`host:port`, comma separated): local
    /// receivers the chat and webhook channels may reach over plain http,
    /// past the SSRF guard. Tests and the demo only: the template never sets
    /// it, and `scripts/check-template.py` fails if it does.
    pub test_only_local_targets: Vec<String>,
}

/// What the edges trust. Fails closed: with nothing set, an HTTP request
/// without an authorizer, a direct invocation and an EventBridge event are
/// all refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `ORG_CLAIM` (default `organizationID`): the authorizer claim or
    /// context key that holds the caller's organisation (a Cognito ID token:
    /// `custom:organizationID`). An authorizer without it is a 403.
    pub org_claim: String,
    /// `ALLOW_WITHOUT_AUTHORIZER` contains `http`: HTTP requests that carry no
    /// authorizer context are served (cargo lambda watch, sam local). The
    /// stack never sets it for the HTTP API.
    pub http_without_authorizer: bool,
    /// `ALLOW_WITHOUT_AUTHORIZER` contains `direct`: direct invocations by
    /// other Lambdas (whom IAM lets invoke this function) are served.
    pub direct_invocations: bool,
    /// `EVENT_SOURCES`: the EventBridge `source` values whose "Notify Offer
    /// Contacts" events are served (comma-separated); none: no EventBridge event is.
    pub event_sources: Vec<String>,
    /// `INPUTS`: the kinds of event this function takes at all (comma-separated
    /// `http`, `direct`, `eventbridge`, `sns`, `sqs`, `schedule`, `logs`);
    /// unset: every kind. An event's shape is not its authentication: whoever
    /// IAM lets invoke a function can send any shape, so the stack gives each
    /// function only the kinds its triggers send (the API function
    /// `http,direct,eventbridge,sns,logs`; the worker `sqs,schedule`).
    pub inputs: Vec<InputKind>,
}

/// The kinds of Lambda event the function can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Http,
    Direct,
    EventBridge,
    Sns,
    Sqs,
    Schedule,
    /// CloudWatch Logs subscription events (SNS's SMS delivery logs).
    Logs,
}

impl InputKind {
    pub const ALL: [InputKind; 7] = [
        InputKind::Http,
        InputKind::Direct,
        InputKind::EventBridge,
        InputKind::Sns,
        InputKind::Sqs,
        InputKind::Schedule,
        InputKind::Logs,
    ];
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Http => "http",
            InputKind::Direct => "direct",
            InputKind::EventBridge => "eventbridge",
            InputKind::Sns => "sns",
            InputKind::Sqs => "sqs",
            InputKind::Schedule => "schedule",
            InputKind::Logs => "logs",
        }
    }
}

impl Default for Access {
    fn default() -> Self {
        Self {
            org_claim: "organizationID".into(),
            http_without_authorizer: false,
            direct_invocations: false,
            event_sources: Vec::new(),
            inputs: InputKind::ALL.to_vec(),
        }
    }
}

impl Access {
    /// Everything allowed without an authorizer, for local runs and tests.
    pub fn local() -> Self {
        Self {
            http_without_authorizer: true,
            direct_invocations: true,
            ..Self::default()
        }
    }
}

/// A new SES account (sandbox) may send 1 email a second.
pub const DEFAULT_EMAIL_PER_SECOND: f64 = 1.0;
/// A long-code origination number may send 1 SMS part a second.
pub const DEFAULT_SMS_PER_SECOND: f64 = 1.0;
/// SNS topics take thousands a second; this only guards a runaway loop.
pub const DEFAULT_TOPIC_PER_SECOND: f64 = 10.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is not valid: {why}")]
    Invalid { name: &'static str, why: String },
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let table_name = non_empty("TABLE_NAME").ok_or(ConfigError::Missing("TABLE_NAME"))?;
        let sender = non_empty("SENDER_EMAIL").ok_or(ConfigError::Missing("SENDER_EMAIL"))?;
        let sender_email = EmailAddress::parse(&sender).map_err(|e| ConfigError::Invalid {
            name: "SENDER_EMAIL",
            why: e.to_string(),
        })?;
        let delivery_concurrency = match non_empty("DELIVERY_CONCURRENCY") {
            None => DEFAULT_DELIVERY_CONCURRENCY,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=512).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "DELIVERY_CONCURRENCY",
                    why: format!("{v:?} is not a whole number from 1 to 512"),
                })?,
        };
        let rate = |name: &'static str, default: f64| -> Result<Option<f64>, ConfigError> {
            match non_empty(name) {
                None => Ok(Some(default)),
                Some(v) => match v.parse::<f64>() {
                    Ok(0.0) => Ok(None),
                    Ok(r) if r.is_finite() && r > 0.0 => Ok(Some(r)),
                    _ => Err(ConfigError::Invalid {
                        name,
                        why: format!(
                            "{v:?} is not a positive number of sends a second (0: unlimited)"
                        ),
                    }),
                },
            }
        };
        let defaults = MetricsConfig::default();
        let metrics = MetricsConfig {
            namespace: non_empty("POWERTOOLS_METRICS_NAMESPACE").unwrap_or(defaults.namespace),
            service: non_empty("POWERTOOLS_SERVICE_NAME").unwrap_or(defaults.service),
        };
        let idempotency_window = match non_empty("IDEMPOTENCY_WINDOW_HOURS") {
            None => std::time::Duration::from_secs(24 * 3600),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|h| (1..=168).contains(h))
                .map(|h| std::time::Duration::from_secs(h * 3600))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "IDEMPOTENCY_WINDOW_HOURS",
                    why: format!("{v:?} is not a whole number of hours from 1 to 168"),
                })?,
        };
        let whole = |name: &'static str,
                     default: u64,
                     range: std::ops::RangeInclusive<u64>|
         -> Result<u64, ConfigError> {
            match non_empty(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| ConfigError::Invalid {
                        name,
                        why: format!(
                            "{v:?} is not a whole number from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    }),
            }
        };
        let share = match non_empty("SYNC_BUDGET_SHARE") {
            None => 0.5,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x <= 1.0)
                .ok_or_else(|| ConfigError::Invalid {
                    name: "SYNC_BUDGET_SHARE",
                    why: format!("{v:?} is not a share from 0 to 1 (e.g. 0.5)"),
                })?,
        };
        let api_limit = whole("API_TIME_LIMIT_SECONDS", 29, 1..=900)?;
        let defaults_hand_off = crate::notify::HandOff::default();
        let hand_off = crate::notify::HandOff {
            sync_budget: std::time::Duration::from_secs_f64(api_limit as f64 * share),
            max_sync_recipients: whole("SYNC_MAX_RECIPIENTS", 500, 0..=1_000_000)? as usize,
            deliveries_per_message: whole("QUEUE_MESSAGE_DELIVERIES", 10, 1..=100)? as usize,
            max_receives: whole("WORK_QUEUE_MAX_RECEIVES", 5, 1..=1000)? as u32,
            ..defaults_hand_off
        };
        let mut access = Access::default();
        if let Some(claim) = non_empty("ORG_CLAIM") {
            if claim.len() > 128 || claim.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(ConfigError::Invalid {
                    name: "ORG_CLAIM",
                    why: "a claim name is one word of at most 128 characters".into(),
                });
            }
            access.org_claim = claim;
        }
        for part in non_empty("ALLOW_WITHOUT_AUTHORIZER")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part {
                "http" => access.http_without_authorizer = true,
                "direct" => access.direct_invocations = true,
                other => {
                    return Err(ConfigError::Invalid {
                        name: "ALLOW_WITHOUT_AUTHORIZER",
                        why: format!("{other:?} is not one of http, direct"),
                    });
                }
            }
        }
        if let Some(kinds) = non_empty("INPUTS") {
            access.inputs = kinds
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| {
                    InputKind::ALL
                        .into_iter()
                        .find(|i| i.name() == k)
                        .ok_or_else(|| ConfigError::Invalid {
                            name: "INPUTS",
                            why: format!(
                                "{k:?} is not one of http, direct, eventbridge, sns, sqs, schedule"
                            ),
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        access.event_sources = non_empty("EVENT_SOURCES")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let rate_split = match non_empty("RATE_SPLIT") {
            None => 1,
            Some(v) => v
                .split('+')
                .map(|n| {
                    n.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                })
                .sum::<Option<u32>>()
                .filter(|n| *n <= 2000)
                .ok_or_else(|| ConfigError::Invalid {
                    name: "RATE_SPLIT",
                    why: format!("{v:?} is not a whole number from 1 to 1000, or a sum of them"),
                })?,
        };
        let topic_arn_prefix = non_empty("TOPIC_ARN_PREFIX");
        if let Some(p) = &topic_arn_prefix
            && !p.starts_with("arn:")
        {
            return Err(ConfigError::Invalid {
                name: "TOPIC_ARN_PREFIX",
                why:
                    "it must start with arn: (e.g. arn:aws:sns:us-east-1:123456789012:notify-org-)"
                        .into(),
            });
        }
        let secret_prefix = non_empty("SECRET_PREFIX").unwrap_or_default();
        if !secret_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/.".contains(c))
            || !(secret_prefix.is_empty() || secret_prefix.ends_with('/'))
        {
            return Err(ConfigError::Invalid {
                name: "SECRET_PREFIX",
                why: "it may hold letters, digits and - _ / . only, and must end with / (e.g. notify-offer-contacts/targets/)".into(),
            });
        }
        let test_only_local_targets: Vec<String> = non_empty("NOTIFY_TEST_ONLY_LOCAL_TARGETS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if !test_only_local_targets.is_empty() {
            // The SSRF guard's hole for tests: loopback receivers only, and
            // never in a release build (what the stack deploys).
            if !cfg!(debug_assertions) {
                return Err(ConfigError::Invalid {
                    name: "NOTIFY_TEST_ONLY_LOCAL_TARGETS",
                    why: "it is for tests and the demo only; a release build never reaches local targets".into(),
                });
            }
            if test_only_local_targets
                .iter()
                .any(|t| !crate::channels::guard::TestOnlyAllowance::valid_entry(t))
            {
                return Err(ConfigError::Invalid {
                    name: "NOTIFY_TEST_ONLY_LOCAL_TARGETS",
                    why: "each entry must be a loopback receiver: 127.0.0.1:PORT, [::1]:PORT or localhost:PORT".into(),
                });
            }
        }
        Ok(Self {
            access,
            topic_arn_prefix,
            secret_prefix,
            test_only_local_targets,
            rate_split,
            work_queue_url: non_empty("WORK_QUEUE_URL"),
            hand_off,
            idempotency_window,
            metrics,
            email_per_second: rate("EMAIL_PER_SECOND", DEFAULT_EMAIL_PER_SECOND)?,
            sms_per_second: rate("SMS_PER_SECOND", DEFAULT_SMS_PER_SECOND)?,
            topic_per_second: rate("TOPIC_PER_SECOND", DEFAULT_TOPIC_PER_SECOND)?,
            table_name,
            sender_email,
            ses_configuration_set: non_empty("SES_CONFIGURATION_SET"),
            delivery_concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn missing_required_variables_are_named() {
        assert_eq!(
            Config::from_lookup(lookup(&[("SENDER_EMAIL", "a@b.co")])),
            Err(ConfigError::Missing("TABLE_NAME"))
        );
        assert_eq!(
            Config::from_lookup(lookup(&[("TABLE_NAME", "t"), ("SENDER_EMAIL", " ")])),
            Err(ConfigError::Missing("SENDER_EMAIL"))
        );
    }

    #[test]
    fn trust_is_explicit_and_the_rate_split_may_be_a_sum() {
        let c = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("ALLOW_WITHOUT_AUTHORIZER", "direct"),
            ("ORG_CLAIM", "custom:organizationID"),
            ("EVENT_SOURCES", "com.example.offers, com.example.crm"),
            ("RATE_SPLIT", "3+2"),
            ("INPUTS", "sqs, schedule"),
        ]))
        .unwrap();
        assert_eq!(c.access.inputs, [InputKind::Sqs, InputKind::Schedule]);
        assert!(c.access.direct_invocations && !c.access.http_without_authorizer);
        assert_eq!(c.access.org_claim, "custom:organizationID");
        assert_eq!(
            c.access.event_sources,
            ["com.example.offers", "com.example.crm"]
        );
        assert_eq!(c.rate_split, 5);
        for (name, value) in [
            ("ALLOW_WITHOUT_AUTHORIZER", "everyone"),
            ("INPUTS", "http,carrier-pigeon"),
            ("RATE_SPLIT", "3+x"),
            ("TOPIC_ARN_PREFIX", "notify-org-"),
        ] {
            let bad = Config::from_lookup(lookup(&[
                ("TABLE_NAME", "t"),
                ("SENDER_EMAIL", "a@b.co"),
                (name, value),
            ]));
            assert!(
                matches!(&bad, Err(ConfigError::Invalid { name: n, .. }) if *n == name),
                "{name}={value}: {bad:?}"
            );
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let c = Config::from_lookup(lookup(&[("TABLE_NAME", "t"), ("SENDER_EMAIL", "a@b.co")]))
            .unwrap();
        assert_eq!(c.delivery_concurrency, DEFAULT_DELIVERY_CONCURRENCY);
        assert_eq!(c.ses_configuration_set, None);
        assert_eq!(c.email_per_second, Some(DEFAULT_EMAIL_PER_SECOND));
        assert_eq!(c.work_queue_url, None);
        assert_eq!(c.hand_off, crate::notify::HandOff::default());
        assert_eq!(c.rate_split, 1);
        assert_eq!(
            c.access,
            Access::default(),
            "nothing is trusted without an authorizer"
        );
        assert_eq!(c.topic_arn_prefix, None);
        let tuned = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("WORK_QUEUE_URL", "http://q"),
            ("SYNC_BUDGET_SHARE", "0.25"),
            ("API_TIME_LIMIT_SECONDS", "20"),
            ("QUEUE_MESSAGE_DELIVERIES", "25"),
        ]))
        .unwrap();
        assert_eq!(
            tuned.hand_off.sync_budget,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(tuned.hand_off.deliveries_per_message, 25);
        let bad = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("SYNC_BUDGET_SHARE", "2"),
        ]));
        assert!(matches!(
            bad,
            Err(ConfigError::Invalid {
                name: "SYNC_BUDGET_SHARE",
                ..
            })
        ));
        let unlimited = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("SMS_PER_SECOND", "0"),
        ]))
        .unwrap();
        assert_eq!(unlimited.sms_per_second, None);
        let bad = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("EMAIL_PER_SECOND", "-1"),
        ]));
        assert!(matches!(
            bad,
            Err(ConfigError::Invalid {
                name: "EMAIL_PER_SECOND",
                ..
            })
        ));
        let bad = Config::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("SENDER_EMAIL", "a@b.co"),
            ("DELIVERY_CONCURRENCY", "0"),
        ]));
        assert!(matches!(
            bad,
            Err(ConfigError::Invalid {
                name: "DELIVERY_CONCURRENCY",
                ..
            })
        ));
    }

    #[test]
    fn chat_targets_settings_are_checked() {
        let base = [("TABLE_NAME", "t"), ("SENDER_EMAIL", "a@b.co")];
        let with = |k: &'static str, v: &'static str| {
            let mut l = base.to_vec();
            l.push((k, v));
            Config::from_lookup(lookup(&l))
        };
        assert_eq!(
            with("SECRET_PREFIX", "notify/targets/")
                .unwrap()
                .secret_prefix,
            "notify/targets/"
        );
        assert!(with("SECRET_PREFIX", "notify/targets").is_err());
        assert!(with("SECRET_PREFIX", "notify/*").is_err());
        // The SSRF guard's test hole: loopback only.
        for bad in [
            "hooks.slack.com:443",
            "10.0.0.1:80",
            "127.0.0.1",
            "metadata:80",
        ] {
            assert!(
                with("NOTIFY_TEST_ONLY_LOCAL_TARGETS", bad).is_err(),
                "{bad}"
            );
        }
        let c = with(
            "NOTIFY_TEST_ONLY_LOCAL_TARGETS",
            "127.0.0.1:8080, localhost:9",
        )
        .unwrap();
        assert_eq!(c.test_only_local_targets, ["127.0.0.1:8080", "localhost:9"]);
    }
}
