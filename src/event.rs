//! Which kind of Lambda event arrived, and where it goes: HTTP events (API
//! Gateway REST and HTTP API, ALB, Function URLs) through `lambda_http`, and
//! the direct invocation JSON of another Lambda.

use std::convert::Infallible;
use std::sync::Mutex;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Request, Service, service_fn};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Access;
use crate::metrics::{MetricsConfig, Outcome};
use crate::model::{ContactIdList, CreatedBy, IdempotencyKey, OfferId, OrgId};
use crate::notify::Sweeper;
use crate::notify::{ErrorKind, NotifyCommand, NotifyContacts, NotifyError};
use crate::ports::WorkBatch;
use crate::tracking::{OpenTracker, Recorded};
use crate::work::Work;

/// The direct invocation of docs/contract.md -> Inputs (also an EventBridge
/// event's `detail`). Checked as strictly as the HTTP body: a key it does
/// not know is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectInvocation {
    pub org_id: String,
    pub offer_id: String,
    #[serde(default)]
    pub contact_ids: Option<Vec<String>>,
    /// Makes a retry safe: a repeat within the window answers with the stored event.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub created_by: Option<CreatedBy>,
    /// Answer what would happen; store, send, queue and claim nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Names to short values, stored on the event and read by templates.
    #[serde(default)]
    pub custom_fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A direct invocation's failure, as the Lambda error the invoker sees.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    KeyInProgress(String),
    #[error("{0}")]
    KeyReused(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error; quote request id {request_id} when reporting it")]
    Internal { request_id: String },
}

