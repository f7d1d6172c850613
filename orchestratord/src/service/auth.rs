//! Bearer tokens: `orch_<id>_<secret>`.
//!
//! The 12-hex-digit id is a public handle (listed, revoked, written to the audit log); the
//! 64-hex-digit secret (32 random bytes) is shown once and only its SHA-256 is stored.
//! Verification looks the row up by id, then compares the fixed-length hashes in constant
//! time, so neither the lookup nor the comparison leaks how much of a secret was right.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use policy::units::Span;
use policy::Role;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{now, rfc3339, Actor, App, Principal, Result, ServiceError};
use crate::store::{TokenKind, TokenRecord};

const PREFIX: &str = "orch_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 64;
/// Default lifetime of a token.
pub const DEFAULT_EXPIRY: Span = Span::days(90);
const MAX_EXPIRY: Span = Span::days(3650);

/// A freshly minted token: the only time the secret exists outside the caller.
#[derive(Debug)]
pub struct Minted {
    pub secret: String,
    pub record: TokenRecord,
}

pub(crate) fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(buf))
}

pub(crate) fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits a presented token into (id, secret) if it has the right shape.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy =
        |s: &str, n| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hexy(id, ID_LEN) && hexy(secret, SECRET_LEN)).then_some((id, secret))
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub kind: String,
    pub user: Option<String>,
    pub name: Option<String>,
    pub expires_in: Option<String>,
}

/// A token as shown in listings (never the secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub kind: String,
    pub user: Option<String>,
    pub name: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(t: &TokenRecord) -> Self {
        TokenInfo {
            id: t.id.clone(),
            kind: t.kind.as_str().into(),
            user: t.user_login.clone(),
            name: t.name.clone(),
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at),
            revoked_at: t.revoked_at.map(rfc3339),
        }
    }
}

impl App {
    /// Mints and stores a token. No authorization: callers check first.
    fn mint(
        &self,
        kind: TokenKind,
        user_id: Option<i64>,
        name: &str,
        expiry: Span,
    ) -> Result<Minted> {
        let id = random_hex(ID_LEN / 2).map_err(ServiceError::Random)?;
        let secret_part = random_hex(SECRET_LEN / 2).map_err(ServiceError::Random)?;
        let created = now();
        let record = TokenRecord {
            id: id.clone(),
            hash: hash(&secret_part),
            kind,
            user_id,
            user_login: None,
            name: name.into(),
            created_at: created,
            expires_at: created.saturating_add(expiry.as_secs() as i64),
            revoked_at: None,
        };
        self.store.insert_token(&record)?;
        Ok(Minted {
            secret: format!("{PREFIX}{id}_{secret_part}"),
            record,
        })
    }

    /// Verifies a bearer token and returns the principal it stands for.
    pub fn authenticate(&self, token: &str) -> Result<(Principal, String)> {
        let (id, secret) = parse(token).ok_or(ServiceError::Unauthorized("malformed token"))?;
        let presented = hash(secret);
        let record = self.store.token(id)?;
        // Compare against a dummy when the id is unknown so both paths do the same work.
        let stored = record.as_ref().map(|r| r.hash).unwrap_or([0u8; 32]);
        let matches: bool = presented.ct_eq(&stored).into();
        let record = match record {
            Some(r) if matches => r,
            _ => return Err(ServiceError::Unauthorized("invalid token")),
        };
        if record.revoked_at.is_some() {
            return Err(ServiceError::Unauthorized("token revoked"));
        }
        if record.expires_at <= now() {
            return Err(ServiceError::Unauthorized("token expired"));
        }
        let principal = match record.kind {
            TokenKind::Admin => Principal::Admin {
                name: format!("admin:{}", record.name),
            },
            TokenKind::Service => Principal::Service { name: record.name },
            TokenKind::User => {
                let uid = record
                    .user_id
                    .ok_or(ServiceError::Unauthorized("invalid token"))?;
                let user = self
                    .store
                    .user_by_id(uid)?
                    .ok_or(ServiceError::Unauthorized("invalid token"))?;
                if user.disabled {
                    return Err(ServiceError::Unauthorized("user is disabled"));
                }
                Principal::User(Box::new(user))
            }
        };
        Ok((principal, record.id))
    }

