//! The service registry: add, list, remove, and the access check.

use policy::plan::{usable_services, PlanUser};
use policy::{Category, Role, Service, ServiceName};
use serde::Deserialize;

use super::{now, Actor, App, Principal, Result, ServiceError};
use crate::store::{StoreError, UserRecord};

/// Body of `POST /api/v1/services`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewService {
    pub name: String,
    #[serde(default = "default_category")]
    pub category: String,
    pub url: String,
    /// `host:port` (IPv6 as `[addr]:port`).
    pub upstream: String,
    /// Least role that may use it when assigned. Default `member`.
    #[serde(default = "default_role")]
    pub required_role: String,
    /// Login or email of the owning user (who may always use it).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub icon: Option<String>,
}

fn default_category() -> String {
    "apps".into()
}

fn default_role() -> String {
    "member".into()
}

fn plan_user(u: &UserRecord) -> PlanUser {
    PlanUser {
        name: u.login.clone(),
        uid: u.uid,
        gid: u.gid,
        role: u.role,
        disabled: u.disabled,
        slot: u.slot,
        services: u.services.clone(),
    }
}

impl App {
    pub fn add_service(&self, actor: &Actor, req: NewService) -> Result<Service> {
        self.audited(actor, "service.create", &req.name, || {
            self.require_admin(actor)?;
            let inv =
                |kind: &'static str, e: &dyn std::fmt::Display| ServiceError::invalid(kind, e);
            let name = ServiceName::parse(&req.name).map_err(|e| inv(e.kind(), &e))?;
            let category = Category::parse(&req.category).map_err(|e| inv(e.kind(), &e))?;
            let url = req
                .url
                .parse()
                .map_err(|e: policy::service::ServiceError| inv(e.kind(), &e))?;
            let upstream = req
                .upstream
                .parse()
                .map_err(|e: policy::service::ServiceError| inv(e.kind(), &e))?;
            let required_role: Role = req
                .required_role
                .parse()
                .map_err(|e: policy::NameError| inv(e.kind(), &e))?;
            let icon = req
                .icon
                .as_deref()
                .map(|i| {
                    i.parse()
                        .map_err(|e: policy::service::ServiceError| inv(e.kind(), &e))
                })
                .transpose()?;
            let owner = match &req.owner {
                None => None,
                Some(key) => Some(self.store.find_user(key)?.ok_or_else(|| {
                    ServiceError::invalid("unknown_owner", "the owner is not a registered user")
                })?),
            };
            let service = Service {
                name,
                category,
                url,
                upstream,
                required_role,
                owner: owner.as_ref().map(|u| u.login.clone()),
                icon,
            };
            self.store
                .insert_service(&service, owner.map(|u| u.id), now())
                .map_err(|e| match e {
                    StoreError::Conflict(_) => ServiceError::Conflict {
                        kind: "service_exists",
                        message: format!("service {} is already registered", service.name),
                    },
                    other => other.into(),
                })?;
            self.net_refresh_all();
            Ok(service)
        })
    }

    /// The registry for admins and service tokens; a user's usable services otherwise.
    pub fn list_services(&self, actor: &Actor) -> Result<Vec<Service>> {
        match &actor.principal {
            Principal::User(me) if !actor.principal.is_admin() => self.usable_services(me),
            _ => Ok(self.store.list_services()?),
        }
    }

    pub fn remove_service(&self, actor: &Actor, name: &str) -> Result<()> {
        self.audited(actor, "service.delete", name, || {
            self.require_admin(actor)?;
            if self.store.delete_service(name)? {
                self.net_refresh_all();
                Ok(())
            } else {
                Err(ServiceError::NotFound { what: "service" })
            }
        })
    }

    fn usable_services(&self, user: &UserRecord) -> Result<Vec<Service>> {
        let registry = self.store.list_services()?;
        let profile = self
            .profiles
            .get(user.profile.as_str())
            .ok_or(ServiceError::NotFound { what: "profile" })?;
        let usable = usable_services(&plan_user(user), profile, &registry);
        Ok(usable.into_iter().cloned().collect())
    }

    pub fn user_services(&self, actor: &Actor, key: &str) -> Result<Vec<Service>> {
        let user = self.user_for(actor, key)?;
        self.usable_services(&user)
    }

    /// `may user U use service S`: two indexed lookups and the pure access rule.
    pub fn may_use(&self, actor: &Actor, key: &str, service: &str) -> Result<(UserRecord, bool)> {
        let user = self.user_for(actor, key)?;
        let svc = self
            .store
            .service(service)?
            .ok_or(ServiceError::NotFound { what: "service" })?;
        let profile_services = self
            .profiles
            .get(user.profile.as_str())
            .map(|p| p.spec.services.as_slice())
            .unwrap_or_default();
        let allowed = svc.may_be_used_by(&policy::service::Subject {
            name: &user.login,
            role: user.role,
            disabled: user.disabled,
            services: &user.services,
            profile_services,
        });
        Ok((user, allowed))
    }
}