impl From<DirectError> for Diagnostic {
    fn from(e: DirectError) -> Self {
        let error_type = match &e {
            DirectError::BadRequest(_) => "BadRequest",
            DirectError::NotFound(_) => "NotFound",
            DirectError::KeyInProgress(_) => "KeyInProgress",
            DirectError::KeyReused(_) => "KeyReused",
            DirectError::Forbidden(_) => "Forbidden",
            DirectError::Internal { .. } => "InternalError",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

pub enum Incoming {
    Http(Box<LambdaRequest>),
    Direct(DirectInvocation),
    /// An EventBridge "Notify Offer Contacts" event: its `source` and detail.
    EventBridge {
        source: String,
        invocation: DirectInvocation,
    },
    /// The sweeper's schedule (an EventBridge scheduled event).
    Schedule,
    /// SNS records (SES events from the configuration set): (MessageId, Message).
    Sns(Vec<(String, String)>),
    /// A CloudWatch Logs subscription event (SNS's SMS delivery logs): its
    /// `awslogs.data`.
    Logs(String),
    /// SQS records from the work queue.
    Sqs(Vec<SqsRecord>),
}

impl Incoming {
    pub fn kind(&self) -> crate::config::InputKind {
        use crate::config::InputKind;
        match self {
            Incoming::Http(_) => InputKind::Http,
            Incoming::Direct(_) => InputKind::Direct,
            Incoming::EventBridge { .. } => InputKind::EventBridge,
            Incoming::Schedule => InputKind::Schedule,
            Incoming::Sns(_) => InputKind::Sns,
            Incoming::Logs(_) => InputKind::Logs,
            Incoming::Sqs(_) => InputKind::Sqs,
        }
    }
}

/// What the worker needs of one SQS record.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsRecord {
    pub message_id: String,
    pub body: String,
    /// `attributes.ApproximateReceiveCount`: 1 on the first receive.
    pub receive_count: u32,
}

/// Tells the event kinds apart by their shape.
pub fn classify(payload: Value) -> Result<Incoming, DirectError> {
    let Value::Object(map) = &payload else {
        return Err(DirectError::BadRequest(
            "the event must be a JSON object".into(),
        ));
    };
    if map.contains_key("requestContext")
        || map.contains_key("httpMethod")
        || map.contains_key("routeKey")
    {
        return serde_json::from_value::<LambdaRequest>(payload)
            .map(|r| Incoming::Http(Box::new(r)))
            .map_err(|_| DirectError::BadRequest("the event looks like an HTTP event but is not one API Gateway, ALB or a Function URL sends".into()));
    }
    if let Some(data) = map
        .get("awslogs")
        .and_then(|a| a.get("data"))
        .and_then(Value::as_str)
    {
        return Ok(Incoming::Logs(data.to_owned()));
    }
    if let Some(records) = map.get("Records").and_then(Value::as_array) {
        let sns = records
            .iter()
            .all(|r| r.get("EventSource").and_then(Value::as_str) == Some("aws:sns"));
        let sqs = records
            .iter()
            .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs"));
        if sqs && !records.is_empty() {
            let records = records
                .iter()
                .map(|r| SqsRecord {
                    message_id: r["messageId"].as_str().unwrap_or_default().to_owned(),
                    body: r["body"].as_str().unwrap_or_default().to_owned(),
                    receive_count: r["attributes"]["ApproximateReceiveCount"]
                        .as_str()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1),
                })
                .collect();
            return Ok(Incoming::Sqs(records));
        }
        if sns && !records.is_empty() {
            let messages = records
                .iter()
                .map(|r| {
                    let field = |k: &str| r["Sns"][k].as_str().unwrap_or_default().to_owned();
                    (field("MessageId"), field("Message"))
                })
                .collect();
            return Ok(Incoming::Sns(messages));
        }
    }
    // EventBridge: the detail is the direct invocation. Without a key of its
    // own, the EventBridge event's id is one, so a redelivery notifies no one twice.
    if map.get("detail-type").and_then(Value::as_str) == Some(EVENTBRIDGE_DETAIL_TYPE) {
        let event_id = map.get("id").and_then(Value::as_str).map(str::to_owned);
        let source = map
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let detail = map.get("detail").cloned().unwrap_or(Value::Null);
        let mut invocation = parse_direct(detail)?;
        if invocation.idempotency_key.is_none() {
            invocation.idempotency_key = event_id;
        }
        return Ok(Incoming::EventBridge { source, invocation });
    }
    // Only AWS may send events of source aws.events (PutEvents refuses it).
    if map.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        && map.get("source").and_then(Value::as_str) == Some("aws.events")
    {
        return Ok(Incoming::Schedule);
    }
    if map.contains_key("orgId") || map.contains_key("offerId") {
        return parse_direct(payload).map(Incoming::Direct);
    }
    Err(DirectError::BadRequest(
        "unsupported event: expected an HTTP event, {\"orgId\", \"offerId\", \"contactIds\"}, or an EventBridge event of detail-type \"Notify Offer Contacts\"".into(),
    ))
}

/// The detail-type of EventBridge events that trigger a notification.
pub const EVENTBRIDGE_DETAIL_TYPE: &str = "Notify Offer Contacts";

fn parse_direct(payload: Value) -> Result<DirectInvocation, DirectError> {
    serde_json::from_value::<DirectInvocation>(payload)
        // serde's own text can quote the offending value (an address, say),
        // and errors are logged: describe the expected shape instead.
        .map_err(|_| {
            DirectError::BadRequest(
                "the direct invocation must be {\"orgId\": string, \"offerId\": string, \"contactIds\": [string] or null, \"idempotencyKey\": string, \"createdBy\": object, \"dryRun\": boolean}".into(),
            )
        })
}

/// What the edges need besides the use case: who is trusted, and where
/// metrics go (none: no EMF documents, as in tests).
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub access: Access,
    pub metrics: Option<MetricsConfig>,
}

/// The function's entry point for every event. With metrics configured,
/// each invocation also prints its CloudWatch EMF documents.
pub async fn handle<
    U: NotifyContacts
        + OpenTracker
        + Work
        + Sweeper
        + crate::read::EventReader
        + crate::feedback::FeedbackTracker,
>(
    use_case: &U,
    edge: &Edge,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    let LambdaEvent { payload, context } = event;
    let request_id = context.request_id.clone();
    let (answer, outcome) = dispatch(use_case, &edge.access, payload, context).await;
    if let Some(cfg) = &edge.metrics {
        crate::metrics::emit(&crate::metrics::documents(
            cfg,
            crate::metrics::take_cold_start(),
            &request_id,
            &outcome,
        ));
    }
    answer
}

async fn dispatch<
    U: NotifyContacts
        + OpenTracker
        + Work
        + Sweeper
        + crate::read::EventReader
        + crate::feedback::FeedbackTracker,
