//! MICROSOFT_TEAMS: one Adaptive Card per event to the organisation's Teams
//! Workflows webhook ("When a Teams webhook request is received"; the retired
//! Office 365 connectors are not supported). Its reader gets a card with the
//! offer's name, marketplace, the count of contacts notified and, when the
//! URL is safe, a button to the private offer. The target is the settings'
//! `microsoftTeams.secret`, whose secret holds the workflow's URL (on
//! `*.logic.azure.com` or `*.api.powerplatform.com`); 4 a second per webhook.
//!
//! A 200 or 202 means the workflow accepted the request, not that the card
//! was posted: the delivery is SENT with a reason saying so. 429 puts it
//! back; 401, 403, 404 and 410 disable the target; other 4xx fail; 5xx are
//! transient failures.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::model::NotificationChannel;
use crate::ports::SendError;

use super::offer_text::{marketplace, offer_url, truncate_chars};
use super::template::{Part, renderer};
use super::web::WebAnswer;
use super::{Planning, plan_web_target};

/// The hosts Teams Workflows webhooks use.
pub const HOSTS: &[&str] = &[".logic.azure.com", ".api.powerplatform.com"];
/// Bodies stay under Teams' ~28 KB message limit.
pub const MAX_BODY_BYTES: usize = 27 * 1024;
/// What SENT means on this channel.
pub const ACCEPTED: &str =
    "accepted by the Teams workflow (200/202): not a confirmation that the card was posted";

pub(crate) fn plan(p: &mut Planning<'_>) {
    let body = render(p);
    plan_web_target(p, NotificationChannel::MicrosoftTeams, body);
}

/// The Workflows envelope around an Adaptive Card 1.4; its second text
/// block is the `microsoftTeams` template (variables markdown-escaped).
/// `Err` is why the organisation's template could not be rendered.
pub(crate) fn render(p: &Planning<'_>) -> Result<Arc<str>, String> {
    let template = renderer(Part::Teams, p.settings)?;
    let name = template.render(&p.vars())?;
    let count = p.recipients.ids.len();
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
             "text": truncate_chars(&format!("Private offer on {}", marketplace(p.offer)), 150)},
            {"type": "TextBlock", "wrap": true, "text": name},
            {"type": "FactSet", "facts": [
                {"title": "Contacts notified", "value": count.to_string()},
                {"title": "Event", "value": p.event_id.clone()}
            ]}
        ]
    });
    if let Some(url) = offer_url(p.offer) {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "View private offer", "url": url}]);
    }
    let body: Value = json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card
        }]
    });
    let text = body.to_string();
    if text.len() >= MAX_BODY_BYTES {
        return Err(format!(
            "{} makes a card of {} bytes; Teams takes at most {MAX_BODY_BYTES}",
            template.label(),
            text.len()
        ));
    }
    Ok(text.into())
}

/// The workflow's answer as the delivery's outcome.
pub fn classify(a: &WebAnswer) -> Result<String, SendError> {
    match a.status {
        200..=299 => Ok(match &a.request_id {
            Some(id) => format!("teams-accepted:{id}"),
            None => "teams-accepted".into(),
        }),
        429 => Err(SendError {
            throttled: true,
            retry_after: a.retry_after,
            ..SendError::transient(
                "TeamsRateLimited",
                "Teams answered 429: too many requests to this workflow",
            )
        }),
        s @ (401 | 403 | 404 | 410) => Err(SendError {
            disables_target: true,
            ..SendError::permanent(
                "TeamsTargetGone",
                format!(
                    "Teams answered {s}: the workflow is gone, off, or its URL no longer valid"
                ),
            )
        }),
        s @ 400..=499 => Err(SendError::permanent(
            "TeamsRefused",
            format!("Teams answered {s}"),
        )),
        s => Err(SendError::transient(
            "TeamsUnavailable",
            format!("Teams answered {s}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let a = |status| WebAnswer {
            status,
            ..WebAnswer::default()
        };
        assert!(classify(&a(202)).is_ok());
        assert!(classify(&a(429)).unwrap_err().throttled);
        assert!(classify(&a(404)).unwrap_err().disables_target);
        assert!(classify(&a(403)).unwrap_err().disables_target);
        let e = classify(&a(400)).unwrap_err();
        assert!(e.permanent && !e.disables_target);
        assert!(!classify(&a(502)).unwrap_err().permanent);
    }
}
