//! Who gets what: the recipients of a request (checked against the offer
//! and the organisation), and one planned delivery per recipient and channel,
//! with the content rendered and anything that cannot be sent decided now
//! (skipped or failed, with why).

use std::collections::{HashMap, HashSet};

use crate::model::{
    Contact, ContactId, Delivery, NotificationEvent, NotificationSettings, Offer, OrgId,
};
use crate::ports::{ContactStore, EventStore, OfferStore, StoreError};

use super::{Action, Notifier, NotifyCommand, NotifyError, Recipients};

impl<S> Notifier<S>
where
    S: OfferStore + ContactStore + EventStore,
{
    pub(crate) async fn resolve(
        &self,
        cmd: &NotifyCommand,
        offer: &Offer,
        settings: &NotificationSettings,
    ) -> Result<Recipients, NotifyError> {
        let on_offer: HashSet<&str> = offer.contact_ids.iter().map(String::as_str).collect();
        let requested: Vec<String> = match cmd.contact_ids.as_ref().filter(|l| !l.is_empty()) {
            Some(list) => {
                let missing: Vec<ContactId> = list
                    .as_slice()
                    .iter()
                    .filter(|id| !on_offer.contains(id.as_str()))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return Err(NotifyError::NotOnOffer {
                        offer: cmd.offer_id.clone(),
                        ids: missing,
                    });
                }
                list.as_slice()
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            }
            None => {
                let mut seen = HashSet::new();
                offer
                    .contact_ids
                    .iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .cloned()
                    .collect()
            }
        };
        if requested.is_empty() {
            return Err(NotifyError::NoContacts(cmd.offer_id.clone()));
        }
        let mut cc_ids: Vec<String> = Vec::new();
        for id in settings.cc_contact_ids.iter().flatten() {
            if !requested.contains(id) && !cc_ids.contains(id) {
                cc_ids.push(id.clone());
            }
        }

        let (contacts, unreadable) = self
            .contacts_by_id(&cmd.org_id, &requested, &cc_ids)
            .await?;

        if cmd.contact_ids.as_ref().is_some_and(|l| !l.is_empty()) {
            // A listed contact that does not exist in this organisation is
            // refused like one that is not on the offer, before anything is sent.
            // (One that exists but cannot be read is not unknown: its
            // deliveries fail with the reason, and the others go out.)
            let unknown: Vec<ContactId> = requested
                .iter()
                .filter(|id| !contacts.contains_key(*id) && !unreadable.contains(*id))
                .filter_map(|id| ContactId::parse(id).ok())
                .collect();
            if !unknown.is_empty() {
                return Err(NotifyError::NotOnOffer {
                    offer: cmd.offer_id.clone(),
                    ids: unknown,
                });
            }
        }
        Ok(Recipients {
            ids: requested,
            cc_ids,
            contacts,
            unreadable,
        })
    }

    /// The contacts of `org` among `ids` and `cc_ids`, by ID. Stored IDs that
    /// are not valid IDs cannot be keys; they stay unresolved, and their
    /// deliveries are recorded as skipped.
    pub(crate) async fn contacts_by_id(
        &self,
        org: &OrgId,
        ids: &[String],
        cc_ids: &[String],
    ) -> Result<(HashMap<String, Contact>, HashSet<String>), StoreError> {
        let keys: Vec<ContactId> = ids
            .iter()
            .chain(cc_ids)
            .filter_map(|id| ContactId::parse(id).ok())
            .collect();
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let read = self.store.contacts(org, &keys).await?;
        Ok(index_contacts(org, read))
    }

    /// The recipients a worker plans for: the IDs its message names, with
    /// the contacts it has read already.
    pub(crate) fn recipients_from(
        &self,
        org: &OrgId,
        ids: Vec<String>,
        cc_ids: Vec<String>,
        read: crate::ports::Contacts,
    ) -> Recipients {
        let (contacts, unreadable) = index_contacts(org, read);
        Recipients {
            ids,
            cc_ids,
            contacts,
            unreadable,
        }
    }

    /// The recipients a stored event names (its own list, not the request's),
    /// with their contacts read now: what a resumed run or a worker plans for.
    pub(crate) async fn recipients_of(
        &self,
        org: &OrgId,
        ids: Vec<String>,
        cc_ids: Vec<String>,
    ) -> Result<Recipients, StoreError> {
        let (contacts, unreadable) = self.contacts_by_id(org, &ids, &cc_ids).await?;
        Ok(Recipients {
            ids,
            cc_ids,
            contacts,
            unreadable,
        })
    }

    /// Turns recipients × channels into actions to perform and deliveries
    /// already decided (skipped or failed, with why): each channel's room plans
    /// its own (`crate::channels`).
    pub(crate) fn plan(
        &self,
        event: &NotificationEvent,
        offer: &Offer,
        settings: &NotificationSettings,
        r: &Recipients,
    ) -> (Vec<Action>, Vec<Delivery>) {
        crate::channels::plan(event, offer, settings, r, &self.policy)
    }
}

/// Contacts by ID, and the IDs whose items were unreadable.
fn index_contacts(
    org: &OrgId,
    read: crate::ports::Contacts,
) -> (HashMap<String, Contact>, HashSet<String>) {
    let found = read
        .found
        .into_iter()
        // Belt and braces: the store is keyed by org already.
        .filter(|c| {
            c.organization_id
                .as_deref()
                .is_none_or(|o| o == org.as_str())
        })
        .map(|c| (c.id.clone(), c))
        .collect();
    (found, read.unreadable.into_iter().collect())
}
