//! SQLite's hot path: batches of plain messages and heartbeats, run on a thread of the writer's
//! own with a synchronous connection.
//!
//! Through sqlx every statement is a round trip to sqlx's SQLite thread: the runtime thread hands
//! it over, sleeps, and is woken with the answer. With the server on one core that is two context
//! switches per statement, four per message, and a profile at 5,000 messages a second put 30% of
//! the server's samples in switching tasks. Here the writer hands a whole batch over once and is
//! woken once: about 13% less server CPU per message (docs/BENCHMARKS.md).
//!
//! Only batches made of plain messages and heartbeats come here; a batch with a state change
//! (an assignment, a transfer, an end) still runs through sqlx (`chat::commit_batch`). Batches run
//! one at a time, so the two connections never write at once. The connection links the same
//! SQLite library as sqlx's (rusqlite over the same `libsqlite3-sys`).

use crate::chat::{AppendRequest, Done, Plain, PlainRead, TouchRequest, Write, decide_plain};
use crate::sql::corrupt;
use crate::sqlite_arrivals::Arrivals;
use parley_core::conversation::VisitorConnection;
use parley_core::store::{Appended, StoreError, StoreResult};
use parley_core::{ConversationId, TenantId, VisitorId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// A batch for the thread, and where to send it back with its outcome.
type Job = (
    Vec<Write>,
    oneshot::Sender<(Vec<Write>, StoreResult<Vec<Done>>)>,
);

/// The thread and its connection, started with the first batch it gets.
pub(crate) struct Thread {
    jobs: std::sync::mpsc::Sender<Job>,
    handle: std::thread::JoinHandle<()>,
}

impl Thread {
    fn start(path: PathBuf, arrivals: Arc<Arrivals>) -> StoreResult<Thread> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("parley-sqlite-writer".into())
            .spawn(move || run(&path, &arrivals, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Thread { jobs, handle })
    }

    /// Let the connection go and wait until it has (on `close`).
    pub(crate) async fn stop(self) {
        drop(self.jobs);
        let handle = self.handle;
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
}

/// Run `batch` on the thread (started if need be) and hand it back with its outcome. If the
/// thread has gone (a panic in it), the batch is lost with it and its writers are told the writer
/// stopped; the next batch starts a new thread.
pub(crate) async fn commit(
    thread: &mut Option<Thread>,
    path: &Path,
    arrivals: &Arc<Arrivals>,
    batch: &mut Vec<Write>,
) -> StoreResult<Vec<Done>> {
    // Plain messages and heartbeats only: the rest goes to the main file (`chat::MainLane`).
    debug_assert!(batch.iter().all(Write::is_plain));
    let t = match thread {
        Some(t) => t,
        None => thread.insert(Thread::start(path.to_owned(), arrivals.clone())?),
    };
    let (reply, answer) = oneshot::channel();
    if t.jobs.send((std::mem::take(batch), reply)).is_err() {
        *thread = None;
        return Err(gone());
    }
    match answer.await {
        Ok((b, outcome)) => {
            *batch = b;
            outcome
        }
        Err(_) => {
            *thread = None;
            Err(gone())
        }
    }
}

fn gone() -> StoreError {
    StoreError::Backend("the SQLite writer thread has stopped".into())
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The thread: open the connection (again after a failure) and run batches until the writer
/// lets go of it. Between batches it finishes the arrivals file's checkpoint when asked (see
/// `chat::checkpoint_loop`).
fn run(path: &Path, arrivals: &Arrivals, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut conn: Option<rusqlite::Connection> = None;
    for (batch, reply) in jobs {
        let opened = conn.take().map_or_else(
            || {
                let c = open(path)?;
                crate::sqlite_arrivals::attach(&c, path)?;
                Ok(c)
            },
            Ok,
        );
        let outcome = match opened {
            Ok(c) => {
                let outcome = commit_batch(&c, arrivals, &batch);
                // After a failure the connection is closed, which rolls back what the batch
                // wrote, and the next batch opens a fresh one.
                if outcome.is_ok() {
                    conn = Some(c);
                }
                outcome
            }
            Err(e) => Err(e),
        };
        let _ = reply.send((batch, outcome));
        if let Some(c) = &conn
            && arrivals.catch_up.load(Ordering::Relaxed)
        {
            match c.query_row("PRAGMA arrivals.wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) {
                Ok((0, log, copied)) if copied >= log => {
                    arrivals.catch_up.store(false, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checkpointing the arrivals file failed"),
            }
        }
    }
}

/// The writer's connection: the pool's settings (`sql::SQLITE_PRAGMAS`: WAL, synchronous=FULL,
/// foreign keys, no automatic checkpoints) and the writer's page cache.
pub(crate) fn open(path: &Path) -> StoreResult<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path).map_err(db)?;
    for pragma in crate::sql::SQLITE_PRAGMAS
        .iter()
        .chain([&crate::chat::WRITER_CACHE])
    {
        // Each PRAGMA may answer with a row (journal_mode does).
        c.query_row(pragma, [], |_| Ok(()))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(()),
                e => Err(e),
            })
            .map_err(db)?;
    }
    // Acknowledged means durable: refuse to write through a connection that would not fsync.
    let synchronous: i64 = c
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(db)?;
    if synchronous < 2 {
        return Err(StoreError::Backend(
            "the SQLite writer's connection is not synchronous = FULL".into(),
        ));
    }
    Ok(c)
}

/// One transaction for the batch, committed once, in the arrivals file. As in
/// `chat::commit_batch`, a refusal is answered alone and writes nothing; a failed statement fails
/// the batch. The heads and heartbeats it leaves are handed over only once it has committed.
fn commit_batch(
    c: &rusqlite::Connection,
    arrivals: &Arrivals,
    batch: &[Write],
) -> StoreResult<Vec<Done>> {
    // Deferred, and opened by a statement that writes nothing in the arrivals file: the
    // transaction holds that file's write lock from the start and never the main file's, which
    // the merge may be holding (see `sqlite_arrivals`). The generation is read under that lock,
    // and the merge mark in the same statement, which takes the snapshot of the main file that
    // every read of the batch sees: the heads that snapshot shows merged go now, and no others
    // (a head is what the snapshot's log may not show yet).
    c.execute_batch("BEGIN; DELETE FROM arrivals.state WHERE 0")
        .map_err(db)?;
    let (generation, merged): (i64, i64) = c
        .prepare_cached("SELECT s.gen, m.merged FROM arrivals.state s, main.arrivals_merged m")
        .map_err(db)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db)?;
    arrivals.prune_heads(merged);
    let mut given = HashMap::new();
    let mut stamps = Vec::new();
    let mut done = Vec::with_capacity(batch.len());
    for w in batch {
        done.push(match w {
            Write::Append(r) => Done::Appended(append(c, arrivals, generation, &mut given, r)?),
            Write::Touch(t) => Done::Touched(Ok(touch(c, t, &mut stamps)?)),
        });
    }
    c.execute_batch("COMMIT").map_err(db)?;
    arrivals.record_heads(generation, &given);
    arrivals.record_stamps(stamps);
    Ok(done)
}

