//! IPv4 prefixes and the per-user subnet pool. The pool is cut into /24s; slot `n` is the
//! n-th /24 of the pool. In each /24, `.1` is the host-side gateway and `.2` the box.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an IPv4 prefix like 10.87.0.0/16")]
    Syntax(String),
    #[error("{0} has host bits set")]
    HostBits(Ipv4Net),
}

/// An IPv4 network prefix with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if prefix > 32 {
            return Err(NetError::Syntax(format!("{addr}/{prefix}")));
        }
        let net = Ipv4Net { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(NetError::HostBits(net));
        }
        Ok(net)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    fn last(&self) -> u32 {
        u32::from(self.addr) | !self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        u32::from(self.addr) <= other.last() && u32::from(other.addr) <= self.last()
    }

    /// How many /24 subnets the prefix holds (0 for prefixes longer than /24).
    pub fn slots(&self) -> u32 {
        if self.prefix > 24 {
            0
        } else {
            1u32 << (24 - self.prefix)
        }
    }

    /// The /24 for `slot`, or `None` when the pool has no such slot.
    pub fn slot(&self, slot: u32) -> Option<Ipv4Net> {
        if slot >= self.slots() {
            return None;
        }
        let base = u32::from(self.addr) + (slot << 8);
        Some(Ipv4Net {
            addr: Ipv4Addr::from(base),
            prefix: 24,
        })
    }

    /// The `n`-th address inside the prefix (`host(1)` is the first usable address).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let err = || NetError::Syntax(s.chars().take(64).collect());
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.len() > 2 {
            return Err(err());
        }
        let prefix: u8 = p.parse().map_err(|_| err())?;
        Ipv4Net::new(addr, prefix)
    }
}

string_conversions!(Ipv4Net, NetError);

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Docker's default bridge network; the default pool must stay clear of it.
pub const DOCKER_DEFAULT_BRIDGE: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(172, 17, 0, 0),
    prefix: 16,
};

/// Private ranges a pool may be taken from (RFC 1918 and RFC 6598 shared address space).
pub const PRIVATE_RANGES: [Ipv4Net; 4] = [
    Ipv4Net {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 8,
    },
    Ipv4Net {
        addr: Ipv4Addr::new(172, 16, 0, 0),
        prefix: 12,
    },
    Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 0, 0),
        prefix: 16,
    },
    Ipv4Net {
        addr: Ipv4Addr::new(100, 64, 0, 0),
        prefix: 10,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_reject_host_bits() {
        let n: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.87.0.0/16");
        assert!(matches!(
            "10.87.0.1/16".parse::<Ipv4Net>(),
            Err(NetError::HostBits(_))
        ));
        for bad in [
            "10.87.0.0",
            "10.87.0.0/33",
            "10.87.0.0/",
            "10.87.0.0/+8",
            "x/8",
            "10.0.0.0/008",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pool_is_cut_into_slash_24_slots() {
        let n: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        assert_eq!(n.slots(), 256);
        assert_eq!(n.slot(0).unwrap().to_string(), "10.87.0.0/24");
        assert_eq!(n.slot(255).unwrap().to_string(), "10.87.255.0/24");
        assert_eq!(n.slot(256), None);
        let s = n.slot(3).unwrap();
        assert_eq!(s.host(1), Some(Ipv4Addr::new(10, 87, 3, 1)));
        assert_eq!(s.host(2), Some(Ipv4Addr::new(10, 87, 3, 2)));
        assert_eq!(s.host(256), None);
        let small: Ipv4Net = "10.0.0.0/25".parse().unwrap();
        assert_eq!(small.slots(), 0);
    }

    #[test]
    fn overlap_and_containment() {
        let pool: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        assert!(!pool.overlaps(&DOCKER_DEFAULT_BRIDGE));
        let bad: Ipv4Net = "172.16.0.0/12".parse().unwrap();
        assert!(bad.overlaps(&DOCKER_DEFAULT_BRIDGE));
        assert!(pool.contains(Ipv4Addr::new(10, 87, 9, 9)));
        assert!(!pool.contains(Ipv4Addr::new(10, 88, 0, 0)));
    }
}
