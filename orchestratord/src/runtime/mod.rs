//! The only place with privileged calls: cgroups, namespaces, mounts, capabilities,
//! seccomp, AppArmor, nftables, PTYs. `runtime` never reads the database; it is handed
//! fully validated plans by `service`.
//!
//! [`boxes`] starts, stops and enters boxes through the closed [`boxes::Command`] set; the
//! privileged sequence runs in the exec'd helper ([`boxes::helper`]). [`cgroup`],
//! [`seccomp`], [`caps`] and [`apparmor`] are its building blocks.

pub mod apparmor;
pub mod boxes;
pub mod caps;
pub mod cgroup;
pub mod files;
pub mod net;
pub mod pty;
pub mod quota;
pub mod seccomp;
pub mod smb;
