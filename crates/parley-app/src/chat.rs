//! Live chat use cases for visitors and agents, and the router that hands chats to agents.
//!
//! Every change is one store call that appends the conversation event together with its state
//! change, durably; only then is anything published on the hub, so the store is the truth and the
//! hub only makes it fast.

use crate::auth::Session;
use crate::hub::{Frame, Hub, Topic};
use crate::{App, AppError};
use parley_core::audit::AuditActor;
use parley_core::conversation::VisitorConnection;
use parley_core::conversation::{
    AgentStatus, Author, ClientMsgId, ConversationStatus, EventKind, MessageBody,
};
use parley_core::routing::{choose_agent, plan_round};
use parley_core::store::{
    Appended, ConversationRecord, DepartmentRouting, EventRecord, MessageFrom, NewEvent,
    OfflineMessageRecord, OnCommit, Sealer, Transition, VisitorRecord,
};
use parley_core::values::{DisplayName, EmailAddress};
use parley_core::{
    ConversationId, DepartmentId, DomainError, OfflineMessageId, Permission, TenantId, Timestamp,
    UserId, VisitorId,
};
use parley_crypto::{TenantCipher, random_token, sha256};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A visitor, as named by their token.
#[derive(Debug, Clone, Copy)]
pub struct Visitor {
    pub tenant: TenantId,
    pub id: VisitorId,
}

/// Who acts on a conversation.
#[derive(Debug, Clone, Copy)]
pub enum ChatActor<'a> {
    Visitor(Visitor),
    Agent(&'a Session),
}

/// How a pre-chat field is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRule {
    Required,
    Optional,
    Hidden,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrechatFields {
    pub name: FieldRule,
    pub email: FieldRule,
    pub question: FieldRule,
}

impl Default for PrechatFields {
    fn default() -> Self {
        PrechatFields {
            name: FieldRule::Required,
            email: FieldRule::Optional,
            question: FieldRule::Optional,
        }
    }
}

/// The visitor's pre-chat answers (stored encrypted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Prechat {
    pub name: Option<String>,
    pub email: Option<String>,
    pub question: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WidgetDepartment {
    pub id: DepartmentId,
    pub name: String,
    /// Whether an agent of the department is online now (else the widget offers the offline form).
    pub online: bool,
    pub prechat_fields: PrechatFields,
}

/// What the widget needs to start.
#[derive(Debug, Serialize)]
pub struct WidgetSession {
    pub visitor_token: String,
    pub site_name: String,
    pub departments: Vec<WidgetDepartment>,
    pub conversation: Option<ConversationView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub id: ConversationId,
    pub department_id: DepartmentId,
    pub status: ConversationStatus,
    pub agent_id: Option<UserId>,
    pub agent_name: Option<String>,
    pub offered_to: Option<UserId>,
    pub last_seq: i64,
    pub created_at: i64,
    pub queued_at: i64,
    pub ended_at: Option<i64>,
    /// Shown to agents only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prechat: Option<Prechat>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub kind: EventKind,
    pub at: i64,
    /// `visitor`, `agent` or `system`.
    pub author: &'static str,
    pub agent_id: Option<UserId>,
    pub agent_name: Option<String>,
    pub body: Option<String>,
    pub client_msg_id: Option<String>,
    pub data: Value,
}

#[derive(Debug, Serialize)]
pub struct ConsoleOverview {
    pub status: AgentStatus,
    pub capacity: i64,
    pub chats: Vec<ConversationView>,
    pub offers: Vec<ConversationView>,
    pub queue: Vec<ConversationView>,
    /// Live chats of the caller's scope (managers only; empty otherwise).
    pub live: Vec<ConversationView>,
    /// Colleagues online or away, for transfers.
    pub agents: Vec<AgentBrief>,
}

#[derive(Debug, Serialize)]
pub struct AgentBrief {
    pub id: UserId,
    pub name: String,
    pub status: AgentStatus,
    pub department_ids: Vec<DepartmentId>,
}

#[derive(Debug, Serialize)]
pub struct OfflineMessageView {
    pub id: OfflineMessageId,
    pub department_id: DepartmentId,
    pub name: String,
    pub email: String,
    pub message: String,
    pub created_at: i64,
    pub handled_at: Option<i64>,
    pub handled_by: Option<UserId>,
}

/// Where a transfer goes.
#[derive(Debug, Clone, Copy)]
pub enum TransferTarget {
    Agent(UserId),
    Department(DepartmentId),
}

/// How soon a change of a department's queue reaches its waiting visitors and its consoles.
const QUEUE_UPDATE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// After a round of queue updates, the next waits this long per frame the round sent: a queue of
/// thousands moving at once is told about it at most about ten thousand frames a second, so
/// that telling visitors their place never crowds out serving them.
const QUEUE_FRAME_COST: std::time::Duration = std::time::Duration::from_micros(100);

/// Queue updates, per department: whether a round is due, when the next may start, and the place
/// and wait each waiting chat was last told (only changes are sent).
#[derive(Default)]
pub(crate) struct QueueRounds {
    due: std::collections::HashSet<(TenantId, DepartmentId)>,
    not_before: HashMap<(TenantId, DepartmentId), tokio::time::Instant>,
    told: HashMap<(TenantId, DepartmentId), HashMap<ConversationId, (i64, i64)>>,
}

pub(crate) type QueueUpdates = Arc<Mutex<QueueRounds>>;

/// Per department: is a walk of its queue running, and has another round been asked for.
#[derive(Default)]
pub(crate) struct RoutingPass {
    walking: tokio::sync::Mutex<()>,
    again: AtomicBool,
}

pub(crate) type RoutingPasses = Arc<Mutex<HashMap<(TenantId, DepartmentId), Arc<RoutingPass>>>>;

fn conflict_to_domain(e: AppError) -> AppError {
    match e {
        AppError::Conflict("conversation_ended") => DomainError::new(
            "conversation_id",
            "conversation_ended",
            "the chat has ended",
        )
        .into(),
        AppError::Conflict("capacity") => DomainError::new(
            "agent",
            "agent_unavailable",
            "that agent is offline or at capacity",
        )
        .into(),
        AppError::Conflict("not_queued") => DomainError::new(
            "conversation_id",
            "not_available",
            "the chat is no longer waiting for you",
        )
        .into(),
        other => other,
    }
}

fn body_context(c: ConversationId, seq: i64) -> String {
    format!("event.body|{c}|{seq}")
}
fn prechat_context(c: ConversationId) -> String {
    format!("conversation.prechat|{c}")
}
fn offline_context(m: OfflineMessageId) -> String {
    format!("offline_message|{m}")
}

pub fn frame(v: &Value) -> Frame {
    Arc::from(v.to_string())
}

impl App {
    async fn agent_names(
        &self,
        cipher: &TenantCipher,
        tenant: TenantId,
    ) -> Result<Arc<HashMap<UserId, String>>, AppError> {
        self.agent_names_for(cipher, tenant, &[]).await
    }

