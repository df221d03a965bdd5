#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test
//! The store conformance suite: every scenario runs against SQLite (a temp file) and PostgreSQL
//! (a database created for the test and dropped after it, on the server named by
//! `PARLEY_TEST_PG_URL`, which `scripts/test` starts privately). Both always run.

use parley_core::audit::{AuditActor, AuditEvent};
use parley_core::ids::AuditEventId;
use parley_core::store::*;
use parley_core::{DepartmentId, Role, TenantId, Timestamp, UserId};
use parley_store::SqlStore;
use sqlx::Connection;
use std::future::Future;

fn uid() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// A migrated SQLite store in `dir` (`t.db`), and its URL.
async fn sqlite_store(dir: &std::path::Path) -> (String, SqlStore) {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let store = SqlStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (url, store)
}

async fn with_sqlite<F, Fut>(f: F)
where
    F: FnOnce(SqlStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = sqlite_store(dir.path()).await;
    f(store.clone()).await;
    store.close().await;
}

fn pg_admin_url() -> String {
    std::env::var("PARLEY_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("PARLEY_TEST_PG_URL is not set: run the tests through scripts/test, which starts a private PostgreSQL")
    })
}

async fn with_postgres<F, Fut>(f: F)
where
    F: FnOnce(SqlStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = pg_admin_url();
    let name = format!("parley_t_{}", uid().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let store = SqlStore::connect(&format!("{base}/{name}")).await.unwrap();
    store.migrate().await.unwrap();
    f(store.clone()).await;
    store.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

macro_rules! scenario {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::with_sqlite(super::scenarios::$name).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::with_postgres(super::scenarios::$name).await;
            }
        }
    };
}

scenario!(migrations_are_idempotent_and_ready);
scenario!(tenants_and_keys);
scenario!(departments_are_tenant_scoped);
scenario!(users_are_tenant_scoped_and_unique_per_tenant);
scenario!(disabling_a_user_ends_their_sessions);
scenario!(password_change_keeps_only_the_current_session);
scenario!(audit_chain_is_gapless_under_concurrency);
scenario!(audit_event_for_unknown_tenant_is_refused);
scenario!(conversation_log_is_gapless_and_idempotent);
scenario!(racing_assignments_never_exceed_capacity_or_double_assign);
scenario!(offers_lapse_and_count_as_load);
scenario!(transfer_requeue_and_end_move_slots);
scenario!(visitors_offline_messages_and_isolation);
scenario!(visitor_liveness_moves_once_per_state);
scenario!(appends_committed_together_fail_alone);
scenario!(commit_hooks_run_in_sequence_order_before_the_answer);
scenario!(closing_finishes_queued_writes_then_refuses);

/// SQLite only: under writes that never pause, the write-ahead log still starts over, so it stays
/// a few MiB instead of growing with everything written since the server started.
#[tokio::test]
async fn sqlite_log_starts_over_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = sqlite_store(dir.path()).await;
    // Plain messages commit to the arrivals file: its log is the one written all the time (the
    // main file's is written by the merge, once a second, and checkpointed after each).
    let wal = dir.path().join("t.db-arrivals-wal");
    scenarios::steady_writes_keep_the_log_small(store.clone(), wal).await;
    store.close().await;
}

/// SQLite only: what a crash left in the arrivals file (a row written but not merged, and one
/// merged but not yet emptied away) is merged when the store opens, each row once, and the next
/// message follows it.
#[tokio::test]
async fn sqlite_arrivals_left_by_a_crash_are_merged_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 3).await;
    let visitor = visitor_of(&store, tenant, conv).await;
    store.close().await;
    let arrivals = format!("{}-arrivals", dir.path().join("t.db").display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("ATTACH DATABASE $1 AS arrivals")
        .bind(&arrivals)
        .execute(&mut raw)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM arrivals.events_0) + (SELECT COUNT(*) FROM arrivals.events_1)",
    )
    .fetch_one(&mut raw)
    .await
    .unwrap();
    assert_eq!(left, 0, "a clean close leaves the arrivals file empty");
    let open: i64 = sqlx::query_scalar("SELECT gen FROM arrivals.state")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    let merged: i64 = sqlx::query_scalar("SELECT merged FROM arrivals_merged")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert!(merged < open, "merged {merged}, writing {open}");
    // Merged already (its generation is at the mark) but still there: a copy of seq 4's row.
    // Written, not merged: seq 5 in the open generation.
    let insert = |table: &str| {
        format!(
            "INSERT INTO arrivals.{table} (gen, tenant_id, conversation_id, seq, kind, at, author, \
             client_msg_id, body_ct, data) SELECT $1, tenant_id, conversation_id, $2, kind, at, \
             author, $3, body_ct, data FROM conversation_events WHERE tenant_id = $4 \
             AND conversation_id = $5 AND seq = 4"
        )
    };
    let row4: String = sqlx::query_scalar(
        "SELECT client_msg_id FROM conversation_events WHERE tenant_id = $1 AND conversation_id = $2 AND seq = 4",
    )
    .bind(tenant.to_string())
    .bind(conv.to_string())
    .fetch_one(&mut raw)
    .await
    .unwrap();
    for (table, generation, seq, client) in [
        (format!("events_{}", merged % 2), merged, 4, row4.clone()),
        (
            format!("events_{}", open % 2),
            open,
            5,
            "left-by-a-crash".to_owned(),
        ),
    ] {
        sqlx::query(&insert(&table))
            .bind(generation)
            .bind(seq)
            .bind(client)
            .bind(tenant.to_string())
            .bind(conv.to_string())
            .execute(&mut raw)
            .await
            .unwrap();
    }
    raw.close().await.unwrap();

    let store = SqlStore::connect(&url).await.unwrap();
    let seqs = |events: &[EventRecord]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let events = store.events(tenant, conv, 0, 100).await.unwrap();
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5], "each row once");
    assert_eq!(events[4].client_msg_id.as_deref(), Some("left-by-a-crash"));
    let rec = store.conversation(tenant, conv).await.unwrap().unwrap();
    assert_eq!(rec.last_seq, 5);
    // A resend of the merged row is a duplicate; the next message follows the crash's.
    let again = scenarios::message_with_id(&store, tenant, conv, visitor, "left-by-a-crash").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, 5);
    assert_eq!(
        scenarios::one_more_message(&store, tenant, conv, visitor).await,
        6
    );
    store.close().await;
}

