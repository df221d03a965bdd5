//! Typed ids. Every entity has its own, so a tenant id and a user id cannot be swapped by mistake.
//! Ids are UUIDv7 (time-ordered); they are made outside the core and passed in.

use std::fmt;
use std::str::FromStr;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub fn from_uuid(id: uuid::Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.as_hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::try_parse(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// A tenant: one customer's site, with its own keys, users and data.
    TenantId
);
typed_id!(
    /// A person who signs in to the admin panel or the console.
    UserId
);
typed_id!(
    /// A department: a queue of chats and the agents who serve it.
    DepartmentId
);
typed_id!(
    /// One row of a tenant's audit trail.
    AuditEventId
);
typed_id!(
    /// An anonymous website visitor, known by a server-issued token.
    VisitorId
);
typed_id!(
    /// A chat between a visitor and the business.
    ConversationId
);
typed_id!(
    /// A message a visitor left while no agent was online.
    OfflineMessageId
);
