//! Linux capabilities a profile may grant. By default a box process has none; a profile may
//! name a capability from the grantable set (Docker's defaults minus CAP_NET_RAW), never one
//! that reaches the host (SYS_ADMIN, SYS_MODULE, NET_ADMIN, ...).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every capability the kernel knows (capability.h, Linux 6.x), with its number.
const ALL: &[(&str, u8)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// Capabilities a profile may grant: they only act on objects inside the box.
const GRANTABLE: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "SETFCAP",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("capability CAP_{0} cannot be granted to a box")]
    NotGrantable(&'static str),
}

/// A grantable capability, written `NET_BIND_SERVICE` or `CAP_NET_BIND_SERVICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Capability {
    number: u8,
}

impl Capability {
    pub fn name(&self) -> &'static str {
        ALL.iter()
            .find(|(_, n)| *n == self.number)
            .map(|(name, _)| *name)
            .expect("a Capability is only built from ALL")
    }
    /// The kernel's capability number (for capset and the bounding set).
    pub fn number(&self) -> u8 {
        self.number
    }
}

impl FromStr for Capability {
    type Err = CapError;
    fn from_str(s: &str) -> Result<Self, CapError> {
        let bare = s.strip_prefix("CAP_").unwrap_or(s);
        let &(name, number) = ALL
            .iter()
            .find(|(n, _)| *n == bare)
            .ok_or_else(|| CapError::Unknown(s.chars().take(64).collect()))?;
        if !GRANTABLE.contains(&name) {
            return Err(CapError::NotGrantable(name));
        }
        Ok(Capability { number })
    }
}

string_conversions!(Capability, CapError);

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantable_capabilities_parse_with_or_without_prefix() {
        let c: Capability = "NET_BIND_SERVICE".parse().unwrap();
        assert_eq!(c.number(), 10);
        assert_eq!(c, "CAP_NET_BIND_SERVICE".parse().unwrap());
        assert_eq!(c.to_string(), "CAP_NET_BIND_SERVICE");
    }

    #[test]
    fn host_reaching_capabilities_are_refused() {
        for name in [
            "SYS_ADMIN",
            "CAP_SYS_MODULE",
            "NET_ADMIN",
            "NET_RAW",
            "SYS_PTRACE",
            "BPF",
        ] {
            assert!(
                matches!(name.parse::<Capability>(), Err(CapError::NotGrantable(_))),
                "{name}"
            );
        }
        for name in ["", "ALL", "cap_chown", "SYS_WHATEVER"] {
            assert!(
                matches!(name.parse::<Capability>(), Err(CapError::Unknown(_))),
                "{name}"
            );
        }
    }
}
