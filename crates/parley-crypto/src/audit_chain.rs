//! The hash that chains a tenant's audit events: each event's hash covers its predecessor's, so
//! changing, removing or reordering any stored event breaks every hash after it.

use parley_core::audit::AuditRecord;
use sha2::{Digest, Sha256};

/// The `prev_hash` of a tenant's first event.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// SHA-256 over the previous hash and every field of the event, each length-prefixed so that no
/// two different events encode alike.
pub fn chain_hash(prev_hash: &[u8], record: &AuditRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"parley-audit-v1");
    field(prev_hash);
    field(&record.seq.to_be_bytes());
    field(record.id.as_bytes());
    field(&record.at.to_be_bytes());
    field(record.actor.as_bytes());
    field(record.action.as_bytes());
    field(record.target.as_deref().unwrap_or("\u{0}none").as_bytes());
    field(record.ip.as_deref().unwrap_or("\u{0}none").as_bytes());
    field(record.detail.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(detail: &str) -> AuditRecord {
        AuditRecord {
            seq: 1,
            id: "x".into(),
            at: 5,
            actor: "operator".into(),
            action: "tenant.created".into(),
            target: None,
            ip: None,
            detail: detail.into(),
            prev_hash: vec![],
            hash: vec![],
        }
    }

    #[test]
    fn any_change_changes_the_hash() {
        let a = chain_hash(&GENESIS_HASH, &rec("{}"));
        assert_eq!(a, chain_hash(&GENESIS_HASH, &rec("{}")));
        assert_ne!(a, chain_hash(&GENESIS_HASH, &rec("{ }")));
        assert_ne!(a, chain_hash(&[1u8; 32], &rec("{}")));
        let mut r = rec("{}");
        r.target = Some(String::new());
        assert_ne!(a, chain_hash(&GENESIS_HASH, &r));
    }
}
