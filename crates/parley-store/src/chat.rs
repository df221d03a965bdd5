//! `ChatStore` for `SqlStore`: visitors, conversations and their event logs, presence, routing,
//! offline messages. Every state change and its event commit together; sequence numbers are
//! allocated inside the transaction, so they are gapless per conversation.

use crate::SqlStore;
use crate::sql::{Backend, Tx, append_audit_tx, corrupt, db, db_write, flag, id, lock};
use crate::sqlite_arrivals::Arrivals;
use parley_core::audit::AuditEvent;
use parley_core::conversation::{
    AgentStatus, ConnectionPeriods, ConversationStatus, EventKind, VisitorConnection,
};
use parley_core::routing::Candidate;
use parley_core::store::MessageFrom;
use parley_core::store::{
    Appended, ChatStore, ConversationRecord, DepartmentRouting, EventRecord, NewEvent,
    OfflineMessageRecord, OnCommit, PresenceRecord, Sealer, SilentVisitor, StoreError, StoreResult,
    Transition, VisitorRecord,
};
use parley_core::{
    ConversationId, DepartmentId, OfflineMessageId, TenantId, Timestamp, UserId, VisitorId,
};
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// A conversation's columns, as `conversation_row` reads them, with `last_seq` from `$last_seq`.
macro_rules! conversation_columns {
    ($last_seq:expr) => {
        concat!(
            "tenant_id, id, visitor_id, department_id, status, agent_id, offered_to, \
             offer_expires_at, declined_by, prechat_ct, ",
            $last_seq,
            ", created_at, queued_at, ended_at, visitor_state, visitor_seen_at"
        )
    };
}

/// The last sequence number of chat `c`. PostgreSQL keeps it in the chat's row: allocating the
/// next one there takes the row lock that orders the writers of several nodes. SQLite, with one
/// writer holding the database's write lock, reads it from the chat's log (the last entry of the
/// log's primary key, one B-tree descent), so that a plain message writes its event and nothing
/// else: updating the chat's row too cost 8% of the server's CPU per message (docs/BENCHMARKS.md).
/// Its `conversations` table has no `last_seq` column (migration 4).
macro_rules! sqlite_last_seq {
    () => {
        "(SELECT COALESCE(MAX(log.seq), 0) FROM conversation_events log \
         WHERE log.tenant_id = c.tenant_id AND log.conversation_id = c.id)"
    };
}

/// SQLite: the rest of the read of a chat `c` (`$1`, `$2`) that finds an earlier copy of the
/// message with client id `$3` as `dup_seq` and `dup_at`, in the chat's log or in the arrivals file
/// (see `sqlite_arrivals`), where a row merged but not yet emptied away is the same copy.
macro_rules! sqlite_earlier_copy {
    () => {
        "COALESCE(e.seq, a0.seq, a1.seq) AS dup_seq, COALESCE(e.at, a0.at, a1.at) AS dup_at \
         FROM main.conversations c LEFT JOIN main.conversation_events e \
         ON e.client_msg_id = $3 AND e.tenant_id = c.tenant_id AND e.conversation_id = c.id \
         LEFT JOIN arrivals.events_0 a0 \
         ON a0.client_msg_id = $3 AND a0.tenant_id = c.tenant_id AND a0.conversation_id = c.id \
         LEFT JOIN arrivals.events_1 a1 \
         ON a1.client_msg_id = $3 AND a1.tenant_id = c.tenant_id AND a1.conversation_id = c.id \
         WHERE c.tenant_id = $1 AND c.id = $2"
    };
}

/// The columns of `conversations c` for each backend, as `conversation_row` reads them.
fn conversation_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => conversation_columns!("last_seq"),
        Backend::Sqlite => conversation_columns!(concat!(sqlite_last_seq!(), " AS last_seq")),
    }
}

fn opt_id<T: std::str::FromStr>(r: &AnyRow, col: &str) -> StoreResult<Option<T>> {
    let s: Option<String> = r.try_get(col).map_err(db)?;
    s.map(|s| s.parse().map_err(|_| corrupt(col))).transpose()
}

