//! Structured logs: JSON lines (CloudWatch reads them as fields), the level from
//! `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`. Each line carries its spans: the
//! runtime's (`requestId`, `xrayTraceId`) and, once the event exists, `event_id`. No line holds an address, a number or a body.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
        .to_lowercase();
    let filter = filter(&level);
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if text {
        registry.with(layer).try_init()
    } else {
        registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true),
            )
            .try_init()
    };
}

/// The level asked for (`info`, or directives such as
/// `warn,notify_offer_contacts=debug`; anything else reads as `info`), with the
/// SDK's and hyper's own lines capped at DEBUG: at TRACE the SDK prints raw
/// response bodies (a contact's address in a DynamoDB answer), which must
/// never reach a log, whatever the level.
///
/// Targets, not `EnvFilter`: the same `target=level` directives without span
/// and field filters, and without a regex engine in the binary (its tables
/// were about a tenth of the start-up's relocations).
pub fn filter(level: &str) -> Targets {
    let filter: Targets = level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    // Directives set levels (they do not cap): add them only where TRACE was
    // asked for, so a quieter level stays quiet.
    if !level.to_ascii_lowercase().contains("trace") {
        return filter;
    }
    filter.with_targets([
        ("aws_smithy_runtime", LevelFilter::DEBUG),
        ("aws_smithy_runtime_api", LevelFilter::DEBUG),
        ("aws_smithy_http_client", LevelFilter::DEBUG),
        ("aws_runtime", LevelFilter::DEBUG),
        ("hyper", LevelFilter::INFO),
        ("hyper_util", LevelFilter::INFO),
        ("h2", LevelFilter::INFO),
        ("rustls", LevelFilter::INFO),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_levels_stay_quiet_and_trace_is_capped_for_the_sdk() {
        use tracing::Level;
        let warn = filter("warn");
        assert!(warn.would_enable("notify_offer_contacts", &Level::WARN));
        assert!(!warn.would_enable("notify_offer_contacts", &Level::INFO));
        assert!(!warn.would_enable("aws_smithy_runtime", &Level::INFO));
        let info = filter("info");
        assert!(info.would_enable("notify_offer_contacts", &Level::INFO));
        assert!(!info.would_enable("notify_offer_contacts", &Level::DEBUG));
        let trace = filter("trace");
        assert!(trace.would_enable("notify_offer_contacts", &Level::TRACE));
        assert!(trace.would_enable("aws_smithy_runtime", &Level::DEBUG));
        assert!(!trace.would_enable("aws_smithy_runtime", &Level::TRACE));
        assert!(!trace.would_enable("hyper_util", &Level::DEBUG));
        // Directives work; what is not one reads as info.
        let mixed = filter("warn,notify_offer_contacts=debug");
        assert!(mixed.would_enable("notify_offer_contacts::work", &Level::DEBUG));
        assert!(!mixed.would_enable("aws_config", &Level::INFO));
        let odd = filter("[span{field=1}]=debug");
        assert!(odd.would_enable("notify_offer_contacts", &Level::INFO));
        assert!(!odd.would_enable("notify_offer_contacts", &Level::DEBUG));
    }
}
