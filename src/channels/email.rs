//! EMAIL: one message per recipient contact (only that contact in To), and a
//! copy for each of the settings' `ccContactIds`. Its recipient reads a
//! subject, a text and an HTML part rendered from the offer; its target is the
//! contact's `emailAddress`, parsed; it goes out through a `Mailer` (SES v2 in
//! the Lambda), tagged so that SES events find the delivery again.

use futures::future::BoxFuture;

use crate::model::{Contact, EmailAddress, NotificationChannel, Offer};
use crate::ports::SendError;

use super::offer_text::{escape_html, marketplace, offer_name, offer_url, single_line, subject};
use super::{Action, Planning, unreadable};
use crate::notify::skipped;

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

/// The email for one contact (the greeting is the only personal part).
pub fn render(offer: &Offer, contact: Option<&Contact>) -> EmailContent {
    let name = offer_name(offer);
    let market = marketplace(offer);
    let greeting = contact
        .and_then(|c| c.name.as_deref())
        .map(single_line)
        .filter(|n| !n.is_empty())
        .map(|n| format!("Hello {n},"))
        .unwrap_or_else(|| "Hello,".to_owned());
    let url = offer_url(offer);

    let mut text =
        format!("{greeting}\n\nA private offer is waiting for you on {market}: {name}.\n");
    match url {
        Some(u) => text.push_str(&format!("\nReview and accept it here: {u}\n")),
        None => text.push_str("\nSign in to the marketplace to review and accept it.\n"),
    }

    let mut html = format!(
        "<!DOCTYPE html><html><body><p>{}</p><p>A private offer is waiting for you on {}: <strong>{}</strong>.</p>",
        escape_html(&greeting),
        escape_html(market),
        escape_html(&name)
    );
    match url {
        Some(u) => html.push_str(&format!(
            "<p><a href=\"{}\">Review and accept the offer</a></p>",
            escape_html(u)
        )),
        None => html.push_str("<p>Sign in to the marketplace to review and accept it.</p>"),
    }
    html.push_str("</body></html>");

    EmailContent {
        subject: subject(offer),
        text,
        html,
    }
}

/// One email per recipient and cc contact, or why not.
pub(crate) fn plan(p: &mut Planning<'_>) {
    let channel = NotificationChannel::Email;
    let r = p.recipients;
    let identity = sender_identity(p.settings);
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
                let mut d = skipped(channel.clone(), Some(id), why.clone());
                d.status = crate::model::DeliveryStatus::Failed;
                p.decided.push(d);
                continue;
            }
        };
        let content = render(p.offer, Some(contact));
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
                .contains("href=\"https://aws.amazon.com/marketplace/o/1\"")
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
