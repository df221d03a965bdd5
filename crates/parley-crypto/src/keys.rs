//! Master keys and tenant data keys.
//!
//! The master key file holds one or more master keys and names the active one. Each tenant has a
//! random 256-bit data key, stored in the database only wrapped (AES-256-GCM) by a master key.
//! Rotation adds a new master key, re-wraps every tenant key under it and keeps the old key in the
//! file, marked retired, so that servers still running with the old file go on working; they re-read
//! the file when they meet a master key id they do not know.

use crate::{CryptoError, random_bytes};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use parley_core::TenantId;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The format byte that starts every sealed record.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 12;

/// A 256-bit key. `Debug` never prints it; it is wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        DataKey(random_bytes::<32>())
    }
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

fn seal_raw(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_bytes::<NONCE_LEN>();
    // Encryption with a valid key and a fresh nonce cannot fail for inputs under 64 GiB.
    #[allow(clippy::expect_used)]
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of a bounded input");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_raw(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    active: String,
    #[serde(default)]
    retired: Vec<String>,
    keys: BTreeMap<String, String>,
}

/// The installation's master keys, loaded from the key file.
#[derive(Clone)]
pub struct MasterKeyRing {
    active: String,
    keys: BTreeMap<String, DataKey>,
    retired: Vec<String>,
}

impl fmt::Debug for MasterKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeyRing")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn new_master_key_id() -> String {
    format!("mk-{}", hex::encode(random_bytes::<6>()))
}

impl MasterKeyRing {
    /// A ring with one fresh master key.
    pub fn generate() -> Self {
        let id = new_master_key_id();
        let mut keys = BTreeMap::new();
        keys.insert(id.clone(), DataKey::generate());
        MasterKeyRing {
            active: id,
            keys,
            retired: vec![],
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Add a new master key and make it the active one; the old ones stay, retired, so that
    /// records and running servers that still use them keep working. Returns the new id.
    pub fn rotate(&mut self) -> String {
        let id = new_master_key_id();
        self.keys.insert(id.clone(), DataKey::generate());
        let old = std::mem::replace(&mut self.active, id.clone());
        self.retired.push(old);
        id
    }

    /// Load the key file. It must exist, parse, name an active key it contains, and (on Unix)
    /// be readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "is readable by group or others (mode {:o}); run: chmod 600 {}",
                    meta.permissions().mode() & 0o777,
                    path.display()
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        let file: KeyFile = toml::from_str(&text)
            .map_err(|e| err(format!("is not a valid key file: {}", e.message())))?;
        let mut keys = BTreeMap::new();
        for (id, b64) in &file.keys {
            let raw = Zeroizing::new(
                B64.decode(b64)
                    .map_err(|_| err(format!("key {id} is not base64")))?,
            );
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| err(format!("key {id} is not 32 bytes")))?;
            keys.insert(id.clone(), DataKey(bytes));
        }
        if !keys.contains_key(&file.active) {
            return Err(err(format!(
                "the active key {} is not in the file",
                file.active
            )));
        }
        Ok(MasterKeyRing {
            active: file.active,
            keys,
            retired: file.retired,
        })
    }

    /// Write the key file atomically (temp file, fsync, rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let file = KeyFile {
            active: self.active.clone(),
            keys: self
                .keys
                .iter()
                .map(|(id, k)| (id.clone(), B64.encode(k.0)))
                .collect(),
            retired: self.retired.clone(),
        };
        let body = Zeroizing::new(toml::to_string(&file).map_err(|e| err(e.to_string()))?);
        let text = Zeroizing::new(format!(
            "# Parley master keys. Keep this file secret (mode 0600) and back it up apart from the\n\
             # database: without it no encrypted data can be read. Never edit it by hand; use\n\
             # `parley keys rotate`.\n{}",
            body.as_str()
        ));
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// Keys derived for `purpose` from every master key, the active one first (for short-lived
    /// MACs such as socket tickets, which then survive a rotation).
    pub fn derived_keys(&self, purpose: &str) -> Vec<[u8; 32]> {
        let mut ids: Vec<&String> = vec![&self.active];
        ids.extend(self.keys.keys().filter(|k| **k != self.active));
        ids.iter()
            .filter_map(|id| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.keys[*id].0).ok()?;
                mac.update(format!("parley/derived/v1|{purpose}").as_bytes());
                Some(mac.finalize().into_bytes().into())
            })
            .collect()
    }

    fn wrap_aad(tenant: TenantId, key_id: i64) -> Vec<u8> {
        format!("parley/tenant-key/v1|{tenant}|{key_id}").into_bytes()
    }

    /// Wrap a tenant data key under the active master key: `(master_key_id, wrapped)`.
    pub fn wrap(&self, tenant: TenantId, key_id: i64, key: &DataKey) -> (String, Vec<u8>) {
        let mk = &self.keys[&self.active];
        (
            self.active.clone(),
            seal_raw(mk, &Self::wrap_aad(tenant, key_id), &key.0),
        )
    }

    pub fn unwrap(
        &self,
        tenant: TenantId,
        key_id: i64,
        master_key_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let mk = self
            .keys
            .get(master_key_id)
            .ok_or_else(|| CryptoError::UnknownKey(master_key_id.to_owned()))?;
        let raw = Zeroizing::new(open_raw(mk, &Self::wrap_aad(tenant, key_id), wrapped)?);
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey(bytes))
    }
}

