//! The use case against in-memory and deliberately failing ports: one test per
//! outcome, no network.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify_offer_contacts::memory::{self, MemoryProvider, MemoryStore, StoreOp};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{
    ErrorKind, Notifier, NotifyCommand, NotifyContacts, NotifyError, Policy,
};
use notify_offer_contacts::ports::SendError;
use notify_offer_contacts::rate::{RateLimiter, RateLimits};

const ORG: &str = "org1";

type TestNotifier = Notifier<Arc<MemoryStore>>;

fn contact(id: &str, email: Option<&str>, phone: Option<&str>) -> Contact {
    Contact {
        id: id.into(),
        organization_id: Some(ORG.into()),
        name: Some(format!("Name {id}")),
        email_address: email.map(str::to_owned),
        info: phone.map(|p| ContactInfo {
            phone_number: Some(p.into()),
            ..ContactInfo::default()
        }),
    }
}

fn offer(contacts: &[&str]) -> Offer {
    Offer {
        id: "o1".into(),
        organization_id: Some(ORG.into()),
        name: Some("Enterprise plan".into()),
        status: Some("PENDING_ACCEPTANCE".into()),
        partner: Some(Partner::Aws),
        contact_ids: contacts.iter().map(|c| c.to_string()).collect(),
        info: Some(OfferInfo {
            private_offer_url: Some("https://aws.amazon.com/marketplace/offer/o1".into()),
        }),
        expire_time: None,
    }
}

/// Offer o1 with contacts a, b (email + phone) and c (no email, bad phone).
fn store() -> MemoryStore {
    MemoryStore::default()
        .with_offer(ORG, offer(&["a", "b", "c"]))
        .with_contact(
            ORG,
            contact("a", Some("a@example.com"), Some("+12065550100")),
        )
        .with_contact(
            ORG,
            contact("b", Some("b@example.com"), Some("+44 20 7946 0958")),
        )
        .with_contact(ORG, contact("c", None, Some("555-0100")))
}

/// The use case over `store`, with `provider` for every channel.
fn wired(
    store: Arc<MemoryStore>,
    provider: Arc<MemoryProvider>,
    concurrency: usize,
    rates: RateLimits,
    policy: Policy,
) -> TestNotifier {
    let mut n = memory::notifier(store, provider, concurrency);
    n.rates = rates;
    n.policy = policy;
    n
}

fn notifier(store: MemoryStore) -> (TestNotifier, Arc<MemoryStore>, Arc<MemoryProvider>) {
    let store = Arc::new(store);
    let provider = Arc::new(MemoryProvider::default());
    let n = wired(
        store.clone(),
        provider.clone(),
        4,
        RateLimits::default(),
        Default::default(),
    );
    (n, store, provider)
}

fn cmd(ids: Option<&[&str]>) -> NotifyCommand {
    NotifyCommand {
        contact_ids: ids.map(|i| ContactIdList::parse(i).unwrap()),
        ..NotifyCommand::new(OrgId::parse(ORG).unwrap(), OfferId::parse("o1").unwrap())
    }
}

fn statuses(ds: &[Delivery]) -> Vec<(String, String, DeliveryStatus)> {
    ds.iter()
        .map(|d| {
            (
                d.channel.to_string(),
                d.contact_id.clone().unwrap_or_default(),
                d.status,
            )
        })
        .collect()
}

