//! SQLite's arrivals file: plain messages commit to a database file of their own,
//! `<db>-arrivals` (attached as `arrivals` to every connection), and a merge thread moves them
//! into the chats' logs (`conversation_events` in the main file) once a second, in chat order.
//!
//! Why: a message inserted straight into the main file lands on its own chat's leaf of the log's
//! B-tree, so a commit of a few messages to a few chats rewrites a 4 KiB page per message, and the
//! checkpoint copies each again: 15-17 KB reached the disk per message. Appended to a small
//! table in a file of its own, the messages of a commit share a page: about half the bytes, and
//! ack p99 at 6,000-8,000 messages a second halved (docs/BENCHMARKS.md). The merge writes the same
//! rows into the log once a second, sorted by chat, on its own connection; the writer never waits
//! for it, since the two files have a write lock each.
//!
//! How the two files stay one log:
//! - **Generations.** `arrivals.state.gen` is the generation being written; the writer reads it
//!   under the arrivals file's write lock, stamps each row with it, and puts generation `g` in
//!   table `events_{g % 2}`.
//! - **A merge** (`cycle`): raise `gen` to `n` (under the same lock, so every batch of an older
//!   generation has committed); in one transaction of the main file, copy every row with
//!   `merged < gen < n` into `conversation_events` and set `main.arrivals_merged.merged = n - 1`;
//!   then empty `events_{(n - 1) % 2}`, which only ever holds generations up to `n - 1`.
//! - **Reads** count an arrivals row only while its `gen > merged` (`merged` read in the same
//!   statement as the main file's rows), so no row is seen twice. The files are two databases
//!   with a snapshot each: a read that needs both takes the arrivals snapshot first, then the
//!   main one. A row it misses in the first was then merged before the second began (emptying
//!   follows the merge's commit), and one it finds in both is counted once, by the mark.
//! - **Heads** (`Heads`): the last seq the writer gave each chat whose rows may still be in the
//!   arrivals file, with its generation. The next seq, and a chat's `last_seq`, is the larger of
//!   the log's last entry and the head, so nothing scans the arrivals file for a chat; a chat
//!   with no head has nothing there to read. Only the writer thread drops heads, at the start of
//!   a batch, and only those at or below the mark *its own snapshot* of the main file shows: a
//!   head dropped by the merge itself could vanish between the writer's read of the log (from a
//!   snapshot before the merge) and its look at the heads, and the writer would give a seq
//!   twice (a store test caught exactly that).
//! - **One serving process.** The writer's heads and the merge live in one process, so only
//!   one process may write the arrivals file: the store that serves chats takes an exclusive
//!   lock (`<db>-arrivals.lock`) and a second one is refused. A store that does not serve (the
//!   command-line verbs beside a running server) reads the arrivals file in every read of a
//!   chat's events, never merges, and refuses chat writes.
//! - **Heartbeats** are kept in memory (`Stamps`) until the next merge writes them; reads fold
//!   them in, as they do the heads (`Pending`). A crash loses the last second of them, which
//!   only makes a visitor look that much longer silent.
//! - **A crash** leaves rows in the arrivals file; opening the store merges them before anything
//!   else runs (`prepare`), and the mark makes a merge that was cut off half-way safe to redo.
//!   The generation only moves past the mark by one or two (a merge closes a new generation
//!   only once the last closed one is merged), so a file whose generation is further ahead with
//!   rows to merge does not belong to this database (one restored without the other) and is
//!   refused; one at or behind the mark (the arrivals file copied before the database) starts
//!   again just past it, so that no new row is taken for merged.

