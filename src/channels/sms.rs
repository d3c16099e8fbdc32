//! SMS: one transactional text per recipient contact. Its recipient reads a
//! short line (one or two parts); its target is the contact's
//! `info.phoneNumber`, which must be E.164; it goes out through an
//! `SmsSender` (SNS in the Lambda).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::model::{NotificationChannel, Offer, PhoneNumber};
use crate::ports::SendError;

use super::offer_text::{marketplace, offer_name, offer_url, truncate_chars};
use super::{Action, Planning, unreadable};
use crate::notify::skipped;

const MAX_SMS_NAME_CHARS: usize = 60;

/// Sends one transactional SMS; the answer is the provider's message id.
pub trait SmsSender: Send + Sync {
    fn send_sms<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a str,
    ) -> BoxFuture<'a, Result<String, SendError>>;
}

/// The SMS: short enough for one or two parts.
pub fn render(offer: &Offer) -> String {
    let name = truncate_chars(&offer_name(offer), MAX_SMS_NAME_CHARS);
    match offer_url(offer) {
        Some(u) => format!(
            "Private offer on {}: {name}. Review: {u}",
            marketplace(offer)
        ),
        None => format!(
            "Private offer on {}: {name}. Sign in to review it.",
            marketplace(offer)
        ),
    }
}

/// One SMS per recipient with an E.164 number, or why not.
pub(crate) fn plan(p: &mut Planning<'_>) {
    let channel = NotificationChannel::Sms;
    let text: Arc<str> = render(p.offer).into();
    let r = p.recipients;
    for id in &r.ids {
        if r.unreadable.contains(id) {
            p.decided.push(unreadable(channel.clone(), id));
            continue;
        }
        let Some(contact) = r.contacts.get(id) else {
            p.decided.push(skipped(
                channel.clone(),
                Some(id),
                "contact not found in this organization",
            ));
            continue;
        };
        let raw = contact
            .info
            .as_ref()
            .and_then(|i| i.phone_number.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match raw.map(PhoneNumber::parse) {
            None => p.decided.push(skipped(
                channel.clone(),
                Some(id),
                "contact has no phone number",
            )),
            Some(Err(e)) => {
                p.decided
                    .push(skipped(channel.clone(), Some(id), format!("contact's {e}")))
            }
            Some(Ok(to)) => p.actions.push(Action::Sms {
                contact_id: id.clone(),
                to,
                text: text.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OfferInfo, Partner};

    #[test]
    fn long_names_keep_sms_short() {
        let offer = Offer {
            id: "o1".into(),
            name: Some("n".repeat(500)),
            partner: Some(Partner::Aws),
            info: Some(OfferInfo {
                private_offer_url: Some("https://x.test/o".into()),
            }),
            ..Offer::default()
        };
        let s = render(&offer);
        assert!(s.len() < 160, "{}", s.len());
    }
}