#[tokio::test]
async fn empty_body_notifies_every_contact_and_stores_the_answer() {
    let (n, store, provider) = notifier(store());
    let event = n.notify(cmd(None)).await.unwrap();

    assert_eq!(event.action, Some(NotificationEventAction::NotifyContacts));
    assert_eq!(event.entity_type, Some(EntityType::Offer));
    assert_eq!(event.entity_id.as_deref(), Some("o1"));
    assert_eq!(event.entity_name.as_deref(), Some("Enterprise plan"));
    assert_eq!(event.partner, Some(Partner::Aws));
    assert_eq!(event.organization_id.as_deref(), Some(ORG));
    assert_eq!(
        event.contact_ids,
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(
        event.contact_emails,
        Some(vec!["a@example.com".into(), "b@example.com".into()])
    );
    assert_eq!(event.channels, Some(vec![NotificationChannel::Email]));
    // c has no email: skipped, not attempted; every attempted one was accepted.
    assert_eq!(event.event_status, Some(EventStatus::Done));

    let sent: Vec<String> = provider
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.contains(&"a@example.com".to_owned()) && sent.contains(&"b@example.com".to_owned())
    );

    let id = event.event_id.clone().unwrap();
    assert_eq!(
        store.event(ORG, &id),
        Some(event.clone()),
        "the answer is the stored event"
    );
    assert_eq!(
        statuses(&store.deliveries(&id)),
        vec![
            ("EMAIL".into(), "c".into(), DeliveryStatus::Skipped),
            ("EMAIL".into(), "a".into(), DeliveryStatus::Sent),
            ("EMAIL".into(), "b".into(), DeliveryStatus::Sent),
        ]
    );
    let info = event.info.unwrap();
    assert_eq!(
        info["deliverySummary"]["EMAIL"],
        serde_json::json!({"sent": 2, "skipped": 1, "failed": 0})
    );
    assert_eq!(
        info["deliveries"][0]["reason"],
        "contact has no email address"
    );
}

#[tokio::test]
async fn listed_ids_notify_only_those_and_duplicates_once() {
    let (n, _, provider) = notifier(store());
    let event = n.notify(cmd(Some(&["b", "b"]))).await.unwrap();
    assert_eq!(event.contact_ids, Some(vec!["b".into()]));
    assert_eq!(provider.emails().len(), 1);
    assert_eq!(provider.emails()[0].to.as_str(), "b@example.com");
}

#[tokio::test]
async fn an_empty_list_means_every_contact() {
    let (n, _, provider) = notifier(store());
    n.notify(cmd(Some(&[]))).await.unwrap();
    assert_eq!(provider.emails().len(), 2);
}

