//! Parley's domain: the types every other crate speaks in.
//!
//! Nothing here reads a clock, generates an id, touches a socket or a database: the current time and
//! new ids come in from outside, so every rule is deterministic under test. Inputs become the
//! newtypes below at the edge ("parse, don't validate"); past the edge a value that exists is valid.

pub mod audit;
pub mod conversation;
pub mod error;
pub mod ids;
pub mod permission;
pub mod routing;
pub mod store;
pub mod values;

pub use error::DomainError;
pub use ids::{ConversationId, DepartmentId, OfflineMessageId, TenantId, UserId, VisitorId};
pub use permission::{Permission, Role};

/// Milliseconds since the Unix epoch, UTC. The only time representation stored or compared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// Where the current time comes from; tests pass a fake one.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}
