//! The service registry model and the access rule.
//!
//! A user may use a service when any of these holds (and the user is not disabled):
//! - they own it (owner-based access: a user always sees services they own);
//! - they are an admin;
//! - it is among their services (their own list plus their profile's defaults) and their
//!   role is at least the service's required role.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{Category, Role, ServiceName, UserName};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "url {0:?} must be an http:// or https:// URL without spaces, at most 2048 characters"
    )]
    Url(String),
    #[error("upstream {0:?} must be host:port (IPv6 as [addr]:port) with a port from 1 to 65535")]
    Upstream(String),
    #[error("icon {0:?} must be at most 512 printable characters")]
    Icon(String),
}

impl ServiceError {
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Url(_) => "invalid_url",
            ServiceError::Upstream(_) => "invalid_upstream",
            ServiceError::Icon(_) => "invalid_icon",
        }
    }
}

/// The URL the front end links to (`https://jellyfin.lab.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceUrl(String);

impl FromStr for ServiceUrl {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        let ok = s.len() <= 2048
            && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            && s.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(ServiceUrl(s.to_string()))
        } else {
            Err(ServiceError::Url(s.chars().take(128).collect()))
        }
    }
}

string_conversions!(ServiceUrl, ServiceError);

impl ServiceUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Icon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Host part of an upstream: an address, or a DNS name resolved by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Where the service actually listens (`192.168.1.10:8096`); boxes may reach exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Upstream {
    pub host: Host,
    pub port: u16,
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl FromStr for Upstream {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        let err = || ServiceError::Upstream(s.chars().take(128).collect());
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (addr, port) = rest.split_once("]:").ok_or_else(err)?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| err())?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (h, port) = s.rsplit_once(':').ok_or_else(err)?;
            let host = match h.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Host::Ip(IpAddr::V4(ip)),
                Ok(IpAddr::V6(_)) => return Err(err()),
                Err(_)
                    if valid_hostname(h) && !h.chars().all(|c| c.is_ascii_digit() || c == '.') =>
                {
                    Host::Name(h.to_ascii_lowercase())
                }
                Err(_) => return Err(err()),
            };
            (host, port)
        };
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        let port: u16 = port.parse().map_err(|_| err())?;
        if port == 0 {
            return Err(err());
        }
        Ok(Upstream { host, port })
    }
}

string_conversions!(Upstream, ServiceError);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// An icon reference for the front end: a URL or an icon name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Icon(String);

impl FromStr for Icon {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        if !s.is_empty() && s.len() <= 512 && s.chars().all(|c| c.is_ascii_graphic()) {
            Ok(Icon(s.to_string()))
        } else {
            Err(ServiceError::Icon(s.chars().take(64).collect()))
        }
    }
}

string_conversions!(Icon, ServiceError);

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub name: ServiceName,
    pub category: Category,
    pub url: ServiceUrl,
    pub upstream: Upstream,
    /// Least role that may use it when it is assigned (owners and admins always may).
    pub required_role: Role,
    #[serde(default)]
    pub owner: Option<UserName>,
    #[serde(default)]
    pub icon: Option<Icon>,
}

/// What the access rule needs to know about a user.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub name: &'a UserName,
    pub role: Role,
    pub disabled: bool,
    /// The user's own service list.
    pub services: &'a BTreeSet<ServiceName>,
    /// Their profile's default services.
    pub profile_services: &'a [ServiceName],
}

impl Service {
    /// The access rule of the module documentation. Pure and allocation-free: this is the
    /// forward-auth hot path.
    pub fn may_be_used_by(&self, who: &Subject<'_>) -> bool {
        if who.disabled {
            return false;
        }
        if self.owner.as_ref() == Some(who.name) || who.role == Role::Admin {
            return true;
        }
        who.role >= self.required_role
            && (who.services.contains(&self.name) || who.profile_services.contains(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, role: Role, owner: Option<&str>) -> Service {
        Service {
            name: name.parse().unwrap(),
            category: "media".parse().unwrap(),
            url: "https://x.lab".parse().unwrap(),
            upstream: "10.0.0.5:8096".parse().unwrap(),
            required_role: role,
            owner: owner.map(|o| o.parse().unwrap()),
            icon: None,
        }
    }

    #[test]
    fn upstreams_parse_ipv4_ipv6_and_names() {
        let cases = [
            ("10.0.0.5:8096", "10.0.0.5:8096"),
            ("[fd00::5]:443", "[fd00::5]:443"),
            ("NAS.lan:445", "nas.lan:445"),
        ];
        for (input, shown) in cases {
            assert_eq!(input.parse::<Upstream>().unwrap().to_string(), shown);
        }
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "fd00::5:443",
            "[fd00::5]",
            "host:",
            ":80",
            "a b:80",
            "-x.lan:80",
            "1.2.3:80",
            "h:+80",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn urls_and_icons_are_checked() {
        assert!("https://jf.lab/web".parse::<ServiceUrl>().is_ok());
        for bad in [
            "jf.lab",
            "ftp://x",
            "https://",
            "https:///x",
            "https://a b",
            "javascript:x",
        ] {
            assert!(bad.parse::<ServiceUrl>().is_err(), "{bad:?} accepted");
        }
        assert!("mdi-movie".parse::<Icon>().is_ok());
        assert!("a\nb".parse::<Icon>().is_err());
    }

    #[test]
    fn access_rule_table() {
        let alice: UserName = "alice".parse().unwrap();
        let jf: ServiceName = "jellyfin".parse().unwrap();
        let mine: BTreeSet<ServiceName> = [jf.clone()].into();
        let none = BTreeSet::new();
        let subject = |role, disabled, services| Subject {
            name: &alice,
            role,
            disabled,
            services,
            profile_services: &[],
        };
        let rows = [
            // (service, subject, allowed, why)
            (
                svc("jellyfin", Role::Member, None),
                subject(Role::Member, false, &mine),
                true,
                "assigned, role ok",
            ),
            (
                svc("jellyfin", Role::Member, None),
                subject(Role::Member, false, &none),
                false,
                "not assigned",
            ),
            (
                svc("jellyfin", Role::Member, None),
                subject(Role::Demo, false, &mine),
                false,
                "role too low",
            ),
            (
                svc("jellyfin", Role::Admin, None),
                subject(Role::Member, false, &mine),
                false,
                "admin-only",
            ),
            (
                svc("jellyfin", Role::Admin, None),
                subject(Role::Admin, false, &none),
                true,
                "admins use all",
            ),
            (
                svc("jellyfin", Role::Admin, Some("alice")),
                subject(Role::Demo, false, &none),
                true,
                "owner",
            ),
            (
                svc("jellyfin", Role::Demo, Some("bob")),
                subject(Role::Member, false, &none),
                false,
                "other owner",
            ),
            (
                svc("jellyfin", Role::Member, Some("alice")),
                subject(Role::Admin, true, &mine),
                false,
                "disabled",
            ),
        ];
        for (service, who, allowed, why) in rows {
            assert_eq!(service.may_be_used_by(&who), allowed, "{why}");
        }
        let via_profile = Subject {
            name: &alice,
            role: Role::Member,
            disabled: false,
            services: &none,
            profile_services: std::slice::from_ref(&jf),
        };
        assert!(svc("jellyfin", Role::Member, None).may_be_used_by(&via_profile));
    }
}
