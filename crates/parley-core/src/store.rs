//! The narrow storage interface. Every method takes the tenant first (where there is one) and does
//! one whole use case, audit row included, in one transaction. Values arrive already validated and,
//! where personal or secret, already encrypted: a store never sees a plaintext email or name.

use crate::audit::{AuditEvent, AuditRecord};
use crate::{DepartmentId, Role, TenantId, Timestamp, UserId};

#[derive(Debug, Clone, thiserror::Error)]
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
pub trait Store: ChatStore + Send + Sync + 'static {
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
    /// The tenant whose widget carries this public site key.
    async fn tenant_by_site_key(&self, site_key: &str) -> StoreResult<Option<TenantRecord>>;
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

// ---------------------------------------------------------------------------------------------
// Chat: visitors, conversations, events, presence, routing, offline messages.

use crate::conversation::{
    AgentStatus, ConnectionPeriods, ConversationStatus, EventKind, VisitorConnection,
};
use crate::routing::Candidate;
use crate::{ConversationId, OfflineMessageId, VisitorId};

#[derive(Debug, Clone)]
pub struct VisitorRecord {
    pub id: VisitorId,
    pub tenant: TenantId,
    pub token_hash: Vec<u8>,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// A department's routing settings.
#[derive(Debug, Clone)]
pub struct DepartmentRouting {
    pub department: DepartmentId,
    /// `offer` (the chosen agent accepts or lets it time out) or `assign` (given directly).
    pub mode: String,
    pub offer_timeout_ms: i64,
    /// JSON object: field -> "required" | "optional" | "hidden", for name, email, question.
    pub prechat_fields: String,
}

#[derive(Debug, Clone)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub tenant: TenantId,
    pub visitor: VisitorId,
    pub department: DepartmentId,
    pub status: ConversationStatus,
    pub agent: Option<UserId>,
    pub offered_to: Option<UserId>,
    pub offer_expires_at: Option<Timestamp>,
    /// Agents who rejected the chat or let an offer lapse; they are not offered it again.
    pub declined_by: Vec<UserId>,
    /// The pre-chat answers (JSON), encrypted under the tenant key.
    pub prechat_ct: Vec<u8>,
    pub last_seq: i64,
    pub created_at: Timestamp,
    pub queued_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub visitor_state: VisitorConnection,
    pub visitor_seen_at: Timestamp,
}

/// An open conversation whose visitor has been silent past the tenant's weak period.
#[derive(Debug, Clone)]
pub struct SilentVisitor {
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub state: VisitorConnection,
    pub seen_at: Timestamp,
    pub periods: ConnectionPeriods,
}

/// An event to append. The store allocates its sequence number inside the transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    /// `visitor`, `agent:<id>` or `system`.
    pub author: String,
    pub client_msg_id: Option<String>,
    /// JSON object of non-personal data (e.g. the agent's id on `assigned`).
    pub data: String,
    pub at: Timestamp,
}

/// Seals an event's body once its sequence number is known, so the ciphertext's associated data
/// can bind tenant, conversation and sequence number.
pub type Sealer = std::sync::Arc<dyn Fn(i64) -> Vec<u8> + Send + Sync>;

/// Runs once a new event has committed, before its writer is answered; not for a duplicate or a
/// refusal. The store runs these one at a time in commit order, so whatever they publish reaches
/// listeners in sequence order (a listener that resumes from the highest seq it saw misses
/// nothing). It runs on the writer's task: it must be quick and must not block.
pub type OnCommit = std::sync::Arc<dyn Fn(&Appended) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct EventRecord {
    pub conversation: ConversationId,
    pub seq: i64,
    pub kind: EventKind,
    pub at: Timestamp,
    pub author: String,
    pub client_msg_id: Option<String>,
    pub body_ct: Option<Vec<u8>>,
    pub data: String,
}

/// The outcome of an append: the event's sequence number, and whether it was already stored
/// under the same `client_msg_id` (then nothing new was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    pub at: Timestamp,
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct PresenceRecord {
    pub user: UserId,
    pub status: AgentStatus,
    pub active_chats: i64,
    pub idle_since: Timestamp,
}

#[derive(Debug, Clone)]
pub struct OfflineMessageRecord {
    pub id: OfflineMessageId,
    pub tenant: TenantId,
    pub department: DepartmentId,
    pub visitor: VisitorId,
    /// JSON {name, email, message}, encrypted under the tenant key.
    pub content_ct: Vec<u8>,
    pub created_at: Timestamp,
    pub handled_at: Option<Timestamp>,
    pub handled_by: Option<UserId>,
}

/// A conversation state change that goes with an appended event, in one transaction.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Only the event.
    None,
    /// Only the event, a chat message written by `from`: refused unless `from` is the chat's
    /// visitor (`NotFound` otherwise) or its assigned agent (`Conflict("not_assigned")`). The check
    /// is made by the writer that allocates the sequence number, so a message needs no read
    /// before it is queued.
    Message { from: MessageFrom },
    /// The agent takes the queued chat, if it is still queued (and, when `offered` is set, still
    /// offered to them) and they are online below capacity.
    Assign { agent: UserId, require_offer: bool },
    /// Back to the queue (the agent's count goes down); `decline` records who let it go.
    Requeue { decline: Option<UserId> },
    /// To another department's queue, or straight to another agent.
    Transfer {
        department: DepartmentId,
        agent: Option<UserId>,
    },
    /// Over; the agent's count goes down.
    End,
    /// The visitor's connection state moves `from` → `to` (refused if it is no longer `from`, so
    /// nodes racing on one timer write it once). Going back to connected also stamps the time.
    VisitorState {
        from: VisitorConnection,
        to: VisitorConnection,
    },
}

