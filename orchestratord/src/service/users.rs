//! Users: create, list, show, update, delete.

use std::collections::BTreeSet;

use policy::plan::{check_assignments, PlanUser};
use policy::{DisplayName, Email, Profile, ProfileName, Role, ServiceName, UserName};
use serde::{Deserialize, Serialize};

use super::{now, rfc3339, Actor, App, Result, ServiceError};
use crate::store::{Allocation, NewUser, StoreError, UserFilter, UserRecord, UserUpdate};

/// Body of `POST /api/v1/users`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewUserRequest {
    pub email: String,
    pub display_name: String,
    /// `admin`, `member` or `demo`.
    pub role: String,
    pub os_profile: String,
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Defaults to the email's local part.
    #[serde(default)]
    pub login: Option<String>,
}

/// Body of `PATCH /api/v1/users/{user}`: only the given fields change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateUserRequest {
    pub display_name: Option<String>,
    pub role: Option<String>,
    pub os_profile: Option<String>,
    pub services: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub login: String,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub os_profile: String,
    pub services: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub disabled: bool,
    pub subnet: String,
    pub box_state: String,
    pub created_at: String,
    pub updated_at: String,
}

fn parse_services(list: &[String]) -> Result<BTreeSet<ServiceName>> {
    list.iter()
        .map(|s| ServiceName::parse(s).map_err(|e| ServiceError::invalid(e.kind(), e)))
        .collect()
}

fn parse_role(s: &str) -> Result<Role> {
    s.parse::<Role>()
        .map_err(|e| ServiceError::invalid(e.kind(), e))
}

