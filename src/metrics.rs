//! CloudWatch metrics in Embedded Metric Format: one JSON line per document on
//! stdout, which CloudWatch Logs turns into metrics. Built from the answer at
//! the edge, so the use case knows nothing of it. Per invocation: recipients,
//! fan-out duration, cold start and internal errors; per channel: deliveries sent, skipped
//! and failed.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::model::NotificationEvent;

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

/// The EMF documents for one invocation. `event` is the answer when there is
/// one; `outcome` names how it ended (`ok`, `bad_request`, `not_found`, ...).
/// The per-channel documents come from `deliveries` when given (a worker's
/// counts), else from the event's `info.deliverySummary`.
pub fn documents(
    cfg: &MetricsConfig,
    cold_start: bool,
    request_id: &str,
    outcome: &str,
    event: Option<&NotificationEvent>,
    deliveries: Option<&Map<String, Value>>,
) -> Vec<Value> {
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
    let summary = deliveries.or_else(|| event?.info.as_ref()?.get("deliverySummary")?.as_object());
    let event_id = event.and_then(|e| e.event_id.as_ref());
    for (channel, counts) in summary.into_iter().flatten() {
        let mut f = base.clone();
        if let Some(id) = event_id {
            f.insert("eventID".into(), json!(id));
        }
        f.insert("channel".into(), json!(channel));
        for (key, name) in [
            ("sent", "DeliveriesSent"),
            ("skipped", "DeliveriesSkipped"),
            ("failed", "DeliveriesFailed"),
        ] {
            f.insert(
                name.into(),
                json!(counts.get(key).and_then(Value::as_u64).unwrap_or(0)),
            );
        }
        let d = directive(
            &cfg.namespace,
            &["service", "channel"],
            &[
                ("DeliveriesSent", "Count"),
                ("DeliveriesSkipped", "Count"),
                ("DeliveriesFailed", "Count"),
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
            "info": {"deliverySummary": {"EMAIL": {"sent": 2, "skipped": 0, "failed": 0}, "SMS": {"sent": 1, "skipped": 0, "failed": 1}}}
        }))
        .unwrap();
        let docs = documents(
            &MetricsConfig::default(),
            true,
            "r1",
            "ok",
            Some(&event),
            None,
        );
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
            "bad_request",
            None,
            None,
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["outcome"], "bad_request");
        assert!(docs[0].get("ColdStart").is_none());
        assert!(docs[0].get("InternalErrors").is_none());
        let docs = documents(
            &MetricsConfig::default(),
            false,
            "r3",
            "internal",
            None,
            None,
        );
        assert_eq!(docs[0]["InternalErrors"], 1);
    }
}
