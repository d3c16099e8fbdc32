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
            .get_projected(OP, org_pk(org), offer_sk(offer), false, OFFER_DETAILS)
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
        for item in self
            .batch_get_projected(OP, keys, false, CONTACT_ATTRIBUTES)
            .await?
        {
            add_contact(&mut out, item, OP);
        }
        Ok(out)
    }
}

/// The contact's attributes a notification reads: `Contact`'s fields, and
/// the sort key (the ID of a record that does not read as a contact). The
/// rest of a platform contact (`creationTime`, `lastUpdateTime`, ...) stays
/// in the table: fewer bytes on the wire and to parse, at 100 a call.
const CONTACT_ATTRIBUTES: &[&str] = &["sk", "id", "organizationID", "name", "emailAddress", "info"];

/// Reads one contact item into `out`; one that does not read as a contact
/// (another writer's data) is named unreadable: that recipient fails, the
/// others go out. Only the contact ID and the expected shape are logged.
fn add_contact(out: &mut Contacts, item: Item, op: &'static str) {
    // The ID from the key, not from the item: the key is ours.
    let id = match item.get("sk") {
        Some(AttributeValue::S(sk)) => sk.strip_prefix("CONTACT#").map(str::to_owned),
        _ => None,
    };
    match serde_dynamo::from_item::<_, Contact>(item) {
        Ok(contact) => out.found.push(contact),
        Err(e) => {
            tracing::warn!(
                op,
                contact_id = id.as_deref().unwrap_or("-"),
                problem = %shape_error(&e),
                "contact record unreadable"
            );
            out.unreadable.extend(id);
        }
    }
}

/// The offer's attributes a notification reads (not its contact list).
const OFFER_DETAILS: &[&str] = &[
    "id",
    "organizationID",
    "name",
    "status",
    "partner",
    "info",
    "expireTime",
];

/// A worker's reads in two BatchGetItem calls side by side: the event's head
/// and the offer's details (projected, so neither's recipient list is read),
/// and the settings, the ledger entries and the contacts (whole items). Both
/// are strongly consistent: the ledger must be, and the rest are small.
impl WorkStore for DynamoStore {
    async fn work_reads(
        &self,
        org: &OrgId,
        event_id: &str,
        whole: bool,
        offer: &OfferId,
        keys: &[String],
        ids: &[ContactId],
    ) -> Result<WorkReads, StoreError> {
        const OP: &str = "read a work message's state";
        let pk = org_pk(org);
        let (event_key, offer_key) = (event_sk(event_id), offer_sk(offer));
        let mut heads = vec![key(pk.clone(), offer_key.clone())];
        if !whole {
            heads.push(key(pk.clone(), event_key.clone()));
        }
        let mut rest = vec![key(pk.clone(), SETTINGS_SK.to_owned())];
        rest.extend(
            keys.iter()
                .map(|k| key(pk.clone(), format!("DELIVERY#{event_id}#{k}"))),
        );
        rest.extend(
            ids.iter()
                .map(|id| key(pk.clone(), contact_sk(id.as_str()))),
        );
        let projection: Vec<&str> = super::events::EVENT_WITHOUT_LISTS
            .iter()
            .chain(OFFER_DETAILS)
            .chain(&["sk"])
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let whole_event = async {
            if whole {
                self.event(org, event_id, true).await
            } else {
                Ok(None)
            }
        };
        let (heads, rest, whole_event) = futures::try_join!(
            self.batch_get_projected(OP, heads, true, &projection),
            self.batch_get(OP, rest, true),
            whole_event
        )?;
        let mut out = WorkReads {
            event: whole_event,
            ..WorkReads::default()
        };
        for mut item in heads.into_iter().chain(rest) {
            let Some(AttributeValue::S(sk)) = item.remove("sk") else {
                continue;
            };
            if sk == offer_key {
                out.offer = Some(serde_dynamo::from_item(item).map_err(malformed(OP))?);
            } else if sk == event_key {
                out.event = Some(serde_dynamo::from_item(item).map_err(malformed(OP))?);
            } else if sk == SETTINGS_SK {
                out.settings = serde_dynamo::from_item(item).map_err(malformed(OP))?;
            } else if sk.starts_with("DELIVERY#") {
                out.ledger
                    .push(serde_dynamo::from_item(item).map_err(malformed(OP))?);
            } else if sk.starts_with("CONTACT#") {
                item.insert("sk".into(), AttributeValue::S(sk));
                add_contact(&mut out.contacts, item, OP);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contacts_projection_names_every_field_a_contact_has() {
        let contact = Contact {
            id: "c-1".into(),
            organization_id: Some("org-a".into()),
            name: Some("Ann".into()),
            email_address: Some("ann@example.com".into()),
            info: Some(crate::model::ContactInfo {
                phone_number: Some("+12065550100".into()),
                company_name: Some("Acme".into()),
                role: Some("Buyer".into()),
            }),
        };
        let item: Item = serde_dynamo::to_item(&contact).unwrap();
        for field in item.keys() {
            assert!(
                CONTACT_ATTRIBUTES.contains(&field.as_str()),
                "the contacts' read does not project {field}: it would always read empty"
            );
        }
        assert!(CONTACT_ATTRIBUTES.contains(&"sk"));
    }
}
