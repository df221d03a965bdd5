//! The tenant's directory: site settings, departments and users, as seen and changed by its staff.

use crate::auth::Session;
use crate::{App, AppError};
use parley_core::audit::AuditActor;
use parley_core::permission::Actor;
use parley_core::store::{DepartmentRecord, DepartmentRouting, UserChanges, UserRecord};
use parley_core::values::{
    AllowedOrigin, Capacity, DepartmentName, DisplayName, EmailAddress, SiteName,
};
use parley_core::{DepartmentId, DomainError, Permission, Role, UserId};
use parley_crypto::TenantCipher;
use serde::Serialize;
use serde_json::json;
use std::collections::HashSet;

#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub site_key: String,
    pub allowed_origins: Vec<String>,
    pub connection_periods: PeriodsView,
}

/// How long a silent visitor is shown as weak, then lost, and how long a lost one has to return.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeriodsView {
    pub weak_after_secs: i64,
    pub lost_after_secs: i64,
    pub timeout_secs: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DepartmentView {
    pub id: DepartmentId,
    pub name: String,
    pub created_at: i64,
    /// `offer` (the chosen agent accepts within the timeout) or `assign` (given directly).
    pub routing_mode: String,
    pub offer_timeout_secs: i64,
    pub prechat_fields: crate::PrechatFields,
}

/// Changes to a department; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct DepartmentChanges {
    pub name: Option<String>,
    pub routing_mode: Option<String>,
    pub offer_timeout_secs: Option<i64>,
    pub prechat_fields: Option<crate::PrechatFields>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub capacity: i64,
    pub department_ids: Vec<DepartmentId>,
    pub disabled: bool,
    pub must_change_password: bool,
    pub created_at: i64,
}

/// A user just created, with the one-time password to hand over (shown once, never stored).
#[derive(Debug, Serialize)]
pub struct UserCreated {
    pub user: UserView,
    pub one_time_password: String,
}

#[derive(Debug, Default)]
pub struct SiteChanges {
    pub name: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub connection_periods: Option<PeriodsView>,
}

#[derive(Debug)]
pub struct NewUserInput {
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub department_ids: Vec<DepartmentId>,
    pub capacity: Option<i64>,
}

#[derive(Debug, Default)]
pub struct UserChangesInput {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub department_ids: Option<Vec<DepartmentId>>,
    pub capacity: Option<i64>,
    pub disabled: Option<bool>,
}

pub(crate) fn email_context(user: UserId) -> String {
    format!("user.email|{user}")
}
pub(crate) fn name_context(user: UserId) -> String {
    format!("user.display_name|{user}")
}

/// A one-time password: 4 groups of 5 from an alphabet without look-alikes (about 112 bits).
pub(crate) fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = parley_crypto::random_bytes::<20>();
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

pub(crate) fn user_view(cipher: &TenantCipher, u: &UserRecord) -> Result<UserView, AppError> {
    Ok(UserView {
        id: u.id,
        email: cipher.open_string(&email_context(u.id), &u.email_ct)?,
        display_name: cipher.open_string(&name_context(u.id), &u.display_name_ct)?,
        role: u.role,
        capacity: u.capacity,
        department_ids: u.departments.clone(),
        disabled: u.disabled,
        must_change_password: u.must_change_password,
        created_at: u.created_at.0,
    })
}

fn department_view(d: &DepartmentRecord, routing: Option<&DepartmentRouting>) -> DepartmentView {
    let fields = routing
        .and_then(|r| serde_json::from_str(&r.prechat_fields).ok())
        .unwrap_or_default();
    DepartmentView {
        id: d.id,
        name: d.name.clone(),
        created_at: d.created_at.0,
        routing_mode: routing.map_or_else(|| "offer".to_owned(), |r| r.mode.clone()),
        offer_timeout_secs: routing.map_or(30, |r| r.offer_timeout_ms / 1000),
        prechat_fields: fields,
    }
}

fn actor_of(a: &Actor) -> AuditActor {
    AuditActor::User(a.user)
}

impl App {
    /// Check a permission first thing; a denial is audited and answered `Forbidden`.
    pub async fn authorize(
        &self,
        session: &Session,
        p: Permission,
        ip: Option<&str>,
    ) -> Result<(), AppError> {
        let a = &session.actor;
        if session.must_change_password {
            return Err(AppError::PasswordChangeRequired);
        }
        if a.can(p) {
            return Ok(());
        }
        Err(self.deny(a, p, ip).await)
    }

