//! Box networking on the host: the daemon's nftables table and the box interfaces.
//!
//! Policy is rendered in `policy::nft` (pure); this module only applies it. The privileged
//! interface is the closed set [`NetCommand`]. The per-box veth itself is created by the
//! box helper (see `boxes::helper`), with its peer directly in the box's namespace, after
//! the user's rules are in place.

#![allow(unsafe_code)]

pub mod netlink;
pub mod nft;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use nft::{Nft, NftError};

/// Host-side box interfaces are `ob-<login>`.
pub const IFACE_PREFIX: &str = "ob-";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("nftables")]
    Nft(#[from] NftError),
    #[error("cannot parse the nftables listing: {0}")]
    Listing(String),
    #[error("netlink {op}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {path}")]
    Sysctl {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// What the kernel holds in the daemon's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// The marker counter of the loaded base ruleset (`policy::nft::base_marker`), if any.
    pub base_marker: Option<String>,
    pub exists: bool,
    /// Names of all chains.
    pub chains: Vec<String>,
    /// Login -> packets its chains accepted and dropped (since its last policy change).
    pub packets: BTreeMap<String, PacketCounts>,
    /// Login -> fingerprint of its last applied transaction.
    pub fingerprints: BTreeMap<String, u32>,
    /// Box interface -> its allowed source address (elements of `box_sources`).
    pub sources: BTreeMap<String, std::net::Ipv4Addr>,
}

/// Packets (and bytes) the rules of one user's chains accepted and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PacketCounts {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// The closed set of privileged network operations. Their inputs are texts rendered by
/// `policy::nft` from validated data and interface names built from validated logins.
#[derive(Debug)]
pub enum NetCommand<'a> {
    /// Replace the whole table atomically with the base ruleset followed by `then` (every
    /// user's rules). Precondition: none. A tenant cannot influence the text.
    Load { base: &'a str, then: &'a str },
    /// Apply one user's transaction (add/replace or remove). Atomic: on failure the table
    /// is unchanged. Bounded to that user's chains, counters and elements.
    Apply { text: &'a str },
    /// Delete host-side box interfaces (prefix `ob-`) by name; missing ones are fine.
    DeleteLinks { names: &'a [String] },
}

/// The daemon's firewall and links, in the network namespace of the daemon.
#[derive(Debug)]
pub struct Firewall {
    nft: Nft,
    table: String,
}

impl Firewall {
    pub fn new() -> Result<Firewall> {
        Ok(Firewall {
            nft: Nft::new()?,
            table: policy::nft::TABLE.to_string(),
        })
    }

    pub fn run(&self, cmd: NetCommand<'_>) -> Result<()> {
        match cmd {
            NetCommand::Load { base, then } => {
                let mut t = String::with_capacity(base.len() + then.len() + 1);
                t.push_str(base);
                t.push('\n');
                t.push_str(then);
                self.nft.run(&t, false)?;
                Ok(())
            }
            NetCommand::Apply { text } => {
                self.nft.run(text, false)?;
                Ok(())
            }
            NetCommand::DeleteLinks { names } => {
                let mut nl = netlink::Netlink::open().map_err(|source| NetError::Netlink {
                    op: "socket",
                    source,
                })?;
                for n in names.iter().filter(|n| n.starts_with(IFACE_PREFIX)) {
                    nl.delete_link(n).map_err(|source| NetError::Netlink {
                        op: "delete link",
                        source,
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Reads the table (absent is not an error).
    pub fn state(&self) -> Result<TableState> {
        let out = match self
            .nft
            .run(&format!("list table inet {}", self.table), true)
        {
            Ok(o) => o,
            Err(NftError::Command(m)) if m.contains("No such file or directory") => {
                return Ok(TableState::default())
            }
            Err(e) => return Err(e.into()),
        };
        parse_state(&out)
    }

    /// The packet counts of one user's chains (zero when they have none).
    pub fn user_packets(&self, login: &str) -> Result<PacketCounts> {
        let n = policy::nft::Names::of(login);
        let mut total = PacketCounts::default();
        for chain in [n.forward, n.input] {
            let out = match self
                .nft
                .run(&format!("list chain inet {} {chain}", self.table), true)
            {
                Ok(o) => o,
                Err(NftError::Command(m)) if m.contains("No such file or directory") => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(c) = parse_state(&out)?.packets.get(login) {
                total.allowed_packets += c.allowed_packets;
                total.allowed_bytes += c.allowed_bytes;
                total.dropped_packets += c.dropped_packets;
                total.dropped_bytes += c.dropped_bytes;
            }
        }
        Ok(total)
    }

    /// Host-side box interfaces present (names starting with `ob-`).
    pub fn box_links(&self) -> Result<Vec<String>> {
        let mut nl = netlink::Netlink::open().map_err(|source| NetError::Netlink {
            op: "socket",
            source,
        })?;
        let names = nl.link_names().map_err(|source| NetError::Netlink {
            op: "list links",
            source,
        })?;
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(IFACE_PREFIX))
            .collect())
    }
}

/// Parses `nft -j list table` output.
pub fn parse_state(json: &str) -> Result<TableState> {
    let v: Value = serde_json::from_str(json).map_err(|e| NetError::Listing(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NetError::Listing("no nftables array".into()))?;
    let mut st = TableState {
        exists: true,
        ..TableState::default()
    };
    for item in items {
        if let Some(c) = item.get("chain") {
            if let Some(n) = c.get("name").and_then(Value::as_str) {
                st.chains.push(n.to_string());
            }
        } else if let Some(c) = item.get("counter") {
            if let Some(n) = c
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| n.starts_with("base_"))
            {
                st.base_marker = Some(n.to_string());
            }
        } else if let Some(r) = item.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            let Some(login) = policy::nft::Names::login_of(chain) else {
                continue;
            };
            if let Some(fp) = r
                .get("comment")
                .and_then(Value::as_str)
                .and_then(policy::nft::parse_fingerprint_comment)
            {
                st.fingerprints.insert(login.to_string(), fp);
            }
            let expr = r.get("expr").and_then(Value::as_array);
            let mut counted = None;
            let mut verdict = None;
            for e in expr.into_iter().flatten() {
                if let Some(c) = e.get("counter") {
                    let p = c.get("packets").and_then(Value::as_u64).unwrap_or(0);
                    let b = c.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                    counted = Some((p, b));
                } else if e.get("accept").is_some() {
                    verdict = Some(true);
                } else if e.get("drop").is_some() {
                    verdict = Some(false);
                }
            }
            if let (Some((p, b)), Some(accept)) = (counted, verdict) {
                let c = st.packets.entry(login.to_string()).or_default();
                if accept {
                    c.allowed_packets += p;
                    c.allowed_bytes += b;
                } else {
                    c.dropped_packets += p;
                    c.dropped_bytes += b;
                }
            }
        } else if let Some(set) = item.get("set") {
            let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
            if name == "box_sources" {
                for e in set
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let parts = e.get("concat").and_then(Value::as_array);
                    let ifname = parts.and_then(|p| p.first()).and_then(Value::as_str);
                    let addr = parts
                        .and_then(|p| p.get(1))
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse().ok());
                    if let (Some(i), Some(a)) = (ifname, addr) {
                        st.sources.insert(i.to_string(), a);
                    }
                }
            }
        }
    }
    Ok(st)
}

/// IPv4 forwarding in the daemon's network namespace. Boxes need it to reach the LAN,
/// services and the internet. The value found before the daemon first enabled it is kept
/// in `marker` (so a restart still knows it): when it was off, the base ruleset's
/// `transit` chain drops routed traffic that is not a box's, so the host does not become a
/// router for anything else.
///
/// Returns whether forwarding was off before the daemon.
pub fn enable_forwarding(proc_root: &Path, marker: &Path) -> Result<bool> {
    let path = proc_root.join("sys/net/ipv4/ip_forward");
    let was_off = match fs::read_to_string(marker) {
        Ok(s) => s.trim() == "off",
        Err(_) => {
            let cur = fs::read_to_string(&path).map_err(|source| NetError::Sysctl {
                what: "read",
                path: path.clone(),
                source,
            })?;
            let off = cur.trim() == "0";
            if let Some(dir) = marker.parent() {
                fs::create_dir_all(dir).map_err(|source| NetError::Sysctl {
                    what: "create",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let tmp = marker.with_extension("tmp");
            fs::write(&tmp, if off { "off\n" } else { "on\n" })
                .and_then(|()| fs::rename(&tmp, marker))
                .map_err(|source| NetError::Sysctl {
                    what: "write",
                    path: marker.to_path_buf(),
                    source,
                })?;
            off
        }
    };
    fs::write(&path, "1\n").map_err(|source| NetError::Sysctl {
        what: "write",
        path,
        source,
    })?;
    Ok(was_off)
}

#[cfg(test)]
mod tests;
