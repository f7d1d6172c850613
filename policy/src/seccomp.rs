//! The seccomp rule model: what a profile may add to the default filter.
//!
//! The filter is data: [`box_filter`] turns the default allowlist (in the spirit of moby's
//! profiles/seccomp/default.json) plus a profile's additions into a [`Filter`], which
//! [`crate::bpf::compile`] turns into one classic BPF program; the runtime compiles it once
//! and installs it in every box process. Anything not allowed fails with EPERM, except
//! `clone3`, which answers ENOSYS so that libc falls back to `clone`, whose flags can be
//! inspected (clone3 passes them in memory, out of a BPF filter's reach). Names that no
//! profile may ever allow come straight from SECURITY.md.

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
    "clone3",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyscallError {
    #[error("{0:?} is not a syscall name")]
    Syntax(String),
}

/// A syscall name (`[a-z][a-z0-9_]*`, at most 32 characters). Whether the filter's
/// architecture has it ([`crate::syscalls`]) is checked when the filter is compiled.
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

/// Target architecture of a filter (syscall tables differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this crate was built for, if supported.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }
}

/// Allowed unconditionally on every architecture.
const ALLOW_COMMON: &[&str] = &[
    "accept",
    "accept4",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chroot",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "dup",
    "dup3",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "get_mempolicy",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lgetxattr",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "madvise",
    "mbind",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdirat",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "openat",
    "openat2",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_mempolicy",
    "set_robust_list",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd4",
    "socketpair",
    "splice",
    "statfs",
    "statx",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlinkat",
    "utimensat",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Allowed unconditionally on x86_64 only (legacy calls aarch64 never had).
const ALLOW_X86_64: &[&str] = &[
    "access",
    "alarm",
    "arch_prctl",
    "chmod",
    "chown",
    "creat",
    "dup2",
    "epoll_create",
    "epoll_wait",
    "eventfd",
    "fork",
    "futimesat",
    "get_thread_area",
    "getdents",
    "getpgrp",
    "inotify_init",
    "lchown",
    "link",
    "lstat",
    "mkdir",
    "mknod",
    "open",
    "pause",
    "pipe",
    "poll",
    "readlink",
    "rename",
    "rmdir",
    "select",
    "set_thread_area",
    "signalfd",
    "stat",
    "symlink",
    "time",
    "unlink",
    "utime",
    "utimes",
    "vfork",
];

/// The namespace flags of clone(2): a box process may not make new namespaces.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET
/// Socket families a box may not open (crypto API and host vsock).
pub const AF_ALG: u64 = 38;
pub const AF_VSOCK: u64 = 40;
/// The ioctl that pushes bytes into a terminal's input queue.
pub const TIOCSTI: u64 = 0x5412;
/// personality(2) values that change nothing dangerous: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query).
pub const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

pub const EPERM: u32 = 1;
pub const ENOSYS: u32 = 38;

/// Comparison of one syscall argument. All comparisons are on the low 32 bits (flags,
/// families and ioctl numbers; masking ioctl's request to 32 bits closes the
/// sign-extension bypass of TIOCSTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgOp {
    Eq(u64),
    Ne(u64),
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    pub index: u8,
    pub op: ArgOp,
}

/// Allow `name` when every check holds (no checks: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub name: String,
    pub args: Vec<ArgCheck>,
}

impl AllowRule {
    fn always(name: &str) -> AllowRule {
        AllowRule {
            name: name.into(),
            args: Vec::new(),
        }
    }
}

/// A complete box filter: an allowlist whose misses fail with `default_errno`, and the
/// syscalls that answer `enosys_errno` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub arch: Arch,
    /// Several rules for one name are alternatives (or-bound).
    pub allow: Vec<AllowRule>,
    pub default_errno: u32,
    pub enosys: Vec<String>,
}

impl Filter {
    /// Whether `name` is allowed by some rule, ignoring argument checks.
    pub fn mentions(&self, name: &str) -> bool {
        self.allow.iter().any(|r| r.name == name)
    }
}

