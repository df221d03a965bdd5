//! The one `Store` implementation, over sqlx's `Any` pool (SQLite or PostgreSQL).

use crate::migrations::MIGRATIONS;
use crate::sqlite_arrivals::{self, Arrivals, Merger};
use parley_core::audit::{AuditEvent, AuditRecord};
use parley_core::store::{
    DepartmentRecord, PasswordChange, SessionRecord, Store, StoreError, StoreResult,
    TenantKeyRecord, TenantRecord, UserChanges, UserRecord,
};
use parley_core::{DepartmentId, Role, TenantId, Timestamp, UserId};
use parley_crypto::{GENESIS_HASH, chain_hash};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// The statement that opens a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a transaction that reads before it writes cannot fail half-way on
    /// a stale snapshot.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }
}

/// Per-connection SQLite settings: write-ahead log for concurrent readers, a full fsync on every
/// commit (nothing acknowledged is lost), foreign keys enforced, and a wait instead of an instant
/// "database is locked" when another process (e.g. `parley tenant create`) holds the write lock.
pub(crate) const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 10000",
    // Checkpoints run in a task of their own (chat::append_writer), not in whichever commit
    // crosses the size threshold.
    "PRAGMA wal_autocheckpoint = 0",
    // A log that grew during a burst is cut back to this size when it next starts over.
    "PRAGMA journal_size_limit = 67108864",
];

#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// The group-commit writer's queue (see `chat::append_writer`).
    pub(crate) appender: tokio::sync::mpsc::Sender<crate::chat::Write>,
    /// Stops the writer (`close`).
    pub(crate) writer: Arc<Writer>,
    /// SQLite: what the writer thread, the merge and the reads share about the arrivals file
    /// (see `sqlite_arrivals`).
    pub(crate) arrivals: Option<Arc<Arrivals>>,
    /// SQLite: taken by every writer of the main file in this process before it asks SQLite for
    /// the file's write lock (`gate`). Waiters queue in order and start the moment the lock is
    /// free; SQLite's own wait (`busy_timeout`) polls with sleeps of up to 100 ms and serves
    /// whoever asks first, so behind a merge a chat's start could wait several times as long
    /// as the merge held the lock (docs/BENCHMARKS.md). Other processes still meet the busy
    /// timeout.
    pub(crate) main_gate: Option<crate::sqlite_arrivals::Gate>,
}

/// A write transaction on a pooled connection (`SqlStore::begin_write`), holding the main file's
/// gate until it ends. The transaction is dropped (rolled back) before the gate opens.
pub(crate) struct WriteTx {
    tx: Tx<'static>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Tx<'static>;
    fn deref(&self) -> &Tx<'static> {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Tx<'static> {
        &mut self.tx
    }
}

/// How a store runs, beyond its URL.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// SQLite: this store serves chats. It takes the database's lock (`<db>-arrivals.lock`) and
    /// is refused while another process holds it; it writes messages to the arrivals file and
    /// merges them (see `sqlite_arrivals`). A store that does not serve (`false`: the
    /// command-line verbs, which run beside a server) refuses chat writes and sees messages of
    /// the last second or so only in a chat's events, not in its `last_seq`. PostgreSQL ignores
    /// it: there every node serves.
    pub serving: bool,
    /// SQLite: how often the arrivals file is merged into the chats' logs (see
    /// `sqlite_arrivals`). Shorter keeps that file smaller and costs more writes.
    pub merge_every: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            serving: true,
            merge_every: crate::sqlite_arrivals::MERGE_EVERY,
        }
    }
}

/// A mutex whose data stays usable after a panic elsewhere (it holds only a task handle).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running writer: told to stop by `stop`, joined through `task`; then SQLite's merge.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) stop: tokio::sync::Notify,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    merger: std::sync::Mutex<Option<Merger>>,
    /// SQLite: the serving lock (`sqlite_arrivals::take_lock`), let go by `close`.
    serving_lock: std::sync::Mutex<Option<std::fs::File>>,
}

pub(crate) fn db(e: sqlx::Error) -> StoreError {
    StoreError::Backend(match &e {
        // Database messages can quote values (PostgreSQL's DETAIL does); keep only the code.
        sqlx::Error::Database(d) => format!("database error code {}", d.code().unwrap_or_default()),
        other => other.to_string(),
    })
}

