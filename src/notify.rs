//! The use case: resolve the recipients of an offer, plan one delivery per
//! recipient and channel, store the event (PENDING), deliver with bounded
//! concurrency, then store every delivery's outcome and the final status.
//! It knows nothing of HTTP or AWS: it works through the traits of `ports`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::model::event::now_millis;
use crate::model::{
    Contact, ContactId, ContactIdList, CreatedBy, Delivery, DeliveryStatus, EmailAddress,
    EntityType, EventStatus, IdempotencyKey, NotificationChannel, NotificationEvent,
    NotificationEventAction, NotificationSettings, Offer, OfferId, OrgId, PhoneNumber,
};
use crate::ports::{
    Claim, ContactStore, EventStore, IdempotencyRecord, IdempotencyStatus, IdempotencyStore,
    KeyOutcome, Mailer, OfferStore, OutgoingEmail, SendError, SmsSender, StoreError, TopicMessage,
    TopicPublisher, WorkBatch, WorkItem, WorkQueue,
};
use crate::rate::RateLimits;
use crate::render;

/// Deliveries listed inline in the event's `info.deliveries` at most; beyond
/// that the ledger items alone hold them (keeps the event far below 400 KB).
pub const MAX_INLINE_DELIVERIES: usize = 100;

/// What a caller asks for, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyCommand {
    pub org_id: OrgId,
    pub offer_id: OfferId,
    /// `None` or empty: every contact of the offer.
    pub contact_ids: Option<ContactIdList>,
    pub created_by: Option<CreatedBy>,
    /// With a key, a repeat within the window answers with the stored event.
    pub idempotency_key: Option<IdempotencyKey>,
    /// When the Lambda will be stopped; no send starts within the policy's margin of it.
    pub deadline: Option<std::time::Instant>,
}

impl NotifyCommand {
    /// Every contact of the offer, no key, no deadline, no creator.
    pub fn new(org_id: OrgId, offer_id: OfferId) -> Self {
        Self {
            org_id,
            offer_id,
            contact_ids: None,
            created_by: None,
            idempotency_key: None,
            deadline: None,
        }
    }
}

/// How long keys live and hold, and how close to the deadline sends stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_window: std::time::Duration,
    /// How long a running request holds its key before a retry may resume it
    /// (default 60 s, above the function's 28 s timeout).
    pub idempotency_lock: std::time::Duration,
    /// No new send starts when less than this is left before the deadline (default 3 s).
    pub deadline_margin: std::time::Duration,
    /// When a request's sends go to the work queue instead of being made at once.
    pub hand_off: HandOff,
}

/// The knobs of the hand-off to the work queue (used only with a queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOff {
    /// The time the synchronous path may spend sending: a share of the API's
    /// 29 s limit (default 50%, 14.5 s). A request whose estimate exceeds it is queued.
    pub sync_budget: std::time::Duration,
    /// A request with more recipients than this is queued whatever the estimate (default 500).
    pub max_sync_recipients: usize,
    /// Deliveries per queue message (default 10): one worker sends them together.
    pub deliveries_per_message: usize,
    /// The queue's `maxReceiveCount`: on that receive a failing message gives
    /// up, records its deliveries as FAILED, and goes on to the DLQ (default 5).
    pub max_receives: u32,
    /// Assumed time of one provider call, for the estimate (default 100 ms).
    pub send_latency: std::time::Duration,
    /// How long a SENDING ledger entry is taken to belong to a live worker
    /// (default 15 min, Lambda's longest timeout). A younger one found by
    /// another receive of its message is left alone (the message is retried
    /// later); an older one is a dead worker's, and becomes UNCONFIRMED.
    pub sending_lease: std::time::Duration,
}

impl Default for HandOff {
    fn default() -> Self {
        Self {
            sync_budget: std::time::Duration::from_millis(14_500),
            max_sync_recipients: 500,
            deliveries_per_message: 10,
            max_receives: 5,
            send_latency: std::time::Duration::from_millis(100),
            sending_lease: std::time::Duration::from_secs(15 * 60),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idempotency_window: std::time::Duration::from_secs(24 * 3600),
            idempotency_lock: std::time::Duration::from_secs(60),
            deadline_margin: std::time::Duration::from_secs(3),
            hand_off: HandOff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("offer {0} was not found")]
    OfferNotFound(OfferId),
    #[error("{} {} {} not on offer {offer}", if ids.len() == 1 { "contact" } else { "contacts" }, join(ids), if ids.len() == 1 { "is" } else { "are" })]
    NotOnOffer { offer: OfferId, ids: Vec<ContactId> },
    #[error("offer {0} has no contacts to notify; add contacts to the offer first")]
    NoContacts(OfferId),
    #[error(
        "idempotency key {0} was already used for a different request; use a new key for a new request"
    )]
    KeyReused(IdempotencyKey),
    #[error("a request with idempotency key {0} is still running; retry after it ends")]
    KeyInProgress(IdempotencyKey),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(ids: &[ContactId]) -> String {
    ids.iter()
        .map(ContactId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The use case as the edges (HTTP, direct invocation) see it.
pub trait NotifyContacts: Send + Sync {
    fn notify(
        &self,
        cmd: NotifyCommand,
    ) -> impl Future<Output = Result<NotificationEvent, NotifyError>> + Send;
}

pub struct Notifier<S, M, P, T> {
    pub store: S,
    pub mailer: M,
    pub sms: P,
    pub topics: T,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Sends a second per channel (none: unlimited).
    pub rates: RateLimits,
    pub policy: Policy,
    /// The work queue large requests are handed to; `None`: every request is
    /// served synchronously.
    pub queue: Option<Arc<dyn WorkQueue>>,
}

/// One unit of work of the fan-out.
pub(crate) enum Action {
    Email {
        contact_id: String,
        email: OutgoingEmail,
    },
    Sms {
        contact_id: String,
        to: PhoneNumber,
        text: Arc<str>,
    },
    Topic(TopicMessage),
}

impl Action {
    pub(crate) fn channel(&self) -> NotificationChannel {
        match self {
            Action::Email { .. } => NotificationChannel::Email,
            Action::Sms { .. } => NotificationChannel::Sms,
            Action::Topic(_) => NotificationChannel::Sns,
        }
    }
    /// The record written just before the send.
    pub(crate) fn intent(&self) -> Delivery {
        Delivery {
            channel: self.channel(),
            contact_id: self.contact_id(),
            status: DeliveryStatus::Sending,
            message_id: None,
            reason: None,
            time: now_millis(),
            batch: None,
        }
    }
    /// The same key as the `Delivery` this action produces.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}#{}",
            self.channel(),
            self.contact_id().as_deref().unwrap_or("-")
        )
    }
    pub(crate) fn contact_id(&self) -> Option<String> {
        match self {
            Action::Email { contact_id, .. } | Action::Sms { contact_id, .. } => {
                Some(contact_id.clone())
            }
            Action::Topic(_) => None,
        }
    }
}

