//! Profiles: what a kind of user gets in their box. Loaded from `profiles/<name>.toml`;
//! the file stem is the profile's name. The five standard profiles are built in, so the
//! daemon works without a profiles directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::caps::{CapError, Capability};
use crate::names::{NameError, ProfileName, Role, ServiceName};
use crate::seccomp::SeccompRules;
use crate::units::{ByteSize, Span};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid profile name")]
    Name(#[source] NameError),
    #[error("cannot parse profile {name}")]
    Parse {
        name: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("profile {name}: ttl is only meaningful for ephemeral boxes")]
    TtlOnPersistent { name: ProfileName },
    #[error("profile {name}: ttl {ttl} is outside 1m..7d")]
    TtlOutOfRange { name: ProfileName, ttl: Span },
    #[error("profile {name}: limits.{field} {value} is outside {min}..{max}")]
    LimitOutOfRange {
        name: ProfileName,
        field: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error("profile {name}: capability")]
    Capability {
        name: ProfileName,
        #[source]
        source: CapError,
    },
    #[error("profile {name}: syscall {syscall} can never be allowed")]
    SeccompForbidden { name: ProfileName, syscall: String },
    #[error("profile {name}: syscall {syscall} is both allowed and denied")]
    SeccompConflict { name: ProfileName, syscall: String },
    #[error("profile {name}: files = \"rw\" needs a writable home, but the profile is ephemeral and read-only")]
    DemoWritableFiles { name: ProfileName },
    #[error("the profile set lacks the built-in profile {0}")]
    Missing(&'static str),
}

impl ProfileError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProfileError::Name(e) => e.kind(),
            ProfileError::Parse { .. } => "profile_parse",
            ProfileError::TtlOnPersistent { .. } | ProfileError::TtlOutOfRange { .. } => {
                "profile_ttl"
            }
            ProfileError::LimitOutOfRange { .. } => "profile_limits",
            ProfileError::Capability { .. } => "profile_capability",
            ProfileError::SeccompForbidden { .. } | ProfileError::SeccompConflict { .. } => {
                "profile_seccomp"
            }
            ProfileError::DemoWritableFiles { .. } => "profile_files",
            ProfileError::Missing(_) => "profile_missing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// Runs 24/7, survives daemon restarts and reboots, keeps its upper directory.
    Persistent,
    /// Destroyed when its TTL passes, leaving nothing behind.
    Ephemeral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Rw,
    Ro,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsPolicy {
    /// DNS through the configured resolver only.
    Allow,
    /// No DNS at all (direct-IP egress stays denied too, so this is not bypassable).
    Block,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory limit (swap is capped to the same amount again).
    pub memory: ByteSize,
    /// CPU quota in cores, e.g. `0.5` or `2`.
    pub cpu: f64,
    /// Maximum number of tasks.
    pub pids: u32,
    /// Size quota of the home / upper directory.
    pub disk: ByteSize,
    /// Disk read bandwidth per second on the state directory's block device (cgroup v2
    /// `io.max rbps`, v1 `blkio.throttle.read_bps_device`); unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read: Option<ByteSize>,
    /// Disk write bandwidth per second, likewise (`wbps`, `write_bps_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write: Option<ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Egress to the internet (masqueraded).
    pub internet: bool,
    /// Egress to the host's LAN.
    pub lan: bool,
    /// DNS through the configured resolver, or none.
    pub dns: DnsPolicy,
}

impl Network {
    /// `internet = false, lan = false`: only the services the user may use are reachable.
    pub fn services_only(&self) -> bool {
        !self.internet && !self.lan
    }
}

fn default_true() -> bool {
    true
}

/// A profile as written in `profiles/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Services every user of this profile may use (if their role allows).
    #[serde(default)]
    pub services: Vec<ServiceName>,
    pub persistence: Persistence,
    /// Lifetime of an ephemeral box. Default 60m.
    #[serde(default)]
    pub ttl: Option<Span>,
    /// `rw` or `ro` root filesystem.
    pub rootfs: Access,
    /// Whether the user gets a terminal.
    #[serde(default = "default_true")]
    pub terminal: bool,
    /// How long a terminal session with nobody attached keeps running before it is
    /// closed. Default 30m; 10s to 7d.
    #[serde(default)]
    pub terminal_detach: Option<Span>,
    /// File manager access to the home: `rw`, `ro` or `none`.
    pub files: Access,
    /// Capabilities granted to the user's processes. Default: none.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub seccomp: SeccompRules,
    pub limits: Limits,
    pub network: Network,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: ProfileName,
    #[serde(flatten)]
    pub spec: ProfileFile,
}

/// Default detach timeout of terminal sessions.
pub const DEFAULT_TERMINAL_DETACH: Span = Span::minutes(30);

/// Default TTL of ephemeral boxes.
pub const DEFAULT_TTL: Span = Span::minutes(60);

