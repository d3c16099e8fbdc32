//! The stored neighbours of an event: the offer, its contacts and the
//! organisation's notification settings, as CONTRACT.md lays them out.

use serde::{Deserialize, Serialize};

use super::enums::{NotificationChannel, Partner};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferInfo {
    #[serde(default)]
    pub private_offer_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    pub id: String,
    #[serde(rename = "organizationID", default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub partner: Option<Partner>,
    #[serde(default)]
    pub contact_ids: Vec<String>,
    #[serde(default)]
    pub info: Option<OfferInfo>,
    #[serde(default)]
    pub expire_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactInfo {
    #[serde(default)]
    pub phone_number: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub id: String,
    #[serde(rename = "organizationID", default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email_address: Option<String>,
    #[serde(default)]
    pub info: Option<ContactInfo>,
}

/// The organisation's `NOTIFICATION_CONFIG` item; absent means the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSettings {
    #[serde(default)]
    pub channels: Option<Vec<NotificationChannel>>,
    #[serde(default)]
    pub sns_topic_arn: Option<String>,
    #[serde(default)]
    pub cc_contact_ids: Option<Vec<String>>,
}

impl NotificationSettings {
    /// The channels to use: as configured (duplicates removed), EMAIL when none are.
    pub fn effective_channels(&self) -> Vec<NotificationChannel> {
        let mut out: Vec<NotificationChannel> = Vec::new();
        for c in self.channels.iter().flatten() {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        if out.is_empty() {
            out.push(NotificationChannel::Email);
        }
        out
    }
}