    /// Audit a denied action and give the error to answer with.
    async fn deny(&self, a: &Actor, p: Permission, ip: Option<&str>) -> AppError {
        let event = self.audit_event(
            a.tenant,
            actor_of(a),
            "access.denied",
            None,
            ip,
            json!({ "permission": p.as_str() }),
        );
        match self.store.append_audit(a.tenant, &event).await {
            Ok(()) => AppError::Forbidden(p),
            Err(e) => e.into(),
        }
    }

    async fn department_ids(&self, a: &Actor) -> Result<HashSet<DepartmentId>, AppError> {
        Ok(self
            .store
            .list_departments(a.tenant)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect())
    }

    /// Needs `ViewSite`.
    pub async fn site(&self, s: &Session, ip: Option<&str>) -> Result<SiteView, AppError> {
        self.authorize(s, Permission::ViewSite, ip).await?;
        let t = self
            .store
            .tenant(s.actor.tenant)
            .await?
            .ok_or(AppError::NotFound)?;
        let cipher = self.keys.cipher(self.store.as_ref(), t.id).await?;
        Ok(SiteView {
            id: t.id.to_string(),
            name: cipher.open_string("tenant.name", &t.name_ct)?,
            slug: t.slug,
            site_key: t.site_key,
            allowed_origins: t.allowed_origins,
            connection_periods: {
                let p = self.store.connection_periods(t.id).await?;
                PeriodsView {
                    weak_after_secs: p.weak_after_ms / 1000,
                    lost_after_secs: p.lost_after_ms / 1000,
                    timeout_secs: p.timeout_ms / 1000,
                }
            },
        })
    }

    /// Needs `EditSite` for the name and `EditSiteSecurity` for the allowed origins.
    pub async fn update_site(
        &self,
        s: &Session,
        c: SiteChanges,
        ip: Option<&str>,
    ) -> Result<SiteView, AppError> {
        if c.name.is_some() {
            self.authorize(s, Permission::EditSite, ip).await?;
        }
        if c.allowed_origins.is_some() {
            self.authorize(s, Permission::EditSiteSecurity, ip).await?;
        }
        if let Some(p) = c.connection_periods {
            self.authorize(s, Permission::EditSite, ip).await?;
            let periods = parley_core::conversation::ConnectionPeriods {
                weak_after_ms: p.weak_after_secs.saturating_mul(1000),
                lost_after_ms: p.lost_after_secs.saturating_mul(1000),
                timeout_ms: p.timeout_secs.saturating_mul(1000),
            };
            periods.validate()?;
            let a = &s.actor;
            let event = self.audit_event(
                a.tenant,
                actor_of(a),
                "site.updated",
                Some(a.tenant.to_string()),
                ip,
                json!({ "changed": ["connection_periods"], "connection_periods": p }),
            );
            self.store
                .set_connection_periods(a.tenant, &periods, &event)
                .await?;
            if c.name.is_none() && c.allowed_origins.is_none() {
                return self.site(s, ip).await;
            }
        }
        if c.name.is_none() && c.allowed_origins.is_none() {
            self.authorize(s, Permission::EditSite, ip).await?;
            return Err(DomainError::new(
                "body",
                "nothing_to_change",
                "give name, allowed_origins or connection_periods",
            )
            .into());
        }
        let a = &s.actor;
        let name = c.name.as_deref().map(SiteName::parse).transpose()?;
        let origins = match &c.allowed_origins {
            Some(list) => {
                if list.len() > 50 {
                    return Err(DomainError::new(
                        "allowed_origins",
                        "too_many",
                        "at most 50 origins",
                    )
                    .into());
                }
                let mut out: Vec<String> = vec![];
                for o in list {
                    let o = AllowedOrigin::parse(o)?.as_str().to_owned();
                    if !out.contains(&o) {
                        out.push(o);
                    }
                }
                Some(out)
            }
            None => None,
        };
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let name_ct = name
            .as_ref()
            .map(|n| cipher.seal("tenant.name", n.as_str().as_bytes()));
        let mut changed = vec![];
        if name.is_some() {
            changed.push("name");
        }
        let detail = match &origins {
            Some(o) => {
                json!({ "changed": changed.iter().chain(["allowed_origins"].iter()).collect::<Vec<_>>(), "allowed_origins": o })
            }
            None => json!({ "changed": changed }),
        };
        let event = self.audit_event(
            a.tenant,
            actor_of(a),
            "site.updated",
            Some(a.tenant.to_string()),
            ip,
            detail,
        );
        self.store
            .update_tenant(a.tenant, name_ct, origins, &event)
            .await?;
        self.site(s, ip).await
    }

