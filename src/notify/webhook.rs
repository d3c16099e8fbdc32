//! The WEBHOOK channel's place in the use case: once an event is closed, its
//! final form goes to the organisation's endpoint (`channels::webhook` signs
//! and reads the answers). With a work queue every attempt is a queue
//! message (`wh{n}`), so the POST's answer never waits for the endpoint and
//! retries outlive the invocation (the message's `DelaySeconds`, 15 minutes
//! at most, sent on again by a worker that gets it early); without one, one
//! attempt is made in line and a retryable failure is recorded FAILED.
//!
//! The ledger entry `WEBHOOK#-` says where it stands: QUEUED (with
//! `attempts` made so far, `retryAt`, the reason of the last failure), SENDING
//! while an attempt runs, then SENT or FAILED. A worker takes a QUEUED entry
//! with a conditional write before it posts, so a redelivered message never
//! posts the same attempt twice; the receiver dedupes retries by `webhook-id`.

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::channels::web::WebPost;
use crate::channels::webhook::{
    self as hook, BATCH_PREFIX, INFO_TARGET, MAX_ATTEMPTS, TIMEOUT, next_wait,
};
use crate::model::event::now_millis;
use crate::model::{Delivery, DeliveryStatus, NotificationChannel, NotificationEvent, OrgId};
use crate::ports::{ContactStore, EventStore, OfferStore, SendError, WorkBatch, WorkItem, Written};

use super::Notifier;

/// The ledger key of an event's webhook delivery.
pub(crate) fn webhook_key() -> String {
    format!("{}#-", NotificationChannel::Webhook)
}

/// The target's name an event carries, when it has a webhook to send.
pub(crate) fn webhook_target(event: &NotificationEvent) -> Option<String> {
    event
        .info
        .as_ref()?
        .get(INFO_TARGET)?
        .as_str()
        .map(str::to_owned)
}

fn entry(status: DeliveryStatus, attempts: u32) -> Delivery {
    Delivery {
        channel: NotificationChannel::Webhook,
        contact_id: None,
        status,
        message_id: None,
        reason: None,
        time: now_millis(),
        batch: None,
        attempts: Some(attempts),
        retry_at: None,
    }
}

