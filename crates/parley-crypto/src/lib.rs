//! Parley's cryptography, in one place, built from audited RustCrypto crates.
//!
//! - Envelope encryption: a master key (from a key file, never the database) wraps one random data
//!   key per tenant; records are sealed with AES-256-GCM under the tenant key, with associated data
//!   that binds tenant and record, and carry the id of the key that sealed them.
//! - Argon2id password hashing; random tokens; HMAC blind indexes; audit chain hashes.

mod audit_chain;
mod keys;
mod password;
mod random;

pub use audit_chain::{GENESIS_HASH, chain_hash};
pub use keys::{DataKey, MasterKeyRing, TenantCipher};
pub use password::{hash_password, verify_dummy, verify_password};
pub use random::{random_bytes, random_token, sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A ciphertext failed to authenticate: wrong key, wrong record binding, or tampering.
    #[error("ciphertext did not authenticate")]
    Decrypt,
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("no key with id {0}")]
    UnknownKey(String),
    #[error("master key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("password hashing failed")]
    Hash,
}
