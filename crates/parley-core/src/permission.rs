//! Roles and the permission matrix. Every use case names one `Permission`; a role either has it or
//! the answer is "forbidden". Deny by default: a permission no role lists is granted to nobody.

use crate::{DepartmentId, TenantId, UserId};
use serde::{Deserialize, Serialize};

/// The four built-in roles, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant: users, roles, security settings, audit trail.
    SiteAdmin,
    /// Runs the site except security settings and user administration.
    SiteManager,
    /// Runs their own departments: their agents and queues.
    DepartmentManager,
    /// Takes chats in the console; manages nothing.
    Agent,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::SiteAdmin,
        Role::SiteManager,
        Role::DepartmentManager,
        Role::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::SiteAdmin => "site_admin",
            Role::SiteManager => "site_manager",
            Role::DepartmentManager => "department_manager",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role's permissions. The matrix lives here and nowhere else.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::SiteAdmin => &[
                UseConsole,
                ViewSite,
                EditSite,
                EditSiteSecurity,
                ViewDepartments,
                ManageDepartments,
                ViewUsers,
                ManageUsers,
                ViewAudit,
                SuperviseChats,
            ],
            Role::SiteManager => &[
                UseConsole,
                ViewSite,
                EditSite,
                ViewDepartments,
                ManageDepartments,
                ViewUsers,
                SuperviseChats,
            ],
            Role::DepartmentManager => &[
                UseConsole,
                ViewSite,
                ViewDepartments,
                ViewUsers,
                ManageUsers,
                SuperviseChats,
            ],
            Role::Agent => &[UseConsole, ViewSite, ViewDepartments],
        }
    }

    pub fn has(self, p: Permission) -> bool {
        self.permissions().contains(&p)
    }
}

/// What an action needs. Names are stable: they appear in audit events and API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Sign in to the agent console.
    UseConsole,
    /// Read the site's name, key and settings.
    ViewSite,
    /// Change the site's name.
    EditSite,
    /// Change security settings: allowed website origins.
    EditSiteSecurity,
    ViewDepartments,
    ManageDepartments,
    /// List users (department managers: only their departments' users).
    ViewUsers,
    /// Create, change and disable users (department managers: only agents of their departments).
    ManageUsers,
    ViewAudit,
    /// See the queues and live chats of one's scope (site-wide roles: all departments;
    /// department managers: their own).
    SuperviseChats,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::UseConsole => "use_console",
            Permission::ViewSite => "view_site",
            Permission::EditSite => "edit_site",
            Permission::EditSiteSecurity => "edit_site_security",
            Permission::ViewDepartments => "view_departments",
            Permission::ManageDepartments => "manage_departments",
            Permission::ViewUsers => "view_users",
            Permission::ManageUsers => "manage_users",
            Permission::ViewAudit => "view_audit",
            Permission::SuperviseChats => "supervise_chats",
        }
    }
}

/// Who is acting: a signed-in user of one tenant, with their role and departments.
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant: TenantId,
    pub user: UserId,
    pub role: Role,
    pub departments: Vec<DepartmentId>,
}

impl Actor {
    pub fn can(&self, p: Permission) -> bool {
        self.role.has(p)
    }

    /// Whether this actor's scope covers a department: site-wide roles cover all, others their own.
    pub fn covers_department(&self, d: crate::DepartmentId) -> bool {
        self.department_scope().is_none_or(|own| own.contains(&d))
    }

    /// The departments this actor's chat views cover: `None` for site-wide roles (all of them).
    pub fn department_scope(&self) -> Option<&[DepartmentId]> {
        match self.role {
            Role::SiteAdmin | Role::SiteManager => None,
            Role::DepartmentManager | Role::Agent => Some(&self.departments),
        }
    }

    /// Whether this actor may see a user with the given departments. Site-wide roles see everyone;
    /// a department manager sees the users who share a department with them.
    pub fn can_view_user(&self, target_departments: &[DepartmentId]) -> bool {
        match self.role {
            Role::SiteAdmin | Role::SiteManager => true,
            Role::DepartmentManager => target_departments
                .iter()
                .any(|d| self.departments.contains(d)),
            Role::Agent => false,
        }
    }

    /// Whether this actor may create or change a user who has (or will have) `role` and
    /// `departments`. Site administrators manage everyone; a department manager manages only
    /// agents whose departments are all among the manager's own.
    pub fn can_manage_user(&self, role: Role, departments: &[DepartmentId]) -> bool {
        if !self.can(Permission::ManageUsers) {
            return false;
        }
        match self.role {
            Role::SiteAdmin => true,
            Role::DepartmentManager => {
                role == Role::Agent
                    && !departments.is_empty()
                    && departments.iter().all(|d| self.departments.contains(d))
            }
            Role::SiteManager | Role::Agent => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, departments: Vec<DepartmentId>) -> Actor {
        let id = uuid::Uuid::from_u128(1);
        Actor {
            tenant: TenantId::from_uuid(id),
            user: UserId::from_uuid(id),
            role,
            departments,
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn only_site_admin_has_security_audit_and_user_admin_everywhere() {
        assert!(Role::SiteAdmin.has(Permission::EditSiteSecurity));
        assert!(!Role::SiteManager.has(Permission::EditSiteSecurity));
        assert!(!Role::SiteManager.has(Permission::ManageUsers));
        assert!(!Role::Agent.has(Permission::ManageDepartments));
        for r in [Role::SiteManager, Role::DepartmentManager, Role::Agent] {
            assert!(!r.has(Permission::ViewAudit));
        }
    }

    #[test]
    fn department_manager_manages_only_own_agents() {
        let d1 = DepartmentId::from_uuid(uuid::Uuid::from_u128(10));
        let d2 = DepartmentId::from_uuid(uuid::Uuid::from_u128(11));
        let m = actor(Role::DepartmentManager, vec![d1]);
        assert!(m.can_manage_user(Role::Agent, &[d1]));
        assert!(!m.can_manage_user(Role::Agent, &[d1, d2]));
        assert!(!m.can_manage_user(Role::Agent, &[]));
        assert!(!m.can_manage_user(Role::DepartmentManager, &[d1]));
        assert!(!m.can_manage_user(Role::SiteAdmin, &[d1]));
        assert!(m.can_view_user(&[d1, d2]));
        assert!(!m.can_view_user(&[d2]));
        let agent = actor(Role::Agent, vec![d1]);
        assert!(!agent.can_manage_user(Role::Agent, &[d1]));
        assert!(!agent.can_view_user(&[d1]));
        assert!(actor(Role::SiteAdmin, vec![]).can_manage_user(Role::SiteAdmin, &[]));
    }
}
