//! SLACK, MICROSOFT_TEAMS and WEBHOOK through the use case, against an
//! in-memory poster and secrets (the real poster and Secrets Manager on moto
//! are in `web_receivers.rs`): what each target receives, every failure
//! answer, disabled targets, the webhook's retries through the queue, and no
//! secret in the logs at DEBUG.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use notify_offer_contacts::channels::WebTargets;
use notify_offer_contacts::channels::guard::TestOnlyAllowance;
use notify_offer_contacts::channels::web::{CachedSecrets, WebAnswer};
use notify_offer_contacts::memory::{
    self, MemoryPoster, MemoryProvider, MemoryQueue, MemorySecrets, MemoryStore,
};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{Notifier, NotifyCommand, NotifyContacts};
use notify_offer_contacts::ports::{OfferStore, SendError};
use notify_offer_contacts::work::{Work, WorkDone};

mod common;

const ORG: &str = "org1";
const SLACK_URL: &str = "https://hooks.slack.com/services/T0001/B0001/SLACKSECRETTOKEN";
const TEAMS_URL: &str = "https://prod-01.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=TEAMSSECRETSIG";
const HOOK_URL: &str = "https://hooks.seller.example/notify?token=HOOKURLSECRET";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

type N = Notifier<Arc<MemoryStore>>;

struct Rig {
    n: N,
    store: Arc<MemoryStore>,
    poster: Arc<MemoryPoster>,
    secrets: Arc<MemorySecrets>,
    queue: Option<Arc<MemoryQueue>>,
}

fn target(name: &str) -> Option<WebTarget> {
    Some(WebTarget {
        secret: name.into(),
        disabled: None,
    })
}

fn rig(channels: Vec<NotificationChannel>, queue: bool) -> Rig {
    let offer = Offer {
        id: "o1".into(),
        organization_id: Some(ORG.into()),
        name: Some("Enterprise <plan> & more".into()),
        status: Some("PENDING_ACCEPTANCE".into()),
        partner: Some(Partner::Aws),
        contact_ids: vec!["a".into()],
        info: Some(OfferInfo {
            private_offer_url: Some("https://aws.amazon.com/marketplace/offer/o1".into()),
        }),
        expire_time: None,
    };
    let store = Arc::new(
        MemoryStore::default()
            .with_offer(ORG, offer)
            .with_contact(
                ORG,
                Contact {
                    id: "a".into(),
                    organization_id: Some(ORG.into()),
                    name: Some("Ann".into()),
                    email_address: Some("ann@buyer.example".into()),
                    info: None,
                },
            )
            .with_settings(
                ORG,
                NotificationSettings {
                    channels: Some(channels),
                    slack: target("alerts"),
                    microsoft_teams: target("teams-alerts"),
                    webhook: target("erp"),
                    ..NotificationSettings::default()
                },
            ),
    );
    let secrets = Arc::new(
        MemorySecrets::default()
            .with("pfx/org1/alerts", SLACK_URL)
            .with("pfx/org1/teams-alerts", TEAMS_URL)
            .with(
                "pfx/org1/erp",
                &format!(r#"{{"url":"{HOOK_URL}","signingSecret":"{WHSEC}"}}"#),
            ),
    );
    let poster = Arc::new(MemoryPoster::default());
    let mut n = memory::notifier(store.clone(), Arc::new(MemoryProvider::default()), 8);
    n.channels.web = Arc::new(WebTargets::new(
        poster.clone(),
        Arc::new(CachedSecrets::new(
            secrets.clone(),
            Duration::from_secs(300),
            100,
        )),
        "pfx/",
        TestOnlyAllowance::default(),
    ));
    let queue = queue.then(|| Arc::new(MemoryQueue::default()));
    n.queue = queue
        .clone()
        .map(|q| q as Arc<dyn notify_offer_contacts::ports::WorkQueue>);
    Rig {
        n,
        store,
        poster,
        secrets,
        queue,
    }
}

fn cmd() -> NotifyCommand {
    NotifyCommand::new(OrgId::parse(ORG).unwrap(), OfferId::parse("o1").unwrap())
}

fn delivery(r: &Rig, event: &NotificationEvent, channel: NotificationChannel) -> Delivery {
    r.store
        .deliveries(event.event_id.as_deref().unwrap())
        .into_iter()
        .find(|d| d.channel == channel)
        .unwrap_or_else(|| panic!("no {channel} delivery"))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[tokio::test]
async fn slack_gets_blocks_with_escaped_text_and_the_offer_button() {
    let r = rig(
        vec![NotificationChannel::Email, NotificationChannel::Slack],
        false,
    );
    let event = r.n.notify(cmd()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done));
    let posted = r.poster.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].host, "hooks.slack.com");
    assert_eq!(posted[0].path, "/services/T0001/B0001/SLACKSECRETTOKEN");
    let body = json(&posted[0].body);
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("Enterprise &lt;plan&gt; &amp; more")
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    let button = blocks
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("a button block");
    assert_eq!(
        button["elements"][0]["url"],
        "https://aws.amazon.com/marketplace/offer/o1"
    );
    for b in blocks.iter().filter(|b| b["type"] == "section") {
        assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 3000);
    }
    let d = delivery(&r, &event, NotificationChannel::Slack);
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.contact_id, None);
}

