//! Structured logs: JSON lines (CloudWatch reads them as fields), the level from
//! `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`. Each line carries its spans: the
//! runtime's (`requestId`, `xrayTraceId`) and, once the event exists, `event_id`. No line holds an address, a number or a body.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false);
    let registry = tracing_subscriber::registry()
        .with(filter(&level))
        .with(caps());
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

/// The level asked for: `info`, or directives such as
/// `warn,notify_offer_contacts=debug` (case does not matter; Lambda's `FATAL`
/// reads as `error`; empty directives are ignored; anything that is not a
/// directive reads as `info`).
///
/// Targets, not `EnvFilter`: the same `target=level` directives without span
/// and field filters, and without a regex engine in the binary (its tables
/// were about a tenth of the start-up's relocations).
pub fn filter(level: &str) -> Targets {
    let level = level.to_ascii_lowercase();
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| if d == "fatal" { "error" } else { d })
        .collect();
    let info = || Targets::new().with_default(LevelFilter::INFO);
    // Span and field filters (`[span{field}]`) are EnvFilter's, not ours.
    if directives.is_empty() || level.contains(['[', ']', '{', '}']) {
        return info();
    }
    directives.join(",").parse().unwrap_or_else(|_| info())
}

/// Caps that hold whatever level was asked for, applied beside it: the SDK's
/// and the runtime's own lines stop at DEBUG, hyper's and rustls' at INFO.
/// At TRACE the SDK prints raw response bodies (a contact's address in a
/// DynamoDB answer) and the runtime the raw event (an SES report names its
/// recipients); neither may reach a log. A separate filter, so no directive
/// of the level (a module path, a number, a bare target) can lift them.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets([
            ("aws_smithy_runtime", LevelFilter::DEBUG),
            ("aws_smithy_runtime_api", LevelFilter::DEBUG),
            ("aws_smithy_http_client", LevelFilter::DEBUG),
            ("aws_smithy_types", LevelFilter::DEBUG),
            ("aws_runtime", LevelFilter::DEBUG),
            ("aws_config", LevelFilter::DEBUG),
            ("lambda_runtime", LevelFilter::DEBUG),
            ("lambda_runtime_api_client", LevelFilter::DEBUG),
            ("lambda_http", LevelFilter::DEBUG),
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
    fn levels_read_as_lambda_and_rust_log_write_them() {
        use tracing::Level;
        let warn = filter("WARN");
        assert!(warn.would_enable("notify_offer_contacts", &Level::WARN));
        assert!(!warn.would_enable("notify_offer_contacts", &Level::INFO));
        let info = filter("info,");
        assert!(info.would_enable("notify_offer_contacts", &Level::INFO));
        assert!(!info.would_enable("notify_offer_contacts", &Level::DEBUG));
        let fatal = filter("FATAL");
        assert!(fatal.would_enable("notify_offer_contacts", &Level::ERROR));
        assert!(!fatal.would_enable("notify_offer_contacts", &Level::WARN));
        let mixed = filter("warn,notify_offer_contacts=debug");
        assert!(mixed.would_enable("notify_offer_contacts::work", &Level::DEBUG));
        assert!(!mixed.would_enable("aws_config", &Level::INFO));
        let odd = filter("[span{field=1}]=debug");
        assert!(odd.would_enable("notify_offer_contacts", &Level::INFO));
        assert!(!odd.would_enable("notify_offer_contacts", &Level::DEBUG));
    }

    /// Whatever level is asked for, the SDK's and the runtime's TRACE lines
    /// (raw bodies, raw events) are not written; ours are.
    #[test]
    fn no_level_lifts_the_caps() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for level in [
            "trace",
            "TRACE",
            "5",
            "aws_smithy_runtime",
            "trace,aws_smithy_runtime=trace",
            "trace,aws_smithy_runtime::client::orchestrator=trace",
            "info,lambda_runtime=trace,aws_smithy_runtime=5",
            "aws_smithy_runtime[{response}]=trace",
        ] {
            let sink = Sink::default();
            let writer = sink.clone();
            let subscriber = tracing_subscriber::registry()
                .with(filter(level))
                .with(caps())
                .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "BODY-SECRET");
                tracing::trace!(target: "lambda_runtime::layers::api_response", "EVENT-SECRET");
                tracing::trace!(target: "hyper_util::client", "WIRE-SECRET");
                tracing::trace!(target: "notify_offer_contacts::work", "ours");
                tracing::error!(target: "notify_offer_contacts::work", "an error");
                tracing::debug!(target: "aws_smithy_runtime::client", "sdk debug");
            });
            let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert!(!out.contains("SECRET"), "{level}: {out}");
            // Something is written: ours, or (asked for alone) the SDK's DEBUG.
            assert!(
                out.contains("an error") || out.contains("sdk debug"),
                "{level}: {out}"
            );
        }
    }
}
