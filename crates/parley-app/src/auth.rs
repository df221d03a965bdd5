//! Sign-in, sessions, sign-out and password changes.

use crate::throttle::{MAX_FAILURES_PER_ACCOUNT, MAX_FAILURES_PER_IP};
use crate::{App, AppError};
use parley_core::audit::AuditActor;
use parley_core::permission::Actor;
use parley_core::store::{PasswordChange, SessionRecord, UserRecord};
use parley_core::values::{EmailAddress, NewPassword, Slug};
use parley_core::{DomainError, Timestamp};
use parley_crypto::{random_token, sha256};
use serde_json::json;

/// A session ends after this long without a request…
pub const SESSION_IDLE_MS: i64 = 30 * 60 * 1000;
/// …and in any case this long after sign-in.
pub const SESSION_ABSOLUTE_MS: i64 = 12 * 60 * 60 * 1000;
/// Sliding expiry is written back at most this often.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A signed-in user's session, as found from the session cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: Actor,
    pub token_hash: Vec<u8>,
    pub must_change_password: bool,
    pub expires_at: Timestamp,
}

/// A fresh sign-in: the token goes into the cookie and nowhere else.
#[derive(Debug)]
pub struct SignedIn {
    pub token: String,
    pub session: Session,
}

fn hash_hex(parts: &[&str]) -> String {
    hex_encode(&sha256(parts.join("\u{0}").as_bytes()))
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(format!("blocking task failed: {e}")))
}

impl App {
    /// Sign in with workspace (tenant slug), email and password. Needs no permission.
    ///
    /// Unknown workspace, unknown email, disabled account and wrong password all spend one Argon2
    /// verification and answer `InvalidCredentials`; failures are throttled per account and per
    /// IP, and audited in the tenant when the workspace exists.
    pub async fn sign_in(
        &self,
        workspace: &str,
        email: &str,
        password: &str,
        ip: Option<&str>,
    ) -> Result<SignedIn, AppError> {
        let now = self.now();
        let ip_key = format!("ip:{}", ip.unwrap_or("unknown"));
        let account_key = format!(
            "account:{}",
            hash_hex(&[
                &workspace.trim().to_ascii_lowercase(),
                &email.trim().to_lowercase()
            ])
        );
        if let Some(secs) = self
            .throttle
            .blocked(&ip_key, MAX_FAILURES_PER_IP, now)
            .or_else(|| {
                self.throttle
                    .blocked(&account_key, MAX_FAILURES_PER_ACCOUNT, now)
            })
        {
            return Err(AppError::TooManyAttempts {
                retry_after_secs: secs,
            });
        }

        let tenant = match Slug::parse(workspace) {
            Ok(slug) => self.store.tenant_by_slug(slug.as_str()).await?,
            Err(_) => None,
        };
        let email = EmailAddress::parse(email).ok();
        let user: Option<UserRecord> = match (&tenant, &email) {
            (Some(t), Some(e)) => {
                let cipher = self.keys.cipher(self.store.as_ref(), t.id).await?;
                self.store
                    .user_by_email_index(t.id, &cipher.blind_index("email", e.as_str()))
                    .await?
            }
            _ => None,
        };

        let pw = password.to_owned();
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let password_ok = blocking(move || match stored {
            Some(h) => parley_crypto::verify_password(&pw, &h),
            None => parley_crypto::verify_dummy(&pw),
        })
        .await?;

        let user = match user {
            Some(u) if password_ok && !u.disabled => u,
            other => {
                self.throttle.record(&ip_key, now);
                self.throttle.record(&account_key, now);
                if let Some(t) = &tenant {
                    let reason = match &other {
                        None => "unknown_account",
                        Some(u) if u.disabled => "disabled",
                        Some(_) => "wrong_password",
                    };
                    let event = self.audit_event(
                        t.id,
                        AuditActor::Anonymous,
                        "auth.sign_in_failed",
                        other.as_ref().map(|u| u.id.to_string()),
                        ip,
                        json!({ "reason": reason }),
                    );
                    self.store.append_audit(t.id, &event).await?;
                }
                return Err(AppError::InvalidCredentials);
            }
        };

        self.throttle.clear(&account_key);
        let token = random_token();
        let record = SessionRecord {
            token_hash: sha256(token.as_bytes()).to_vec(),
            tenant: user.tenant,
            user: user.id,
            created_at: now,
            last_seen_at: now,
            expires_at: now.plus_millis(SESSION_IDLE_MS),
        };
        let event = self.audit_event(
            user.tenant,
            AuditActor::User(user.id),
            "auth.sign_in",
            Some(user.id.to_string()),
            ip,
            json!({ "must_change_password": user.must_change_password }),
        );
        self.store
            .create_session(user.tenant, &record, &event)
            .await?;
        Ok(SignedIn {
            token,
            session: Session {
                actor: Actor {
                    tenant: user.tenant,
                    user: user.id,
                    role: user.role,
                    departments: user.departments,
                },
                token_hash: record.token_hash,
                must_change_password: user.must_change_password,
                expires_at: record.expires_at,
            },
        })
    }