/// SQLite only: while merges run back to back, a reader paging through a busy chat sees every
/// event once and in order, and never past the chat's `last_seq`; resends are told apart
/// wherever their first copy is. State changes, which go straight into the main file, are mixed
/// in with the messages, which go to the arrivals file. (With the merge dropping heads itself,
/// the writer gave a seq twice about once in fifteen runs, and the merge then failed for good.)
#[tokio::test]
async fn sqlite_reads_are_gapless_while_arrivals_merge() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let opts = parley_store::SqlOptions {
        merge_every: std::time::Duration::from_millis(3),
        ..Default::default()
    };
    let store = SqlStore::connect_with(&url, opts).await.unwrap();
    store.migrate().await.unwrap();
    let (tenant, conv) = scenarios::chat_with_messages(&store, 0).await;
    let visitor = visitor_of(&store, tenant, conv).await;
    const N: i64 = 600;
    let writer = {
        let s = store.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let id = format!("m{i}");
                let a = scenarios::message_with_id(&s, tenant, conv, visitor, &id).await;
                assert!(!a.duplicate);
                if i % 7 == 0 {
                    // At once or after a merge: the first copy is found in either file.
                    let again = scenarios::message_with_id(&s, tenant, conv, visitor, &id).await;
                    assert_eq!((again.seq, again.duplicate), (a.seq, true));
                }
            }
        })
    };
    const TOGGLES: i64 = 60;
    let toggler = {
        let s = store.clone();
        tokio::spawn(async move {
            use parley_core::conversation::VisitorConnection::{Connected, Weak};
            for _ in 0..TOGGLES {
                for (from, to) in [(Connected, Weak), (Weak, Connected)] {
                    let kind = parley_core::conversation::EventKind::Connection;
                    let event = scenarios::new_event(kind, None);
                    let t = Transition::VisitorState { from, to };
                    s.append_event(tenant, conv, &event, None, &t)
                        .await
                        .unwrap();
                }
            }
        })
    };
    let last = 1 + N + 2 * TOGGLES; // `started`, the messages, the state changes
    let mut seen = 1;
    while seen < last {
        let done = writer.is_finished();
        let page = store.events(tenant, conv, seen, 50).await.unwrap();
        for e in &page {
            seen += 1;
            assert_eq!(e.seq, seen, "no gap, no repeat");
        }
        let rec = store.conversation(tenant, conv).await.unwrap().unwrap();
        assert!(
            rec.last_seq >= seen,
            "last_seq {} behind {seen} read",
            rec.last_seq
        );
        if done && toggler.is_finished() && page.is_empty() {
            // The writer ended (or failed) and the log still ends short of it.
            let rec = store.conversation(tenant, conv).await.unwrap().unwrap();
            eprintln!("stuck at {seen}; last_seq {}", rec.last_seq);
            writer.await.unwrap();
            panic!("every message was acknowledged, but the reader stopped at seq {seen}");
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    toggler.await.unwrap();
    store.close().await;
}

/// The visitor of a chat.
async fn visitor_of(
    store: &SqlStore,
    tenant: TenantId,
    conv: parley_core::ConversationId,
) -> parley_core::VisitorId {
    store
        .conversation(tenant, conv)
        .await
        .unwrap()
        .unwrap()
        .visitor
}

/// SQLite only: a state change waiting for the main file's write lock (held here by another
/// connection, as the merge of the arrivals file holds it) holds up no other chat's messages; a
/// later message of its own chat waits for it and follows it in the log.
#[tokio::test]
async fn sqlite_a_waiting_state_change_holds_up_only_its_own_chat() {
    use parley_core::conversation::VisitorConnection::{Connected, Weak};
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, convs) = scenarios::chats(&store, 2).await;
    let (a, b) = (convs[0], convs[1]);
    let (va, vb) = (
        visitor_of(&store, tenant, a).await,
        visitor_of(&store, tenant, b).await,
    );
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();

    let weak = {
        let s = store.clone();
        tokio::spawn(async move {
            let kind = parley_core::conversation::EventKind::Connection;
            let to = Transition::VisitorState {
                from: Connected,
                to: Weak,
            };
            s.append_event(tenant, a, &scenarios::new_event(kind, None), None, &to)
                .await
                .unwrap()
                .seq
        })
    };
    // The state change is queued before the messages (this runtime has one thread: the task
    // runs up to its wait for the answer).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let after = {
        let s = store.clone();
        tokio::spawn(async move { scenarios::one_more_message(&s, tenant, a, va).await })
    };
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        scenarios::one_more_message(&store, tenant, b, vb),
    )
    .await
    .expect("a message of another chat is not held up by the waiting state change");
    assert_eq!(other, 2);
    assert!(!weak.is_finished(), "the state change waits for the lock");
    assert!(
        !after.is_finished(),
        "a later message of its chat waits behind it"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(weak.await.unwrap(), 2);
    assert_eq!(after.await.unwrap(), 3, "and follows it");
    let kinds: Vec<String> = store
        .events(tenant, a, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    assert_eq!(kinds, ["started", "connection", "message"]);
    holder.close().await.unwrap();
    store.close().await;
}

/// A raw connection to the SQLite database at `url`, with its arrivals file attached.
async fn raw_with_arrivals(url: &str) -> sqlx::SqliteConnection {
    let mut raw = sqlx::SqliteConnection::connect(url).await.unwrap();
    let file = url.strip_prefix("sqlite://").unwrap();
    sqlx::query("ATTACH DATABASE $1 AS arrivals")
        .bind(format!("{file}-arrivals"))
        .execute(&mut raw)
        .await
        .unwrap();
    raw
}

/// The arrivals file's generation and the database's merge mark.
async fn generation_and_mark(raw: &mut sqlx::SqliteConnection) -> (i64, i64) {
    sqlx::query_as("SELECT s.gen, m.merged FROM arrivals.state s, arrivals_merged m")
        .fetch_one(raw)
        .await
        .unwrap()
}

/// SQLite only: a read never shows a gap in a chat's log. Made here by hand: seq 4 sits in the
/// arrivals file without a head (as for an instant after its commit) and seq 5 is already in the
/// main file (as a state change written right after it would be); the read gives 1-3 and stops.
#[tokio::test]
async fn sqlite_reads_stop_before_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 2).await;
    let mut raw = raw_with_arrivals(&url).await;
    let (open, _) = generation_and_mark(&mut raw).await;
    for (table, seq, client) in [
        (format!("arrivals.events_{}", open % 2), 4, "in-arrivals"),
        ("main.conversation_events".to_owned(), 5, "in-main"),
    ] {
        let generation = if table.starts_with("arrivals") {
            "gen, "
        } else {
            ""
        };
        let value = if table.starts_with("arrivals") {
            "$4, "
        } else {
            ""
        };
        let written = sqlx::query(&format!(
            "INSERT INTO {table} ({generation}tenant_id, conversation_id, seq, kind, at, author, \
             client_msg_id, body_ct, data) SELECT {value}tenant_id, conversation_id, $3, kind, at, \
             author, '{client}', body_ct, data FROM main.conversation_events \
             WHERE tenant_id = $1 AND conversation_id = $2 AND seq = 1"
        ))
        .bind(tenant.to_string())
        .bind(conv.to_string())
        .bind(seq)
        .bind(open)
        .execute(&mut raw)
        .await
        .unwrap();
        assert_eq!(written.rows_affected(), 1, "{table}");
    }
    let seqs: Vec<i64> = store
        .events(tenant, conv, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3], "the whole part before the gap");
    assert!(store.events(tenant, conv, 3, 100).await.unwrap().is_empty());
    raw.close().await.unwrap();
    store.close().await;
}

/// SQLite only: one process serves a database. A second serving store is refused while the first
/// is open; a store opened only to read (the command-line verbs) sees the messages still in the
/// arrivals file and refuses chat writes; once the first closes, another may serve.
#[tokio::test]
async fn sqlite_one_store_serves_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 3).await;
    let visitor = visitor_of(&store, tenant, conv).await;
    let second = SqlStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        second.contains("another Parley process is serving"),
        "{second}"
    );

    let reader = parley_store::SqlOptions {
        serving: false,
        ..Default::default()
    };
    let guest = SqlStore::connect_with(&url, reader.clone()).await.unwrap();
    let seqs = |events: &[EventRecord]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    // Written a moment ago, so not merged yet (the merge runs once a second).
    let mut raw = raw_with_arrivals(&url).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM arrivals.events_0) + (SELECT COUNT(*) FROM arrivals.events_1)",
    )
    .fetch_one(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();
    let events = guest.events(tenant, conv, 0, 100).await.unwrap();
    assert_eq!(
        seqs(&events),
        [1, 2, 3, 4],
        "{waiting} rows were in the arrivals file"
    );
    let refused = guest
        .append_event(
            tenant,
            conv,
            &scenarios::new_event(parley_core::conversation::EventKind::Message, Some("g")),
            None,
            &Transition::Message {
                from: MessageFrom::Visitor(visitor),
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("does not serve"), "{refused}");
    guest.close().await;

    store.close().await;
    let next = SqlStore::connect(&url).await.unwrap();
    assert_eq!(
        scenarios::one_more_message(&next, tenant, conv, visitor).await,
        5
    );
    next.close().await;
}

/// SQLite only: an arrivals file that does not follow the database's merge mark. One behind the
/// mark (copied before the database) starts again past it, so a new message is not taken for
/// merged and lost; one ahead of the mark with messages to merge (the database restored without
/// it) is refused with a message that says what to do.
#[tokio::test]
async fn sqlite_arrivals_from_another_copy_restart_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 2).await;
    let visitor = visitor_of(&store, tenant, conv).await;
    store.close().await;

    let mut raw = raw_with_arrivals(&url).await;
    let (_, mark) = generation_and_mark(&mut raw).await;
    assert!(mark >= 1, "the close merged");
    sqlx::query("UPDATE arrivals.state SET gen = $1")
        .bind(mark - 1)
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    let store = SqlStore::connect(&url).await.unwrap();
    assert_eq!(
        scenarios::one_more_message(&store, tenant, conv, visitor).await,
        4
    );
    store.close().await;
    let store = SqlStore::connect(&url).await.unwrap();
    let events = store.events(tenant, conv, 0, 100).await.unwrap();
    assert_eq!(
        events.len(),
        4,
        "the message written after the restart was merged"
    );
    store.close().await;

    let mut raw = raw_with_arrivals(&url).await;
    let (_, mark) = generation_and_mark(&mut raw).await;
    let ahead = mark + 5;
    sqlx::query(&format!(
        "INSERT INTO arrivals.events_{} (gen, tenant_id, conversation_id, seq, kind, at, author, \
         client_msg_id, body_ct, data) SELECT $1, tenant_id, conversation_id, 9, kind, at, \
         author, 'from-a-later-copy', body_ct, data FROM conversation_events \
         WHERE tenant_id = $2 AND conversation_id = $3 AND seq = 4",
        ahead % 2
    ))
    .bind(ahead)
    .bind(tenant.to_string())
    .bind(conv.to_string())
    .execute(&mut raw)
    .await
    .unwrap();
    sqlx::query("UPDATE arrivals.state SET gen = $1")
        .bind(ahead)
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    let refused = SqlStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        refused.contains("come from different copies") && refused.contains("OPERATIONS"),
        "{refused}"
    );
}

