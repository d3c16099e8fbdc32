//! Property tests at scale over everything that reads a caller's or a seller's
//! input: body parsing, ID and contact parsing, rendering. Zero panics, and
//! what is accepted is valid. `PROPTEST_CASES` sets the count (CI: 2000 each).

use lambda_http::Body;
use notify_offer_contacts::model::{
    ContactIdList, EmailAddress, Offer, OfferInfo, Partner, PhoneNumber,
};
use notify_offer_contacts::{channels, http};
use proptest::prelude::*;

fn valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True when the HTML holds a tag that is not one of the template's own.
fn leaks_markup(html: &str) -> bool {
    const OURS: [&str; 10] = [
        "<!doctype html>",
        "<html>",
        "</html>",
        "<body>",
        "</body>",
        "<p>",
        "</p>",
        "<strong>",
        "</strong>",
        "</a>",
    ];
    let mut rest = OURS
        .iter()
        .fold(html.to_lowercase(), |acc, tag| acc.replace(tag, ""));
    // The one link the template writes: <a href="https://...">, its URL escaped.
    if let Some(start) = rest.find("<a href=\"https://") {
        let end = rest[start..]
            .find('>')
            .map_or(rest.len(), |e| start + e + 1);
        rest.replace_range(start..end, "");
    }
    rest.contains('<')
}

/// Bytes that are often JSON-ish, often not.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(
            "[a-zA-Z0-9_\\-#/.\\\\\"\\[\\],\\{\\}: \\u{0}-\\u{1f}\\u{80}-\\u{10ffff}]{0,40}",
            0..40
        )
        .prop_map(|ids| serde_json::to_vec(&ids).unwrap()),
        "\\PC{0,300}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #[test]
    fn body_parsing_never_panics_and_accepts_only_valid_ids(bytes in bodies()) {
        if let Ok(Some(list)) = http::parse_body(&Body::Binary(bytes)) {
            prop_assert!(list.as_slice().len() <= 1000);
            for id in list.as_slice() {
                prop_assert!(valid_id(id.as_str()), "{id:?}");
            }
        }
    }

    #[test]
    fn contact_id_lists_accept_only_valid_ids(ids in proptest::collection::vec("\\PC{0,20}|[a-z0-9_-]{1,10}", 0..30)) {
        match ContactIdList::parse(&ids) {
            Ok(list) => prop_assert!(list.as_slice().iter().all(|i| valid_id(i.as_str()))),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    #[test]
    fn phone_numbers_and_addresses_never_panic(raw in "\\PC{0,40}|\\+[0-9 ()\\-.]{0,20}|[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,4}") {
        if let Ok(p) = PhoneNumber::parse(&raw) {
            prop_assert!(p.as_str().starts_with('+') && p.as_str()[1..].bytes().all(|b| b.is_ascii_digit()));
        }
        if let Ok(e) = EmailAddress::parse(&raw) {
            prop_assert!(!e.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
        }
    }

    #[test]
    fn rendering_keeps_seller_data_inert(name in "\\PC{0,200}|.{0,200}", url in "\\PC{0,80}", contact in "\\PC{0,60}") {
        let offer = Offer {
            id: "o1".into(),
            name: Some(name),
            partner: Some(Partner::Aws),
            info: Some(OfferInfo { private_offer_url: Some(url) }),
            ..Offer::default()
        };
        let person = notify_offer_contacts::model::Contact { id: "c".into(), name: Some(contact), ..Default::default() };
        let email = channels::email::render(&offer, Some(&person));
        prop_assert!(!email.subject.chars().any(char::is_control), "{:?}", email.subject);
        prop_assert!(email.subject.chars().count() <= 200);
        prop_assert!(!leaks_markup(&email.html), "markup leaked: {}", email.html);
        prop_assert!(!email.html.to_lowercase().contains("href=\"javascript:"));
        // Past SNS's 1,600 bytes it is an error (a FAILED delivery), never a send.
        if let Ok(sms) = channels::sms::render(&offer) {
            prop_assert!(sms.len() <= 1600);
        }
    }
}
