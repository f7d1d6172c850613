//! The only place with privileged calls: cgroups, namespaces, mounts, capabilities,
//! seccomp, AppArmor, nftables, PTYs. `runtime` never reads the database; it is handed
//! fully validated plans by `service`.
//!
//! Built so far: [`cgroup`], [`seccomp`] and [`caps`]. The box helper, namespaces and the rest arrive with the box
//! runtime issue.

pub mod apparmor;
pub mod caps;
pub mod cgroup;
pub mod seccomp;
