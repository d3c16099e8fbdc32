//! CloudWatch metrics in Embedded Metric Format: one JSON line per document on
//! stdout, which CloudWatch Logs turns into metrics. Built from the answer at
//! the edge, so the use case knows nothing of it. Per invocation: recipients,
//! fan-out duration, cold start and internal errors; per channel: deliveries sent, skipped
//! and failed.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::model::NotificationEvent;
use crate::notify::Notified;

/// How an invocation ended, for its metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `ok`, `replay`, `bad_request`, `forbidden`, `not_found`, ..., `work`, `sweep`.
    pub label: &'static str,
    /// The event a request created or resumed (none for a replay).
    pub event: Option<NotificationEvent>,
    /// Per-channel counts, as in `info.deliverySummary`, of the deliveries
    /// this invocation itself recorded.
    pub deliveries: Option<Map<String, Value>>,
    /// The sweeper's reading: age of the oldest PENDING event.
    pub oldest_pending_age_seconds: Option<i64>,
}

impl Outcome {
    /// A request answered with an event: its metrics count only what this
    /// invocation recorded, and nothing for a replayed answer.
    pub fn answered(n: &Notified) -> Self {
        let (summary, _, _) = crate::notify::summarise(&n.recorded);
        // A dry run sent nothing and created nothing: no recipients counted.
        let dry = n
            .event
            .info
            .as_ref()
            .is_some_and(|i| i.get("dryRun") == Some(&Value::Bool(true)));
        Self {
            label: if n.replay {
                "replay"
            } else if dry {
                "dry_run"
            } else {
                "ok"
            },
            event: (!n.replay && !dry).then(|| n.event.clone()),
            deliveries: Some(summary),
            oldest_pending_age_seconds: None,
        }
    }

    /// An invocation that recorded `deliveries` without an event of its own
    /// (a worker's, the sweeper's).
    pub fn recorded(label: &'static str, deliveries: &[crate::model::Delivery]) -> Self {
        let (summary, _, _) = crate::notify::summarise(deliveries);
        Self {
            label,
            event: None,
            deliveries: Some(summary),
            oldest_pending_age_seconds: None,
        }
    }

    /// An invocation that ended without recording anything.
    pub fn refused(label: &'static str) -> Self {
        Self {
            label,
            event: None,
            deliveries: None,
            oldest_pending_age_seconds: None,
        }
    }
}

static COLD: AtomicBool = AtomicBool::new(true);

/// Where metrics go and under which names (Powertools' variables).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `POWERTOOLS_METRICS_NAMESPACE`, default `NotifyOfferContacts`.
    pub namespace: String,
    /// `POWERTOOLS_SERVICE_NAME`, default `notify-offer-contacts`: the `service` dimension.
    pub service: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            namespace: "NotifyOfferContacts".into(),
            service: "notify-offer-contacts".into(),
        }
    }
}

/// True once per process: on its first invocation.
pub fn take_cold_start() -> bool {
    COLD.swap(false, Ordering::SeqCst)
}