impl App {
    pub fn user_view(&self, u: &UserRecord) -> UserView {
        UserView {
            login: u.login.to_string(),
            email: u.email.to_string(),
            display_name: u.display_name.to_string(),
            role: u.role.to_string(),
            os_profile: u.profile.to_string(),
            services: u.services.iter().map(ToString::to_string).collect(),
            uid: u.uid,
            gid: u.gid,
            disabled: u.disabled,
            subnet: self
                .config
                .network
                .pool
                .slot(u.slot)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            box_state: u.box_state.clone(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }

    fn profile(&self, name: &str) -> Result<&Profile> {
        self.profiles.get(name).ok_or_else(|| {
            ServiceError::invalid(
                "unknown_profile",
                format!(
                    "unknown profile {:?}",
                    name.chars().take(64).collect::<String>()
                ),
            )
        })
    }

    /// Checks role, profile and services fit together (the policy compiler's rules).
    fn check_assignment(
        &self,
        name: &UserName,
        role: Role,
        profile: &Profile,
        services: &BTreeSet<ServiceName>,
    ) -> Result<()> {
        if !profile.suits(role) {
            return Err(ServiceError::invalid(
                "profile_unsuitable",
                format!("profile {} does not suit role {role} (demo users need an ephemeral, read-only profile)", profile.name),
            ));
        }
        let user = PlanUser {
            name: name.clone(),
            uid: 0,
            gid: 0,
            role,
            disabled: false,
            slot: 0,
            services: services.clone(),
        };
        let registry = self.store.list_services()?;
        check_assignments(&user, &registry).map_err(|e| ServiceError::invalid(e.kind(), e))?;
        Ok(())
    }

    pub fn create_user(&self, actor: &Actor, req: NewUserRequest) -> Result<UserRecord> {
        // Audit under the login the user would get, falling back to what was sent.
        let target = match (&req.login, Email::parse(&req.email)) {
            (Some(l), _) => l.clone(),
            (None, Ok(e)) => {
                UserName::derive_from_email(&e).map_or(req.email.clone(), |l| l.to_string())
            }
            (None, Err(_)) => req.email.clone(),
        };
        self.audited(actor, "user.create", &target, || {
            self.require_admin(actor)?;
            let email = Email::parse(&req.email).map_err(|e| ServiceError::invalid(e.kind(), e))?;
            let login = match &req.login {
                Some(l) => UserName::parse(l),
                None => UserName::derive_from_email(&email),
            }
            .map_err(|e| ServiceError::invalid(e.kind(), e))?;
            let display_name = DisplayName::parse(&req.display_name)
                .map_err(|e| ServiceError::invalid(e.kind(), e))?;
            let role = parse_role(&req.role)?;
            let profile = self.profile(&req.os_profile)?;
            let services = parse_services(req.services.as_deref().unwrap_or_default())?;
            self.check_assignment(&login, role, profile, &services)?;
            let new = NewUser {
                login,
                email,
                display_name,
                role,
                profile: profile.name.clone(),
                services,
            };
            let cfg = &self.config;
            let alloc = Allocation {
                uid_min: cfg.users.uid_min,
                uid_limit: cfg.boxes.uid_base,
                slots: cfg.network.pool.slots(),
            };
            self.store
                .create_user(&new, alloc, now())
                .map_err(|e| match e {
                    StoreError::Conflict("login") => ServiceError::Conflict {
                        kind: "login_taken",
                        message: format!("login {} is taken; pass another login", new.login),
                    },
                    StoreError::Conflict(_) => ServiceError::Conflict {
                        kind: "email_taken",
                        message: format!("a user with email {} exists", new.email),
                    },
                    StoreError::PoolExhausted => ServiceError::invalid(
                        "pool_exhausted",
                        "the subnet pool has no free /24 left; enlarge network.pool",
                    ),
                    StoreError::UidsExhausted => ServiceError::invalid(
                        "uids_exhausted",
                        "no free uid left below boxes.uid_base",
                    ),
                    other => other.into(),
                })
                .inspect(|u| self.net_refresh(u))
        })
    }

    pub fn list_users(
        &self,
        actor: &Actor,
        role: Option<&str>,
        profile: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<Vec<UserRecord>> {
        self.require_admin(actor)?;
        let filter = UserFilter {
            role: role.map(parse_role).transpose()?,
            profile: profile
                .map(|p| ProfileName::parse(p).map_err(|e| ServiceError::invalid(e.kind(), e)))
                .transpose()?,
            disabled,
        };
        Ok(self.store.list_users(&filter)?)
    }

    pub fn show_user(&self, actor: &Actor, key: &str) -> Result<UserRecord> {
        self.user_for(actor, key)
    }

    pub fn update_user(
        &self,
        actor: &Actor,
        key: &str,
        req: UpdateUserRequest,
    ) -> Result<UserRecord> {
        self.audited(actor, "user.update", key, || {
            self.require_admin(actor)?;
            let current = self.user_for(actor, key)?;
            let update = UserUpdate {
                display_name: req
                    .display_name
                    .as_deref()
                    .map(|n| DisplayName::parse(n).map_err(|e| ServiceError::invalid(e.kind(), e)))
                    .transpose()?,
                role: req.role.as_deref().map(parse_role).transpose()?,
                profile: req
                    .os_profile
                    .as_deref()
                    .map(|p| self.profile(p).map(|p| p.name.clone()))
                    .transpose()?,
                services: req.services.as_deref().map(parse_services).transpose()?,
                disabled: req.disabled,
            };
            let role = update.role.unwrap_or(current.role);
            let profile =
                self.profile(update.profile.as_ref().unwrap_or(&current.profile).as_str())?;
            let services = update.services.as_ref().unwrap_or(&current.services);
            self.check_assignment(&current.login, role, profile, services)?;
            let updated = self
                .store
                .update_user(current.id, &update, now())?
                .ok_or(ServiceError::NotFound { what: "user" })?;
            // The new role/profile/services are in force on the box's network when this
            // returns, without restarting the box.
            self.net_refresh(&updated);
            if updated.disabled || !profile.spec.terminal {
                self.terminals.revoke_user(updated.id);
            }
            Ok(updated)
        })
    }

    pub fn delete_user(&self, actor: &Actor, key: &str) -> Result<()> {
        self.audited(actor, "user.delete", key, || {
            self.require_admin(actor)?;
            let user = self.user_for(actor, key)?;
            if !self.store.delete_user(user.id)? {
                return Err(ServiceError::NotFound { what: "user" });
            }
            self.net_remove(&user);
            self.terminals.revoke_user(user.id);
            Ok(())
        })
    }
}