impl Profile {
    /// Parses `text` as the profile named `name` and checks every rule.
    pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let name = ProfileName::parse(name).map_err(ProfileError::Name)?;
        // Capability errors surface through serde with their message; re-parse the list
        // ourselves to return a typed error for the common mistake.
        let spec: ProfileFile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            name: name.to_string(),
            source,
        })?;
        let p = Profile { name, spec };
        p.validate()?;
        Ok(p)
    }

    pub fn ttl(&self) -> Option<Span> {
        match self.spec.persistence {
            Persistence::Persistent => None,
            Persistence::Ephemeral => Some(self.spec.ttl.unwrap_or(DEFAULT_TTL)),
        }
    }

    /// How long a terminal session with nobody attached survives.
    pub fn terminal_detach(&self) -> Span {
        self.spec.terminal_detach.unwrap_or(DEFAULT_TERMINAL_DETACH)
    }

    fn validate(&self) -> Result<(), ProfileError> {
        let name = || self.name.clone();
        let s = &self.spec;
        if let Some(d) = s.terminal_detach {
            if d.as_secs() < 10 || d > Span::days(7) {
                return Err(ProfileError::LimitOutOfRange {
                    name: name(),
                    field: "terminal_detach",
                    value: d.to_string(),
                    min: "10s".into(),
                    max: "7d".into(),
                });
            }
        }
        match (s.persistence, s.ttl) {
            (Persistence::Persistent, Some(_)) => {
                return Err(ProfileError::TtlOnPersistent { name: name() })
            }
            (Persistence::Ephemeral, Some(ttl))
                if ttl < Span::minutes(1) || ttl > Span::days(7) =>
            {
                return Err(ProfileError::TtlOutOfRange { name: name(), ttl })
            }
            _ => {}
        }
        let range = |field, value: String, min: &str, max: &str| ProfileError::LimitOutOfRange {
            name: name(),
            field,
            value,
            min: min.into(),
            max: max.into(),
        };
        let l = &s.limits;
        if l.memory < ByteSize::mib(32) || l.memory > ByteSize(1 << 50) {
            return Err(range("memory", l.memory.to_string(), "32M", "1024T"));
        }
        if !(l.cpu.is_finite() && (0.01..=1024.0).contains(&l.cpu)) {
            return Err(range("cpu", l.cpu.to_string(), "0.01", "1024"));
        }
        if !(16..=4_194_304).contains(&l.pids) {
            return Err(range("pids", l.pids.to_string(), "16", "4194304"));
        }
        if l.disk < ByteSize::mib(64) {
            return Err(range("disk", l.disk.to_string(), "64M", "unbounded"));
        }
        for (field, v) in [("io_read", l.io_read), ("io_write", l.io_write)] {
            if let Some(v) = v.filter(|v| *v < ByteSize::mib(1)) {
                return Err(range(field, v.to_string(), "1M", "unbounded"));
            }
        }
        for sc in &s.seccomp.allow {
            if sc.is_never_allowed() {
                return Err(ProfileError::SeccompForbidden {
                    name: name(),
                    syscall: sc.to_string(),
                });
            }
            if s.seccomp.deny.contains(sc) {
                return Err(ProfileError::SeccompConflict {
                    name: name(),
                    syscall: sc.to_string(),
                });
            }
        }
        if s.persistence == Persistence::Ephemeral
            && s.rootfs == Access::Ro
            && s.files == Access::Rw
        {
            return Err(ProfileError::DemoWritableFiles { name: name() });
        }
        Ok(())
    }

    /// Whether a user of `role` may be given this profile. Demo users only get ephemeral,
    /// read-only profiles: a demo visitor must never keep state or write files.
    pub fn suits(&self, role: Role) -> bool {
        role != Role::Demo
            || (self.spec.persistence == Persistence::Ephemeral
                && self.spec.rootfs == Access::Ro
                && self.spec.files != Access::Rw)
    }
}

/// The built-in profiles, compiled from `profiles/*.toml` in the repository.
pub const BUILTIN: [(&str, &str); 5] = [
    ("admin", include_str!("../../profiles/admin.toml")),
    ("homelabber", include_str!("../../profiles/homelabber.toml")),
    ("developer", include_str!("../../profiles/developer.toml")),
    ("media", include_str!("../../profiles/media.toml")),
    ("demo", include_str!("../../profiles/demo.toml")),
];

/// All known profiles by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<ProfileName, Profile>,
}

