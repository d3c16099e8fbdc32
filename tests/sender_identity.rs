//! The organisation's sender display name and Reply-To, over the wire to
//! SES on moto, and refused when they could inject a header.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::TestEnv;
use notify_offer_contacts::channels::email::{mailbox, sender_identity};
use notify_offer_contacts::model::NotificationSettings;
use serde_json::{Value, json};

async fn set(env: &TestEnv, name: &str, value: &str) {
    env.dynamo()
        .update_item()
        .table_name(&env.table)
        .key("pk", AttributeValue::S("ORG#org-demo".into()))
        .key("sk", AttributeValue::S("NOTIFICATION_CONFIG".into()))
        .update_expression("SET #n = :v")
        .expression_attribute_names("#n", name)
        .expression_attribute_values(":v", AttributeValue::S(value.into()))
        .send()
        .await
        .unwrap();
}

fn sent(env: &TestEnv) -> Vec<Value> {
    env.moto.data()["ses"]["Message"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn emails_come_from_the_orgs_display_name_with_its_reply_to() {
    let env = TestEnv::new().await;
    set(&env, "senderName", "Acme via Marketplace").await;
    set(&env, "replyTo", "rep@acme.example").await;
    // Through a recording proxy: moto keeps the From header but not Reply-To.
    let proxy = common::fault_proxy::FaultProxy::start(&env.moto.endpoint).await;
    let app = notify_offer_contacts::app(&common::sdk_config(&proxy.endpoint).await, &env.config);
    let answer = notify_offer_contacts::event::handle(
        &app,
        &env.edge,
        lambda_runtime::LambdaEvent::new(
            common::read_json("events/direct-notify-listed.json"),
            lambda_runtime::Context::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer["eventStatus"], "DONE", "{answer:#}");
    let m = sent(&env);
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0]["source"],
        format!("\"Acme via Marketplace\" <{}>", common::SENDER),
        "the address stays the verified sender"
    );
    let wire: Value = serde_json::from_str(&proxy.bodies("SES.SendEmail")[0]).unwrap();
    assert_eq!(wire["ReplyToAddresses"], json!(["rep@acme.example"]));
}

#[tokio::test]
async fn a_sender_name_or_reply_to_that_could_inject_a_header_fails_the_emails_with_why() {
    let env = TestEnv::new().await;
    set(
        &env,
        "replyTo",
        "rep@acme.example\r\nBcc: all@victim.example",
    )
    .await;
    let answer = env.invoke_file("direct-notify-listed.json").await.unwrap();
    let email = answer["info"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "EMAIL")
        .cloned()
        .unwrap();
    assert_eq!(email["status"], "FAILED");
    assert!(email["reason"].as_str().unwrap().contains("replyTo"));
    assert!(sent(&env).is_empty());
}

#[test]
fn display_names_are_checked_and_encoded() {
    let s = |name: &str, reply: &str| NotificationSettings {
        sender_name: Some(name.into()),
        reply_to: Some(reply.into()),
        ..NotificationSettings::default()
    };
    for bad in [
        "Acme\" <evil@x.example>",
        "Acme\r\nBcc: x@y.example",
        "Acme <x>",
        "a, b",
        "x@y.example",
        &"n".repeat(65),
        "support\u{FF20}bank.example",
        "Acme\u{202E}lapyap",
        "Acme\u{2028}Bcc",
        "=?UTF-8?B?PGV2aWw+?=",
    ] {
        assert!(sender_identity(&s(bad, "")).is_err(), "{bad:?}");
    }
    assert!(sender_identity(&s("Acme", "a@b.example, c@d.example")).is_err());
    assert!(sender_identity(&s("Acme", "a@b.example\nBcc: c@d.example")).is_err());
    assert!(sender_identity(&s("Acme", "rép@acmé.example")).is_err());
    assert!(sender_identity(&s("Acme", "a\\@b.example")).is_err());
    // A long non-ASCII name: encoded words of at most 75 characters each.
    let cjk = "市场".repeat(32);
    let m = mailbox(Some(&cjk), "o@s.example");
    assert!(
        m.split(' ')
            .filter(|w| w.starts_with("=?"))
            .all(|w| w.len() <= 75),
        "{m}"
    );
    assert!(m.split(' ').filter(|w| w.starts_with("=?")).count() > 1);
    let emoji = mailbox(Some("Acme 🚀 Deals"), "o@s.example");
    assert!(emoji.starts_with("=?UTF-8?B?") && emoji.ends_with(" <o@s.example>"));
    let (name, reply) = sender_identity(&s("Acme via Marketplace", "rep@acme.example")).unwrap();
    assert_eq!(
        mailbox(name.as_deref(), "offers@seller.example.com"),
        "\"Acme via Marketplace\" <offers@seller.example.com>"
    );
    assert_eq!(reply.unwrap().as_str(), "rep@acme.example");
    assert_eq!(
        mailbox(Some("Société Générale"), "o@s.example"),
        "=?UTF-8?B?U29jacOpdMOpIEfDqW7DqXJhbGU=?= <o@s.example>"
    );
}