pub(crate) fn skipped(
    channel: NotificationChannel,
    contact_id: Option<&str>,
    reason: impl Into<String>,
) -> Delivery {
    Delivery {
        channel,
        contact_id: contact_id.map(str::to_owned),
        status: DeliveryStatus::Skipped,
        message_id: None,
        reason: Some(reason.into()),
        time: now_millis(),
        batch: None,
    }
}

/// The recipients, resolved: who gets what.
pub(crate) struct Recipients {
    /// Contact IDs to notify, in request (or offer) order.
    pub(crate) ids: Vec<String>,
    /// Extra email-only recipients from the settings' `ccContactIds`.
    pub(crate) cc_ids: Vec<String>,
    pub(crate) contacts: HashMap<String, Contact>,
}

impl<S, M, P, T> Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    async fn resolve(
        &self,
        cmd: &NotifyCommand,
        offer: &Offer,
        settings: &NotificationSettings,
    ) -> Result<Recipients, NotifyError> {
        let on_offer: HashSet<&str> = offer.contact_ids.iter().map(String::as_str).collect();
        let requested: Vec<String> = match cmd.contact_ids.as_ref().filter(|l| !l.is_empty()) {
            Some(list) => {
                let missing: Vec<ContactId> = list
                    .as_slice()
                    .iter()
                    .filter(|id| !on_offer.contains(id.as_str()))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return Err(NotifyError::NotOnOffer {
                        offer: cmd.offer_id.clone(),
                        ids: missing,
                    });
                }
                list.as_slice()
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            }
            None => {
                let mut seen = HashSet::new();
                offer
                    .contact_ids
                    .iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .cloned()
                    .collect()
            }
        };
        if requested.is_empty() {
            return Err(NotifyError::NoContacts(cmd.offer_id.clone()));
        }
        let mut cc_ids: Vec<String> = Vec::new();
        for id in settings.cc_contact_ids.iter().flatten() {
            if !requested.contains(id) && !cc_ids.contains(id) {
                cc_ids.push(id.clone());
            }
        }

        let contacts = self
            .contacts_by_id(&cmd.org_id, &requested, &cc_ids)
            .await?;

        if cmd.contact_ids.as_ref().is_some_and(|l| !l.is_empty()) {
            // A listed contact that does not exist in this organisation is
            // refused like one that is not on the offer, before anything is sent.
            let unknown: Vec<ContactId> = requested
                .iter()
                .filter(|id| !contacts.contains_key(*id))
                .filter_map(|id| ContactId::parse(id).ok())
                .collect();
            if !unknown.is_empty() {
                return Err(NotifyError::NotOnOffer {
                    offer: cmd.offer_id.clone(),
                    ids: unknown,
                });
            }
        }
        Ok(Recipients {
            ids: requested,
            cc_ids,
            contacts,
        })
    }

    /// The contacts of `org` among `ids` and `cc_ids`, by ID. Stored IDs that
    /// are not valid IDs cannot be keys; they stay unresolved, and their
    /// deliveries are recorded as skipped.
    pub(crate) async fn contacts_by_id(
        &self,
        org: &OrgId,
        ids: &[String],
        cc_ids: &[String],
    ) -> Result<HashMap<String, Contact>, StoreError> {
        let keys: Vec<ContactId> = ids
            .iter()
            .chain(cc_ids)
            .filter_map(|id| ContactId::parse(id).ok())
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .contacts(org, &keys)
            .await?
            .into_iter()
            // Belt and braces: the store is keyed by org already.
            .filter(|c| {
                c.organization_id
                    .as_deref()
                    .is_none_or(|o| o == org.as_str())
            })
            .map(|c| (c.id.clone(), c))
            .collect())
    }

    /// Turns recipients × channels into actions to perform and deliveries
    /// already decided (skipped, with why).
    pub(crate) fn plan(
        &self,
        event: &NotificationEvent,
        offer: &Offer,
        settings: &NotificationSettings,
        r: &Recipients,
    ) -> (Vec<Action>, Vec<Delivery>) {
        let mut actions = Vec::new();
        let mut decided = Vec::new();
        let event_id = event.event_id.clone().unwrap_or_default();
        let org = event.organization_id.clone().unwrap_or_default();
        let sms_text: Arc<str> = render::sms(offer).into();

        for channel in settings.effective_channels() {
            match channel {
                NotificationChannel::Email => {
                    for (id, is_cc) in r
                        .ids
                        .iter()
                        .map(|i| (i, false))
                        .chain(r.cc_ids.iter().map(|i| (i, true)))
                    {
                        let Some(contact) = r.contacts.get(id) else {
                            let what = if is_cc { "cc contact" } else { "contact" };
                            decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                format!("{what} not found in this organization"),
                            ));
                            continue;
                        };
                        let address = match contact
                            .email_address
                            .as_deref()
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                        {
                            None => {
                                decided.push(skipped(
                                    channel.clone(),
                                    Some(id),
                                    "contact has no email address",
                                ));
                                continue;
                            }
                            Some(raw) => match EmailAddress::parse(raw) {
                                Ok(a) => a,
                                Err(e) => {
                                    decided.push(skipped(
                                        channel.clone(),
                                        Some(id),
                                        format!("contact's {e}"),
                                    ));
                                    continue;
                                }
                            },
                        };
                        let content = render::email(offer, Some(contact));
                        actions.push(Action::Email {
                            contact_id: id.clone(),
                            email: OutgoingEmail {
                                to: address,
                                subject: content.subject,
                                text: content.text,
                                html: content.html,
                                tags: vec![
                                    ("organizationID".into(), org.clone()),
                                    ("eventID".into(), event_id.clone()),
                                    ("contactId".into(), id.clone()),
                                ],
                            },
                        });
                    }
                }
                NotificationChannel::Sms => {
                    for id in &r.ids {
                        let Some(contact) = r.contacts.get(id) else {
                            decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                "contact not found in this organization",
                            ));
                            continue;
                        };
                        let raw = contact
                            .info
                            .as_ref()
                            .and_then(|i| i.phone_number.as_deref())
                            .map(str::trim)
                            .filter(|s| !s.is_empty());
                        match raw.map(PhoneNumber::parse) {
                            None => decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                "contact has no phone number",
                            )),
                            Some(Err(e)) => decided.push(skipped(
                                channel.clone(),
                                Some(id),
                                format!("contact's {e}"),
                            )),
                            Some(Ok(to)) => actions.push(Action::Sms {
                                contact_id: id.clone(),
                                to,
                                text: sms_text.clone(),
                            }),
                        }
                    }
                }
                NotificationChannel::Sns => match settings
                    .sns_topic_arn
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    None => decided.push(skipped(
                        channel.clone(),
                        None,
                        "no snsTopicArn in the organization's notification settings",
                    )),
                    Some(arn) => actions.push(Action::Topic(TopicMessage {
                        topic_arn: arn.to_owned(),
                        subject: "Private offer notification".into(),
                        body: serde_json::to_string(event).unwrap_or_default(),
                        attributes: vec![
                            (
                                "action".into(),
                                NotificationEventAction::NotifyContacts.as_str().into(),
                            ),
                            ("entityType".into(), EntityType::Offer.as_str().into()),
                            ("organizationID".into(), org.clone()),
                        ],
                    })),
                },
                other => decided.push(skipped(
                    other.clone(),
                    None,
                    format!("channel {other} is not supported by this function"),
                )),
            }
        }
        (actions, decided)
    }

    async fn perform(&self, action: Action) -> Delivery {
        let channel = action.channel();
        let contact_id = action.contact_id();
        let limiter = match &action {
            Action::Email { .. } => self.rates.email.as_ref(),
            Action::Sms { .. } => self.rates.sms.as_ref(),
            Action::Topic(_) => self.rates.topic.as_ref(),
        };
        if let Some(limiter) = limiter {
            limiter.acquire().await;
        }
        let result: Result<String, SendError> = match &action {
            Action::Email { email, .. } => self.mailer.send_email(email).await,
            Action::Sms { to, text, .. } => self.sms.send_sms(to, text).await,
            Action::Topic(m) => self.topics.publish(m).await,
        };
        let (status, message_id, reason) = match result {
            Ok(id) => (DeliveryStatus::Sent, Some(id), None),
            Err(e) if e.outcome_unknown => {
                tracing::warn!(channel = %channel, contact_id = contact_id.as_deref().unwrap_or("-"), code = %e.code, "delivery outcome unknown; not retried");
                (
                    DeliveryStatus::Unconfirmed,
                    None,
                    Some(format!(
                        "{e}; the provider may have accepted it, so it is not sent again"
                    )),
                )
            }
            Err(e) => {
                // The provider's message may name the recipient: log the code only.
                tracing::warn!(channel = %channel, contact_id = contact_id.as_deref().unwrap_or("-"), code = %e.code, permanent = e.permanent, "delivery failed");
                (DeliveryStatus::Failed, None, Some(e.to_string()))
            }
        };
        Delivery {
            channel,
            contact_id,
            status,
            message_id,
            reason,
            time: now_millis(),
            batch: None,
        }
    }
}

