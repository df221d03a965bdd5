//! The use-case error: what went wrong, in domain words. The server maps it to HTTP in one place.

use parley_core::store::StoreError;
use parley_core::{DomainError, Permission};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid input: {0}")]
    Invalid(#[from] DomainError),
    /// Not signed in, or the session ended.
    #[error("not signed in")]
    Unauthenticated,
    /// Unknown workspace, unknown email, wrong password or disabled account: never told apart.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too many failed sign-in attempts")]
    TooManyAttempts { retry_after_secs: u64 },
    /// Too many new widget visitors from one client address (see `throttle::MAX_NEW_VISITORS_PER_IP`).
    #[error("too many new visitors from one address")]
    TooManyVisitors { retry_after_secs: u64 },
    /// The account must set a new password before doing anything else.
    #[error("password change required")]
    PasswordChangeRequired,
    #[error("permission {} required", .0.as_str())]
    Forbidden(Permission),
    #[error("not found")]
    NotFound,
    #[error("conflict on {0}")]
    Conflict(&'static str),
    /// Something on our side failed; the message is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AppError::NotFound,
            StoreError::Conflict(what) => AppError::Conflict(what),
            StoreError::Backend(msg) => AppError::Internal(msg),
        }
    }
}

impl From<parley_crypto::CryptoError> for AppError {
    fn from(e: parley_crypto::CryptoError) -> Self {
        AppError::Internal(format!("crypto: {e}"))
    }
}
