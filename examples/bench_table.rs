//! Prints the benchmark table of BENCHMARKS.md: fan-out wall time against its
//! ideal and a sequential loop, the in-process cost per request, peak memory,
//! and storage calls. `scripts/bench` runs it optimised; `--tiny` is CI's
//! smoke run (small sizes, figures meaningless).

use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_offer_contacts::memory::{self, MemoryProvider, MemoryStore, offer_with_contacts};
use notify_offer_contacts::model::{NotificationChannel, OfferId, OrgId};
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};
use notify_offer_contacts::rate::{RateLimiter, RateLimits};

const LATENCY: Duration = Duration::from_millis(20);

fn cmd() -> NotifyCommand {
    NotifyCommand::new(OrgId::parse("org1").unwrap(), OfferId::parse("o1").unwrap())
}

fn notifier(
    store: Arc<MemoryStore>,
    latency: Duration,
    concurrency: usize,
    rates: RateLimits,
) -> memory::MemoryNotifier {
    let mut n = memory::notifier(
        store,
        Arc::new(MemoryProvider::with_latency(latency)),
        concurrency,
    );
    n.rates = rates;
    n
}

async fn time_once(n: &impl NotifyContacts) -> Duration {
    let start = Instant::now();
    n.notify(cmd()).await.expect("notify");
    start.elapsed()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let sizes: &[usize] = if tiny {
        &[2, 5]
    } else {
        &[10, 100, 1000, 10_000]
    };
    let concurrency = 16;

    println!(
        "## Fan-out: {} ms provider latency, concurrency {concurrency}, no rate limit\n",
        LATENCY.as_millis()
    );
    println!(
        "| recipients | measured | ideal (ceil(N/{concurrency}) x {} ms) | ratio | sequential loop |",
        LATENCY.as_millis()
    );
    println!("|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let store = Arc::new(offer_with_contacts(n, vec![NotificationChannel::Email]).forgetful());
        let measured = time_once(&notifier(
            store.clone(),
            LATENCY,
            concurrency,
            RateLimits::default(),
        ))
        .await;
        let ideal = LATENCY * n.div_ceil(concurrency) as u32;
        let sequential = if n <= 100 {
            format!(
                "{:.2} s",
                time_once(&notifier(store, LATENCY, 1, RateLimits::default()))
                    .await
                    .as_secs_f64()
            )
        } else {
            format!(
                "~{:.0} s (N x 20 ms, not run)",
                (LATENCY * n as u32).as_secs_f64()
            )
        };
        println!(
            "| {n} | {:.3} s | {:.3} s | {:.3} | {sequential} |",
            measured.as_secs_f64(),
            ideal.as_secs_f64(),
            measured.as_secs_f64() / ideal.as_secs_f64()
        );
    }

    let rate = 50.0;
    println!(
        "\n## Fan-out under a rate limit: {rate}/s email bucket (burst {rate}), 20 ms latency, concurrency {concurrency}\n"
    );
    println!("| recipients | measured | ideal ((N - burst) / rate + latency) | ratio |");
    println!("|---:|---:|---:|---:|");
    for &n in if tiny {
        &[5usize][..]
    } else {
        &[100usize, 500][..]
    } {
        let store = Arc::new(offer_with_contacts(n, vec![NotificationChannel::Email]).forgetful());
        let rates = RateLimits {
            email: Some(RateLimiter::new(rate, rate as u32)),
            ..RateLimits::default()
        };
        let measured = time_once(&notifier(store, LATENCY, concurrency, rates)).await;
        let ideal = Duration::from_secs_f64((n as f64 - rate).max(0.0) / rate) + LATENCY;
        println!(
            "| {n} | {:.3} s | {:.3} s | {:.3} |",
            measured.as_secs_f64(),
            ideal.as_secs_f64(),
            measured.as_secs_f64() / ideal.as_secs_f64()
        );
    }

    println!(
        "\n## In-process cost per request (zero-latency ports: read, plan, render, record, serialise the answer)\n"
    );
    println!("| recipients | median | per recipient |");
    println!("|---:|---:|---:|");
    for &n in if tiny {
        &[1usize, 10][..]
    } else {
        &[1usize, 10, 100, 1000][..]
    } {
        let store = Arc::new(offer_with_contacts(n, vec![NotificationChannel::Email]).forgetful());
        let app = notifier(store, Duration::ZERO, 8, RateLimits::default());
        let runs = if tiny {
            3
        } else {
            (20_000 / n).clamp(20, 2000)
        };
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let event = app.notify(cmd()).await.expect("notify");
            std::hint::black_box(serde_json::to_string(&event).expect("json"));
            times.push(start.elapsed());
        }
        times.sort();
        let median = times[runs / 2];
        println!(
            "| {n} | {:.1} µs | {:.2} µs |",
            median.as_secs_f64() * 1e6,
            median.as_secs_f64() * 1e6 / n as f64
        );
    }

    let n = *sizes.last().unwrap_or(&1);
    println!("\n## Memory and storage calls\n");
    println!(
        "- peak RSS of this process after every run above (largest: {n} recipients, store included): {:.1} MB",
        peak_rss_mb()
    );
    let store = Arc::new(offer_with_contacts(n, vec![NotificationChannel::Email]).forgetful());
    let app = notifier(store.clone(), Duration::ZERO, 8, RateLimits::default());
    store.calls.store(0, std::sync::atomic::Ordering::SeqCst);
    app.notify(cmd()).await.expect("notify");
    println!(
        "- port calls for one notification of {n} recipients: {} (offer, settings, contacts, new event, intents per 25 sends, outcomes per 25 or 200 ms, final event)",
        store.calls.load(std::sync::atomic::Ordering::SeqCst)
    );
    println!(
        "- DynamoDB calls the adapter makes for it: reads 2 + ceil(N/100) = {}, writes at least 2 + 2 x ceil(N/25) = {} (BatchGetItem 100 keys, BatchWriteItem 25 items)",
        2 + n.div_ceil(100),
        2 + 2 * n.div_ceil(25)
    );
}
