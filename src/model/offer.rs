//! The stored neighbours of an event: the offer, its contacts and the
//! organisation's notification settings, as docs/contract.md lays them out.

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
    /// The display name emails come from (`"Acme via Marketplace"
    /// <sender>`); the address stays the verified sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The one address replies to emails go to (the seller's rep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The seller's display name for templates (`seller.name`); defaults
    /// to `senderName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_name: Option<String>,
    /// The organisation's own wording per channel; a part not set keeps
    /// the built-in one (channels::template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<MessageTemplates>,
    /// The SLACK channel's incoming webhook, by reference to its secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<WebTarget>,
    /// The MICROSOFT_TEAMS channel's Workflows webhook, by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_teams: Option<WebTarget>,
    /// The WEBHOOK channel's endpoint (URL and signing secret), by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebTarget>,
}

/// `templates` in the settings: minijinja templates per channel part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageTemplates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailTemplates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<String>,
    /// The Slack message's section text (mrkdwn) and fallback text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<String>,
    /// The Teams card's text block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_teams: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailTemplates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// A chat or webhook target named in the settings: `secret` is the name of
/// the Secrets Manager secret that holds its URL (the credential, for Slack
/// and Teams) and, for a webhook, its signing secret, under this deployment's
/// prefix and the organisation's ID (`{SECRET_PREFIX}{orgId}/{secret}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebTarget {
    #[serde(default)]
    pub secret: String,
    /// Set by this function when the target answered that it is gone
    /// (revoked hook, archived channel, 410): later events skip it with the
    /// reason until someone fixes the target and removes this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disabled {
    #[serde(default)]
    pub reason: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub at: String,
}

impl NotificationSettings {
    /// The target the settings name for a chat or webhook channel.
    pub fn web_target(&self, channel: &NotificationChannel) -> Option<&WebTarget> {
        match channel {
            NotificationChannel::Slack => self.slack.as_ref(),
            NotificationChannel::MicrosoftTeams => self.microsoft_teams.as_ref(),
            NotificationChannel::Webhook => self.webhook.as_ref(),
            _ => None,
        }
    }

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
