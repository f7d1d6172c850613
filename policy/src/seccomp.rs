//! The seccomp rule model: what a profile may add to the default filter.
//!
//! The default allowlist itself (in the spirit of moby's profiles/seccomp/default.json) is
//! compiled by the runtime; here live the names a profile can never allow, straight from
//! SECURITY.md, so that a profile asking for one is refused when it is loaded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Syscalls no profile may allow: they reach kernel state that is not namespaced, or they
/// undo the box's isolation.
pub const NEVER_ALLOWED: &[&str] = &[
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "setns",
    "unshare",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "lookup_dcookie",
    "ptrace",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyscallError {
    #[error("{0:?} is not a syscall name")]
    Syntax(String),
}

/// A syscall name (`[a-z][a-z0-9_]*`, at most 32 characters). Whether the running kernel
/// knows it is checked when the runtime compiles the filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Syscall(String);

impl Syscall {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_never_allowed(&self) -> bool {
        NEVER_ALLOWED.contains(&self.0.as_str())
    }
}

impl FromStr for Syscall {
    type Err = SyscallError;
    fn from_str(s: &str) -> Result<Self, SyscallError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Syscall(s.to_string()))
        } else {
            Err(SyscallError::Syntax(s.chars().take(64).collect()))
        }
    }
}

string_conversions!(Syscall, SyscallError);

impl fmt::Display for Syscall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A profile's additions to the default filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeccompRules {
    /// Extra syscalls to allow (never one of [`NEVER_ALLOWED`]).
    pub allow: Vec<Syscall>,
    /// Syscalls of the default allowlist to refuse with EPERM in this profile.
    pub deny: Vec<Syscall>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names_are_checked() {
        assert!("clock_nanosleep".parse::<Syscall>().is_ok());
        for bad in ["", "Mount", "1x", "a-b", "a b", &"x".repeat(33)] {
            assert!(bad.parse::<Syscall>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_security_baseline_list_is_never_allowed() {
        for name in [
            "keyctl",
            "bpf",
            "mount",
            "fsopen",
            "setns",
            "unshare",
            "io_uring_setup",
        ] {
            assert!(
                name.parse::<Syscall>().unwrap().is_never_allowed(),
                "{name}"
            );
        }
        assert!(!"read".parse::<Syscall>().unwrap().is_never_allowed());
    }
}