/// Ready means exactly this build's migrations are applied: a gap in them (a hand-edited or
/// half-restored table) or a version from a later build is not ready, though the latest version
/// is there in both cases.
#[tokio::test]
async fn sqlite_ready_needs_every_migration_and_no_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    assert!(store.ready().await.unwrap());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let ready_after = async |raw: &mut sqlx::SqliteConnection, sql: &str| {
        sqlx::query(sql).execute(&mut *raw).await.unwrap();
        store.ready().await.unwrap()
    };
    let gap = ready_after(&mut raw, "DELETE FROM parley_migrations WHERE version = 2").await;
    assert!(!gap, "migration 2 is missing");
    let restored = ready_after(
        &mut raw,
        "INSERT INTO parley_migrations (version, name, applied_at) VALUES (2, 'restored', 0)",
    )
    .await;
    assert!(restored, "every migration is there again");
    let newer = ready_after(
        &mut raw,
        "INSERT INTO parley_migrations (version, name, applied_at) VALUES (9999, 'later_build', 0)",
    )
    .await;
    assert!(!newer, "a schema from a later build");
    raw.close().await.unwrap();
    store.close().await;
}

/// SQLite only: migration 4 drops the chats' `last_seq` counter (the log is the counter there).
/// A database from before it, with chats in it, upgrades in place and every chat goes on from
/// its last event.
#[tokio::test]
async fn sqlite_upgrade_counts_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 2).await;
    store.close().await;
    // Put the database back as migration 3 left it: the counter there, and right.
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for sql in [
        "ALTER TABLE conversations ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0",
        "UPDATE conversations SET last_seq = 3",
        "DROP TABLE arrivals_merged",
        "DELETE FROM parley_migrations WHERE version >= 4",
    ] {
        sqlx::query(sql).execute(&mut raw).await.unwrap();
    }
    raw.close().await.unwrap();

    let store = SqlStore::connect(&url).await.unwrap();
    assert!(!store.ready().await.unwrap(), "migration 4 is pending");
    assert_eq!(store.migrate().await.unwrap(), vec![4, 5, 6]);
    let rec = store.conversation(tenant, conv).await.unwrap().unwrap();
    assert_eq!(rec.last_seq, 3, "started and two messages");
    let next = scenarios::one_more_message(&store, tenant, conv, rec.visitor).await;
    assert_eq!(next, 4);
    let seqs: Vec<i64> = store
        .events(tenant, conv, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    store.close().await;
}

/// SQLite only: migration 5 copies the log into a table keyed by `client_msg_id` first and loses
/// nothing: every event stays, the index leads with the client's id, and a resend of a stored
/// message is still answered as a duplicate with its seq.
#[tokio::test]
async fn sqlite_client_id_first_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 3).await;
    let before = store.events(tenant, conv, 0, 100).await.unwrap();
    let resend = before
        .iter()
        .find_map(|e| e.client_msg_id.clone().map(|id| (id, e.seq)))
        .unwrap();
    store.close().await;
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM parley_migrations WHERE version = 5")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let store = SqlStore::connect(&url).await.unwrap();
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    let after = store.events(tenant, conv, 0, 100).await.unwrap();
    let shape = |e: &[EventRecord]| {
        e.iter()
            .map(|e| (e.seq, e.client_msg_id.clone(), e.body_ct.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&after), shape(&before));
    let first: String = sqlx::query_scalar(
        "SELECT i.name FROM pragma_index_list('conversation_events') l, \
         pragma_index_info(l.name) i WHERE l.\"unique\" = 1 AND l.origin = 'u' AND i.seqno = 0",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(first, "client_msg_id");
    let visitor = visitor_of(&store, tenant, conv).await;
    let again = scenarios::message_with_id(&store, tenant, conv, visitor, &resend.0).await;
    assert!(again.duplicate);
    assert_eq!(again.seq, resend.1);
    store.close().await;
}

/// SQLite only: a database failure in a batch of plain messages (on the writer's thread) fails
/// that batch alone. Every writer in it is told, nothing of it is stored, and the writes after it
/// land as if nothing had happened. The failure is a trigger that refuses one event.
#[tokio::test]
async fn sqlite_failed_plain_batch_is_told_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = sqlite_store(dir.path()).await;
    let (tenant, conv) = scenarios::chat_with_messages(&store, 1).await;
    let visitor = visitor_of(&store, tenant, conv).await;
    // Plain messages commit to the arrivals file (see src/sqlite_arrivals.rs): the trigger goes
    // on both of its tables.
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("ATTACH DATABASE $1 AS arrivals")
        .bind(format!("{}-arrivals", dir.path().join("t.db").display()))
        .execute(&mut raw)
        .await
        .unwrap();
    for table in ["events_0", "events_1"] {
        sqlx::query(&format!(
            "CREATE TRIGGER arrivals.refuse_boom_{table} BEFORE INSERT ON {table} \
             WHEN NEW.data = '{{\"boom\":true}}' BEGIN SELECT RAISE(ABORT, 'boom'); END"
        ))
        .execute(&mut raw)
        .await
        .unwrap();
    }
    let before: std::collections::HashSet<String> = store
        .events(tenant, conv, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.client_msg_id.clone())
        .collect();
    // Queued together, most or all of them share the refused event's batch.
    let mut tasks = vec![];
    for i in 0..40 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = NewEvent {
                kind: parley_core::conversation::EventKind::Message,
                author: "visitor".into(),
                client_msg_id: Some(format!("m{i}")),
                data: if i == 20 { r#"{"boom":true}"# } else { "{}" }.into(),
                at: Timestamp(30),
            };
            let from = MessageFrom::Visitor(visitor);
            let r = s
                .append_event(tenant, conv, &e, None, &Transition::Message { from })
                .await;
            (format!("m{i}"), r)
        }));
    }
    let mut landed = before;
    let mut failed = vec![];
    for t in tasks {
        match t.await.unwrap() {
            (id, Ok(a)) => {
                assert!(!a.duplicate);
                landed.insert(id);
            }
            (id, Err(StoreError::Backend(_))) => failed.push(id),
            (id, Err(e)) => panic!("{id}: {e:?}"),
        }
    }
    assert!(
        failed.contains(&"m20".to_owned()),
        "the refused event's writer is told"
    );
    let events = store.events(tenant, conv, 0, 100).await.unwrap();
    let stored: std::collections::HashSet<String> = events
        .iter()
        .filter_map(|e| e.client_msg_id.clone())
        .collect();
    assert_eq!(stored, landed, "exactly what was acknowledged is stored");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless");
    // The writer goes on: the next message follows the log.
    let next = scenarios::one_more_message(&store, tenant, conv, visitor).await;
    assert_eq!(next, seqs.len() as i64 + 1);
    raw.close().await.unwrap();
    store.close().await;
}

fn event(tenant: TenantId, action: &'static str) -> AuditEvent {
    AuditEvent {
        id: AuditEventId::from_uuid(uid()),
        tenant,
        at: Timestamp(1_000),
        actor: AuditActor::Operator,
        action,
        target: None,
        ip: Some("127.0.0.1".into()),
        detail: "{}".into(),
    }
}

fn user(tenant: TenantId, email_index: &[u8], departments: Vec<DepartmentId>) -> UserRecord {
    UserRecord {
        id: UserId::from_uuid(uid()),
        tenant,
        email_ct: vec![1, 2, 3],
        email_index: email_index.to_vec(),
        display_name_ct: vec![4, 5, 6],
        role: Role::Agent,
        capacity: 3,
        password_hash: "$argon2id$x".into(),
        must_change_password: true,
        disabled: false,
        departments,
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    }
}

/// Creates a tenant with slug `slug` and an admin; returns (tenant, admin).
async fn tenant(store: &SqlStore, slug: &str) -> (TenantId, UserRecord) {
    let id = TenantId::from_uuid(uid());
    let t = TenantRecord {
        id,
        slug: slug.into(),
        name_ct: vec![9; 20],
        site_key: format!("site_{}", uid().simple()),
        allowed_origins: vec!["https://shop.example.com".into()],
        created_at: Timestamp(1),
        audit_seq: 0,
        audit_head: vec![0; 32],
    };
    let key = TenantKeyRecord {
        tenant: id,
        key_id: 1,
        master_key_id: "mk-a".into(),
        wrapped: vec![7; 60],
        created_at: Timestamp(1),
    };
    let mut admin = user(id, b"admin-index", vec![]);
    admin.role = Role::SiteAdmin;
    store
        .create_tenant(
            &t,
            &key,
            &admin,
            &[event(id, "tenant.created"), event(id, "user.created")],
        )
        .await
        .unwrap();
    (id, admin)
}

