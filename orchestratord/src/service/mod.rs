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
    Rfc3339(secs).to_string()
}

/// A Unix time (seconds, clamped to the years 1970 to 9999) written as RFC 3339 UTC,
/// `1970-01-01T00:00:00Z`, without allocating: listings write one per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl Rfc3339 {
    /// The 20 ASCII bytes of the time.
    pub fn bytes(self) -> [u8; 20] {
        const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let secs = self.0.clamp(0, MAX);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut b = *b"0000-00-00T00:00:00Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, rem / 3600);
        put(14, 2, rem / 60 % 60);
        put(17, 2, rem % 60);
        b
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.bytes();
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let b = self.bytes();
        s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?)
    }
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
    /// Sorted names of large directories of local homes, between pages of a listing.
    pub(crate) listings: std::sync::Arc<crate::runtime::files::ListCache>,
    /// Users whose homes were swept of earlier runs' staging leftovers in this run.
    pub(crate) swept: std::sync::Mutex<std::collections::HashSet<i64>>,
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
            listings: Default::default(),
            swept: Default::default(),
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
        assert_eq!(super::rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_agrees_with_humantime_across_the_range() {
        // Every day boundary and odd second over the leap-year rules (1900/2000/2100).
        let mut secs = 0i64;
        while secs < 253_402_300_799 {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            assert_eq!(
                super::rfc3339(secs),
                humantime::format_rfc3339_seconds(t).to_string(),
                "{secs}"
            );
            secs += 86_400 * 13 + 3_607;
        }
    }
}
