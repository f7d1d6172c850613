//! Human-friendly sizes (`512M`, `2G`) and durations (`90s`, `60m`, `30d`) for config and
//! profile files. Both serialize back to the canonical string form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("size {0:?} is not a number followed by K, M, G or T (binary units)")]
    Size(String),
    #[error("duration {0:?} is not a number followed by s, m, h or d")]
    Duration(String),
}

/// A size in bytes. Suffixes are binary: `1K` = 1024 bytes; `KiB`/`MiB`/`GiB`/`TiB` are
/// accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let idx = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..idx], &s[idx..])
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Size(s.chars().take(64).collect());
        let (num, unit) = split_number(s.trim());
        let n: u64 = num.parse().map_err(|_| err())?;
        let shift = match unit {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            _ => return Err(err()),
        };
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(err)
    }
}

string_conversions!(ByteSize, UnitError);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0 % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration with one unit: `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span(pub Duration);

impl Span {
    pub const fn minutes(n: u64) -> Self {
        Span(Duration::from_secs(n * 60))
    }
    pub const fn days(n: u64) -> Self {
        Span(Duration::from_secs(n * 86_400))
    }
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Span {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Duration(s.chars().take(64).collect());
        let (num, unit) = split_number(s.trim());
        let n: u64 = num.parse().map_err(|_| err())?;
        let mul = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(err()),
        };
        n.checked_mul(mul)
            .map(|secs| Span(Duration::from_secs(secs)))
            .ok_or_else(err)
    }
}

string_conversions!(Span, UnitError);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (div, unit) in [(86_400, "d"), (3600, "h"), (60, "m")] {
            if secs != 0 && secs % div == 0 {
                return write!(f, "{}{unit}", secs / div);
            }
        }
        write!(f, "{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_round_trip() {
        let cases = [
            ("0", 0),
            ("512", 512),
            ("1K", 1024),
            ("512M", 512 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
        ];
        for (s, n) in cases {
            let b: ByteSize = s.parse().unwrap();
            assert_eq!(b.0, n, "{s}");
            assert_eq!(b.to_string().parse::<ByteSize>().unwrap(), b);
        }
        for bad in [
            "",
            "G",
            "1.5G",
            "-1G",
            "1 X",
            "2g",
            "99999999999999999999",
            "17179869184T",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spans_parse_one_unit_and_round_trip() {
        assert_eq!("90s".parse::<Span>().unwrap().as_secs(), 90);
        assert_eq!("60m".parse::<Span>().unwrap(), Span::minutes(60));
        assert_eq!("60m".parse::<Span>().unwrap().to_string(), "1h");
        assert_eq!("30d".parse::<Span>().unwrap(), Span::days(30));
        for bad in ["", "m", "1", "1.5h", "1w", "1h30m", "-5m"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} accepted");
        }
    }
}
