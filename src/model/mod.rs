//! Pure data: the API's objects and the values that can only be valid.

pub mod delivery;
pub mod enums;
pub mod event;
pub mod ids;
pub mod offer;

pub use delivery::{Delivery, DeliveryOutcome, DeliveryStatus};
pub use enums::*;
pub use event::{CreatedBy, NotificationEvent, TrackEvent};
pub use ids::{
    ContactId, ContactIdList, CustomFields, EmailAddress, IdempotencyKey, InvalidValue, OfferId,
    OrgId, PhoneNumber,
};
pub use offer::{
    Contact, ContactInfo, Disabled, EmailTemplates, MessageTemplates, NotificationSettings, Offer,
    OfferInfo, WebTarget,
};
