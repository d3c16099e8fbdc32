//! What a recipient reads: the email's subject, text and HTML, and the SMS.
//! Offer data comes from sellers, so it is escaped for HTML, stripped of line
//! breaks in the subject (no header tricks), and a link is only shown when it
//! is an https URL.

use crate::model::{Contact, Offer};

const MAX_SUBJECT_CHARS: usize = 200;
const MAX_SMS_NAME_CHARS: usize = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Replaces control characters (CR, LF, tabs, NUL...) with spaces and folds runs of space.
pub fn single_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_space = true;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out.trim_end().to_owned()
}

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The offer's name as it may be shown: one line, never empty.
fn offer_name(offer: &Offer) -> String {
    let name = single_line(offer.name.as_deref().unwrap_or_default());
    if name.is_empty() {
        offer.id.clone()
    } else {
        name
    }
}

/// The private offer link, when it is a plain https URL (no `javascript:`,
/// no spaces or quotes that could break out of an attribute).
pub fn offer_url(offer: &Offer) -> Option<&str> {
    let url = offer.info.as_ref()?.private_offer_url.as_deref()?.trim();
    let safe = url.starts_with("https://")
        && url.len() <= 2048
        && !url.chars().any(|c| {
            c.is_control() || c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\')
        });
    safe.then_some(url)
}

fn marketplace(offer: &Offer) -> &str {
    offer
        .partner
        .as_ref()
        .map(|p| p.display_name())
        .unwrap_or("the marketplace")
}

/// The event's title: the email subject without a recipient's name.
pub fn subject(offer: &Offer) -> String {
    truncate_chars(
        &single_line(&format!(
            "Private offer on {}: {}",
            marketplace(offer),
            offer_name(offer)
        )),
        MAX_SUBJECT_CHARS,
    )
}

/// The email for one contact (the greeting is the only personal part).
pub fn email(offer: &Offer, contact: Option<&Contact>) -> EmailContent {
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

/// The event's message: the email text without a recipient's name.
pub fn message(offer: &Offer) -> String {
    email(offer, None).text
}

/// The SMS: short enough for one or two parts.
pub fn sms(offer: &Offer) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OfferInfo, Partner};

    fn offer(name: &str, url: Option<&str>) -> Offer {
        Offer {
            id: "o1".into(),
            name: Some(name.into()),
            partner: Some(Partner::Aws),
            info: Some(OfferInfo {
                private_offer_url: url.map(str::to_owned),
            }),
            ..Offer::default()
        }
    }

    #[test]
    fn subject_has_no_line_breaks() {
        let s = subject(&offer("Deal\r\nBcc: evil@example.com", None));
        assert!(!s.contains('\n') && !s.contains('\r'), "{s:?}");
        assert_eq!(
            s,
            "Private offer on AWS Marketplace: Deal Bcc: evil@example.com"
        );
    }

    #[test]
    fn html_escapes_offer_data() {
        let e = email(
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
    fn only_https_links_are_shown() {
        assert!(offer_url(&offer("a", Some("javascript:alert(1)"))).is_none());
        assert!(offer_url(&offer("a", Some("http://x.test"))).is_none());
        let e = email(
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
        let e = email(&offer("a", None), Some(&c));
        assert!(e.text.starts_with("Hello Ann <b>,"));
        assert!(e.html.contains("Hello Ann &lt;b&gt;,"));
    }

    #[test]
    fn long_names_keep_sms_short() {
        let s = sms(&offer(&"n".repeat(500), Some("https://x.test/o")));
        assert!(s.len() < 160, "{}", s.len());
    }
}
