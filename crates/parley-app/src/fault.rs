//! Crash injection for durability tests. `PARLEY_FAULT=<point>:<n>` makes the process abort (no
//! cleanup, no flush: like `kill -9`) the n-th time it passes the named point. Points:
//! `after_commit` (a chat event is committed, nothing published or acknowledged yet),
//! `after_publish` (published to live listeners, not yet acknowledged to the sender) and
//! `after_ack` (the sender's socket has its ack). Unset, it costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Fault {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn fault() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("PARLEY_FAULT").ok()?;
            let (point, at) = spec.split_once(':')?;
            Some(Fault {
                point: point.to_owned(),
                at: at.parse().ok()?,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Abort here if this is the configured crash point's n-th pass.
pub fn point(name: &str) {
    if let Some(f) = fault()
        && f.point == name
        && f.seen.fetch_add(1, Ordering::Relaxed) + 1 == f.at
    {
        eprintln!("PARLEY_FAULT: aborting at {name} #{}", f.at);
        std::process::abort();
    }
}
