//! `cargo bench`: the in-process cost of one request (parse, plan, render,
//! serialise) with zero-latency ports, and the fan-out's wall time against
//! ports that answer after 20 ms. `scripts/bench` prints the same figures as a
//! table against their ideals.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lambda_http::Body;
use notify_offer_contacts::memory::{self, MemoryProvider, offer_with_contacts};
use notify_offer_contacts::model::{NotificationChannel, OfferId, OrgId};
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};

type Bench = memory::MemoryNotifier;

fn notifier(n: usize, latency: Duration, concurrency: usize) -> Bench {
    let store = Arc::new(offer_with_contacts(n, vec![NotificationChannel::Email]).forgetful());
    let provider = Arc::new(MemoryProvider::with_latency(latency));
    memory::notifier(store, provider, concurrency)
}

fn body(n: usize) -> Body {
    Body::from(serde_json::to_string(&(0..n).map(|i| format!("c{i}")).collect::<Vec<_>>()).unwrap())
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("per_request");
    for n in [1usize, 10, 100, 1000] {
        let app = notifier(n, Duration::ZERO, 8);
        let body = body(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt).iter(|| async {
                let contact_ids = notify_offer_contacts::http::parse_body(&body).unwrap();
                let cmd = NotifyCommand {
                    contact_ids,
                    ..NotifyCommand::new(
                        OrgId::parse("org1").unwrap(),
                        OfferId::parse("o1").unwrap(),
                    )
                };
                let event = app.notify(cmd).await.unwrap();
                serde_json::to_string(&event).unwrap()
            })
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("fan_out_20ms_x16");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let app = notifier(n, Duration::from_millis(20), 16);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt).iter(|| async {
                let cmd = NotifyCommand::new(
                    OrgId::parse("org1").unwrap(),
                    OfferId::parse("o1").unwrap(),
                );
                app.notify(cmd).await.unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request, fan_out);
criterion_main!(benches);