#[tokio::test]
async fn a_revoked_slack_hook_fails_with_the_reason_and_disables_the_target() {
    for (status, code) in [
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (403, "invalid_token"),
        (403, "no_service"),
        (404, "no_team"),
        (400, "no_active_hooks"),
    ] {
        let r = rig(vec![NotificationChannel::Slack], false);
        r.poster.status(status, code);
        let event = r.n.notify(cmd()).await.unwrap();
        let d = delivery(&r, &event, NotificationChannel::Slack);
        assert_eq!(d.status, DeliveryStatus::Failed, "{code}");
        let reason = d.reason.unwrap();
        assert!(reason.contains(code), "{reason}");
        assert!(!reason.contains("SLACKSECRET"));
        let settings = r.store.settings(&OrgId::parse(ORG).unwrap()).await.unwrap();
        let disabled = settings.slack.unwrap().disabled.expect("disabled");
        assert!(disabled.reason.contains(code));

        // The next event skips it, saying why, and posts nothing.
        let again = r.n.notify(cmd()).await.unwrap();
        let d = delivery(&r, &again, NotificationChannel::Slack);
        assert_eq!(d.status, DeliveryStatus::Skipped);
        assert!(d.reason.unwrap().contains("disabled"));
        assert_eq!(r.poster.posted().len(), 1);
    }
}

#[tokio::test]
async fn slack_429_waits_for_a_short_retry_after_once() {
    let r = rig(vec![NotificationChannel::Slack], false);
    r.poster.answer(Ok(WebAnswer {
        status: 429,
        retry_after: Some(Duration::from_secs(1)),
        ..WebAnswer::default()
    }));
    let t = std::time::Instant::now();
    let event = r.n.notify(cmd()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.poster.posted().len(), 2);
    assert_eq!(
        delivery(&r, &event, NotificationChannel::Slack).status,
        DeliveryStatus::Sent
    );
}

#[tokio::test]
async fn slack_429_with_a_long_retry_after_is_put_back_not_failed() {
    let r = rig(vec![NotificationChannel::Slack], false);
    r.poster.answer(Ok(WebAnswer {
        status: 429,
        retry_after: Some(Duration::from_secs(30)),
        ..WebAnswer::default()
    }));
    let event = r.n.notify(cmd()).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Slack);
    assert_eq!(d.status, DeliveryStatus::NotStarted, "{d:?}");
    assert_eq!(event.event_status, Some(EventStatus::Pending));
}