fn ids_json(ids: &[UserId]) -> String {
    serde_json::to_string(&ids.iter().map(|i| i.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

fn conversation_row(r: &AnyRow) -> StoreResult<ConversationRecord> {
    let status: String = r.try_get("status").map_err(db)?;
    let declined: String = r.try_get("declined_by").map_err(db)?;
    let declined: Vec<String> =
        serde_json::from_str(&declined).map_err(|_| corrupt("declined_by"))?;
    Ok(ConversationRecord {
        id: id(r, "id")?,
        tenant: id(r, "tenant_id")?,
        visitor: id(r, "visitor_id")?,
        department: id(r, "department_id")?,
        status: ConversationStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        agent: opt_id(r, "agent_id")?,
        offered_to: opt_id(r, "offered_to")?,
        offer_expires_at: r
            .try_get::<Option<i64>, _>("offer_expires_at")
            .map_err(db)?
            .map(Timestamp),
        declined_by: declined
            .iter()
            .map(|s| s.parse().map_err(|_| corrupt("declined_by")))
            .collect::<StoreResult<_>>()?,
        prechat_ct: r.try_get("prechat_ct").map_err(db)?,
        last_seq: r.try_get("last_seq").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        queued_at: Timestamp(r.try_get("queued_at").map_err(db)?),
        ended_at: r
            .try_get::<Option<i64>, _>("ended_at")
            .map_err(db)?
            .map(Timestamp),
        visitor_state: VisitorConnection::parse(
            &r.try_get::<String, _>("visitor_state").map_err(db)?,
        )
        .ok_or_else(|| corrupt("visitor_state"))?,
        visitor_seen_at: Timestamp(r.try_get("visitor_seen_at").map_err(db)?),
    })
}

fn event_row(r: &AnyRow) -> StoreResult<EventRecord> {
    let kind: String = r.try_get("kind").map_err(db)?;
    Ok(EventRecord {
        conversation: id(r, "conversation_id")?,
        seq: r.try_get("seq").map_err(db)?,
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
        at: Timestamp(r.try_get("at").map_err(db)?),
        author: r.try_get("author").map_err(db)?,
        client_msg_id: r.try_get("client_msg_id").map_err(db)?,
        body_ct: r.try_get("body_ct").map_err(db)?,
        data: r.try_get("data").map_err(db)?,
    })
}

fn offline_row(r: &AnyRow) -> StoreResult<OfflineMessageRecord> {
    Ok(OfflineMessageRecord {
        id: id(r, "id")?,
        tenant: id(r, "tenant_id")?,
        department: id(r, "department_id")?,
        visitor: id(r, "visitor_id")?,
        content_ct: r.try_get("content_ct").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        handled_at: r
            .try_get::<Option<i64>, _>("handled_at")
            .map_err(db)?
            .map(Timestamp),
        handled_by: opt_id(r, "handled_by")?,
    })
}

/// `$start, $start+1, …` for an IN list of `n` values.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Take one chat slot of an online, enabled agent below capacity (counting open offers to others
/// as not theirs). False when there is no slot.
async fn take_slot(
    tx: &mut Tx<'_>,
    tenant: TenantId,
    agent: UserId,
    now: Timestamp,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE agent_presence SET active_chats = active_chats + 1, idle_since = $1, updated_at = $2 \
         WHERE tenant_id = $3 AND user_id = $4 AND status = 'online' \
         AND active_chats < (SELECT capacity FROM users WHERE tenant_id = $5 AND id = $6 AND disabled = 0)",
    )
    .bind(now.0)
    .bind(now.0)
    .bind(tenant.to_string())
    .bind(agent.to_string())
    .bind(tenant.to_string())
    .bind(agent.to_string())
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(r.rows_affected() == 1)
}

async fn release_slot(
    tx: &mut Tx<'_>,
    tenant: TenantId,
    agent: UserId,
    now: Timestamp,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE agent_presence SET active_chats = active_chats - 1, updated_at = $1 \
         WHERE tenant_id = $2 AND user_id = $3 AND active_chats > 0",
    )
    .bind(now.0)
    .bind(tenant.to_string())
    .bind(agent.to_string())
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait::async_trait]
impl ChatStore for SqlStore {
    async fn create_visitor(&self, tenant: TenantId, v: &VisitorRecord) -> StoreResult<()> {
        if v.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let _gate = self.gate().await;
        sqlx::query("INSERT INTO visitors (tenant_id, id, token_hash, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(tenant.to_string())
            .bind(v.id.to_string())
            .bind(v.token_hash.clone())
            .bind(v.created_at.0)
            .bind(v.last_seen_at.0)
            .execute(&self.pool)
            .await
            .map_err(|e| db_write(e, "visitor"))?;
        Ok(())
    }

    async fn visitor_by_token(&self, token_hash: &[u8]) -> StoreResult<Option<VisitorRecord>> {
        let row = sqlx::query("SELECT tenant_id, id, token_hash, created_at, last_seen_at FROM visitors WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| {
            Ok(VisitorRecord {
                id: id(&r, "id")?,
                tenant: id(&r, "tenant_id")?,
                token_hash: r.try_get("token_hash").map_err(db)?,
                created_at: Timestamp(r.try_get("created_at").map_err(db)?),
                last_seen_at: Timestamp(r.try_get("last_seen_at").map_err(db)?),
            })
        })
        .transpose()
    }

    async fn department_routing(&self, tenant: TenantId) -> StoreResult<Vec<DepartmentRouting>> {
        sqlx::query("SELECT id, routing_mode, offer_timeout_ms, prechat_fields FROM departments WHERE tenant_id = $1 ORDER BY name_key, id")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(DepartmentRouting {
                    department: id(r, "id")?,
                    mode: r.try_get("routing_mode").map_err(db)?,
                    offer_timeout_ms: r.try_get("offer_timeout_ms").map_err(db)?,
                    prechat_fields: r.try_get("prechat_fields").map_err(db)?,
                })
            })
            .collect()
    }

    async fn set_department_routing(
        &self,
        tenant: TenantId,
        d: &DepartmentRouting,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("UPDATE departments SET routing_mode = $1, offer_timeout_ms = $2, prechat_fields = $3 WHERE tenant_id = $4 AND id = $5")
            .bind(d.mode.clone())
            .bind(d.offer_timeout_ms)
            .bind(d.prechat_fields.clone())
            .bind(tenant.to_string())
            .bind(d.department.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn create_conversation(
        &self,
        tenant: TenantId,
        c: &ConversationRecord,
        started: &NewEvent,
    ) -> StoreResult<()> {
        if c.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.begin_write().await?;
        // The log starts with the `started` event, seq 1 (on SQLite the log is the counter).
        let (counter, first) = match self.backend {
            Backend::Postgres => (", last_seq", ", 1"),
            Backend::Sqlite => ("", ""),
        };
        sqlx::query(&format!(
            "INSERT INTO conversations (tenant_id, id, visitor_id, department_id, status, agent_id, \
             offered_to, offer_expires_at, declined_by, prechat_ct, created_at, queued_at, ended_at, \
             visitor_state, visitor_seen_at{counter}) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, $6, $7, $8, $9, NULL, 'connected', $10{first})"
        ))
        .bind(tenant.to_string())
        .bind(c.id.to_string())
        .bind(c.visitor.to_string())
        .bind(c.department.to_string())
        .bind(ConversationStatus::Queued.as_str())
        .bind(ids_json(&[]))
        .bind(c.prechat_ct.clone())
        .bind(c.created_at.0)
        .bind(c.queued_at.0)
        .bind(c.created_at.0)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_write(e, "conversation"))?;
        insert_event(&mut tx, tenant, c.id, 1, started, None).await?;
        tx.commit().await.map_err(db)
    }

    async fn conversation(
        &self,
        tenant: TenantId,
        cid: ConversationId,
    ) -> StoreResult<Option<ConversationRecord>> {
        let sql = format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND id = $2",
            cols = conversation_columns(self.backend)
        );
        let found = self
            .conversation_records(|| {
                sqlx::query(&sql)
                    .bind(tenant.to_string())
                    .bind(cid.to_string())
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn open_conversation_of_visitor(
        &self,
        tenant: TenantId,
        visitor: parley_core::VisitorId,
    ) -> StoreResult<Option<ConversationRecord>> {
        let sql = format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND visitor_id = $2 AND status <> 'ended' \
             ORDER BY created_at DESC LIMIT 1",
            cols = conversation_columns(self.backend)
        );
        let found = self
            .conversation_records(|| {
                sqlx::query(&sql)
                    .bind(tenant.to_string())
                    .bind(visitor.to_string())
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn conversations_by_status(
        &self,
        tenant: TenantId,
        status: ConversationStatus,
        department: Option<DepartmentId>,
    ) -> StoreResult<Vec<ConversationRecord>> {
        let in_department = if department.is_some() {
            "AND department_id = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND status = $2 {in_department} \
             ORDER BY queued_at, id",
            cols = conversation_columns(self.backend)
        );
        self.conversation_records(|| {
            let q = sqlx::query(&sql)
                .bind(tenant.to_string())
                .bind(status.as_str());
            match department {
                Some(d) => q.bind(d.to_string()),
                None => q,
            }
            .fetch_all(&self.pool)
        })
        .await
    }

    async fn conversations_of_agent(
        &self,
        tenant: TenantId,
        agent: UserId,
    ) -> StoreResult<Vec<ConversationRecord>> {
        let sql = format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND agent_id = $2 AND status = 'assigned' ORDER BY queued_at, id",
            cols = conversation_columns(self.backend)
        );
        self.conversation_records(|| {
            sqlx::query(&sql)
                .bind(tenant.to_string())
                .bind(agent.to_string())
                .fetch_all(&self.pool)
        })
        .await
    }

    async fn ended_conversations(
        &self,
        tenant: TenantId,
        departments: Option<&[DepartmentId]>,
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<ConversationRecord>> {
        let filter = match departments {
            Some([]) => return Ok(vec![]),
            Some(d) => format!("AND department_id IN ({})", placeholders(4, d.len())),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND status = 'ended' AND ended_at < $2 {filter} \
             ORDER BY ended_at DESC, id LIMIT $3",
            cols = conversation_columns(self.backend)
        );
        self.conversation_records(|| {
            let mut q = sqlx::query(&sql)
                .bind(tenant.to_string())
                .bind(before.0)
                .bind(limit);
            for d in departments.unwrap_or_default() {
                q = q.bind(d.to_string());
            }
            q.fetch_all(&self.pool)
        })
        .await
    }

    async fn append_event_then(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        event: &NewEvent,
        body: Option<Sealer>,
        transition: &Transition,
        on_commit: Option<OnCommit>,
    ) -> StoreResult<Appended> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            tenant,
            conversation: cid,
            event: event.clone(),
            body,
            transition: transition.clone(),
            on_commit,
            reply,
        };
        self.write(Write::Append(request), answer).await
    }

    async fn events(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut events = self.read_events(tenant, cid, after_seq, limit).await?;
        if self.arrivals.is_none() {
            return Ok(events);
        }
        // SQLite: a chat's log is gapless, but a read can catch a row of the arrivals file
        // committed after its snapshot of that file, with a later event of the same chat that
        // went straight into the main file (a state change) before its snapshot of the main
        // file. Read again; should the gap still be there, give the whole part before it, and
        // the reader asks again from its end.
        let first = after_seq.max(0).saturating_add(1);
        let whole = |events: &[EventRecord]| {
            events
                .iter()
                .zip(first..)
                .take_while(|(e, seq)| e.seq == *seq)
                .count()
        };
        for _ in 0..GAP_READS {
            if whole(&events) == events.len() {
                return Ok(events);
            }
            events = self.read_events(tenant, cid, after_seq, limit).await?;
        }
        events.truncate(whole(&events));
        Ok(events)
    }

    async fn offer(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        agent: UserId,
        now: Timestamp,
        expires: Timestamp,
    ) -> StoreResult<bool> {
        let _gate = self.gate().await;
        let r = sqlx::query(
            "UPDATE conversations SET offered_to = $1, offer_expires_at = $2 WHERE tenant_id = $3 AND id = $4 AND status = 'queued' \
             AND (offered_to IS NULL OR offer_expires_at < $5)",
        )
        .bind(agent.to_string())
        .bind(expires.0)
        .bind(tenant.to_string())
        .bind(cid.to_string())
        .bind(now.0)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(r.rows_affected() == 1)
    }

    async fn decline_offer(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        agent: UserId,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {cols} FROM conversations c WHERE tenant_id = $1 AND id = $2 AND status = 'queued' AND offered_to = $3",
            cols = conversation_columns(self.backend)
        ))
        .bind(tenant.to_string())
        .bind(cid.to_string())
        .bind(agent.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(false) };
        let mut declined = conversation_row(&row)?.declined_by;
        if !declined.contains(&agent) {
            declined.push(agent);
        }
        sqlx::query("UPDATE conversations SET offered_to = NULL, offer_expires_at = NULL, declined_by = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(ids_json(&declined))
            .bind(tenant.to_string())
            .bind(cid.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn lapsed_offers(
        &self,
        now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, ConversationId, UserId)>> {
        sqlx::query("SELECT tenant_id, id, offered_to FROM conversations WHERE offer_expires_at < $1 AND status = 'queued' AND offered_to IS NOT NULL")
            .bind(now.0)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((id(r, "tenant_id")?, id(r, "id")?, id(r, "offered_to")?)))
            .collect()
    }

    async fn touch_visitor(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        visitor: VisitorId,
        now: Timestamp,
    ) -> StoreResult<Option<VisitorConnection>> {
        let (reply, answer) = oneshot::channel();
        let request = TouchRequest {
            tenant,
            conversation: cid,
            visitor,
            now,
            reply,
        };
        self.write(Write::Touch(request), answer).await
    }

    async fn silent_visitors(&self, now: Timestamp) -> StoreResult<Vec<SilentVisitor>> {
        loop {
            let epoch = self.arrivals.as_ref().map(|a| a.epoch());
            let rows = sqlx::query(
                "SELECT c.tenant_id, c.id, c.visitor_id, c.visitor_state, c.visitor_seen_at, t.visitor_weak_after_ms, t.visitor_lost_after_ms, \
                 t.visitor_timeout_ms FROM conversations c JOIN tenants t ON t.id = c.tenant_id \
                 WHERE c.status <> 'ended' AND c.visitor_seen_at + t.visitor_weak_after_ms <= $1",
            )
            .bind(now.0)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let mut found = Vec::with_capacity(rows.len());
            for r in &rows {
                let state =
                    VisitorConnection::parse(&r.try_get::<String, _>("visitor_state").map_err(db)?)
                        .ok_or_else(|| corrupt("visitor_state"))?;
                let visitor: VisitorId = id(r, "visitor_id")?;
                let silent = SilentVisitor {
                    tenant: id(r, "tenant_id")?,
                    conversation: id(r, "id")?,
                    state,
                    seen_at: Timestamp(r.try_get("visitor_seen_at").map_err(db)?),
                    periods: ConnectionPeriods {
                        weak_after_ms: r.try_get("visitor_weak_after_ms").map_err(db)?,
                        lost_after_ms: r.try_get("visitor_lost_after_ms").map_err(db)?,
                        timeout_ms: r.try_get("visitor_timeout_ms").map_err(db)?,
                    },
                };
                found.push((silent, visitor));
            }
            let (Some(arrivals), Some(epoch)) = (&self.arrivals, epoch) else {
                return Ok(found.into_iter().map(|(s, _)| s).collect());
            };
            // A heartbeat not merged yet may show the visitor is not silent after all.
            let folded = arrivals.fold(epoch, |view| {
                found
                    .into_iter()
                    .map(|(mut s, visitor)| {
                        s.seen_at =
                            view.seen_at(s.tenant, s.conversation, visitor, s.state, s.seen_at);
                        s
                    })
                    .filter(|s| s.seen_at.0.saturating_add(s.periods.weak_after_ms) <= now.0)
                    .collect::<Vec<_>>()
            });
            if let Some(silent) = folded {
                return Ok(silent);
            }
        }
    }

    async fn connection_periods(&self, tenant: TenantId) -> StoreResult<ConnectionPeriods> {
        let r = sqlx::query("SELECT visitor_weak_after_ms, visitor_lost_after_ms, visitor_timeout_ms FROM tenants WHERE id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        Ok(ConnectionPeriods {
            weak_after_ms: r.try_get("visitor_weak_after_ms").map_err(db)?,
            lost_after_ms: r.try_get("visitor_lost_after_ms").map_err(db)?,
            timeout_ms: r.try_get("visitor_timeout_ms").map_err(db)?,
        })
    }

    async fn set_connection_periods(
        &self,
        tenant: TenantId,
        p: &ConnectionPeriods,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("UPDATE tenants SET visitor_weak_after_ms = $1, visitor_lost_after_ms = $2, visitor_timeout_ms = $3 WHERE id = $4")
            .bind(p.weak_after_ms)
            .bind(p.lost_after_ms)
            .bind(p.timeout_ms)
            .bind(tenant.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn set_agent_status(
        &self,
        tenant: TenantId,
        user: UserId,
        status: AgentStatus,
        now: Timestamp,
    ) -> StoreResult<()> {
        let _gate = self.gate().await;
        sqlx::query(
            "INSERT INTO agent_presence (tenant_id, user_id, status, active_chats, idle_since, updated_at) VALUES ($1, $2, $3, 0, $4, $5) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, \
             idle_since = CASE WHEN agent_presence.status <> 'online' AND excluded.status = 'online' THEN excluded.idle_since \
             ELSE agent_presence.idle_since END",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(status.as_str())
        .bind(now.0)
        .bind(now.0)
        .execute(&self.pool)
        .await
        .map_err(|e| db_write(e, "presence"))?;
        Ok(())
    }

    async fn presence(&self, tenant: TenantId) -> StoreResult<Vec<PresenceRecord>> {
        sqlx::query("SELECT user_id, status, active_chats, idle_since FROM agent_presence WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(db)?;
                Ok(PresenceRecord {
                    user: id(r, "user_id")?,
                    status: AgentStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
                    active_chats: r.try_get("active_chats").map_err(db)?,
                    idle_since: Timestamp(r.try_get("idle_since").map_err(db)?),
                })
            })
            .collect()
    }

    async fn routing_candidates(
        &self,
        tenant: TenantId,
        department: DepartmentId,
    ) -> StoreResult<Vec<Candidate>> {
        // Open offers count as load, so one free slot is never offered twice at once.
        sqlx::query(
            "SELECT p.user_id, u.capacity, p.active_chats + (SELECT COUNT(*) FROM conversations c WHERE c.tenant_id = p.tenant_id \
               AND c.offered_to = p.user_id AND c.status = 'queued') AS load, p.idle_since \
             FROM agent_presence p \
             JOIN users u ON u.tenant_id = p.tenant_id AND u.id = p.user_id \
             JOIN user_departments ud ON ud.tenant_id = p.tenant_id AND ud.user_id = p.user_id \
             WHERE p.tenant_id = $1 AND ud.department_id = $2 AND p.status = 'online' AND u.disabled = $3",
        )
        .bind(tenant.to_string())
        .bind(department.to_string())
        .bind(flag(false))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(Candidate {
                agent: id(r, "user_id")?,
                capacity: r.try_get("capacity").map_err(db)?,
                active_chats: r.try_get("load").map_err(db)?,
                idle_since: Timestamp(r.try_get("idle_since").map_err(db)?),
            })
        })
        .collect()
    }

    async fn create_offline_message(
        &self,
        tenant: TenantId,
        m: &OfflineMessageRecord,
    ) -> StoreResult<()> {
        if m.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let _gate = self.gate().await;
        sqlx::query(
            "INSERT INTO offline_messages (tenant_id, id, department_id, visitor_id, content_ct, created_at, handled_at, handled_by) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
        )
        .bind(tenant.to_string())
        .bind(m.id.to_string())
        .bind(m.department.to_string())
        .bind(m.visitor.to_string())
        .bind(m.content_ct.clone())
        .bind(m.created_at.0)
        .execute(&self.pool)
        .await
        .map_err(|e| db_write(e, "offline_message"))?;
        Ok(())
    }

    async fn offline_messages(
        &self,
        tenant: TenantId,
        departments: Option<&[DepartmentId]>,
        limit: i64,
    ) -> StoreResult<Vec<OfflineMessageRecord>> {
        let filter = match departments {
            Some([]) => return Ok(vec![]),
            Some(d) => format!("AND department_id IN ({})", placeholders(3, d.len())),
            None => String::new(),
        };
        let sql = format!(
            "SELECT tenant_id, id, department_id, visitor_id, content_ct, created_at, handled_at, handled_by FROM offline_messages WHERE tenant_id = $1 {filter} ORDER BY created_at DESC, id LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(tenant.to_string()).bind(limit);
        for d in departments.unwrap_or_default() {
            q = q.bind(d.to_string());
        }
        q.fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(offline_row)
            .collect()
    }

    async fn mark_offline_message_handled(
        &self,
        tenant: TenantId,
        mid: OfflineMessageId,
        departments: Option<&[DepartmentId]>,
        by: UserId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let filter = match departments {
            Some([]) => return Err(StoreError::NotFound),
            Some(d) => format!("AND department_id IN ({})", placeholders(5, d.len())),
            None => String::new(),
        };
        let sql = format!(
            "UPDATE offline_messages SET handled_at = $1, handled_by = $2 WHERE tenant_id = $3 AND id = $4 {filter}"
        );
        let mut q = sqlx::query(&sql)
            .bind(at.0)
            .bind(by.to_string())
            .bind(tenant.to_string())
            .bind(mid.to_string());
        for d in departments.unwrap_or_default() {
            q = q.bind(d.to_string());
        }
        let mut tx = self.begin_write().await?;
        let r = q.execute(&mut **tx).await.map_err(db)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }
}

async fn insert_event(
    tx: &mut Tx<'_>,
    tenant: TenantId,
    cid: ConversationId,
    seq: i64,
    e: &NewEvent,
    body_ct: Option<Vec<u8>>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO conversation_events (tenant_id, conversation_id, seq, kind, at, author, client_msg_id, body_ct, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(tenant.to_string())
    .bind(cid.to_string())
    .bind(seq)
    .bind(e.kind.as_str())
    .bind(e.at.0)
    .bind(e.author.clone())
    .bind(e.client_msg_id.clone())
    .bind(body_ct)
    .bind(e.data.clone())
    .execute(&mut **tx)
    .await
    .map_err(|err| db_write(err, "client_msg_id"))?;
    Ok(())
}

impl SqlStore {
    /// One read of a chat's log after `after_seq` (`ChatStore::events`).
    async fn read_events(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        macro_rules! columns {
            () => {
                "conversation_id, seq, kind, at, author, client_msg_id, body_ct, data"
            };
        }
        // SQLite: a chat with a head past `after_seq` may have rows in the arrivals file (see
        // `sqlite_arrivals`); one without has none there to read.
        let head = self.arrivals.as_ref().and_then(|a| a.head(tenant, cid));
        let rows = match head {
            Some(head) if head > after_seq => {
                // One read transaction over both files: the arrivals file's snapshot first, then,
                // with the first statement that reads it, the main file's. A row of the arrivals
                // file counts while the main file's mark says it is not merged yet, and only up
                // to the head: a row past it has committed, but its head (and with it the chat's
                // `last_seq`) is recorded just after the commit, and it is not acknowledged yet.
                let mut tx = self.pool.begin().await.map_err(db)?;
                sqlx::query("SELECT gen FROM arrivals.state")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM (",
                    "SELECT ",
                    columns!(),
                    " FROM main.conversation_events \
                     WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 UNION ALL ",
                    "SELECT ",
                    columns!(),
                    " FROM arrivals.events_0 \
                     WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 AND seq <= $5 \
                     AND gen > (SELECT merged FROM main.arrivals_merged) UNION ALL ",
                    "SELECT ",
                    columns!(),
                    " FROM arrivals.events_1 \
                     WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 AND seq <= $5 \
                     AND gen > (SELECT merged FROM main.arrivals_merged)) \
                     ORDER BY seq LIMIT $4"
                ))
                .bind(tenant.to_string())
                .bind(cid.to_string())
                .bind(after_seq)
                .bind(limit)
                .bind(head)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                rows
            }
            _ => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM conversation_events \
                 WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
            ))
            .bind(tenant.to_string())
            .bind(cid.to_string())
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
        };
        rows.iter().map(event_row).collect()
    }

    /// Conversation rows as records, counting on SQLite what the arrivals file and the waiting
    /// heartbeats hold (`Arrivals::fold`): `read` runs again should a head or a heartbeat be let
    /// go while it ran.
    async fn conversation_records<F, Fut>(&self, read: F) -> StoreResult<Vec<ConversationRecord>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<AnyRow>, sqlx::Error>>,
    {
        loop {
            let epoch = self.arrivals.as_ref().map(|a| a.epoch());
            let rows = read().await.map_err(db)?;
            let mut recs = rows
                .iter()
                .map(conversation_row)
                .collect::<StoreResult<Vec<_>>>()?;
            let (Some(arrivals), Some(epoch)) = (&self.arrivals, epoch) else {
                return Ok(recs);
            };
            let folded = arrivals.fold(epoch, |view| {
                recs.iter_mut().for_each(|r| view.apply(r));
            });
            if folded.is_some() {
                return Ok(recs);
            }
        }
    }

    /// Queue a write for the group-commit writer and wait for its answer (sent after the commit).
    async fn write<T>(
        &self,
        w: Write,
        answer: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        let stopped = || StoreError::Backend("the append writer has stopped".into());
        self.appender.send(w).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// One write waiting for the group-commit writer.
pub(crate) enum Write {
    Append(AppendRequest),
    Touch(TouchRequest),
}

impl Write {
    /// The chat it writes.
    fn chat(&self) -> Chat {
        match self {
            Write::Append(r) => (r.tenant, r.conversation),
            Write::Touch(r) => (r.tenant, r.conversation),
        }
    }

    /// A plain message (or a system event with no state change) or a heartbeat: one read and at
    /// most one write, nothing to undo when it is refused.
    pub(crate) fn is_plain(&self) -> bool {
        match self {
            Write::Append(r) => {
                matches!(r.transition, Transition::None | Transition::Message { .. })
            }
            Write::Touch(_) => true,
        }
    }
}

pub(crate) struct AppendRequest {
    pub(crate) tenant: TenantId,
    pub(crate) conversation: ConversationId,
    pub(crate) event: NewEvent,
    pub(crate) body: Option<Sealer>,
    pub(crate) transition: Transition,
    on_commit: Option<OnCommit>,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

/// A visitor heartbeat: stamp `visitor_seen_at` while they are connected.
pub(crate) struct TouchRequest {
    pub(crate) tenant: TenantId,
    pub(crate) conversation: ConversationId,
    pub(crate) visitor: VisitorId,
    pub(crate) now: Timestamp,
    reply: oneshot::Sender<StoreResult<Option<VisitorConnection>>>,
}

/// What a write came to, answered once the batch has committed.
pub(crate) enum Done {
    Appended(StoreResult<Appended>),
    Touched(StoreResult<Option<VisitorConnection>>),
}

/// How many times a read of a chat's log is tried again when it finds a gap (`events`).
const GAP_READS: usize = 3;

/// Writes waiting at once are committed together, up to this many.
const MAX_BATCH: usize = 512;

/// The group-commit writer: takes every write waiting at that moment (at least one), applies them
/// in one transaction, commits once, and only then answers each. While it commits, the next batch
/// gathers, so batches grow with the load and no timer adds latency.
///
/// The writer keeps one connection for itself, so that its page cache stays warm from batch to
/// batch (a pooled connection's cache is thrown away whenever another connection has written
/// since it was last used, and every page is read again). After a database failure it lets that
/// connection go and takes a fresh one for the next batch.
pub(crate) async fn append_writer(
    store: SqlStore,
    mut requests: mpsc::Receiver<Write>,
    sqlite_file: Option<std::path::PathBuf>,
) {
    // SQLite: the log is copied back into the database by a task of its own, on its own
    // connection, so that no commit waits for a checkpoint (see SQLITE_PRAGMAS); the writer
    // finishes the job between batches when the log has grown (see `checkpoint_loop`).
    let sqlite = store.backend == Backend::Sqlite;
    let catch_up = Arc::new(AtomicBool::new(false));
    let checkpointer = sqlite.then(|| {
        tokio::spawn(checkpoint_loop(
            store.pool.clone(),
            catch_up.clone(),
            store.arrivals.clone(),
        ))
    });
    // SQLite's serving store: plain writes go to the writer thread and the arrivals file, the
    // rest to the main file on a lane of its own (see `MainLane`).
    let serving = store.arrivals.as_ref().is_some_and(|a| a.serving);
    let lanes = match (&sqlite_file, &store.arrivals) {
        (Some(file), Some(arrivals)) if serving => Some((
            file.clone(),
            arrivals.clone(),
            MainLane::start(store.clone(), catch_up.clone()),
        )),
        _ => None,
    };
    let mut own: Option<PoolConnection<Any>> = None;
    let mut thread: Option<crate::sqlite_writer::Thread> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    loop {
        let first = tokio::select! {
            w = requests.recv() => w,
            () = store.writer.stop.notified(), if !stopping => {
                // What is queued still commits; nothing more can be queued.
                stopping = true;
                requests.close();
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Some((file, arrivals, lane)) = &lanes {
            let mut plain = lane.split(&mut batch);
            if !plain.is_empty() {
                let outcome =
                    crate::sqlite_writer::commit(&mut thread, file, arrivals, &mut plain).await;
                settle(&mut plain, outcome);
            }
            continue;
        }
        let outcome = if sqlite && !serving {
            Err(StoreError::Backend(
                "this process does not serve the SQLite database (another one does, or it was \
                 opened to read): chats are written through the server"
                    .into(),
            ))
        } else {
            match writer_connection(&store, &mut own).await {
                Ok(conn) => {
                    commit_batch(conn, store.backend, store.arrivals.as_deref(), &batch).await
                }
                Err(e) => Err(e),
            }
        };
        if settle(&mut batch, outcome) {
            own = None;
        }
        if catch_up.load(Ordering::Relaxed) {
            main_catch_up(&store, &mut own, &catch_up).await;
        }
    }
    drop(own);
    if let Some((_, _, lane)) = lanes {
        lane.finish().await;
    }
    if let Some(t) = thread {
        t.stop().await;
    }
    if let Some(c) = checkpointer {
        c.abort();
        // Its connection is back in the pool once it has ended.
        let _ = c.await;
    }
}

/// A committed batch's hooks, all of them in commit order, then its answers; or the failure to
/// every writer in it. True when it failed (the connection is then let go).
fn settle(batch: &mut Vec<Write>, outcome: StoreResult<Vec<Done>>) -> bool {
    match outcome {
        Ok(done) => {
            for (w, d) in batch.iter().zip(&done) {
                if let (Write::Append(r), Done::Appended(Ok(a))) = (w, d)
                    && !a.duplicate
                    && let Some(hook) = &r.on_commit
                {
                    hook(a);
                }
            }
            batch
                .drain(..)
                .zip(done)
                .for_each(|(w, d)| answer(w, Ok(d)));
            false
        }
        Err(e) => {
            batch.drain(..).for_each(|w| answer(w, Err(e.clone())));
            true
        }
    }
}

/// Finish the main file's checkpoint between two batches (see `checkpoint_loop`): asked again
/// after the next batch unless every page was copied back (the background checkpoint may hold
/// the checkpoint lock, or a reader a page).
async fn main_catch_up(
    store: &SqlStore,
    own: &mut Option<PoolConnection<Any>>,
    catch_up: &AtomicBool,
) {
    let done = match writer_connection(store, own).await {
        Ok(conn) => checkpoint(conn, "main").await,
        Err(e) => Err(e),
    };
    match done {
        Ok(c) if c.complete() => catch_up.store(false, Ordering::Relaxed),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "checkpointing the write-ahead log failed"),
    }
}

type Chat = (TenantId, ConversationId);

/// SQLite: the lane of the writes that go to the main file, beside the writer thread's.
///
/// A batch's state changes (assignments, transfers, ends, a visitor's connection) write the main
/// file, whose write lock the merge of the arrivals file holds for tens to hundreds of
/// milliseconds (`sqlite_arrivals`). In one lane, every write queued behind such a batch waited
/// with it: under 20 chats a second started and ended at 4,000 messages a second, ack p99 went
/// from 14-17 ms to 44-131 ms. So they commit on a task of their own, and the messages of every
/// other chat go on meanwhile. A chat's writes stay in order: while a write of a chat is queued
/// on this lane, every later write of that chat goes here too, and a batch that changes a
/// chat's state sends all of that chat's writes in it here. The writer loop alone adds to the
/// lane and waits for each of the thread's batches before it splits the next, so the two lanes
/// never write one chat at once. Each lane runs its hooks in its own commit order, which keeps
/// every chat's events in sequence order.
struct MainLane {
    groups: mpsc::UnboundedSender<Vec<Write>>,
    /// Per chat, how many of its writes are on the lane and not yet answered.
    busy: Arc<std::sync::Mutex<HashMap<Chat, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MainLane {
    fn start(store: SqlStore, catch_up: Arc<AtomicBool>) -> MainLane {
        let (groups, rx) = mpsc::unbounded_channel();
        let busy: Arc<std::sync::Mutex<HashMap<Chat, usize>>> = Arc::default();
        let task = tokio::spawn(main_lane(store, rx, busy.clone(), catch_up));
        MainLane { groups, busy, task }
    }

    /// Take from `batch` what goes to the main file and queue it on the lane; what is left
    /// goes to the writer thread.
    fn split(&self, batch: &mut Vec<Write>) -> Vec<Write> {
        let changing: HashSet<Chat> = batch
            .iter()
            .filter(|w| !w.is_plain())
            .map(Write::chat)
            .collect();
        let mut busy = lock(&self.busy);
        let (mut main, mut plain) = (vec![], vec![]);
        for w in batch.drain(..) {
            let chat = w.chat();
            if changing.contains(&chat) || busy.contains_key(&chat) {
                *busy.entry(chat).or_default() += 1;
                main.push(w);
            } else {
                plain.push(w);
            }
        }
        drop(busy);
        if !main.is_empty()
            && let Err(mpsc::error::SendError(group)) = self.groups.send(main)
        {
            let stopped = StoreError::Backend("the append writer has stopped".into());
            group
                .into_iter()
                .for_each(|w| answer(w, Err(stopped.clone())));
        }
        plain
    }

    /// Commit what is queued, then end.
    async fn finish(self) {
        drop(self.groups);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the main file's write lane ended abnormally");
        }
    }
}

/// The main lane is done with a write of each of `chats`.
fn release(busy: &std::sync::Mutex<HashMap<Chat, usize>>, chats: Vec<Chat>) {
    let mut busy = lock(busy);
    for chat in chats {
        if let Some(n) = busy.get_mut(&chat) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&chat);
            }
        }
    }
}

async fn main_lane(
    store: SqlStore,
    mut groups: mpsc::UnboundedReceiver<Vec<Write>>,
    busy: Arc<std::sync::Mutex<HashMap<Chat, usize>>>,
    catch_up: Arc<AtomicBool>,
) {
    let mut own: Option<PoolConnection<Any>> = None;
    while let Some(mut group) = groups.recv().await {
        let chats: Vec<Chat> = group.iter().map(Write::chat).collect();
        let gate = store.gate().await;
        let outcome = match writer_connection(&store, &mut own).await {
            Ok(conn) => commit_batch(conn, store.backend, store.arrivals.as_deref(), &group).await,
            Err(e) => Err(e),
        };
        drop(gate);
        if settle(&mut group, outcome) {
            own = None;
        }
        // After the hooks: the chat's next write, on either lane, follows them.
        release(&busy, chats);
        if catch_up.load(Ordering::Relaxed) {
            main_catch_up(&store, &mut own, &catch_up).await;
        }
    }
}

/// The writer's own connection, taken from the pool the first time (and after a failure).
async fn writer_connection<'c>(
    store: &SqlStore,
    own: &'c mut Option<PoolConnection<Any>>,
) -> StoreResult<&'c mut AnyConnection> {
    let conn = match own {
        Some(conn) => conn,
        None => {
            let mut conn = store.pool.acquire().await.map_err(db)?;
            if store.backend == Backend::Sqlite {
                // The pages a batch touches (the chats' rows, their logs' index pages) stay cached.
                sqlx::query(WRITER_CACHE)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
            }
            own.insert(conn)
        }
    };
    Ok(&mut **conn)
}

