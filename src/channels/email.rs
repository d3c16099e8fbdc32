//! EMAIL: one message per recipient contact (only that contact in To), and a
//! copy for each of the settings' `ccContactIds`. Its recipient reads a
//! subject, a text and an HTML part rendered from the offer; its target is the
//! contact's `emailAddress`, parsed; it goes out through a `Mailer` (SES v2 in
//! the Lambda), tagged so that SES events find the delivery again.

use futures::future::BoxFuture;

use crate::model::{Contact, EmailAddress, NotificationChannel, Offer};
use crate::ports::SendError;

use super::offer_text::{single_line, truncate_chars};
use super::template::{Part, Renderer, Vars, renderer};
use super::{Action, Planning, unreadable};
use crate::model::NotificationSettings;
use crate::notify::{failed, skipped};

/// An email ready to send: one recipient, rendered content, tags for tracking.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEmail {
    pub to: EmailAddress,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Name/value pairs for SES message tags (used with a configuration set).
    pub tags: Vec<(String, String)>,
    /// The organisation's display name for the sender, checked
    /// (`sender_identity`); the address is always the verified sender.
    pub from_name: Option<String>,
    /// The organisation's Reply-To address, checked.
    pub reply_to: Option<EmailAddress>,
}

/// The sender's display name at most this long.
pub const SENDER_NAME_CHARS: usize = 64;

/// The settings' `senderName` and `replyTo`, checked: a display name of 1-64
/// printable characters without quotes, backslashes, angle brackets, commas
/// or semicolons (nothing that could end the header or add an address), and
/// one valid address. `Err` is why, for the EMAIL deliveries' reason.
pub fn sender_identity(
    settings: &crate::model::NotificationSettings,
) -> Result<(Option<String>, Option<EmailAddress>), String> {
    let name = match settings.sender_name.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => {
            // Nothing that could end the header or add an address, and
            // nothing that makes a look-alike: format characters (bidi
            // overrides, zero-width), line separators, the full-width @, and
            // no encoded-word of its own.
            let ok = n.chars().count() <= SENDER_NAME_CHARS
                && !n.contains("=?")
                && !n.chars().any(|c| {
                    c.is_control()
                        || matches!(c, '"' | '\\' | '<' | '>' | ',' | ';' | '@' | '\u{FF20}' | '\u{FE6B}')
                        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
                });
            if !ok {
                return Err(format!(
                    "senderName in the organization's settings is not valid: 1-{SENDER_NAME_CHARS} characters, no quotes, backslashes, angle brackets, commas, semicolons, @ or line breaks"
                ));
            }
            Some(n.to_owned())
        }
    };
    let reply_to = match settings.reply_to.as_deref().map(str::trim) {
        None | Some("") => None,
        // SES takes 7-bit addresses only (Punycode domains).
        Some(r) if !r.is_ascii() || r.contains(['\\', '(', ')', '[', ']']) => {
            return Err(
                "replyTo in the organization's settings is not one valid ASCII email address"
                    .to_owned(),
            );
        }
        Some(r) => Some(EmailAddress::parse(r).map_err(|_| {
            "replyTo in the organization's settings is not one valid email address".to_owned()
        })?),
    };
    Ok((name, reply_to))
}

/// The From header's mailbox: `"Name" <address>`, the name as an RFC 2047
/// encoded word when it is not ASCII (SES requires it).
pub fn mailbox(name: Option<&str>, address: &str) -> String {
    match name {
        None => address.to_owned(),
        Some(n) if n.is_ascii() => format!("\"{n}\" <{address}>"),
        Some(n) => {
            // Encoded words of at most 75 characters: 45 bytes of UTF-8 each,
            // cut on character boundaries.
            use base64::Engine as _;
            let mut words = Vec::new();
            let mut chunk = String::new();
            for c in n.chars() {
                if chunk.len() + c.len_utf8() > 45 {
                    words.push(std::mem::take(&mut chunk));
                }
                chunk.push(c);
            }
            words.push(chunk);
            let encoded: Vec<String> = words
                .iter()
                .map(|w| {
                    format!(
                        "=?UTF-8?B?{}?=",
                        base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
                    )
                })
                .collect();
            format!("{} <{address}>", encoded.join(" "))
        }
    }
}

/// Sends one email; the answer is the provider's message id.
pub trait Mailer: Send + Sync {
    fn send_email<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> BoxFuture<'a, Result<String, SendError>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The event's `message` (the email text without a recipient) is cut here.
const EVENT_MESSAGE_CHARS: usize = 4_000;

/// The subject is one line of at most this many characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// An organisation's three email templates (its own or the built-in ones),
/// checked once per event and rendered per recipient.
pub struct EmailRenderers<'s> {
    subject: Renderer<'s>,
    text: Renderer<'s>,
    html: Renderer<'s>,
}

impl<'s> EmailRenderers<'s> {
    /// `Err` is why no email of this event can be rendered.
    pub fn new(settings: &'s NotificationSettings) -> Result<Self, String> {
        Ok(Self {
            subject: renderer(Part::EmailSubject, settings)?,
            text: renderer(Part::EmailText, settings)?,
            html: renderer(Part::EmailHtml, settings)?,
        })
    }

