//! String enums of the API. `""` is a real value ("unknown") and must round-trip,
//! and a value this code does not know (a newer API's, read back from storage)
//! is kept as it is instead of failing the request.

/// Declares a string enum with its wire names, an `Unspecified` variant for `""`
/// and an `Other(String)` variant that preserves unknown values.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            /// The API's `""`: not known or not set.
            #[default]
            Unspecified,
            $($variant,)+
            /// A value this build does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    Self::Unspecified => "",
                    $(Self::$variant => $wire,)+
                    Self::Other(s) => s.as_str(),
                }
            }

            /// Every named value, in the API's order (for documentation and tests).
            pub const KNOWN: &'static [&'static str] = &[$($wire),+];
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    "" => Self::Unspecified,
                    $($wire => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok(Self::from(s.as_ref()))
            }
        }
    };
}

string_enum!(
    /// `NotificationEventAction`.
    NotificationEventAction {
        AbnormalAlert => "ABNORMAL_ALERT", Accept => "ACCEPT", Add => "ADD",
        Approve => "APPROVE", Cancel => "CANCEL", Close => "CLOSE", Create => "CREATE",
        Delete => "DELETE", Disburse => "DISBURSE", EndSoon => "END_SOON",
        Expire => "EXPIRE", ExpireSoon => "EXPIRE_SOON", Merge => "MERGE",
        Meter => "METER", NewClientSignup => "NEW_CLIENT_SIGNUP", Notify => "NOTIFY",
        NotifyContacts => "NOTIFY_CONTACTS", OpenEmail => "OPEN_EMAIL",
        PendingCancel => "PENDING_CANCEL", PendingAcceptance => "PENDING_ACCEPTANCE",
        Reinstate => "REINSTATE", Reject => "REJECT", Reopen => "REOPEN",
        Charge => "CHARGE", Refund => "REFUND", Issue => "ISSUE",
        RotateSecret => "ROTATE_SECRET", Suspend => "SUSPEND", Test => "TEST",
        Update => "UPDATE", AceEngagementScoreUpdate => "ACE_ENGAGEMENT_SCORE_UPDATE",
        AceSalesRepUpdate => "ACE_SALES_REP_UPDATE",
        AceCustomerEmailUpdate => "ACE_CUSTOMER_EMAIL_UPDATE",
        SubmitApprovalRequest => "SUBMIT_APPROVAL_REQUEST",
        ReviewApprovalRequest => "REVIEW_APPROVAL_REQUEST", Complete => "COMPLETE",
    }
);

string_enum!(
    /// `NotificationChannel`.
    NotificationChannel {
        Email => "EMAIL", Slack => "SLACK", Sms => "SMS", Sns => "SNS",
        Salesforce => "SALESFORCE", Webhook => "WEBHOOK", SugerSupport => "SUGER_SUPPORT",
        MicrosoftTeams => "MICROSOFT_TEAMS",
    }
);

string_enum!(
    /// `EntityType` (of the event's entity and of `createdBy`).
    EntityType {
        ApiClient => "API_CLIENT", AuditingEvent => "AUDITING_EVENT",
        AutoShareTask => "AUTO_SHARE_TASK", Buyer => "BUYER", Contact => "CONTACT",
        Entitlement => "ENTITLEMENT", EntitlementTerm => "ENTITLEMENT_TERM",
        HeadlessEntitlements => "HEADLESS_ENTITLEMENTS", HubspotUser => "HUBSPOT_USER",
        Integration => "INTEGRATION", Invoice => "INVOICE", NewClient => "NEW_CLIENT",
        NotificationMessage => "NOTIFICATION_MESSAGE", Offer => "OFFER",
        Organization => "ORGANIZATION", PaymentTransaction => "PAYMENT_TRANSACTION",
        Product => "PRODUCT", Referral => "REFERRAL", RevenueRecord => "REVENUE_RECORD",
        SupportTicket => "SUPPORT_TICKET", UnpurchasedOffers => "UNPURCHASED_OFFERS",
        UsageRecordGroup => "USAGE_RECORD_GROUP", UsageRecordReport => "USAGE_RECORD_REPORT",
        User => "USER", Workflow => "WORKFLOW",
    }
);

string_enum!(
    /// `eventStatus` of a NotificationEvent.
    EventStatus { Scheduled => "SCHEDULED", Pending => "PENDING", Done => "DONE", Failed => "FAILED" }
);

string_enum!(
    /// `Partner`: the marketplace an offer lives on.
    Partner {
        Adyen => "ADYEN", Alibaba => "ALIBABA", Aws => "AWS", AwsChina => "AWS_CHINA",
        Azure => "AZURE", Gcp => "GCP", Google => "GOOGLE", Hubspot => "HUBSPOT",
        Intuit => "INTUIT", Lago => "LAGO", Marketo => "MARKETO", Metronome => "METRONOME",
        Microsoft => "MICROSOFT", Oracle => "ORACLE", Orb => "ORB", Redhat => "REDHAT",
        Salesforce => "SALESFORCE", Slack => "SLACK", Snowflake => "SNOWFLAKE",
        Stripe => "STRIPE", Zoho => "ZOHO",
    }
);

string_enum!(
    /// `priority` of a NotificationEvent.
    Priority { Low => "LOW", Medium => "MEDIUM", High => "HIGH", Critical => "CRITICAL" }
);

string_enum!(
    /// `trackEvents[].action`.
    TrackEventAction { OpenEmail => "OPEN_EMAIL" }
);

impl Partner {
    /// The marketplace's name as a buyer knows it, for the email text.
    pub fn display_name(&self) -> &str {
        match self {
            Self::Aws => "AWS Marketplace",
            Self::AwsChina => "AWS Marketplace (China)",
            Self::Azure | Self::Microsoft => "Microsoft Marketplace",
            Self::Gcp | Self::Google => "Google Cloud Marketplace",
            Self::Snowflake => "Snowflake Marketplace",
            Self::Oracle => "Oracle Cloud Marketplace",
            Self::Redhat => "Red Hat Marketplace",
            Self::Alibaba => "Alibaba Cloud Marketplace",
            Self::Salesforce => "Salesforce AppExchange",
            Self::Unspecified => "the marketplace",
            other => other.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_string_round_trips_as_unspecified() {
        let p: Priority = serde_json::from_str(r#""""#).unwrap();
        assert_eq!(p, Priority::Unspecified);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""""#);
    }

    #[test]
    fn unknown_value_is_kept_verbatim() {
        let a: NotificationEventAction = serde_json::from_str(r#""FAIL""#).unwrap();
        assert_eq!(a, NotificationEventAction::Other("FAIL".into()));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""FAIL""#);
    }

    #[test]
    fn every_known_value_round_trips() {
        for wire in NotificationEventAction::KNOWN {
            let v = NotificationEventAction::from(*wire);
            assert!(!matches!(v, NotificationEventAction::Other(_)), "{wire}");
            assert_eq!(v.as_str(), *wire);
        }
        for wire in EntityType::KNOWN.iter().chain(Partner::KNOWN) {
            assert_eq!(EntityType::from(*wire).as_str(), *wire);
            assert_eq!(Partner::from(*wire).as_str(), *wire);
        }
    }
}