fn session(tenant: TenantId, user: UserId, token: &[u8]) -> SessionRecord {
    SessionRecord {
        token_hash: token.to_vec(),
        tenant,
        user,
        created_at: Timestamp(1),
        last_seen_at: Timestamp(1),
        expires_at: Timestamp(100),
    }
}

mod scenarios {
    use super::*;
    use parley_core::conversation::{
        AgentStatus, ConnectionPeriods, ConversationStatus, EventKind, VisitorConnection,
    };
    use parley_core::{ConversationId, OfflineMessageId, VisitorId};

    struct Chat {
        tenant: TenantId,
        dept: DepartmentId,
        agents: Vec<UserId>,
    }

    /// A tenant with one department and `n` online agents of capacity `capacity` in it.
    async fn chat_setup(store: &SqlStore, slug: &str, n: usize, capacity: i64) -> Chat {
        let (t, _) = tenant(store, slug).await;
        let dept = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            tenant: t,
            name: "Sales".into(),
            created_at: Timestamp(2),
        };
        store
            .create_department(t, &dept, &event(t, "department.created"))
            .await
            .unwrap();
        let mut agents = vec![];
        for i in 0..n {
            let mut u = user(t, format!("agent{i}").as_bytes(), vec![dept.id]);
            u.capacity = capacity;
            store
                .create_user(t, &u, &event(t, "user.created"))
                .await
                .unwrap();
            store
                .set_agent_status(t, u.id, AgentStatus::Online, Timestamp(10 + i as i64))
                .await
                .unwrap();
            agents.push(u.id);
        }
        Chat {
            tenant: t,
            dept: dept.id,
            agents,
        }
    }

    async fn new_conversation(store: &SqlStore, c: &Chat) -> ConversationId {
        let visitor = VisitorRecord {
            id: VisitorId::from_uuid(uid()),
            tenant: c.tenant,
            token_hash: uid().as_bytes().to_vec(),
            created_at: Timestamp(5),
            last_seen_at: Timestamp(5),
        };
        store.create_visitor(c.tenant, &visitor).await.unwrap();
        let conv = ConversationRecord {
            id: ConversationId::from_uuid(uid()),
            tenant: c.tenant,
            visitor: visitor.id,
            department: c.dept,
            status: ConversationStatus::Queued,
            agent: None,
            offered_to: None,
            offer_expires_at: None,
            declined_by: vec![],
            prechat_ct: vec![1, 2, 3],
            last_seq: 1,
            created_at: Timestamp(20),
            queued_at: Timestamp(20),
            ended_at: None,
            visitor_state: VisitorConnection::Connected,
            visitor_seen_at: Timestamp(20),
        };
        store
            .create_conversation(c.tenant, &conv, &new_event(EventKind::Started, None))
            .await
            .unwrap();
        conv.id
    }

    pub fn new_event(kind: EventKind, client: Option<&str>) -> NewEvent {
        NewEvent {
            kind,
            author: "visitor".into(),
            client_msg_id: client.map(str::to_owned),
            data: "{}".into(),
            at: Timestamp(30),
        }
    }

    pub async fn conversation_log_is_gapless_and_idempotent(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 2).await;
        let conv = new_conversation(&store, &c).await;
        let seal: parley_core::store::Sealer =
            std::sync::Arc::new(|seq: i64| format!("sealed-{seq}").into_bytes());
        let mut seqs = vec![];
        for i in 0..5 {
            let a = store
                .append_event(
                    c.tenant,
                    conv,
                    &new_event(EventKind::Message, Some(&format!("m{i}"))),
                    Some(seal.clone()),
                    &Transition::None,
                )
                .await
                .unwrap();
            assert!(!a.duplicate);
            seqs.push(a.seq);
        }
        assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
        // A resend with the same client id returns the original seq and writes nothing.
        let again = store
            .append_event(
                c.tenant,
                conv,
                &new_event(EventKind::Message, Some("m2")),
                Some(seal.clone()),
                &Transition::None,
            )
            .await
            .unwrap();
        assert_eq!((again.seq, again.duplicate), (4, true));
        let events = store.events(c.tenant, conv, 0, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(events[0].kind, EventKind::Started);
        assert_eq!(
            events[3].body_ct.as_deref(),
            Some(&b"sealed-4"[..]),
            "sealed with its own seq"
        );
        assert_eq!(
            store.events(c.tenant, conv, 4, 1).await.unwrap()[0].seq,
            5,
            "resume after a seq"
        );
        store
            .append_event(
                c.tenant,
                conv,
                &new_event(EventKind::Ended, None),
                None,
                &Transition::End,
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .append_event(
                    c.tenant,
                    conv,
                    &new_event(EventKind::Message, Some("late")),
                    Some(seal.clone()),
                    &Transition::None
                )
                .await,
            Err(StoreError::Conflict("conversation_ended"))
        ));
        assert!(matches!(
            store
                .append_event(
                    c.tenant,
                    ConversationId::from_uuid(uid()),
                    &new_event(EventKind::Message, None),
                    None,
                    &Transition::None
                )
                .await,
            Err(StoreError::NotFound)
        ));
        let conv = store.conversation(c.tenant, conv).await.unwrap().unwrap();
        assert_eq!((conv.status, conv.last_seq), (ConversationStatus::Ended, 7));
    }

    pub async fn racing_assignments_never_exceed_capacity_or_double_assign(store: SqlStore) {
        let c = chat_setup(&store, "acme", 3, 2).await;
        let mut convs = vec![];
        for _ in 0..12 {
            convs.push(new_conversation(&store, &c).await);
        }
        // Every agent tries to take every chat at once.
        let mut tasks = vec![];
        for conv in &convs {
            for agent in &c.agents {
                let (s, t, conv, agent) = (store.clone(), c.tenant, *conv, *agent);
                tasks.push(tokio::spawn(async move {
                    let e = NewEvent {
                        kind: EventKind::Assigned,
                        author: format!("agent:{agent}"),
                        client_msg_id: None,
                        data: "{}".into(),
                        at: Timestamp(40),
                    };
                    s.append_event(
                        t,
                        conv,
                        &e,
                        None,
                        &Transition::Assign {
                            agent,
                            require_offer: false,
                        },
                    )
                    .await
                    .map(|_| (conv, agent))
                }));
            }
        }
        let mut won = vec![];
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => won.push(w),
                Err(StoreError::Conflict("capacity" | "not_queued")) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(won.len(), 6, "3 agents x capacity 2");
        let mut per_conv = std::collections::HashMap::new();
        for (conv, agent) in &won {
            assert!(
                per_conv.insert(*conv, *agent).is_none(),
                "a chat assigned twice"
            );
        }
        let presence = store.presence(c.tenant).await.unwrap();
        for agent in &c.agents {
            let assigned = store
                .conversations_of_agent(c.tenant, *agent)
                .await
                .unwrap()
                .len();
            assert_eq!(assigned, 2);
            assert_eq!(
                presence
                    .iter()
                    .find(|p| p.user == *agent)
                    .unwrap()
                    .active_chats,
                2
            );
        }
        for conv in &convs {
            let events = store.events(c.tenant, *conv, 0, 100).await.unwrap();
            let assigned = events
                .iter()
                .filter(|e| e.kind == EventKind::Assigned)
                .count();
            assert_eq!(assigned, usize::from(per_conv.contains_key(conv)));
        }
        assert!(
            store
                .routing_candidates(c.tenant, c.dept)
                .await
                .unwrap()
                .iter()
                .all(|k| k.active_chats == k.capacity)
        );
    }

    pub async fn offers_lapse_and_count_as_load(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 1).await;
        let (a, conv) = (c.agents[0], new_conversation(&store, &c).await);
        let conv2 = new_conversation(&store, &c).await;
        assert!(
            store
                .offer(c.tenant, conv, a, Timestamp(100), Timestamp(130))
                .await
                .unwrap()
        );
        assert!(
            !store
                .offer(c.tenant, conv, a, Timestamp(110), Timestamp(140))
                .await
                .unwrap(),
            "already offered"
        );
        assert_eq!(
            store.routing_candidates(c.tenant, c.dept).await.unwrap()[0].active_chats,
            1,
            "an open offer is load"
        );
        assert!(
            store
                .lapsed_offers(Timestamp(120))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.lapsed_offers(Timestamp(131)).await.unwrap(),
            vec![(c.tenant, conv, a)]
        );
        assert!(store.decline_offer(c.tenant, conv, a).await.unwrap());
        assert!(!store.decline_offer(c.tenant, conv, a).await.unwrap());
        let rec = store.conversation(c.tenant, conv).await.unwrap().unwrap();
        assert_eq!((rec.offered_to, rec.declined_by), (None, vec![a]));
        // Accepting requires the offer to still be theirs.
        let e = NewEvent {
            kind: EventKind::Assigned,
            author: format!("agent:{a}"),
            client_msg_id: None,
            data: "{}".into(),
            at: Timestamp(150),
        };
        assert!(matches!(
            store
                .append_event(
                    c.tenant,
                    conv2,
                    &e,
                    None,
                    &Transition::Assign {
                        agent: a,
                        require_offer: true
                    }
                )
                .await,
            Err(StoreError::Conflict("not_queued"))
        ));
        assert!(
            store
                .offer(c.tenant, conv2, a, Timestamp(150), Timestamp(180))
                .await
                .unwrap()
        );
        store
            .append_event(
                c.tenant,
                conv2,
                &e,
                None,
                &Transition::Assign {
                    agent: a,
                    require_offer: true,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .conversations_by_status(c.tenant, ConversationStatus::Queued, Some(c.dept))
                .await
                .unwrap()
                .len(),
            1
        );
        // Going away keeps chats but stops new ones; status changes keep the count.
        store
            .set_agent_status(c.tenant, a, AgentStatus::Away, Timestamp(160))
            .await
            .unwrap();
        assert!(
            store
                .routing_candidates(c.tenant, c.dept)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.presence(c.tenant).await.unwrap()[0].active_chats, 1);
    }

    pub async fn transfer_requeue_and_end_move_slots(store: SqlStore) {
        let c = chat_setup(&store, "acme", 2, 1).await;
        let (a, b) = (c.agents[0], c.agents[1]);
        let conv = new_conversation(&store, &c).await;
        let ev = |k| NewEvent {
            kind: k,
            author: "system".into(),
            client_msg_id: None,
            data: "{}".into(),
            at: Timestamp(50),
        };
        store
            .append_event(
                c.tenant,
                conv,
                &ev(EventKind::Assigned),
                None,
                &Transition::Assign {
                    agent: a,
                    require_offer: false,
                },
            )
            .await
            .unwrap();
        let load =
            |p: &[PresenceRecord], u: UserId| p.iter().find(|x| x.user == u).unwrap().active_chats;
        store
            .append_event(
                c.tenant,
                conv,
                &ev(EventKind::Transferred),
                None,
                &Transition::Transfer {
                    department: c.dept,
                    agent: Some(b),
                },
            )
            .await
            .unwrap();
        let p = store.presence(c.tenant).await.unwrap();
        assert_eq!((load(&p, a), load(&p, b)), (0, 1));
        // b is full: a transfer to b now fails and changes nothing.
        let conv2 = new_conversation(&store, &c).await;
        store
            .append_event(
                c.tenant,
                conv2,
                &ev(EventKind::Assigned),
                None,
                &Transition::Assign {
                    agent: a,
                    require_offer: false,
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .append_event(
                    c.tenant,
                    conv2,
                    &ev(EventKind::Transferred),
                    None,
                    &Transition::Transfer {
                        department: c.dept,
                        agent: Some(b)
                    }
                )
                .await,
            Err(StoreError::Conflict("capacity"))
        ));
        assert_eq!(
            store
                .conversation(c.tenant, conv2)
                .await
                .unwrap()
                .unwrap()
                .agent,
            Some(a)
        );
        store
            .append_event(
                c.tenant,
                conv2,
                &ev(EventKind::Requeued),
                None,
                &Transition::Requeue { decline: Some(a) },
            )
            .await
            .unwrap();
        let rec = store.conversation(c.tenant, conv2).await.unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.agent, rec.declined_by),
            (ConversationStatus::Queued, None, vec![a])
        );
        store
            .append_event(
                c.tenant,
                conv,
                &ev(EventKind::Ended),
                None,
                &Transition::End,
            )
            .await
            .unwrap();
        let p = store.presence(c.tenant).await.unwrap();
        assert_eq!((load(&p, a), load(&p, b)), (0, 0));
        let ended = store
            .ended_conversations(c.tenant, Some(&[c.dept]), Timestamp(i64::MAX), 10)
            .await
            .unwrap();
        assert_eq!(ended.iter().map(|e| e.id).collect::<Vec<_>>(), vec![conv]);
        assert!(
            store
                .ended_conversations(c.tenant, Some(&[]), Timestamp(i64::MAX), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn visitors_offline_messages_and_isolation(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 1).await;
        let other = chat_setup(&store, "globex", 1, 1).await;
        let conv = new_conversation(&store, &c).await;
        assert!(
            store
                .conversation(other.tenant, conv)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .events(other.tenant, conv, 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store
                .append_event(
                    other.tenant,
                    conv,
                    &new_event(EventKind::Message, None),
                    None,
                    &Transition::None
                )
                .await,
            Err(StoreError::NotFound)
        ));
        let rec = store.conversation(c.tenant, conv).await.unwrap().unwrap();
        let visitor = store
            .open_conversation_of_visitor(c.tenant, rec.visitor)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(visitor.id, conv);
        assert!(
            store
                .open_conversation_of_visitor(other.tenant, rec.visitor)
                .await
                .unwrap()
                .is_none()
        );

        let v = VisitorRecord {
            id: VisitorId::from_uuid(uid()),
            tenant: c.tenant,
            token_hash: b"tok".to_vec(),
            created_at: Timestamp(1),
            last_seen_at: Timestamp(1),
        };
        store.create_visitor(c.tenant, &v).await.unwrap();
        assert_eq!(
            store.visitor_by_token(b"tok").await.unwrap().unwrap().id,
            v.id
        );
        let m = OfflineMessageRecord {
            id: OfflineMessageId::from_uuid(uid()),
            tenant: c.tenant,
            department: c.dept,
            visitor: v.id,
            content_ct: vec![4, 4],
            created_at: Timestamp(9),
            handled_at: None,
            handled_by: None,
        };
        store.create_offline_message(c.tenant, &m).await.unwrap();
        // Another tenant's department cannot take it.
        let wrong = OfflineMessageRecord {
            id: OfflineMessageId::from_uuid(uid()),
            department: other.dept,
            ..m.clone()
        };
        assert!(
            store
                .create_offline_message(c.tenant, &wrong)
                .await
                .is_err()
        );
        assert_eq!(
            store
                .offline_messages(c.tenant, Some(&[c.dept]), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .offline_messages(other.tenant, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store
                .mark_offline_message_handled(
                    other.tenant,
                    m.id,
                    None,
                    other.agents[0],
                    Timestamp(10),
                    &event(other.tenant, "offline_message.handled")
                )
                .await,
            Err(StoreError::NotFound)
        ));
        // Another department's scope does not reach it.
        assert!(matches!(
            store
                .mark_offline_message_handled(
                    c.tenant,
                    m.id,
                    Some(&[other.dept]),
                    c.agents[0],
                    Timestamp(10),
                    &event(c.tenant, "offline_message.handled")
                )
                .await,
            Err(StoreError::NotFound)
        ));
        store
            .mark_offline_message_handled(
                c.tenant,
                m.id,
                Some(&[c.dept]),
                c.agents[0],
                Timestamp(10),
                &event(c.tenant, "offline_message.handled"),
            )
            .await
            .unwrap();
        assert_eq!(
            store.offline_messages(c.tenant, None, 10).await.unwrap()[0].handled_by,
            Some(c.agents[0])
        );

        let routing = store.department_routing(c.tenant).await.unwrap();
        assert_eq!(
            (routing[0].mode.as_str(), routing[0].offer_timeout_ms),
            ("offer", 30_000)
        );
        let changed = DepartmentRouting {
            mode: "assign".into(),
            offer_timeout_ms: 5_000,
            ..routing[0].clone()
        };
        store
            .set_department_routing(
                c.tenant,
                &changed,
                &event(c.tenant, "department.routing_changed"),
            )
            .await
            .unwrap();
        assert_eq!(
            store.department_routing(c.tenant).await.unwrap()[0].mode,
            "assign"
        );
        assert!(matches!(
            store
                .set_department_routing(other.tenant, &changed, &event(other.tenant, "x"))
                .await,
            Err(StoreError::NotFound)
        ));
    }

    pub async fn migrations_are_idempotent_and_ready(store: SqlStore) {
        assert!(store.ready().await.unwrap());
        assert!(
            store.migrate().await.unwrap().is_empty(),
            "a second migrate applies nothing"
        );
        assert!(store.ready().await.unwrap());
    }

    pub async fn tenants_and_keys(store: SqlStore) {
        let (a, _) = tenant(&store, "acme").await;
        let (b, _) = tenant(&store, "globex").await;
        let t = store.tenant(a).await.unwrap().unwrap();
        assert_eq!(
            (t.slug.as_str(), t.allowed_origins.len(), t.audit_seq),
            ("acme", 1, 2)
        );
        assert_eq!(store.tenant_by_slug("globex").await.unwrap().unwrap().id, b);
        assert!(store.tenant_by_slug("nope").await.unwrap().is_none());
        assert_eq!(store.list_tenants().await.unwrap().len(), 2);

        // A duplicate slug is a conflict and leaves nothing behind.
        let dup = TenantRecord {
            id: TenantId::from_uuid(uid()),
            ..t.clone()
        };
        let key = TenantKeyRecord {
            tenant: dup.id,
            key_id: 1,
            master_key_id: "mk-a".into(),
            wrapped: vec![1],
            created_at: Timestamp(1),
        };
        let err = store
            .create_tenant(&dup, &key, &user(dup.id, b"x", vec![]), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict("slug")), "{err:?}");
        assert_eq!(store.all_tenant_keys().await.unwrap().len(), 2);

        let mut keys = store.tenant_keys(a).await.unwrap();
        assert_eq!(keys.len(), 1);
        keys[0].master_key_id = "mk-b".into();
        keys[0].wrapped = vec![8; 60];
        store
            .rewrap_tenant_keys(a, &keys, &event(a, "keys.rotated"))
            .await
            .unwrap();
        let again = store.tenant_keys(a).await.unwrap();
        assert_eq!(
            (again[0].master_key_id.as_str(), again[0].wrapped.clone()),
            ("mk-b", vec![8; 60])
        );
        assert_eq!(
            store.tenant_keys(b).await.unwrap()[0].master_key_id,
            "mk-a",
            "other tenant untouched"
        );

        let ev = event(a, "site.updated");
        store
            .update_tenant(a, Some(vec![1, 1]), Some(vec![]), &ev)
            .await
            .unwrap();
        let t = store.tenant(a).await.unwrap().unwrap();
        assert_eq!((t.name_ct, t.allowed_origins.len()), (vec![1, 1], 0));
    }

    pub async fn departments_are_tenant_scoped(store: SqlStore) {
        let (a, _) = tenant(&store, "acme").await;
        let (b, _) = tenant(&store, "globex").await;
        let d = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            tenant: a,
            name: "Sales".into(),
            created_at: Timestamp(2),
        };
        store
            .create_department(a, &d, &event(a, "department.created"))
            .await
            .unwrap();
        let dup = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            name: "SALES".into(),
            ..d.clone()
        };
        assert!(matches!(
            store
                .create_department(a, &dup, &event(a, "department.created"))
                .await,
            Err(StoreError::Conflict("department_name"))
        ));
        // The same name in another tenant is fine.
        let other = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            tenant: b,
            ..d.clone()
        };
        store
            .create_department(b, &other, &event(b, "department.created"))
            .await
            .unwrap();
        assert_eq!(store.list_departments(a).await.unwrap().len(), 1);
        // Tenant b cannot rename tenant a's department.
        assert!(matches!(
            store
                .rename_department(b, d.id, "Stolen", &event(b, "department.renamed"))
                .await,
            Err(StoreError::NotFound)
        ));
        store
            .rename_department(a, d.id, "Support", &event(a, "department.renamed"))
            .await
            .unwrap();
        assert_eq!(store.list_departments(a).await.unwrap()[0].name, "Support");
        assert_eq!(store.list_departments(b).await.unwrap()[0].name, "Sales");
    }

    pub async fn users_are_tenant_scoped_and_unique_per_tenant(store: SqlStore) {
        let (a, admin_a) = tenant(&store, "acme").await;
        let (b, _) = tenant(&store, "globex").await;
        let da = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            tenant: a,
            name: "Sales".into(),
            created_at: Timestamp(2),
        };
        let db = DepartmentRecord {
            id: DepartmentId::from_uuid(uid()),
            tenant: b,
            name: "Sales".into(),
            created_at: Timestamp(2),
        };
        store
            .create_department(a, &da, &event(a, "department.created"))
            .await
            .unwrap();
        store
            .create_department(b, &db, &event(b, "department.created"))
            .await
            .unwrap();

        let u = user(a, b"jane", vec![da.id]);
        store
            .create_user(a, &u, &event(a, "user.created"))
            .await
            .unwrap();
        let found = store
            .user_by_email_index(a, b"jane")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id, found.departments.clone(), found.role),
            (u.id, vec![da.id], Role::Agent)
        );
        assert!(
            store
                .user_by_email_index(b, b"jane")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store.user(b, u.id).await.unwrap().is_none(),
            "tenant b cannot read a's user"
        );

        assert!(matches!(
            store
                .create_user(a, &user(a, b"jane", vec![]), &event(a, "user.created"))
                .await,
            Err(StoreError::Conflict("email"))
        ));
        store
            .create_user(b, &user(b, b"jane", vec![]), &event(b, "user.created"))
            .await
            .unwrap();
        // A user cannot be put in another tenant's department, nor created under another tenant.
        assert!(matches!(
            store
                .create_user(a, &user(a, b"joe", vec![db.id]), &event(a, "user.created"))
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(
            store
                .user_by_email_index(a, b"joe")
                .await
                .unwrap()
                .is_none(),
            "rolled back"
        );
        assert!(
            store
                .create_user(a, &user(b, b"x", vec![]), &event(a, "user.created"))
                .await
                .is_err()
        );

        let changes = UserChanges {
            role: Some(Role::DepartmentManager),
            capacity: Some(7),
            departments: Some(vec![]),
            ..Default::default()
        };
        store
            .update_user(a, u.id, &changes, Timestamp(5), &event(a, "user.updated"))
            .await
            .unwrap();
        let got = store.user(a, u.id).await.unwrap().unwrap();
        assert_eq!(
            (
                got.role,
                got.capacity,
                got.departments.len(),
                got.updated_at
            ),
            (Role::DepartmentManager, 7, 0, Timestamp(5))
        );
        assert!(matches!(
            store
                .update_user(b, u.id, &changes, Timestamp(6), &event(b, "user.updated"))
                .await,
            Err(StoreError::NotFound)
        ));
        let users = store.list_users(a).await.unwrap();
        assert_eq!(
            users.iter().map(|u| u.id).collect::<Vec<_>>(),
            vec![admin_a.id, u.id]
        );
    }

    pub async fn disabling_a_user_ends_their_sessions(store: SqlStore) {
        let (a, admin) = tenant(&store, "acme").await;
        let u = user(a, b"jane", vec![]);
        store
            .create_user(a, &u, &event(a, "user.created"))
            .await
            .unwrap();
        store
            .create_session(a, &session(a, u.id, b"s1"), &event(a, "auth.sign_in"))
            .await
            .unwrap();
        store
            .create_session(a, &session(a, admin.id, b"s2"), &event(a, "auth.sign_in"))
            .await
            .unwrap();
        assert!(store.session(b"s1").await.unwrap().is_some());
        store
            .touch_session(a, b"s1", Timestamp(50), Timestamp(500))
            .await
            .unwrap();
        assert_eq!(
            store.session(b"s1").await.unwrap().unwrap().expires_at,
            Timestamp(500)
        );
        let off = UserChanges {
            disabled: Some(true),
            ..Default::default()
        };
        store
            .update_user(a, u.id, &off, Timestamp(9), &event(a, "user.disabled"))
            .await
            .unwrap();
        assert!(store.session(b"s1").await.unwrap().is_none());
        assert!(
            store.session(b"s2").await.unwrap().is_some(),
            "other users keep theirs"
        );
        assert!(store.user(a, u.id).await.unwrap().unwrap().disabled);
        store
            .delete_session(a, b"s2", Some(&event(a, "auth.sign_out")))
            .await
            .unwrap();
        assert!(store.session(b"s2").await.unwrap().is_none());
    }

    pub async fn password_change_keeps_only_the_current_session(store: SqlStore) {
        let (a, admin) = tenant(&store, "acme").await;
        for t in [&b"s1"[..], b"s2", b"s3"] {
            store
                .create_session(a, &session(a, admin.id, t), &event(a, "auth.sign_in"))
                .await
                .unwrap();
        }
        let change = PasswordChange {
            password_hash: "$argon2id$new",
            must_change: false,
            keep_session: Some(b"s2"),
            at: Timestamp(3),
        };
        store
            .set_password(a, admin.id, &change, &event(a, "auth.password_changed"))
            .await
            .unwrap();
        assert!(store.session(b"s1").await.unwrap().is_none());
        assert!(store.session(b"s2").await.unwrap().is_some());
        assert!(store.session(b"s3").await.unwrap().is_none());
        let u = store.user(a, admin.id).await.unwrap().unwrap();
        assert_eq!(
            (u.password_hash.as_str(), u.must_change_password),
            ("$argon2id$new", false)
        );
    }

    pub async fn audit_chain_is_gapless_under_concurrency(store: SqlStore) {
        let (a, _) = tenant(&store, "acme").await;
        let (b, _) = tenant(&store, "globex").await;
        let mut tasks = vec![];
        for i in 0..24 {
            let s = store.clone();
            let t = if i % 3 == 0 { b } else { a };
            tasks.push(tokio::spawn(async move {
                s.append_audit(t, &event(t, "access.denied")).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for (t, expected) in [(a, 2 + 16), (b, 2 + 8)] {
            let events = store.audit_events(t, 0, 1000).await.unwrap();
            assert_eq!(events.len(), expected);
            let mut prev = vec![0u8; 32];
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.seq, i as i64 + 1);
                assert_eq!(
                    e.prev_hash, prev,
                    "event {} links to its predecessor",
                    e.seq
                );
                assert_eq!(parley_crypto::chain_hash(&e.prev_hash, e).to_vec(), e.hash);
                prev = e.hash.clone();
            }
            let head = store.tenant(t).await.unwrap().unwrap();
            assert_eq!((head.audit_seq, head.audit_head), (expected as i64, prev));
            let recent = store.recent_audit_events(t, 3).await.unwrap();
            assert_eq!(
                recent.iter().map(|e| e.seq).collect::<Vec<_>>(),
                vec![expected as i64, expected as i64 - 1, expected as i64 - 2]
            );
        }
    }

    pub async fn audit_event_for_unknown_tenant_is_refused(store: SqlStore) {
        let (a, _) = tenant(&store, "acme").await;
        let ghost = TenantId::from_uuid(uid());
        assert!(matches!(
            store.append_audit(ghost, &event(ghost, "x")).await,
            Err(StoreError::NotFound)
        ));
        assert!(
            store.append_audit(a, &event(ghost, "x")).await.is_err(),
            "event must belong to the tenant named"
        );
    }

    pub async fn visitor_liveness_moves_once_per_state(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 1).await;
        let conv = new_conversation(&store, &c).await;
        let periods = store.connection_periods(c.tenant).await.unwrap();
        assert_eq!(
            periods,
            ConnectionPeriods {
                weak_after_ms: 30_000,
                lost_after_ms: 90_000,
                timeout_ms: 600_000
            }
        );
        // Silent past the weak period (created at 20 ms).
        let silent = store.silent_visitors(Timestamp(20 + 30_000)).await.unwrap();
        assert_eq!(silent.len(), 1);
        assert_eq!(
            (silent[0].conversation, silent[0].state),
            (conv, VisitorConnection::Connected)
        );
        assert!(
            store
                .silent_visitors(Timestamp(20 + 29_999))
                .await
                .unwrap()
                .is_empty()
        );
        let to_weak = Transition::VisitorState {
            from: VisitorConnection::Connected,
            to: VisitorConnection::Weak,
        };
        let e = NewEvent {
            kind: EventKind::Connection,
            author: "system".into(),
            client_msg_id: None,
            data: "{}".into(),
            at: Timestamp(30_100),
        };
        store
            .append_event(c.tenant, conv, &e, None, &to_weak)
            .await
            .unwrap();
        // A second node racing on the same timer writes nothing.
        assert!(matches!(
            store.append_event(c.tenant, conv, &e, None, &to_weak).await,
            Err(StoreError::Conflict("state_changed"))
        ));
        let visitor = store
            .conversation(c.tenant, conv)
            .await
            .unwrap()
            .unwrap()
            .visitor;
        // A heartbeat from a weak visitor reports the state and leaves the stamp for the event.
        assert_eq!(
            store
                .touch_visitor(c.tenant, conv, visitor, Timestamp(40_000))
                .await
                .unwrap(),
            Some(VisitorConnection::Weak)
        );
        let back = Transition::VisitorState {
            from: VisitorConnection::Weak,
            to: VisitorConnection::Connected,
        };
        let e2 = NewEvent {
            at: Timestamp(40_000),
            ..e.clone()
        };
        store
            .append_event(c.tenant, conv, &e2, None, &back)
            .await
            .unwrap();
        let rec = store.conversation(c.tenant, conv).await.unwrap().unwrap();
        assert_eq!(
            (rec.visitor_state, rec.visitor_seen_at),
            (VisitorConnection::Connected, Timestamp(40_000))
        );
        assert!(
            store
                .silent_visitors(Timestamp(40_000 + 29_999))
                .await
                .unwrap()
                .is_empty()
        );
        let shorter = ConnectionPeriods {
            weak_after_ms: 1_000,
            lost_after_ms: 2_000,
            timeout_ms: 3_000,
        };
        store
            .set_connection_periods(c.tenant, &shorter, &event(c.tenant, "site.updated"))
            .await
            .unwrap();
        assert_eq!(
            store.silent_visitors(Timestamp(41_000)).await.unwrap()[0].periods,
            shorter
        );
        // Ended chats are nobody's concern.
        store
            .append_event(
                c.tenant,
                conv,
                &new_event(EventKind::Ended, None),
                None,
                &Transition::End,
            )
            .await
            .unwrap();
        assert!(
            store
                .silent_visitors(Timestamp(i64::MAX / 2))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .touch_visitor(c.tenant, conv, visitor, Timestamp(50_000))
                .await
                .unwrap(),
            None
        );
    }

    pub async fn appends_committed_together_fail_alone(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 1).await;
        let mut convs = vec![];
        for _ in 0..4 {
            convs.push(new_conversation(&store, &c).await);
        }
        let ended = convs[3];
        store
            .append_event(
                c.tenant,
                ended,
                &new_event(EventKind::Ended, None),
                None,
                &Transition::End,
            )
            .await
            .unwrap();
        let mut visitors = vec![];
        for conv in &convs {
            visitors.push(
                store
                    .conversation(c.tenant, *conv)
                    .await
                    .unwrap()
                    .unwrap()
                    .visitor,
            );
        }
        // Many appends at once: they share transactions; the ones to the ended chat, from a
        // stranger, and the resends fail or dedupe alone, the rest all land, gapless. An
        // assignment (a write with a state change) and heartbeats land in the same batches.
        let mut tasks = vec![];
        for i in 0..80 {
            let (s, t, conv) = (store.clone(), c.tenant, convs[i % 4]);
            let id = format!("m{}", i % 60);
            let from = if i % 4 == 1 && i >= 60 {
                MessageFrom::Visitor(VisitorId::from_uuid(uid()))
            } else {
                MessageFrom::Visitor(visitors[i % 4])
            };
            tasks.push(tokio::spawn(async move {
                let r = s
                    .append_event(
                        t,
                        conv,
                        &new_event(EventKind::Message, Some(&id)),
                        None,
                        &Transition::Message { from },
                    )
                    .await;
                (conv, id, r)
            }));
        }
        let assign = {
            let (s, t, conv, agent) = (store.clone(), c.tenant, convs[0], c.agents[0]);
            tokio::spawn(async move {
                let e = new_event(EventKind::Assigned, None);
                let to = Transition::Assign {
                    agent,
                    require_offer: false,
                };
                s.append_event(t, conv, &e, None, &to).await
            })
        };
        let touch = {
            let (s, t, conv, v) = (store.clone(), c.tenant, convs[2], visitors[2]);
            tokio::spawn(async move { s.touch_visitor(t, conv, v, Timestamp(60)).await })
        };
        let stranger = store
            .touch_visitor(
                c.tenant,
                convs[2],
                VisitorId::from_uuid(uid()),
                Timestamp(60),
            )
            .await
            .unwrap();
        assert_eq!(
            stranger, None,
            "a heartbeat counts only from the chat's visitor"
        );
        let (mut ok, mut strangers) = (0, 0);
        let mut answered = vec![];
        for t in tasks {
            let (conv, id, r) = t.await.unwrap();
            match r {
                Ok(a) => {
                    ok += 1;
                    answered.push((conv, id, a));
                }
                Err(StoreError::Conflict("conversation_ended")) => assert_eq!(conv, ended),
                Err(StoreError::NotFound) => strangers += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assign.await.unwrap().unwrap();
        assert_eq!(
            touch.await.unwrap().unwrap(),
            Some(VisitorConnection::Connected)
        );
        assert_eq!(
            (ok, strangers),
            (55, 5),
            "20 appends went to the ended chat, 5 came from a stranger"
        );
        let assigned = store
            .conversation(c.tenant, convs[0])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(assigned.status, ConversationStatus::Assigned);
        for conv in &convs[..3] {
            let events = store.events(c.tenant, *conv, 0, 1000).await.unwrap();
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
            let stored = store.conversation(c.tenant, *conv).await.unwrap().unwrap();
            assert_eq!(
                stored.last_seq,
                seqs.len() as i64,
                "the counter matches the log"
            );
            let ids: std::collections::HashSet<_> = events
                .iter()
                .filter_map(|e| e.client_msg_id.clone())
                .collect();
            let with_ids = events.iter().filter(|e| e.client_msg_id.is_some()).count();
            assert_eq!(ids.len(), with_ids, "each client id stored once");
        }
        assert_eq!(
            store.events(c.tenant, ended, 0, 1000).await.unwrap().len(),
            2,
            "started and ended only"
        );
        // A resend, in the same batch as its first copy or a later one, is answered with the
        // first copy's number.
        let resends = answered.iter().filter(|(_, _, a)| a.duplicate).count();
        assert_eq!(
            resends, 10,
            "of the 20 resends, 5 went to the ended chat and 5 came from strangers"
        );
        let mut logs = std::collections::HashMap::new();
        for conv in &convs[..3] {
            logs.insert(*conv, store.events(c.tenant, *conv, 0, 1000).await.unwrap());
        }
        for (conv, id, a) in &answered {
            let stored = logs[conv]
                .iter()
                .find(|e| e.client_msg_id.as_deref() == Some(id.as_str()))
                .unwrap();
            assert_eq!((stored.seq, stored.at), (a.seq, a.at), "{id}");
        }
    }

    /// What a live listener relies on: the hook of each new event runs after its commit, before
    /// its writer hears back, and a chat's hooks run in sequence order however the writes were
    /// interleaved; resends and refusals run none.
    pub async fn commit_hooks_run_in_sequence_order_before_the_answer(store: SqlStore) {
        use parley_core::store::OnCommit;
        use std::sync::{Arc, Mutex};
        let c = chat_setup(&store, "acme", 1, 2).await;
        let convs = [
            new_conversation(&store, &c).await,
            new_conversation(&store, &c).await,
        ];
        let mut visitors = vec![];
        for conv in &convs {
            let rec = store.conversation(c.tenant, *conv).await.unwrap().unwrap();
            visitors.push(rec.visitor);
        }
        let ran: Arc<Mutex<Vec<(ConversationId, i64)>>> = Arc::default();
        let mut tasks = vec![];
        for i in 0..120 {
            let (s, t, conv, ran) = (store.clone(), c.tenant, convs[i % 2], ran.clone());
            // 20 resends, 10 from a stranger; one assignment among the messages.
            let id = format!("m{}", i % 100);
            let (event, to) = if i == 33 {
                (
                    new_event(EventKind::Assigned, None),
                    Transition::Assign {
                        agent: c.agents[0],
                        require_offer: false,
                    },
                )
            } else {
                let from = if i >= 100 && i % 4 < 2 {
                    MessageFrom::Visitor(VisitorId::from_uuid(uid()))
                } else {
                    MessageFrom::Visitor(visitors[i % 2])
                };
                (
                    new_event(EventKind::Message, Some(&id)),
                    Transition::Message { from },
                )
            };
            tasks.push(tokio::spawn(async move {
                let record = ran.clone();
                let hook: OnCommit = Arc::new(move |a| record.lock().unwrap().push((conv, a.seq)));
                let r = s
                    .append_event_then(t, conv, &event, None, &to, Some(hook))
                    .await;
                if let Ok(a) = &r {
                    // A resend's number is its first copy's, whose hook ran before either answer.
                    assert!(
                        ran.lock().unwrap().contains(&(conv, a.seq)),
                        "the hook ran before the answer"
                    );
                }
                r.map(|a| a.duplicate)
            }));
        }
        let (mut new, mut resends, mut refused) = (0, 0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(false) => new += 1,
                Ok(true) => resends += 1,
                Err(StoreError::NotFound) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((new, resends, refused), (100, 10, 10));
        let ran = ran.lock().unwrap();
        assert_eq!(
            ran.len(),
            100,
            "one hook per new event, none for resends and refusals"
        );
        for conv in &convs {
            let order: Vec<i64> = ran
                .iter()
                .filter(|(c, _)| c == conv)
                .map(|(_, seq)| *seq)
                .collect();
            // Each chat's log starts with its `started` event (seq 1).
            assert_eq!(order, (2..2 + order.len() as i64).collect::<Vec<_>>());
        }
    }

    /// A tenant with `n` chats, started, not assigned.
    pub async fn chats(store: &SqlStore, n: usize) -> (TenantId, Vec<ConversationId>) {
        let c = chat_setup(store, "acme", 1, 2).await;
        let mut convs = vec![];
        for _ in 0..n {
            convs.push(new_conversation(store, &c).await);
        }
        (c.tenant, convs)
    }

    /// A chat with `n` visitor messages after its `started` event.
    pub async fn chat_with_messages(store: &SqlStore, n: usize) -> (TenantId, ConversationId) {
        let c = chat_setup(store, "acme", 1, 2).await;
        let conv = new_conversation(store, &c).await;
        let visitor = store
            .conversation(c.tenant, conv)
            .await
            .unwrap()
            .unwrap()
            .visitor;
        for _ in 0..n {
            one_more_message(store, c.tenant, conv, visitor).await;
        }
        (c.tenant, conv)
    }

    /// Append a visitor message under `id` (a fresh one, or an earlier message's to resend it).
    pub async fn message_with_id(
        store: &SqlStore,
        tenant: TenantId,
        conv: ConversationId,
        visitor: VisitorId,
        id: &str,
    ) -> Appended {
        let from = MessageFrom::Visitor(visitor);
        store
            .append_event(
                tenant,
                conv,
                &new_event(EventKind::Message, Some(id)),
                None,
                &Transition::Message { from },
            )
            .await
            .unwrap()
    }

    /// Append one visitor message; its sequence number.
    pub async fn one_more_message(
        store: &SqlStore,
        tenant: TenantId,
        conv: ConversationId,
        visitor: VisitorId,
    ) -> i64 {
        let id = uid().simple().to_string();
        message_with_id(store, tenant, conv, visitor, &id).await.seq
    }

    pub async fn steady_writes_keep_the_log_small(store: SqlStore, wal: std::path::PathBuf) {
        const WRITERS: usize = 48;
        // Enough for several checkpoint ticks (100 ms) even on a fast writer: 200 each took 0.9 s
        // once the writer had a thread of its own, and the log sometimes started over only once.
        const EACH: usize = 600;
        let c = chat_setup(&store, "acme", 1, 2).await;
        let mut convs = vec![];
        for _ in 0..8 {
            convs.push(new_conversation(&store, &c).await);
        }
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let (busy, wal) = (busy.clone(), wal.clone());
            tokio::spawn(async move {
                // The log's header counts its starts over (the checkpoint sequence number, a
                // big-endian u32 at byte 12, moves at each); the file keeps its largest size.
                let (mut largest, mut starts) = (0, std::collections::HashSet::new());
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut f) = std::fs::File::open(&wal) {
                        use std::io::Read;
                        largest = largest.max(f.metadata().unwrap().len());
                        let mut header = [0u8; 16];
                        if f.read_exact(&mut header).is_ok() {
                            starts.insert(u32::from_be_bytes(header[12..].try_into().unwrap()));
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                (largest, starts.len())
            })
        };
        let mut tasks = vec![];
        for w in 0..WRITERS {
            let (s, t, conv) = (store.clone(), c.tenant, convs[w % convs.len()]);
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let id = format!("w{w}-{i}");
                    s.append_event(
                        t,
                        conv,
                        &new_event(EventKind::Message, Some(&id)),
                        None,
                        &Transition::None,
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        let (largest, starts) = watcher.await.unwrap();
        let mut stored = 0;
        for conv in &convs {
            let events = store.events(c.tenant, *conv, 0, 10_000).await.unwrap();
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
            stored += events.len() - 1;
        }
        assert_eq!(stored, WRITERS * EACH, "every append landed");
        assert!(largest > 0, "the log was watched at {}", wal.display());
        assert!(
            starts >= 3,
            "the log started over {} times while {stored} messages were written (it grew to {largest} bytes)",
            starts.saturating_sub(1)
        );
        assert!(
            largest < 48 << 20,
            "the log grew to {largest} bytes while {stored} messages were written"
        );
    }

    pub async fn closing_finishes_queued_writes_then_refuses(store: SqlStore) {
        let c = chat_setup(&store, "acme", 1, 2).await;
        let conv = new_conversation(&store, &c).await;
        let append = |s: SqlStore, id: String| async move {
            s.append_event(
                c.tenant,
                conv,
                &new_event(EventKind::Message, Some(&id)),
                None,
                &Transition::None,
            )
            .await
        };
        let mut queued = vec![];
        for i in 0..50 {
            queued.push(tokio::spawn(append(store.clone(), format!("q{i}"))));
        }
        tokio::task::yield_now().await;
        store.close().await;
        for q in queued {
            // Each one either committed before the writer stopped or was refused: none hangs.
            match q.await.unwrap() {
                Ok(a) => assert!(!a.duplicate),
                Err(StoreError::Backend(m)) => assert!(m.contains("stopped"), "{m}"),
                Err(e) => panic!("{e:?}"),
            }
        }
        match append(store.clone(), "late".into()).await {
            Err(StoreError::Backend(m)) => assert!(m.contains("stopped"), "{m}"),
            other => panic!("an append after close: {other:?}"),
        }
    }
}