/// The filter for a box of a profile with `extra` rules on `arch`. Profile validation has
/// already refused extra names in [`NEVER_ALLOWED`]; they are filtered again here so no
/// path can put one into a filter.
pub fn box_filter(arch: Arch, extra: &SeccompRules) -> Filter {
    let denied = |n: &str| NEVER_ALLOWED.contains(&n) || extra.deny.iter().any(|d| d.as_str() == n);
    let mut names: Vec<&str> = ALLOW_COMMON.to_vec();
    if arch == Arch::X86_64 {
        names.extend_from_slice(ALLOW_X86_64);
    }
    names.extend(extra.allow.iter().map(Syscall::as_str));
    names.sort_unstable();
    names.dedup();
    let mut allow: Vec<AllowRule> = names
        .into_iter()
        .filter(|n| !denied(n))
        .map(AllowRule::always)
        .collect();
    let dword = |index, op| ArgCheck { index, op };
    let conditional = [
        AllowRule {
            name: "clone".into(),
            args: vec![dword(
                0,
                ArgOp::MaskedEq {
                    mask: CLONE_NAMESPACE_FLAGS,
                    value: 0,
                },
            )],
        },
        AllowRule {
            name: "socket".into(),
            args: vec![dword(0, ArgOp::Ne(AF_ALG)), dword(0, ArgOp::Ne(AF_VSOCK))],
        },
        AllowRule {
            name: "ioctl".into(),
            args: vec![dword(1, ArgOp::Ne(TIOCSTI))],
        },
    ];
    for rule in conditional {
        if !denied(&rule.name) {
            allow.push(rule);
        }
    }
    if !denied("personality") {
        allow.extend(PERSONALITY_ALLOWED.iter().map(|v| AllowRule {
            name: "personality".into(),
            args: vec![dword(0, ArgOp::Eq(*v))],
        }));
    }
    Filter {
        arch,
        allow,
        default_errno: EPERM,
        enosys: vec!["clone3".into()],
    }
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
    fn the_default_filter_allows_nothing_from_the_never_list() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let f = box_filter(arch, &SeccompRules::default());
            for name in NEVER_ALLOWED {
                assert!(!f.mentions(name), "{name} is allowed on {arch:?}");
            }
            assert_eq!(f.enosys, ["clone3"]);
            assert_eq!(f.default_errno, EPERM);
            for everyday in [
                "read", "write", "openat", "execve", "futex", "clone", "socket", "ioctl",
            ] {
                assert!(f.mentions(everyday), "{everyday} missing on {arch:?}");
            }
        }
        let x86 = box_filter(Arch::X86_64, &SeccompRules::default());
        let arm = box_filter(Arch::Aarch64, &SeccompRules::default());
        assert!(x86.mentions("open") && !arm.mentions("open"));
    }

    #[test]
    fn conditional_rules_guard_clone_socket_ioctl_and_personality() {
        let f = box_filter(Arch::X86_64, &SeccompRules::default());
        let rules = |n: &str| {
            f.allow
                .iter()
                .filter(|r| r.name == n)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rules("clone")[0].args,
            [ArgCheck {
                index: 0,
                op: ArgOp::MaskedEq {
                    mask: CLONE_NAMESPACE_FLAGS,
                    value: 0
                }
            }]
        );
        assert_eq!(
            rules("socket")[0].args,
            [
                ArgCheck {
                    index: 0,
                    op: ArgOp::Ne(AF_ALG)
                },
                ArgCheck {
                    index: 0,
                    op: ArgOp::Ne(AF_VSOCK)
                }
            ]
        );
        assert_eq!(
            rules("ioctl")[0].args,
            [ArgCheck {
                index: 1,
                op: ArgOp::Ne(TIOCSTI)
            }]
        );
        let personas: Vec<_> = rules("personality").iter().map(|r| r.args[0].op).collect();
        assert_eq!(personas, PERSONALITY_ALLOWED.map(ArgOp::Eq));
        // Every conditional rule also exists unconditionally nowhere.
        for n in ["clone", "socket", "ioctl", "personality"] {
            assert!(
                rules(n).iter().all(|r| !r.args.is_empty()),
                "{n} allowed without checks"
            );
        }
        // CLONE_NEWUSER is among the flags a box may not use.
        assert_ne!(CLONE_NAMESPACE_FLAGS & 0x1000_0000, 0);
    }

    #[test]
    fn profile_additions_and_removals_apply_but_never_the_forbidden_list() {
        let extra = SeccompRules {
            allow: vec!["ptrace".parse().unwrap(), "keyctl".parse().unwrap()],
            deny: vec!["chroot".parse().unwrap(), "ioctl".parse().unwrap()],
        };
        let f = box_filter(Arch::X86_64, &extra);
        assert!(f.mentions("ptrace"));
        assert!(!f.mentions("keyctl"), "a forbidden name slipped through");
        assert!(!f.mentions("chroot"));
        assert!(!f.mentions("ioctl"));
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
