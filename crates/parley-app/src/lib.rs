//! Parley's use cases. Each one authorizes first (its doc comment names the permission), then
//! validates, then stores the change together with its audit row in one transaction.
//!
//! The server calls these for every HTTP request and the command line calls them for operator
//! verbs, so a rule holds however a change arrives.

mod auth;
mod chat;
mod directory;
mod error;
pub mod fault;
mod hub;
mod keys;
mod operator;
mod throttle;
mod tickets;

pub use auth::{SESSION_ABSOLUTE_MS, SESSION_IDLE_MS, Session, SignedIn};
pub use chat::{
    ChatActor, ConsoleOverview, ConversationView, EventView, FieldRule, OfflineMessageView,
    Prechat, PrechatFields, TransferTarget, Visitor, WidgetDepartment, WidgetSession,
};
pub use directory::{
    DepartmentChanges, DepartmentView, NewUserInput, PeriodsView, SiteChanges, SiteView,
    UserChangesInput, UserCreated, UserView,
};
pub use error::AppError;
pub use hub::{Frame, Hub, Subscriber, Topic};
pub use keys::KeyService;
pub use operator::{ChainReport, DemoTenant, TenantCreated};
pub use throttle::Throttle;
pub use tickets::{TICKET_TTL_MS, Ticket, TicketSubject};

use parley_core::audit::{AuditActor, AuditEvent};
use parley_core::store::Store;
use parley_core::{Clock, TenantId, Timestamp};
use std::sync::Arc;

/// Decrypted display names per tenant, shared by the node's requests.
pub(crate) type NameCache = Arc<
    std::sync::Mutex<
        std::collections::HashMap<
            TenantId,
            Arc<std::collections::HashMap<parley_core::UserId, String>>,
        >,
    >,
>;

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        Timestamp(ms)
    }
}

/// Everything a use case needs; cheap to clone, shared by all requests of a node.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub keys: Arc<KeyService>,
    pub clock: Arc<dyn Clock>,
    pub throttle: Arc<Throttle>,
    pub hub: Arc<Hub>,
    /// Decrypted display names per tenant, for chat events (see `chat::agent_names_for`).
    pub(crate) names: NameCache,
    /// One walk of a department's queue at a time on this node (see `chat::route_department`).
    pub(crate) routing_passes: chat::RoutingPasses,
    /// Departments whose waiting visitors are due a queue update (see `chat::publish_queue`).
    pub(crate) queue_updates: chat::QueueUpdates,
}

impl App {
    pub fn new(store: Arc<dyn Store>, keys: Arc<KeyService>, clock: Arc<dyn Clock>) -> Self {
        App {
            store,
            keys,
            clock,
            throttle: Arc::new(Throttle::default()),
            hub: Arc::new(Hub::default()),
            names: Arc::default(),
            routing_passes: Arc::default(),
            queue_updates: Arc::default(),
        }
    }

    /// Forget cached display names of a tenant (after a user changed on this node).
    pub(crate) fn forget_names(&self, tenant: TenantId) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tenant);
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A new time-ordered id.
    pub fn new_id(&self) -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    /// An audit event for `tenant`, stamped now, with a JSON `detail`.
    pub fn audit_event(
        &self,
        tenant: TenantId,
        actor: AuditActor,
        action: &'static str,
        target: Option<String>,
        ip: Option<&str>,
        detail: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            id: parley_core::ids::AuditEventId::from_uuid(self.new_id()),
            tenant,
            at: self.now(),
            actor,
            action,
            target,
            ip: ip.map(str::to_owned),
            detail: detail.to_string(),
        }
    }
}
