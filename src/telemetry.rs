//! Structured logs: JSON lines (CloudWatch reads them as fields), the level from
//! `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`. Each line carries its spans: the
//! runtime's (`requestId`, `xrayTraceId`) and, once the event exists, `event_id`. No line holds an address, a number or a body.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
        .to_lowercase();
    let filter = filter(&level);
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    let _ = if text {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    };
}

/// The level asked for, with the SDK's and hyper's own lines capped at DEBUG:
/// at TRACE the SDK prints raw response bodies (a contact's address in a
/// DynamoDB answer), which must never reach a log, whatever the level.
pub fn filter(level: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Directives set levels (they do not cap): add them only where TRACE was
    // asked for, so a quieter level stays quiet.
    if !level.to_ascii_lowercase().contains("trace") {
        return filter;
    }
    for cap in [
        "aws_smithy_runtime=debug",
        "aws_smithy_runtime_api=debug",
        "aws_smithy_http_client=debug",
        "aws_runtime=debug",
        "hyper=info",
        "hyper_util=info",
        "h2=info",
        "rustls=info",
    ] {
        if let Ok(d) = cap.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_levels_stay_quiet_and_trace_is_capped_for_the_sdk() {
        assert_eq!(
            filter("warn").max_level_hint(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );
        assert_eq!(
            filter("info").max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        let trace = filter("trace").to_string();
        assert!(trace.contains("aws_smithy_runtime=debug"), "{trace}");
    }
}
