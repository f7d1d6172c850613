//! Authentication: who is calling, from where.
//!
//! - Unix socket: the peer's uid comes from `SO_PEERCRED` (set by the serve loop); uid 0
//!   acts as admin, anyone else is refused.
//! - TCP: `Authorization: Bearer <token>`. Failures are audited and counted per client
//!   address; an address with too many recent failures is refused with 429 before its
//!   token is even looked at.
//!
//! The client address is the TCP peer, or the right-most `X-Forwarded-For` entry that is
//! not itself a trusted proxy when the peer is one of the configured trusted proxies.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::AppState;
use crate::service::{Actor, ServiceError};

/// Connection-level facts the serve loop attaches to every request.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix { uid: Option<u32> },
}

/// Failed authentications allowed per address per window before 429.
const MAX_FAILURES: u32 = 20;
const WINDOW: Duration = Duration::from_secs(60);

/// Fixed-window counter of authentication failures per client address.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let map = self.lock();
        matches!(map.get(&ip), Some((start, n)) if start.elapsed() < WINDOW && *n >= MAX_FAILURES)
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut map = self.lock();
        // Bound memory under a spray of addresses: drop expired windows first.
        if map.len() > 10_000 {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// The client's address as far as we can trust it.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer_ip = peer.ip();
    if !trusted.contains(&peer_ip) {
        return peer_ip;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    forwarded
        .iter()
        .rev()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer_ip)
}

/// How audit entries name the peer of a request: the client's address (as far as it can
/// be trusted), or `unix` on the admin socket.
pub fn peer_name(parts: &Parts, trusted: &[IpAddr]) -> String {
    // Requests built in-process (tests) carry no peer: an anonymous client on loopback.
    match parts.extensions.get::<Peer>().copied() {
        Some(Peer::Unix { .. }) => "unix".to_string(),
        Some(Peer::Tcp(addr)) => client_ip(addr, &parts.headers, trusted).to_string(),
        None => client_ip(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &parts.headers,
            trusted,
        )
        .to_string(),
    }
}

/// A request with an `Origin` (a browser) must come from `http.allowed_origins`; clients
/// without one (the CLI, a front end's server side) are not browsers. Checked on every
/// WebSocket (cross-site WebSocket hijacking).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// An authenticated caller. Extracting it authenticates the request.
#[derive(Debug)]
pub struct Authed(pub Actor);

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .copied()
            // Requests built in-process (tests) carry no peer: treat as an anonymous TCP
            // client on loopback, which must present a token.
            .unwrap_or(Peer::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))));
        let app = &state.app;
        // The path as the client sent it (nested routers strip their prefix from `uri`).
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path().to_string(), |u| u.path().to_string());
        let fail = |peer_name: String, ip: Option<IpAddr>, reason: &str| {
            state.metrics.auth_failure();
            if let Some(ip) = ip {
                state.limiter.record_failure(ip);
            }
            app.audit_auth_failure(&peer_name, &path, reason);
        };
        match peer {
            Peer::Unix { uid: Some(0) } => Ok(Authed(Actor::root())),
            Peer::Unix { uid } => {
                let who = uid.map_or("unix:unknown".to_string(), |u| format!("unix:uid={u}"));
                fail(who, None, "non-root peer on the admin socket");
                Err(ApiError::Forbidden(
                    "the admin socket is for root only".into(),
                ))
            }
            Peer::Tcp(addr) => {
                let ip = client_ip(addr, &parts.headers, &app.config.http.trusted_proxies);
                if state.limiter.is_blocked(ip) {
                    state.metrics.auth_failure();
                    return Err(ApiError::RateLimited);
                }
                let Some(token) = bearer(&parts.headers) else {
                    fail(ip.to_string(), Some(ip), "missing bearer token");
                    return Err(ApiError::Unauthorized("missing bearer token".into()));
                };
                match app.authenticate(token) {
                    Ok((principal, token_id)) => Ok(Authed(Actor {
                        principal,
                        token_id: Some(token_id),
                        peer: ip.to_string(),
                    })),
                    Err(ServiceError::Unauthorized(why)) => {
                        fail(ip.to_string(), Some(ip), why);
                        Err(ApiError::Unauthorized(why.into()))
                    }
                    Err(other) => Err(other.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let trusted: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(client_ip(other, &h, &trusted).to_string(), "192.0.2.1");
        // The right-most untrusted entry is the client the trusted proxy saw.
        assert_eq!(client_ip(proxy, &h, &trusted).to_string(), "10.0.0.2");
        let both: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(client_ip(proxy, &h, &both).to_string(), "203.0.113.9");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted).to_string(), "127.0.0.1");
    }

    #[test]
    fn an_address_is_blocked_after_too_many_failures_only() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            l.record_failure(ip);
        }
        assert!(!l.is_blocked(ip));
        l.record_failure(ip);
        assert!(l.is_blocked(ip));
        assert!(!l.is_blocked("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearerabc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