/// Counts per channel and status, and the final status of the event.
pub fn summarise(
    deliveries: &[Delivery],
) -> (Map<String, Value>, EventStatus, Vec<NotificationChannel>) {
    let mut per_channel: Map<String, Value> = Map::new();
    let mut used: Vec<NotificationChannel> = Vec::new();
    let (mut sent, mut failed) = (0usize, 0usize);
    for d in deliveries {
        let entry = per_channel
            .entry(d.channel.as_str().to_owned())
            .or_insert_with(|| json!({"sent": 0, "skipped": 0, "failed": 0}));
        let key = match d.status {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Sending | DeliveryStatus::Unconfirmed => "unconfirmed",
            DeliveryStatus::Queued => "queued",
        };
        entry[key] = json!(entry[key].as_u64().unwrap_or(0) + 1);
        match d.status {
            DeliveryStatus::Sent => sent += 1,
            // Not known to be accepted: the event cannot say DONE.
            DeliveryStatus::Failed
            | DeliveryStatus::Sending
            | DeliveryStatus::Unconfirmed
            | DeliveryStatus::Queued => failed += 1,
            DeliveryStatus::Skipped => continue,
        }
        if !used.contains(&d.channel) {
            used.push(d.channel.clone());
        }
    }
    // DONE: something went out and nothing attempted failed. Nothing sent at
    // all (every recipient skipped) is FAILED too: nobody was notified.
    let status = if failed == 0 && sent > 0 {
        EventStatus::Done
    } else {
        EventStatus::Failed
    };
    (per_channel, status, used)
}

