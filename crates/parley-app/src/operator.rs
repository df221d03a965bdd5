//! The platform operator's use cases, run from the command line: create tenants, rotate the
//! master key, verify a tenant's audit chain. The operator is trusted by position (shell access to
//! the key file and database) and appears in the audit trail as `operator`.

use crate::directory::{email_context, name_context, one_time_password};
use crate::{App, AppError};
use parley_core::audit::AuditActor;
use parley_core::store::{TenantKeyRecord, TenantRecord, UserRecord};
use parley_core::values::{DisplayName, EmailAddress, SiteName, Slug};
use parley_core::{Role, TenantId, UserId};
use parley_crypto::{DataKey, GENESIS_HASH, TenantCipher, chain_hash};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct TenantCreated {
    pub tenant_id: TenantId,
    pub name: String,
    pub slug: String,
    pub site_key: String,
    pub admin_email: String,
    pub admin_user_id: UserId,
    /// Shown once; the administrator must replace it at first sign-in.
    pub one_time_password: String,
}

/// The outcome of checking a tenant's audit chain.
#[derive(Debug, Serialize)]
pub struct ChainReport {
    pub tenant_id: TenantId,
    pub events: i64,
    pub ok: bool,
    /// The first sequence number at which the chain is broken, and why.
    pub broken_at: Option<i64>,
    pub problem: Option<String>,
    /// Hex of the newest event's hash: record it elsewhere to anchor the chain.
    pub head: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl App {
    /// Create a tenant with its data key and first site administrator. Operator only.
    pub async fn create_tenant(
        &self,
        name: &str,
        slug: Option<&str>,
        admin_email: &str,
        admin_name: Option<&str>,
        allowed_origins: &[String],
    ) -> Result<TenantCreated, AppError> {
        let name = SiteName::parse(name)?;
        let mut origins: Vec<String> = vec![];
        for o in allowed_origins {
            let o = parley_core::values::AllowedOrigin::parse(o)?
                .as_str()
                .to_owned();
            if !origins.contains(&o) {
                origins.push(o);
            }
        }
        let slug = match slug {
            Some(s) => Slug::parse(s)?,
            None => Slug::from_name(&name)?,
        };
        let email = EmailAddress::parse(admin_email)?;
        // Without a name, the administrator is called by their email's local part until they change it.
        let local_part = email
            .as_str()
            .split('@')
            .next()
            .unwrap_or("admin")
            .to_owned();
        let admin_name = DisplayName::parse(admin_name.unwrap_or(&local_part))?;
        let now = self.now();
        let tenant = TenantId::from_uuid(self.new_id());
        let key = DataKey::generate();
        let (master_key_id, wrapped) = self.keys.ring().wrap(tenant, 1, &key);
        let cipher = TenantCipher::new(tenant, BTreeMap::from([(1, key)]))?;

        let password = one_time_password();
        let plain = password.clone();
        let hash = tokio::task::spawn_blocking(move || parley_crypto::hash_password(&plain))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        let admin_id = UserId::from_uuid(self.new_id());
        let admin = UserRecord {
            id: admin_id,
            tenant,
            email_ct: cipher.seal(&email_context(admin_id), email.as_str().as_bytes()),
            email_index: cipher.blind_index("email", email.as_str()),
            display_name_ct: cipher.seal(&name_context(admin_id), admin_name.as_str().as_bytes()),
            role: Role::SiteAdmin,
            capacity: 3,
            password_hash: hash,
            must_change_password: true,
            disabled: false,
            departments: vec![],
            created_at: now,
            updated_at: now,
        };
        let record = TenantRecord {
            id: tenant,
            slug: slug.as_str().to_owned(),
            name_ct: cipher.seal("tenant.name", name.as_str().as_bytes()),
            site_key: format!("site_{}", parley_crypto::random_token()),
            allowed_origins: origins,
            created_at: now,
            audit_seq: 0,
            audit_head: GENESIS_HASH.to_vec(),
        };
        let key_record = TenantKeyRecord {
            tenant,
            key_id: 1,
            master_key_id,
            wrapped,
            created_at: now,
        };
        let events = [
            self.audit_event(
                tenant,
                AuditActor::Operator,
                "tenant.created",
                Some(tenant.to_string()),
                None,
                json!({ "slug": slug.as_str() }),
            ),
            self.audit_event(
                tenant,
                AuditActor::Operator,
                "user.created",
                Some(admin_id.to_string()),
                None,
                json!({ "role": Role::SiteAdmin }),
            ),
        ];
        self.store
            .create_tenant(&record, &key_record, &admin, &events)
            .await?;
        self.keys.insert(cipher);
        Ok(TenantCreated {
            tenant_id: tenant,
            name: name.as_str().to_owned(),
            slug: record.slug,
            site_key: record.site_key,
            admin_email: email.as_str().to_owned(),
            admin_user_id: admin_id,
            one_time_password: password,
        })
    }

    /// Tenants with their decrypted names. Operator only.
    pub async fn list_tenants(&self) -> Result<Vec<(TenantRecord, String)>, AppError> {
        let mut out = vec![];
        for t in self.store.list_tenants().await? {
            let cipher = self.keys.cipher(self.store.as_ref(), t.id).await?;
            let name = cipher.open_string("tenant.name", &t.name_ct)?;
            out.push((t, name));
        }
        Ok(out)
    }

    /// Add a new master key, save the key file, then re-wrap every tenant key under it, one
    /// tenant per transaction with its audit row. The old master key stays in the file (retired),
    /// so servers running meanwhile keep working and an interrupted rotation can simply be run
    /// again. `progress` is called after each tenant with (done, total). Operator only.
    pub async fn rotate_master_key(
        &self,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(String, usize), AppError> {
        self.keys.reload()?;
        let old = self.keys.ring();
        let mut new = old.clone();
        let new_id = new.rotate();
        new.save(self.keys.path())?;
        self.keys.set_ring(new.clone());

        let mut by_tenant: BTreeMap<TenantId, Vec<TenantKeyRecord>> = BTreeMap::new();
        for k in self.store.all_tenant_keys().await? {
            by_tenant.entry(k.tenant).or_default().push(k);
        }
        let total = by_tenant.len();
        for (i, (tenant, keys)) in by_tenant.into_iter().enumerate() {
            let mut rewrapped = vec![];
            for k in keys {
                let data = new.unwrap(tenant, k.key_id, &k.master_key_id, &k.wrapped)?;
                let (mk, wrapped) = new.wrap(tenant, k.key_id, &data);
                rewrapped.push(TenantKeyRecord {
                    master_key_id: mk,
                    wrapped,
                    ..k
                });
            }
            let event = self.audit_event(
                tenant,
                AuditActor::Operator,
                "keys.rotated",
                Some(tenant.to_string()),
                None,
                json!({ "master_key_id": new_id }),
            );
            self.store
                .rewrap_tenant_keys(tenant, &rewrapped, &event)
                .await?;
            progress(i + 1, total);
        }
        Ok((new_id, total))
    }

    /// Recompute a tenant's audit chain from the first event to the head. Operator only.
    pub async fn verify_audit_chain(&self, tenant: TenantId) -> Result<ChainReport, AppError> {
        let t = self.store.tenant(tenant).await?.ok_or(AppError::NotFound)?;
        let mut prev = GENESIS_HASH.to_vec();
        let mut expected_seq = 1;
        let mut count = 0;
        let broken = |seq: i64, why: &str, count: i64, head: &[u8]| ChainReport {
            tenant_id: tenant,
            events: count,
            ok: false,
            broken_at: Some(seq),
            problem: Some(why.to_owned()),
            head: hex(head),
        };
        loop {
            let page = self
                .store
                .audit_events(tenant, expected_seq - 1, 1000)
                .await?;
            if page.is_empty() {
                break;
            }
            for r in page {
                if r.seq != expected_seq {
                    return Ok(broken(
                        expected_seq,
                        "an event is missing",
                        count,
                        &t.audit_head,
                    ));
                }
                if r.prev_hash != prev {
                    return Ok(broken(
                        r.seq,
                        "the link to the previous event does not match",
                        count,
                        &t.audit_head,
                    ));
                }
                if chain_hash(&r.prev_hash, &r).as_slice() != r.hash.as_slice() {
                    return Ok(broken(
                        r.seq,
                        "the event was altered after it was written",
                        count,
                        &t.audit_head,
                    ));
                }
                prev = r.hash;
                expected_seq += 1;
                count += 1;
            }
        }
        if count != t.audit_seq || prev != t.audit_head {
            return Ok(broken(
                count + 1,
                "events after this point were removed",
                count,
                &t.audit_head,
            ));
        }
        Ok(ChainReport {
            tenant_id: tenant,
            events: count,
            ok: true,
            broken_at: None,
            problem: None,
            head: hex(&prev),
        })
    }
}

/// What `parley serve --demo` prints.
#[derive(Debug, Serialize)]
pub struct DemoTenant {
    pub slug: String,
    pub site_key: String,
    /// Set only when the demo tenant was created now (one-time passwords are shown once).
    pub admin: Option<(String, String)>,
    pub agent: Option<(String, String)>,
}

impl App {
    /// Create (once) a demo tenant with a site administrator, a "Support" department and an agent,
    /// and make sure `site_origin` may embed its widget. Operator only.
    pub async fn ensure_demo(&self, site_origin: &str) -> Result<DemoTenant, AppError> {
        let origin = parley_core::values::AllowedOrigin::parse(site_origin)?
            .as_str()
            .to_owned();
        if let Some(t) = self.store.tenant_by_slug("demo").await? {
            if !t.allowed_origins.contains(&origin) {
                let mut origins = t.allowed_origins.clone();
                origins.push(origin.clone());
                let ev = self.audit_event(
                    t.id,
                    AuditActor::Operator,
                    "site.updated",
                    Some(t.id.to_string()),
                    None,
                    json!({ "changed": ["allowed_origins"], "allowed_origins": origins }),
                );
                self.store
                    .update_tenant(t.id, None, Some(origins), &ev)
                    .await?;
            }
            return Ok(DemoTenant {
                slug: t.slug,
                site_key: t.site_key,
                admin: None,
                agent: None,
            });
        }
        let created = self
            .create_tenant(
                "Demo Shop",
                Some("demo"),
                "admin@demo.test",
                Some("Ada Admin"),
                &[origin],
            )
            .await?;
        let tenant = created.tenant_id;
        let dept = parley_core::store::DepartmentRecord {
            id: parley_core::DepartmentId::from_uuid(self.new_id()),
            tenant,
            name: "Support".into(),
            created_at: self.now(),
        };
        let ev = self.audit_event(
            tenant,
            AuditActor::Operator,
            "department.created",
            Some(dept.id.to_string()),
            None,
            json!({ "name": dept.name }),
        );
        self.store.create_department(tenant, &dept, &ev).await?;
        let cipher = self.keys.cipher(self.store.as_ref(), tenant).await?;
        let password = one_time_password();
        let plain = password.clone();
        let hash = tokio::task::spawn_blocking(move || parley_crypto::hash_password(&plain))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        let now = self.now();
        let id = UserId::from_uuid(self.new_id());
        let email = "agent@demo.test";
        let agent = UserRecord {
            id,
            tenant,
            email_ct: cipher.seal(&email_context(id), email.as_bytes()),
            email_index: cipher.blind_index("email", email),
            display_name_ct: cipher.seal(&name_context(id), b"Dana Demo"),
            role: Role::Agent,
            capacity: 3,
            password_hash: hash,
            must_change_password: true,
            disabled: false,
            departments: vec![dept.id],
            created_at: now,
            updated_at: now,
        };
        let ev = self.audit_event(
            tenant,
            AuditActor::Operator,
            "user.created",
            Some(id.to_string()),
            None,
            json!({ "role": Role::Agent, "department_ids": [dept.id] }),
        );
        self.store.create_user(tenant, &agent, &ev).await?;
        Ok(DemoTenant {
            slug: created.slug,
            site_key: created.site_key,
            admin: Some((created.admin_email, created.one_time_password)),
            agent: Some((email.to_owned(), password)),
        })
    }
}
