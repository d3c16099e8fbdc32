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
        // What will not go out first (a bad setting must not hide behind
        // hundreds of planned sends), then the planned ones.
        let mut listed: Vec<Value> = decided
            .iter()
            .take(DRY_RUN_LISTED / 2)
            .map(decided_json)
            .collect();
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for d in &decided {
            let r = d.reason.clone().unwrap_or_default();
            if reasons.len() < 20 || reasons.contains_key(&r) {
                *reasons.entry(r).or_default() += 1;
            }
        }
        let room = DRY_RUN_LISTED.saturating_sub(listed.len());
        for (i, a) in actions.iter().take(room).enumerate() {
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
        let mut info = Map::new();
        info.insert("dryRun".into(), json!(true));
        info.insert("plannedDeliveries".into(), json!(planned));
        info.insert("decidedDeliveries".into(), json!(decided.len()));
        info.insert("decidedReasons".into(), json!(reasons));
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

/// A previewed text field at most this long (`truncated` says when cut):
/// 20 previews stay far below Lambda's 6 MB answer whatever the offer holds.
pub const PREVIEW_FIELD_BYTES: usize = 8 * 1024;

/// What the recipient of a planned delivery would get, each text bounded.
fn preview(a: &Action) -> Value {
    let mut v = full_preview(a);
    let mut truncated = false;
    if let Some(o) = v.as_object_mut() {
        for field in o.values_mut() {
            if let Value::String(s) = field
                && s.len() > PREVIEW_FIELD_BYTES
            {
                let mut end = PREVIEW_FIELD_BYTES;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
                truncated = true;
            }
        }
        if truncated {
            o.insert("truncated".into(), Value::Bool(true));
        }
    }
    v
}

fn full_preview(a: &Action) -> Value {
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
            // As sent (JSON text), so the field bound applies to it too.
            "body": body.as_ref(),
        }),
    }
}