impl<S, M, P, T> NotifyContacts for Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    async fn notify(&self, cmd: NotifyCommand) -> Result<NotificationEvent, NotifyError> {
        let Some(key) = cmd.idempotency_key.clone() else {
            return self.run(&cmd, new_event_id(), false).await;
        };
        let org = &cmd.org_id;
        let now_ms = epoch_ms();
        let lock_ms = self.policy.idempotency_lock.as_millis() as i64;
        let claim = IdempotencyRecord {
            request_hash: request_hash(&cmd),
            event_id: new_event_id(),
            status: IdempotencyStatus::InProgress,
            locked_until: now_ms + lock_ms,
            expires_at: now_ms / 1000 + self.policy.idempotency_window.as_secs() as i64,
        };
        let (event_id, resume) = match self.store.claim(org, &key, &claim, now_ms / 1000).await? {
            Claim::Claimed => (claim.event_id.clone(), false),
            // A retried claim whose first attempt did land (it timed out on the way back): ours.
            Claim::Existing(held) if held.event_id == claim.event_id => {
                (claim.event_id.clone(), false)
            }
            Claim::Existing(held) if held.request_hash != claim.request_hash => {
                return Err(NotifyError::KeyReused(key));
            }
            Claim::Existing(held) if held.status == IdempotencyStatus::Completed => {
                tracing::info!(event_id = %held.event_id, "idempotent repeat: answering with the stored event");
                return match self
                    .store
                    .event_with_deliveries(org, &held.event_id)
                    .await?
                {
                    Some((event, _)) => Ok(event),
                    None => Err(NotifyError::Store(StoreError::Malformed {
                        op: "replay idempotent request",
                        detail: "the key's event is missing".into(),
                    })),
                };
            }
            Claim::Existing(held) if held.locked_until > now_ms => {
                return Err(NotifyError::KeyInProgress(key));
            }
            Claim::Existing(held) => {
                // The first attempt stopped or died: resume its event, once.
                if !self
                    .store
                    .take_over(org, &key, held.locked_until, now_ms + lock_ms)
                    .await?
                {
                    return Err(NotifyError::KeyInProgress(key));
                }
                tracing::info!(event_id = %held.event_id, "resuming an interrupted request");
                (held.event_id, true)
            }
        };
        let result = self.run(&cmd, event_id, resume).await;
        let outcome = match &result {
            Ok(event) if event.event_status != Some(EventStatus::Pending) => KeyOutcome::Completed,
            // Handed to the queue: the workers finish it; a repeat answers with the event.
            Ok(event) if is_queued(event) => KeyOutcome::Completed,
            _ => KeyOutcome::Released,
        };
        if let Err(e) = self.store.finish(org, &key, outcome).await {
            // The record stays in progress until its lock runs out; a repeat then
            // resumes, finds every delivery recorded, and completes it.
            tracing::warn!(error = %crate::error_chain(&e), "could not record the idempotency key's outcome");
        }
        result
    }
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn epoch_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What a request asks for, independent of ID order and duplicates: the same
/// key with another hash is another request.
pub fn request_hash(cmd: &NotifyCommand) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<&str> = cmd
        .contact_ids
        .iter()
        .flat_map(|l| l.as_slice())
        .map(ContactId::as_str)
        .collect();
    ids.sort_unstable();
    let canonical = format!("offer={}\ncontacts={}", cmd.offer_id, ids.join(","));
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl<S, M, P, T> Notifier<S, M, P, T>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
    M: Mailer,
    P: SmsSender,
    T: TopicPublisher,
{
    /// Resolves, plans and delivers the event `event_id`; with `resume`, the
    /// event may already exist and its recorded SENT deliveries are not sent again.
    async fn run(
        &self,
        cmd: &NotifyCommand,
        event_id: String,
        resume: bool,
    ) -> Result<NotificationEvent, NotifyError> {
        let (offer, settings) = tokio::try_join!(
            self.store.offer(&cmd.org_id, &cmd.offer_id),
            self.store.settings(&cmd.org_id)
        )?;
        let offer = offer
            .filter(|o| {
                o.organization_id
                    .as_deref()
                    .is_none_or(|org| org == cmd.org_id.as_str())
            })
            .ok_or_else(|| NotifyError::OfferNotFound(cmd.offer_id.clone()))?;
        let recipients = self.resolve(cmd, &offer, &settings).await?;

        let now = now_millis();
        let mut event = NotificationEvent {
            action: Some(NotificationEventAction::NotifyContacts),
            entity_type: Some(EntityType::Offer),
            entity_id: Some(offer.id.clone()),
            entity_name: offer.name.clone(),
            entity_status: offer.status.clone(),
            partner: offer.partner.clone(),
            organization_id: Some(cmd.org_id.to_string()),
            event_id: Some(event_id.clone()),
            event_status: Some(EventStatus::Pending),
            contact_ids: Some(recipients.ids.clone()),
            cc_contact_ids: (!recipients.cc_ids.is_empty()).then(|| recipients.cc_ids.clone()),
            channels: Some(settings.effective_channels()),
            created_by: cmd.created_by.clone(),
            title: Some(render::subject(&offer)),
            message: Some(render::message(&offer)),
            is_action_item: Some(false),
            require_audit: Some(false),
            timestamp: Some(now),
            last_update_time: Some(now),
            ..NotificationEvent::default()
        };
        let (mut actions, decided) = self.plan(&event, &offer, &settings, &recipients);
        event.contact_emails = Some(
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Email { email, .. } => Some(email.to.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
        );

        // From here on every log line names the event.
        let span = tracing::info_span!("event", event_id = %event_id);
        async move {
            let mut recorded: Vec<Delivery> = Vec::new();
            let stored = if resume {
                self.store
                    .event_with_deliveries(&cmd.org_id, &event_id)
                    .await?
            } else {
                None
            };
            match stored {
                // A handed-off request that stopped before every message was queued.
                Some((previous, ledger)) if is_queued(&previous) => {
                    return self.requeue(cmd, previous, ledger).await;
                }
                Some((previous, ledger)) => {
                    // Keep the first attempt's creation time and what it got
                    // accepted. A delivery it left SENDING may have gone out:
                    // it becomes UNCONFIRMED and is not sent again.
                    event.timestamp = previous.timestamp;
                    let mut settled: HashSet<String> = HashSet::new();
                    let mut unconfirmed = Vec::new();
                    for mut d in ledger {
                        match d.status {
                            DeliveryStatus::Sent | DeliveryStatus::Unconfirmed => {}
                            DeliveryStatus::Sending => {
                                unconfirm(&mut d, "the run stopped between sending and recording");
                                unconfirmed.push(d.clone());
                            }
                            DeliveryStatus::Failed
                            | DeliveryStatus::Skipped
                            | DeliveryStatus::Queued => continue,
                        }
                        settled.insert(d.key());
                        recorded.push(d);
                    }
                    if !unconfirmed.is_empty() {
                        self.store
                            .save_deliveries(&cmd.org_id, &event_id, &unconfirmed)
                            .await?;
                    }
                    let before = actions.len();
                    actions.retain(|a| !settled.contains(&a.key()));
                    tracing::info!(
                        settled = before - actions.len(),
                        unconfirmed = unconfirmed.len(),
                        to_send = actions.len(),
                        "resuming"
                    );
                }
                None => {
                    if let Some(queue) = self.queue.as_deref() {
                        let recipients = recipients.ids.len() + recipients.cc_ids.len();
                        if self.should_queue(recipients, &actions) {
                            return self.hand_off(queue, cmd, event, actions, decided).await;
                        }
                    }
                    match self.store.create_event(&event).await {
                        // The event ID is new to this run: a conflict is our own earlier
                        // attempt that landed after timing out.
                        Err(StoreError::Conflict { .. }) => {}
                        other => other?,
                    }
                }
            }
            self.deliver_and_record(cmd, event, actions, decided, recorded)
                .await
        }
        .instrument(span)
        .await
    }

    /// How long sending `actions` here and now would take: the slowest
    /// channel at its rate, or the provider calls through the concurrency.
    pub fn estimate(&self, channels: &[NotificationChannel]) -> std::time::Duration {
        let mut per_channel: HashMap<&NotificationChannel, usize> = HashMap::new();
        for c in channels {
            *per_channel.entry(c).or_default() += 1;
        }
        let rated = per_channel
            .iter()
            .filter_map(|(c, n)| {
                let limiter = match c {
                    NotificationChannel::Email => self.rates.email.as_ref(),
                    NotificationChannel::Sms => self.rates.sms.as_ref(),
                    NotificationChannel::Sns => self.rates.topic.as_ref(),
                    _ => None,
                }?;
                Some(*n as f64 / limiter.per_second())
            })
            .fold(0.0_f64, f64::max);
        let rounds = channels.len().div_ceil(self.concurrency.max(1));
        let called = self.policy.hand_off.send_latency.as_secs_f64() * rounds as f64;
        std::time::Duration::from_secs_f64(rated.max(called))
    }

    fn should_queue(&self, recipients: usize, actions: &[Action]) -> bool {
        if actions.is_empty() {
            return false;
        }
        let knobs = &self.policy.hand_off;
        let channels: Vec<NotificationChannel> = actions.iter().map(Action::channel).collect();
        let estimate = self.estimate(&channels);
        let queue = recipients > knobs.max_sync_recipients || estimate > knobs.sync_budget;
        tracing::info!(
            recipients,
            deliveries = actions.len(),
            estimate_ms = estimate.as_millis() as u64,
            budget_ms = knobs.sync_budget.as_millis() as u64,
            queue,
            "synchronous or queued"
        );
        queue
    }

    /// Stores the event with every planned delivery QUEUED, then enqueues the
    /// work; answers with the stored (PENDING) event.
    async fn hand_off(
        &self,
        queue: &dyn WorkQueue,
        cmd: &NotifyCommand,
        mut event: NotificationEvent,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
    ) -> Result<NotificationEvent, NotifyError> {
        let org = &cmd.org_id;
        let event_id = event.event_id.clone().unwrap_or_default();
        let (batches, queued) = self.batches(cmd, &event, actions);
        let mut ledger = decided;
        ledger.extend(queued);
        let (summary, _, _) = summarise(&ledger);
        let mut info = Map::new();
        info.insert("deliverySummary".into(), Value::Object(summary));
        info.insert("deliveryCount".into(), json!(ledger.len()));
        event.info = Some(info);
        let queued = mark_queued(&mut event, &batches);
        // The event says QUEUED before any worker can see a message, so a
        // fast worker never finds it half-written.
        match self.store.create_event(&event).await {
            Err(StoreError::Conflict { .. }) => {}
            other => other?,
        }
        self.store.save_deliveries(org, &event_id, &ledger).await?;
        let ids: Vec<String> = batches.iter().map(|b| b.batch_id.clone()).collect();
        self.store.open_batches(org, &event_id, &ids).await?;
        tracing::info!(
            queued,
            messages = batches.len(),
            "handing off to the work queue"
        );
        self.enqueue(queue, org, event, batches).await
    }

    /// Splits actions into queue messages (channels interleaved), and the
    /// QUEUED ledger entries that name them.
    fn batches(
        &self,
        cmd: &NotifyCommand,
        event: &NotificationEvent,
        actions: Vec<Action>,
    ) -> (Vec<WorkBatch>, Vec<Delivery>) {
        let event_id = event.event_id.clone().unwrap_or_default();
        let per_message = self.policy.hand_off.deliveries_per_message.max(1);
        let mut batches = Vec::new();
        let mut queued = Vec::new();
        for (n, chunk) in interleave(actions).chunks(per_message).enumerate() {
            let batch_id = format!("b{n:05}");
            queued.extend(chunk.iter().map(|a| {
                let mut d = a.intent();
                d.status = DeliveryStatus::Queued;
                d.batch = Some(batch_id.clone());
                d
            }));
            batches.push(WorkBatch {
                organization_id: cmd.org_id.to_string(),
                event_id: event_id.clone(),
                offer_id: cmd.offer_id.to_string(),
                batch_id,
                deliveries: chunk
                    .iter()
                    .map(|a| work_item(event, a.channel(), a.contact_id()))
                    .collect(),
            });
        }
        (batches, queued)
    }

    /// A synchronous run that reached the deadline with sends not started
    /// hands them to the queue instead of leaving them for a retry: the event
    /// is stored PENDING and QUEUED first, then the messages are sent.
    async fn hand_off_rest(
        &self,
        queue: &dyn WorkQueue,
        cmd: &NotifyCommand,
        mut event: NotificationEvent,
        mut recorded: Vec<Delivery>,
        not_started: Vec<Action>,
    ) -> Result<NotificationEvent, NotifyError> {
        let org = &cmd.org_id;
        let event_id = event.event_id.clone().unwrap_or_default();
        let (batches, queued) = self.batches(cmd, &event, not_started);
        // Their intents (SENDING) are on record: they become QUEUED, never sent here.
        self.store.save_deliveries(org, &event_id, &queued).await?;
        recorded.extend(queued);
        conclude(&mut event, &recorded, 0);
        event.event_status = Some(EventStatus::Pending);
        let queued = mark_queued(&mut event, &batches);
        self.store.finish_event(&event).await?;
        let ids: Vec<String> = batches.iter().map(|b| b.batch_id.clone()).collect();
        self.store.open_batches(org, &event_id, &ids).await?;
        tracing::info!(
            queued,
            messages = batches.len(),
            "deadline near: handing the rest to the work queue"
        );
        self.enqueue(queue, org, event, batches).await
    }

    /// A keyed retry of a handed-off request: enqueues again whatever is still
    /// QUEUED. Duplicates are harmless: a worker only sends what it takes from QUEUED.
    async fn requeue(
        &self,
        cmd: &NotifyCommand,
        event: NotificationEvent,
        ledger: Vec<Delivery>,
    ) -> Result<NotificationEvent, NotifyError> {
        let Some(queue) = self.queue.as_deref() else {
            return Ok(event);
        };
        if event.event_status != Some(EventStatus::Pending) {
            return Ok(event);
        }
        let mut grouped: std::collections::BTreeMap<String, Vec<WorkItem>> = Default::default();
        for d in ledger.iter().filter(|d| d.status == DeliveryStatus::Queued) {
            if let Some(batch) = &d.batch {
                grouped.entry(batch.clone()).or_default().push(work_item(
                    &event,
                    d.channel.clone(),
                    d.contact_id.clone(),
                ));
            }
        }
        if grouped.is_empty() {
            return Ok(event);
        }
        let event_id = event.event_id.clone().unwrap_or_default();
        let ids: Vec<String> = grouped.keys().cloned().collect();
        self.store
            .open_batches(&cmd.org_id, &event_id, &ids)
            .await?;
        let batches = grouped
            .into_iter()
            .map(|(batch_id, deliveries)| WorkBatch {
                organization_id: cmd.org_id.to_string(),
                event_id: event_id.clone(),
                offer_id: cmd.offer_id.to_string(),
                batch_id,
                deliveries,
            })
            .collect();
        tracing::info!(messages = ids.len(), "enqueuing again what is still queued");
        self.enqueue(queue, &cmd.org_id, event, batches).await
    }

    /// Sends the batches to the queue. A batch the queue refused (after the
    /// adapter's retries) has its deliveries recorded FAILED and is completed,
    /// so the event still closes and says who was not notified.
    async fn enqueue(
        &self,
        queue: &dyn WorkQueue,
        org: &OrgId,
        event: NotificationEvent,
        batches: Vec<WorkBatch>,
    ) -> Result<NotificationEvent, NotifyError> {
        let event_id = event.event_id.clone().unwrap_or_default();
        let results = queue.enqueue(&batches).await;
        let mut closed = None;
        let mut refused = 0;
        for (batch, result) in batches.iter().zip(results) {
            let Err(e) = result else { continue };
            refused += 1;
            tracing::error!(batch = %batch.batch_id, code = %e.code, "work batch could not be queued");
            let failed = failed_all(batch, &format!("could not be queued: {e}"));
            self.store.replace_queued(org, &event_id, &failed).await?;
            if let Some(c) = self.complete(org, &event_id, &batch.batch_id).await? {
                closed = Some(c);
            }
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                queued = batches.len() - refused,
                "some work batches were not queued"
            );
        }
        Ok(closed.unwrap_or(event))
    }

    /// Marks a batch finished; the call that finishes the last one closes
    /// the event (returned when this call closed it).
    pub(crate) async fn complete(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> Result<Option<NotificationEvent>, StoreError> {
        let progress = self.store.complete_batch(org, event_id, batch_id).await?;
        tracing::debug!(
            batch = batch_id,
            removed = progress.removed,
            remaining = progress.remaining,
            "work batch completed"
        );
        if progress.remaining > 0 {
            return Ok(None);
        }
        let Some((mut event, ledger)) = self.store.event_with_deliveries(org, event_id).await?
        else {
            return Ok(None);
        };
        if event.event_status != Some(EventStatus::Pending) {
            return Ok(None);
        }
        let status = conclude(&mut event, &ledger, 0);
        if self.store.close_event(&event).await? {
            tracing::info!(status = %status, deliveries = ledger.len(), "event closed by the last work batch");
            Ok(Some(event))
        } else {
            // Another worker closed it first: exactly one close wins.
            Ok(None)
        }
    }

    /// Delivers, writing the ledger as deliveries complete (so an interrupted
    /// run can be resumed without sending twice), then stores the outcome.
    async fn deliver_and_record(
        &self,
        cmd: &NotifyCommand,
        mut event: NotificationEvent,
        actions: Vec<Action>,
        decided: Vec<Delivery>,
        mut recorded: Vec<Delivery>,
    ) -> Result<NotificationEvent, NotifyError> {
        let org = &cmd.org_id;
        let event_id = event.event_id.clone().unwrap_or_default();
        tracing::info!(
            recipients = event.contact_ids.as_ref().map_or(0, Vec::len),
            planned = actions.len(),
            skipped = decided.len(),
            "event stored, delivering"
        );
        if !decided.is_empty() {
            self.store.save_deliveries(org, &event_id, &decided).await?;
            recorded.extend(decided);
        }
        let (sent, not_started) = self
            .send_all(org, &event_id, actions, cmd.deadline, true)
            .await?;
        recorded.extend(sent);
        if let Some(queue) = self.queue.as_deref()
            && !not_started.is_empty()
        {
            return self
                .hand_off_rest(queue, cmd, event, recorded, not_started)
                .await;
        }
        // Near the Lambda's deadline no new send starts: what remains is left
        // for a retry with the same idempotency key.
        let reason = "not started before the Lambda's deadline; a retry with the same idempotency key sends it";
        let not_started: Vec<Delivery> = not_started
            .into_iter()
            .map(|a| {
                let mut d = a.intent();
                d.status = DeliveryStatus::Skipped;
                d.reason = Some(reason.into());
                d
            })
            .collect();
        if !not_started.is_empty() {
            // Their intents are on record; say they were not sent, so a resume sends them.
            self.store
                .save_deliveries(org, &event_id, &not_started)
                .await?;
        }
        let not_started_count = not_started.len();
        recorded.extend(not_started);
        let status = conclude(&mut event, &recorded, not_started_count);
        self.store.finish_event(&event).await?;
        tracing::info!(status = %status, not_started = not_started_count, "event finished");
        Ok(event)
    }

    /// Sends with bounded concurrency under the rate limits, recording each
    /// outcome in the ledger as it completes. With `record_intents`, each
    /// batch's SENDING intents are written before any of it is sent (a worker
    /// has written them already, taking the deliveries from QUEUED). Answers
    /// the recorded outcomes in order, and the actions not started because
    /// the deadline came near.
    pub(crate) async fn send_all(
        &self,
        org: &OrgId,
        event_id: &str,
        actions: Vec<Action>,
        deadline: Option<std::time::Instant>,
        record_intents: bool,
    ) -> Result<(Vec<Delivery>, Vec<Action>), NotifyError> {
        let deadline = deadline.map(|d| d.checked_sub(self.policy.deadline_margin).unwrap_or(d));
        let mut waiting = actions.into_iter().enumerate();
        // Actions whose intent (SENDING) is recorded, in order, not started yet.
        let mut ready: std::collections::VecDeque<(usize, Action)> =
            std::collections::VecDeque::new();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut unrecorded: Vec<(usize, Delivery)> = Vec::new();
        let mut fresh: Vec<(usize, Delivery)> = Vec::new();
        let mut not_started: Vec<Action> = Vec::new();
        let mut stopped = false;
        let mut tick = tokio::time::interval(LEDGER_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while in_flight.len() < self.concurrency.max(1) && !stopped {
                if ready.is_empty() {
                    // Record the next batch's intents before any of it is sent.
                    ready.extend(waiting.by_ref().take(LEDGER_BATCH));
                    if ready.is_empty() {
                        break;
                    }
                    if record_intents {
                        let marks: Vec<Delivery> = ready.iter().map(|(_, a)| a.intent()).collect();
                        self.store.save_deliveries(org, event_id, &marks).await?;
                    }
                }
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    not_started.extend(ready.drain(..).chain(waiting.by_ref()).map(|(_, a)| a));
                    stopped = true;
                    break;
                }
                if let Some((i, a)) = ready.pop_front() {
                    in_flight.push(async move { (i, self.perform(a).await) });
                }
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, d)) = in_flight.next() => {
                    unrecorded.push((i, d));
                    if unrecorded.len() >= LEDGER_BATCH {
                        self.flush(org, event_id, &mut unrecorded, &mut fresh).await?;
                    }
                }
                _ = tick.tick(), if !unrecorded.is_empty() => self.flush(org, event_id, &mut unrecorded, &mut fresh).await?,
            }
        }
        self.flush(org, event_id, &mut unrecorded, &mut fresh)
            .await?;
        fresh.sort_by_key(|(i, _)| *i);
        Ok((fresh.into_iter().map(|(_, d)| d).collect(), not_started))
    }

    async fn flush(
        &self,
        org: &OrgId,
        event_id: &str,
        unrecorded: &mut Vec<(usize, Delivery)>,
        recorded: &mut Vec<(usize, Delivery)>,
    ) -> Result<(), NotifyError> {
        if unrecorded.is_empty() {
            return Ok(());
        }
        let batch: Vec<Delivery> = unrecorded.iter().map(|(_, d)| d.clone()).collect();
        self.store.save_deliveries(org, event_id, &batch).await?;
        recorded.append(unrecorded);
        Ok(())
    }
}