/// One tenant's keys, unwrapped: seals and opens that tenant's records and computes its blind
/// indexes. Records of another tenant never open under it (the tenant id is in the AAD).
#[derive(Clone)]
pub struct TenantCipher {
    tenant: TenantId,
    active: i64,
    keys: BTreeMap<i64, DataKey>,
    index_key: DataKey,
}

impl fmt::Debug for TenantCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TenantCipher({}, active key {})",
            self.tenant, self.active
        )
    }
}

impl TenantCipher {
    /// `keys` must not be empty; the highest key id is the active one, and the blind-index key is
    /// derived from the lowest, so indexes stay valid when data keys are added.
    pub fn new(tenant: TenantId, keys: BTreeMap<i64, DataKey>) -> Result<Self, CryptoError> {
        let (&first, first_key) = keys
            .iter()
            .next()
            .ok_or_else(|| CryptoError::UnknownKey("none".into()))?;
        let active = *keys.keys().next_back().unwrap_or(&first);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&first_key.0)
            .map_err(|_| CryptoError::Malformed)?;
        mac.update(format!("parley/blind-index/v1|{tenant}").as_bytes());
        let index_key = DataKey(mac.finalize().into_bytes().into());
        Ok(TenantCipher {
            tenant,
            active,
            keys,
            index_key,
        })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    fn aad(&self, context: &str) -> Vec<u8> {
        format!("parley/record/v1|{}|{}", self.tenant, context).into_bytes()
    }

    /// Seal `plaintext` for the record named by `context` (e.g. `user.email|<user id>`).
    /// Layout: format byte, key id (u32 big-endian), nonce, ciphertext and tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[&self.active];
        let body = seal_raw(key, &self.aad(context), plaintext);
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&(self.active as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 5 || sealed[0] != SEALED_V1 {
            return Err(CryptoError::Malformed);
        }
        let key_id = i64::from(u32::from_be_bytes([
            sealed[1], sealed[2], sealed[3], sealed[4],
        ]));
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        open_raw(key, &self.aad(context), &sealed[5..])
    }

    pub fn open_string(&self, context: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| CryptoError::Malformed)
    }

    /// A keyed hash of `value` for equality lookups without storing the value: HMAC-SHA256 under a
    /// per-tenant key, separated by `purpose`.
    pub fn blind_index(&self, purpose: &str, value: &str) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index_key.0)
            .expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> TenantId {
        TenantId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let ring = MasterKeyRing::generate();
        let key = DataKey::generate();
        let (mk, wrapped) = ring.wrap(tenant(1), 1, &key);
        assert_eq!(ring.unwrap(tenant(1), 1, &mk, &wrapped).unwrap().0, key.0);
        assert!(matches!(
            ring.unwrap(tenant(2), 1, &mk, &wrapped),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            ring.unwrap(tenant(1), 2, &mk, &wrapped),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            ring.unwrap(tenant(1), 1, "mk-nope", &wrapped),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn rotate_keeps_old_keys_and_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let mut ring = MasterKeyRing::generate();
        let key = DataKey::generate();
        let (old_id, wrapped) = ring.wrap(tenant(1), 1, &key);
        let new_id = ring.rotate();
        assert_ne!(old_id, new_id);
        ring.save(&path).unwrap();
        let loaded = MasterKeyRing::load(&path).unwrap();
        assert_eq!(loaded.active_id(), new_id);
        assert_eq!(
            loaded.unwrap(tenant(1), 1, &old_id, &wrapped).unwrap().0,
            key.0
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = MasterKeyRing::load(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn seal_open_binds_tenant_and_context() {
        let mut keys = BTreeMap::new();
        keys.insert(1, DataKey::generate());
        let a = TenantCipher::new(tenant(1), keys.clone()).unwrap();
        let b = TenantCipher::new(tenant(2), keys).unwrap();
        let ct = a.seal("user.email|u1", b"jane@acme.test");
        assert!(!ct.windows(4).any(|w| w == b"jane"));
        assert_eq!(a.open("user.email|u1", &ct).unwrap(), b"jane@acme.test");
        assert!(a.open("user.email|u2", &ct).is_err(), "another record");
        assert!(b.open("user.email|u1", &ct).is_err(), "another tenant");
        let mut tampered = ct.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(a.open("user.email|u1", &tampered).is_err());
        assert!(a.open("user.email|u1", &[1, 0]).is_err());
        assert_eq!(a.blind_index("email", "x"), a.blind_index("email", "x"));
        assert_ne!(a.blind_index("email", "x"), b.blind_index("email", "x"));
        assert_ne!(a.blind_index("email", "x"), a.blind_index("phone", "x"));
    }
}
