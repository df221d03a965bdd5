//! The node's key service: the master key ring from the key file and a cache of unwrapped tenant
//! ciphers. When a tenant key is wrapped under a master key this node does not know (another
//! process ran `parley keys rotate`), it re-reads the key file once and tries again: rotation
//! needs no restart.

use crate::AppError;
use parley_core::TenantId;
use parley_core::store::Store;
use parley_crypto::{CryptoError, MasterKeyRing, TenantCipher};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub struct KeyService {
    path: PathBuf,
    ring: RwLock<MasterKeyRing>,
    ciphers: RwLock<HashMap<TenantId, Arc<TenantCipher>>>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyService({})", self.path.display())
    }
}

impl KeyService {
    /// Load the key file, or create it (mode 0600) when `create` is set and it does not exist.
    /// Returns the service and whether the file was created.
    pub fn open(path: &Path, create: bool) -> Result<(Self, bool), CryptoError> {
        let (ring, created) = if create && !path.exists() {
            let ring = MasterKeyRing::generate();
            ring.save(path)?;
            (ring, true)
        } else {
            (MasterKeyRing::load(path)?, false)
        };
        Ok((
            KeyService {
                path: path.to_owned(),
                ring: RwLock::new(ring),
                ciphers: RwLock::new(HashMap::new()),
            },
            created,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ring(&self) -> MasterKeyRing {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-read the key file (after a rotation by another process).
    pub fn reload(&self) -> Result<(), CryptoError> {
        let ring = MasterKeyRing::load(&self.path)?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring;
        Ok(())
    }

    /// Replace the ring in memory (after this process rotated and saved it).
    pub fn set_ring(&self, ring: MasterKeyRing) {
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring;
    }

    /// Remember a cipher for a tenant just created.
    pub fn insert(&self, cipher: TenantCipher) {
        self.ciphers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cipher.tenant(), Arc::new(cipher));
    }

    /// The tenant's cipher, from the cache or by unwrapping its keys from the store.
    pub async fn cipher(
        &self,
        store: &dyn Store,
        tenant: TenantId,
    ) -> Result<Arc<TenantCipher>, AppError> {
        if let Some(c) = self
            .ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant)
        {
            return Ok(c.clone());
        }
        let records = store.tenant_keys(tenant).await?;
        if records.is_empty() {
            return Err(AppError::NotFound);
        }
        let unwrap_all =
            |ring: &MasterKeyRing| -> Result<BTreeMap<i64, parley_crypto::DataKey>, CryptoError> {
                records
                    .iter()
                    .map(|r| {
                        ring.unwrap(tenant, r.key_id, &r.master_key_id, &r.wrapped)
                            .map(|k| (r.key_id, k))
                    })
                    .collect()
            };
        let first = unwrap_all(&self.ring());
        let keys = match first {
            Err(CryptoError::UnknownKey(_)) => {
                self.reload()?;
                unwrap_all(&self.ring())?
            }
            other => other?,
        };
        let cipher = Arc::new(TenantCipher::new(tenant, keys)?);
        self.ciphers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant, cipher.clone());
        Ok(cipher)
    }
}