#[tokio::test]
async fn an_id_not_on_the_offer_is_refused_before_anything_is_sent() {
    let (n, store, provider) =
        notifier(store().with_contact(ORG, contact("z", Some("z@example.com"), None)));
    let err = n.notify(cmd(Some(&["a", "z", "y"]))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert_eq!(err.to_string(), "contacts z, y are not on offer o1");
    assert!(provider.emails().is_empty());
    assert!(store.events().is_empty());
}

#[tokio::test]
async fn a_contact_of_another_organisation_is_treated_as_missing() {
    // "x" is on the offer, but its contact item lives under another org.
    let base = MemoryStore::default()
        .with_offer(ORG, offer(&["a", "x"]))
        .with_contact(ORG, contact("a", Some("a@example.com"), None))
        .with_contact(
            "org2",
            Contact {
                organization_id: Some("org2".into()),
                ..contact("x", Some("x@other.com"), None)
            },
        );
    let (n, _, provider) = notifier(base);
    let err = n.notify(cmd(Some(&["x"]))).await.unwrap_err();
    assert!(matches!(err, NotifyError::NotOnOffer { .. }), "{err}");

    // Notifying everyone reaches a only; x is recorded as not found.
    let event = n.notify(cmd(None)).await.unwrap();
    assert_eq!(
        provider
            .emails()
            .iter()
            .map(|e| e.to.as_str())
            .collect::<Vec<_>>(),
        ["a@example.com"]
    );
    let deliveries = &event.info.unwrap()["deliveries"];
    assert_eq!(deliveries[0]["contactId"], "x");
    assert_eq!(
        deliveries[0]["reason"],
        "contact not found in this organization"
    );
}

#[tokio::test]
async fn an_offer_of_another_organisation_is_not_found() {
    let (n, _, provider) = notifier(MemoryStore::default().with_offer("org2", offer(&["a"])));
    let err = n.notify(cmd(None)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.to_string(), "offer o1 was not found");
    assert!(provider.emails().is_empty());
}

#[tokio::test]
async fn an_offer_without_contacts_is_a_bad_request() {
    let (n, store, _) = notifier(MemoryStore::default().with_offer(ORG, offer(&[])));
    let err = n.notify(cmd(None)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert!(store.events().is_empty());
}

#[tokio::test]
async fn sms_goes_to_e164_numbers_and_bad_numbers_are_skipped_with_why() {
    let settings = NotificationSettings {
        channels: Some(vec![NotificationChannel::Sms]),
        ..Default::default()
    };
    let (n, store, provider) = notifier(store().with_settings(ORG, settings));
    let event = n.notify(cmd(None)).await.unwrap();
    let numbers: Vec<String> = provider.sms().into_iter().map(|(to, _)| to).collect();
    assert_eq!(numbers, ["+12065550100", "+442079460958"]);
    assert!(provider.emails().is_empty());
    let ds = store.deliveries(event.event_id.as_deref().unwrap());
    let c = ds
        .iter()
        .find(|d| d.contact_id.as_deref() == Some("c"))
        .unwrap();
    assert_eq!(c.status, DeliveryStatus::Skipped);
    assert!(
        c.reason.as_deref().unwrap().contains("E.164"),
        "{:?}",
        c.reason
    );
    assert_eq!(event.channels, Some(vec![NotificationChannel::Sms]));
}

#[tokio::test]
async fn sns_channel_publishes_the_event_once_with_filter_attributes() {
    let settings = NotificationSettings {
        channels: Some(vec![NotificationChannel::Email, NotificationChannel::Sns]),
        sns_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:org1".into()),
        ..Default::default()
    };
    let (mut n, _, provider) = notifier(store().with_settings(ORG, settings));
    n.policy.topic_arn_prefix = Some("arn:aws:sns:us-east-1:123456789012:".into());
    let event = n.notify(cmd(None)).await.unwrap();
    let published = provider.published();
    assert_eq!(published.len(), 1);
    let body: NotificationEvent = serde_json::from_str(&published[0].body).unwrap();
    assert_eq!(body.event_id, event.event_id);
    // A summary: the recipients' IDs and count, never their addresses.
    assert_eq!(body.contact_emails, None);
    let raw: serde_json::Value = serde_json::from_str(&published[0].body).unwrap();
    assert_eq!(raw["contactCount"], 3);
    assert!(
        published[0]
            .attributes
            .contains(&("action".into(), "NOTIFY_CONTACTS".into()))
    );
    assert!(
        published[0]
            .attributes
            .contains(&("entityType".into(), "OFFER".into()))
    );
    assert!(
        published[0]
            .attributes
            .contains(&("organizationID".into(), ORG.into()))
    );
    assert_eq!(
        event.channels,
        Some(vec![NotificationChannel::Email, NotificationChannel::Sns])
    );
}

#[tokio::test]
async fn sns_without_a_topic_and_slack_without_a_target_are_skipped_not_errors() {
    let settings = NotificationSettings {
        channels: Some(vec![
            NotificationChannel::Sns,
            NotificationChannel::Slack,
            NotificationChannel::Salesforce,
            NotificationChannel::Email,
        ]),
        ..Default::default()
    };
    let (n, store, _) = notifier(store().with_settings(ORG, settings));
    let event = n.notify(cmd(Some(&["a"]))).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done));
    let ds = store.deliveries(event.event_id.as_deref().unwrap());
    assert_eq!(
        statuses(&ds),
        vec![
            ("SNS".into(), "".into(), DeliveryStatus::Skipped),
            ("SLACK".into(), "".into(), DeliveryStatus::Skipped),
            ("SALESFORCE".into(), "".into(), DeliveryStatus::Skipped),
            ("EMAIL".into(), "a".into(), DeliveryStatus::Sent),
        ]
    );
    assert_eq!(
        ds[1].reason.as_deref(),
        Some("no slack target in the organization's notification settings")
    );
    assert_eq!(
        ds[2].reason.as_deref(),
        Some("channel SALESFORCE is not supported by this function")
    );
}

