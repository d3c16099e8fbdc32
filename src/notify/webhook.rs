//! The WEBHOOK channel's place in the use case: once an event is closed, its
//! final form goes to the organisation's endpoint (`channels::webhook` signs
//! and reads the answers).
//!
//! The ledger entry `WEBHOOK#-` is written *before* the close ("owed":
//! QUEUED in batch `wh1`, 0 attempts), so no crash between the close and the
//! first attempt loses it; it stays out of the event's summary and of every
//! "is the event settled" decision (`without_webhook`). With a work queue,
//! the run that owes it also queues a safety message due in 2 minutes, and
//! after the close a message due now: each attempt is a queue message
//! (`wh{n}`), taken from QUEUED with a conditional write before the POST, so
//! a duplicate never posts the same attempt twice, the POST's answer never
//! waits for the endpoint, and retries outlive the invocation (`DelaySeconds`,
//! 15 minutes at most; a message received before the entry's `retryAt` is
//! sent on). Without a queue, one attempt is made in line after the close,
//! bounded by the deadline, and a retryable failure is FAILED.
//!
//! The entry then reads: QUEUED (`attempts` made so far, `retryAt`, the last
//! failure's reason) → SENDING while an attempt runs → SENT or FAILED. An
//! attempt whose worker died (SENDING past its lease) counts as a failed
//! attempt and the next one is scheduled: the receiver dedupes by
//! `webhook-id`.

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::channels::web::WebPost;
use crate::channels::webhook::{
    self as hook, BATCH_PREFIX, INFO_TARGET, MAX_ATTEMPTS, TIMEOUT, next_wait,
};
use crate::model::event::{epoch_ms, now_millis};
use crate::model::{
    Delivery, DeliveryStatus, EventStatus, NotificationChannel, NotificationEvent,
    NotificationSettings, OrgId,
};
use crate::ports::{
    ContactStore, EventStore, OfferStore, SendError, StoreError, WorkBatch, WorkItem, Written,
};
use crate::work::WorkError;

use super::Notifier;

/// The safety message's delay: the run that closes the event queues attempt
/// 1 at once; this one sends it only if that run died first.
const SAFETY_DELAY: Duration = Duration::from_secs(120);
/// A `wh1` message that finds the event still PENDING waits this long again.
const PENDING_WAIT: Duration = Duration::from_secs(60);
/// A SENDING entry older than this belongs to an attempt whose worker died.
const ATTEMPT_LEASE: Duration = Duration::from_secs(TIMEOUT.as_secs() + 45);

/// The ledger key of an event's webhook delivery.
pub(crate) fn webhook_key() -> String {
    format!("{}#-", NotificationChannel::Webhook)
}

