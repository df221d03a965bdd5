#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test
//! API tests through the real server: every test spawns a node on port 0 with its own database.
//! Scenarios marked `both!` run on SQLite and on PostgreSQL.

mod helpers;

mod auth;
mod bad_input;
mod chat;
mod cli;
mod crash;
mod directory;
mod isolation;
mod roles;

/// Runs `$name(Db)` once per backend.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::helpers::Db::Postgres).await;
            }
        }
    };
}
