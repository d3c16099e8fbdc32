//! The organisation's own words: its templates over the wire to SES and SNS
//! on moto beside the built-in wording, in a dry run, and a corpus of
//! hostile templates and variables over in-memory ports, each ending in a
//! bounded, escaped message or a FAILED delivery that says why.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use notify_offer_contacts::memory::{self, MemoryProvider, MemoryStore};
use notify_offer_contacts::model::*;
use notify_offer_contacts::notify::{NotifyCommand, NotifyContacts};
use serde_json::{Value, json};

fn deliveries(answer: &Value) -> Vec<Value> {
    answer["info"]["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn an_orgs_own_email_and_sms_reach_ses_and_sns_beside_the_built_in_ones() {
    let env = TestEnv::with_brand_org().await;
    let answer = env
        .invoke_file("direct-notify-brand.json")
        .await
        .expect("answer");
    assert_eq!(answer["eventStatus"], "DONE", "{answer:#}");
    assert_eq!(answer["customFields"]["quoteRef"], "Q-2026-118");
    assert_eq!(
        answer["title"],
        "Initech: your private offer for Initech Observability Suite, 2-year private offer (expires 2027-01-31T23:59:59Z)"
    );
    let builtin = env
        .invoke_file("direct-notify-listed.json")
        .await
        .expect("answer");
    assert_eq!(builtin["eventStatus"], "DONE", "{builtin:#}");

    let emails = env.moto.emails();
    let sms = env.moto.sms();
    for (to, subject, body) in &emails {
        println!("EMAIL to {to}\n  subject: {subject}\n  html: {body}");
    }
    for (to, text) in &sms {
        println!("SMS to {to}: {text}");
    }
    let email = |to: &str| {
        emails
            .iter()
            .find(|(t, _, _)| t == to)
            .cloned()
            .unwrap_or_else(|| panic!("an email to {to}"))
    };
    let (_, subject, html) = email("eve@buyer.example.com");
    assert_eq!(
        subject,
        "Initech: your private offer for Initech Observability Suite, 2-year private offer (expires 2027-01-31T23:59:59Z)"
    );
    // The org's HTML, sanitised and wrapped in a document.
    assert!(html.starts_with("<!DOCTYPE html><html><body><p>Hi Eve Buyer,</p><p><strong>Initech</strong> has prepared <em>Initech Observability Suite, 2-year private offer</em> for Buyer Corp on AWS Marketplace.</p>"), "{html}");
    assert!(html.contains("<a href=\"https://aws.amazon.com/marketplace/ao/offer-brand\" rel=\"noopener noreferrer\">Open the offer</a>"), "{html}");
    assert!(
        html.contains("<p>Quote reference: Q-2026-118</p>"),
        "{html}"
    );
    // Fay's name is markup and an apostrophe: escaped by the engine; she
    // has no company, so the template's default applies.
    let (_, _, html) = email("fay@buyer.example.com");
    assert!(
        html.contains("Hi Fay &lt;b&gt;O'Neil&lt;/b&gt; &amp; Co,")
            && html.contains("for your team on"),
        "{html}"
    );
    assert!(!html.contains("<b>O"));
    // The built-in wording for org-demo, unchanged.
    let (_, subject, html) = email("ann@buyer.example.com");
    assert_eq!(
        subject,
        "Private offer on AWS Marketplace: Acme Analytics Enterprise, 3-year private offer"
    );
    assert!(html.contains("<p>Hello Ann Buyer,</p>"), "{html}");

    let text = |to: &str| {
        sms.iter()
            .find(|(t, _)| t == to)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("an SMS to {to}"))
    };
    assert_eq!(
        text("+12065550142"),
        "Initech: Initech Observability Suite, 2-year pri… is ready for Eve Buyer: https://aws.amazon.com/marketplace/ao/offer-brand"
    );
    assert_eq!(
        text("+12065550100"),
        "Private offer on AWS Marketplace: Acme Analytics Enterprise, 3-year private offer. Review: https://aws.amazon.com/marketplace/ao/offer-demo"
    );
}