>(
    use_case: &U,
    access: &Access,
    payload: Value,
    context: lambda_runtime::Context,
) -> (Result<Value, Diagnostic>, Outcome) {
    let request_id = context.request_id.clone();
    let refused = |e: DirectError| {
        let label = direct_label(&e);
        (Err(e.into()), Outcome::refused(label))
    };
    let incoming = match classify(payload) {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(reason = %e, "event refused");
            return refused(e);
        }
    };
    let kind = incoming.kind();
    if !access.inputs.contains(&kind) {
        tracing::warn!(
            kind = kind.name(),
            "event refused: this function does not take that kind (INPUTS)"
        );
        return refused(DirectError::Forbidden(format!(
            "this function does not take {} events (INPUTS)",
            kind.name()
        )));
    }
    match incoming {
        Incoming::Http(request) => {
            let outcome = Mutex::new(None);
            let outcome_ref = &outcome;
            let mut adapter = Adapter::from(service_fn(|req: Request| async move {
                let (response, o) = crate::http::respond(use_case, access, req).await;
                *outcome_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
                Ok::<_, Infallible>(response)
            }));
            let response = match adapter.call(LambdaEvent::new(*request, context)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let outcome = outcome
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(Outcome::refused("internal"));
            match serde_json::to_value(response) {
                Ok(v) => (Ok(v), outcome),
                Err(_) => refused(DirectError::Internal { request_id }),
            }
        }
        Incoming::Sqs(records) => {
            let (answer, recorded) = work_batch(use_case, records, deadline(&context)).await;
            // The per-channel delivery metrics of this invocation's messages.
            (Ok(answer), Outcome::recorded("work", &recorded))
        }
        Incoming::Schedule => match use_case.sweep(deadline(&context)).await {
            Ok(swept) => {
                let mut outcome = Outcome::recorded("sweep", &swept.recorded);
                outcome.oldest_pending_age_seconds =
                    Some(swept.oldest_pending_age_seconds.unwrap_or(0));
                (
                    Ok(json!({
                        "stale": swept.stale, "finished": swept.finished, "requeued": swept.requeued,
                        "closed": swept.closed, "skipped": swept.skipped, "failed": swept.failed,
                        "oldestPendingAgeSeconds": swept.oldest_pending_age_seconds,
                    })),
                    outcome,
                )
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "sweep failed");
                refused(DirectError::Internal { request_id })
            }
        },
        Incoming::Logs(data) => match sms_logs(use_case, &data).await {
            Ok(counts) => (Ok(counts), Outcome::refused("tracked")),
            Err(e) => {
                // A storage failure: fail the invocation so that it comes again.
                tracing::error!(error = %crate::error_chain(&e), "applying SMS delivery logs failed");
                refused(DirectError::Internal { request_id })
            }
        },
        Incoming::Sns(messages) => match track_opens(use_case, &messages).await {
            Ok(counts) => (Ok(counts), Outcome::refused("tracked")),
            Err(e) => {
                // A storage failure: fail the invocation so that SNS delivers again.
                tracing::error!(error = %crate::error_chain(&e), "recording opens failed");
                refused(DirectError::Internal { request_id })
            }
        },
        Incoming::Direct(_) if !access.direct_invocations => {
            tracing::warn!(
                "direct invocation refused: ALLOW_WITHOUT_AUTHORIZER does not list direct"
            );
            refused(DirectError::Forbidden(
                "this function does not take direct invocations (ALLOW_WITHOUT_AUTHORIZER does not list direct)".into(),
            ))
        }
        Incoming::EventBridge { source, .. } if !access.event_sources.contains(&source) => {
            tracing::warn!(source = %source.chars().take(64).collect::<String>(), "EventBridge event refused: its source is not in EVENT_SOURCES");
            refused(DirectError::Forbidden(
                "this function does not take Notify Offer Contacts events from that source (EVENT_SOURCES)".into(),
            ))
        }
        Incoming::Direct(invocation) | Incoming::EventBridge { invocation, .. } => {
            let cmd = match direct_command(invocation, deadline(&context)) {
                Ok(c) => c,
                Err(e) => return refused(e),
            };
            match use_case.notify_counted(cmd).await {
                Ok(n) => match serde_json::to_value(&n.event) {
                    Ok(v) => (Ok(v), Outcome::answered(&n)),
                    Err(_) => refused(DirectError::Internal { request_id }),
                },
                Err(e) => refused(direct_error(e, request_id)),
            }
        }
    }
}

