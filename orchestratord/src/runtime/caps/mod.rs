//! Capabilities of box processes. By default a box process ends with every set empty:
//! effective, permitted, inheritable, ambient and bounding (SECURITY.md). A profile may
//! name capabilities from policy's grantable set; those are kept in all five sets, the
//! ambient set included, so they survive `execve` for a non-root uid.
//!
//! Capabilities are per thread: these calls belong in the single-threaded helper, where the
//! thread is the process. Order in the helper (mirrors runc/crun): restrict the bounding set while still holding
//! CAP_SETPCAP, change uid/gid with keep-caps, then [`set_process`] as the last step before
//! exec.

use caps::{CapSet, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("the kernel does not know capability {0}")]
    Unknown(String),
    #[error("cannot read the kernel's capability range")]
    Supported(#[source] caps::errors::CapsError),
    #[error("cannot drop {cap} from the bounding set")]
    Bounding {
        cap: String,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set the {set} capability set")]
    Set {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// The `caps` crate's set for policy capabilities.
pub fn to_set(keep: &[policy::caps::Capability]) -> Result<CapsHashSet, CapError> {
    keep.iter()
        .map(|c| {
            c.to_string()
                .parse()
                .map_err(|_| CapError::Unknown(c.to_string()))
        })
        .collect()
}

/// The `caps` crate's set for capability names such as `CAP_KILL` (from a helper spec).
pub fn from_names(names: &[String]) -> Result<CapsHashSet, CapError> {
    names
        .iter()
        .map(|n| n.parse().map_err(|_| CapError::Unknown(n.clone())))
        .collect()
}

/// Drops every capability the kernel supports, except `keep`, from the bounding set.
pub fn restrict_bounding(keep: &CapsHashSet) -> Result<(), CapError> {
    let supported = caps::runtime::procfs_all_supported(None).map_err(CapError::Supported)?;
    for cap in supported.difference(keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|source| CapError::Bounding {
            cap: cap.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient to exactly `keep`.
pub fn set_process(keep: &CapsHashSet) -> Result<(), CapError> {
    let set = |which, name, value: &CapsHashSet| {
        caps::set(None, which, value).map_err(|source| CapError::Set { set: name, source })
    };
    // Ambient first (it may only hold what is permitted and inheritable, so clearing it
    // never fails), then shrink the others; effective before permitted because it must
    // stay a subset.
    caps::clear(None, CapSet::Ambient).map_err(|source| CapError::Set {
        set: "ambient",
        source,
    })?;
    set(CapSet::Inheritable, "inheritable", keep)?;
    set(CapSet::Effective, "effective", keep)?;
    set(CapSet::Permitted, "permitted", keep)?;
    for cap in keep {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|source| CapError::Set {
            set: "ambient",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