#[tokio::test]
async fn a_url_off_the_channels_hosts_is_refused_before_anything_is_sent() {
    let r = rig(vec![NotificationChannel::Slack], false);
    let secrets = Arc::new(MemorySecrets::default().with(
        "pfx/org1/alerts",
        "https://169.254.169.254/latest/meta-data",
    ));
    let mut n = memory::notifier(r.store.clone(), Arc::new(MemoryProvider::default()), 4);
    n.channels.web = Arc::new(WebTargets::new(
        r.poster.clone(),
        secrets,
        "pfx/",
        TestOnlyAllowance::default(),
    ));
    let event = n.notify(cmd()).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Slack);
    assert_eq!(d.status, DeliveryStatus::Failed);
    let reason = d.reason.unwrap();
    assert!(reason.contains("refused"), "{reason}");
    assert!(!reason.contains("169.254"));
    assert!(r.poster.posted().is_empty());
}

#[tokio::test]
async fn a_missing_secret_or_target_says_which() {
    let r = rig(vec![NotificationChannel::Slack], false);
    let mut n = memory::notifier(r.store.clone(), Arc::new(MemoryProvider::default()), 4);
    n.channels.web = Arc::new(WebTargets::new(
        r.poster.clone(),
        Arc::new(MemorySecrets::default()),
        "pfx/",
        TestOnlyAllowance::default(),
    ));
    let event = n.notify(cmd()).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Slack);
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert!(d.reason.unwrap().contains("'alerts' does not exist"));

    // No target in the settings at all.
    let store = Arc::new(
        MemoryStore::default()
            .with_offer(
                ORG,
                Offer {
                    id: "o1".into(),
                    organization_id: Some(ORG.into()),
                    contact_ids: vec!["a".into()],
                    ..Offer::default()
                },
            )
            .with_settings(
                ORG,
                NotificationSettings {
                    channels: Some(vec![
                        NotificationChannel::MicrosoftTeams,
                        NotificationChannel::Webhook,
                        NotificationChannel::Salesforce,
                        NotificationChannel::SugerSupport,
                    ]),
                    ..Default::default()
                },
            ),
    );
    let n = memory::notifier(store.clone(), Arc::new(MemoryProvider::default()), 4);
    let event = n.notify(cmd()).await.unwrap();
    let ds = store.deliveries(event.event_id.as_deref().unwrap());
    let reason = |c: NotificationChannel| {
        ds.iter()
            .find(|d| d.channel == c)
            .unwrap()
            .reason
            .clone()
            .unwrap()
    };
    assert!(reason(NotificationChannel::MicrosoftTeams).contains("no microsoftTeams target"));
    assert!(reason(NotificationChannel::Webhook).contains("no webhook target"));
    assert!(reason(NotificationChannel::Salesforce).contains("not supported"));
    assert!(reason(NotificationChannel::SugerSupport).contains("not supported"));
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_and_202_is_recorded_as_accepted_not_posted() {
    let r = rig(vec![NotificationChannel::MicrosoftTeams], false);
    r.poster.status(202, "");
    let event = r.n.notify(cmd()).await.unwrap();
    let posted = r.poster.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].host, "prod-01.westus.logic.azure.com");
    assert!(posted[0].body.len() < 28 * 1024);
    let body = json(&posted[0].body);
    assert_eq!(body["type"], "message");
    let a = &body["attachments"][0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(a["content"]["type"], "AdaptiveCard");
    assert_eq!(a["content"]["version"], "1.4");
    assert_eq!(a["content"]["actions"][0]["type"], "Action.OpenUrl");
    let d = delivery(&r, &event, NotificationChannel::MicrosoftTeams);
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert!(d.reason.unwrap().contains("not a confirmation"));
}

#[tokio::test]
async fn teams_404_disables_the_workflow() {
    let r = rig(vec![NotificationChannel::MicrosoftTeams], false);
    r.poster.status(404, "");
    let event = r.n.notify(cmd()).await.unwrap();
    assert_eq!(
        delivery(&r, &event, NotificationChannel::MicrosoftTeams).status,
        DeliveryStatus::Failed
    );
    let settings = r.store.settings(&OrgId::parse(ORG).unwrap()).await.unwrap();
    assert!(settings.microsoft_teams.unwrap().disabled.is_some());
}

