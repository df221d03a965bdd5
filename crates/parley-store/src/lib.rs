//! Parley's `Store` on SQLite and PostgreSQL.
//!
//! Both backends are always compiled; the database URL picks one at start-up. The SQL is written
//! once where it can be, in the subset both understand (`$1` placeholders, TEXT/INTEGER/BLOB-or-BYTEA columns),
//! and runs through sqlx's `Any` driver with runtime-checked queries, so no database is needed at
//! build time. The two migration trees carry the same versions and differ in type names, and in
//! one place where SQLite keeps less: it has no `conversations.last_seq` counter (migration 4), a
//! chat's log is its counter there.
//!
//! SQLite's message path has SQL of its own, for speed on one core and one disk: plain batches run
//! on a writer thread with a rusqlite connection (`sqlite_writer`, `?N` placeholders) and commit to
//! a second file, the arrivals file, which a merge thread moves into the chats' logs once a second
//! (`sqlite_arrivals`).

#[macro_use]
mod chat;
mod migrations;
mod sql;
mod sqlite_arrivals;
mod sqlite_writer;

pub use migrations::{MIGRATIONS, Migration};
pub use sql::{Backend, SqlOptions, SqlStore};