    pub fn create_token(&self, actor: &Actor, req: NewToken) -> Result<(String, TokenInfo)> {
        let target = req.user.clone().unwrap_or_else(|| req.kind.clone());
        self.audited(actor, "token.create", &target, || {
            let kind = TokenKind::parse(&req.kind).ok_or_else(|| {
                ServiceError::invalid("invalid_token_kind", "kind must be admin, user or service")
            })?;
            let expiry = match &req.expires_in {
                None => DEFAULT_EXPIRY,
                Some(s) => s
                    .parse::<Span>()
                    .ok()
                    .filter(|e| *e >= Span::minutes(1) && *e <= MAX_EXPIRY)
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "invalid_expiry",
                            "expiresIn must be a span from 1m to 3650d, like 90d",
                        )
                    })?,
            };
            let name = req
                .name
                .clone()
                .unwrap_or_else(|| kind.as_str().to_string());
            if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
                return Err(ServiceError::invalid(
                    "invalid_token_name",
                    "name must be 1 to 64 printable characters",
                ));
            }
            let owner = match (kind, &req.user) {
                (TokenKind::User, None) => {
                    return Err(ServiceError::invalid(
                        "invalid_body",
                        "a user token needs a user",
                    ))
                }
                (TokenKind::User, Some(u)) => {
                    match &actor.principal {
                        Principal::Service { .. } => {
                            return Err(ServiceError::Forbidden(
                                "service tokens cannot create tokens",
                            ))
                        }
                        Principal::User(me) if me.role == Role::Demo => {
                            return Err(ServiceError::Forbidden("demo users cannot create tokens"))
                        }
                        _ => {}
                    }
                    Some(self.user_for(actor, u)?)
                }
                (_, Some(_)) => {
                    return Err(ServiceError::invalid(
                        "invalid_body",
                        "only user tokens name a user",
                    ))
                }
                (_, None) => {
                    self.require_admin(actor)?;
                    None
                }
            };
            let minted = self.mint(kind, owner.as_ref().map(|u| u.id), &name, expiry)?;
            let mut record = minted.record;
            record.user_login = owner.map(|u| u.login.to_string());
            Ok((minted.secret, TokenInfo::from(&record)))
        })
    }

    pub fn list_tokens(&self, actor: &Actor, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let filter = match (&actor.principal, user) {
            (Principal::Service { .. }, _) => {
                return Err(ServiceError::Forbidden("service tokens cannot list tokens"))
            }
            (p, None) if p.is_admin() => None,
            (Principal::User(me), None) => Some(me.id),
            (_, Some(u)) => Some(self.user_for(actor, u)?.id),
            (Principal::Admin { .. }, None) => None,
        };
        Ok(self
            .store
            .list_tokens(filter)?
            .iter()
            .map(TokenInfo::from)
            .collect())
    }

    pub fn revoke_token(&self, actor: &Actor, id: &str) -> Result<()> {
        self.audited(actor, "token.revoke", id, || {
            if matches!(actor.principal, Principal::Service { .. }) {
                return Err(ServiceError::Forbidden(
                    "service tokens cannot revoke tokens",
                ));
            }
            let token = self
                .store
                .token(id)?
                .ok_or(ServiceError::NotFound { what: "token" })?;
            let mine = match &actor.principal {
                Principal::User(me) => token.user_id == Some(me.id),
                _ => false,
            };
            if !actor.principal.is_admin() && !mine {
                return Err(ServiceError::NotFound { what: "token" });
            }
            self.store.revoke_token(id, now())?;
            self.terminals.revoke_token(id);
            Ok(())
        })
    }

    /// On first start (no admin token was ever created), mints one and writes it to `path`
    /// with mode 0600 (written to a temporary file, fsynced and renamed into place).
    /// Returns whether a token was written.
    pub fn bootstrap_admin_token(&self, path: &Path) -> anyhow::Result<bool> {
        use anyhow::Context;
        if self.store.has_admin_token()? {
            return Ok(false);
        }
        let minted = self.mint(TokenKind::Admin, None, "bootstrap", DEFAULT_EXPIRY)?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(minted.secret.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        self.audit(
            &Actor::root(),
            "token.create",
            "admin",
            "ok",
            Some("bootstrap token".into()),
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape_is_checked_before_any_lookup() {
        let good = format!("orch_{}_{}", "a".repeat(12), "b".repeat(64));
        assert!(parse(&good).is_some());
        for bad in [
            "".to_string(),
            good.replace("orch_", "orc_"),
            good.to_uppercase(),
            format!("orch_{}_{}", "a".repeat(11), "b".repeat(64)),
            format!("orch_{}_{}", "a".repeat(12), "b".repeat(63)),
            format!("orch_{}_{}x", "a".repeat(12), "b".repeat(64)),
            format!("orch_{}{}", "a".repeat(12), "b".repeat(64)),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?}");
        }
    }
}