/// The attempt number a webhook batch ID names (`wh3`: 3).
pub(crate) fn attempt_of(batch_id: &str) -> Option<u32> {
    batch_id
        .strip_prefix(BATCH_PREFIX)?
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
}

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore,
{
    /// Called by whoever closed `event`: queues its first webhook attempt, or
    /// (no queue) makes it now. Answers the ledger entry written, if any.
    pub(crate) async fn after_close(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<Delivery> {
        let name = webhook_target(event)?;
        if self.queue.is_some() {
            return Some(self.schedule(org, event, 1, Duration::ZERO, None).await);
        }
        let event_id = event.event_id.clone().unwrap_or_default();
        let intent = entry(DeliveryStatus::Sending, 0);
        if let Err(e) = self.store.save_deliveries(org, &event_id, &[intent]).await {
            tracing::error!(error = %crate::error_chain(&e), "the webhook's intent could not be written; it is not sent");
            return None;
        }
        Some(self.attempt(org, event, &name, 1, deadline).await)
    }

    /// Makes attempt `n`, whose entry is SENDING, and records what came of it
    /// (SENT, FAILED, or QUEUED for the next attempt).
    pub(crate) async fn attempt(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        name: &str,
        n: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> Delivery {
        let event_id = event.event_id.clone().unwrap_or_default();
        let result = self.post_webhook(org, event, name, deadline).await;
        let d = match result {
            Ok(id) => {
                tracing::info!(attempt = n, "webhook delivered");
                let mut d = entry(DeliveryStatus::Sent, n);
                d.message_id = Some(id);
                d
            }
            Err(e) => {
                tracing::warn!(attempt = n, code = %e.code, permanent = e.permanent, "webhook attempt failed");
                if e.disables_target {
                    self.disable_target(org.as_str(), &NotificationChannel::Webhook, &e)
                        .await;
                }
                let why = format!("attempt {n} of {MAX_ATTEMPTS}: {e}");
                match (
                    e.permanent,
                    self.queue.is_some(),
                    next_wait(n, e.retry_after),
                ) {
                    (false, true, Some(wait)) => {
                        return self.schedule(org, event, n + 1, wait, Some(why)).await;
                    }
                    (false, false, _) => failed(
                        n,
                        format!("{why}; retries need the work queue (WORK_QUEUE_URL)"),
                    ),
                    (false, true, None) => failed(n, format!("{why}; no attempts left")),
                    (true, _, _) => failed(n, why),
                }
            }
        };
        if let Err(e) = self
            .store
            .save_deliveries(org, &event_id, std::slice::from_ref(&d))
            .await
        {
            tracing::error!(error = %crate::error_chain(&e), "the webhook's outcome could not be recorded");
        }
        d
    }

    /// Puts attempt `n` on the queue, due after `wait`: the QUEUED entry
    /// first, then the message (if the queue refuses it, FAILED with why).
    async fn schedule(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        n: u32,
        wait: Duration,
        why: Option<String>,
    ) -> Delivery {
        let event_id = event.event_id.clone().unwrap_or_default();
        let batch_id = format!("{BATCH_PREFIX}{n}");
        let due = now_millis() + time::Duration::try_from(wait).unwrap_or(time::Duration::ZERO);
        let mut d = entry(DeliveryStatus::Queued, n - 1);
        d.batch = Some(batch_id.clone());
        d.retry_at = (!wait.is_zero()).then_some(due);
        d.reason = why.map(|w| format!("{w}; attempt {n} is queued"));
        if let Err(e) = self
            .store
            .save_deliveries(org, &event_id, std::slice::from_ref(&d))
            .await
        {
            tracing::error!(error = %crate::error_chain(&e), "the webhook's next attempt could not be recorded; it is not queued");
            return d;
        }
        let message = WorkBatch {
            organization_id: org.to_string(),
            event_id: event_id.clone(),
            offer_id: event.entity_id.clone().unwrap_or_default(),
            batch_id: batch_id.clone(),
            deliveries: vec![WorkItem {
                channel: NotificationChannel::Webhook,
                contact_id: None,
                cc: false,
            }],
            not_before: (!wait.is_zero()).then(|| epoch_ms(due)),
        };
        let Some(queue) = self.queue.as_deref() else {
            return d;
        };
        if let Some(Err(e)) = queue.enqueue(std::slice::from_ref(&message)).await.pop() {
            tracing::error!(code = %e.code, "the webhook's attempt could not be queued");
            let f = failed(n - 1, format!("attempt {n} could not be queued: {e}"));
            let _ = self
                .store
                .replace_queued(org, &event_id, &batch_id, std::slice::from_ref(&f))
                .await;
            return f;
        }
        d
    }

    /// A worker's webhook message: takes its QUEUED entry and makes the
    /// attempt; one received before it is due is sent on again.
    pub(crate) async fn work_webhook(
        &self,
        org: &OrgId,
        batch: &WorkBatch,
        n: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<WebhookWork, crate::work::WorkError> {
        use crate::work::WorkError;
        if let Some(due) = batch.not_before
            && due > epoch_ms(now_millis()) + 1000
            && let Some(queue) = self.queue.as_deref()
        {
            if let Some(Err(e)) = queue.enqueue(std::slice::from_ref(batch)).await.pop() {
                tracing::warn!(code = %e.code, "could not send the early webhook message on; it will be received again");
                return Err(WorkError::Malformed(
                    "webhook message received early and not requeued".into(),
                ));
            }
            return Ok(WebhookWork::Deferred);
        }
        let event_id = &batch.event_id;
        let keys = [webhook_key()];
        let (event, ledger) = tokio::try_join!(
            self.store.event(org, event_id, true),
            self.store.deliveries(org, event_id, &keys)
        )?;
        let event = event.ok_or_else(|| WorkError::EventNotFound(event_id.clone()))?;
        let queued = ledger.iter().any(|d| {
            d.status == DeliveryStatus::Queued
                && d.batch.as_deref() == Some(batch.batch_id.as_str())
        });
        let Some(name) = webhook_target(&event).filter(|_| queued) else {
            return Ok(WebhookWork::Nothing);
        };
        let mut take = entry(DeliveryStatus::Sending, n - 1);
        take.batch = Some(batch.batch_id.clone());
        let taken = self
            .store
            .replace_queued(org, event_id, &batch.batch_id, &[take])
            .await;
        if let Some(e) = taken.failure {
            return Err(e.into());
        }
        if taken.written.first() != Some(&Written::Yes) {
            return Ok(WebhookWork::Nothing);
        }
        Ok(WebhookWork::Attempted(
            self.attempt(org, &event, &name, n, deadline).await,
        ))
    }

    /// Signs and posts the final event to the organisation's endpoint.
    async fn post_webhook(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        name: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<String, SendError> {
        let timeout = match deadline {
            None => TIMEOUT,
            Some(d) => d
                .checked_duration_since(tokio::time::Instant::now())
                .and_then(|left| left.checked_sub(self.policy.deadline_margin))
                .unwrap_or_default()
                .min(TIMEOUT),
        };
        if timeout < Duration::from_secs(1) {
            return Err(SendError::transient(
                "DeadlineTimeout",
                "not started: too little time was left before the deadline",
            ));
        }
        let web = &self.channels.web;
        let (secret, url) = web.target(org.as_str(), name, None).await?;
        let id = hook::message_id(event.event_id.as_deref().unwrap_or_default());
        let body = hook::body(event);
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = secret
            .signing_secret
            .as_deref()
            .and_then(|s| hook::sign(s, &id, timestamp, &body))
            .ok_or_else(|| {
                SendError::permanent(
                    "WebhookSecretInvalid",
                    "the webhook's secret has no valid signingSecret (whsec_ followed by base64 of 16 bytes or more)",
                )
            })?;
        let request = WebPost {
            url,
            headers: vec![
                ("content-type", "application/json".into()),
                ("webhook-id", id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            body: body.into(),
            timeout,
        };
        let answer = web.poster.post(&request).await?;
        hook::classify(&answer)
    }
}

/// What a worker did with a webhook message.
pub(crate) enum WebhookWork {
    /// Not due yet: sent on with the rest of its delay.
    Deferred,
    /// Its entry was not QUEUED under this message (done, or taken by another receive).
    Nothing,
    Attempted(Delivery),
}

fn failed(attempts: u32, reason: String) -> Delivery {
    let mut d = entry(DeliveryStatus::Failed, attempts);
    d.reason = Some(reason);
    d
}

fn epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The target name to keep in a new event's `info`, when its settings have a
/// usable webhook target and the WEBHOOK channel.
pub(crate) fn note_target(
    event: &mut NotificationEvent,
    settings: &crate::model::NotificationSettings,
) {
    if !settings
        .effective_channels()
        .contains(&NotificationChannel::Webhook)
    {
        return;
    }
    if let Ok(name) = hook::target(settings) {
        event
            .info
            .get_or_insert_with(serde_json::Map::new)
            .insert(INFO_TARGET.into(), Value::String(name.to_owned()));
    }
}
