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
use parley_core::conversation::VisitorConnection;
use parley_core::store::{Appended, StoreError, StoreResult};
use std::path::PathBuf;
use tokio::sync::oneshot;

/// A batch for the thread, and where to send it back with its outcome.
type Job = (
    Vec<Write>,
    oneshot::Sender<(Vec<Write>, StoreResult<Vec<Done>>)>,
);

/// Whether a batch can run here: plain messages and heartbeats only.
pub(crate) fn takes(batch: &[Write]) -> bool {
    batch.iter().all(Write::is_plain)
}

/// The thread and its connection, started with the first batch it gets.
pub(crate) struct Thread {
    jobs: std::sync::mpsc::Sender<Job>,
    handle: std::thread::JoinHandle<()>,
}

impl Thread {
    fn start(path: PathBuf) -> StoreResult<Thread> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("parley-sqlite-writer".into())
            .spawn(move || run(path, rx))
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
    path: &std::path::Path,
    batch: &mut Vec<Write>,
) -> StoreResult<Vec<Done>> {
    let t = match thread {
        Some(t) => t,
        None => thread.insert(Thread::start(path.to_owned())?),
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
/// lets go of it.
fn run(path: PathBuf, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut conn: Option<rusqlite::Connection> = None;
    for (batch, reply) in jobs {
        let outcome = match conn.take().map_or_else(|| open(&path), Ok) {
            Ok(c) => {
                let outcome = commit_batch(&c, &batch);
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
    }
}

/// The writer's connection: the pool's settings (`sql::SQLITE_PRAGMAS`: WAL, synchronous=FULL,
/// foreign keys, no automatic checkpoints) and the writer's page cache.
fn open(path: &std::path::Path) -> StoreResult<rusqlite::Connection> {
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

/// One transaction for the batch, committed once. As in `chat::commit_batch`, a refusal is
/// answered alone and writes nothing; a failed statement fails the batch.
fn commit_batch(c: &rusqlite::Connection, batch: &[Write]) -> StoreResult<Vec<Done>> {
    c.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
    let mut done = Vec::with_capacity(batch.len());
    for w in batch {
        done.push(match w {
            Write::Append(r) => Done::Appended(append(c, r)?),
            Write::Touch(t) => Done::Touched(Ok(touch(c, t)?)),
        });
    }
    c.execute_batch("COMMIT").map_err(db)?;
    Ok(done)
}

/// `chat::append_message` for this connection: the same read, the same decision, the same insert.
fn append(c: &rusqlite::Connection, r: &AppendRequest) -> StoreResult<StoreResult<Appended>> {
    let (tenant, cid) = (r.tenant.to_string(), r.conversation.to_string());
    let read = {
        let mut st = c
            .prepare_cached(concat!(
                "SELECT c.status, c.visitor_id, c.agent_id, ",
                sqlite_last_seq!(),
                ", e.seq, e.at FROM conversations c LEFT JOIN conversation_events e \
                 ON e.tenant_id = c.tenant_id AND e.conversation_id = c.id AND e.client_msg_id = ?3 \
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
        PlainRead {
            status: row.get(0).map_err(db)?,
            visitor: visitor.parse().map_err(|_| corrupt("visitor_id"))?,
            agent: agent
                .map(|a| a.parse().map_err(|_| corrupt("agent_id")))
                .transpose()?,
            last_seq: row.get(3).map_err(db)?,
            earlier,
        }
    };
    let seq = match decide_plain(&read, r) {
        Plain::Answer(a) => return Ok(a),
        Plain::Insert(seq) => seq,
    };
    let body_ct = r.body.as_ref().map(|seal| seal(seq));
    let e = &r.event;
    c.prepare_cached(
        "INSERT INTO conversation_events (tenant_id, conversation_id, seq, kind, at, author, \
         client_msg_id, body_ct, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(db)?
    .execute(rusqlite::params![
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
    Ok(Ok(Appended {
        seq,
        at: e.at,
        duplicate: false,
    }))
}

/// `chat::touch_in_tx` for this connection.
fn touch(c: &rusqlite::Connection, r: &TouchRequest) -> StoreResult<Option<VisitorConnection>> {
    let (tenant, cid, visitor) = (
        r.tenant.to_string(),
        r.conversation.to_string(),
        r.visitor.to_string(),
    );
    let stamped = c
        .prepare_cached(
            "UPDATE conversations SET visitor_seen_at = ?1 WHERE tenant_id = ?2 AND id = ?3 \
             AND visitor_id = ?4 AND status <> 'ended' AND visitor_state = 'connected'",
        )
        .map_err(db)?
        .execute(rusqlite::params![r.now.0, tenant, cid, visitor])
        .map_err(db)?;
    if stamped > 0 {
        return Ok(Some(VisitorConnection::Connected));
    }
    let mut st = c
        .prepare_cached(
            "SELECT visitor_state FROM conversations WHERE tenant_id = ?1 AND id = ?2 \
             AND visitor_id = ?3 AND status <> 'ended'",
        )
        .map_err(db)?;
    let mut rows = st
        .query(rusqlite::params![tenant, cid, visitor])
        .map_err(db)?;
    match rows.next().map_err(db)? {
        Some(row) => {
            let state: String = row.get(0).map_err(db)?;
            VisitorConnection::parse(&state)
                .map(Some)
                .ok_or_else(|| corrupt("visitor_state"))
        }
        None => Ok(None),
    }
}
