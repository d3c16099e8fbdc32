//! A dry run (`?dryRun=true`, or `"dryRun": true` in a direct invocation):
//! the request is read, checked and planned exactly as a real one, and the
//! answer says what would happen (`info.plan`: each planned delivery with its
//! rendered content, each skipped or failed one with why), but nothing is stored,
//! sent, queued, claimed under an idempotency key or counted as a send.

use serde_json::{Map, Value, json};

use crate::channels::Action;
use crate::model::Delivery;
use crate::ports::{ContactStore, EventStore, IdempotencyStore, OfferStore};

use super::{Notified, Notifier, NotifyCommand, NotifyError, Prepared};

/// Planned deliveries shown with their content in full; the rest are listed
/// without it (`contentOmitted` says how many).
pub const DRY_RUN_CONTENT: usize = 20;
/// Deliveries listed at most (the others are counted).
pub const DRY_RUN_LISTED: usize = 500;

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore + IdempotencyStore,
{
    pub(crate) async fn dry_run(&self, cmd: &NotifyCommand) -> Result<Notified, NotifyError> {
        let Prepared {
            mut event,
            actions,
            decided,
            recipients,
        } = self.prepare(cmd, "dry-run").await?;
        let queued = self.queue.is_some() && self.should_queue(recipients, &actions);
        let planned = actions.len();
        let mut listed: Vec<Value> = Vec::new();
        for (i, a) in actions.iter().take(DRY_RUN_LISTED).enumerate() {
            let mut d = json!({
                "channel": a.channel(),
                "contactId": a.contact_id(),
                "status": "PLANNED",
            });
            if i < DRY_RUN_CONTENT {
                d["content"] = preview(a);
            }
            listed.push(d);
        }
        let room = DRY_RUN_LISTED.saturating_sub(listed.len());
        listed.extend(decided.iter().take(room).map(decided_json));
        let mut info = Map::new();
        info.insert("dryRun".into(), json!(true));
        info.insert("plannedDeliveries".into(), json!(planned));
        info.insert("decidedDeliveries".into(), json!(decided.len()));
        info.insert(
            "contentOmitted".into(),
            json!(planned.saturating_sub(DRY_RUN_CONTENT)),
        );
        info.insert(
            "deliveryMode".into(),
            json!(if queued { "QUEUED" } else { "SYNCHRONOUS" }),
        );
        if let Some(target) = super::webhook::webhook_target(&event) {
            info.insert(
                "webhook".into(),
                json!({"target": target, "when": "after the event closes, signed"}),
            );
        }
        info.insert("plan".into(), Value::Array(listed));
        event.info = Some(info);
        // Nothing was stored: no ID, no status.
        event.event_id = None;
        event.event_status = None;
        tracing::info!(
            planned,
            decided = decided.len(),
            "dry run: nothing sent or stored"
        );
        Ok(Notified::fresh(event, Vec::new()))
    }
}

fn decided_json(d: &Delivery) -> Value {
    json!({
        "channel": d.channel,
        "contactId": d.contact_id,
        "status": d.status,
        "reason": d.reason,
    })
}

/// What the recipient of a planned delivery would get.
fn preview(a: &Action) -> Value {
    match a {
        Action::Email { email, .. } => json!({
            "fromName": email.from_name,
            "replyTo": email.reply_to.as_ref().map(|r| r.as_str()),
            "to": email.to.as_str(),
            "subject": email.subject,
            "text": email.text,
            "html": email.html,
        }),
        Action::Sms { to, text, .. } => json!({"to": to.as_str(), "text": text.as_ref()}),
        Action::Topic(m) => json!({
            "topicArn": m.topic_arn,
            "subject": m.subject,
            "message": m.body,
        }),
        Action::Chat { target, body, .. } => json!({
            "target": target,
            "body": serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
        }),
    }
}
