//! The narrow storage interface. Every method takes the tenant first (where there is one) and does
//! one whole use case, audit row included, in one transaction. Values arrive already validated and,
//! where personal or secret, already encrypted: a store never sees a plaintext email or name.

use crate::audit::{AuditEvent, AuditRecord};
use crate::{DepartmentId, Role, TenantId, Timestamp, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the string names which (e.g. `email`, `department_name`).
    #[error("conflict on {0}")]
    Conflict(&'static str),
    /// The database failed; the message is for the log and contains no data values.
    #[error("database error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: String,
    /// The site name, encrypted under the tenant key.
    pub name_ct: Vec<u8>,
    /// The public key the widget's script tag carries.
    pub site_key: String,
    pub allowed_origins: Vec<String>,
    pub created_at: Timestamp,
    /// Sequence number and hash of the tenant's newest audit event (the chain head).
    pub audit_seq: i64,
    pub audit_head: Vec<u8>,
}

/// A tenant's data key, wrapped (encrypted) by a master key.
#[derive(Debug, Clone)]
pub struct TenantKeyRecord {
    pub tenant: TenantId,
    pub key_id: i64,
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct DepartmentRecord {
    pub id: DepartmentId,
    pub tenant: TenantId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub tenant: TenantId,
    pub email_ct: Vec<u8>,
    /// HMAC blind index of the normalised email, for sign-in lookup.
    pub email_index: Vec<u8>,
    pub display_name_ct: Vec<u8>,
    pub role: Role,
    pub capacity: i64,
    pub password_hash: String,
    pub must_change_password: bool,
    pub disabled: bool,
    pub departments: Vec<DepartmentId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub display_name_ct: Option<Vec<u8>>,
    pub role: Option<Role>,
    pub capacity: Option<i64>,
    pub departments: Option<Vec<DepartmentId>>,
    pub disabled: Option<bool>,
}

/// A new password hash for a user.
#[derive(Debug, Clone)]
pub struct PasswordChange<'a> {
    pub password_hash: &'a str,
    pub must_change: bool,
    /// The session (token hash) that stays signed in; every other session of the user ends.
    pub keep_session: Option<&'a [u8]>,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// SHA-256 of the session token; the token itself is never stored.
    pub token_hash: Vec<u8>,
    pub tenant: TenantId,
    pub user: UserId,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;
    /// Apply pending migrations; returns the versions applied now.
    async fn migrate(&self) -> StoreResult<Vec<i64>>;
    /// Reachable and all migrations applied.
    async fn ready(&self) -> StoreResult<bool>;

    // Tenants and keys.
    async fn create_tenant(
        &self,
        tenant: &TenantRecord,
        key: &TenantKeyRecord,
        admin: &UserRecord,
        audit: &[AuditEvent],
    ) -> StoreResult<()>;
    async fn tenant(&self, tenant: TenantId) -> StoreResult<Option<TenantRecord>>;
    async fn tenant_by_slug(&self, slug: &str) -> StoreResult<Option<TenantRecord>>;
    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>>;
    async fn update_tenant(
        &self,
        tenant: TenantId,
        name_ct: Option<Vec<u8>>,
        allowed_origins: Option<Vec<String>>,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    async fn tenant_keys(&self, tenant: TenantId) -> StoreResult<Vec<TenantKeyRecord>>;
    async fn all_tenant_keys(&self) -> StoreResult<Vec<TenantKeyRecord>>;
    /// Replace the wrapping of one tenant's keys (same key ids, new master key), with its audit row.
    async fn rewrap_tenant_keys(
        &self,
        tenant: TenantId,
        keys: &[TenantKeyRecord],
        audit: &AuditEvent,
    ) -> StoreResult<()>;

    // Departments.
    async fn create_department(
        &self,
        tenant: TenantId,
        dept: &DepartmentRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    async fn rename_department(
        &self,
        tenant: TenantId,
        id: DepartmentId,
        name: &str,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    async fn list_departments(&self, tenant: TenantId) -> StoreResult<Vec<DepartmentRecord>>;

    // Users.
    async fn create_user(
        &self,
        tenant: TenantId,
        user: &UserRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    async fn user(&self, tenant: TenantId, id: UserId) -> StoreResult<Option<UserRecord>>;
    async fn user_by_email_index(
        &self,
        tenant: TenantId,
        index: &[u8],
    ) -> StoreResult<Option<UserRecord>>;
    async fn list_users(&self, tenant: TenantId) -> StoreResult<Vec<UserRecord>>;
    /// Apply changes; disabling a user also ends all their sessions, in the same transaction.
    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        changes: &UserChanges,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    /// Set a new password hash and end every other session of the user.
    async fn set_password(
        &self,
        tenant: TenantId,
        id: UserId,
        change: &PasswordChange<'_>,
        audit: &AuditEvent,
    ) -> StoreResult<()>;

    // Sessions.
    async fn create_session(
        &self,
        tenant: TenantId,
        session: &SessionRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    /// Look a session up by its token hash (the token names its tenant only through this row).
    async fn session(&self, token_hash: &[u8]) -> StoreResult<Option<SessionRecord>>;
    async fn touch_session(
        &self,
        tenant: TenantId,
        token_hash: &[u8],
        seen: Timestamp,
        expires: Timestamp,
    ) -> StoreResult<()>;
    async fn delete_session(
        &self,
        tenant: TenantId,
        token_hash: &[u8],
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()>;

    // Audit.
    /// Append an event that goes with no other change (failed sign-in, denied action).
    async fn append_audit(&self, tenant: TenantId, event: &AuditEvent) -> StoreResult<()>;
    /// Events in sequence order, starting after `after_seq`.
    async fn audit_events(
        &self,
        tenant: TenantId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// The newest events first, at most `limit`.
    async fn recent_audit_events(
        &self,
        tenant: TenantId,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>>;
}
