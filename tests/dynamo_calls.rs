//! How many DynamoDB calls one notification costs, counted on the wire by an
//! SDK interceptor against moto: reads 2 + ceil(N/100); the event put twice;
//! the ledger in batches of up to 25.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use common::{SENDER, TestEnv};
use notify_offer_contacts::aws::{dynamo::DynamoStore, ses::SesMailer, sns::SnsPublisher};
use notify_offer_contacts::model::{OfferId, OrgId};
use notify_offer_contacts::notify::{Notifier, NotifyCommand, NotifyContacts};
use serde_json::json;

#[derive(Debug, Clone, Default)]
struct CallCounter(Arc<Mutex<HashMap<String, usize>>>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }
    /// Counts each request as sent, by the operation its X-Amz-Target header names.
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
        Ok(())
    }
}

#[tokio::test]
async fn one_notification_of_250_contacts_costs_5_reads_and_batched_writes() {
    let env = TestEnv::new().await;
    let n = 250;
    let ids: Vec<String> = (0..n).map(|i| format!("bulk-{i}")).collect();
    let mut items = vec![
        json!({"pk": "ORG#org-bulk", "sk": "OFFER#big", "id": "big", "organizationID": "org-bulk",
        "name": "Bulk offer", "status": "PENDING_ACCEPTANCE", "partner": "AWS", "contactIds": ids}),
    ];
    items.extend(ids.iter().map(|id| json!({"pk": "ORG#org-bulk", "sk": format!("CONTACT#{id}"), "id": id,
        "organizationID": "org-bulk", "name": id, "emailAddress": format!("{id}@buyer.example.com")})));
    common::seed(&env.sdk, &env.table, &json!({"items": items})).await;

    let counter = CallCounter::default();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&env.sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let sns = SnsPublisher::new(aws_sdk_sns::Client::new(&env.sdk));
    let app = Notifier {
        store: DynamoStore::new(dynamo, env.table.clone()),
        mailer: SesMailer::new(
            aws_sdk_sesv2::Client::new(&env.sdk),
            notify_offer_contacts::model::EmailAddress::parse(SENDER).unwrap(),
            None,
        ),
        sms: sns.clone(),
        topics: sns,
        concurrency: 16,
        rates: Default::default(),
        policy: Default::default(),
        queue: None,
    };
    let started = std::time::Instant::now();
    let event = app
        .notify(NotifyCommand::new(
            OrgId::parse("org-bulk").unwrap(),
            OfferId::parse("big").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(event.info.as_ref().unwrap()["deliveryCount"], 250);
    assert_eq!(env.moto.emails().len(), 250);

    let elapsed_ms = started.elapsed().as_millis() as usize;
    let mut calls = counter.0.lock().unwrap().clone();
    // The ledger: each batch of 25 sends is announced (SENDING) in one write
    // before it starts, and the outcomes go in as they complete, 25 at a time
    // or every 200 ms, whichever comes first.
    let batch_writes = calls.remove("BatchWriteItem").unwrap_or(0);
    let (least, most) = (
        2 * 250usize.div_ceil(25),
        2 * 250usize.div_ceil(25) + elapsed_ms / 200 + 1,
    );
    assert!(
        (least..=most).contains(&batch_writes),
        "{batch_writes} BatchWriteItem calls in {elapsed_ms} ms; expected {least} to {most}"
    );
    let expected: HashMap<String, usize> = [("GetItem", 2), ("BatchGetItem", 3), ("PutItem", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(
        calls, expected,
        "reads 2 + ceil(250/100), and the event put twice"
    );
    assert_eq!(env.items("org-bulk", "DELIVERY#").await.len(), 250);
}