/// The writer's page cache: 32 MiB (SQLite's default is 2 MiB per connection).
pub(crate) const WRITER_CACHE: &str = "PRAGMA cache_size = -32768";

/// A log of this many pages (about 4 MiB) or more is finished off by the writer between batches.
const CATCH_UP_FRAMES: i64 = 1000;

/// Checkpoint SQLite's write-ahead logs every tenth of a second (passive: it copies what no reader
/// still needs and never blocks a writer): the main file's, and the arrivals file's (see
/// `sqlite_arrivals`). Every quarter second was too slow once the writer had a thread of its own:
/// the store test's log peaked at 58-61 MB against 24-27 MB now.
///
/// A passive checkpoint alone never lets a log start over under steady writes: the log is reset
/// only by a write that finds every page of it copied back, and while the checkpoint copies, the
/// writer adds more. The log then grew without bound (900 MB in a 12-second run at 6,000
/// messages a second), and every page read searched a larger index of it. So when a log has
/// reached `CATCH_UP_FRAMES`, this task asks its writer to run one more passive checkpoint
/// itself between two batches: it copies only what was written since this one began, and once it
/// has copied all of it (the writer asks again after every batch until then), the writer's next
/// transaction writes the log from its start again. The arrivals file's writer is the writer
/// thread (`Arrivals::catch_up`); the main file's are the merge, which checkpoints after each
/// merge, and the batches with state changes (`catch_up`).
async fn checkpoint_loop(
    pool: sqlx::AnyPool,
    catch_up: Arc<AtomicBool>,
    arrivals: Option<Arc<Arrivals>>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %db(e), "checkpointing the write-ahead log failed");
                continue;
            }
        };
        match checkpoint(&mut conn, "main").await {
            Ok(c) if c.log >= CATCH_UP_FRAMES => catch_up.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checkpointing the write-ahead log failed"),
        }
        if let Some(arrivals) = &arrivals {
            match checkpoint(&mut conn, "arrivals").await {
                Ok(c) if c.log >= CATCH_UP_FRAMES => {
                    arrivals.catch_up.store(true, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checkpointing the arrivals file failed"),
            }
        }
    }
}