/// The ledger without the webhook's entry: it follows the close, so it never
/// decides whether an event is settled, nor counts in its summary.
pub(crate) fn without_webhook(mut ledger: Vec<Delivery>) -> Vec<Delivery> {
    ledger.retain(|d| d.channel != NotificationChannel::Webhook);
    ledger
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

/// The target name to keep in a new event's `info`, when its settings have a
/// usable webhook target and the WEBHOOK channel.
pub(crate) fn note_target(event: &mut NotificationEvent, settings: &NotificationSettings) {
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

/// The attempt number a webhook batch ID names (`wh3`: 3).
pub(crate) fn attempt_of(batch_id: &str) -> Option<u32> {
    batch_id
        .strip_prefix(BATCH_PREFIX)?
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
}

fn entry(status: DeliveryStatus, attempts: u32, batch: Option<String>) -> Delivery {
    let mut d = Delivery::new(NotificationChannel::Webhook, None, status);
    d.batch = batch;
    d.attempts = Some(attempts);
    d
}

fn batch_of(n: u32) -> String {
    format!("{BATCH_PREFIX}{n}")
}

/// What a worker did with a webhook message.
pub(crate) enum WebhookWork {
    /// Not due yet (or the event not closed yet): sent on with a delay.
    Deferred,
    /// Its entry was not waiting for this message (done, or taken by another receive).
    Nothing,
    /// An attempt was made (or the target was gone): its entry as written.
    Attempted(Box<Delivery>),
}

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore,
{
    fn message(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        n: u32,
        due: Option<i64>,
    ) -> WorkBatch {
        WorkBatch {
            organization_id: org.to_string(),
            event_id: event.event_id.clone().unwrap_or_default(),
            offer_id: event.entity_id.clone().unwrap_or_default(),
            batch_id: batch_of(n),
            deliveries: vec![WorkItem {
                channel: NotificationChannel::Webhook,
                contact_id: None,
                cc: false,
            }],
            not_before: due,
        }
    }

    async fn enqueue_one(&self, message: WorkBatch) -> Result<(), SendError> {
        match self.queue.as_deref() {
            None => Ok(()),
            Some(q) => q
                .enqueue(std::slice::from_ref(&message))
                .await
                .pop()
                .unwrap_or(Ok(())),
        }
    }

    /// Before the close: records the webhook as owed (QUEUED, `wh1`) unless
    /// its entry exists, and with a queue sends the safety message. Answers
    /// whether the event has a webhook to send. A store failure is the
    /// caller's: the event is not closed yet, so the run's usual failure
    /// paths (a keyed retry, the sweeper) still finish it.
    pub(crate) async fn owe_webhook(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
    ) -> Result<bool, StoreError> {
        if webhook_target(event).is_none() {
            return Ok(false);
        }
        let event_id = event.event_id.clone().unwrap_or_default();
        if !self
            .store
            .deliveries(org, &event_id, &[webhook_key()])
            .await?
            .is_empty()
        {
            return Ok(true);
        }
        let owed = entry(DeliveryStatus::Queued, 0, Some(batch_of(1)));
        self.store.save_deliveries(org, &event_id, &[owed]).await?;
        let due = now_millis() + time::Duration::try_from(SAFETY_DELAY).unwrap_or_default();
        if let Err(e) = self
            .enqueue_one(self.message(org, event, 1, Some(epoch_ms(due))))
            .await
        {
            tracing::warn!(code = %e.code, "the webhook's safety message could not be queued; the message after the close carries it");
        }
        Ok(true)
    }

    /// After the close: sends the owed webhook on its way, within the
    /// deadline: with a queue, attempt 1's message due now; without, attempt
    /// 1 here. Answers the entry written in line, if any. Never fails the
    /// request: the event is closed and answered whatever happens here.
    pub(crate) async fn dispatch_webhook(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<Delivery> {
        let name = webhook_target(event)?;
        let work = async {
            if self.queue.is_some() {
                if let Err(e) = self.enqueue_one(self.message(org, event, 1, None)).await {
                    tracing::warn!(code = %e.code, "the webhook's first attempt could not be queued now; the safety message carries it");
                }
                return None;
            }
            let event_id = event.event_id.clone().unwrap_or_default();
            let take = entry(DeliveryStatus::Sending, 0, Some(batch_of(1)));
            let taken = self
                .store
                .replace_queued(org, &event_id, &batch_of(1), &[take])
                .await;
            if taken.failure.is_some() || taken.written.first() != Some(&Written::Yes) {
                return None;
            }
            match self.attempt(org, event, &name, 1, deadline).await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "the webhook's outcome could not be recorded");
                    None
                }
            }
        };
        let bound = deadline.map(|d| d.checked_sub(self.policy.deadline_margin / 2).unwrap_or(d));
        match bound {
            None => work.await,
            Some(b) => tokio::time::timeout_at(b, work).await.unwrap_or_else(|_| {
                tracing::warn!("the webhook's dispatch was cut at the deadline");
                None
            }),
        }
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
    ) -> Result<Delivery, StoreError> {
        let result = self.post_webhook(org, event, name, deadline).await;
        let e = match result {
            Ok(id) => {
                tracing::info!(attempt = n, "webhook delivered");
                let mut d = entry(DeliveryStatus::Sent, n, Some(batch_of(n)));
                d.message_id = Some(id);
                return self.record(org, event, d).await;
            }
            Err(e) => e,
        };
        tracing::warn!(attempt = n, code = %e.code, permanent = e.permanent, "webhook attempt failed");
        if e.disables_target {
            self.disable_target(org.as_str(), &NotificationChannel::Webhook, name, &e)
                .await;
        }
        self.after_failure(org, event, n, &e).await
    }

    /// Attempt `n` failed with `e`: the next one is scheduled, or the entry is FAILED.
    async fn after_failure(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        n: u32,
        e: &SendError,
    ) -> Result<Delivery, StoreError> {
        let why = format!("attempt {n} of {MAX_ATTEMPTS}: {e}");
        let failed = |reason: String| {
            let mut d = entry(DeliveryStatus::Failed, n, Some(batch_of(n)));
            d.reason = Some(reason);
            d
        };
        let d = match (
            e.permanent,
            self.queue.is_some(),
            next_wait(n, e.retry_after),
        ) {
            (false, true, Some(wait)) => return self.schedule(org, event, n + 1, wait, why).await,
            (false, false, _) => failed(format!(
                "{why}; retries need the work queue (WORK_QUEUE_URL)"
            )),
            (false, true, None) => failed(format!("{why}; no attempts left")),
            (true, _, _) => failed(why),
        };
        self.record(org, event, d).await
    }

    async fn record(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        d: Delivery,
    ) -> Result<Delivery, StoreError> {
        let event_id = event.event_id.clone().unwrap_or_default();
        self.store
            .save_deliveries(org, &event_id, std::slice::from_ref(&d))
            .await?;
        Ok(d)
    }

    /// Puts attempt `n` on the queue, due after `wait`: the QUEUED entry
    /// first (its `retryAt` is what a worker obeys), then the message; if the
    /// queue refuses it, the entry is FAILED with why.
    async fn schedule(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        n: u32,
        wait: Duration,
        why: String,
    ) -> Result<Delivery, StoreError> {
        let due = now_millis() + time::Duration::try_from(wait).unwrap_or_default();
        let mut d = entry(DeliveryStatus::Queued, n - 1, Some(batch_of(n)));
        d.retry_at = Some(due);
        d.reason = Some(format!("{why}; attempt {n} is queued"));
        let d = self.record(org, event, d).await?;
        if let Err(e) = self
            .enqueue_one(self.message(org, event, n, Some(epoch_ms(due))))
            .await
        {
            tracing::error!(code = %e.code, "the webhook's next attempt could not be queued");
            let mut f = entry(DeliveryStatus::Failed, n - 1, Some(batch_of(n)));
            f.reason = Some(format!("{why}; attempt {n} could not be queued: {e}"));
            return self.record(org, event, f).await;
        }
        Ok(d)
    }

    /// A worker's webhook message (attempt `n`).
    pub(crate) async fn work_webhook(
        &self,
        org: &OrgId,
        batch: &WorkBatch,
        n: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<WebhookWork, WorkError> {
        let event_id = &batch.event_id;
        let keys = [webhook_key()];
        let (event, ledger, settings) = tokio::try_join!(
            self.store.event(org, event_id, true),
            self.store.deliveries(org, event_id, &keys),
            self.store.settings(org)
        )?;
        let event = event.ok_or_else(|| WorkError::EventNotFound(event_id.clone()))?;
        let (Some(name), Some(current)) = (webhook_target(&event), ledger.into_iter().next())
        else {
            return Ok(WebhookWork::Nothing);
        };
        let mine = current.batch.as_deref() == Some(batch.batch_id.as_str());
        let now = now_millis();
        match current.status {
            DeliveryStatus::Queued if mine => {}
            DeliveryStatus::Sending if mine => {
                let lease = time::Duration::try_from(ATTEMPT_LEASE).unwrap_or_default();
                if current.time + lease > now {
                    return Err(WorkError::InFlightElsewhere(1));
                }
                // Its worker died mid-attempt: that attempt counts as failed
                // (the endpoint may have it; the next one has the same id).
                tracing::warn!(
                    attempt = n,
                    "a webhook attempt was left SENDING; counted as failed"
                );
                let e = SendError::unknown(
                    "AttemptLost",
                    "the attempt's worker stopped before its answer was recorded",
                );
                return Ok(WebhookWork::Attempted(Box::new(
                    self.after_failure(org, &event, n, &e).await?,
                )));
            }
            _ => return Ok(WebhookWork::Nothing),
        }
        // Due: the event closed, and the entry's own retry time (not the
        // message's) has come.
        let wait_until = if event.event_status == Some(EventStatus::Pending) {
            Some(now + time::Duration::try_from(PENDING_WAIT).unwrap_or_default())
        } else {
            current
                .retry_at
                .filter(|at| *at > now + time::Duration::SECOND)
        };
        if let Some(at) = wait_until {
            self.enqueue_one(self.message(org, &event, n, Some(epoch_ms(at))))
                .await
                .map_err(|e| WorkError::Requeue(e.code))?;
            return Ok(WebhookWork::Deferred);
        }
        // The target as the settings name it now: removed, renamed or
        // disabled since the event means it is not sent.
        if let Err(why) = hook::target(&settings).and_then(|t| {
            (t == name)
                .then_some(())
                .ok_or_else(|| "the settings now name another webhook target".to_owned())
        }) {
            let mut f = entry(DeliveryStatus::Failed, n - 1, Some(batch.batch_id.clone()));
            f.reason = Some(format!("not sent: {why}"));
            let written = self
                .store
                .replace_queued(org, event_id, &batch.batch_id, std::slice::from_ref(&f))
                .await
                .all_or_error()?;
            return Ok(if written.first() == Some(&true) {
                WebhookWork::Attempted(Box::new(f))
            } else {
                WebhookWork::Nothing
            });
        }
        let take = entry(DeliveryStatus::Sending, n - 1, Some(batch.batch_id.clone()));
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
        Ok(WebhookWork::Attempted(Box::new(
            self.attempt(org, &event, &name, n, deadline).await?,
        )))
    }

    /// Signs and posts the final event to the organisation's endpoint, within
    /// 15 s and the deadline (the secret's read included).
    async fn post_webhook(
        &self,
        org: &OrgId,
        event: &NotificationEvent,
        name: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<String, SendError> {
        let end = {
            let by_timeout = tokio::time::Instant::now() + TIMEOUT;
            match deadline {
                None => by_timeout,
                Some(d) => d
                    .checked_sub(self.policy.deadline_margin)
                    .unwrap_or(d)
                    .min(by_timeout),
            }
        };
        let too_late = || {
            SendError::transient(
                "DeadlineTimeout",
                "not started: too little time was left before the deadline",
            )
        };
        if end < tokio::time::Instant::now() + Duration::from_secs(1) {
            return Err(too_late());
        }
        let web = &self.channels.web;
        let (secret, url) = tokio::time::timeout_at(end, web.target(org.as_str(), name, None))
            .await
            .map_err(|_| too_late())??;
        let timeout = end
            .checked_duration_since(tokio::time::Instant::now())
            .unwrap_or_default();
        if timeout < Duration::from_secs(1) {
            return Err(too_late());
        }
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