    /// The session a token names, if it is live and its user enabled; slides its expiry.
    pub async fn authenticate(&self, token: &str) -> Result<Session, AppError> {
        self.authenticate_hash(sha256(token.as_bytes()).to_vec())
            .await
    }

    /// The same, by the token's hash (sockets carry the hash in their ticket, never the token).
    pub async fn authenticate_hash(&self, token_hash: Vec<u8>) -> Result<Session, AppError> {
        let now = self.now();
        let record = self
            .store
            .session(&token_hash)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        if now >= record.expires_at {
            self.store
                .delete_session(record.tenant, &token_hash, None)
                .await?;
            return Err(AppError::Unauthenticated);
        }
        let user = match self.store.user(record.tenant, record.user).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(AppError::Unauthenticated),
        };
        let mut expires_at = record.expires_at;
        if now.0 - record.last_seen_at.0 >= TOUCH_EVERY_MS {
            expires_at = Timestamp(
                now.plus_millis(SESSION_IDLE_MS)
                    .0
                    .min(record.created_at.plus_millis(SESSION_ABSOLUTE_MS).0),
            );
            self.store
                .touch_session(record.tenant, &token_hash, now, expires_at)
                .await?;
        }
        Ok(Session {
            actor: Actor {
                tenant: user.tenant,
                user: user.id,
                role: user.role,
                departments: user.departments,
            },
            token_hash,
            must_change_password: user.must_change_password,
            expires_at,
        })
    }

    /// End the session server-side. Needs only the session itself.
    pub async fn sign_out(&self, session: &Session, ip: Option<&str>) -> Result<(), AppError> {
        let a = &session.actor;
        let event = self.audit_event(
            a.tenant,
            AuditActor::User(a.user),
            "auth.sign_out",
            Some(a.user.to_string()),
            ip,
            json!({}),
        );
        self.store
            .delete_session(a.tenant, &session.token_hash, Some(&event))
            .await?;
        Ok(())
    }

    /// Change one's own password (the current one is required). Ends the user's other sessions.
    /// Needs only a session: it is the one thing a must-change-password session may do.
    pub async fn change_password(
        &self,
        session: &Session,
        current: &str,
        new: &str,
        ip: Option<&str>,
    ) -> Result<(), AppError> {
        let a = &session.actor;
        let user = self
            .store
            .user(a.tenant, a.user)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let email = EmailAddress::parse(
            &cipher.open_string(&format!("user.email|{}", user.id), &user.email_ct)?,
        )?;
        let new_pw = NewPassword::parse(new, &email)?;
        if new == current {
            return Err(DomainError::new(
                "new_password",
                "password_unchanged",
                "must differ from the current password",
            )
            .into());
        }
        let (cur, stored) = (current.to_owned(), user.password_hash.clone());
        if !blocking(move || parley_crypto::verify_password(&cur, &stored)).await? {
            return Err(DomainError::new(
                "current_password",
                "wrong_password",
                "is not your current password",
            )
            .into());
        }
        let plain = new_pw.expose().to_owned();
        let hash = blocking(move || parley_crypto::hash_password(&plain)).await??;
        let event = self.audit_event(
            a.tenant,
            AuditActor::User(a.user),
            "auth.password_changed",
            Some(a.user.to_string()),
            ip,
            json!({}),
        );
        let change = PasswordChange {
            password_hash: &hash,
            must_change: false,
            keep_session: Some(&session.token_hash),
            at: self.now(),
        };
        self.store
            .set_password(a.tenant, a.user, &change, &event)
            .await?;
        Ok(())
    }
}