fn directive(namespace: &str, dimensions: &[&str], metrics: &[(&str, &str)]) -> Value {
    json!({
        "Namespace": namespace,
        "Dimensions": [dimensions],
        "Metrics": metrics.iter().map(|(name, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
    })
}

fn document(now_ms: i128, directive: Value, fields: Map<String, Value>) -> Value {
    let mut doc = fields;
    doc.insert(
        "_aws".into(),
        json!({"Timestamp": now_ms, "CloudWatchMetrics": [directive]}),
    );
    Value::Object(doc)
}

/// The EMF documents for one invocation: one for the invocation, and one
/// per channel of the deliveries it recorded itself (so a replay or a
/// resume never counts again what an earlier invocation sent).
pub fn documents(
    cfg: &MetricsConfig,
    cold_start: bool,
    request_id: &str,
    ended: &Outcome,
) -> Vec<Value> {
    let outcome = ended.label;
    let event = ended.event.as_ref();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut base = Map::new();
    base.insert("service".into(), json!(cfg.service));
    base.insert("requestId".into(), json!(request_id));
    base.insert("outcome".into(), json!(outcome));

    let mut fields = base.clone();
    let mut metrics: Vec<(&str, &str)> = vec![("Requests", "Count")];
    fields.insert("Requests".into(), json!(1));
    if outcome == "internal" {
        // An HTTP 500 is a successful invocation to Lambda: count it ourselves.
        metrics.push(("InternalErrors", "Count"));
        fields.insert("InternalErrors".into(), json!(1));
    }
    if cold_start {
        metrics.push(("ColdStart", "Count"));
        fields.insert("ColdStart".into(), json!(1));
    }
    let mut docs = Vec::new();
    if let Some(event) = event {
        fields.insert("eventID".into(), json!(event.event_id));
        metrics.push(("Recipients", "Count"));
        fields.insert(
            "Recipients".into(),
            json!(event.contact_ids.as_ref().map_or(0, Vec::len)),
        );
        if let (Some(start), Some(end)) = (event.timestamp, event.last_update_time) {
            metrics.push(("FanOutDuration", "Milliseconds"));
            fields.insert(
                "FanOutDuration".into(),
                json!((end - start).whole_milliseconds()),
            );
        }
    }
    if let Some(age) = ended.oldest_pending_age_seconds {
        metrics.push(("OldestPendingEventAge", "Seconds"));
        fields.insert("OldestPendingEventAge".into(), json!(age));
    }
    let summary = ended.deliveries.as_ref();
    let event_id = event.and_then(|e| e.event_id.as_ref());
    for (channel, counts) in summary.into_iter().flatten() {
        let mut f = base.clone();
        if let Some(id) = event_id {
            f.insert("eventID".into(), json!(id));
        }
        f.insert("channel".into(), json!(channel));
        let count = |key: &str| counts.get(key).and_then(Value::as_u64).unwrap_or(0);
        f.insert("DeliveriesSent".into(), json!(count("sent")));
        f.insert("DeliveriesSkipped".into(), json!(count("skipped")));
        // An unconfirmed delivery is not known to have arrived: it counts as
        // failed (so the failure alarms see it), and on its own.
        f.insert(
            "DeliveriesFailed".into(),
            json!(count("failed") + count("unconfirmed")),
        );
        f.insert("DeliveriesUnconfirmed".into(), json!(count("unconfirmed")));
        let d = directive(
            &cfg.namespace,
            &["service", "channel"],
            &[
                ("DeliveriesSent", "Count"),
                ("DeliveriesSkipped", "Count"),
                ("DeliveriesFailed", "Count"),
                ("DeliveriesUnconfirmed", "Count"),
            ],
        );
        docs.push(document(now_ms, d, f));
    }
    docs.insert(
        0,
        document(
            now_ms,
            directive(&cfg.namespace, &["service"], &metrics),
            fields,
        ),
    );
    docs
}

/// Writes the documents to stdout, one whole line each.
pub fn emit(docs: &[Value]) {
    let mut out = std::io::stdout().lock();
    for d in docs {
        let _ = serde_json::to_writer(&mut out, d)
            .and_then(|_| out.write_all(b"\n").map_err(serde_json::Error::io));
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_per_invocation_and_one_per_channel() {
        let event: NotificationEvent = serde_json::from_value(json!({
            "eventID": "e1", "contactIds": ["a", "b"],
            "timestamp": "2026-11-29T10:00:00.000Z", "lastUpdateTime": "2026-11-29T10:00:01.250Z",
        }))
        .unwrap();
        let ended = Outcome {
            label: "ok",
            event: Some(event),
            deliveries: json!({"EMAIL": {"sent": 2, "skipped": 0, "failed": 0}, "SMS": {"sent": 1, "skipped": 0, "failed": 1}})
                .as_object()
                .cloned(),
            oldest_pending_age_seconds: None,
        };
        let docs = documents(&MetricsConfig::default(), true, "r1", &ended);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["Recipients"], 2);
        assert_eq!(docs[0]["FanOutDuration"], 1250);
        assert_eq!(docs[0]["ColdStart"], 1);
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "NotifyOfferContacts"
        );
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service"]])
        );
        let sms = docs.iter().find(|d| d["channel"] == "SMS").unwrap();
        assert_eq!(
            (
                sms["DeliveriesSent"].as_u64(),
                sms["DeliveriesFailed"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert_eq!(
            sms["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "channel"]])
        );
    }

    #[test]
    fn a_refused_request_still_counts() {
        let docs = documents(
            &MetricsConfig::default(),
            false,
            "r2",
            &Outcome::refused("bad_request"),
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["outcome"], "bad_request");
        assert!(docs[0].get("ColdStart").is_none());
        assert!(docs[0].get("InternalErrors").is_none());
        let docs = documents(
            &MetricsConfig::default(),
            false,
            "r3",
            &Outcome::refused("internal"),
        );
        assert_eq!(docs[0]["InternalErrors"], 1);
    }

    #[test]
    fn unconfirmed_deliveries_count_as_failed_and_on_their_own() {
        let ended = Outcome {
            deliveries: json!({"EMAIL": {"sent": 1, "skipped": 0, "failed": 1, "unconfirmed": 2}})
                .as_object()
                .cloned(),
            ..Outcome::refused("work")
        };
        let docs = documents(&MetricsConfig::default(), false, "r4", &ended);
        let email = docs.iter().find(|d| d["channel"] == "EMAIL").unwrap();
        assert_eq!(email["DeliveriesFailed"], 3);
        assert_eq!(email["DeliveriesUnconfirmed"], 2);
    }

    #[test]
    fn a_replayed_answer_counts_no_delivery_again() {
        let event: NotificationEvent = serde_json::from_value(json!({
            "eventID": "e1", "contactIds": ["a", "b"],
            "info": {"deliverySummary": {"EMAIL": {"sent": 2, "skipped": 0, "failed": 0}}}
        }))
        .unwrap();
        let replay = Notified {
            event,
            recorded: Vec::new(),
            replay: true,
        };
        let docs = documents(
            &MetricsConfig::default(),
            false,
            "r5",
            &Outcome::answered(&replay),
        );
        assert_eq!(docs.len(), 1, "{docs:?}");
        assert_eq!(docs[0]["outcome"], "replay");
        assert!(docs[0].get("Recipients").is_none());
    }
}
