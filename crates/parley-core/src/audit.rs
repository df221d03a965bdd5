//! Audit events: who did what to which record, when and from where. Never a secret, a body or
//! personal data: targets are ids, details are field names and non-personal values.

use crate::ids::AuditEventId;
use crate::{TenantId, Timestamp, UserId};
use serde::Serialize;

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum AuditActor {
    /// A signed-in user.
    User(UserId),
    /// The platform operator, on the command line.
    Operator,
    /// Someone not (yet) signed in, e.g. a failed sign-in.
    Anonymous,
}

impl AuditActor {
    /// The stored form: `user:<id>`, `operator` or `anonymous`.
    pub fn to_stored(&self) -> String {
        match self {
            AuditActor::User(id) => format!("user:{id}"),
            AuditActor::Operator => "operator".into(),
            AuditActor::Anonymous => "anonymous".into(),
        }
    }
}

/// One event before it is chained: the store gives it its sequence number and hashes.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub tenant: TenantId,
    pub at: Timestamp,
    pub actor: AuditActor,
    /// Stable dotted name, e.g. `user.created`, `auth.sign_in_failed`.
    pub action: &'static str,
    /// The id of the record acted on, if any.
    pub target: Option<String>,
    pub ip: Option<String>,
    /// A JSON object of what changed (field names and non-secret values).
    pub detail: String,
}

/// An event as stored: chained to its predecessor by `prev_hash`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub detail: String,
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}