/// Says in the event's `info` that its deliveries went to the work queue;
/// answers how many.
fn mark_queued(event: &mut NotificationEvent, batches: &[WorkBatch]) -> usize {
    let queued: usize = batches.iter().map(|b| b.deliveries.len()).sum();
    let info = event.info.get_or_insert_with(Map::new);
    info.insert("deliveryMode".into(), json!(QUEUED_MODE));
    info.insert("queuedDeliveries".into(), json!(queued));
    info.insert("queueMessages".into(), json!(batches.len()));
    queued
}

/// Every delivery of a queue message, recorded FAILED with `reason`.
pub(crate) fn failed_all(batch: &WorkBatch, reason: &str) -> Vec<Delivery> {
    batch
        .deliveries
        .iter()
        .map(|item| {
            let mut d = skipped(item.channel.clone(), item.contact_id.as_deref(), reason);
            d.status = DeliveryStatus::Failed;
            d
        })
        .collect()
}

/// One delivery as a queue message names it; a contact of the settings'
/// `ccContactIds` is marked as such (it gets the email copy only).
fn work_item(
    event: &NotificationEvent,
    channel: NotificationChannel,
    contact_id: Option<String>,
) -> WorkItem {
    let cc = channel == NotificationChannel::Email
        && contact_id
            .as_ref()
            .is_some_and(|c| event.cc_contact_ids.iter().flatten().any(|x| x == c));
    WorkItem {
        channel,
        contact_id,
        cc,
    }
}

