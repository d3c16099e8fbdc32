//! Typed settings, read once at start-up from the environment.

use crate::metrics::MetricsConfig;
use crate::model::EmailAddress;

/// Deliveries in flight at once when `DELIVERY_CONCURRENCY` is not set.
pub const DEFAULT_DELIVERY_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `TABLE_NAME`: the one DynamoDB table.
    pub table_name: String,
    /// `SENDER_EMAIL`: the verified SES identity emails come from.
    pub sender_email: EmailAddress,
    /// `SES_CONFIGURATION_SET`: when set, emails go through it, tagged.
    pub ses_configuration_set: Option<String>,
    /// `DELIVERY_CONCURRENCY` (1-64): deliveries in flight at once.
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
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "DELIVERY_CONCURRENCY",
                    why: format!("{v:?} is not a whole number from 1 to 64"),
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
        Ok(Self {
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
    fn defaults_and_bounds() {
        let c = Config::from_lookup(lookup(&[("TABLE_NAME", "t"), ("SENDER_EMAIL", "a@b.co")]))
            .unwrap();
        assert_eq!(c.delivery_concurrency, DEFAULT_DELIVERY_CONCURRENCY);
        assert_eq!(c.ses_configuration_set, None);
        assert_eq!(c.email_per_second, Some(DEFAULT_EMAIL_PER_SECOND));
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
}