    async fn routing_map(
        &self,
        tenant: parley_core::TenantId,
    ) -> Result<std::collections::HashMap<DepartmentId, DepartmentRouting>, AppError> {
        Ok(self
            .store
            .department_routing(tenant)
            .await?
            .into_iter()
            .map(|r| (r.department, r))
            .collect())
    }

    /// Needs `ViewDepartments`.
    pub async fn departments(
        &self,
        s: &Session,
        ip: Option<&str>,
    ) -> Result<Vec<DepartmentView>, AppError> {
        self.authorize(s, Permission::ViewDepartments, ip).await?;
        let routing = self.routing_map(s.actor.tenant).await?;
        Ok(self
            .store
            .list_departments(s.actor.tenant)
            .await?
            .iter()
            .map(|d| department_view(d, routing.get(&d.id)))
            .collect())
    }

    /// Needs `ManageDepartments`.
    pub async fn create_department(
        &self,
        s: &Session,
        name: &str,
        ip: Option<&str>,
    ) -> Result<DepartmentView, AppError> {
        self.authorize(s, Permission::ManageDepartments, ip).await?;
        let a = &s.actor;
        let name = DepartmentName::parse(name)?;
        let d = DepartmentRecord {
            id: DepartmentId::from_uuid(self.new_id()),
            tenant: a.tenant,
            name: name.as_str().to_owned(),
            created_at: self.now(),
        };
        let event = self.audit_event(
            a.tenant,
            actor_of(a),
            "department.created",
            Some(d.id.to_string()),
            ip,
            json!({ "name": d.name }),
        );
        self.store.create_department(a.tenant, &d, &event).await?;
        let routing = self.routing_map(a.tenant).await?;
        Ok(department_view(&d, routing.get(&d.id)))
    }

    /// Rename a department or change how it routes chats and which pre-chat fields it asks.
    /// Needs `ManageDepartments`.
    pub async fn update_department(
        &self,
        s: &Session,
        id: DepartmentId,
        c: DepartmentChanges,
        ip: Option<&str>,
    ) -> Result<DepartmentView, AppError> {
        self.authorize(s, Permission::ManageDepartments, ip).await?;
        let a = &s.actor;
        if c.name.is_none()
            && c.routing_mode.is_none()
            && c.offer_timeout_secs.is_none()
            && c.prechat_fields.is_none()
        {
            return Err(DomainError::new(
                "body",
                "nothing_to_change",
                "give name, routing_mode, offer_timeout_secs or prechat_fields",
            )
            .into());
        }
        let mut routing = self
            .routing_map(a.tenant)
            .await?
            .remove(&id)
            .ok_or(AppError::NotFound)?;
        if let Some(mode) = &c.routing_mode {
            if mode != "offer" && mode != "assign" {
                return Err(DomainError::new(
                    "routing_mode",
                    "invalid_routing_mode",
                    "must be offer or assign",
                )
                .into());
            }
            routing.mode = mode.clone();
        }
        if let Some(secs) = c.offer_timeout_secs {
            if !(5..=600).contains(&secs) {
                return Err(DomainError::new(
                    "offer_timeout_secs",
                    "out_of_range",
                    "must be between 5 and 600 seconds",
                )
                .into());
            }
            routing.offer_timeout_ms = secs * 1000;
        }
        if let Some(f) = c.prechat_fields {
            routing.prechat_fields =
                serde_json::to_string(&f).map_err(|e| AppError::Internal(e.to_string()))?;
        }
        let name = c.name.as_deref().map(DepartmentName::parse).transpose()?;
        if let Some(name) = &name {
            let event = self.audit_event(
                a.tenant,
                actor_of(a),
                "department.renamed",
                Some(id.to_string()),
                ip,
                json!({ "name": name.as_str() }),
            );
            self.store
                .rename_department(a.tenant, id, name.as_str(), &event)
                .await?;
        }
        if c.routing_mode.is_some() || c.offer_timeout_secs.is_some() || c.prechat_fields.is_some()
        {
            let event = self.audit_event(
                a.tenant,
                actor_of(a),
                "department.routing_changed",
                Some(id.to_string()),
                ip,
                json!({ "routing_mode": routing.mode, "offer_timeout_ms": routing.offer_timeout_ms, "prechat_fields": c.prechat_fields }),
            );
            self.store
                .set_department_routing(a.tenant, &routing, &event)
                .await?;
        }
        let d = self
            .store
            .list_departments(a.tenant)
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or(AppError::NotFound)?;
        Ok(department_view(&d, Some(&routing)))
    }