/// Runs the work messages of one SQS event side by side (sharing the rate
/// limits) and answers with the ones to deliver again, as
/// `ReportBatchItemFailures` expects. A message that cannot be read fails
/// too: after its receives it lands in the dead-letter queue for a person.
async fn work_batch<U: Work>(
    worker: &U,
    records: Vec<SqsRecord>,
    deadline: Option<tokio::time::Instant>,
) -> (Value, Vec<crate::model::Delivery>) {
    let runs = records.into_iter().map(|r| async move {
        let batch = match serde_json::from_str::<WorkBatch>(&r.body) {
            Ok(b) => b,
            Err(_) => {
                tracing::error!(sqs_message_id = %r.message_id, receive_count = r.receive_count, "work message is not a work batch; left for the dead-letter queue");
                return Err(r.message_id);
            }
        };
        match worker.work(batch, r.receive_count, deadline).await {
            Ok(w) => Ok(w.recorded),
            Err(_) => Err(r.message_id),
        }
    });
    let mut failed: Vec<Value> = Vec::new();
    let mut recorded = Vec::new();
    for result in futures::future::join_all(runs).await {
        match result {
            Ok(r) => recorded.extend(r),
            Err(id) => failed.push(json!({"itemIdentifier": id})),
        }
    }
    (json!({ "batchItemFailures": failed }), recorded)
}

/// Applies the opens among SES events; everything else is counted and dropped.
async fn track_opens<U: OpenTracker + crate::feedback::FeedbackTracker>(
    tracker: &U,
    messages: &[(String, String)],
) -> Result<Value, crate::ports::StoreError> {
    use crate::feedback::Applied;
    let (mut recorded, mut duplicates, mut ignored, mut dropped) = (0, 0, 0, 0);
    let mut applied = 0;
    for (message_id, message) in messages {
        let ses = crate::tracking::read_ses(message);
        match ses
            .as_ref()
            .map_err(|why| *why)
            .and_then(|ses| crate::tracking::open_from(message_id, ses))
        {
            // Not an open: a delivery, bounce, complaint, click...
            Ok(None) => match ses
                .as_ref()
                .map_err(|why| *why)
                .and_then(|ses| crate::feedback::feedback_from(message_id, ses))
            {
                Ok(None) => ignored += 1,
                Err(why) => {
                    tracing::warn!(reason = why, sns_message_id = %message_id, "SES event dropped");
                    dropped += 1;
                }
                Ok(Some(f)) => match tracker.apply_feedback(&f).await? {
                    Applied::Moved(outcome) => {
                        tracing::info!(event_id = %f.event_id, outcome = outcome.as_str(), "provider feedback applied");
                        applied += 1;
                    }
                    Applied::Counted => applied += 1,
                    Applied::Stale => duplicates += 1,
                    Applied::Unknown => {
                        tracing::warn!(event_id = %f.event_id, sns_message_id = %message_id, "feedback names no delivery of ours; dropped");
                        dropped += 1;
                    }
                },
            },
            Err(why) => {
                tracing::warn!(reason = why, sns_message_id = %message_id, "SES event dropped");
                dropped += 1;
            }
            Ok(Some(open)) => match tracker.record_open(&open).await? {
                Recorded::First | Recorded::Again => recorded += 1,
                Recorded::Duplicate => duplicates += 1,
                Recorded::UnknownEvent => {
                    tracing::warn!(event_id = %open.event_id, sns_message_id = %message_id, "open names an unknown event; dropped");
                    dropped += 1;
                }
            },
        }
    }
    Ok(
        json!({"opensRecorded": recorded, "feedbackApplied": applied, "duplicates": duplicates, "ignored": ignored, "dropped": dropped}),
    )
}