/// Who writes a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFrom {
    Visitor(VisitorId),
    Agent(UserId),
}

#[async_trait::async_trait]
pub trait ChatStore: Send + Sync {
    async fn create_visitor(&self, tenant: TenantId, visitor: &VisitorRecord) -> StoreResult<()>;
    /// The visitor a token hash names (the token names its tenant only through this row).
    async fn visitor_by_token(&self, token_hash: &[u8]) -> StoreResult<Option<VisitorRecord>>;

    async fn department_routing(&self, tenant: TenantId) -> StoreResult<Vec<DepartmentRouting>>;
    async fn set_department_routing(
        &self,
        tenant: TenantId,
        routing: &DepartmentRouting,
        audit: &AuditEvent,
    ) -> StoreResult<()>;

    /// Create a queued conversation with its `started` event (seq 1).
    async fn create_conversation(
        &self,
        tenant: TenantId,
        c: &ConversationRecord,
        started: &NewEvent,
    ) -> StoreResult<()>;
    async fn conversation(
        &self,
        tenant: TenantId,
        id: ConversationId,
    ) -> StoreResult<Option<ConversationRecord>>;
    async fn open_conversation_of_visitor(
        &self,
        tenant: TenantId,
        visitor: VisitorId,
    ) -> StoreResult<Option<ConversationRecord>>;
    /// Conversations by status (and department), oldest first.
    async fn conversations_by_status(
        &self,
        tenant: TenantId,
        status: ConversationStatus,
        department: Option<DepartmentId>,
    ) -> StoreResult<Vec<ConversationRecord>>;
    async fn conversations_of_agent(
        &self,
        tenant: TenantId,
        agent: UserId,
    ) -> StoreResult<Vec<ConversationRecord>>;
    /// Ended conversations of the given departments, newest first, before `before` (ms).
    async fn ended_conversations(
        &self,
        tenant: TenantId,
        departments: Option<&[DepartmentId]>,
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<ConversationRecord>>;

    /// Append an event (with a state change) durably: answered only once the transaction holding
    /// it has committed. Appends arriving together are committed together (group commit: one
    /// transaction, one fsync), each in its own savepoint so one failing leaves the others alone.
    /// With a `client_msg_id` already stored for
    /// the conversation, nothing is written and the original sequence number comes back.
    /// An ended conversation takes no more events: `Conflict("conversation_ended")`. A transition
    /// whose condition no longer holds: `Conflict("not_queued" | "capacity" | "not_assigned")`.
    async fn append_event(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        event: &NewEvent,
        body: Option<Sealer>,
        transition: &Transition,
    ) -> StoreResult<Appended> {
        self.append_event_then(tenant, conversation, event, body, transition, None)
            .await
    }
    /// `append_event`, running `on_commit` (see [`OnCommit`]) once the new event has committed.
    async fn append_event_then(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        event: &NewEvent,
        body: Option<Sealer>,
        transition: &Transition,
        on_commit: Option<OnCommit>,
    ) -> StoreResult<Appended>;
    /// Events after `after_seq`, in order, at most `limit`.
    async fn events(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>>;

    /// Offer a queued, unoffered (or lapsed-offer) conversation to an agent until `expires`.
    /// False when it is no longer available for an offer.
    async fn offer(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        agent: UserId,
        now: Timestamp,
        expires: Timestamp,
    ) -> StoreResult<bool>;
    /// Withdraw an offer made to `agent` (rejected or lapsed) and remember that they declined.
    /// False when the conversation is no longer offered to them.
    async fn decline_offer(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        agent: UserId,
    ) -> StoreResult<bool>;
    /// Offers that lapsed before `now`, in every tenant: (tenant, conversation, agent).
    async fn lapsed_offers(
        &self,
        now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, ConversationId, UserId)>>;

    async fn set_agent_status(
        &self,
        tenant: TenantId,
        user: UserId,
        status: AgentStatus,
        now: Timestamp,
    ) -> StoreResult<()>;

    /// Record that `visitor` was heard from in their open conversation; returns their state
    /// before (`None` when the conversation is not open or not theirs). Heartbeats are batched
    /// with appends by the group-commit writer.
    async fn touch_visitor(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
        visitor: VisitorId,
        now: Timestamp,
    ) -> StoreResult<Option<VisitorConnection>>;
    /// Open conversations, in every tenant, whose visitor is silent past the tenant's weak period.
    async fn silent_visitors(&self, now: Timestamp) -> StoreResult<Vec<SilentVisitor>>;
    async fn connection_periods(&self, tenant: TenantId) -> StoreResult<ConnectionPeriods>;
    async fn set_connection_periods(
        &self,
        tenant: TenantId,
        periods: &ConnectionPeriods,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    async fn presence(&self, tenant: TenantId) -> StoreResult<Vec<PresenceRecord>>;
    /// Online agents of a department with their capacity and load.
    async fn routing_candidates(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> StoreResult<Vec<Candidate>>;

    async fn create_offline_message(
        &self,
        tenant: TenantId,
        m: &OfflineMessageRecord,
    ) -> StoreResult<()>;
    async fn offline_messages(
        &self,
        tenant: TenantId,
        departments: Option<&[DepartmentId]>,
        limit: i64,
    ) -> StoreResult<Vec<OfflineMessageRecord>>;
    /// Mark a message handled, if it belongs to one of `departments` (`None`: any of the tenant's).
    async fn mark_offline_message_handled(
        &self,
        tenant: TenantId,
        id: OfflineMessageId,
        departments: Option<&[DepartmentId]>,
        by: UserId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
}