/// Map a constraint violation to `Conflict(what)` / `NotFound`, anything else to `Backend`.
pub(crate) fn db_write(e: sqlx::Error, conflict: &'static str) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => return StoreError::Conflict(conflict),
            sqlx::error::ErrorKind::ForeignKeyViolation => return StoreError::NotFound,
            _ => {}
        }
    }
    db(e)
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} is malformed"))
}

pub(crate) fn id<T: FromStr>(row: &AnyRow, col: &str) -> StoreResult<T> {
    let s: String = row.try_get(col).map_err(db)?;
    s.parse().map_err(|_| corrupt(col))
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn tenant_row(r: &AnyRow) -> StoreResult<TenantRecord> {
    let origins: String = r.try_get("allowed_origins").map_err(db)?;
    Ok(TenantRecord {
        id: id(r, "id")?,
        slug: r.try_get("slug").map_err(db)?,
        name_ct: r.try_get("name_ct").map_err(db)?,
        site_key: r.try_get("site_key").map_err(db)?,
        allowed_origins: serde_json::from_str(&origins).map_err(|_| corrupt("allowed_origins"))?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        audit_seq: r.try_get("audit_seq").map_err(db)?,
        audit_head: r.try_get("audit_head").map_err(db)?,
    })
}

fn key_row(r: &AnyRow) -> StoreResult<TenantKeyRecord> {
    Ok(TenantKeyRecord {
        tenant: id(r, "tenant_id")?,
        key_id: r.try_get("key_id").map_err(db)?,
        master_key_id: r.try_get("master_key_id").map_err(db)?,
        wrapped: r.try_get("wrapped").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
    })
}

fn department_row(r: &AnyRow) -> StoreResult<DepartmentRecord> {
    Ok(DepartmentRecord {
        id: id(r, "id")?,
        tenant: id(r, "tenant_id")?,
        name: r.try_get("name").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
    })
}

fn user_row(r: &AnyRow, departments: Vec<DepartmentId>) -> StoreResult<UserRecord> {
    let role: String = r.try_get("role").map_err(db)?;
    Ok(UserRecord {
        id: id(r, "id")?,
        tenant: id(r, "tenant_id")?,
        email_ct: r.try_get("email_ct").map_err(db)?,
        email_index: r.try_get("email_index").map_err(db)?,
        display_name_ct: r.try_get("display_name_ct").map_err(db)?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role"))?,
        capacity: r.try_get("capacity").map_err(db)?,
        password_hash: r.try_get("password_hash").map_err(db)?,
        must_change_password: r.try_get::<i64, _>("must_change_password").map_err(db)? != 0,
        disabled: r.try_get::<i64, _>("disabled").map_err(db)? != 0,
        departments,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        updated_at: Timestamp(r.try_get("updated_at").map_err(db)?),
    })
}

fn session_row(r: &AnyRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        token_hash: r.try_get("token_hash").map_err(db)?,
        tenant: id(r, "tenant_id")?,
        user: id(r, "user_id")?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        last_seen_at: Timestamp(r.try_get("last_seen_at").map_err(db)?),
        expires_at: Timestamp(r.try_get("expires_at").map_err(db)?),
    })
}

fn audit_row(r: &AnyRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        seq: r.try_get("seq").map_err(db)?,
        id: r.try_get("id").map_err(db)?,
        at: r.try_get("at").map_err(db)?,
        actor: r.try_get("actor").map_err(db)?,
        action: r.try_get("action").map_err(db)?,
        target: r.try_get("target").map_err(db)?,
        ip: r.try_get("ip").map_err(db)?,
        detail: r.try_get("detail").map_err(db)?,
        prev_hash: r.try_get("prev_hash").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
    })
}

/// Every query names its columns: a statement prepared before a migration added columns must not
/// change shape under sqlx's feet (SQLite re-prepares it transparently).
const TENANT_COLUMNS: &str =
    "id, slug, name_ct, site_key, allowed_origins, created_at, audit_seq, audit_head";
const USER_COLUMNS: &str = "tenant_id, id, email_ct, email_index, display_name_ct, role, capacity, \
     password_hash, must_change_password, disabled, created_at, updated_at";