/// Standard Webhooks verification, written from the specification with
/// aws-lc-rs's HMAC (not the `hmac` crate the function signs with).
fn verify(headers: &[(String, String)], body: &str) -> String {
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    );
    assert!(
        sig.split(' ').any(|s| s == expected),
        "signature does not verify"
    );
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - ts.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "timestamp out of tolerance");
    id
}

#[tokio::test]
async fn without_a_queue_the_webhook_gets_the_final_event_signed_once() {
    let r = rig(
        vec![NotificationChannel::Email, NotificationChannel::Webhook],
        false,
    );
    let event = r.n.notify(cmd()).await.unwrap();
    let posted = r.poster.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].host, "hooks.seller.example");
    let id = verify(&posted[0].headers, &posted[0].body);
    assert_eq!(id, format!("msg_{}", event.event_id.as_deref().unwrap()));
    let body: NotificationEvent = serde_json::from_str(&posted[0].body).unwrap();
    assert_eq!(body.event_status, Some(EventStatus::Done));
    assert_eq!(body.event_id, event.event_id);
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Sent, Some(1)));
}

#[tokio::test]
async fn without_a_queue_a_retryable_answer_fails_saying_retries_need_the_queue() {
    let r = rig(vec![NotificationChannel::Webhook], false);
    r.poster.status(503, "");
    let event = r.n.notify(cmd()).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert!(d.reason.unwrap().contains("WORK_QUEUE_URL"));
}

#[tokio::test]
async fn webhook_retries_go_through_the_queue_with_the_same_id_until_it_answers() {
    let r = rig(
        vec![NotificationChannel::Email, NotificationChannel::Webhook],
        true,
    );
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    let event_id = event.event_id.clone().unwrap();
    // The POST's answer does not wait for the endpoint: attempt 1 is queued.
    assert_eq!(event.event_status, Some(EventStatus::Done));
    assert!(r.poster.posted().is_empty());
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(
        (d.status, d.batch.as_deref()),
        (DeliveryStatus::Queued, Some("wh1"))
    );

    // Two messages for attempt 1: one due now, and a safety message due in
    // 2 minutes (it would carry the webhook had this run died after the close).
    let m = queue.drain();
    assert_eq!(m.len(), 2);
    let (now, safety): (Vec<_>, Vec<_>) = m.into_iter().partition(|m| m.not_before.is_none());
    assert_eq!(now[0].batch_id, "wh1");
    let in_2_min =
        safety[0].not_before.unwrap() - time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    assert!((100_000..=121_000).contains(&in_2_min), "{in_2_min}");
    let m = now;

    // Attempt 1: 503, so attempt 2 is queued 5 s later.
    r.poster.status(503, "");
    let w = r.n.work(m[0].clone(), 1, None).await.unwrap();
    assert_eq!(w.done, WorkDone::Recorded);
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Queued, Some(1)));
    assert!(d.reason.as_deref().unwrap().contains("503"));
    assert!(d.retry_at.is_some());
    // The same message again (a redelivery), and the safety message, post nothing.
    let again = r.n.work(m[0].clone(), 2, None).await.unwrap();
    assert_eq!(again.done, WorkDone::AlreadyClosed);
    let late = r.n.work(safety[0].clone(), 1, None).await.unwrap();
    assert_eq!(late.done, WorkDone::AlreadyClosed);

    // Received before it is due: sent on, nothing posted.
    let m = queue.drain();
    assert_eq!(m.len(), 1);
    assert!(m[0].not_before.is_some());
    assert_eq!(
        r.n.work(m[0].clone(), 1, None).await.unwrap().done,
        WorkDone::Deferred
    );
    assert_eq!(r.poster.posted().len(), 1);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let m = queue.drain();
    assert_eq!(
        r.n.work(m[0].clone(), 1, None).await.unwrap().done,
        WorkDone::Recorded
    );
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Sent, Some(2)));
    let posted = r.poster.posted();
    assert_eq!(posted.len(), 2);
    let ids: Vec<String> = posted.iter().map(|p| verify(&p.headers, &p.body)).collect();
    assert_eq!(ids, vec![format!("msg_{event_id}"); 2]);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn the_last_attempt_failing_ends_failed_and_410_disables() {
    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    let event_id = event.event_id.clone().unwrap();
    // Pretend five attempts were made: the entry waits for the sixth.
    let mut m = queue.drain().remove(0);
    m.batch_id = "wh6".into();
    let mut queued = delivery(&r, &event, NotificationChannel::Webhook);
    queued.batch = Some("wh6".into());
    queued.attempts = Some(5);
    r.store.put_delivery(&event_id, queued);
    r.poster.status(504, "");
    r.n.work(m, 1, None).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Failed, Some(6)));
    assert!(d.reason.unwrap().contains("no attempts left"));
    assert!(queue.is_empty());

    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    r.poster.status(410, "");
    r.n.work(queue.drain().remove(0), 1, None).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Failed);
    let settings = r.store.settings(&OrgId::parse(ORG).unwrap()).await.unwrap();
    assert!(settings.webhook.unwrap().disabled.is_some());
    let again = r.n.notify(cmd()).await.unwrap();
    let d = delivery(&r, &again, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Skipped);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn a_3xx_is_a_failure_and_a_connection_error_is_retried() {
    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    r.poster.status(302, "");
    r.n.work(queue.drain().remove(0), 1, None).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert!(d.reason.unwrap().contains("redirects are not followed"));

    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    r.poster.answer(Err(SendError::unknown(
        "Timeout",
        "the target did not answer in time",
    )));
    r.n.work(queue.drain().remove(0), 1, None).await.unwrap();
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Queued);
    assert_eq!(queue.len(), 1);
}