/// Applies SNS's SMS delivery logs to the ledger. A payload or line that
/// cannot be read is logged and dropped (never the number: it is not read).
async fn sms_logs<U: crate::feedback::FeedbackTracker>(
    tracker: &U,
    data: &str,
) -> Result<Value, crate::ports::StoreError> {
    use crate::feedback::Applied;
    let lines = match crate::feedback::parse_sms_logs(data) {
        Ok(l) => l,
        Err(why) => {
            tracing::warn!(reason = why, "SMS delivery log payload dropped");
            return Ok(json!({"applied": 0, "duplicates": 0, "dropped": 1}));
        }
    };
    let (mut applied, mut duplicates, mut dropped) = (0, 0, 0);
    for line in lines {
        match line {
            Err(why) => {
                tracing::warn!(reason = why, "SMS delivery log line dropped");
                dropped += 1;
            }
            Ok(r) => match tracker.apply_sms_report(&r).await? {
                Applied::Moved(o) => {
                    tracing::info!(sns_message_id = %r.sns_message_id, outcome = o.as_str(), "SMS outcome applied");
                    applied += 1;
                }
                Applied::Counted => applied += 1,
                Applied::Stale => duplicates += 1,
                Applied::Unknown => {
                    tracing::warn!(sns_message_id = %r.sns_message_id, "SMS log names no delivery of ours; dropped");
                    dropped += 1;
                }
            },
        }
    }
    Ok(json!({"applied": applied, "duplicates": duplicates, "dropped": dropped}))
}

fn direct_label(e: &DirectError) -> &'static str {
    match e {
        DirectError::BadRequest(_) => "bad_request",
        DirectError::NotFound(_) => "not_found",
        DirectError::KeyInProgress(_) => "conflict",
        DirectError::KeyReused(_) => "key_reused",
        DirectError::Forbidden(_) => "forbidden",
        DirectError::Internal { .. } => "internal",
    }
}

/// When the runtime will stop this invocation, as an `Instant`; `None` when
/// the context carries no deadline (0, as in a test's default context).
pub fn deadline(ctx: &lambda_runtime::Context) -> Option<tokio::time::Instant> {
    if ctx.deadline == 0 {
        return None;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let remaining_ms = ctx.deadline as i64 - now_ms as i64;
    tracing::debug!(
        deadline_ms = ctx.deadline,
        remaining_ms,
        "invocation deadline"
    );
    // Lambda sends an epoch time at most 15 minutes ahead. Anything else (local
    // emulators send a duration, e.g. 600000) is no deadline at all, rather than
    // one that passed decades ago and would stop every send.
    if !(-60_000..=16 * 60_000).contains(&remaining_ms) {
        return None;
    }
    Some(
        tokio::time::Instant::now()
            + std::time::Duration::from_millis(ctx.deadline.saturating_sub(now_ms)),
    )
}

fn direct_command(
    inv: DirectInvocation,
    deadline: Option<tokio::time::Instant>,
) -> Result<NotifyCommand, DirectError> {
    let bad = |e: crate::model::InvalidValue| DirectError::BadRequest(e.to_string());
    let idempotency_key = inv
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|e| DirectError::BadRequest(format!("idempotencyKey: {e}")))?;
    Ok(NotifyCommand {
        idempotency_key,
        deadline,
        org_id: OrgId::parse(&inv.org_id).map_err(bad)?,
        offer_id: OfferId::parse(&inv.offer_id).map_err(bad)?,
        contact_ids: inv
            .contact_ids
            .as_deref()
            .map(ContactIdList::parse)
            .transpose()
            .map_err(bad)?,
        created_by: inv.created_by,
        dry_run: inv.dry_run,
        custom_fields: inv
            .custom_fields
            .map(crate::model::CustomFields::parse)
            .transpose()
            .map_err(bad)?
            .flatten(),
    })
}

fn direct_error(e: NotifyError, request_id: String) -> DirectError {
    match e.kind() {
        ErrorKind::BadRequest => DirectError::BadRequest(e.to_string()),
        ErrorKind::NotFound => DirectError::NotFound(e.to_string()),
        ErrorKind::KeyInProgress => DirectError::KeyInProgress(e.to_string()),
        ErrorKind::KeyReused => DirectError::KeyReused(e.to_string()),
        ErrorKind::Internal => {
            tracing::error!(error = %crate::error_chain(&e), "direct invocation failed");
            DirectError::Internal { request_id }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_read_from_the_context() {
        let mut ctx = lambda_runtime::Context::default();
        assert_eq!(deadline(&ctx), None);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        ctx.deadline = now_ms + 10_000;
        let left = deadline(&ctx).unwrap() - tokio::time::Instant::now();
        assert!(
            left > std::time::Duration::from_millis(9_000)
                && left <= std::time::Duration::from_millis(10_000),
            "{left:?}"
        );
        // What cargo-lambda's emulator sends: a duration, not a time.
        ctx.deadline = 600_000;
        assert_eq!(deadline(&ctx), None);
    }
}