const AUDIT_COLUMNS: &str = "seq, id, at, actor, action, target, ip, detail, prev_hash, hash";

/// A write transaction: on a pooled connection (`begin_write`) or on the writer's own one.
pub(crate) type Tx<'c> = Transaction<'c, Any>;

/// The statements of a migration file: comment lines dropped, split at `;` ending a line.
/// (Migrations hold no procedural code, so a statement never contains `;` at a line end.)
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Append one audit event inside `tx`: take the tenant's next sequence number and chain head (the
/// row update also serialises concurrent writers of one tenant), hash, insert, move the head.
pub(crate) async fn append_audit_tx(tx: &mut Tx<'_>, event: &AuditEvent) -> StoreResult<()> {
    let head = sqlx::query("UPDATE tenants SET audit_seq = audit_seq + 1 WHERE id = $1 RETURNING audit_seq, audit_head")
        .bind(event.tenant.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
    let mut record = AuditRecord {
        seq: head.try_get(0).map_err(db)?,
        id: event.id.to_string(),
        at: event.at.0,
        actor: event.actor.to_stored(),
        action: event.action.to_owned(),
        target: event.target.clone(),
        ip: event.ip.clone(),
        detail: event.detail.clone(),
        prev_hash: head.try_get(1).map_err(db)?,
        hash: vec![],
    };
    record.hash = chain_hash(&record.prev_hash, &record).to_vec();
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, seq, id, at, actor, action, target, ip, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(event.tenant.to_string())
    .bind(record.seq)
    .bind(record.id)
    .bind(record.at)
    .bind(record.actor)
    .bind(record.action)
    .bind(record.target)
    .bind(record.ip)
    .bind(record.detail)
    .bind(record.prev_hash)
    .bind(record.hash.clone())
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE tenants SET audit_head = $1 WHERE id = $2")
        .bind(record.hash)
        .bind(event.tenant.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

async fn insert_user_departments(
    tx: &mut Tx<'_>,
    tenant: TenantId,
    user: UserId,
    depts: &[DepartmentId],
) -> StoreResult<()> {
    for d in depts {
        sqlx::query(
            "INSERT INTO user_departments (tenant_id, user_id, department_id) VALUES ($1, $2, $3)",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(d.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_write(e, "department"))?;
    }
    Ok(())
}

async fn insert_user(tx: &mut Tx<'_>, u: &UserRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO users (tenant_id, id, email_ct, email_index, display_name_ct, role, capacity, \
         password_hash, must_change_password, disabled, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(u.tenant.to_string())
    .bind(u.id.to_string())
    .bind(u.email_ct.clone())
    .bind(u.email_index.clone())
    .bind(u.display_name_ct.clone())
    .bind(u.role.as_str())
    .bind(u.capacity)
    .bind(u.password_hash.clone())
    .bind(flag(u.must_change_password))
    .bind(flag(u.disabled))
    .bind(u.created_at.0)
    .bind(u.updated_at.0)
    .execute(&mut **tx)
    .await
    .map_err(|e| db_write(e, "email"))?;
    insert_user_departments(tx, u.tenant, u.id, &u.departments).await
}

impl SqlStore {
    /// Connect to `sqlite://PATH` (created if missing) or `postgres://…`.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// `connect`, with options.
    pub async fn connect_with(url: &str, opts: SqlOptions) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url).ok_or_else(|| {
            StoreError::Backend("the database URL must start with sqlite:// or postgres://".into())
        })?;
        let opening = |e: String| StoreError::Backend(format!("cannot open the database: {e}"));
        let mut url = url.to_owned();
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(15));
        // SQLite: the file, which the writer thread and the merge open too, and its arrivals file,
        // attached to every connection (see `sqlite_arrivals`).
        let mut sqlite_file = None;
        let mut serving_lock = None;
        match backend {
            Backend::Sqlite => {
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
                let file =
                    <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
                        .map_err(|e| opening(e.to_string()))?
                        .get_filename()
                        .to_owned();
                if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
                    return Err(opening(
                        "an in-memory SQLite database cannot keep messages: give a file, \
                         e.g. sqlite:///var/lib/parley/parley.db"
                            .into(),
                    ));
                }
                let arrivals_file = sqlite_arrivals::file_name(&file)?;
                if opts.serving {
                    serving_lock = Some(sqlite_arrivals::take_lock(&file)?);
                }
                // Made, checked, and (by the store that serves) emptied of what a crash left,
                // before anything reads.
                let (prepared, serving) = (file.clone(), opts.serving);
                tokio::task::spawn_blocking(move || sqlite_arrivals::prepare(&prepared, serving))
                    .await
                    .map_err(|e| opening(e.to_string()))??;
                options = options
                    .max_connections(8)
                    // A connection is a file handle on this machine: asking it whether it is
                    // alive before every use (a round trip to its thread) only costs time.
                    .test_before_acquire(false)
                    .after_connect(move |conn, _meta| {
                        let arrivals_file = arrivals_file.clone();
                        Box::pin(async move {
                            for pragma in SQLITE_PRAGMAS {
                                conn.execute(*pragma).await?;
                            }
                            sqlx::query(sqlite_arrivals::ATTACH)
                                .bind(arrivals_file)
                                .execute(&mut *conn)
                                .await?;
                            for pragma in sqlite_arrivals::ATTACHED_PRAGMAS {
                                conn.execute(*pragma).await?;
                            }
                            Ok(())
                        })
                    });
                sqlite_file = Some(file);
            }
            Backend::Postgres => options = options.max_connections(16),
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| opening(e.to_string()))?;
        let arrivals = sqlite_file
            .as_ref()
            .map(|_| Arc::new(Arrivals::new(opts.serving)));
        let main_gate = sqlite_file
            .as_ref()
            .map(|_| Arc::new(tokio::sync::Mutex::new(())));
        let (appender, requests) = tokio::sync::mpsc::channel(4096);
        let writer = Arc::new(Writer::default());
        *lock(&writer.serving_lock) = serving_lock;
        let store = SqlStore {
            pool,
            backend,
            appender,
            writer: writer.clone(),
            arrivals: arrivals.clone(),
            main_gate: main_gate.clone(),
        };
        // The writer holds a store without a queue of its own, so dropping every handle of the
        // store ends it.
        let writer_store = SqlStore {
            pool: store.pool.clone(),
            backend,
            appender: tokio::sync::mpsc::channel(1).0,
            writer: writer.clone(),
            arrivals: arrivals.clone(),
            main_gate: main_gate.clone(),
        };
        if let (Some(file), Some(arrivals)) = (&sqlite_file, &arrivals)
            && arrivals.serving
        {
            let merger = Merger::start(
                file.clone(),
                arrivals.clone(),
                main_gate.clone(),
                opts.merge_every,
            )?;
            *lock(&writer.merger) = Some(merger);
        }
        let task = tokio::spawn(crate::chat::append_writer(
            writer_store,
            requests,
            sqlite_file,
        ));
        *lock(&writer.task) = Some(task);
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Finish the writes already queued, refuse new ones ("the append writer has stopped"), let
    /// the writer's own connection go, merge what SQLite's arrivals file holds, then close every
    /// connection.
    pub async fn close(&self) {
        self.writer.stop.notify_one();
        let task = lock(&self.writer.task).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the append writer ended abnormally");
        }
        // After the writer: its last batches are merged too, and the arrivals file is left
        // empty.
        let merger = lock(&self.writer.merger).take();
        if let Some(merger) = merger {
            merger.stop().await;
        }
        self.pool.close().await;
        // Another process may serve the database from now on.
        drop(lock(&self.writer.serving_lock).take());
    }

    /// A write transaction on a pooled connection (see `Backend::begin_write`), through the main
    /// file's gate on SQLite.
    pub(crate) async fn begin_write(&self) -> StoreResult<WriteTx> {
        let gate = self.gate().await;
        let tx = self
            .pool
            .begin_with(self.backend.begin_write())
            .await
            .map_err(db)?;
        Ok(WriteTx { tx, _gate: gate })
    }

    /// SQLite: the main file's gate (see `main_gate`), held until the guard is dropped; for a
    /// write outside `begin_write`. PostgreSQL has none: its writers queue in the server.
    pub(crate) async fn gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.main_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        }
    }

    async fn departments_of(
        &self,
        tenant: TenantId,
        user: Option<UserId>,
    ) -> StoreResult<HashMap<UserId, Vec<DepartmentId>>> {
        let rows = match user {
            Some(u) => sqlx::query("SELECT user_id, department_id FROM user_departments WHERE tenant_id = $1 AND user_id = $2 ORDER BY department_id")
                .bind(tenant.to_string())
                .bind(u.to_string())
                .fetch_all(&self.pool)
                .await,
            None => sqlx::query("SELECT user_id, department_id FROM user_departments WHERE tenant_id = $1 ORDER BY department_id")
                .bind(tenant.to_string())
                .fetch_all(&self.pool)
                .await,
        }
        .map_err(db)?;
        let mut map: HashMap<UserId, Vec<DepartmentId>> = HashMap::new();
        for r in &rows {
            map.entry(id(r, "user_id")?)
                .or_default()
                .push(id(r, "department_id")?);
        }
        Ok(map)
    }

    async fn one_user(
        &self,
        tenant: TenantId,
        row: Option<AnyRow>,
    ) -> StoreResult<Option<UserRecord>> {
        let Some(row) = row else { return Ok(None) };
        let uid: UserId = id(&row, "id")?;
        let mut depts = self.departments_of(tenant, Some(uid)).await?;
        user_row(&row, depts.remove(&uid).unwrap_or_default()).map(Some)
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn migrate(&self) -> StoreResult<Vec<i64>> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS parley_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let mut applied = vec![];
        for m in MIGRATIONS {
            let mut tx = self.begin_write().await?;
            if self.backend == Backend::Postgres {
                // Nodes starting together take turns; the loser then sees the version applied.
                sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(7210501)) AS l")
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            let done = sqlx::query("SELECT version FROM parley_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?;
            if done.is_some() {
                continue;
            }
            let sql = match self.backend {
                Backend::Sqlite => m.sqlite,
                Backend::Postgres => m.postgres,
            };
            for statement in statements(sql) {
                sqlx::query(&statement)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO parley_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            applied.push(m.version);
        }
        Ok(applied)
    }

    async fn ready(&self) -> StoreResult<bool> {
        // Ready when exactly the migrations this build knows are applied: none missing (a gap
        // left by a failed or hand-edited upgrade), none newer (a schema from a later build).
        let rows = sqlx::query("SELECT version FROM parley_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await;
        match rows {
            Ok(rows) => {
                let applied = rows
                    .iter()
                    .map(|r| r.try_get::<i64, _>("version"))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                Ok(applied.into_iter().eq(MIGRATIONS.iter().map(|m| m.version)))
            }
            // No migrations table yet: reachable, not ready.
            Err(sqlx::Error::Database(_)) => Ok(false),
            Err(e) => Err(db(e)),
        }
    }

    async fn create_tenant(
        &self,
        t: &TenantRecord,
        key: &TenantKeyRecord,
        admin: &UserRecord,
        audit: &[AuditEvent],
    ) -> StoreResult<()> {
        let origins =
            serde_json::to_string(&t.allowed_origins).map_err(|_| corrupt("allowed_origins"))?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenants (id, slug, name_ct, site_key, allowed_origins, created_at, audit_seq, audit_head) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(t.id.to_string())
        .bind(t.slug.clone())
        .bind(t.name_ct.clone())
        .bind(t.site_key.clone())
        .bind(origins)
        .bind(t.created_at.0)
        .bind(GENESIS_HASH.to_vec())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_write(e, "slug"))?;
        sqlx::query("INSERT INTO tenant_keys (tenant_id, key_id, master_key_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(key.tenant.to_string())
            .bind(key.key_id)
            .bind(key.master_key_id.clone())
            .bind(key.wrapped.clone())
            .bind(key.created_at.0)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        insert_user(&mut tx, admin).await?;
        for e in audit {
            append_audit_tx(&mut tx, e).await?;
        }
        tx.commit().await.map_err(db)
    }

    async fn tenant(&self, tenant: TenantId) -> StoreResult<Option<TenantRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(tenant.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(tenant_row)
        .transpose()
    }

    async fn tenant_by_slug(&self, slug: &str) -> StoreResult<Option<TenantRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1"
        ))
        .bind(slug.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(tenant_row)
        .transpose()
    }

    async fn tenant_by_site_key(&self, site_key: &str) -> StoreResult<Option<TenantRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE site_key = $1"
        ))
        .bind(site_key.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(tenant_row)
        .transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(tenant_row)
        .collect()
    }

    async fn update_tenant(
        &self,
        tenant: TenantId,
        name_ct: Option<Vec<u8>>,
        allowed_origins: Option<Vec<String>>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if let Some(name_ct) = name_ct {
            let r = sqlx::query("UPDATE tenants SET name_ct = $1 WHERE id = $2")
                .bind(name_ct)
                .bind(tenant.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        if let Some(origins) = allowed_origins {
            let origins =
                serde_json::to_string(&origins).map_err(|_| corrupt("allowed_origins"))?;
            sqlx::query("UPDATE tenants SET allowed_origins = $1 WHERE id = $2")
                .bind(origins)
                .bind(tenant.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn tenant_keys(&self, tenant: TenantId) -> StoreResult<Vec<TenantKeyRecord>> {
        sqlx::query("SELECT tenant_id, key_id, master_key_id, wrapped, created_at FROM tenant_keys WHERE tenant_id = $1 ORDER BY key_id")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(key_row)
            .collect()
    }

    async fn all_tenant_keys(&self) -> StoreResult<Vec<TenantKeyRecord>> {
        sqlx::query("SELECT tenant_id, key_id, master_key_id, wrapped, created_at FROM tenant_keys ORDER BY tenant_id, key_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(key_row)
            .collect()
    }

    async fn rewrap_tenant_keys(
        &self,
        tenant: TenantId,
        keys: &[TenantKeyRecord],
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        for k in keys {
            let r = sqlx::query("UPDATE tenant_keys SET master_key_id = $1, wrapped = $2 WHERE tenant_id = $3 AND key_id = $4")
                .bind(k.master_key_id.clone())
                .bind(k.wrapped.clone())
                .bind(tenant.to_string())
                .bind(k.key_id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            if r.rows_affected() != 1 {
                return Err(StoreError::NotFound);
            }
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn create_department(
        &self,
        tenant: TenantId,
        d: &DepartmentRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO departments (tenant_id, id, name, name_key, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(tenant.to_string())
            .bind(d.id.to_string())
            .bind(d.name.clone())
            .bind(d.name.to_lowercase())
            .bind(d.created_at.0)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_write(e, "department_name"))?;
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn rename_department(
        &self,
        tenant: TenantId,
        dept: DepartmentId,
        name: &str,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE departments SET name = $1, name_key = $2 WHERE tenant_id = $3 AND id = $4",
        )
        .bind(name.to_owned())
        .bind(name.to_lowercase())
        .bind(tenant.to_string())
        .bind(dept.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_write(e, "department_name"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn list_departments(&self, tenant: TenantId) -> StoreResult<Vec<DepartmentRecord>> {
        sqlx::query("SELECT tenant_id, id, name, created_at FROM departments WHERE tenant_id = $1 ORDER BY name_key, id")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(department_row)
            .collect()
    }

    async fn create_user(
        &self,
        tenant: TenantId,
        user: &UserRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        if user.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.begin_write().await?;
        insert_user(&mut tx, user).await?;
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn user(&self, tenant: TenantId, uid: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        self.one_user(tenant, row).await
    }

    async fn user_by_email_index(
        &self,
        tenant: TenantId,
        index: &[u8],
    ) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND email_index = $2"
        ))
        .bind(tenant.to_string())
        .bind(index.to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        self.one_user(tenant, row).await
    }

    async fn list_users(&self, tenant: TenantId) -> StoreResult<Vec<UserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut depts = self.departments_of(tenant, None).await?;
        rows.iter()
            .map(|r| {
                let uid: UserId = id(r, "id")?;
                user_row(r, depts.remove(&uid).unwrap_or_default())
            })
            .collect()
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        uid: UserId,
        c: &UserChanges,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        let mut user = user_row(&row, vec![])?;
        if let Some(v) = &c.display_name_ct {
            user.display_name_ct = v.clone();
        }
        if let Some(v) = c.role {
            user.role = v;
        }
        if let Some(v) = c.capacity {
            user.capacity = v;
        }
        if let Some(v) = c.disabled {
            user.disabled = v;
        }
        sqlx::query(
            "UPDATE users SET display_name_ct = $1, role = $2, capacity = $3, disabled = $4, updated_at = $5 \
             WHERE tenant_id = $6 AND id = $7",
        )
        .bind(user.display_name_ct)
        .bind(user.role.as_str())
        .bind(user.capacity)
        .bind(flag(user.disabled))
        .bind(at.0)
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        if let Some(depts) = &c.departments {
            sqlx::query("DELETE FROM user_departments WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant.to_string())
                .bind(uid.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            insert_user_departments(&mut tx, tenant, uid, depts).await?;
        }
        if user.disabled {
            sqlx::query("DELETE FROM sessions WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant.to_string())
                .bind(uid.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn set_password(
        &self,
        tenant: TenantId,
        uid: UserId,
        c: &PasswordChange<'_>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("UPDATE users SET password_hash = $1, must_change_password = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5")
            .bind(c.password_hash.to_owned())
            .bind(flag(c.must_change))
            .bind(c.at.0)
            .bind(tenant.to_string())
            .bind(uid.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "DELETE FROM sessions WHERE tenant_id = $1 AND user_id = $2 AND token_hash <> $3",
        )
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .bind(c.keep_session.unwrap_or_default().to_vec())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn create_session(
        &self,
        tenant: TenantId,
        s: &SessionRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        if s.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, tenant_id, user_id, created_at, last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(s.token_hash.clone())
        .bind(tenant.to_string())
        .bind(s.user.to_string())
        .bind(s.created_at.0)
        .bind(s.last_seen_at.0)
        .bind(s.expires_at.0)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_write(e, "session"))?;
        append_audit_tx(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn session(&self, token_hash: &[u8]) -> StoreResult<Option<SessionRecord>> {
        sqlx::query("SELECT token_hash, tenant_id, user_id, created_at, last_seen_at, expires_at FROM sessions WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(session_row)
            .transpose()
    }

    async fn touch_session(
        &self,
        tenant: TenantId,
        token_hash: &[u8],
        seen: Timestamp,
        expires: Timestamp,
    ) -> StoreResult<()> {
        let _gate = self.gate().await;
        sqlx::query("UPDATE sessions SET last_seen_at = $1, expires_at = $2 WHERE tenant_id = $3 AND token_hash = $4")
            .bind(seen.0)
            .bind(expires.0)
            .bind(tenant.to_string())
            .bind(token_hash.to_vec())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn delete_session(
        &self,
        tenant: TenantId,
        token_hash: &[u8],
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM sessions WHERE tenant_id = $1 AND token_hash = $2")
            .bind(tenant.to_string())
            .bind(token_hash.to_vec())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        if let Some(a) = audit {
            append_audit_tx(&mut tx, a).await?;
        }
        tx.commit().await.map_err(db)
    }

    async fn append_audit(&self, tenant: TenantId, event: &AuditEvent) -> StoreResult<()> {
        if event.tenant != tenant {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.begin_write().await?;
        append_audit_tx(&mut tx, event).await?;
        tx.commit().await.map_err(db)
    }

    async fn audit_events(
        &self,
        tenant: TenantId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"))
            .bind(tenant.to_string())
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(audit_row)
            .collect()
    }

    async fn recent_audit_events(
        &self,
        tenant: TenantId,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2"))
            .bind(tenant.to_string())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(audit_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On SQLite every write transaction of the process queues at the main file's gate: while
    /// the gate is held (as the merge holds it), a writer waits there, and writers go in the
    /// order they asked.
    #[tokio::test]
    async fn sqlite_writers_queue_at_the_gate_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let held = store.gate().await.expect("SQLite has a gate");
        let order = Arc::new(std::sync::Mutex::new(vec![]));
        let mut writers = vec![];
        for n in 0..3 {
            let (s, order) = (store.clone(), order.clone());
            writers.push(tokio::spawn(async move {
                let tx = s.begin_write().await.unwrap();
                lock(&order).push(n);
                tx.commit().await.unwrap();
            }));
            // Each asks after the one before.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            lock(&order).is_empty(),
            "nobody writes while the gate is held"
        );
        drop(held);
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(*lock(&order), vec![0, 1, 2]);
        store.close().await;
    }
}