#[tokio::test]
async fn secrets_are_read_once_per_ttl_and_never_logged_at_debug() {
    let logs = common::LogSink::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(logs.clone())
            .finish(),
    );

    let r = rig(
        vec![
            NotificationChannel::Slack,
            NotificationChannel::MicrosoftTeams,
            NotificationChannel::Webhook,
        ],
        false,
    );
    r.poster.status(200, "ok");
    r.poster.status(202, "");
    r.poster.status(503, "");
    r.n.notify(cmd()).await.unwrap();
    r.poster.status(404, "channel_not_found");
    r.n.notify(cmd()).await.unwrap();
    assert_eq!(r.poster.posted().len(), 6);
    // Three targets, two events: three reads (the cache serves the rest).
    assert_eq!(r.secrets.reads.load(std::sync::atomic::Ordering::SeqCst), 3);

    let text = logs.text();
    assert!(text.len() > 1000, "the test must see the logs");
    for secret in [
        "SLACKSECRETTOKEN",
        "TEAMSSECRETSIG",
        "HOOKURLSECRET",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "hooks.slack.com",
        "ann@buyer.example",
    ] {
        assert!(!text.contains(secret), "{secret} reached the logs");
    }
}

#[tokio::test]
async fn handed_off_events_send_slack_from_a_worker_and_the_webhook_after_the_close() {
    let mut r = rig(
        vec![
            NotificationChannel::Email,
            NotificationChannel::Slack,
            NotificationChannel::Webhook,
        ],
        true,
    );
    r.n.policy.hand_off.max_sync_recipients = 0;
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    assert!(r.poster.posted().is_empty());
    // The work batches: EMAIL and SLACK; the last one closes the event and
    // queues the webhook's first attempt.
    let mut closed = None;
    for m in queue.drain() {
        assert!(
            m.deliveries
                .iter()
                .all(|d| d.channel != NotificationChannel::Webhook)
        );
        if let WorkDone::Closed(s) = r.n.work(m, 1, None).await.unwrap().done {
            closed = Some(s);
        }
    }
    assert_eq!(closed, Some(EventStatus::Done));
    assert_eq!(r.poster.posted().len(), 1, "the Slack message");
    assert_eq!(
        delivery(&r, &event, NotificationChannel::Slack).status,
        DeliveryStatus::Sent
    );
    let m: Vec<_> = queue
        .drain()
        .into_iter()
        .filter(|m| m.not_before.is_none())
        .collect();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].batch_id, "wh1");
    r.n.work(m[0].clone(), 1, None).await.unwrap();
    let posted = r.poster.posted();
    assert_eq!(posted.len(), 2);
    verify(&posted[1].headers, &posted[1].body);
    let body: NotificationEvent = serde_json::from_str(&posted[1].body).unwrap();
    assert_eq!(body.event_status, Some(EventStatus::Done));
    assert_eq!(
        delivery(&r, &event, NotificationChannel::Webhook).status,
        DeliveryStatus::Sent
    );
}

