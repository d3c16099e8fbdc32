//! This project's side of the side-by-side benchmark (`scripts/compare`):
//! the function's use case wired to the AWS SDK exactly as in the Lambda
//! (`notify_offer_contacts::app`, configuration from the environment: its
//! defaults, with the rates set by the caller), timing whole notifications
//! of every contact of an offer. Also times the reads and writes no
//! implementation can avoid (the offer, the settings, the contacts, the
//! event stored), for the ideal.
//!
//! usage: notify_once ORG OFFER RUNS   (prints one JSON line per run)
//!
//! With `STORE_PID` set (the local store's process, as `scripts/compare`
//! sets it), each line also says how much CPU that process spent during the
//! notification: how close the store alone comes to the run's wall time.

use std::time::Instant;

use notify_offer_contacts::model::{OfferId, OrgId};
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};
use notify_offer_contacts::ports::{ContactStore, EventStore, OfferStore};

// The runtime main.rs builds.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let org = OrgId::parse(&args[1]).expect("org");
    let offer = OfferId::parse(&args[2]).expect("offer");
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    // Log lines on stderr (AWS_LAMBDA_LOG_LEVEL=info shows where the time goes).
    notify_offer_contacts::telemetry::init();
    let config = notify_offer_contacts::config::Config::from_env().expect("config");
    let sdk = notify_offer_contacts::aws::sdk_config().await;
    let app = notify_offer_contacts::app(&sdk, &config);

    // Warm the connections, as a warm Lambda has them.
    let warm = app
        .notify(NotifyCommand::new(
            org.clone(),
            OfferId::parse("offer-warm").expect("warm offer"),
        ))
        .await;
    assert!(warm.is_ok(), "warm-up: {warm:?}");

    for _ in 0..runs {
        // The reads and writes any implementation makes: offer, settings,
        // contacts, and the event stored once.
        let t = Instant::now();
        let (found, _) = tokio::join!(app.store.offer(&org, &offer), app.store.settings(&org));
        let found = found.expect("offer").expect("the offer exists");
        let ids: Vec<_> = found
            .contact_ids
            .iter()
            .filter_map(|c| notify_offer_contacts::model::ContactId::parse(c).ok())
            .collect();
        app.store.contacts(&org, &ids).await.expect("contacts");
        let probe = notify_offer_contacts::model::NotificationEvent {
            organization_id: Some(org.to_string()),
            event_id: Some(uuid::Uuid::now_v7().to_string()),
            ..Default::default()
        };
        app.store.create_event(&probe).await.expect("put");
        let io_ms = t.elapsed().as_secs_f64() * 1000.0;

        // What the store alone takes to absorb one outcome per send (the
        // per-recipient records every notification leaves), as the engine
        // writes them: 25 a call.
        let outcomes: Vec<_> = ids
            .iter()
            .flat_map(|c| {
                [
                    notify_offer_contacts::model::NotificationChannel::Email,
                    notify_offer_contacts::model::NotificationChannel::Sms,
                ]
                .map(|ch| {
                    let mut d = notify_offer_contacts::model::Delivery::new(
                        ch,
                        Some(c.to_string()),
                        notify_offer_contacts::model::DeliveryStatus::Sent,
                    );
                    d.message_id = Some(format!("{}-{}", uuid::Uuid::now_v7(), c));
                    d
                })
            })
            .collect();
        let t = Instant::now();
        let probe_id = probe.event_id.clone().unwrap_or_default();
        futures::future::try_join_all(
            outcomes
                .chunks(25)
                .map(|c| app.store.save_deliveries(&org, &probe_id, c)),
        )
        .await
        .expect("outcomes");
        let outcomes_ms = t.elapsed().as_secs_f64() * 1000.0;

        let cpu_before = store_cpu_ms();
        let t = Instant::now();
        let event = app
            .notify(NotifyCommand::new(org.clone(), offer.clone()))
            .await
            .expect("notify");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let store_cpu = store_cpu_ms()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        let summary = &event.info.as_ref().expect("info")["deliverySummary"];
        println!(
            "{}",
            serde_json::json!({
                "ms": ms, "io_ms": io_ms, "store_cpu_ms": store_cpu, "outcomes_ms": outcomes_ms, "concurrency": app.concurrency,
                "status": event.event_status, "summary": summary,
            })
        );
    }
}

/// The CPU time (user + system, ms) the process `STORE_PID` has used so far,
/// from `/proc/{pid}/stat` (in clock ticks of 10 ms: Linux's USER_HZ is 100).
fn store_cpu_ms() -> Option<f64> {
    let pid = std::env::var("STORE_PID").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's name, which is in parentheses: utime
    // and stime are the 14th and 15th of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}
