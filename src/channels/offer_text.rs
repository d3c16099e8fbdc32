//! The offer as every channel words it: its name on one line, its
//! marketplace, the private offer link when it is safe to show, and the
//! event's title and message. Offer data comes from sellers: it is reduced to
//! one line where a line is expected (HTML escaping is the template
//! engine's, channels::template), and a link is only shown when it is a
//! plain https URL.

use crate::model::Offer;

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

/// At most `max` characters, an ellipsis marking a cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The offer's name as it may be shown: one line, never empty.
pub fn offer_name(offer: &Offer) -> String {
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

pub fn marketplace(offer: &Offer) -> &str {
    offer
        .partner
        .as_ref()
        .map(|p| p.display_name())
        .unwrap_or("the marketplace")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{OfferInfo, Partner};

    pub(crate) fn offer(name: &str, url: Option<&str>) -> Offer {
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
        let s = crate::channels::email::render(&offer("Deal\r\nBcc: evil@example.com", None), None)
            .subject;
        assert!(!s.contains('\n') && !s.contains('\r'), "{s:?}");
        assert_eq!(
            s,
            "Private offer on AWS Marketplace: Deal Bcc: evil@example.com"
        );
    }

    #[test]
    fn only_https_links_are_shown() {
        assert!(offer_url(&offer("a", Some("javascript:alert(1)"))).is_none());
        assert!(offer_url(&offer("a", Some("http://x.test"))).is_none());
        assert!(offer_url(&offer("a", Some("https://x.test/o?a=\"1\""))).is_none());
        assert_eq!(
            offer_url(&offer("a", Some("https://aws.amazon.com/marketplace/o/1"))),
            Some("https://aws.amazon.com/marketplace/o/1")
        );
    }
}
