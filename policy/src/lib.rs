//! The pure policy model of orchestratord.
//!
//! Data in, validated data out: names, the daemon config, profiles, the service registry
//! and its access rule, subnet math, the capability and seccomp rule models, the compiler
//! from a seccomp filter to classic BPF ([`bpf`]) with its syscall tables, and the
//! compiler from (config, user, profile, services) to a [`plan::BoxPlan`]. Nothing in this
//! crate makes a syscall or touches a file it was not handed.

/// Implements `TryFrom<String>` (through `FromStr`) and `From<T> for String` (through
/// `Display`), so a validated type can be `#[serde(try_from = "String", into = "String")]`
/// and deserializing it always runs its validation.
macro_rules! string_conversions {
    ($t:ty, $err:ty) => {
        impl TryFrom<String> for $t {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

pub mod apparmor;
pub mod boxfs;
pub mod bpf;
pub mod caps;
pub mod config;
pub mod files;
pub mod names;
pub mod net;
pub mod nft;
pub mod plan;
pub mod profile;
pub mod seccomp;
pub mod service;
pub mod syscalls;
pub mod terminal;
pub mod units;

pub use config::Config;
pub use names::{
    Category, DisplayName, Email, NameError, ProfileName, Role, ServiceName, StateKey, UserName,
};
pub use plan::{compile, BoxPlan, PlanError, PlanUser};
pub use profile::{Profile, ProfileSet};
pub use service::Service;