    /// Display names of the tenant's users, decrypted once and cached per node; rebuilt when a
    /// needed id is missing (a user created elsewhere) or after a change on this node.
    async fn agent_names_for(
        &self,
        cipher: &TenantCipher,
        tenant: TenantId,
        needed: &[UserId],
    ) -> Result<Arc<HashMap<UserId, String>>, AppError> {
        if let Some(names) = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant)
            && needed.iter().all(|id| names.contains_key(id))
        {
            return Ok(names.clone());
        }
        let mut names = HashMap::new();
        for u in self.store.list_users(tenant).await? {
            names.insert(
                u.id,
                cipher.open_string(&crate::directory::name_context(u.id), &u.display_name_ct)?,
            );
        }
        let names = Arc::new(names);
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant, names.clone());
        Ok(names)
    }

    /// `unknown_department` unless the department exists in the tenant.
    async fn ensure_department(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> Result<(), AppError> {
        if self
            .store
            .list_departments(tenant)
            .await?
            .iter()
            .any(|d| d.id == department)
        {
            Ok(())
        } else {
            Err(
                DomainError::new("department_id", "unknown_department", "no such department")
                    .into(),
            )
        }
    }

    fn conversation_view(
        &self,
        cipher: &TenantCipher,
        c: &ConversationRecord,
        names: &HashMap<UserId, String>,
        with_prechat: bool,
    ) -> Result<ConversationView, AppError> {
        let prechat = if with_prechat {
            Some(
                serde_json::from_slice(&cipher.open(&prechat_context(c.id), &c.prechat_ct)?)
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        Ok(ConversationView {
            id: c.id,
            department_id: c.department,
            status: c.status,
            agent_id: c.agent,
            agent_name: c.agent.and_then(|a| names.get(&a).cloned()),
            offered_to: c.offered_to,
            last_seq: c.last_seq,
            created_at: c.created_at.0,
            queued_at: c.queued_at.0,
            ended_at: c.ended_at.map(|t| t.0),
            prechat,
        })
    }

    /// Append, and publish the stored event to the conversation's listeners once it has
    /// committed. Publishing is the store's commit hook, so it happens in commit order: every
    /// listener gets a chat's events in sequence order, and one that resumes from the highest seq
    /// it saw misses nothing. (Published after the append returned, a message that had to look up
    /// a name went out after a later one that did not, and a resume skipped it.)
    async fn append_and_publish(
        &self,
        tenant: TenantId,
        conv: ConversationId,
        event: NewEvent,
        body: Option<&str>,
        transition: Transition,
    ) -> Result<Appended, AppError> {
        let cipher = self.keys.cipher(self.store.as_ref(), tenant).await?;
        // The names the live event shows are looked up before: nothing waits between commit and
        // publish.
        let mut needed = vec![];
        if let Some(Author::Agent(a)) = Author::parse(&event.author) {
            needed.push(a);
        }
        if let Some(a) = serde_json::from_str::<Value>(&event.data)
            .ok()
            .and_then(|d| d["agent_id"].as_str().and_then(|s| s.parse().ok()))
        {
            needed.push(a);
        }
        let names = self.agent_names_for(&cipher, tenant, &needed).await?;
        let plain: Option<Arc<str>> = body.map(Arc::from);
        let sealer: Option<Sealer> = plain.clone().map(|plain| {
            let cipher = cipher.clone();
            Arc::new(move |seq: i64| cipher.seal(&body_context(conv, seq), plain.as_bytes()))
                as Sealer
        });
        let publish: OnCommit = {
            let hub = self.hub.clone();
            let event = event.clone();
            Arc::new(move |appended: &Appended| {
                crate::fault::point("after_commit");
                let record = EventRecord {
                    conversation: conv,
                    seq: appended.seq,
                    kind: event.kind,
                    at: appended.at,
                    author: event.author.clone(),
                    client_msg_id: event.client_msg_id.clone(),
                    body_ct: None,
                    data: event.data.clone(),
                };
                // The live form carries the plaintext we already have (no seal/open round
                // trip); a transfer note stays in the store for agents who open the chat.
                match event_view(&cipher, &record, &names, false) {
                    Ok(mut view) => {
                        if event.kind != EventKind::Transferred {
                            view.body = plain.as_deref().map(str::to_owned);
                        }
                        publish_event(&hub, tenant, &view);
                    }
                    Err(e) => tracing::warn!(error = %e, "an event could not be published"),
                }
                crate::fault::point("after_publish");
            })
        };
        self.store
            .append_event_then(tenant, conv, &event, sealer, &transition, Some(publish))
            .await
            .map_err(AppError::from)
            .map_err(conflict_to_domain)
    }

    // ----------------------------------------------------------------------------------------
    // Visitors

    /// Open or resume the widget for a site key. Needs no permission: the site key is public; the
    /// visitor token it returns (new unless a valid one was given) is the visitor's only identity.
    pub async fn widget_session(
        &self,
        site_key: &str,
        token: Option<&str>,
        ip: Option<&str>,
    ) -> Result<WidgetSession, AppError> {
        let tenant = self
            .store
            .tenant_by_site_key(site_key)
            .await?
            .ok_or(AppError::NotFound)?;
        let cipher = self.keys.cipher(self.store.as_ref(), tenant.id).await?;
        let existing = match token {
            Some(t) => self
                .store
                .visitor_by_token(&sha256(t.as_bytes()))
                .await?
                .filter(|v| v.tenant == tenant.id),
            None => None,
        };
        let (token, visitor) = match (token, existing) {
            (Some(t), Some(v)) => (t.to_owned(), v),
            _ => {
                let now = self.now();
                let ip_key = format!("new-visitor-ip:{}", ip.unwrap_or("unknown"));
                if let Some(secs) =
                    self.throttle
                        .blocked(&ip_key, crate::throttle::MAX_NEW_VISITORS_PER_IP, now)
                {
                    return Err(AppError::TooManyVisitors {
                        retry_after_secs: secs,
                    });
                }
                self.throttle.record(&ip_key, now);
                let token = random_token();
                let v = VisitorRecord {
                    id: VisitorId::from_uuid(self.new_id()),
                    tenant: tenant.id,
                    token_hash: sha256(token.as_bytes()).to_vec(),
                    created_at: now,
                    last_seen_at: now,
                };
                self.store.create_visitor(tenant.id, &v).await?;
                (token, v)
            }
        };
        let routing: HashMap<DepartmentId, DepartmentRouting> = self
            .store
            .department_routing(tenant.id)
            .await?
            .into_iter()
            .map(|r| (r.department, r))
            .collect();
        let mut departments = vec![];
        for d in self.store.list_departments(tenant.id).await? {
            let online = !self
                .store
                .routing_candidates(tenant.id, d.id)
                .await?
                .is_empty();
            let fields = routing
                .get(&d.id)
                .and_then(|r| serde_json::from_str(&r.prechat_fields).ok())
                .unwrap_or_default();
            departments.push(WidgetDepartment {
                id: d.id,
                name: d.name,
                online,
                prechat_fields: fields,
            });
        }
        let names = self.agent_names(&cipher, tenant.id).await?;
        let conversation = match self
            .store
            .open_conversation_of_visitor(tenant.id, visitor.id)
            .await?
        {
            Some(c) => Some(self.conversation_view(&cipher, &c, &names, false)?),
            None => None,
        };
        Ok(WidgetSession {
            visitor_token: token,
            site_name: cipher.open_string("tenant.name", &tenant.name_ct)?,
            departments,
            conversation,
        })
    }

    /// The visitor a token names.
    pub async fn authenticate_visitor(&self, token: &str) -> Result<Visitor, AppError> {
        let v = self
            .store
            .visitor_by_token(&sha256(token.as_bytes()))
            .await?
            .ok_or(AppError::Unauthenticated)?;
        Ok(Visitor {
            tenant: v.tenant,
            id: v.id,
        })
    }

    /// The allowed website origins of a site key's tenant (for the widget's frame-ancestors).
    pub async fn widget_origins(&self, site_key: &str) -> Result<Vec<String>, AppError> {
        Ok(self
            .store
            .tenant_by_site_key(site_key)
            .await?
            .ok_or(AppError::NotFound)?
            .allowed_origins)
    }

    /// Start a chat (or return the visitor's open one). The visitor's own; no agent online in the
    /// department: `no_agent_online`, and the widget offers the offline form.
    pub async fn start_chat(
        &self,
        v: Visitor,
        department: DepartmentId,
        answers: Prechat,
    ) -> Result<ConversationView, AppError> {
        let cipher = self.keys.cipher(self.store.as_ref(), v.tenant).await?;
        if let Some(open) = self
            .store
            .open_conversation_of_visitor(v.tenant, v.id)
            .await?
        {
            let names = self.agent_names(&cipher, v.tenant).await?;
            return self.conversation_view(&cipher, &open, &names, false);
        }
        let routing = self
            .store
            .department_routing(v.tenant)
            .await?
            .into_iter()
            .find(|r| r.department == department)
            .ok_or_else(|| {
                DomainError::new("department_id", "unknown_department", "no such department")
            })?;
        let fields: PrechatFields =
            serde_json::from_str(&routing.prechat_fields).unwrap_or_default();
        let prechat = validate_prechat(&fields, answers)?;
        if self
            .store
            .routing_candidates(v.tenant, department)
            .await?
            .is_empty()
        {
            return Err(AppError::Conflict("no_agent_online"));
        }
        let now = self.now();
        let id = ConversationId::from_uuid(self.new_id());
        let record = ConversationRecord {
            id,
            tenant: v.tenant,
            visitor: v.id,
            department,
            status: ConversationStatus::Queued,
            agent: None,
            offered_to: None,
            offer_expires_at: None,
            declined_by: vec![],
            prechat_ct: cipher.seal(
                &prechat_context(id),
                &serde_json::to_vec(&prechat).unwrap_or_default(),
            ),
            last_seq: 1,
            created_at: now,
            queued_at: now,
            ended_at: None,
            visitor_state: VisitorConnection::Connected,
            visitor_seen_at: now,
        };
        let started = NewEvent {
            kind: EventKind::Started,
            author: Author::Visitor.to_stored(),
            client_msg_id: None,
            data: json!({ "department_id": department }).to_string(),
            at: now,
        };
        self.store
            .create_conversation(v.tenant, &record, &started)
            .await?;
        if let Some(q) = &prechat.question {
            let e = NewEvent {
                kind: EventKind::Message,
                author: Author::Visitor.to_stored(),
                client_msg_id: Some("prechat-question".into()),
                data: "{}".into(),
                at: now,
            };
            self.append_and_publish(v.tenant, id, e, Some(q), Transition::None)
                .await?;
        }
        self.route_department(v.tenant, department).await?;
        let rec = self
            .store
            .conversation(v.tenant, id)
            .await?
            .ok_or(AppError::NotFound)?;
        if rec.status == ConversationStatus::Queued {
            self.publish_queue(v.tenant, department).await?;
        }
        let names = self.agent_names(&cipher, v.tenant).await?;
        self.conversation_view(&cipher, &rec, &names, false)
    }

    /// Load a conversation the actor may act in: the visitor's own; an agent's assigned chat
    /// (or, with `read_only`, any chat of their scope).
    async fn conversation_for(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
        read_only: bool,
    ) -> Result<ConversationRecord, AppError> {
        match actor {
            ChatActor::Visitor(v) => {
                let c = self
                    .store
                    .conversation(v.tenant, conv)
                    .await?
                    .ok_or(AppError::NotFound)?;
                if c.visitor != v.id {
                    return Err(AppError::NotFound);
                }
                Ok(c)
            }
            ChatActor::Agent(s) => {
                self.authorize(s, Permission::UseConsole, None).await?;
                let a = &s.actor;
                let c = self
                    .store
                    .conversation(a.tenant, conv)
                    .await?
                    .ok_or(AppError::NotFound)?;
                let mine = c.agent == Some(a.user) || c.offered_to == Some(a.user);
                if mine || (read_only && a.covers_department(c.department)) {
                    return Ok(c);
                }
                if a.covers_department(c.department) {
                    return Err(DomainError::new(
                        "conversation_id",
                        "not_assigned",
                        "the chat is not yours; accept it first",
                    )
                    .into());
                }
                Err(AppError::NotFound)
            }
        }
    }

    /// Send a chat message; answered once it is durably stored. A resend with the same
    /// `client_msg_id` gets the original sequence number and stores nothing new.
    pub async fn send_message(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Appended, AppError> {
        let client_id = ClientMsgId::parse(client_msg_id)?;
        let body = MessageBody::parse(body)?;
        // Who may write is checked by the store's writer in the read that allocates the sequence
        // number (the hot path makes no other read); a refusal is explained below.
        let (tenant, author, from) = match actor {
            ChatActor::Visitor(v) => (v.tenant, Author::Visitor, MessageFrom::Visitor(v.id)),
            ChatActor::Agent(s) => {
                self.authorize(s, Permission::UseConsole, None).await?;
                let a = &s.actor;
                (a.tenant, Author::Agent(a.user), MessageFrom::Agent(a.user))
            }
        };
        let e = NewEvent {
            kind: EventKind::Message,
            author: author.to_stored(),
            client_msg_id: Some(client_id.as_str().to_owned()),
            data: "{}".into(),
            at: self.now(),
        };
        let appended = self
            .append_and_publish(
                tenant,
                conv,
                e,
                Some(body.as_str()),
                Transition::Message { from },
            )
            .await;
        match appended {
            Err(AppError::NotFound) if matches!(actor, ChatActor::Agent(_)) => {
                Err(self.why_not_writable(actor, conv).await)
            }
            Err(AppError::Conflict("not_assigned")) => {
                Err(self.why_not_writable(actor, conv).await)
            }
            other => other,
        }
    }

    /// The error an agent gets for writing in a chat that is not theirs: `not_assigned` when they
    /// could see it, `not_found` otherwise (so it tells nothing about other departments' chats).
    async fn why_not_writable(&self, actor: ChatActor<'_>, conv: ConversationId) -> AppError {
        match self.conversation_for(actor, conv, false).await {
            Err(e) => e,
            Ok(_) => DomainError::new(
                "conversation_id",
                "not_assigned",
                "accept the chat before writing in it",
            )
            .into(),
        }
    }

    /// Tell the other side one is typing. A signal: published, never stored.
    pub async fn typing(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
        on: bool,
    ) -> Result<(), AppError> {
        let c = self.conversation_for(actor, conv, false).await?;
        let who = if matches!(actor, ChatActor::Visitor(_)) {
            "visitor"
        } else {
            "agent"
        };
        self.hub.publish(
            Topic::Conversation(c.tenant, conv),
            frame(&json!({ "type": "typing", "conversation_id": conv, "who": who, "on": on })),
        );
        Ok(())
    }

    /// Events after `since`, in order (for resume and transcripts).
    pub async fn events_since(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
        since: i64,
    ) -> Result<Vec<EventView>, AppError> {
        let c = self.conversation_for(actor, conv, true).await?;
        let cipher = self.keys.cipher(self.store.as_ref(), c.tenant).await?;
        let names = self.agent_names(&cipher, c.tenant).await?;
        let for_visitor = matches!(actor, ChatActor::Visitor(_));
        let mut out = vec![];
        let mut after = since.max(0);
        loop {
            let page = self.store.events(c.tenant, conv, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                out.push(event_view(&cipher, e, &names, for_visitor)?);
            }
        }
        Ok(out)
    }

    /// One conversation, with pre-chat answers for agents.
    pub async fn conversation_detail(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
    ) -> Result<ConversationView, AppError> {
        let c = self.conversation_for(actor, conv, true).await?;
        let cipher = self.keys.cipher(self.store.as_ref(), c.tenant).await?;
        let names = self.agent_names(&cipher, c.tenant).await?;
        self.conversation_view(&cipher, &c, &names, matches!(actor, ChatActor::Agent(_)))
    }

    /// End the chat: the visitor, or the assigned agent.
    pub async fn end_chat(
        &self,
        actor: ChatActor<'_>,
        conv: ConversationId,
    ) -> Result<Appended, AppError> {
        let c = self.conversation_for(actor, conv, false).await?;
        let (author, by) = match actor {
            ChatActor::Visitor(_) => (Author::Visitor, "visitor"),
            ChatActor::Agent(s) => (Author::Agent(s.actor.user), "agent"),
        };
        let e = NewEvent {
            kind: EventKind::Ended,
            author: author.to_stored(),
            client_msg_id: None,
            data: json!({ "by": by }).to_string(),
            at: self.now(),
        };
        let a = self
            .append_and_publish(c.tenant, conv, e, None, Transition::End)
            .await?;
        if let Some(agent) = c.agent {
            self.hub.publish(
                Topic::Agent(c.tenant, agent),
                frame(&json!({ "type": "chat_closed", "conversation_id": conv })),
            );
        }
        self.route_department(c.tenant, c.department).await?;
        self.publish_queue(c.tenant, c.department).await?;
        Ok(a)
    }

    /// Leave a message while nobody is online. The visitor's own department choice.
    pub async fn leave_offline_message(
        &self,
        v: Visitor,
        department: DepartmentId,
        name: &str,
        email: &str,
        message: &str,
    ) -> Result<OfflineMessageId, AppError> {
        let name =
            DisplayName::parse(name).map_err(|e| DomainError::new("name", e.code, e.message))?;
        let email = EmailAddress::parse(email)?;
        let message = MessageBody::parse(message)
            .map_err(|e| DomainError::new("message", e.code, e.message))?;
        self.ensure_department(v.tenant, department).await?;
        let cipher = self.keys.cipher(self.store.as_ref(), v.tenant).await?;
        let id = OfflineMessageId::from_uuid(self.new_id());
        let content =
            json!({ "name": name.as_str(), "email": email.as_str(), "message": message.as_str() });
        let m = OfflineMessageRecord {
            id,
            tenant: v.tenant,
            department,
            visitor: v.id,
            content_ct: cipher.seal(&offline_context(id), content.to_string().as_bytes()),
            created_at: self.now(),
            handled_at: None,
            handled_by: None,
        };
        self.store.create_offline_message(v.tenant, &m).await?;
        self.hub.publish(
            Topic::Department(v.tenant, department),
            frame(&json!({ "type": "offline_message", "department_id": department })),
        );
        Ok(id)
    }

    // ----------------------------------------------------------------------------------------
    // Agents

    /// Set one's status. Needs `UseConsole`. Going offline puts one's chats back in the queue;
    /// coming online takes queued chats of one's departments.
    pub async fn set_agent_status(&self, s: &Session, status: AgentStatus) -> Result<(), AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        self.store
            .set_agent_status(a.tenant, a.user, status, self.now())
            .await?;
        if status == AgentStatus::Offline {
            for c in self.store.conversations_of_agent(a.tenant, a.user).await? {
                let e = NewEvent {
                    kind: EventKind::Requeued,
                    author: Author::System.to_stored(),
                    client_msg_id: None,
                    data: json!({ "reason": "agent_offline" }).to_string(),
                    at: self.now(),
                };
                self.append_and_publish(
                    a.tenant,
                    c.id,
                    e,
                    None,
                    Transition::Requeue { decline: None },
                )
                .await?;
            }
        }
        for d in &a.departments {
            self.route_department(a.tenant, *d).await?;
            self.publish_queue(a.tenant, *d).await?;
        }
        Ok(())
    }

    /// The console's picture: status, own chats, offers, the queue of one's departments, and for
    /// managers the live chats of their scope. Needs `UseConsole`.
    pub async fn console_overview(&self, s: &Session) -> Result<ConsoleOverview, AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let names = self.agent_names(&cipher, a.tenant).await?;
        let presence = self.store.presence(a.tenant).await?;
        let me = presence.iter().find(|p| p.user == a.user);
        let user = self
            .store
            .user(a.tenant, a.user)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        let chats = self
            .store
            .conversations_of_agent(a.tenant, a.user)
            .await?
            .iter()
            .map(|c| self.conversation_view(&cipher, c, &names, true))
            .collect::<Result<_, _>>()?;
        let queued = self
            .store
            .conversations_by_status(a.tenant, ConversationStatus::Queued, None)
            .await?;
        let mut offers = vec![];
        let mut queue = vec![];
        for c in &queued {
            if c.offered_to == Some(a.user) {
                offers.push(self.conversation_view(&cipher, c, &names, true)?);
            } else if a.departments.contains(&c.department)
                || (a.can(Permission::SuperviseChats) && a.covers_department(c.department))
            {
                queue.push(self.conversation_view(&cipher, c, &names, true)?);
            }
        }
        let mut live = vec![];
        if a.can(Permission::SuperviseChats) {
            for c in self
                .store
                .conversations_by_status(a.tenant, ConversationStatus::Assigned, None)
                .await?
            {
                if a.covers_department(c.department) {
                    live.push(self.conversation_view(&cipher, &c, &names, true)?);
                }
            }
        }
        let mut agents = vec![];
        for u in self.store.list_users(a.tenant).await? {
            let status = presence
                .iter()
                .find(|p| p.user == u.id)
                .map_or(AgentStatus::Offline, |p| p.status);
            if u.id != a.user && !u.disabled && status != AgentStatus::Offline {
                agents.push(AgentBrief {
                    id: u.id,
                    name: names.get(&u.id).cloned().unwrap_or_default(),
                    status,
                    department_ids: u.departments,
                });
            }
        }
        Ok(ConsoleOverview {
            agents,
            status: me.map_or(AgentStatus::Offline, |p| p.status),
            capacity: user.capacity,
            chats,
            offers,
            queue,
            live,
        })
    }

    /// Take a chat: one offered to oneself, or an unoffered one waiting in one's department.
    pub async fn accept_chat(
        &self,
        s: &Session,
        conv: ConversationId,
    ) -> Result<ConversationView, AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        let c = self
            .store
            .conversation(a.tenant, conv)
            .await?
            .ok_or(AppError::NotFound)?;
        if c.offered_to != Some(a.user) && !a.departments.contains(&c.department) {
            return Err(if a.covers_department(c.department) {
                AppError::Forbidden(Permission::UseConsole)
            } else {
                AppError::NotFound
            });
        }
        let offered_elsewhere = c.offered_to.is_some_and(|o| o != a.user)
            && c.offer_expires_at.is_some_and(|t| t > self.now());
        if offered_elsewhere {
            return Err(DomainError::new(
                "conversation_id",
                "not_available",
                "the chat is offered to someone else",
            )
            .into());
        }
        let e = NewEvent {
            kind: EventKind::Assigned,
            author: Author::Agent(a.user).to_stored(),
            client_msg_id: None,
            data: json!({ "agent_id": a.user }).to_string(),
            at: self.now(),
        };
        self.append_and_publish(
            a.tenant,
            conv,
            e,
            None,
            Transition::Assign {
                agent: a.user,
                require_offer: false,
            },
        )
        .await?;
        self.after_assignment(a.tenant, conv).await
    }

    async fn after_assignment(
        &self,
        tenant: TenantId,
        conv: ConversationId,
    ) -> Result<ConversationView, AppError> {
        let c = self
            .store
            .conversation(tenant, conv)
            .await?
            .ok_or(AppError::NotFound)?;
        self.announce_assignment(tenant, &c).await
    }

    /// Tell the agent of `c`, just assigned, and the queue's listeners.
    async fn announce_assignment(
        &self,
        tenant: TenantId,
        c: &ConversationRecord,
    ) -> Result<ConversationView, AppError> {
        let cipher = self.keys.cipher(self.store.as_ref(), tenant).await?;
        let names = self.agent_names(&cipher, tenant).await?;
        let view = self.conversation_view(&cipher, c, &names, true)?;
        if let Some(agent) = c.agent {
            self.hub.publish(
                Topic::Agent(tenant, agent),
                frame(&json!({ "type": "chat_assigned", "conversation": view })),
            );
        }
        self.publish_queue(tenant, c.department).await?;
        Ok(view)
    }

    /// Turn down an offered chat; it goes to the next agent. Needs `UseConsole`.
    pub async fn reject_chat(&self, s: &Session, conv: ConversationId) -> Result<(), AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        if !self.store.decline_offer(a.tenant, conv, a.user).await? {
            return Err(DomainError::new(
                "conversation_id",
                "not_offered",
                "the chat is not offered to you",
            )
            .into());
        }
        self.route(a.tenant, conv).await
    }

    /// Hand one's chat to another agent (online, with room) or to a department's queue, with an
    /// optional note that only agents see. Needs `UseConsole` and the chat.
    pub async fn transfer_chat(
        &self,
        s: &Session,
        conv: ConversationId,
        to: TransferTarget,
        note: Option<&str>,
    ) -> Result<ConversationView, AppError> {
        let c = self
            .conversation_for(ChatActor::Agent(s), conv, false)
            .await?;
        let a = &s.actor;
        if c.agent != Some(a.user) {
            return Err(DomainError::new(
                "conversation_id",
                "not_assigned",
                "only the chat's agent can transfer it",
            )
            .into());
        }
        let note = note
            .map(MessageBody::parse)
            .transpose()
            .map_err(|e| e.map_field("note"))?;
        let (department, agent) = match to {
            TransferTarget::Agent(u) => {
                if u == a.user {
                    return Err(DomainError::new(
                        "agent_id",
                        "same_agent",
                        "the chat is already yours",
                    )
                    .into());
                }
                let target = self
                    .store
                    .user(a.tenant, u)
                    .await?
                    .filter(|t| !t.disabled)
                    .ok_or_else(|| {
                        DomainError::new("agent_id", "unknown_agent", "no such agent")
                    })?;
                let department = if target.departments.contains(&c.department) {
                    c.department
                } else {
                    *target.departments.first().ok_or_else(|| {
                        DomainError::new(
                            "agent_id",
                            "unknown_agent",
                            "that agent is in no department",
                        )
                    })?
                };
                (department, Some(u))
            }
            TransferTarget::Department(d) => {
                self.ensure_department(a.tenant, d).await?;
                (d, None)
            }
        };
        let e = NewEvent {
            kind: EventKind::Transferred,
            author: Author::Agent(a.user).to_stored(),
            client_msg_id: None,
            data:
                json!({ "from_agent_id": a.user, "agent_id": agent, "department_id": department })
                    .to_string(),
            at: self.now(),
        };
        self.append_and_publish(
            a.tenant,
            conv,
            e,
            note.as_ref().map(|n| n.as_str()),
            Transition::Transfer { department, agent },
        )
        .await?;
        self.hub.publish(
            Topic::Agent(a.tenant, a.user),
            frame(&json!({ "type": "chat_closed", "conversation_id": conv })),
        );
        let audit = self.audit_event(
            a.tenant,
            AuditActor::User(a.user),
            "conversation.transferred",
            Some(conv.to_string()),
            None,
            json!({ "agent_id": agent, "department_id": department }),
        );
        self.store.append_audit(a.tenant, &audit).await?;
        if agent.is_none() {
            self.route(a.tenant, conv).await?;
        }
        self.route_department(a.tenant, c.department).await?;
        self.after_assignment(a.tenant, conv).await
    }

    /// Past chats of one's departments (all, for site-wide roles), newest first; `query` searches
    /// the visitor's name, email and the messages. Needs `UseConsole`.
    pub async fn transcripts(
        &self,
        s: &Session,
        query: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ConversationView>, AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        let scope = a.department_scope();
        let limit = limit.clamp(1, 100);
        let query = query
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        // Bodies are encrypted: a search decrypts a bounded window of recent chats.
        let window = if query.is_some() { 500 } else { limit };
        let list = self
            .store
            .ended_conversations(
                a.tenant,
                scope,
                Timestamp(before.unwrap_or(i64::MAX)),
                window,
            )
            .await?;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let names = self.agent_names(&cipher, a.tenant).await?;
        let mut out = vec![];
        for c in &list {
            let view = self.conversation_view(&cipher, c, &names, true)?;
            let keep = match &query {
                None => true,
                Some(q) => {
                    let p = view.prechat.clone().unwrap_or_default();
                    let mut hay = format!(
                        "{} {} {}",
                        p.name.unwrap_or_default(),
                        p.email.unwrap_or_default(),
                        p.question.unwrap_or_default()
                    )
                    .to_lowercase();
                    for e in self.store.events(a.tenant, c.id, 0, 1000).await? {
                        if let (EventKind::Message, Some(ct)) = (e.kind, &e.body_ct) {
                            hay.push(' ');
                            hay.push_str(
                                &cipher
                                    .open_string(&body_context(c.id, e.seq), ct)?
                                    .to_lowercase(),
                            );
                        }
                    }
                    hay.contains(q.as_str())
                }
            };
            if keep {
                out.push(view);
                if out.len() as i64 >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Offline messages of one's departments (all, for site-wide roles). Needs `UseConsole`.
    pub async fn offline_messages(&self, s: &Session) -> Result<Vec<OfflineMessageView>, AppError> {
        self.authorize(s, Permission::UseConsole, None).await?;
        let a = &s.actor;
        let scope = a.department_scope();
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        self.store
            .offline_messages(a.tenant, scope, 200)
            .await?
            .iter()
            .map(|m| {
                let v: Value =
                    serde_json::from_slice(&cipher.open(&offline_context(m.id), &m.content_ct)?)
                        .unwrap_or_default();
                let field = |k: &str| {
                    v.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                Ok(OfflineMessageView {
                    id: m.id,
                    department_id: m.department,
                    name: field("name"),
                    email: field("email"),
                    message: field("message"),
                    created_at: m.created_at.0,
                    handled_at: m.handled_at.map(|t| t.0),
                    handled_by: m.handled_by,
                })
            })
            .collect()
    }

    /// Mark an offline message as answered. Needs `UseConsole` and the message's department.
    pub async fn handle_offline_message(
        &self,
        s: &Session,
        id: OfflineMessageId,
        ip: Option<&str>,
    ) -> Result<(), AppError> {
        self.authorize(s, Permission::UseConsole, ip).await?;
        let a = &s.actor;
        let audit = self.audit_event(
            a.tenant,
            AuditActor::User(a.user),
            "offline_message.handled",
            Some(id.to_string()),
            ip,
            json!({}),
        );
        self.store
            .mark_offline_message_handled(
                a.tenant,
                id,
                a.department_scope(),
                a.user,
                self.now(),
                &audit,
            )
            .await?;
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Routing

    /// Give one queued chat to an agent, per its department's mode: offer it (the agent accepts
    /// or it lapses) or assign it directly. Without an eligible agent it waits in the queue.
    pub async fn route(&self, tenant: TenantId, conv: ConversationId) -> Result<(), AppError> {
        for _attempt in 0..5 {
            let Some(c) = self.store.conversation(tenant, conv).await? else {
                return Ok(());
            };
            let now = self.now();
            let live_offer = c.offered_to.is_some() && c.offer_expires_at.is_some_and(|t| t > now);
            if c.status != ConversationStatus::Queued || live_offer {
                return Ok(());
            }
            let routing = self
                .store
                .department_routing(tenant)
                .await?
                .into_iter()
                .find(|r| r.department == c.department);
            let Some(routing) = routing else {
                return Ok(());
            };
            let candidates = self.store.routing_candidates(tenant, c.department).await?;
            let Some(agent) = choose_agent(&candidates, &c.declined_by) else {
                self.publish_queue(tenant, c.department).await?;
                return Ok(());
            };
            if routing.mode == "assign" {
                if self.assign(tenant, &c, agent).await? {
                    return Ok(());
                }
                // Taken by a concurrent routing pass (another chat starting, another node's
                // timer): look again.
                continue;
            }
            let expires = now.plus_millis(routing.offer_timeout_ms);
            if self.store.offer(tenant, conv, agent, now, expires).await? {
                let cipher = self.keys.cipher(self.store.as_ref(), tenant).await?;
                let names = self.agent_names(&cipher, tenant).await?;
                let c = self
                    .store
                    .conversation(tenant, conv)
                    .await?
                    .ok_or(AppError::NotFound)?;
                let view = self.conversation_view(&cipher, &c, &names, true)?;
                self.hub.publish(
                    Topic::Agent(tenant, agent),
                    frame(&json!({ "type": "offer", "conversation": view, "expires_at": expires })),
                );
                self.publish_queue(tenant, c.department).await?;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Give a waiting chat to an agent (a department that assigns). False when the store says no:
    /// the chat is no longer waiting, or the agent went offline or full in the meantime.
    async fn assign(
        &self,
        tenant: TenantId,
        c: &ConversationRecord,
        agent: UserId,
    ) -> Result<bool, AppError> {
        let e = NewEvent {
            kind: EventKind::Assigned,
            author: Author::System.to_stored(),
            client_msg_id: None,
            data: json!({ "agent_id": agent }).to_string(),
            at: self.now(),
        };
        let assign = Transition::Assign {
            agent,
            require_offer: false,
        };
        match self.append_and_publish(tenant, c.id, e, None, assign).await {
            Ok(appended) => {
                // What the store's transition made of the waiting chat; not read again.
                let assigned = ConversationRecord {
                    status: ConversationStatus::Assigned,
                    agent: Some(agent),
                    offered_to: None,
                    offer_expires_at: None,
                    last_seq: appended.seq,
                    ..c.clone()
                };
                self.announce_assignment(tenant, &assigned).await?;
                Ok(true)
            }
            Err(AppError::Invalid(d))
                if d.code == "agent_unavailable" || d.code == "not_available" =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Route every waiting chat of a department, oldest first, while agents have room.
    ///
    /// Walks are coalesced per department on this node: while one runs, callers only ask for
    /// another round and return; the running walk goes round again before it stops, so every
    /// chat queued before a call is considered after it. (Without this, many chats starting at
    /// once each walked the same queue and raced each other for the same chats.)
    pub async fn route_department(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> Result<(), AppError> {
        let pass = self
            .routing_passes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant, department))
            .or_default()
            .clone();
        pass.again.store(true, Ordering::SeqCst);
        loop {
            let Ok(_walking) = pass.walking.try_lock() else {
                return Ok(());
            };
            if !pass.again.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            self.walk_queue(tenant, department).await?;
        }
    }

    /// One walk of a department's queue. A department that assigns is served in rounds: one read
    /// of the agents and the queue, a plan for as many chats as there are free slots
    /// (`plan_round`), and all of the round's assignments sent to the writer together, so that
    /// they share its commits (one at a time, a queue of thousands drained at a few dozen chats
    /// a second). The writer still checks each against the agent's capacity; a round that lost
    /// every race to another node ends the walk (the next change starts another).
    async fn walk_queue(&self, tenant: TenantId, department: DepartmentId) -> Result<(), AppError> {
        let assigns = self
            .store
            .department_routing(tenant)
            .await?
            .into_iter()
            .find(|r| r.department == department)
            .is_some_and(|r| r.mode == "assign");
        if !assigns {
            return self.walk_offers(tenant, department).await;
        }
        loop {
            let candidates = self.store.routing_candidates(tenant, department).await?;
            if candidates.iter().all(|k| k.active_chats >= k.capacity) {
                break;
            }
            let queued = self
                .store
                .conversations_by_status(tenant, ConversationStatus::Queued, Some(department))
                .await?;
            let now = self.now();
            let waiting: Vec<(ConversationId, &[UserId])> = queued
                .iter()
                .filter(|c| {
                    !(c.offered_to.is_some() && c.offer_expires_at.is_some_and(|t| t > now))
                })
                .map(|c| (c.id, c.declined_by.as_slice()))
                .collect();
            let plan = plan_round(&candidates, &waiting, now);
            if plan.is_empty() {
                break;
            }
            // Every waiting chat has an agent in this round: once they all take, the walk is
            // done (a chat queued since the read asks for another walk itself).
            let whole_queue = plan.len() == waiting.len();
            let planned = plan.len();
            let by_id: HashMap<ConversationId, &ConversationRecord> =
                queued.iter().map(|c| (c.id, c)).collect();
            let mut round = tokio::task::JoinSet::new();
            for (conv, agent) in plan {
                let Some(c) = by_id.get(&conv).map(|c| (*c).clone()) else {
                    continue;
                };
                let app = self.clone();
                round.spawn(async move { app.assign(tenant, &c, agent).await });
            }
            // Every assignment of the round is seen through (dropping the set would abort the
            // others between their commit and their frames); the first failure is reported.
            let (mut assigned, mut failed) = (0, None);
            while let Some(done) = round.join_next().await {
                let outcome =
                    done.unwrap_or_else(|e| Err(AppError::Internal(format!("routing task: {e}"))));
                match outcome {
                    Ok(true) => assigned += 1,
                    Ok(false) => {}
                    Err(e) if failed.is_none() => failed = Some(e),
                    Err(_) => {}
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if assigned == 0 || (whole_queue && assigned == planned) {
                break;
            }
        }
        Ok(())
    }

    /// Offer waiting chats one after another while agents have room.
    async fn walk_offers(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> Result<(), AppError> {
        for c in self
            .store
            .conversations_by_status(tenant, ConversationStatus::Queued, Some(department))
            .await?
        {
            if self
                .store
                .routing_candidates(tenant, department)
                .await?
                .iter()
                .all(|k| k.active_chats >= k.capacity)
            {
                break;
            }
            self.route(tenant, c.id).await?;
        }
        Ok(())
    }

    /// Tell each waiting visitor of a department their place and an estimated wait, and the
    /// department's consoles that the queue changed, within `QUEUE_UPDATE_AFTER`. Updates are
    /// coalesced per department into rounds, and a round sends a visitor a frame only when their
    /// place or wait changed: a queue of N chats costs at most N frames per round, not N per chat
    /// that joins or leaves it (which made a long queue quadratic), and rounds that send many
    /// frames are spaced out (`QUEUE_FRAME_COST`).
    pub async fn publish_queue(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> Result<(), AppError> {
        let key = (tenant, department);
        let start = {
            let mut q = self.queue_updates.lock().unwrap_or_else(|p| p.into_inner());
            q.due.insert(key).then(|| q.not_before.get(&key).copied())
        };
        if let Some(not_before) = start {
            let app = self.clone();
            let at = tokio::time::Instant::now() + QUEUE_UPDATE_AFTER;
            tokio::spawn(async move {
                tokio::time::sleep_until(not_before.map_or(at, |n| n.max(at))).await;
                // Taken off before publishing: a change while this round runs asks for another.
                app.queue_updates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .due
                    .remove(&key);
                if let Err(e) = app.publish_queue_now(tenant, department).await {
                    tracing::warn!(error = %e, "publishing queue positions failed");
                }
            });
        }
        Ok(())
    }

    /// A visitor's socket resumed a conversation: if it is waiting, its place is sent again in
    /// the next round (the new socket has not heard it). A round already running as the socket
    /// subscribed may have told it as well, so a resumed socket can hear the same place twice;
    /// the widget shows the latest place, so a repeat changes nothing on screen.
    pub async fn resend_queue_place(
        &self,
        tenant: TenantId,
        conv: ConversationId,
    ) -> Result<(), AppError> {
        let Some(c) = self.store.conversation(tenant, conv).await? else {
            return Ok(());
        };
        if c.status != ConversationStatus::Queued {
            return Ok(());
        }
        if let Some(told) = self
            .queue_updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .told
            .get_mut(&(tenant, c.department))
        {
            told.remove(&conv);
        }
        self.publish_queue(tenant, c.department).await
    }

    async fn publish_queue_now(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> Result<(), AppError> {
        let queued = self
            .store
            .conversations_by_status(tenant, ConversationStatus::Queued, Some(department))
            .await?;
        let agents = self
            .store
            .routing_candidates(tenant, department)
            .await?
            .len()
            .max(1) as i64;
        let now_told: HashMap<ConversationId, (i64, i64)> = queued
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let position = i as i64 + 1;
                // A rough estimate: a minute per chat ahead, spread over the online agents.
                (c.id, (position, (position - 1) / agents * 60 + 30))
            })
            .collect();
        let key = (tenant, department);
        let before = {
            let mut q = self.queue_updates.lock().unwrap_or_else(|p| p.into_inner());
            if now_told.is_empty() {
                q.not_before.remove(&key);
                q.told.remove(&key)
            } else {
                q.told.insert(key, now_told.clone())
            }
        }
        .unwrap_or_default();
        let mut sent = 0u32;
        for c in &queued {
            let (position, wait) = now_told[&c.id];
            if before.get(&c.id) == Some(&(position, wait)) {
                continue;
            }
            sent += 1;
            self.hub.publish(
                Topic::Conversation(tenant, c.id),
                frame(&json!({ "type": "queue", "conversation_id": c.id, "position": position, "estimated_wait_secs": wait })),
            );
        }
        if sent > 0 {
            self.queue_updates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .not_before
                .insert(key, tokio::time::Instant::now() + QUEUE_FRAME_COST * sent);
        }
        self.hub.publish(Topic::Department(tenant, department), frame(&json!({ "type": "queue_changed", "department_id": department, "waiting": queued.len() })));
        Ok(())
    }

    /// Withdraw lapsed offers and route those chats on. Run by every node's timer; the store
    /// decides which node wins each offer.
    pub async fn expire_offers(&self) -> Result<usize, AppError> {
        let lapsed = self.store.lapsed_offers(self.now()).await?;
        let mut n = 0;
        for (tenant, conv, agent) in lapsed {
            if self.store.decline_offer(tenant, conv, agent).await? {
                n += 1;
                self.hub.publish(
                    Topic::Agent(tenant, agent),
                    frame(&json!({ "type": "offer_withdrawn", "conversation_id": conv })),
                );
                self.route(tenant, conv).await?;
            }
        }
        Ok(n)
    }
}

impl App {
    /// The visitor of `conv` was heard from (a heartbeat or any frame). A weak or lost visitor
    /// coming back is an event the agent sees.
    pub async fn visitor_alive(&self, v: Visitor, conv: ConversationId) -> Result<(), AppError> {
        // Only the visitor's own open conversation: the store's writer checks both.
        let Some(before) = self
            .store
            .touch_visitor(v.tenant, conv, v.id, self.now())
            .await?
        else {
            return Ok(());
        };
        if before == VisitorConnection::Connected {
            return Ok(());
        }
        let e = NewEvent {
            kind: EventKind::Connection,
            author: Author::System.to_stored(),
            client_msg_id: None,
            data: json!({ "state": "restored" }).to_string(),
            at: self.now(),
        };
        match self
            .append_and_publish(
                v.tenant,
                conv,
                e,
                None,
                Transition::VisitorState {
                    from: before,
                    to: VisitorConnection::Connected,
                },
            )
            .await
        {
            Ok(_) | Err(AppError::Conflict("state_changed")) => Ok(()),
            Err(AppError::Invalid(d)) if d.code == "conversation_ended" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Move silent visitors to weak, then lost, and end the chats of those gone past the tenant's
    /// timeout. Run by every node's timer; the conditional state change lets one node win.
    pub async fn check_connections(&self) -> Result<usize, AppError> {
        let now = self.now();
        let mut changed = 0;
        for s in self.store.silent_visitors(now).await? {
            let target = s.periods.state_at(s.seen_at, now);
            let (event, transition) = match target {
                None => (
                    json!({ "by": "system", "reason": "visitor_timeout" }),
                    Transition::End,
                ),
                Some(to) if to != s.state && to != VisitorConnection::Connected => (
                    json!({ "state": to.as_str() }),
                    Transition::VisitorState { from: s.state, to },
                ),
                _ => continue,
            };
            let kind = if matches!(transition, Transition::End) {
                EventKind::Ended
            } else {
                EventKind::Connection
            };
            let e = NewEvent {
                kind,
                author: Author::System.to_stored(),
                client_msg_id: None,
                data: event.to_string(),
                at: now,
            };
            let c = self.store.conversation(s.tenant, s.conversation).await?;
            match self
                .append_and_publish(s.tenant, s.conversation, e, None, transition)
                .await
            {
                Ok(_) => {
                    changed += 1;
                    if let Some(c) = c.filter(|_| target.is_none()) {
                        if let Some(agent) = c.agent {
                            self.hub.publish(
                                Topic::Agent(c.tenant, agent),
                                frame(&json!({ "type": "chat_closed", "conversation_id": c.id })),
                            );
                        }
                        self.route_department(c.tenant, c.department).await?;
                        self.publish_queue(c.tenant, c.department).await?;
                    }
                }
                Err(AppError::Conflict("state_changed")) => {}
                Err(AppError::Invalid(d)) if d.code == "conversation_ended" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }
}

fn validate_prechat(fields: &PrechatFields, answers: Prechat) -> Result<Prechat, AppError> {
    fn rule(
        rule: FieldRule,
        field: &'static str,
        value: Option<String>,
    ) -> Result<Option<String>, DomainError> {
        let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        match (rule, value) {
            (FieldRule::Hidden, _) => Ok(None),
            (FieldRule::Required, None) => {
                Err(DomainError::new(field, "required", "must not be empty"))
            }
            (_, v) => Ok(v),
        }
    }
    let name = rule(fields.name, "name", answers.name)?
        .map(|n| {
            DisplayName::parse(&n)
                .map(|d| d.as_str().to_owned())
                .map_err(|e| e.map_field("name"))
        })
        .transpose()?;
    let email = rule(fields.email, "email", answers.email)?
        .map(|e| EmailAddress::parse(&e).map(|e| e.as_str().to_owned()))
        .transpose()?;
    let question = rule(fields.question, "question", answers.question)?
        .map(|q| {
            MessageBody::parse(&q)
                .map(|b| b.as_str().to_owned())
                .map_err(|e| e.map_field("question"))
        })
        .transpose()?;
    Ok(Prechat {
        name,
        email,
        question,
    })
}

fn event_view(
    cipher: &TenantCipher,
    e: &EventRecord,
    names: &HashMap<UserId, String>,
    for_visitor: bool,
) -> Result<EventView, AppError> {
    let author = Author::parse(&e.author).unwrap_or(Author::System);
    let (author_kind, agent_id) = match author {
        Author::Visitor => ("visitor", None),
        Author::Agent(id) => ("agent", Some(id)),
        Author::System => ("system", None),
    };
    // Transfer notes are for agents only.
    let hide_body = for_visitor && e.kind == EventKind::Transferred;
    let body = match (&e.body_ct, hide_body) {
        (Some(ct), false) => Some(cipher.open_string(&body_context(e.conversation, e.seq), ct)?),
        _ => None,
    };
    let mut data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
    if let Some(a) = data
        .get("agent_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<UserId>().ok())
    {
        data["agent_name"] = json!(names.get(&a));
    }
    Ok(EventView {
        conversation_id: e.conversation,
        seq: e.seq,
        kind: e.kind,
        at: e.at.0,
        author: author_kind,
        agent_id,
        agent_name: agent_id.and_then(|a| names.get(&a).cloned()),
        body,
        client_msg_id: e.client_msg_id.clone(),
        data,
    })
}

fn publish_event(hub: &Hub, tenant: TenantId, view: &EventView) {
    /// The live form of an event: its view with `"type": "event"`, written straight to text
    /// (through a `Value` it cost three times as many instructions, a tenth of a message's).
    #[derive(Serialize)]
    struct EventFrame<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        event: &'a EventView,
    }
    let f = EventFrame {
        r#type: "event",
        event: view,
    };
    match serde_json::to_string(&f) {
        Ok(text) => hub.publish(
            Topic::Conversation(tenant, view.conversation_id),
            Arc::from(text),
        ),
        Err(e) => tracing::warn!(error = %e, "an event frame could not be written"),
    }
}
