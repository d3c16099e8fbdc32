//! SMS: one transactional text per recipient contact. Its recipient reads a
//! short line (one or two parts); its target is the contact's
//! `info.phoneNumber`, which must be E.164; it goes out through an
//! `SmsSender` (SNS in the Lambda).

use futures::future::BoxFuture;

use crate::model::{NotificationChannel, Offer, PhoneNumber};
use crate::ports::SendError;

use super::template::{Part, Vars, renderer};
use super::{Action, Planning, unreadable};
use crate::model::NotificationSettings;
use crate::notify::{failed, skipped};

/// Sends one transactional SMS; the answer is the provider's message id.
pub trait SmsSender: Send + Sync {
    fn send_sms<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a str,
    ) -> BoxFuture<'a, Result<String, SendError>>;
}

/// The built-in SMS (one or two parts for usual names and links); `Err`
/// when the offer's link and marketplace make it pass SNS's 1,600 bytes.
pub fn render(offer: &Offer) -> Result<String, String> {
    let settings = NotificationSettings::default();
    renderer(Part::Sms, &settings).and_then(|r| r.render(&Vars::new(offer, &settings, None, "", 0)))
}

/// One SMS per recipient with an E.164 number, or why not.
pub(crate) fn plan(p: &mut Planning<'_>) {
    let channel = NotificationChannel::Sms;
    let sms = renderer(Part::Sms, p.settings);
    let vars = p.vars();
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
            Some(Ok(to)) => {
                let text = sms
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|t| t.render(&vars.with_contact(contact)))
                    .and_then(|t| {
                        if t.trim().is_empty() {
                            return Err(format!(
                                "{} renders an empty message",
                                sms.as_ref().map(|r| r.label()).unwrap_or_default()
                            ));
                        }
                        p.spend(t.len())?;
                        Ok(t)
                    });
                match text {
                    Ok(text) => p.actions.push(Action::Sms {
                        contact_id: id.clone(),
                        to,
                        text: text.into(),
                    }),
                    Err(why) => p.decided.push(failed(channel.clone(), Some(id), why)),
                }
            }
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
        let s = render(&offer).unwrap();
        assert!(s.len() < 160, "{}", s.len());
    }
}
