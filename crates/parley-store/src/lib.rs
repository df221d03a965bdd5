//! Parley's `Store` on SQLite and PostgreSQL.
//!
//! Both backends are always compiled; the database URL picks one at start-up. The SQL is written
//! once, in the subset both understand (`$1` placeholders, TEXT/INTEGER/BLOB-or-BYTEA columns),
//! and runs through sqlx's `Any` driver with runtime-checked queries, so no database is needed at
//! build time. The two migration trees differ only in type names and carry the same versions.

mod chat;
mod migrations;
mod sql;

pub use migrations::{MIGRATIONS, Migration};
pub use sql::{Backend, SqlStore};