/// `chat::append_message` for this connection: the same checks from one read, the same decision;
/// the next seq follows the larger of the chat's log and its head (and this batch's own), and the
/// row goes to the generation's table of the arrivals file.
fn append(
    c: &rusqlite::Connection,
    arrivals: &Arrivals,
    generation: i64,
    given: &mut HashMap<(TenantId, ConversationId), i64>,
    r: &AppendRequest,
) -> StoreResult<StoreResult<Appended>> {
    let (tenant, cid) = (r.tenant.to_string(), r.conversation.to_string());
    let read = {
        let mut st = c
            .prepare_cached(concat!(
                "SELECT c.status, c.visitor_id, c.agent_id, ",
                sqlite_last_seq!(),
                ", COALESCE(e.seq, a0.seq, a1.seq), COALESCE(e.at, a0.at, a1.at) \
                 FROM main.conversations c LEFT JOIN main.conversation_events e \
                 ON e.client_msg_id = ?3 AND e.tenant_id = c.tenant_id AND e.conversation_id = c.id \
                 LEFT JOIN arrivals.events_0 a0 \
                 ON a0.client_msg_id = ?3 AND a0.tenant_id = c.tenant_id AND a0.conversation_id = c.id \
                 LEFT JOIN arrivals.events_1 a1 \
                 ON a1.client_msg_id = ?3 AND a1.tenant_id = c.tenant_id AND a1.conversation_id = c.id \
                 WHERE c.tenant_id = ?1 AND c.id = ?2"
            ))
            .map_err(db)?;
        let mut rows = st
            .query(rusqlite::params![tenant, cid, r.event.client_msg_id])
            .map_err(db)?;
        let Some(row) = rows.next().map_err(db)? else {
            return Ok(Err(StoreError::NotFound));
        };
        let earlier = match (
            row.get::<_, Option<i64>>(4).map_err(db)?,
            row.get::<_, Option<i64>>(5).map_err(db)?,
        ) {
            (Some(seq), Some(at)) => Some((seq, at)),
            _ => None,
        };
        let visitor: String = row.get(1).map_err(db)?;
        let agent: Option<String> = row.get(2).map_err(db)?;
        let chat = (r.tenant, r.conversation);
        let logged: i64 = row.get(3).map_err(db)?;
        PlainRead {
            status: row.get(0).map_err(db)?,
            visitor: visitor.parse().map_err(|_| corrupt("visitor_id"))?,
            agent: agent
                .map(|a| a.parse().map_err(|_| corrupt("agent_id")))
                .transpose()?,
            last_seq: [
                Some(logged),
                arrivals.head(chat.0, chat.1),
                given.get(&chat).copied(),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(logged),
            earlier,
        }
    };
    let seq = match decide_plain(&read, r) {
        Plain::Answer(a) => return Ok(a),
        Plain::Insert(seq) => seq,
    };
    let body_ct = r.body.as_ref().map(|seal| seal(seq));
    let e = &r.event;
    c.prepare_cached(if generation % 2 == 0 {
        "INSERT INTO arrivals.events_0 (gen, tenant_id, conversation_id, seq, kind, at, author, \
         client_msg_id, body_ct, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    } else {
        "INSERT INTO arrivals.events_1 (gen, tenant_id, conversation_id, seq, kind, at, author, \
         client_msg_id, body_ct, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    })
    .map_err(db)?
    .execute(rusqlite::params![
        generation,
        tenant,
        cid,
        seq,
        e.kind.as_str(),
        e.at.0,
        e.author,
        e.client_msg_id,
        body_ct,
        e.data
    ])
    .map_err(db)?;
    given.insert((r.tenant, r.conversation), seq);
    Ok(Ok(Appended {
        seq,
        at: e.at,
        duplicate: false,
    }))
}

/// A heartbeat for the next merge: the chat, its visitor, when.
type Stamp = ((TenantId, ConversationId), (VisitorId, i64));

/// `chat::touch_in_tx` for this connection: the visitor's state is read here, and a connected
/// visitor's stamp is written by the next merge (see `sqlite_arrivals`).
fn touch(
    c: &rusqlite::Connection,
    r: &TouchRequest,
    stamps: &mut Vec<Stamp>,
) -> StoreResult<Option<VisitorConnection>> {
    let mut st = c
        .prepare_cached(
            "SELECT visitor_state FROM main.conversations WHERE tenant_id = ?1 AND id = ?2 \
             AND visitor_id = ?3 AND status <> 'ended'",
        )
        .map_err(db)?;
    let mut rows = st
        .query(rusqlite::params![
            r.tenant.to_string(),
            r.conversation.to_string(),
            r.visitor.to_string()
        ])
        .map_err(db)?;
    let Some(row) = rows.next().map_err(db)? else {
        return Ok(None);
    };
    let state: String = row.get(0).map_err(db)?;
    let state = VisitorConnection::parse(&state).ok_or_else(|| corrupt("visitor_state"))?;
    if state == VisitorConnection::Connected {
        stamps.push(((r.tenant, r.conversation), (r.visitor, r.now.0)));
    }
    Ok(Some(state))
}
