//! Opening a node's parts: data directory, master key, database (migrated), the `App`.

use crate::config::Config;
use parley_app::{App, KeyService, SystemClock};
use parley_core::store::Store;
use parley_store::{SqlOptions, SqlStore};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// What a process opens the installation for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`: creates what is missing; on SQLite it is the one process that serves the
    /// database (a second one is refused).
    Serve,
    /// `migrate`: creates what is missing.
    Migrate,
    /// Every other verb: expects the installation to exist and runs beside a server.
    Verb,
}

/// Open (and on first start create) everything `App` needs. `serve` and `migrate` create a
/// missing data directory and master key file; the other verbs expect them.
pub async fn open_app(
    config: &Config,
    purpose: Purpose,
) -> Result<(App, Arc<SqlStore>), StartupError> {
    let create_missing = purpose != Purpose::Verb;
    if (config.uses_sqlite() || config.master_key_file.starts_with(&config.data_dir))
        && !config.data_dir.exists()
    {
        if !create_missing {
            return Err(StartupError(format!(
                "data directory {} does not exist: start `parley serve` once, or pass --data-dir",
                config.data_dir.display()
            )));
        }
        create_private_dir(&config.data_dir)?;
        tracing::info!(path = %config.data_dir.display(), "created data directory");
    }
    let (keys, created) = KeyService::open(&config.master_key_file, create_missing).map_err(|e| {
        StartupError(format!("{e}. Pass --master-key-file (PARLEY_MASTER_KEY_FILE) pointing at the key file of this installation"))
    })?;
    if created {
        tracing::warn!(
            path = %config.master_key_file.display(),
            "created a new master key file (mode 0600): back it up apart from the database; without it no encrypted data can be read"
        );
    }
    let options = SqlOptions {
        serving: purpose == Purpose::Serve,
        ..SqlOptions::default()
    };
    let store = Arc::new(
        SqlStore::connect_with(&config.database_url, options)
            .await
            .map_err(|e| {
                StartupError(format!("{e}. Check PARLEY_DATABASE_URL / --database-url"))
            })?,
    );
    let applied = store
        .migrate()
        .await
        .map_err(|e| StartupError(format!("migrating the database failed: {e}")))?;
    if !applied.is_empty() {
        tracing::info!(backend = store.backend(), versions = ?applied, "applied database migrations");
    }
    let app = App::new(store.clone(), Arc::new(keys), Arc::new(SystemClock));
    Ok((app, store))
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartupError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(|e| {
        StartupError(format!(
            "cannot create data directory {}: {e}",
            path.display()
        ))
    })
}

/// Background work every node does: withdraw lapsed offers and route those chats on; mark silent
/// visitors weak, then lost, and end the chats of those who do not come back. Runs until
/// the returned handle is aborted or the runtime stops.
pub fn spawn_timers(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = app.expire_offers().await {
                tracing::warn!(error = %e, "offer timer failed; will retry");
            }
            if let Err(e) = app.check_connections().await {
                tracing::warn!(error = %e, "connection timer failed; will retry");
            }
        }
    })
}
