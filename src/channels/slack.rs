//! SLACK: one message per event to the organisation's incoming webhook. Its
//! reader (the seller's team) gets `text` (the notification's fallback) and
//! `blocks`: the offer's name and marketplace, how many contacts were
//! notified, and a button to the private offer when its URL is safe. The
//! target is the settings' `slack.secret`, whose secret holds the webhook URL
//! (on `hooks.slack.com`); sends are limited to 1 a second per webhook.
//!
//! Slack's answers: `200 ok` is sent; 429 waits for `Retry-After` (once,
//! when short) else puts the channel back; 403, 404 `channel_not_found`,
//! 410 `channel_is_archived` and the revoked-hook answers (`no_service`,
//! `no_team`, `invalid_token`, `no_active_hooks`) are permanent and disable
//! the target; any other 4xx is a permanent failure; 5xx a transient one.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::model::NotificationChannel;
use crate::ports::SendError;

use super::offer_text::{marketplace, offer_name, offer_url, truncate_chars};
use super::template::{Part, renderer};
use super::web::{WebAnswer, answer_code};
use super::{Planning, plan_web_target};

/// The hosts Slack's incoming webhooks use.
pub const HOSTS: &[&str] = &["hooks.slack.com"];
/// Slack's limits: 3,000 characters in a section's text, 50 blocks.
pub const SECTION_CHARS: usize = 3000;
pub const MAX_BLOCKS: usize = 50;
/// The fallback `text` is cut here (Slack truncates at 40,000).
const TEXT_CHARS: usize = 3000;

/// Answers that mean the hook or its channel is gone for good.
const GONE: &[&str] = &[
    "channel_not_found",
    "channel_is_archived",
    "no_service",
    "no_team",
    "invalid_token",
    "no_active_hooks",
    "team_disabled",
    "action_prohibited",
];

pub(crate) fn plan(p: &mut Planning<'_>) {
    let body = render(p);
    plan_web_target(p, NotificationChannel::Slack, body);
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` (so a name cannot make a link or
/// mention).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The webhook's JSON body; `Err` is why the organisation's template could
/// not be rendered. The section text is the `slack` template (variables
/// mrkdwn-escaped); the fallback `text` is the built-in line, or the
/// organisation's section text when it has its own.
pub(crate) fn render(p: &Planning<'_>) -> Result<Arc<str>, String> {
    let t = renderer(Part::Slack, p.settings)?;
    let section = t.render(&p.vars())?;
    let name = escape(&truncate_chars(&offer_name(p.offer), 300));
    let market = escape(marketplace(p.offer));
    let count = p.recipients.ids.len();
    let text = if t.is_custom() {
        truncate_chars(&section, TEXT_CHARS)
    } else {
        truncate_chars(
            &format!("Private offer {name} on {market}: {count} contact(s) notified"),
            TEXT_CHARS,
        )
    };
    let mut blocks: Vec<Value> = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate_chars(&format!("Private offer on {}", marketplace(p.offer)), 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate_chars(&section, SECTION_CHARS)}}),
    ];
    if let Some(url) = offer_url(p.offer) {
        blocks.push(json!({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "View private offer"}, "url": url}
        ]}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("Event {}", escape(&p.event_id))}
    ]}));
    blocks.truncate(MAX_BLOCKS);
    Ok(json!({"text": text, "blocks": blocks}).to_string().into())
}

/// Slack's answer as the delivery's outcome.
pub fn classify(a: &WebAnswer) -> Result<String, SendError> {
    let code = answer_code(&a.body);
    match a.status {
        200..=299 => Ok("slack:ok".into()),
        429 => Err(SendError {
            throttled: true,
            retry_after: a.retry_after,
            ..SendError::transient(
                "SlackRateLimited",
                "Slack answered 429: too many messages to this webhook",
            )
        }),
        s @ (403 | 404 | 410) => Err(gone(s, code)),
        s if code.is_some_and(|c| GONE.contains(&c)) => Err(gone(s, code)),
        s @ 400..=499 => Err(SendError::permanent(
            "SlackRefused",
            format!("Slack answered {s} {}", code.unwrap_or(""))
                .trim_end()
                .to_owned(),
        )),
        s => Err(SendError::transient(
            "SlackUnavailable",
            format!("Slack answered {s}"),
        )),
    }
}

fn gone(status: u16, code: Option<&str>) -> SendError {
    SendError {
        disables_target: true,
        ..SendError::permanent(
            "SlackTargetGone",
            format!(
                "Slack answered {status} {}: the webhook or its channel is gone",
                code.unwrap_or("")
            )
            .replace("  ", " "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> WebAnswer {
        WebAnswer {
            status,
            body: body.into(),
            ..WebAnswer::default()
        }
    }

    #[test]
    fn every_documented_answer_is_classified() {
        assert!(classify(&answer(200, "ok")).is_ok());
        let e = classify(&WebAnswer {
            retry_after: Some(std::time::Duration::from_secs(2)),
            ..answer(429, "")
        })
        .unwrap_err();
        assert!(e.throttled && e.retry_after.is_some() && !e.disables_target);
        for (s, b) in [
            (404, "channel_not_found"),
            (410, "channel_is_archived"),
            (403, "invalid_token"),
            (403, "no_team"),
            (404, "no_service"),
            (400, "no_active_hooks"),
            (400, "invalid_token"),
        ] {
            let e = classify(&answer(s, b)).unwrap_err();
            assert!(e.permanent && e.disables_target, "{s} {b}");
            assert!(e.message.contains(b));
        }
        let e = classify(&answer(400, "invalid_payload")).unwrap_err();
        assert!(e.permanent && !e.disables_target);
        let e = classify(&answer(503, "<html>")).unwrap_err();
        assert!(!e.permanent && !e.message.contains("html"));
    }

    #[test]
    fn mrkdwn_cannot_make_links_or_mentions() {
        assert_eq!(
            escape("<!channel> & <https://x|y>"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
    }
}