/// The first attempt of a queued run, due now (the safety message is dropped).
fn attempt_1(queue: &MemoryQueue) -> notify_offer_contacts::ports::WorkBatch {
    queue
        .drain()
        .into_iter()
        .find(|m| m.not_before.is_none())
        .expect("attempt 1 due now")
}

#[tokio::test]
async fn a_store_failure_at_the_close_leaves_the_webhook_owed_and_its_safety_message_waits() {
    let r = rig(
        vec![NotificationChannel::Email, NotificationChannel::Webhook],
        true,
    );
    let queue = r.queue.clone().unwrap();
    r.store.fail(memory::StoreOp::FinishEvent);
    assert!(r.n.notify(cmd()).await.is_err());
    let event = r.store.events().remove(0);
    assert_eq!(event.event_status, Some(EventStatus::Pending));
    // Owed before the close: on record, with its safety message queued.
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Queued, Some(0)));
    let m = queue.drain();
    assert_eq!(m.len(), 1);
    assert!(m[0].not_before.is_some());
    // Delivered while the event is still PENDING: it waits (sent on), posts nothing.
    let w = r.n.work(m[0].clone(), 1, None).await.unwrap();
    assert_eq!(w.done, WorkDone::Deferred);
    assert!(r.poster.posted().is_empty());
    assert_eq!(queue.len(), 1);
}

#[tokio::test]
async fn a_retry_checks_the_settings_again_and_disabling_spares_a_new_target() {
    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    let m = attempt_1(&queue);
    // Since the event, the organisation replaced its webhook target.
    let org = OrgId::parse(ORG).unwrap();
    let mut settings = r.store.settings(&org).await.unwrap();
    settings.webhook = target("erp-v2");
    r.store.put_settings(ORG, settings);
    r.n.work(m, 1, None).await.unwrap();
    assert!(r.poster.posted().is_empty());
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert!(d.reason.unwrap().contains("another webhook target"));

    // A 410 from the old target's URL does not disable the new one.
    use notify_offer_contacts::ports::OfferStore as _;
    r.store
        .disable_target(&org, &NotificationChannel::Webhook, "erp", "gone")
        .await
        .unwrap();
    let settings = r.store.settings(&org).await.unwrap();
    assert_eq!(settings.webhook.unwrap().disabled, None);
}

