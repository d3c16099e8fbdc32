//! Values that can only hold something valid, built once at the edge
//! ("parse, don't validate"): IDs, E.164 phone numbers, email addresses and
//! the bounded list of requested contact IDs.

use std::fmt;

/// Longest ID accepted (organisation, offer, contact, idempotency key).
pub const MAX_ID_LEN: usize = 128;
/// Most contact IDs one request may list.
pub const MAX_CONTACT_IDS: usize = 1000;

/// Why a value was refused; the text is shown to the caller as is and may be
/// logged, so it never repeats the value itself (it could be an address).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn check_id(kind: &str, raw: &str) -> Result<(), InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue(format!("{kind} must not be empty")));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(InvalidValue(format!(
            "{kind} is {} bytes long; the limit is {MAX_ID_LEN}",
            raw.len()
        )));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(InvalidValue(format!(
            "{kind} may contain only letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                check_id($kind, raw)?;
                Ok(Self(raw.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An organisation ID: the tenant every read and write is keyed by.
    OrgId, "organization ID"
);
id_type!(
    /// An offer ID.
    OfferId, "offer ID"
);
id_type!(
    /// A contact ID.
    ContactId, "contact ID"
);
id_type!(
    /// A caller's idempotency key (`Idempotency-Key` header, `idempotencyKey`).
    IdempotencyKey, "idempotency key"
);

/// The contact IDs a request names: at most [`MAX_CONTACT_IDS`], each valid,
/// duplicates removed (first occurrence kept, order preserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactIdList(Vec<ContactId>);

impl ContactIdList {
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, InvalidValue> {
        if raw.len() > MAX_CONTACT_IDS {
            return Err(InvalidValue(format!(
                "the body lists {} contact IDs; the limit is {MAX_CONTACT_IDS} per request",
                raw.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(raw.len());
        let mut ids = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let id = ContactId::parse(r.as_ref())
                .map_err(|e| InvalidValue(format!("contact ID at position {i}: {e}")))?;
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        Ok(Self(ids))
    }
    pub fn as_slice(&self) -> &[ContactId] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request's `customFields` (direct invocation and EventBridge): at most
/// 20 names (a letter, then letters, digits or `_`; 64 at most), each to a
/// string of at most 1,000 characters, a number or a boolean. Stored on the
/// event and offered to templates as `customFields.NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomFields(serde_json::Map<String, serde_json::Value>);

pub const MAX_CUSTOM_FIELDS: usize = 20;
pub const MAX_CUSTOM_FIELD_CHARS: usize = 1_000;

impl CustomFields {
    /// `None` for an empty map (the same request as none).
    pub fn parse(
        raw: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Self>, InvalidValue> {
        use serde_json::Value;
        if raw.len() > MAX_CUSTOM_FIELDS {
            return Err(InvalidValue(format!(
                "customFields has {} names; the limit is {MAX_CUSTOM_FIELDS}",
                raw.len()
            )));
        }
        for (k, v) in &raw {
            let name_ok = k.len() <= 64
                && k.starts_with(|c: char| c.is_ascii_alphabetic())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return Err(InvalidValue(format!(
                    "customFields name {:?} is not valid: a letter, then letters, digits or '_', 64 at most",
                    crate::model::ids::shown(k)
                )));
            }
            match v {
                Value::String(s)
                    if s.chars().any(|c| {
                        (c.is_control() && c != '\n' && c != '\t')
                            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
                    }) =>
                {
                    return Err(InvalidValue(format!(
                        "customFields.{k} holds control, bidi or zero-width characters"
                    )));
                }
                Value::String(s) if s.chars().count() > MAX_CUSTOM_FIELD_CHARS => {
                    return Err(InvalidValue(format!(
                        "customFields.{k} is longer than {MAX_CUSTOM_FIELD_CHARS} characters"
                    )));
                }
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
                _ => {
                    return Err(InvalidValue(format!(
                        "customFields.{k} must be a string, a number or a boolean"
                    )));
                }
            }
        }
        Ok((!raw.is_empty()).then_some(Self(raw)))
    }
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

/// At most 40 characters of a refused value, for an error text.
fn shown(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A phone number in E.164 form: `+`, a country code not starting with 0,
/// 8 to 15 digits in all. Common separators (spaces, dashes, dots, brackets)
/// are removed first, since contacts are entered by people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let digits = compact.strip_prefix('+').ok_or_else(|| {
            InvalidValue(
                "phone number is not in E.164 form (it must start with '+' and a country code)"
                    .into(),
            )
        })?;
        let valid = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(InvalidValue(
                "phone number is not in E.164 form ('+' then 8 to 15 digits, no leading 0)".into(),
            ));
        }
        Ok(Self(compact))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address good enough to hand to SES: one '@', a dotted domain, no
/// spaces or control characters (which could forge headers), at most 254 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        let bad = || InvalidValue("email address is not valid".into());
        if s.len() > 254
            || s.chars().any(|c| {
                c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';' | '"')
            })
        {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_path_tricks_and_control_characters() {
        for bad in [
            "",
            "a/b",
            "../x",
            "a#b",
            "a\nb",
            "a\u{0}b",
            "é",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(ContactId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(OrgId::parse("org_1-A").is_ok());
    }

    #[test]
    fn contact_id_list_drops_duplicates_in_order() {
        let l = ContactIdList::parse(&["b", "a", "b"]).unwrap();
        let ids: Vec<_> = l.as_slice().iter().map(|c| c.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
    }

    #[test]
    fn contact_id_list_enforces_its_limit() {
        let many: Vec<String> = (0..=MAX_CONTACT_IDS).map(|i| format!("c{i}")).collect();
        let err = ContactIdList::parse(&many).unwrap_err();
        assert!(err.0.contains("limit is 1000"), "{err}");
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert_eq!(
            PhoneNumber::parse("+1 (206) 555-0100").unwrap().as_str(),
            "+12065550100"
        );
        for bad in [
            "2065550100",
            "+0123456789",
            "+12",
            "+1206555010012345",
            "+1206abc0100",
            "",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_addresses_refuse_header_injection() {
        assert!(EmailAddress::parse("ann@example.com").is_ok());
        for bad in [
            "ann",
            "ann@example",
            "a\r\nBcc: x@y.com@example.com",
            "a@b@c.com",
            "<a@b.com>",
            "@b.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
    }
}
