//! Use cases. Handlers in `api` parse and authenticate, then call a method here with the
//! [`Actor`]; this layer owns authorization ("may this principal act for that user?"),
//! validation against policy, and the audit trail of every mutating call.
//!
//! Authorization rule: admins act on everything; a user principal acts on itself; a
//! service principal (the web front end) acts for any non-admin user. A principal asking
//! for a user it may not act for gets [`ServiceError::NotFound`], exactly what it would
//! get for a user that does not exist, so user names cannot be probed.

pub mod auth;
mod boxes;
pub mod files;
pub mod net;
mod registry;
mod state;
pub mod terminal;
mod users;

use std::time::{SystemTime, UNIX_EPOCH};

use policy::{Config, ProfileSet, Role};
use tracing::error;

use crate::store::{AuditFilter, AuditRecord, Store, StoreError, UserRecord};

pub use boxes::{
    run_exec, BoxFilter, BoxManager, BoxView, BulkRequest, BulkResult, ExecBody, ExecOutput,
    LimitsView, PreparedExec, UsageView,
};
pub use registry::NewService;
pub use state::StateValue;
pub use users::{NewUserRequest, UpdateUserRequest, UserView};

/// A Unix time as an RFC 3339 UTC string, as the API shows times.
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    Invalid { kind: &'static str, message: String },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{message}")]
    Conflict { kind: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("storage failure")]
    Store(#[from] StoreError),
    #[error("cannot get random bytes")]
    Random(#[source] std::io::Error),
    /// The box runtime failed; the message names the step (also kept as the box's last
    /// error, which its owner can read in the status anyway).
    #[error("{0}")]
    BoxFailed(String),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Internal(&'static str),
    /// An upload is larger than the configured limit.
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The home's filesystem or quota is full.
    #[error("no space left in the home")]
    NoSpace,
}

impl ServiceError {
    pub(crate) fn invalid(kind: &'static str, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Invalid {
            kind,
            message: e.to_string(),
        }
    }

    /// How the audit log classifies this failure.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            ServiceError::Invalid { .. }
            | ServiceError::NotFound { .. }
            | ServiceError::Conflict { .. }
            | ServiceError::TooLarge { .. }
            | ServiceError::NoSpace => "invalid",
            ServiceError::Unauthorized(_) | ServiceError::Forbidden(_) => "denied",
            ServiceError::Store(_)
            | ServiceError::Random(_)
            | ServiceError::BoxFailed(_)
            | ServiceError::Unavailable(_)
            | ServiceError::Internal(_) => "error",
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Root on the Unix socket, or an admin token (named).
    Admin { name: String },
    /// A user token: acts for this user with this user's role.
    User(Box<UserRecord>),
    /// A service token: the web front end.
    Service { name: String },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::User(u) => u.role == Role::Admin,
            Principal::Service { .. } => false,
        }
    }

    pub fn may_act_for(&self, target: &UserRecord) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::User(u) => u.role == Role::Admin || u.id == target.id,
            Principal::Service { .. } => target.role != Role::Admin,
        }
    }

    /// The name written to the audit log's `actor` column.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Admin { name } => name.clone(),
            Principal::User(u) => u.login.to_string(),
            Principal::Service { name } => format!("service:{name}"),
        }
    }
}

/// A principal plus where the request came from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub token_id: Option<String>,
    pub peer: String,
}

impl Actor {
    /// Root on the local Unix socket.
    pub fn root() -> Actor {
        Actor {
            principal: Principal::Admin {
                name: "root".into(),
            },
            token_id: None,
            peer: "unix".into(),
        }
    }
}

/// The application: configuration, profiles, the store and (when enabled) the boxes.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub profiles: ProfileSet,
    pub store: Store,
    pub boxes: Option<BoxManager>,
    /// Open directory watches per user (file WebSockets), bounded.
    pub(crate) watches: files::UserSlots,
    /// Downloads and uploads in flight per user, bounded.
    pub(crate) transfers: files::UserSlots,
    /// Terminal sessions and tickets.
    pub terminals: terminal::Terminals,
}

impl App {
    pub fn new(config: Config, profiles: ProfileSet, store: Store) -> App {
        App {
            config,
            profiles,
            store,
            boxes: None,
            watches: files::UserSlots::default(),
            transfers: files::UserSlots::default(),
            terminals: terminal::Terminals::default(),
        }
    }

    /// The same app with the box runtime enabled.
    pub fn with_boxes(mut self, boxes: BoxManager) -> App {
        self.boxes = Some(boxes);
        self
    }

    pub(crate) fn require_admin(&self, actor: &Actor) -> Result<()> {
        if actor.principal.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::Forbidden("this operation needs an admin"))
        }
    }

    /// Finds a user the actor may act for; anything else is "not found".
    pub(crate) fn user_for(&self, actor: &Actor, key: &str) -> Result<UserRecord> {
        // A user addressing themself: authentication has just loaded this very record.
        if let Principal::User(me) = &actor.principal {
            if me.login.as_str() == key || me.email.as_str().eq_ignore_ascii_case(key) {
                return Ok((**me).clone());
            }
        }
        match self.store.find_user(key)? {
            Some(u) if actor.principal.may_act_for(&u) => Ok(u),
            _ => Err(ServiceError::NotFound { what: "user" }),
        }
    }

    /// Writes one audit entry. A failure to audit is logged loudly but does not undo the
    /// operation it describes (that already happened).
    pub fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        outcome: &str,
        detail: Option<String>,
    ) {
        self.write_audit(
            actor.principal.audit_name(),
            actor.token_id.clone(),
            &actor.peer,
            action,
            target,
            outcome,
            detail,
        );
    }

    /// Audits a failed authentication: there is no principal yet, only a peer.
    pub fn audit_auth_failure(&self, peer: &str, target: &str, reason: &str) {
        self.write_audit(
            "anonymous".into(),
            None,
            peer,
            "auth.failure",
            target,
            "denied",
            Some(reason.into()),
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_audit(
        &self,
        actor: String,
        token_id: Option<String>,
        peer: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: Option<String>,
    ) {
        let rec = AuditRecord {
            id: 0,
            time: now(),
            actor,
            token_id,
            peer: peer.into(),
            action: action.into(),
            target: target.chars().take(256).collect(),
            outcome: outcome.into(),
            detail,
        };
        if let Err(err) = self.store.append_audit(&rec) {
            error!(?err, action, target, "failed to write audit entry");
        }
    }

    /// Runs a mutating use case and audits its outcome.
    fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let result = f();
        self.audit_result(actor, action, target, &result);
        result
    }

    /// Audit entries, newest first. `filter.actor` may name a user by email: the log
    /// records logins, so it is resolved first.
    pub fn query_audit(&self, actor: &Actor, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.require_admin(actor)?;
        match &filter.actor {
            Some(key) if key.contains('@') => {
                let mut by_login = filter.clone();
                if let Some(user) = self.store.find_user(key)? {
                    by_login.actor = Some(user.login.to_string());
                }
                Ok(self.store.query_audit(&by_login)?)
            }
            _ => Ok(self.store.query_audit(filter)?),
        }
    }

    /// Deletes audit entries older than the retention window.
    pub fn prune_audit(&self) -> Result<usize> {
        let keep = self.config.audit.retention.as_secs() as i64;
        Ok(self.store.prune_audit(now() - keep)?)
    }

    pub fn counts(&self, actor: &Actor) -> Result<crate::store::Counts> {
        self.require_admin(actor)?;
        Ok(self.store.counts(now())?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_renders_utc_seconds() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