    /// Needs `ViewUsers`; a department manager sees only users of their departments.
    pub async fn users(&self, s: &Session, ip: Option<&str>) -> Result<Vec<UserView>, AppError> {
        self.authorize(s, Permission::ViewUsers, ip).await?;
        let a = &s.actor;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        self.store
            .list_users(a.tenant)
            .await?
            .iter()
            .filter(|u| a.can_view_user(&u.departments) || u.id == a.user)
            .map(|u| user_view(&cipher, u))
            .collect()
    }

    /// Needs `ViewUsers` and sight of that user; another's user is simply not found.
    pub async fn user(
        &self,
        s: &Session,
        id: UserId,
        ip: Option<&str>,
    ) -> Result<UserView, AppError> {
        self.authorize(s, Permission::ViewUsers, ip).await?;
        let a = &s.actor;
        let u = self
            .store
            .user(a.tenant, id)
            .await?
            .ok_or(AppError::NotFound)?;
        if !(a.can_view_user(&u.departments) || u.id == a.user) {
            return Err(AppError::NotFound);
        }
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        user_view(&cipher, &u)
    }

    /// The signed-in user's own profile. Needs only a session.
    pub async fn me(&self, s: &Session) -> Result<UserView, AppError> {
        let a = &s.actor;
        let u = self
            .store
            .user(a.tenant, a.user)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        user_view(&cipher, &u)
    }

    /// Needs `ManageUsers`, and for a department manager: an agent of their own departments.
    pub async fn create_user(
        &self,
        s: &Session,
        input: NewUserInput,
        ip: Option<&str>,
    ) -> Result<UserCreated, AppError> {
        self.authorize(s, Permission::ManageUsers, ip).await?;
        let a = &s.actor;
        if !a.can_manage_user(input.role, &input.department_ids) {
            return Err(self.deny(a, Permission::ManageUsers, ip).await);
        }
        let email = EmailAddress::parse(&input.email)?;
        let name = DisplayName::parse(&input.display_name)?;
        let capacity = input
            .capacity
            .map(Capacity::parse)
            .transpose()?
            .unwrap_or_default();
        let departments = self.checked_departments(a, &input.department_ids).await?;
        let password = one_time_password();
        let plain = password.clone();
        let hash = tokio::task::spawn_blocking(move || parley_crypto::hash_password(&plain))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let now = self.now();
        let id = UserId::from_uuid(self.new_id());
        let record = UserRecord {
            id,
            tenant: a.tenant,
            email_ct: cipher.seal(&email_context(id), email.as_str().as_bytes()),
            email_index: cipher.blind_index("email", email.as_str()),
            display_name_ct: cipher.seal(&name_context(id), name.as_str().as_bytes()),
            role: input.role,
            capacity: i64::from(capacity.get()),
            password_hash: hash,
            must_change_password: true,
            disabled: false,
            departments,
            created_at: now,
            updated_at: now,
        };
        let event = self.audit_event(
            a.tenant,
            actor_of(a),
            "user.created",
            Some(id.to_string()),
            ip,
            json!({ "role": record.role, "capacity": record.capacity, "department_ids": record.departments }),
        );
        self.store.create_user(a.tenant, &record, &event).await?;
        Ok(UserCreated {
            user: user_view(&cipher, &record)?,
            one_time_password: password,
        })
    }