/// What one checkpoint did.
struct Checkpoint {
    /// Another checkpoint held the lock, so this one did nothing.
    busy: bool,
    /// Pages in the log.
    log: i64,
    /// Pages of it now copied back into the database.
    copied: i64,
}

impl Checkpoint {
    fn complete(&self) -> bool {
        !self.busy && self.copied >= self.log
    }
}

/// One passive checkpoint of the file attached as `schema` (`main`, or SQLite's `arrivals`).
async fn checkpoint(conn: &mut AnyConnection, schema: &'static str) -> StoreResult<Checkpoint> {
    let row = sqlx::query(&format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"))
        .fetch_one(conn)
        .await
        .map_err(db)?;
    // Both counts are -1 when the database is not in WAL mode.
    let count = |i: usize| row.try_get::<i64, _>(i).map(|n| n.max(0)).map_err(db);
    Ok(Checkpoint {
        busy: count(0)? != 0,
        log: count(1)?,
        copied: count(2)?,
    })
}

fn answer(w: Write, outcome: StoreResult<Done>) {
    match (w, outcome) {
        (Write::Append(r), Ok(Done::Appended(a))) => drop(r.reply.send(a)),
        (Write::Touch(r), Ok(Done::Touched(t))) => drop(r.reply.send(t)),
        (Write::Append(r), Err(e)) => drop(r.reply.send(Err(e))),
        (Write::Touch(r), Err(e)) => drop(r.reply.send(Err(e))),
        // Each write's outcome is made from that write; a dropped reply reads as a failure.
        _ => {}
    }
}

/// Apply a batch in one transaction. A write refused for its own reasons (a duplicate, an ended
/// chat, a lost race) is answered alone and leaves the others; a database failure fails the
/// batch, and every writer in it is told so (nothing of it is committed).
///
/// Plain messages and heartbeats are one read and one write each. Writes that can fail after
/// they have written something run in a savepoint; on PostgreSQL, where any failed statement
/// spoils the transaction, every write does.
async fn commit_batch(
    conn: &mut AnyConnection,
    backend: Backend,
    arrivals: Option<&Arrivals>,
    batch: &[Write],
) -> StoreResult<Vec<Done>> {
    let postgres = backend == Backend::Postgres;
    let mut tx = conn.begin_with(backend.begin_write()).await.map_err(db)?;
    let mut done = Vec::with_capacity(batch.len());
    for w in batch {
        let slow = !w.is_plain();
        let savepoint = slow || postgres;
        if savepoint {
            sqlx::query("SAVEPOINT write")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let result = match w {
            Write::Append(r) if slow => {
                Done::Appended(append_in_tx(&mut tx, backend, arrivals, r).await)
            }
            Write::Append(r) => {
                Done::Appended(append_message(&mut tx, backend, arrivals, r).await?)
            }
            Write::Touch(r) => Done::Touched(touch_in_tx(&mut tx, r).await),
        };
        let failed = matches!(&result, Done::Appended(Err(_)) | Done::Touched(Err(_)));
        // Without a savepoint only refusals decided before anything was written fail (see
        // `append_message`): there is nothing to undo.
        if failed && savepoint {
            sqlx::query("ROLLBACK TO SAVEPOINT write")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        if savepoint {
            sqlx::query("RELEASE SAVEPOINT write")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        done.push(result);
    }
    tx.commit().await.map_err(db)?;
    Ok(done)
}

/// What the read of a plain message found: the chat's state, who may write in it, and an earlier
/// copy of the message (its seq and time).
pub(crate) struct PlainRead {
    pub(crate) status: String,
    pub(crate) visitor: VisitorId,
    pub(crate) agent: Option<UserId>,
    pub(crate) last_seq: i64,
    pub(crate) earlier: Option<(i64, i64)>,
}

/// What a plain message comes to, decided from its read alone (for both writers).
pub(crate) enum Plain {
    /// Answer without writing: a refusal, or the earlier copy's number.
    Answer(StoreResult<Appended>),
    /// Insert the event under this seq.
    Insert(i64),
}

pub(crate) fn decide_plain(read: &PlainRead, r: &AppendRequest) -> Plain {
    // Who writes is checked first: a stranger learns nothing, not even of an earlier copy.
    match r.transition {
        Transition::Message {
            from: MessageFrom::Visitor(v),
        } if v != read.visitor => return Plain::Answer(Err(StoreError::NotFound)),
        Transition::Message {
            from: MessageFrom::Agent(a),
        } if read.agent != Some(a) => {
            return Plain::Answer(Err(StoreError::Conflict("not_assigned")));
        }
        _ => {}
    }
    if let Some((seq, at)) = read.earlier {
        return Plain::Answer(Ok(Appended {
            seq,
            at: Timestamp(at),
            duplicate: true,
        }));
    }
    if read.status == ConversationStatus::Ended.as_str() {
        return Plain::Answer(Err(StoreError::Conflict("conversation_ended")));
    }
    // On SQLite this transaction's own earlier inserts count: two messages to one chat in a
    // batch get consecutive numbers.
    Plain::Insert(read.last_seq + 1)
}

/// A plain message (or a system event with no state change): one read that checks the chat and
/// finds an earlier copy of the message, one insert. Refusals come back as `Ok(Err(..))` before
/// anything is written; a failed insert is a database failure and fails the batch (on SQLite a
/// failing statement can end the transaction, so carrying on would be unsafe).
async fn append_message(
    tx: &mut Tx<'_>,
    backend: Backend,
    arrivals: Option<&Arrivals>,
    r: &AppendRequest,
) -> StoreResult<StoreResult<Appended>> {
    let postgres = backend == Backend::Postgres;
    let (tenant, cid) = (r.tenant, r.conversation);
    // The row lock (PostgreSQL) keeps other nodes' writers out of this chat until commit; SQLite
    // has one writer, holding the database's write lock, and an earlier copy may be in its
    // arrivals file.
    let sql = match backend {
        Backend::Postgres => {
            "SELECT c.status, c.visitor_id, c.agent_id, c.last_seq AS last_seq, e.seq AS dup_seq, \
             e.at AS dup_at FROM conversations c LEFT JOIN conversation_events e \
             ON e.tenant_id = c.tenant_id AND e.conversation_id = c.id AND e.client_msg_id = $3 \
             WHERE c.tenant_id = $1 AND c.id = $2 FOR UPDATE OF c"
        }
        Backend::Sqlite => concat!(
            "SELECT c.status, c.visitor_id, c.agent_id, ",
            sqlite_last_seq!(),
            " AS last_seq, ",
            sqlite_earlier_copy!()
        ),
    };
    let row = sqlx::query(sql)
        .bind(tenant.to_string())
        .bind(cid.to_string())
        .bind(r.event.client_msg_id.clone())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return Ok(Err(StoreError::NotFound));
    };
    let earlier = match row.try_get::<Option<i64>, _>("dup_seq").map_err(db)? {
        Some(seq) => Some((seq, row.try_get("dup_at").map_err(db)?)),
        None => None,
    };
    let logged: i64 = row.try_get("last_seq").map_err(db)?;
    let read = PlainRead {
        status: row.try_get("status").map_err(db)?,
        visitor: id(&row, "visitor_id")?,
        agent: opt_id(&row, "agent_id")?,
        last_seq: arrivals.map_or(logged, |a| {
            a.fold_locked(|view| view.last_seq(tenant, cid, logged))
        }),
        earlier,
    };
    let seq = match decide_plain(&read, r) {
        Plain::Answer(a) => return Ok(a),
        Plain::Insert(seq) => seq,
    };
    let body_ct = r.body.as_ref().map(|seal| seal(seq));
    insert_event(tx, tenant, cid, seq, &r.event, body_ct).await?;
    if postgres {
        // Each write has its own savepoint there: keep the counter inside it too.
        sqlx::query("UPDATE conversations SET last_seq = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(seq)
            .bind(tenant.to_string())
            .bind(cid.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(Ok(Appended {
        seq,
        at: r.event.at,
        duplicate: false,
    }))
}

/// A heartbeat: one update while the visitor is connected; otherwise their state is read and
/// returned (the caller appends the change back to connected as an event).
async fn touch_in_tx(tx: &mut Tx<'_>, r: &TouchRequest) -> StoreResult<Option<VisitorConnection>> {
    let (tenant, cid, visitor) = (
        r.tenant.to_string(),
        r.conversation.to_string(),
        r.visitor.to_string(),
    );
    let stamped = sqlx::query(
        "UPDATE conversations SET visitor_seen_at = $1 WHERE tenant_id = $2 AND id = $3 AND visitor_id = $4 \
         AND status <> 'ended' AND visitor_state = 'connected'",
    )
    .bind(r.now.0)
    .bind(tenant.clone())
    .bind(cid.clone())
    .bind(visitor.clone())
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    if stamped.rows_affected() > 0 {
        return Ok(Some(VisitorConnection::Connected));
    }
    let before = sqlx::query(
        "SELECT visitor_state FROM conversations WHERE tenant_id = $1 AND id = $2 AND visitor_id = $3 AND status <> 'ended'",
    )
    .bind(tenant)
    .bind(cid)
    .bind(visitor)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    before
        .map(|r| {
            VisitorConnection::parse(&r.try_get::<String, _>("visitor_state").map_err(db)?)
                .ok_or_else(|| corrupt("visitor_state"))
        })
        .transpose()
}

/// One append inside the writer's transaction.
async fn append_in_tx(
    tx: &mut Tx<'_>,
    backend: Backend,
    arrivals: Option<&Arrivals>,
    r: &AppendRequest,
) -> StoreResult<Appended> {
    let (tenant, cid, event, body, transition) = (
        r.tenant,
        r.conversation,
        &r.event,
        r.body.as_ref(),
        &r.transition,
    );
    if let Some(client_id) = &event.client_msg_id {
        let sql = match backend {
            Backend::Postgres => {
                "SELECT seq AS dup_seq, at AS dup_at FROM conversation_events \
                 WHERE tenant_id = $1 AND conversation_id = $2 AND client_msg_id = $3"
            }
            Backend::Sqlite => concat!("SELECT ", sqlite_earlier_copy!()),
        };
        let existing = sqlx::query(sql)
            .bind(tenant.to_string())
            .bind(cid.to_string())
            .bind(client_id.clone())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
        if let Some(r) = existing
            && let Some(seq) = r.try_get::<Option<i64>, _>("dup_seq").map_err(db)?
        {
            return Ok(Appended {
                seq,
                at: Timestamp(r.try_get("dup_at").map_err(db)?),
                duplicate: true,
            });
        }
    }
    // On PostgreSQL allocating the sequence number also locks the conversation row until commit;
    // on SQLite the next one follows the log (see `sqlite_last_seq`).
    let sql = match backend {
        Backend::Postgres => format!(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE tenant_id = $1 AND id = $2 \
             AND status <> 'ended' RETURNING {}",
            conversation_columns(backend)
        ),
        Backend::Sqlite => format!(
            "SELECT {} FROM conversations c WHERE tenant_id = $1 AND id = $2 AND status <> 'ended'",
            conversation_columns(backend)
        ),
    };
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(cid.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let Some(row) = row else {
        let exists =
            sqlx::query("SELECT 1 AS one FROM conversations WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.to_string())
                .bind(cid.to_string())
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?;
        return Err(if exists.is_some() {
            StoreError::Conflict("conversation_ended")
        } else {
            StoreError::NotFound
        });
    };
    let mut conv = conversation_row(&row)?;
    if let Some(a) = arrivals {
        // The chat's rows and heartbeat in the arrivals file count (see `sqlite_arrivals`).
        a.fold_locked(|view| view.apply(&mut conv));
    }
    if backend == Backend::Sqlite {
        conv.last_seq += 1;
    }
    let seq = conv.last_seq;
    let now = event.at;
    let set = |sql: &'static str| sqlx::query(sql);
    match transition {
        Transition::None | Transition::Message { .. } => {}
        Transition::Assign {
            agent,
            require_offer,
        } => {
            if conv.status != ConversationStatus::Queued
                || (*require_offer && conv.offered_to != Some(*agent))
            {
                return Err(StoreError::Conflict("not_queued"));
            }
            if !take_slot(tx, tenant, *agent, now).await? {
                return Err(StoreError::Conflict("capacity"));
            }
            set("UPDATE conversations SET status = 'assigned', agent_id = $1, offered_to = NULL, offer_expires_at = NULL WHERE tenant_id = $2 AND id = $3")
                    .bind(agent.to_string())
                    .bind(tenant.to_string())
                    .bind(cid.to_string())
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
        }
        Transition::Requeue { decline } => {
            if let Some(a) = conv.agent {
                release_slot(tx, tenant, a, now).await?;
            }
            let mut declined = conv.declined_by.clone();
            if let Some(d) = decline
                && !declined.contains(d)
            {
                declined.push(*d);
            }
            set("UPDATE conversations SET status = 'queued', agent_id = NULL, offered_to = NULL, offer_expires_at = NULL, declined_by = $1 \
                     WHERE tenant_id = $2 AND id = $3")
                .bind(ids_json(&declined))
                .bind(tenant.to_string())
                .bind(cid.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        Transition::Transfer { department, agent } => {
            if let Some(a) = conv.agent {
                release_slot(tx, tenant, a, now).await?;
            }
            match agent {
                Some(to) => {
                    if !take_slot(tx, tenant, *to, now).await? {
                        return Err(StoreError::Conflict("capacity"));
                    }
                    set("UPDATE conversations SET status = 'assigned', agent_id = $1, department_id = $2, offered_to = NULL, \
                             offer_expires_at = NULL WHERE tenant_id = $3 AND id = $4")
                        .bind(to.to_string())
                        .bind(department.to_string())
                        .bind(tenant.to_string())
                        .bind(cid.to_string())
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| db_write(e, "department"))?;
                }
                None => {
                    set("UPDATE conversations SET status = 'queued', agent_id = NULL, department_id = $1, offered_to = NULL, \
                             offer_expires_at = NULL, declined_by = $2, queued_at = $3 WHERE tenant_id = $4 AND id = $5")
                        .bind(department.to_string())
                        .bind(ids_json(&conv.agent.into_iter().collect::<Vec<_>>()))
                        .bind(now.0)
                        .bind(tenant.to_string())
                        .bind(cid.to_string())
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| db_write(e, "department"))?;
                }
            }
        }
        Transition::End => {
            if let Some(a) = conv.agent {
                release_slot(tx, tenant, a, now).await?;
            }
            set("UPDATE conversations SET status = 'ended', ended_at = $1, offered_to = NULL, offer_expires_at = NULL WHERE tenant_id = $2 AND id = $3")
                    .bind(now.0)
                    .bind(tenant.to_string())
                    .bind(cid.to_string())
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
        }
        Transition::VisitorState { from, to } => {
            if conv.visitor_state != *from {
                return Err(StoreError::Conflict("state_changed"));
            }
            let seen = if *to == VisitorConnection::Connected {
                now.0
            } else {
                conv.visitor_seen_at.0
            };
            set("UPDATE conversations SET visitor_state = $1, visitor_seen_at = $2 WHERE tenant_id = $3 AND id = $4")
                    .bind(to.as_str())
                    .bind(seen)
                    .bind(tenant.to_string())
                    .bind(cid.to_string())
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
        }
    }
    let body_ct = body.map(|seal| seal(seq));
    insert_event(tx, tenant, cid, seq, event, body_ct).await?;
    Ok(Appended {
        seq,
        at: event.at,
        duplicate: false,
    })
}