impl ProfileSet {
    /// Builds a set from `(name, toml text)` pairs; every profile must be valid.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ProfileSet, ProfileError> {
        let mut profiles = BTreeMap::new();
        for (name, text) in sources {
            let p = Profile::parse(name, text)?;
            profiles.insert(p.name.clone(), p);
        }
        Ok(ProfileSet { profiles })
    }

    /// The five standard profiles.
    pub fn builtin() -> ProfileSet {
        ProfileSet::from_sources(BUILTIN).expect("built-in profiles are valid (tested)")
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        ProfileName::parse(name)
            .ok()
            .and_then(|n| self.profiles.get(&n))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        persistence = "persistent"
        rootfs = "rw"
        files = "rw"
        [limits]
        memory = "1G"
        cpu = 1.0
        pids = 256
        disk = "1G"
        [network]
        internet = true
        lan = false
        dns = "allow"
    "#;

    fn with(extra_top: &str, replace: (&str, &str)) -> String {
        format!("{extra_top}\n{}", BASE.replace(replace.0, replace.1))
    }

    #[test]
    fn builtin_profiles_load_and_have_the_documented_shape() {
        let set = ProfileSet::builtin();
        assert_eq!(set.len(), 5);
        let demo = set.get("demo").unwrap();
        assert_eq!(demo.spec.persistence, Persistence::Ephemeral);
        assert_eq!(demo.ttl(), Some(Span::minutes(60)));
        assert_eq!(demo.spec.rootfs, Access::Ro);
        assert!(!demo.spec.terminal);
        assert_ne!(demo.spec.files, Access::Rw);
        assert_eq!(demo.spec.network.dns, DnsPolicy::Block);
        assert!(demo.suits(Role::Demo));
        for name in ["admin", "homelabber", "developer", "media"] {
            let p = set.get(name).unwrap();
            assert_eq!(p.spec.persistence, Persistence::Persistent, "{name}");
            assert!(p.spec.capabilities.is_empty(), "{name} grants capabilities");
            assert!(!p.suits(Role::Demo), "{name} must not suit demo users");
            assert!(p.suits(Role::Member));
        }
        assert!(set.get("nope").is_none());
        assert!(set.get("../admin").is_none());
    }

    #[test]
    fn a_minimal_profile_gets_defaults() {
        let p = Profile::parse("x", BASE).unwrap();
        assert!(p.spec.terminal);
        assert!(p.spec.capabilities.is_empty());
        assert_eq!(p.ttl(), None);
        let e = Profile::parse("e", &BASE.replace("\"persistent\"", "\"ephemeral\"")).unwrap();
        assert_eq!(e.ttl(), Some(DEFAULT_TTL));
    }

    #[test]
    fn invalid_profiles_fail_with_the_rule_that_broke() {
        let cases: Vec<(String, &str)> = vec![
            (with("bogus = 1", ("", "")), "Parse"),
            (BASE.replace("rootfs = \"rw\"", "rootfs = \"rwx\""), "Parse"),
            (BASE.replace("[network]", "[network]\nipv6 = true"), "Parse"),
            (with("ttl = \"10m\"", ("", "")), "TtlOnPersistent"),
            (
                with("ttl = \"30s\"", ("\"persistent\"", "\"ephemeral\"")),
                "TtlOutOfRange",
            ),
            (
                with("ttl = \"8d\"", ("\"persistent\"", "\"ephemeral\"")),
                "TtlOutOfRange",
            ),
            (
                BASE.replace("memory = \"1G\"", "memory = \"1M\""),
                "LimitOutOfRange",
            ),
            (BASE.replace("cpu = 1.0", "cpu = 0.0"), "LimitOutOfRange"),
            (BASE.replace("cpu = 1.0", "cpu = nan"), "LimitOutOfRange"),
            (BASE.replace("pids = 256", "pids = 2"), "LimitOutOfRange"),
            (
                with("terminal_detach = \"5s\"", ("", "")),
                "LimitOutOfRange",
            ),
            (
                with("terminal_detach = \"8d\"", ("", "")),
                "LimitOutOfRange",
            ),
            (
                BASE.replace("disk = \"1G\"", "disk = \"1M\""),
                "LimitOutOfRange",
            ),
            (
                BASE.replace("disk = \"1G\"", "disk = \"1G\"\nio_write = \"512K\""),
                "LimitOutOfRange",
            ),
            (
                BASE.replace("disk = \"1G\"", "disk = \"1G\"\nio_read = \"fast\""),
                "Parse",
            ),
            (with("capabilities = [\"SYS_ADMIN\"]", ("", "")), "Parse"),
            (
                format!("{BASE}\n[seccomp]\nallow = [\"keyctl\"]"),
                "SeccompForbidden",
            ),
            (
                format!("{BASE}\n[seccomp]\nallow = [\"chown\"]\ndeny = [\"chown\"]"),
                "SeccompConflict",
            ),
            (
                BASE.replace("\"persistent\"", "\"ephemeral\"")
                    .replace("rootfs = \"rw\"", "rootfs = \"ro\""),
                "DemoWritableFiles",
            ),
            (with("services = [\"Bad Name\"]", ("", "")), "Parse"),
        ];
        for (text, rule) in &cases {
            // Top-level keys must precede tables in TOML; `with` puts them first.
            let err = Profile::parse("p", text).unwrap_err();
            let dbg = format!("{err:?}");
            assert!(dbg.starts_with(rule), "expected {rule}, got {dbg}\n{text}");
        }
        assert!(matches!(
            Profile::parse("Bad", BASE),
            Err(ProfileError::Name(_))
        ));
    }

    #[test]
    fn capability_list_is_parsed() {
        let p = Profile::parse(
            "c",
            &with("capabilities = [\"NET_BIND_SERVICE\"]", ("", "")),
        )
        .unwrap();
        assert_eq!(p.spec.capabilities[0].to_string(), "CAP_NET_BIND_SERVICE");
    }
}