#[tokio::test]
async fn a_refused_recipient_does_not_stop_the_others_and_the_event_says_failed() {
    let (n, store, provider) = notifier(store());
    provider.refuse(
        "a@example.com",
        SendError::permanent("MessageRejected", "Email address is not verified."),
    );
    let event = n.notify(cmd(None)).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Failed));
    assert_eq!(provider.emails().len(), 1, "b still got its email");
    let ds = store.deliveries(event.event_id.as_deref().unwrap());
    let a = ds
        .iter()
        .find(|d| d.contact_id.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(a.status, DeliveryStatus::Failed);
    assert_eq!(
        a.reason.as_deref(),
        Some("MessageRejected: Email address is not verified.")
    );
}

#[tokio::test]
async fn nobody_reachable_is_failed() {
    let (n, _, provider) = notifier(store());
    let event = n.notify(cmd(Some(&["c"]))).await.unwrap();
    assert!(provider.emails().is_empty());
    assert_eq!(event.event_status, Some(EventStatus::Failed));
}

#[tokio::test]
async fn cc_contacts_from_the_settings_get_a_copy_by_email() {
    let settings = NotificationSettings {
        cc_contact_ids: Some(vec!["m".into(), "a".into()]),
        ..Default::default()
    };
    let (n, _, provider) = notifier(
        store()
            .with_settings(ORG, settings)
            .with_contact(ORG, contact("m", Some("m@seller.com"), None)),
    );
    let event = n.notify(cmd(Some(&["a"]))).await.unwrap();
    assert_eq!(event.cc_contact_ids, Some(vec!["m".into()]));
    let mut to: Vec<String> = provider
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    to.sort();
    assert_eq!(to, ["a@example.com", "m@seller.com"]);
}

#[tokio::test]
async fn emails_carry_tags_naming_the_org_event_and_contact() {
    let (n, _, provider) = notifier(store());
    let event = n.notify(cmd(Some(&["a"]))).await.unwrap();
    let tags = &provider.emails()[0].tags;
    assert!(tags.contains(&("organizationID".into(), ORG.into())));
    assert!(tags.contains(&("eventID".into(), event.event_id.clone().unwrap())));
    assert!(tags.contains(&("contactId".into(), "a".into())));
}

#[tokio::test]
async fn a_store_failure_before_sending_sends_nothing() {
    for op in [
        StoreOp::ReadOffer,
        StoreOp::ReadSettings,
        StoreOp::ReadContacts,
        StoreOp::CreateEvent,
    ] {
        let (n, _, provider) = notifier(store());
        n.store.fail(op);
        let err = n.notify(cmd(None)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{op:?}");
        assert!(provider.emails().is_empty(), "{op:?}");
    }
}

#[tokio::test]
async fn a_store_failure_after_sending_leaves_the_event_pending() {
    for op in [StoreOp::SaveDeliveries, StoreOp::FinishEvent] {
        let (n, store, _) = notifier(store());
        store.fail(op);
        let err = n.notify(cmd(None)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let events = store.events();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].event_status,
            Some(EventStatus::Pending),
            "{op:?}: the stored event does not claim an outcome"
        );
    }
}

#[tokio::test]
async fn deliveries_run_concurrently_within_the_bound() {
    let contacts: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let ids: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let mut s = MemoryStore::default().with_offer(ORG, offer(&ids));
    for id in &ids {
        s = s.with_contact(ORG, contact(id, Some(&format!("{id}@example.com")), None));
    }
    let store = Arc::new(s);
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(20)));
    let n = wired(
        store,
        provider.clone(),
        8,
        RateLimits::default(),
        Default::default(),
    );
    let event = n.notify(cmd(None)).await.unwrap();
    assert_eq!(provider.emails().len(), 40);
    assert_eq!(provider.max_in_flight.load(Ordering::SeqCst), 8);
    assert_eq!(event.event_status, Some(EventStatus::Done));
}

#[tokio::test]
async fn created_by_is_kept_on_the_event() {
    let (n, _, _) = notifier(store());
    let by = CreatedBy {
        email: Some("seller@x.com".into()),
        entity_id: Some("u1".into()),
        entity_type: Some(EntityType::User),
        name: Some("Sam".into()),
    };
    let event = n
        .notify(NotifyCommand {
            created_by: Some(by.clone()),
            ..cmd(Some(&["a"]))
        })
        .await
        .unwrap();
    assert_eq!(event.created_by, Some(by));
}

