//! Offers, contacts and the organisation's settings: the reads of a request.

use super::*;
use crate::model::NotificationChannel;

impl OfferStore for DynamoStore {
    async fn offer(&self, org: &OrgId, offer: &OfferId) -> Result<Option<Offer>, StoreError> {
        let item = self.get("read offer", org_pk(org), offer_sk(offer)).await?;
        item.map(|i| serde_dynamo::from_item(i).map_err(malformed("read offer")))
            .transpose()
    }

    async fn offer_details(
        &self,
        org: &OrgId,
        offer: &OfferId,
    ) -> Result<Option<Offer>, StoreError> {
        const OP: &str = "read offer details";
        let item = self
            .get_projected(
                OP,
                org_pk(org),
                offer_sk(offer),
                false,
                &[
                    "id",
                    "organizationID",
                    "name",
                    "status",
                    "partner",
                    "info",
                    "expireTime",
                ],
            )
            .await?;
        item.map(|i| serde_dynamo::from_item(i).map_err(malformed(OP)))
            .transpose()
    }

    async fn settings(&self, org: &OrgId) -> Result<NotificationSettings, StoreError> {
        let item = self
            .get(
                "read notification settings",
                org_pk(org),
                SETTINGS_SK.to_owned(),
            )
            .await?;
        Ok(item
            .map(|i| serde_dynamo::from_item(i).map_err(malformed("read notification settings")))
            .transpose()?
            .unwrap_or_default())
    }

    async fn disable_target(
        &self,
        org: &OrgId,
        channel: &NotificationChannel,
        name: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(attr) = target_attribute(channel) else {
            return Ok(());
        };
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let disabled = AttributeValue::M(
            [
                (
                    "reason".to_owned(),
                    AttributeValue::S(reason.chars().take(500).collect()),
                ),
                ("at".to_owned(), AttributeValue::S(at)),
            ]
            .into(),
        );
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), SETTINGS_SK.to_owned())))
            .update_expression("SET #t.disabled = :d")
            .condition_expression("#t.secret = :name")
            .expression_attribute_names("#t", attr)
            .expression_attribute_values(":name", AttributeValue::S(name.to_owned()))
            .expression_attribute_values(":d", disabled)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => Ok(()),
            Err(e) => Err(unavailable("disable a target")(e)),
        }
    }
}

/// The settings' attribute that names a channel's target.
fn target_attribute(channel: &NotificationChannel) -> Option<&'static str> {
    match channel {
        NotificationChannel::Slack => Some("slack"),
        NotificationChannel::MicrosoftTeams => Some("microsoftTeams"),
        NotificationChannel::Webhook => Some("webhook"),
        _ => None,
    }
}

impl ContactStore for DynamoStore {
    async fn contacts(&self, org: &OrgId, ids: &[ContactId]) -> Result<Contacts, StoreError> {
        const OP: &str = "read contacts";
        let keys = ids
            .iter()
            .map(|id| key(org_pk(org), contact_sk(id.as_str())))
            .collect();
        let mut out = Contacts::default();
        for item in self.batch_get(OP, keys, false).await? {
            // The ID from the key, not from the item: the key is ours.
            let id = match item.get("sk") {
                Some(AttributeValue::S(sk)) => sk.strip_prefix("CONTACT#").map(str::to_owned),
                _ => None,
            };
            match serde_dynamo::from_item::<_, Contact>(item) {
                Ok(contact) => out.found.push(contact),
                Err(e) => {
                    // Another writer's data: that recipient fails, the others go
                    // out. Only the contact ID and the expected shape are logged.
                    tracing::warn!(
                        op = OP,
                        contact_id = id.as_deref().unwrap_or("-"),
                        problem = %shape_error(&e),
                        "contact record unreadable"
                    );
                    out.unreadable.extend(id);
                }
            }
        }
        Ok(out)
    }
}
