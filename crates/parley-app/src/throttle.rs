//! Basic throttling, in memory on each node, of failed sign-ins (per account and per client IP)
//! and of new widget visitors (per client IP). A key counted too often in the window is refused
//! until the window ends; for sign-ins whether or not the account exists, so the throttle tells
//! nothing about which accounts exist.

use parley_core::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;

pub const WINDOW_MS: i64 = 15 * 60 * 1000;
pub const MAX_FAILURES_PER_ACCOUNT: u32 = 5;
pub const MAX_FAILURES_PER_IP: u32 = 30;
/// New widget visitors (each a stored row) one client address may create per window: anyone
/// holding a site's public key can ask for one, so without a bound it is a storage flood. A
/// returning visitor (a valid token) is not counted. About one a second, sustained, per address.
pub const MAX_NEW_VISITORS_PER_IP: u32 = 1000;
/// Bound on remembered keys, so a flood of distinct keys cannot grow memory without limit.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (Timestamp, u32)>>,
}

impl Throttle {
    /// `Some(seconds to wait)` when `key` has reached `max` failures within the window.
    pub fn blocked(&self, key: &str, max: u32, now: Timestamp) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((start, n)) if *n >= max && now.0 - start.0 < WINDOW_MS => {
                Some(((WINDOW_MS - (now.0 - start.0)) / 1000).max(1) as u64)
            }
            _ => None,
        }
    }

    /// Count one event (a failed sign-in, a new visitor) against `key`.
    pub fn record(&self, key: &str, now: Timestamp) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, (start, _)| now.0 - start.0 < WINDOW_MS);
        }
        let entry = map.entry(key.to_owned()).or_insert((now, 0));
        if now.0 - entry.0.0 >= WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_and_forgets_after_window() {
        let t = Throttle::default();
        let t0 = Timestamp(1_000_000);
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            assert!(t.blocked("a", MAX_FAILURES_PER_ACCOUNT, t0).is_none());
            t.record("a", t0);
        }
        assert!(t.blocked("a", MAX_FAILURES_PER_ACCOUNT, t0).is_some());
        assert!(t.blocked("b", MAX_FAILURES_PER_ACCOUNT, t0).is_none());
        assert!(
            t.blocked("a", MAX_FAILURES_PER_ACCOUNT, t0.plus_millis(WINDOW_MS))
                .is_none()
        );
        t.clear("a");
        assert!(t.blocked("a", MAX_FAILURES_PER_ACCOUNT, t0).is_none());
    }
}
