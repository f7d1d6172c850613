//! Validated names at the edge of the system.
//!
//! Every name that later becomes a path component, a cgroup directory, an nftables set
//! element or part of a network interface name is parsed once, here, into a newtype that
//! cannot hold anything else. Rules are deliberately ASCII-only: Unicode look-alikes
//! (`аdmin` with a Cyrillic `а`) are refused instead of being normalised.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused. Each variant is one rule, so callers (and API clients) can tell
/// exactly which rule failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} must start with a lowercase ASCII letter")]
    BadStart { what: &'static str, value: String },
    #[error("{what} {value:?} may only contain {allowed}")]
    BadCharacter {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{what} {value:?} must not end with '-' or '_'")]
    BadEnd { what: &'static str, value: String },
    #[error("{what} {value:?} is reserved")]
    Reserved { what: &'static str, value: String },
    #[error("email {value:?} is not a valid address")]
    Email { value: String },
    #[error("email {value:?} has no usable login name; give one explicitly")]
    NoLoginInEmail { value: String },
    #[error("unknown role {value:?} (expected admin, member or demo)")]
    Role { value: String },
}

impl NameError {
    /// Stable machine-readable kind, used in API error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            NameError::Email { .. } => "invalid_email",
            NameError::NoLoginInEmail { .. } => "invalid_login",
            NameError::Role { .. } => "invalid_role",
            NameError::Empty { what, .. }
            | NameError::TooLong { what, .. }
            | NameError::BadStart { what, .. }
            | NameError::BadCharacter { what, .. }
            | NameError::BadEnd { what, .. }
            | NameError::Reserved { what, .. } => match *what {
                "login name" => "invalid_login",
                "profile name" => "invalid_profile_name",
                "service name" => "invalid_service_name",
                "category" => "invalid_category",
                "state key" => "invalid_state_key",
                "display name" => "invalid_display_name",
                _ => "invalid_name",
            },
        }
    }
}

/// Checks the common "slug" rule: `[a-z][a-z0-9_-]*`, bounded length, no trailing separator.
fn check_slug(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    let v = || value.to_string();
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    // Count chars, not bytes, so a multi-byte look-alike reports the character rule below.
    if value.chars().count() > max {
        return Err(NameError::TooLong {
            what,
            value: v(),
            max,
        });
    }
    let first = value.chars().next().unwrap_or('-');
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart { what, value: v() });
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(NameError::BadCharacter {
            what,
            value: v(),
            allowed: "lowercase ASCII letters, digits, '-' and '_'",
        });
    }
    if value.ends_with('-') || value.ends_with('_') {
        return Err(NameError::BadEnd { what, value: v() });
    }
    Ok(())
}

macro_rules! slug_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:expr, $reserved:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted name, in characters.
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: &str) -> Result<Self, NameError> {
                check_slug($what, value, $max)?;
                let reserved: &[&str] = $reserved;
                if reserved.contains(&value) {
                    return Err(NameError::Reserved { what: $what, value: value.to_string() });
                }
                Ok(Self(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Accounts that exist on every Debian host; a box user may not shadow them.
const RESERVED_LOGINS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "messagebus",
    "sshd",
    "systemd",
    "_apt",
    "polkitd",
    "dnsmasq",
];

slug_newtype!(
    /// A user's login name: names their box, home directory, host account, cgroup, nftables
    /// set elements and is the suffix of their interface names (`ob-<login>` must fit the
    /// kernel's 15-byte IFNAMSIZ limit, hence at most 12 characters).
    UserName,
    "login name",
    12,
    RESERVED_LOGINS
);

slug_newtype!(
    /// Name of a profile, also the file stem of `profiles/<name>.toml`.
    ProfileName,
    "profile name",
    32,
    &[]
);

slug_newtype!(
    /// Name of a registered service (e.g. `jellyfin`).
    ServiceName,
    "service name",
    32,
    &[]
);

slug_newtype!(
    /// A service category used by the front end to group apps (e.g. `media`).
    Category,
    "category",
    32,
    &[]
);

slug_newtype!(
    /// Key of a per-user desktop state entry (e.g. `windows`, `wallpaper`).
    StateKey,
    "state key",
    64,
    &[]
);

impl UserName {
    /// Derives a login from an email address: the local part before any `+tag`, lowercased,
    /// with `.` turned into `-`, other disallowed characters dropped, truncated to the
    /// maximum length. Fails when nothing valid is left; the caller then asks for a login.
    pub fn derive_from_email(email: &Email) -> Result<Self, NameError> {
        let local = email.local_part();
        let local = local.split('+').next().unwrap_or("");
        let mut out = String::new();
        for c in local.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                out.push(c);
            } else if c == '.' {
                out.push('-');
            }
        }
        let trimmed: String = out
            .trim_start_matches(|c: char| !c.is_ascii_lowercase())
            .chars()
            .take(Self::MAX_LEN)
            .collect();
        let trimmed = trimmed.trim_end_matches(['-', '_']);
        Self::parse(trimmed).map_err(|_| NameError::NoLoginInEmail {
            value: email.to_string(),
        })
    }
}