    /// Needs `ManageUsers` over the user as they are and as they will be. Disabling a user ends
    /// their sessions at once. Nobody can disable or demote themselves.
    pub async fn update_user(
        &self,
        s: &Session,
        id: UserId,
        c: UserChangesInput,
        ip: Option<&str>,
    ) -> Result<UserView, AppError> {
        self.authorize(s, Permission::ManageUsers, ip).await?;
        let a = &s.actor;
        let current = self
            .store
            .user(a.tenant, id)
            .await?
            .ok_or(AppError::NotFound)?;
        if !a.can_view_user(&current.departments) && current.id != a.user {
            return Err(AppError::NotFound);
        }
        let role = c.role.unwrap_or(current.role);
        let depts = c
            .department_ids
            .clone()
            .unwrap_or_else(|| current.departments.clone());
        if !a.can_manage_user(current.role, &current.departments)
            || !a.can_manage_user(role, &depts)
        {
            return Err(self.deny(a, Permission::ManageUsers, ip).await);
        }
        if id == a.user && (c.disabled == Some(true) || c.role.is_some_and(|r| r != current.role)) {
            return Err(DomainError::new(
                "user",
                "cannot_change_self",
                "you cannot disable your own account or change your own role",
            )
            .into());
        }
        let cipher = self.keys.cipher(self.store.as_ref(), a.tenant).await?;
        let mut changes = UserChanges::default();
        let mut changed: Vec<&str> = vec![];
        if let Some(n) = &c.display_name {
            changes.display_name_ct = Some(cipher.seal(
                &name_context(id),
                DisplayName::parse(n)?.as_str().as_bytes(),
            ));
            changed.push("display_name");
        }
        if let Some(cap) = c.capacity {
            changes.capacity = Some(i64::from(Capacity::parse(cap)?.get()));
            changed.push("capacity");
        }
        if let Some(r) = c.role {
            changes.role = Some(r);
            changed.push("role");
        }
        if let Some(d) = &c.department_ids {
            changes.departments = Some(self.checked_departments(a, d).await?);
            changed.push("department_ids");
        }
        if let Some(d) = c.disabled {
            changes.disabled = Some(d);
            changed.push("disabled");
        }
        if changed.is_empty() {
            return Err(DomainError::new(
                "body",
                "nothing_to_change",
                "give at least one field to change",
            )
            .into());
        }
        let action = match c.disabled {
            Some(true) => "user.disabled",
            Some(false) if current.disabled => "user.enabled",
            _ => "user.updated",
        };
        let detail = json!({
            "changed": changed,
            "role": changes.role,
            "capacity": changes.capacity,
            "department_ids": changes.departments,
            "disabled": changes.disabled,
        });
        let event = self.audit_event(
            a.tenant,
            actor_of(a),
            action,
            Some(id.to_string()),
            ip,
            detail,
        );
        self.store
            .update_user(a.tenant, id, &changes, self.now(), &event)
            .await?;
        self.forget_names(a.tenant);
        let u = self
            .store
            .user(a.tenant, id)
            .await?
            .ok_or(AppError::NotFound)?;
        user_view(&cipher, &u)
    }

    /// Department ids must be unique and exist in the actor's tenant.
    async fn checked_departments(
        &self,
        a: &Actor,
        ids: &[DepartmentId],
    ) -> Result<Vec<DepartmentId>, AppError> {
        if ids.len() > 100 {
            return Err(
                DomainError::new("department_ids", "too_many", "at most 100 departments").into(),
            );
        }
        let known = self.department_ids(a).await?;
        let mut out = vec![];
        for d in ids {
            if !known.contains(d) {
                return Err(DomainError::new(
                    "department_ids",
                    "unknown_department",
                    format!("no department {d}"),
                )
                .into());
            }
            if !out.contains(d) {
                out.push(*d);
            }
        }
        Ok(out)
    }

    /// Needs `ViewAudit`. The newest events first.
    pub async fn audit_trail(
        &self,
        s: &Session,
        limit: i64,
        ip: Option<&str>,
    ) -> Result<Vec<parley_core::audit::AuditRecord>, AppError> {
        self.authorize(s, Permission::ViewAudit, ip).await?;
        Ok(self
            .store
            .recent_audit_events(s.actor.tenant, limit.clamp(1, 500))
            .await?)
    }
}