#[tokio::test(start_paused = true)]
async fn each_channel_keeps_to_its_rate() {
    let contacts: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
    let ids: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let mut s = MemoryStore::default()
        .with_offer(ORG, offer(&ids))
        .with_settings(
            ORG,
            NotificationSettings {
                channels: Some(vec![NotificationChannel::Email, NotificationChannel::Sms]),
                ..Default::default()
            },
        );
    for (i, id) in ids.iter().enumerate() {
        s = s.with_contact(
            ORG,
            contact(
                id,
                Some(&format!("{id}@example.com")),
                Some(&format!("+120655501{i:02}")),
            ),
        );
    }
    let provider = Arc::new(MemoryProvider::default());
    let rates = RateLimits {
        email: Some(RateLimiter::new(4.0, 1)),
        sms: Some(RateLimiter::new(2.0, 1)),
        topic: None,
    };
    let n = wired(Arc::new(s), provider.clone(), 16, rates, Policy::default());
    let start = tokio::time::Instant::now();
    let event = n.notify(cmd(None)).await.unwrap();
    // 9 emails at 4/s take 2 s, 9 SMS at 2/s take 4 s; the channels run side by side.
    assert_eq!(start.elapsed().as_millis(), 4000);
    assert_eq!(provider.emails().len() + provider.sms().len(), 18);
    assert_eq!(event.event_status, Some(EventStatus::Done));
}

// ---- idempotency, resume, deadline ----

fn keyed(ids: Option<&[&str]>, key: &str) -> NotifyCommand {
    NotifyCommand {
        idempotency_key: Some(IdempotencyKey::parse(key).unwrap()),
        ..cmd(ids)
    }
}