/// An email address, ASCII only, stored lowercased. Deliberately stricter than RFC 5321:
/// it is an identifier here, not a mailbox we deliver to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bad = || NameError::Email {
            value: value.chars().take(300).collect(),
        };
        if value.is_empty() || value.len() > Self::MAX_LEN || !value.is_ascii() {
            return Err(bad());
        }
        let lower = value.to_ascii_lowercase();
        let (local, domain) = lower.split_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(bad());
        }
        let local_ok = local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return Err(bad());
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }
}

impl FromStr for Email {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Email {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A human-readable display name: 1 to 128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: &str) -> Result<Self, NameError> {
        let what = "display name";
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty { what });
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what,
                value: trimmed.chars().take(Self::MAX_LEN).collect(),
                max: Self::MAX_LEN,
            });
        }
        if trimmed.chars().any(|c| c.is_control()) {
            return Err(NameError::BadCharacter {
                what,
                value: trimmed.escape_debug().to_string(),
                allowed: "printable characters",
            });
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DisplayName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<DisplayName> for String {
    fn from(n: DisplayName) -> String {
        n.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's role. Ordered by privilege: `Demo < Member < Admin`, so "requires at least
/// member" is `role >= Role::Member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Demo,
    Member,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Demo];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Demo => "demo",
        }
    }
}

impl FromStr for Role {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "demo" => Ok(Role::Demo),
            _ => Err(NameError::Role {
                value: s.chars().take(64).collect(),
            }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_logins_are_accepted() {
        for ok in ["alice", "a", "bob-2", "c_d", "abcdefghijkl", "x1"] {
            assert_eq!(UserName::parse(ok).unwrap().as_str(), ok, "{ok}");
        }
    }

    #[test]
    fn invalid_logins_are_refused_with_the_rule_that_failed() {
        let cases: &[(&str, &str)] = &[
            ("", "Empty"),
            ("abcdefghijklm", "TooLong"),
            ("Alice", "BadStart"),
            ("1alice", "BadStart"),
            ("-alice", "BadStart"),
            ("..", "BadStart"),
            ("a/b", "BadCharacter"),
            ("a..b", "BadCharacter"),
            ("a.b", "BadCharacter"),
            ("aLice", "BadCharacter"),
            ("a b", "BadCharacter"),
            ("a\0b", "BadCharacter"),
            ("a\nb", "BadCharacter"),
            // Cyrillic 'а' (U+0430) looks like ASCII 'a'.
            ("\u{0430}dmin", "BadStart"),
            ("adm\u{0456}n", "BadCharacter"),
            ("alice-", "BadEnd"),
            ("root", "Reserved"),
            ("nobody", "Reserved"),
        ];
        for (input, rule) in cases {
            let err = UserName::parse(input).unwrap_err();
            let dbg = format!("{err:?}");
            assert!(
                dbg.starts_with(rule),
                "{input:?}: expected {rule}, got {dbg}"
            );
            assert_eq!(err.kind(), "invalid_login");
        }
    }

    #[test]
    fn login_is_derived_from_the_email_local_part() {
        let cases = [
            ("alice@example.com", "alice"),
            ("Alice.Smith@Example.com", "alice-smith"),
            ("bob+homelab@example.org", "bob"),
            ("9lives@example.org", "lives"),
            ("averyveryverylongname@example.org", "averyveryver"),
            ("a.b.c.d.e.f.g.h@example.org", "a-b-c-d-e-f"),
        ];
        for (email, login) in cases {
            let e = Email::parse(email).unwrap();
            assert_eq!(
                UserName::derive_from_email(&e).unwrap().as_str(),
                login,
                "{email}"
            );
        }
        for email in ["123@example.org", "root@example.org", "___@example.org"] {
            let e = Email::parse(email).unwrap();
            let err = UserName::derive_from_email(&e).unwrap_err();
            assert!(
                matches!(err, NameError::NoLoginInEmail { .. }),
                "{email}: {err:?}"
            );
        }
    }

    #[test]
    fn emails_are_validated_and_lowercased() {
        assert_eq!(
            Email::parse("A.B@Example.COM").unwrap().as_str(),
            "a.b@example.com"
        );
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a b@c.com",
            ".a@c.com",
            "a..b@c.com",
            "a@-c.com",
            "a@c..com",
            "\u{0430}@example.com",
            "a@ex\u{0430}mple.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn display_names_allow_unicode_but_not_control_characters() {
        assert_eq!(
            DisplayName::parse("  Zoë Müller ").unwrap().as_str(),
            "Zoë Müller"
        );
        for bad in ["", "   ", "a\nb", "a\u{7}b", &"x".repeat(129)] {
            let err = DisplayName::parse(bad).unwrap_err();
            assert_eq!(err.kind(), "invalid_display_name", "{bad:?}");
        }
    }

    #[test]
    fn roles_parse_and_are_ordered_by_privilege() {
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Demo < Role::Member && Role::Member < Role::Admin);
    }

    #[test]
    fn names_deserialize_through_validation() {
        let ok: ServiceName = serde_json::from_str("\"jellyfin\"").unwrap();
        assert_eq!(ok.as_str(), "jellyfin");
        assert!(serde_json::from_str::<ServiceName>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<ProfileName>("\"Admin\"").is_err());
    }
}