    /// One recipient's email; `Err` is why it cannot be rendered.
    pub fn render(&self, vars: &Vars) -> Result<EmailContent, String> {
        let subject = truncate_chars(&single_line(&self.subject.render(vars)?), MAX_SUBJECT_CHARS);
        if subject.is_empty() {
            return Err(format!("{} renders an empty subject", self.subject.label()));
        }
        Ok(EmailContent {
            subject,
            text: self.text.render(vars)?,
            html: self.html.render(vars)?,
        })
    }
}

/// The event's `title` and `message`: the organisation's email subject and
/// text without a recipient (the built-in ones when its own cannot render).
pub fn event_text(
    offer: &Offer,
    settings: &NotificationSettings,
    custom_fields: Option<&serde_json::Map<String, serde_json::Value>>,
    event_id: &str,
    recipient_count: usize,
) -> (String, String) {
    let vars = Vars::new(offer, settings, custom_fields, event_id, recipient_count);
    let c = EmailRenderers::new(settings)
        .and_then(|r| r.render(&vars))
        .unwrap_or_else(|_| render(offer, None));
    // The event item and the SNS summary carry it: kept short.
    (c.subject, truncate_chars(&c.text, EVENT_MESSAGE_CHARS))
}

/// The built-in email for one contact (the greeting is the only personal
/// part).
pub fn render(offer: &Offer, contact: Option<&Contact>) -> EmailContent {
    let settings = NotificationSettings::default();
    let vars = Vars::new(offer, &settings, None, "", 0);
    let vars = match contact {
        Some(c) => vars.with_contact(c),
        None => vars,
    };
    EmailRenderers::new(&settings)
        .and_then(|r| r.render(&vars))
        .expect("the built-in email templates render")
}

/// One email per recipient and cc contact, or why not.
pub(crate) fn plan(p: &mut Planning<'_>) {
    let channel = NotificationChannel::Email;
    let r = p.recipients;
    let identity = sender_identity(p.settings);
    let renderers = EmailRenderers::new(p.settings);
    let vars = p.vars();
    for (id, is_cc) in r
        .ids
        .iter()
        .map(|i| (i, false))
        .chain(r.cc_ids.iter().map(|i| (i, true)))
    {
        if r.unreadable.contains(id) {
            p.decided.push(unreadable(channel.clone(), id));
            continue;
        }
        let Some(contact) = r.contacts.get(id) else {
            let what = if is_cc { "cc contact" } else { "contact" };
            p.decided.push(skipped(
                channel.clone(),
                Some(id),
                format!("{what} not found in this organization"),
            ));
            continue;
        };
        let address = match contact
            .email_address
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => {
                p.decided.push(skipped(
                    channel.clone(),
                    Some(id),
                    "contact has no email address",
                ));
                continue;
            }
            Some(raw) => match EmailAddress::parse(raw) {
                Ok(a) => a,
                Err(e) => {
                    p.decided
                        .push(skipped(channel.clone(), Some(id), format!("contact's {e}")));
                    continue;
                }
            },
        };
        let (from_name, reply_to) = match &identity {
            Ok(i) => i.clone(),
            Err(why) => {
                p.decided
                    .push(failed(channel.clone(), Some(id), why.clone()));
                continue;
            }
        };
        let rendered = renderers
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| r.render(&vars.with_contact(contact)))
            .and_then(|c| {
                p.spend(c.subject.len() + c.text.len() + c.html.len())?;
                Ok(c)
            });
        let content = match rendered {
            Ok(c) => c,
            Err(why) => {
                p.decided.push(failed(channel.clone(), Some(id), why));
                continue;
            }
        };
        p.actions.push(Action::Email {
            contact_id: id.clone(),
            email: OutgoingEmail {
                to: address,
                subject: content.subject,
                text: content.text,
                html: content.html,
                tags: vec![
                    ("organizationID".into(), p.org.clone()),
                    ("eventID".into(), p.event_id.clone()),
                    ("contactId".into(), id.clone()),
                ],
                from_name,
                reply_to,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::offer_text::tests::offer;

    #[test]
    fn html_escapes_offer_data() {
        let e = render(
            &offer(
                "<script>alert(1)</script>",
                Some("https://x.test/o?a=1&b=\"2\""),
            ),
            None,
        );
        assert!(!e.html.contains("<script>"));
        assert!(e.html.contains("&lt;script&gt;"));
        // A URL with a quote is not shown at all.
        assert!(!e.html.contains("x.test"));
    }

    #[test]
    fn https_links_are_shown() {
        let e = render(
            &offer("a", Some("https://aws.amazon.com/marketplace/o/1")),
            None,
        );
        assert!(
            e.html
                .contains("href=\"https://aws.amazon.com/marketplace/o/1\""),
            "{}",
            e.html
        );
        assert!(e.text.contains("https://aws.amazon.com/marketplace/o/1"));
    }

    #[test]
    fn contact_name_greets_and_is_escaped() {
        let c = Contact {
            id: "c".into(),
            name: Some("Ann <b>".into()),
            ..Contact::default()
        };
        let e = render(&offer("a", None), Some(&c));
        assert!(e.text.starts_with("Hello Ann <b>,"));
        assert!(e.html.contains("Hello Ann &lt;b&gt;,"));
    }
}