#[tokio::test]
async fn a_repeat_with_the_same_key_answers_with_the_stored_event_and_sends_nothing() {
    let (n, store, provider) = notifier(store());
    let first = n.notify(keyed(None, "k1")).await.unwrap();
    let again = n.notify(keyed(None, "k1")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(provider.emails().len(), 2, "the repeat sent nothing");
    assert_eq!(store.events().len(), 1);
    assert_eq!(
        store.key_record(ORG, "k1").unwrap().status,
        notify_offer_contacts::ports::IdempotencyStatus::Completed
    );
    // Order and duplicates of the IDs do not make it another request.
    let (n, _, provider) = notifier(self::store());
    let a = n.notify(keyed(Some(&["a", "b"]), "k2")).await.unwrap();
    let b = n.notify(keyed(Some(&["b", "a", "a"]), "k2")).await.unwrap();
    assert_eq!(a.event_id, b.event_id);
    assert_eq!(provider.emails().len(), 2);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_refused_and_nothing_is_sent() {
    let (n, _, provider) = notifier(store());
    n.notify(keyed(Some(&["a"]), "k1")).await.unwrap();
    let err = n.notify(keyed(Some(&["b"]), "k1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyReused);
    assert_eq!(
        err.to_string(),
        "idempotency key k1 was already used for a different request; use a new key for a new request"
    );
    assert_eq!(provider.emails().len(), 1);
}

#[tokio::test]
async fn a_repeat_while_the_first_is_running_is_a_conflict() {
    let store = Arc::new(store());
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(200)));
    let n = wired(
        store.clone(),
        provider.clone(),
        4,
        RateLimits::default(),
        Default::default(),
    );
    let (first, second) = tokio::join!(n.notify(keyed(None, "k1")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        n.notify(keyed(None, "k1")).await
    });
    assert_eq!(first.unwrap().event_status, Some(EventStatus::Done));
    assert_eq!(second.unwrap_err().kind(), ErrorKind::KeyInProgress);
    assert_eq!(provider.emails().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn near_the_deadline_no_send_starts_and_a_retry_sends_only_the_rest() {
    let store = Arc::new(store());
    let provider = Arc::new(MemoryProvider::with_latency(Duration::from_millis(100)));
    let n = wired(
        store.clone(),
        provider.clone(),
        1,
        RateLimits::default(),
        Policy {
            deadline_margin: Duration::ZERO,
            min_send_time: Duration::from_millis(100),
            answer_margin: Duration::ZERO,
            ..Default::default()
        },
    );
    // a and b by email (100 ms each, one at a time). A send may start only
    // while 100 ms are left: the first starts at once, the second (at 100 ms,
    // with 50 ms left) does not.
    let first = n
        .notify(NotifyCommand {
            deadline: Some(tokio::time::Instant::now() + Duration::from_millis(150)),
            ..keyed(None, "k1")
        })
        .await
        .unwrap();
    assert_eq!(first.event_status, Some(EventStatus::Pending));
    assert_eq!(first.info.as_ref().unwrap()["deliveriesNotStarted"], 1);
    assert_eq!(provider.emails().len(), 1);

    let second = n.notify(keyed(None, "k1")).await.unwrap();
    assert_eq!(second.event_id, first.event_id, "the same event, resumed");
    assert_eq!(second.timestamp, first.timestamp);
    assert_eq!(second.event_status, Some(EventStatus::Done));
    let mut to: Vec<String> = provider
        .emails()
        .iter()
        .map(|e| e.to.as_str().to_owned())
        .collect();
    to.sort();
    assert_eq!(
        to,
        ["a@example.com", "b@example.com"],
        "each contact exactly once"
    );
    let ledger = store.deliveries(second.event_id.as_deref().unwrap());
    assert_eq!(
        ledger
            .iter()
            .filter(|d| d.status == DeliveryStatus::Sent)
            .count(),
        2
    );
}

#[tokio::test]
async fn a_run_that_died_after_sending_is_completed_by_a_retry_without_sending_again() {
    let (n, store, provider) = notifier(store());
    store.fail(StoreOp::FinishEvent);
    assert_eq!(
        n.notify(keyed(None, "k1")).await.unwrap_err().kind(),
        ErrorKind::Internal
    );
    assert_eq!(provider.emails().len(), 2);
    store.heal(StoreOp::FinishEvent);

    let event = n.notify(keyed(None, "k1")).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done));
    assert_eq!(provider.emails().len(), 2, "nobody got the email twice");
    assert_eq!(
        event.info.unwrap()["deliverySummary"]["EMAIL"],
        serde_json::json!({"sent": 2, "skipped": 1, "failed": 0})
    );
}

#[tokio::test]
async fn a_lock_left_by_a_killed_run_is_409_until_it_expires_then_resumed() {
    let (n, store, provider) = notifier(store());
    store.fail(StoreOp::FinishEvent);
    assert!(n.notify(keyed(Some(&["b"]), "k1")).await.is_err());
    store.heal(StoreOp::FinishEvent);
    // As if the process had been killed: the key still holds its lock.
    store.hold_lock(ORG, "k1", i64::MAX);
    assert_eq!(
        n.notify(keyed(Some(&["b"]), "k1"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::KeyInProgress
    );

    store.expire_lock(ORG, "k1");
    let event = n.notify(keyed(Some(&["b"]), "k1")).await.unwrap();
    assert_eq!(event.event_status, Some(EventStatus::Done));
    assert_eq!(
        provider.emails().len(),
        1,
        "b's email was recorded as sent before the kill"
    );
}

#[tokio::test]
async fn after_its_window_a_key_starts_a_new_request() {
    let (n, store, provider) = notifier(store());
    let first = n.notify(keyed(Some(&["a"]), "k1")).await.unwrap();
    store.expire_key(ORG, "k1");
    let second = n.notify(keyed(Some(&["a"]), "k1")).await.unwrap();
    assert_ne!(first.event_id, second.event_id);
    assert_eq!(provider.emails().len(), 2);
}

#[tokio::test]
async fn sends_whose_outcome_was_never_recorded_are_unconfirmed_not_sent_twice() {
    let (n, store, provider) = notifier(store());
    // Writes: c's skip, then a's and b's intents (SENDING), then their outcomes: that one fails.
    store.fail_after(StoreOp::SaveDeliveries, 2);
    assert_eq!(
        n.notify(keyed(None, "k1")).await.unwrap_err().kind(),
        ErrorKind::Internal
    );
    assert_eq!(
        provider.emails().len(),
        2,
        "both were accepted before the failure"
    );
    store.heal(StoreOp::SaveDeliveries);

    let event = n.notify(keyed(None, "k1")).await.unwrap();
    assert_eq!(provider.emails().len(), 2, "nobody is emailed twice");
    assert_eq!(
        event.event_status,
        Some(EventStatus::Failed),
        "not known to be accepted: not DONE"
    );
    assert_eq!(
        event.info.as_ref().unwrap()["deliverySummary"]["EMAIL"],
        serde_json::json!({"sent": 0, "skipped": 1, "failed": 0, "unconfirmed": 2})
    );
    let ledger = store.deliveries(event.event_id.as_deref().unwrap());
    let a = ledger
        .iter()
        .find(|d| d.contact_id.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(a.status, DeliveryStatus::Unconfirmed);
    assert!(a.reason.as_deref().unwrap().contains("at most once"));
}

#[tokio::test]
async fn an_org_topic_outside_this_account_region_or_prefix_is_refused_and_nothing_is_published() {
    for arn in [
        "arn:aws:sns:us-east-1:999999999999:org1", // another account
        "arn:aws:sns:eu-west-1:123456789012:org1", // another region
        "arn:aws:sns:us-east-1:123456789012:notify-offer-contacts-dev-alarms", // the stack's own
        "arn:aws:sns:us-east-1:123456789012:org2", // another organisation's
        "arn:aws:sns:us-east-1:123456789012:org1-extra", // not exactly its own
        "arn:aws:sns:us-east-1:123456789012:org1:subscription-id", // not a topic
        "https://example.com/hook",
    ] {
        let settings = NotificationSettings {
            channels: Some(vec![NotificationChannel::Sns]),
            sns_topic_arn: Some(arn.into()),
            ..Default::default()
        };
        let (mut n, store, provider) = notifier(store().with_settings(ORG, settings));
        n.policy.topic_arn_prefix = Some("arn:aws:sns:us-east-1:123456789012:".into());
        let event = n.notify(cmd(None)).await.unwrap();
        assert!(provider.published().is_empty(), "{arn}");
        let ledger = store.deliveries(event.event_id.as_deref().unwrap());
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].status, DeliveryStatus::Failed, "{arn}");
        let reason = ledger[0].reason.clone().unwrap();
        assert!(reason.starts_with("snsTopicArn refused"), "{reason}");
        assert!(
            !reason.contains("999999999999") && !reason.contains("alarms"),
            "{reason}"
        );
    }
    // No prefix configured: no organisation topic at all.
    let settings = NotificationSettings {
        channels: Some(vec![NotificationChannel::Sns]),
        sns_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:org1".into()),
        ..Default::default()
    };
    let (n, _, provider) = notifier(store().with_settings(ORG, settings));
    n.notify(cmd(None)).await.unwrap();
    assert!(provider.published().is_empty());
}

#[test]
fn the_topic_message_stays_far_below_256_kb_at_any_recipient_count() {
    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("contact-{i:06}-{}", "x".repeat(100)))
        .collect();
    let event = NotificationEvent {
        event_id: Some("e1".into()),
        contact_ids: Some(ids.clone()),
        contact_emails: Some(
            ids.iter()
                .map(|i| format!("{i}@buyer.example.com"))
                .collect(),
        ),
        entity_name: Some("n".repeat(300_000)),
        ..NotificationEvent::default()
    };
    let body = notify_offer_contacts::notify::topic_body(&event);
    assert!(
        body.len() <= notify_offer_contacts::notify::MAX_TOPIC_BYTES,
        "{}",
        body.len()
    );
    assert!(!body.contains('@'), "no addresses in the topic message");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["contactCount"], 10_000);
    assert_eq!(v["eventID"], "e1");
}