#[tokio::test]
async fn a_dry_run_shows_the_orgs_own_words_and_sends_nothing() {
    let env = TestEnv::with_brand_org().await;
    let answer = env.http("http-api-dry-run-brand.json").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    println!("{:#}", answer.body);
    let plan = answer.body["info"]["plan"].as_array().cloned().unwrap();
    let email = plan
        .iter()
        .find(|d| d["channel"] == "EMAIL")
        .expect("the email");
    assert!(
        email["content"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("Initech: your private offer")
    );
    assert!(
        email["content"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Hi Eve Buyer,\n\nInitech has prepared")
    );
    let sms = plan
        .iter()
        .find(|d| d["channel"] == "SMS")
        .expect("the SMS");
    assert!(
        sms["content"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Initech: Initech Observability Suite")
    );
    assert!(env.moto.emails().is_empty() && env.moto.sms().is_empty());
    assert!(env.items("org-brand", "EVENT#").await.is_empty());
}

#[tokio::test]
async fn custom_fields_are_checked_like_every_input() {
    let env = TestEnv::with_brand_org().await;
    for (fields, says) in [
        (
            json!({"a": {"nested": 1}}),
            "must be a string, a number or a boolean",
        ),
        (
            json!({"a": "x".repeat(1001)}),
            "longer than 1000 characters",
        ),
        (json!({"bad name": "x"}), "is not valid"),
        (
            Value::Object((0..21).map(|i| (format!("k{i}"), json!("v"))).collect()),
            "the limit is 20",
        ),
    ] {
        let e = env
            .invoke(json!({"orgId": "org-brand", "offerId": "offer-brand", "customFields": fields}))
            .await
            .unwrap_err();
        assert_eq!(e.error_type, "BadRequest");
        assert!(e.error_message.contains(says), "{e:?}");
    }
    assert!(env.moto.emails().is_empty());
    assert!(env.items("org-brand", "EVENT#").await.is_empty());
}

// --- The hostile corpus, over in-memory ports -------------------------------

/// org1's offer with two contacts whose names are hostile, and org-other's
/// contact and offer that no template of org1 may reach.
fn world(templates: MessageTemplates) -> MemoryStore {
    let store = memory::offer_with_contacts(
        2,
        vec![NotificationChannel::Email, NotificationChannel::Sms],
    );
    let offer = Offer {
        id: "o1".into(),
        organization_id: Some("org1".into()),
        name: Some("\"><img src=x onerror=alert(1)> {{ 7*7 }}".into()),
        contact_ids: vec!["c0".into(), "c1".into()],
        partner: Some(Partner::Aws),
        info: Some(OfferInfo {
            private_offer_url: Some("https://aws.amazon.com/marketplace/ao/o1".into()),
        }),
        ..Offer::default()
    };
    let hostile = Contact {
        id: "c0".into(),
        organization_id: Some("org1".into()),
        name: Some("<script>alert(1)</script>\r\nBcc: all@victim.example".into()),
        email_address: Some("c0@buyer.example.com".into()),
        info: Some(ContactInfo {
            phone_number: Some("+12065550100".into()),
            company_name: Some("{% for i in range(9) %}x{% endfor %}".into()),
            role: Some("' onmouseover='alert(1)".into()),
        }),
    };
    store
        .with_offer("org1", offer)
        .with_contact("org1", hostile)
        .with_settings(
            "org1",
            NotificationSettings {
                channels: Some(vec![NotificationChannel::Email, NotificationChannel::Sms]),
                templates: Some(templates),
                ..NotificationSettings::default()
            },
        )
        .with_offer(
            "org-other",
            Offer {
                id: "o-secret".into(),
                organization_id: Some("org-other".into()),
                name: Some("OTHER-ORG-SECRET".into()),
                contact_ids: vec!["z".into()],
                ..Offer::default()
            },
        )
        .with_contact(
            "org-other",
            Contact {
                id: "z".into(),
                organization_id: Some("org-other".into()),
                name: Some("OTHER-ORG-SECRET".into()),
                email_address: Some("z@other.example".into()),
                ..Contact::default()
            },
        )
}

fn email(subject: &str, text: &str, html: &str) -> MessageTemplates {
    MessageTemplates {
        email: Some(EmailTemplates {
            subject: Some(subject.into()),
            text: Some(text.into()),
            html: Some(html.into()),
        }),
        ..MessageTemplates::default()
    }
}

enum Expect {
    /// Every EMAIL delivery FAILED with a reason containing this; nothing sent.
    Failed(&'static str),
    /// Sent, and each email passes this check.
    Sent(fn(&notify_offer_contacts::channels::OutgoingEmail) -> bool),
}

#[tokio::test]
async fn hostile_templates_end_bounded_and_escaped_or_failed_with_why() {
    let ok_subject = "{{ offer.name }}";
    let ok_text = "{{ offer.name }}";
    let ok_html = "<p>{{ offer.name }}</p>";
    let doubling = format!(
        "{{% set a = 'x' %}}{}{{{{ a }}}}",
        "{% set a = a ~ a %}".repeat(40)
    );
    let cases: Vec<(&str, MessageTemplates, Expect)> = vec![
        // Another organisation's data, the environment, files.
        (
            "other org's offer by name",
            email(ok_subject, "{{ offers['o-secret'].name }}", ok_html),
            Expect::Failed("the variable"),
        ),
        (
            "the environment",
            email(ok_subject, "{{ env.AWS_SECRET_ACCESS_KEY }}", ok_html),
            Expect::Failed("the variable `env.AWS_SECRET_ACCESS_KEY`"),
        ),
        (
            "globals",
            email(ok_subject, "{{ self }}{{ config }}", ok_html),
            Expect::Failed("the variable"),
        ),
        (
            "a dunder attribute",
            email(ok_subject, "{{ offer.__class__.__init__ }}", ok_html),
            Expect::Failed("the variable"),
        ),
        (
            "a file",
            email(ok_subject, "{% include '/etc/passwd' %}", ok_html),
            Expect::Failed("does not parse"),
        ),
        (
            "an import",
            email(ok_subject, "{% import 'secrets' as s %}", ok_html),
            Expect::Failed("does not parse"),
        ),
        (
            "extends",
            email(ok_subject, "{% extends 'base.html' %}", ok_html),
            Expect::Failed("does not parse"),
        ),
        // Loops, recursion, huge output.
        (
            "nested loops",
            email(
                ok_subject,
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                ok_html,
            ),
            Expect::Failed("`{% for %}` at line 1"),
        ),
        (
            "a recursive macro",
            email(
                ok_subject,
                "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
                ok_html,
            ),
            Expect::Failed("does not parse"),
        ),
        (
            "string repetition",
            email(ok_subject, "{{ 'x' * 100000000 }}", ok_html),
            Expect::Failed("expression at line 1"),
        ),
        (
            "doubling by set",
            email(ok_subject, &doubling, ok_html),
            Expect::Failed("`{% set %}`"),
        ),
        (
            "a huge template",
            email(ok_subject, &"x".repeat(40_000), ok_html),
            Expect::Failed("bytes; at most 16384"),
        ),
        (
            "many variables",
            email(ok_subject, ok_text, &"{{ offer.name }}".repeat(2_000)),
            Expect::Failed("template renders more than 65536 bytes"),
        ),
        // Depth that would overflow the parser's or the checker's stack.
        (
            "a chain of nots",
            email(
                ok_subject,
                &format!("{{% if {}1 %}}x{{% endif %}}", "not ".repeat(3_000)),
                ok_html,
            ),
            Expect::Failed("a tag of more than 64 parts"),
        ),
        (
            "a chain of filters",
            email(
                ok_subject,
                &format!("{{{{ offer.name{} }}}}", "|trim".repeat(2_000)),
                ok_html,
            ),
            Expect::Failed("a tag of more than 64 parts"),
        ),
        (
            "a chain of elifs",
            email(
                ok_subject,
                &format!(
                    "{{% if offer.name %}}{}{{% endif %}}",
                    "{% elif 1 %}".repeat(1_000)
                ),
                ok_html,
            ),
            Expect::Failed("elifs"),
        ),
        (
            "nested ifs",
            email(
                ok_subject,
                &format!("{}x{}", "{% if 1 %}".repeat(700), "{% endif %}".repeat(700)),
                ok_html,
            ),
            Expect::Failed("nested ifs"),
        ),
        (
            "a filter that marks safe",
            email(ok_subject, ok_text, "{{ contact.name | safe }}"),
            Expect::Failed("the filter `safe`"),
        ),
        (
            "an unterminated tag",
            email("{{ offer.name", ok_text, ok_html),
            Expect::Failed("email.subject template does not parse"),
        ),
        (
            "an empty subject",
            email("{{ customFields.none }}", ok_text, ok_html),
            Expect::Failed("renders an empty subject"),
        ),
        // The seller's own markup: scripts, handlers, javascript: links are
        // taken out by the sanitiser; the rest is sent.
        (
            "script in the org's own HTML",
            email(
                ok_subject,
                ok_text,
                "<p style=\"color:#333\">Hi</p><a href=\"javascript:alert({{ contact.id }})\">x</a><script>alert(1)</script><img src=x onerror=alert(1)><form action=\"https://evil.example\"><input name=p></form><a href=\"{{ offer.url }}\">offer</a>",
            ),
            Expect::Sent(|e| {
                let h = e.html.to_lowercase();
                !h.contains("<script")
                    && !h.contains("javascript:")
                    && !h.contains("onerror")
                    && !h.contains("<form")
                    && !h.contains("<input")
                    && h.contains("<p style=\"color:#333\">hi</p>")
                    && h.contains("href=\"https://aws.amazon.com/marketplace/ao/o1\"")
            }),
        ),
        // Script and header injection through variables: rendered, escaped.
        (
            "markup in variables",
            email(
                "{{ contact.name }} {{ contact.role }}",
                "{{ contact.name }} / {{ contact.company }}",
                "<p title=\"{{ contact.role }}\">{{ contact.name }} {{ offer.name }} {{ contact.company }}</p>",
            ),
            Expect::Sent(|e| {
                let c0 = e.to.as_str() == "c0@buyer.example.com";
                // The role stays inside its (double-quoted) attribute value.
                !e.html.contains("<script") && !e.html.contains("<img")
                && !e.html.contains("\" onmouseover") && !e.html.contains("onmouseover=\"")
                && (!c0 || e.html.contains("title=\"' onmouseover='alert(1)\""))
                && !e.subject.contains('\n') && !e.subject.contains('\r')
                // A variable's text is never evaluated as a template.
                && (!c0 || (e.html.contains("&lt;script&gt;") && e.text.contains("{% for i in range(9) %}")))
                && e.html.contains("{{ 7*7 }}")
            }),
        ),
    ];
    for (name, templates, expect) in cases {
        let store = Arc::new(world(templates));
        let provider = Arc::new(MemoryProvider::default());
        let n = memory::notifier(store.clone(), provider.clone(), 4);
        let started = Instant::now();
        let answer = n
            .notify(NotifyCommand::new(
                OrgId::parse("org1").unwrap(),
                OfferId::parse("o1").unwrap(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: the request failed: {e}"));
        // A guard against a render that runs away, not a speed target.
        assert!(started.elapsed() < Duration::from_secs(10), "{name}");
        let answer = serde_json::to_value(&answer).unwrap();
        let emails: Vec<Value> = deliveries(&answer)
            .into_iter()
            .filter(|d| d["channel"] == "EMAIL")
            .collect();
        assert_eq!(emails.len(), 2, "{name}: {answer:#}");
        // SMS keeps the built-in wording: one template's failure is its own.
        let sms: Vec<Value> = deliveries(&answer)
            .into_iter()
            .filter(|d| d["channel"] == "SMS")
            .collect();
        assert!(sms.iter().all(|d| d["status"] == "SENT"), "{name}: {sms:?}");
        let stored = store
            .event("org1", answer["eventID"].as_str().unwrap())
            .expect("the event is stored");
        assert!(stored.event_status.is_some());
        for e in provider.emails() {
            let all = format!("{} {} {}", e.subject, e.text, e.html);
            assert!(!all.contains("OTHER-ORG-SECRET"), "{name}");
            assert!(e.html.len() <= 70 * 1024 && e.text.len() <= 32 * 1024);
        }
        match expect {
            Expect::Failed(says) => {
                for d in &emails {
                    assert_eq!(d["status"], "FAILED", "{name}: {d}");
                    let reason = d["reason"].as_str().unwrap();
                    assert!(reason.contains(says), "{name}: {reason}");
                    assert!(
                        reason.starts_with("the organization's email."),
                        "{name}: {reason}"
                    );
                    assert!(reason.len() < 600, "{name}: the reason is bounded");
                }
                assert!(provider.emails().is_empty(), "{name}: nothing was sent");
            }
            Expect::Sent(check) => {
                assert!(
                    emails.iter().all(|d| d["status"] == "SENT"),
                    "{name}: {emails:?}"
                );
                let sent = provider.emails();
                assert_eq!(sent.len(), 2);
                for e in &sent {
                    assert!(check(e), "{name}: {e:#?}");
                }
            }
        }
    }
}

/// The contacts' read projects the attributes a notification uses: a
/// contact as the platform stores it (with `creationTime`, `lastUpdateTime`,
/// `info.companyLocation`, ...) reads back with every field a template or a
/// channel needs, over moto's real projection.
#[tokio::test]
async fn a_platform_contact_reads_back_whole_through_the_projected_read() {
    use notify_offer_contacts::ports::ContactStore;
    let env = TestEnv::new().await;
    common::seed(
        &env.sdk,
        &env.table,
        &json!({"items": [
            {"pk": "ORG#org-demo", "sk": "CONTACT#c-full", "id": "c-full", "organizationID": "org-demo",
             "name": "Fay Buyer", "emailAddress": "fay@buyer.example.com",
             "creationTime": "2026-01-02T03:04:05Z", "lastUpdateTime": "2026-02-03T04:05:06Z",
             "info": {"phoneNumber": "+12065550123", "companyName": "Fay Corp", "role": "CFO",
                      "companyLocation": "Seattle", "lastModifiedBy": "someone"}}
        ]}),
    )
    .await;
    let org = OrgId::parse("org-demo").unwrap();
    let ids = ["c-full", "c-ann"].map(|c| ContactId::parse(c).unwrap());
    let mut read = env.app.store.contacts(&org, &ids).await.expect("read");
    read.found.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(read.unreadable.is_empty());
    assert_eq!(
        read.found,
        vec![
            Contact {
                id: "c-ann".into(),
                organization_id: Some("org-demo".into()),
                name: Some("Ann Buyer".into()),
                email_address: Some("ann@buyer.example.com".into()),
                info: Some(ContactInfo {
                    phone_number: Some("+1 206 555 0100".into()),
                    company_name: Some("Buyer Corp".into()),
                    role: Some("Procurement".into()),
                }),
            },
            Contact {
                id: "c-full".into(),
                organization_id: Some("org-demo".into()),
                name: Some("Fay Buyer".into()),
                email_address: Some("fay@buyer.example.com".into()),
                info: Some(ContactInfo {
                    phone_number: Some("+12065550123".into()),
                    company_name: Some("Fay Corp".into()),
                    role: Some("CFO".into()),
                }),
            },
        ]
    );
}