use parley_core::conversation::VisitorConnection;
use parley_core::store::{ConversationRecord, StoreError, StoreResult};
use parley_core::{ConversationId, TenantId, Timestamp, VisitorId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the merge runs unless the store is told otherwise (`SqlOptions`).
pub(crate) const MERGE_EVERY: Duration = Duration::from_secs(1);

/// The main file's gate (`SqlStore::main_gate`).
pub(crate) type Gate = Arc<tokio::sync::Mutex<()>>;

/// The layout of the arrivals file this build writes (`PRAGMA user_version`).
const VERSION: i64 = 1;

/// The arrivals file's tables: the generation being written, and one table per parity of it.
/// The client's id is unique per chat here as in the log, and the writer's duplicate check looks
/// it up; nothing else is indexed, so a row is one append to the table's last page and one entry
/// at the end of its index (client ids are time-ordered).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS state (gen INTEGER NOT NULL);
INSERT INTO state (gen) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM state);
CREATE TABLE IF NOT EXISTS events_0 (gen INTEGER NOT NULL, tenant_id TEXT NOT NULL, \
 conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL, \
 author TEXT NOT NULL, client_msg_id TEXT, body_ct BLOB, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_0_client_msg_id ON events_0 (client_msg_id, tenant_id, conversation_id);
CREATE TABLE IF NOT EXISTS events_1 (gen INTEGER NOT NULL, tenant_id TEXT NOT NULL, \
 conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL, \
 author TEXT NOT NULL, client_msg_id TEXT, body_ct BLOB, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_1_client_msg_id ON events_1 (client_msg_id, tenant_id, conversation_id);
";

/// The settings of the attached file on every connection, after `ATTACH`: a full fsync on every
/// commit, as for the main file, and the same cap on the size its write-ahead log is cut back to.
/// (WAL mode belongs to the file and is set when it is made.)
pub(crate) const ATTACHED_PRAGMAS: &[&str] = &[
    "PRAGMA arrivals.synchronous = FULL",
    "PRAGMA arrivals.journal_size_limit = 67108864",
];

/// The statement that attaches the arrivals file, with its path bound as the one parameter.
pub(crate) const ATTACH: &str = "ATTACH DATABASE ?1 AS arrivals";

/// The arrivals file of the database at `main`.
pub(crate) fn file_of(main: &Path) -> PathBuf {
    let mut p = main.as_os_str().to_owned();
    p.push("-arrivals");
    p.into()
}

/// The arrivals file's path as SQLite takes it.
pub(crate) fn file_name(main: &Path) -> StoreResult<String> {
    file_of(main)
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Backend("the database path is not valid UTF-8".into()))
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Attach the arrivals file to `c`, a connection to the main file.
pub(crate) fn attach(c: &rusqlite::Connection, main: &Path) -> StoreResult<()> {
    c.execute(ATTACH, [file_name(main)?]).map_err(db)?;
    for pragma in ATTACHED_PRAGMAS {
        c.execute_batch(pragma).map_err(db)?;
    }
    let synchronous: i64 = c
        .query_row("PRAGMA arrivals.synchronous", [], |r| r.get(0))
        .map_err(db)?;
    if synchronous < 2 {
        return Err(StoreError::Backend(
            "the arrivals file's connection is not synchronous = FULL".into(),
        ));
    }
    Ok(())
}

/// The lock file that the store serving the database at `main` holds.
fn lock_file_of(main: &Path) -> PathBuf {
    let mut p = main.as_os_str().to_owned();
    p.push("-arrivals.lock");
    p.into()
}

/// Take the database's serving lock (see the module's notes), held until the store closes.
pub(crate) fn take_lock(main: &Path) -> StoreResult<std::fs::File> {
    let path = lock_file_of(main);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(|e| {
        StoreError::Backend(format!("cannot open the lock file {}: {e}", path.display()))
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "another Parley process is serving the database {} (it holds {}): stop it before \
             starting another; one SQLite database is served by one process, and several nodes \
             share a PostgreSQL database",
            main.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Before the store opens its pool: make the arrivals file (or check the one there), and, for
/// the store that serves (`serving`, holding the lock), bring its generation in line with the
/// database's mark and merge what a crash left in it, so that every row in it from then on was
/// written by this process's writer and has a head.
pub(crate) fn prepare(main: &Path, serving: bool) -> StoreResult<()> {
    let opened = |e: StoreError| StoreError::Backend(format!("cannot open the database: {e}"));
    {
        let c = rusqlite::Connection::open(file_of(main))
            .map_err(db)
            .map_err(opened)?;
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version > VERSION {
            return Err(StoreError::Backend(format!(
                "the arrivals file {} was written by a later build of Parley (layout {version}, \
                 this build knows {VERSION}): run that build, which merges it into the database",
                file_of(main).display()
            )));
        }
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(db)?;
        c.execute_batch(&format!(
            "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; BEGIN IMMEDIATE; {TABLES} \
             PRAGMA user_version = {VERSION}; COMMIT"
        ))
        .map_err(db)?;
    }
    if !serving {
        return Ok(());
    }
    let c = crate::sqlite_writer::open(main).map_err(opened)?;
    attach(&c, main)?;
    let marked: bool = c
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_master WHERE type = 'table' \
             AND name = 'arrivals_merged')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if !marked {
        // Not migrated yet (a new database, or one from before migration 6): nothing was ever
        // written to the arrivals file, unless a later build's file was put beside an old one.
        if has_rows(&c)? {
            return Err(StoreError::Backend(format!(
                "the arrivals file {} holds messages but the database has no arrivals_merged \
                 table: it belongs to another database",
                file_of(main).display()
            )));
        }
        return Ok(());
    }
    reconcile(&c, main)?;
    // Two cycles: the first merges every generation left and empties one table, the second
    // empties the other.
    let none = Arrivals::default();
    cycle(&c, &none, None)?;
    cycle(&c, &none, None)?;
    Ok(())
}

/// Bring the arrivals file's generation in line with the database's mark (see the module's
/// notes): refuse a file ahead of it with rows to merge, restart one that is behind it or
/// ahead with nothing to merge just past the mark.
fn reconcile(c: &rusqlite::Connection, main: &Path) -> StoreResult<()> {
    let (generation, mark, live): (i64, i64, bool) = c
        .query_row(
            "SELECT s.gen, m.merged, EXISTS (SELECT 1 FROM arrivals.events_0 WHERE gen > m.merged) \
             OR EXISTS (SELECT 1 FROM arrivals.events_1 WHERE gen > m.merged) \
             FROM arrivals.state s, main.arrivals_merged m",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(db)?;
    if generation > mark && generation <= mark + 2 {
        return Ok(());
    }
    if live {
        return Err(StoreError::Backend(format!(
            "the arrivals file {} holds messages of generation {generation}, but the database {} \
             has merged only up to {mark}: the two files come from different copies (one was \
             restored without the other). Put back the database and the arrivals file that were \
             backed up together (docs/OPERATIONS.md)",
            file_of(main).display(),
            main.display()
        )));
    }
    tracing::warn!(
        generation,
        merged = mark,
        "the arrivals file's generation did not follow the database's mark (a restored copy?); \
         it starts again just past the mark, and nothing in it was waiting to be merged"
    );
    c.execute("UPDATE arrivals.state SET gen = ?1", [mark + 1])
        .map_err(db)?;
    Ok(())
}

/// What the writer thread, the merge thread and the store's reads share.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    /// This store serves chats (it holds the lock, writes the arrivals file and merges it); one
    /// that does not knows no heads and refuses chat writes.
    pub(crate) serving: bool,
    /// Per chat, the last seq the writer gave it and that seq's generation, for the chats whose
    /// rows may not be merged yet (see the module's notes).
    heads: Mutex<HashMap<Chat, (i64, i64)>>,
    /// Heartbeats waiting for the next merge: per chat, its visitor's latest. A stamp stays here
    /// until a merge has committed it.
    stamps: Mutex<HashMap<Chat, (VisitorId, i64)>>,
    /// Moves whenever a head or a stamp is let go (see `fold`).
    epoch: AtomicU64,
    /// The arrivals file's write-ahead log has grown past `chat::CATCH_UP_FRAMES`: the writer
    /// thread checkpoints it between batches until it is all copied back (as the writer does for
    /// the main file, see `chat::checkpoint_loop`).
    pub(crate) catch_up: AtomicBool,
}

type Chat = (TenantId, ConversationId);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Arrivals {
    /// The store for a SQLite database: `serving`, or a reader beside the process that serves.
    pub(crate) fn new(serving: bool) -> Arrivals {
        Arrivals {
            serving,
            ..Arrivals::default()
        }
    }

    /// The last seq the arrivals file may hold for the chat: its head, none when it has no rows
    /// there, and any seq at all for a store that does not serve (it knows no heads).
    pub(crate) fn head(&self, tenant: TenantId, cid: ConversationId) -> Option<i64> {
        if self.serving {
            lock(&self.heads).get(&(tenant, cid)).map(|(seq, _)| *seq)
        } else {
            Some(i64::MAX)
        }
    }

    /// After a commit of generation `generation`: the seqs it gave.
    pub(crate) fn record_heads(&self, generation: i64, given: &HashMap<Chat, i64>) {
        let mut heads = lock(&self.heads);
        for (chat, seq) in given {
            let head = heads.entry(*chat).or_insert((*seq, generation));
            if *seq >= head.0 {
                *head = (*seq, generation);
            }
        }
    }

    /// Once a snapshot of the main file shows every generation up to `merged` merged: only the
    /// writer thread calls this, with the mark of the snapshot it reads the log from (see the
    /// module's notes).
    pub(crate) fn prune_heads(&self, merged: i64) {
        let mut heads = lock(&self.heads);
        let before = heads.len();
        heads.retain(|_, (_, generation)| *generation > merged);
        if heads.len() < before {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// After a commit: the heartbeats it took.
    pub(crate) fn record_stamps(&self, stamps: impl IntoIterator<Item = (Chat, (VisitorId, i64))>) {
        let mut map = lock(&self.stamps);
        for (chat, (visitor, at)) in stamps {
            let seen = map.entry(chat).or_insert((visitor, at));
            if at >= seen.1 {
                *seen = (visitor, at);
            }
        }
    }

    fn stamps(&self) -> HashMap<Chat, (VisitorId, i64)> {
        lock(&self.stamps).clone()
    }

    /// After a merge has committed `merged`: drop what it wrote (a later stamp stays).
    fn forget_stamps(&self, merged: &HashMap<Chat, (VisitorId, i64)>) {
        let mut map = lock(&self.stamps);
        let before = map.len();
        for (chat, (_, at)) in merged {
            if map.get(chat).is_some_and(|now| now.1 <= *at) {
                map.remove(chat);
            }
        }
        if map.len() < before {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Where the heads and stamps stand, taken before a read that `fold`s them in.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Fold the heads and stamps into what a read of the main file found, if none was let go
    /// since `epoch` (taken before the read); `None` when one was, and the read is made again.
    ///
    /// A head or stamp is let go only once the main file shows what it stood for, but maybe not
    /// the snapshot the read saw; one added since is newer than the read, and counting it only
    /// makes the answer fresher. Folding after the read looks up only the chats it found,
    /// where taking every head and stamp before it copied both maps on every read.
    pub(crate) fn fold<T>(&self, epoch: u64, f: impl FnOnce(&View<'_>) -> T) -> Option<T> {
        let heads = lock(&self.heads);
        let stamps = lock(&self.stamps);
        (self.epoch.load(Ordering::SeqCst) == epoch).then(|| {
            f(&View {
                heads: &heads,
                stamps: &stamps,
            })
        })
    }

    /// Fold them in as they are now, for a read made under the main file's write lock (a batch
    /// with a state change): no merge can commit during it, so none was let go that it needs.
    pub(crate) fn fold_locked<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> T {
        let heads = lock(&self.heads);
        let stamps = lock(&self.stamps);
        f(&View {
            heads: &heads,
            stamps: &stamps,
        })
    }
}

/// The heads and stamps, for folding into what a read of the main file found (`Arrivals::fold`).
pub(crate) struct View<'a> {
    heads: &'a HashMap<Chat, (i64, i64)>,
    stamps: &'a HashMap<Chat, (VisitorId, i64)>,
}

impl View<'_> {
    /// The chat's last seq, counting its rows in the arrivals file.
    pub(crate) fn last_seq(&self, tenant: TenantId, cid: ConversationId, logged: i64) -> i64 {
        self.heads
            .get(&(tenant, cid))
            .map_or(logged, |(head, _)| (*head).max(logged))
    }

    /// When the chat's visitor was last seen, counting a heartbeat not merged yet (written, as
    /// the merge writes it, only while the visitor is connected).
    pub(crate) fn seen_at(
        &self,
        tenant: TenantId,
        cid: ConversationId,
        visitor: VisitorId,
        state: VisitorConnection,
        stored: Timestamp,
    ) -> Timestamp {
        match self.stamps.get(&(tenant, cid)) {
            Some((v, at)) if *v == visitor && state == VisitorConnection::Connected => {
                Timestamp(stored.0.max(*at))
            }
            _ => stored,
        }
    }

    /// Both, for a chat's record.
    pub(crate) fn apply(&self, rec: &mut ConversationRecord) {
        rec.last_seq = self.last_seq(rec.tenant, rec.id, rec.last_seq);
        rec.visitor_seen_at = self.seen_at(
            rec.tenant,
            rec.id,
            rec.visitor,
            rec.visitor_state,
            rec.visitor_seen_at,
        );
    }
}

fn has_rows(c: &rusqlite::Connection) -> StoreResult<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM arrivals.events_0) OR EXISTS (SELECT 1 FROM arrivals.events_1)",
        [],
        |r| r.get(0),
    )
    .map_err(db)
}

/// One merge (see the module's notes). Does nothing when there is nothing to move.
fn cycle(
    c: &rusqlite::Connection,
    arrivals: &Arrivals,
    gate: Option<&tokio::sync::Mutex<()>>,
) -> StoreResult<()> {
    let rows = has_rows(c)?;
    let stamps = arrivals.stamps();
    if !rows && stamps.is_empty() {
        return Ok(());
    }
    // In line with the store's other writers of the main file (see `SqlStore::main_gate`).
    let queued = std::time::Instant::now();
    let entered = gate.map(tokio::sync::Mutex::blocking_lock);
    let started = std::time::Instant::now();
    let moved = move_rows(c, rows, &stamps);
    if moved.is_err() {
        // Tried again with the next merge; the stamps are still waiting.
        let _ = c.execute_batch("ROLLBACK");
    }
    drop(entered);
    let moved = moved?;
    let held = started.elapsed();
    arrivals.forget_stamps(&stamps);
    if let Some(merged) = moved.merged {
        // Only generations up to `merged` were ever written to this table: the writer writes
        // the one after it (the other parity), and only this merge opens the next.
        c.execute_batch(if merged % 2 == 0 {
            "DELETE FROM arrivals.events_0"
        } else {
            "DELETE FROM arrivals.events_1"
        })
        .map_err(db)?;
        // The merge is the main file's busiest writer now: copy its pages back while nothing
        // else writes, so that the main log can start over at the next merge.
        c.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(db)?;
    }
    tracing::debug!(
        rows = moved.rows,
        heartbeats = stamps.len(),
        gate_wait_ms = started.duration_since(queued).as_secs_f64() * 1e3,
        main_lock_ms = held.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "merged the arrivals file"
    );
    Ok(())
}

/// What a merge moved: the generation it merged up to (none when it moved heartbeats only) and
/// how many rows.
struct Moved {
    merged: Option<i64>,
    rows: usize,
}

/// Close the generation being written and move every closed one into the log, with the
/// heartbeats, in one transaction of the main file. Returns the generation merged up to.
///
/// A generation is closed only when the one before it is merged (the generation is one past the
/// mark): after a merge that failed once its generation was closed, the next merges that one
/// and closes no other. So the generation is never more than two past the mark.
fn move_rows(
    c: &rusqlite::Connection,
    rows: bool,
    stamps: &HashMap<Chat, (VisitorId, i64)>,
) -> StoreResult<Moved> {
    let next = if rows {
        c.execute_batch(
            "BEGIN; UPDATE arrivals.state SET gen = gen + 1 \
             WHERE gen = (SELECT merged FROM main.arrivals_merged) + 1; COMMIT",
        )
        .map_err(db)?;
        Some(
            c.query_row("SELECT gen FROM arrivals.state", [], |r| r.get::<_, i64>(0))
                .map_err(db)?,
        )
    } else {
        None
    };
    c.execute_batch("BEGIN").map_err(db)?;
    let mut rows = 0;
    if let Some(next) = next {
        // The first statement writes the main file, so the transaction holds its write lock
        // from the start and reads the mark as it is.
        rows = c.prepare_cached(
            "INSERT INTO main.conversation_events (tenant_id, conversation_id, seq, kind, at, \
             author, client_msg_id, body_ct, data) \
             SELECT tenant_id, conversation_id, seq, kind, at, author, client_msg_id, body_ct, data \
             FROM (SELECT gen, tenant_id, conversation_id, seq, kind, at, author, client_msg_id, \
             body_ct, data FROM arrivals.events_0 UNION ALL SELECT gen, tenant_id, \
             conversation_id, seq, kind, at, author, client_msg_id, body_ct, data \
             FROM arrivals.events_1) \
             WHERE gen > (SELECT merged FROM main.arrivals_merged) AND gen < ?1 \
             ORDER BY tenant_id, conversation_id, seq",
        )
        .map_err(db)?
        .execute([next])
        .map_err(db)?;
        // Never backwards: a mark that fell back would have merged rows counted twice.
        c.prepare_cached("UPDATE main.arrivals_merged SET merged = MAX(merged, ?1)")
            .map_err(db)?
            .execute([next - 1])
            .map_err(db)?;
    }
    for ((tenant, cid), (visitor, at)) in stamps {
        c.prepare_cached(
            "UPDATE main.conversations SET visitor_seen_at = MAX(visitor_seen_at, ?1) \
             WHERE tenant_id = ?2 AND id = ?3 AND visitor_id = ?4 AND status <> 'ended' \
             AND visitor_state = 'connected'",
        )
        .map_err(db)?
        .execute(rusqlite::params![
            at,
            tenant.to_string(),
            cid.to_string(),
            visitor.to_string()
        ])
        .map_err(db)?;
    }
    c.execute_batch("COMMIT").map_err(db)?;
    Ok(Moved {
        merged: next.map(|n| n - 1),
        rows,
    })
}

/// The merge thread, started with the store and stopped by `close` after the writer.
#[derive(Debug)]
pub(crate) struct Merger {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: std::thread::JoinHandle<()>,
}

impl Merger {
    pub(crate) fn start(
        main: PathBuf,
        arrivals: Arc<Arrivals>,
        gate: Option<Gate>,
        every: Duration,
    ) -> StoreResult<Merger> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let told = stop.clone();
        let handle = std::thread::Builder::new()
            .name("parley-sqlite-merge".into())
            .spawn(move || run(&main, &arrivals, gate.as_deref(), every, &told))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite merge: {e}")))?;
        Ok(Merger { stop, handle })
    }

    /// One last merge, so that a clean stop leaves the arrivals file empty, then the end.
    pub(crate) async fn stop(self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        let handle = self.handle;
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
}

fn run(
    main: &Path,
    arrivals: &Arrivals,
    gate: Option<&tokio::sync::Mutex<()>>,
    every: Duration,
    stop: &(Mutex<bool>, Condvar),
) {
    let mut conn: Option<rusqlite::Connection> = None;
    loop {
        let stopping = {
            let told = lock(&stop.0);
            let (told, _) = stop
                .1
                .wait_timeout_while(told, every, |told| !*told)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *told
        };
        let opened = conn.take().map_or_else(
            || {
                let c = crate::sqlite_writer::open(main)?;
                attach(&c, main)?;
                Ok(c)
            },
            Ok,
        );
        match opened.and_then(|c| cycle(&c, arrivals, gate).map(|()| c)) {
            Ok(c) => conn = Some(c),
            // The rows stay where they are, counted by every read, and the next merge tries
            // again on a fresh connection.
            Err(e) => {
                tracing::warn!(error = %e, "merging the arrivals file into the chats' logs failed")
            }
        }
        if stopping {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Chat {
        (
            TenantId::from_uuid(uuid::Uuid::now_v7()),
            ConversationId::from_uuid(uuid::Uuid::now_v7()),
        )
    }

    /// A read folds the heads in after it has read: a head let go in between (the writer saw
    /// its rows merged, maybe after the read's snapshot) sends the read round again; a head
    /// added in between only makes the answer fresher.
    #[test]
    fn a_head_let_go_during_a_read_sends_it_round_again() {
        let arrivals = Arrivals::new(true);
        let (tenant, cid) = chat();
        arrivals.record_heads(1, &HashMap::from([((tenant, cid), 7)]));
        let before = arrivals.epoch();
        arrivals.prune_heads(0);
        assert_eq!(
            arrivals.fold(before, |v| v.last_seq(tenant, cid, 3)),
            Some(7),
            "nothing was let go: the head counts"
        );
        arrivals.prune_heads(1);
        assert_eq!(arrivals.fold(before, |v| v.last_seq(tenant, cid, 3)), None);
        let now = arrivals.epoch();
        assert_eq!(arrivals.fold(now, |v| v.last_seq(tenant, cid, 7)), Some(7));
        arrivals.record_heads(2, &HashMap::from([((tenant, cid), 9)]));
        assert_eq!(arrivals.fold(now, |v| v.last_seq(tenant, cid, 7)), Some(9));
    }

    /// The same for a heartbeat the merge has written: between the read and the fold the visitor
    /// could otherwise look silent for as long as one merge.
    #[test]
    fn a_stamp_written_during_a_read_sends_it_round_again() {
        let arrivals = Arrivals::new(true);
        let (tenant, cid) = chat();
        let visitor = VisitorId::from_uuid(uuid::Uuid::now_v7());
        arrivals.record_stamps([((tenant, cid), (visitor, 500))]);
        let seen = |v: &View<'_>| {
            v.seen_at(
                tenant,
                cid,
                visitor,
                VisitorConnection::Connected,
                Timestamp(100),
            )
        };
        let before = arrivals.epoch();
        assert_eq!(arrivals.fold(before, seen), Some(Timestamp(500)));
        let merged = arrivals.stamps();
        arrivals.record_stamps([((tenant, cid), (visitor, 600))]);
        arrivals.forget_stamps(&merged);
        assert_eq!(
            arrivals.fold(before, seen),
            Some(Timestamp(600)),
            "a later stamp stays, and nothing was let go"
        );
        let merged = arrivals.stamps();
        arrivals.forget_stamps(&merged);
        assert_eq!(arrivals.fold(before, seen), None);
        assert_eq!(arrivals.fold(arrivals.epoch(), seen), Some(Timestamp(100)));
    }
}