#[tokio::test]
async fn an_attempt_left_sending_by_a_dead_worker_counts_as_failed_and_the_next_is_queued() {
    let r = rig(vec![NotificationChannel::Webhook], true);
    let queue = r.queue.clone().unwrap();
    let event = r.n.notify(cmd()).await.unwrap();
    let event_id = event.event_id.clone().unwrap();
    let m = attempt_1(&queue);
    // A worker took attempt 1 a minute ago and died.
    let mut taken = delivery(&r, &event, NotificationChannel::Webhook);
    taken.status = DeliveryStatus::Sending;
    taken.time -= time::Duration::minutes(2);
    r.store.put_delivery(&event_id, taken.clone());
    let w = r.n.work(m.clone(), 2, None).await.unwrap();
    assert_eq!(w.done, WorkDone::Recorded);
    let d = delivery(&r, &event, NotificationChannel::Webhook);
    assert_eq!(
        (d.status, d.batch.as_deref()),
        (DeliveryStatus::Queued, Some("wh2"))
    );
    assert!(d.reason.unwrap().contains("AttemptLost"));
    assert!(r.poster.posted().is_empty());
    assert_eq!(queue.len(), 1);

    // One taken moments ago is someone else's, still running: not touched.
    taken.time = time::OffsetDateTime::now_utc();
    r.store.put_delivery(&event_id, taken);
    assert!(r.n.work(m, 3, None).await.is_err());
}

#[tokio::test]
async fn slack_and_teams_carry_the_orgs_own_text_with_variables_escaped() {
    let r = rig(
        vec![
            NotificationChannel::Email,
            NotificationChannel::Slack,
            NotificationChannel::MicrosoftTeams,
        ],
        false,
    );
    let settings = |slack: &str| NotificationSettings {
        channels: Some(vec![
            NotificationChannel::Email,
            NotificationChannel::Slack,
            NotificationChannel::MicrosoftTeams,
        ]),
        slack: target("alerts"),
        microsoft_teams: target("teams-alerts"),
        seller_name: Some("Initech".into()),
        templates: Some(MessageTemplates {
            slack: Some(slack.into()),
            microsoft_teams: Some("{{ seller.name }}: {{ customFields.note }}".into()),
            ..MessageTemplates::default()
        }),
        ..NotificationSettings::default()
    };
    r.store.put_settings(
        ORG,
        settings("*{{ offer.name }}* by {{ seller.name }}: {{ customFields.note }}"),
    );
    let note: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"note": "<!channel> [click](https://evil.example) *now*"}"#)
            .unwrap();
    let with_note = || NotifyCommand {
        custom_fields: CustomFields::parse(note.clone()).unwrap(),
        ..cmd()
    };
    let event = r.n.notify(with_note()).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done), "{event:#?}");
    let posted = r.poster.posted();
    let slack = json(
        &posted
            .iter()
            .find(|p| p.host == "hooks.slack.com")
            .unwrap()
            .body,
    );
    let section = slack["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "section")
        .unwrap()["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    // The org's words; the variables cannot mention @channel or make a link.
    assert_eq!(
        section,
        "*Enterprise &lt;plan&gt; &amp; more* by Initech: &lt;!channel&gt; [click](https://evil.example) *now*"
    );
    assert_eq!(slack["text"], section);
    let teams = posted.iter().find(|p| p.host != "hooks.slack.com").unwrap();
    let card = json(&teams.body)["attachments"][0]["content"].clone();
    assert_eq!(
        card["body"][1]["text"],
        "Initech: <!channel> \\[click\\](https://evil.example) \\*now\\*"
    );

    // A Slack template that cannot render fails Slack alone, with why.
    r.store
        .put_settings(ORG, settings("{% for i in range(9) %}{{ i }}{% endfor %}"));
    let event = r.n.notify(with_note()).await.unwrap();
    let slack = delivery(&r, &event, NotificationChannel::Slack);
    assert_eq!(slack.status, DeliveryStatus::Failed);
    assert!(
        slack
            .reason
            .as_deref()
            .unwrap()
            .starts_with("the organization's slack template is not allowed: `{% for %}` at line 1"),
        "{slack:?}"
    );
    assert_eq!(
        delivery(&r, &event, NotificationChannel::MicrosoftTeams).status,
        DeliveryStatus::Sent
    );
    assert_eq!(
        delivery(&r, &event, NotificationChannel::Email).status,
        DeliveryStatus::Sent
    );
}