/// `info.deliveryMode` of an event handed to the work queue.
pub const QUEUED_MODE: &str = "QUEUED";

fn is_queued(event: &NotificationEvent) -> bool {
    event
        .info
        .as_ref()
        .and_then(|i| i.get("deliveryMode"))
        .and_then(Value::as_str)
        == Some(QUEUED_MODE)
}

/// A delivery found SENDING by a later run: it may have gone out, so it is
/// not sent again.
pub(crate) fn unconfirm(d: &mut Delivery, why: &str) {
    d.status = DeliveryStatus::Unconfirmed;
    d.reason = Some(format!(
        "{why}; not sent again, so it reached the recipient at most once"
    ));
    d.time = now_millis();
    d.batch = None;
}

/// Orders actions so that channels alternate (EMAIL, SMS, EMAIL, SMS, ...):
/// every queue message then keeps each channel's rate busy.
fn interleave(actions: Vec<Action>) -> Vec<Action> {
    let mut lanes: Vec<(NotificationChannel, std::collections::VecDeque<Action>)> = Vec::new();
    for a in actions {
        let c = a.channel();
        match lanes.iter_mut().find(|(lane, _)| *lane == c) {
            Some((_, q)) => q.push_back(a),
            None => lanes.push((c, std::collections::VecDeque::from([a]))),
        }
    }
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for (_, q) in lanes.iter_mut() {
            if let Some(a) = q.pop_front() {
                out.push(a);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

/// Writes the outcome into the event: per-channel counts, the deliveries
/// inline (or, for a large event, the ones that did not go out), the final
/// status. Keeps what `info` already holds (the queue figures, opens).
fn conclude(
    event: &mut NotificationEvent,
    recorded: &[Delivery],
    not_started: usize,
) -> EventStatus {
    let (summary, status, used) = summarise(recorded);
    let status = if not_started > 0 {
        EventStatus::Pending
    } else {
        status
    };
    let info = event.info.get_or_insert_with(Map::new);
    info.insert("deliverySummary".into(), Value::Object(summary));
    info.insert("deliveryCount".into(), json!(recorded.len()));
    if not_started > 0 {
        info.insert("deliveriesNotStarted".into(), json!(not_started));
    }
    if recorded.len() <= MAX_INLINE_DELIVERIES {
        info.insert(
            "deliveries".into(),
            serde_json::to_value(recorded).unwrap_or(Value::Null),
        );
    } else {
        let problems: Vec<&Delivery> = recorded
            .iter()
            .filter(|d| !matches!(d.status, DeliveryStatus::Sent | DeliveryStatus::Skipped))
            .take(MAX_INLINE_DELIVERIES)
            .collect();
        if !problems.is_empty() {
            info.insert(
                "failedDeliveries".into(),
                serde_json::to_value(problems).unwrap_or(Value::Null),
            );
        }
    }
    event.channels = Some(used);
    event.event_status = Some(status.clone());
    event.last_update_time = Some(now_millis());
    status
}

/// Deliveries are written to the ledger in batches of this many, or at least
/// this often, whichever comes first: the most a crash can leave unrecorded.
const LEDGER_BATCH: usize = 25;
const LEDGER_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl<S: crate::tracking::OpenTracker, M: Send + Sync, P: Send + Sync, T: Send + Sync>
    crate::tracking::OpenTracker for Notifier<S, M, P, T>
{
    fn record_open(
        &self,
        open: &crate::tracking::Open,
    ) -> impl Future<Output = Result<crate::tracking::Recorded, StoreError>> + Send {
        self.store.record_open(open)
    }
}

/// How the edges should present an error: the caller's fault, a missing
/// thing, or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    /// The idempotency key belongs to another request (HTTP 422).
    KeyReused,
    /// The idempotency key's request is still running (HTTP 409).
    KeyInProgress,
    Internal,
}

impl NotifyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NotifyError::OfferNotFound(_) => ErrorKind::NotFound,
            NotifyError::NotOnOffer { .. } | NotifyError::NoContacts(_) => ErrorKind::BadRequest,
            NotifyError::KeyReused(_) => ErrorKind::KeyReused,
            NotifyError::KeyInProgress(_) => ErrorKind::KeyInProgress,
            NotifyError::Store(_) => ErrorKind::Internal,
        }
    }
}
