//! The file API's pure rules: what a requested path may look like, what a chmod may set,
//! and how a directory listing is ordered and paged.
//!
//! Normalise first, then authorise: a [`HomePath`] is the request path reduced to plain
//! components (no `..`, no NUL, no empty or `.` components). It is still resolved by the
//! kernel (openat2 with `RESOLVE_IN_ROOT`) relative to the home, so symlinks inside the
//! home cannot reach outside it either; refusing `..` here only makes the intent of a
//! request obvious in the audit log and the error.

use std::cmp::Ordering;
use std::fmt;

/// Longest path accepted (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest component accepted (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 10_000;
/// Page size when the request does not say.
pub const DEFAULT_PAGE: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("path component is longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("path must not contain `..`")]
    Parent,
    #[error("the home itself cannot be the target of this operation")]
    Root,
}

impl PathError {
    /// Stable error kind for API clients.
    pub fn kind(&self) -> &'static str {
        match self {
            PathError::Nul | PathError::TooLong | PathError::NameTooLong | PathError::Parent => {
                "invalid_path"
            }
            PathError::Root => "home_root",
        }
    }
}

/// A path inside a home, as plain components. `/a//b/./c` and `a/b/c` are the same path;
/// the empty path (or `/`) is the home itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct HomePath {
    parts: Vec<String>,
}

impl HomePath {
    pub fn parse(s: &str) -> Result<HomePath, PathError> {
        if s.contains('\0') {
            return Err(PathError::Nul);
        }
        if s.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(PathError::Parent),
                c if c.len() > MAX_NAME => return Err(PathError::NameTooLong),
                c => parts.push(c.to_string()),
            }
        }
        Ok(HomePath { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn components(&self) -> &[String] {
        &self.parts
    }

    /// The path relative to the home, `.` for the home itself (what openat2 is given).
    pub fn relative(&self) -> String {
        if self.parts.is_empty() {
            ".".into()
        } else {
            self.parts.join("/")
        }
    }

    /// The parent directory and the final name; the home itself has neither.
    pub fn split_last(&self) -> Result<(HomePath, &str), PathError> {
        match self.parts.split_last() {
            Some((last, rest)) => Ok((
                HomePath {
                    parts: rest.to_vec(),
                },
                last,
            )),
            None => Err(PathError::Root),
        }
    }

    /// This path followed by one more component (a name read from a directory).
    pub fn join(&self, name: &str) -> HomePath {
        let mut parts = self.parts.clone();
        parts.push(name.to_string());
        HomePath { parts }
    }

    /// Whether `other` is this path or below it.
    pub fn contains(&self, other: &HomePath) -> bool {
        other.parts.starts_with(&self.parts)
    }
}

impl fmt::Display for HomePath {
    /// `/a/b`, as the audit log and errors show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.parts.join("/"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("mode {0:?} is not an octal number")]
    NotOctal(String),
    #[error("mode {0:o} has bits outside 07777")]
    OutOfRange(u32),
}

/// A permission mode a user may set: setuid and setgid are always stripped (a file
/// manager has no business creating them; the home is mounted nosuid anyway).
pub fn sanitize_mode(mode: u32) -> Result<u32, ModeError> {
    if mode > 0o7777 {
        return Err(ModeError::OutOfRange(mode));
    }
    Ok(mode & 0o1777)
}

/// Parses an octal mode such as `755` or `0644`.
pub fn parse_mode(s: &str) -> Result<u32, ModeError> {
    let t = s.strip_prefix("0o").unwrap_or(s);
    if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ModeError::NotOctal(s.into()));
    }
    let m = u32::from_str_radix(t, 8).map_err(|_| ModeError::NotOctal(s.into()))?;
    sanitize_mode(m)
}

/// Listing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Name,
    Size,
    Mtime,
}

impl std::str::FromStr for SortBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "name" => Ok(SortBy::Name),
            "size" => Ok(SortBy::Size),
            "mtime" => Ok(SortBy::Mtime),
            o => Err(format!("unknown sort {o:?} (name, size or mtime)")),
        }
    }
}

/// Where a page ends: the sort key of its last entry. The next page holds the entries
/// strictly after it in the listing's order. Because the key is the entry itself rather
/// than an offset, entries created or removed between pages never shift the others: every
/// entry present for the whole walk (and not modified) is seen exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Size or mtime in nanoseconds (0 when sorting by name).
    pub key: i128,
    pub name: String,
}

impl Cursor {
    /// Text form `key:name` (the API wraps it in base64 so clients treat it as opaque).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.key, self.name)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (k, n) = s.split_once(':')?;
        Some(Cursor {
            key: k.parse().ok()?,
            name: n.to_string(),
        })
    }
}

/// How to list a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpec {
    pub sort: SortBy,
    pub descending: bool,
    pub hidden: bool,
    pub limit: usize,
    pub after: Option<Cursor>,
}

impl Default for ListSpec {
    fn default() -> Self {
        ListSpec {
            sort: SortBy::Name,
            descending: false,
            hidden: false,
            limit: DEFAULT_PAGE,
            after: None,
        }
    }
}

impl ListSpec {
    /// The sort key of an entry for this listing.
    pub fn key(&self, size: u64, mtime_ns: i128) -> i128 {
        match self.sort {
            SortBy::Name => 0,
            SortBy::Size => i128::from(size),
            SortBy::Mtime => mtime_ns,
        }
    }

    /// Total order of the listing: by key, then by name (names are unique in a
    /// directory, so no two entries compare equal).
    pub fn cmp(&self, a: (i128, &str), b: (i128, &str)) -> Ordering {
        let o =
            a.0.cmp(&b.0)
                .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()));
        if self.descending {
            o.reverse()
        } else {
            o
        }
    }

    /// Whether an entry belongs on a page after the cursor.
    pub fn is_after_cursor(&self, key: i128, name: &str) -> bool {
        match &self.after {
            None => true,
            Some(c) => self.cmp((key, name), (c.key, &c.name)) == Ordering::Greater,
        }
    }

    pub fn shows(&self, name: &str) -> bool {
        self.hidden || !name.starts_with('.')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_to_plain_components() {
        for (input, rel) in [
            ("", "."),
            ("/", "."),
            (".", "."),
            ("a", "a"),
            ("/a//b/./c/", "a/b/c"),
            ("%2e%2e", "%2e%2e"),
            ("..a/b..", "..a/b.."),
            ("a\\..\\b", "a\\..\\b"),
        ] {
            assert_eq!(HomePath::parse(input).unwrap().relative(), rel, "{input:?}");
        }
    }

    #[test]
    fn paths_with_parent_nul_or_overlong_parts_are_refused() {
        let long = "x".repeat(256);
        let very_long = "a/".repeat(2049);
        for (input, err) in [
            ("..", PathError::Parent),
            ("a/../b", PathError::Parent),
            ("/..", PathError::Parent),
            ("a/..", PathError::Parent),
            ("a\0b", PathError::Nul),
            (long.as_str(), PathError::NameTooLong),
            (very_long.as_str(), PathError::TooLong),
        ] {
            assert_eq!(HomePath::parse(input).unwrap_err(), err, "{input:?}");
        }
    }

    #[test]
    fn the_home_itself_has_no_parent() {
        assert_eq!(
            HomePath::parse("/").unwrap().split_last().unwrap_err(),
            PathError::Root
        );
        let p = HomePath::parse("a/b").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!((parent.relative().as_str(), name), ("a", "b"));
        assert_eq!(p.to_string(), "/a/b");
        assert!(parent.contains(&p));
        assert!(!p.contains(&parent));
    }

    #[test]
    fn modes_lose_setuid_and_setgid() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("4755"), Ok(0o755));
        assert_eq!(parse_mode("6777"), Ok(0o777));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert!(parse_mode("8").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("-1").is_err());
        assert!(parse_mode("77777").is_err());
        assert_eq!(sanitize_mode(0o10000), Err(ModeError::OutOfRange(0o10000)));
    }

    #[test]
    fn cursors_round_trip_and_order_strictly() {
        let c = Cursor {
            key: -5,
            name: "a:b".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(Cursor::decode("x:y"), None);
        let spec = ListSpec {
            sort: SortBy::Size,
            after: Some(Cursor {
                key: 10,
                name: "m".into(),
            }),
            ..ListSpec::default()
        };
        assert!(!spec.is_after_cursor(10, "m"));
        assert!(spec.is_after_cursor(10, "n"));
        assert!(!spec.is_after_cursor(10, "a"));
        assert!(spec.is_after_cursor(11, "a"));
        let desc = ListSpec {
            descending: true,
            ..spec
        };
        assert!(desc.is_after_cursor(10, "a"));
        assert!(!desc.is_after_cursor(11, "a"));
    }

    #[test]
    fn hidden_entries_show_only_on_request() {
        let spec = ListSpec::default();
        assert!(!spec.shows(".bashrc"));
        assert!(spec.shows("a"));
        assert!(ListSpec {
            hidden: true,
            ..ListSpec::default()
        }
        .shows(".bashrc"));
    }
}

/// What happened to a name in a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(String),
    Removed(String),
    Modified(String),
    Renamed { from: String, to: String },
}

/// Largest number of changes one batch carries; beyond it the batch is replaced by
/// "overflow" and the client lists the directory again.
pub const MAX_BATCH: usize = 1000;

/// Folds a burst of changes into what a file manager needs to show the end state: a
/// name's changes within one batch collapse (created + modified = created, created +
/// removed = nothing, removed + created = modified, any number of modifications = one).
#[derive(Debug, Default)]
pub struct Coalescer {
    changes: Vec<Change>,
    overflow: bool,
}

impl Coalescer {
    pub fn push(&mut self, c: Change) {
        if self.overflow {
            return;
        }
        let name_of = |c: &Change| match c {
            Change::Created(n) | Change::Removed(n) | Change::Modified(n) => Some(n.clone()),
            Change::Renamed { .. } => None,
        };
        if let Some(name) = name_of(&c) {
            // The last plain change of the same name, if nothing renamed it since.
            let last = self.changes.iter().rposition(|x| match x {
                Change::Renamed { from, to } => from == &name || to == &name,
                other => name_of(other).as_deref() == Some(name.as_str()),
            });
            if let Some(i) = last {
                let merged = match (&self.changes[i], &c) {
                    (Change::Created(_), Change::Modified(_)) => Some(None),
                    (Change::Created(_), Change::Removed(_)) => {
                        self.changes.remove(i);
                        return;
                    }
                    (Change::Modified(_), Change::Modified(_)) => Some(None),
                    (Change::Modified(_), Change::Removed(_)) => Some(Some(c.clone())),
                    (Change::Removed(_), Change::Created(_)) => {
                        Some(Some(Change::Modified(name.clone())))
                    }
                    _ => None,
                };
                match merged {
                    Some(None) => return,
                    Some(Some(new)) => {
                        self.changes[i] = new;
                        return;
                    }
                    None => {}
                }
            }
        }
        self.changes.push(c);
        if self.changes.len() > MAX_BATCH {
            self.changes.clear();
            self.overflow = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.overflow
    }

    /// Events were lost (the kernel's queue overflowed): the batch becomes "overflow".
    pub fn mark_overflow(&mut self) {
        self.changes.clear();
        self.overflow = true;
    }

    /// The batch so far (`Err(())`: it overflowed), leaving the coalescer empty.
    #[allow(clippy::result_unit_err)]
    pub fn take(&mut self) -> Result<Vec<Change>, ()> {
        let overflow = std::mem::take(&mut self.overflow);
        let changes = std::mem::take(&mut self.changes);
        if overflow {
            Err(())
        } else {
            Ok(changes)
        }
    }
}

#[cfg(test)]
mod coalescer_tests {
    use super::*;

    fn c(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn a_burst_of_writes_to_one_file_is_one_change() {
        let mut k = Coalescer::default();
        for _ in 0..500 {
            k.push(Change::Modified(c("log")));
        }
        assert_eq!(k.take(), Ok(vec![Change::Modified(c("log"))]));
        assert!(k.is_empty());
    }

    #[test]
    fn a_names_changes_collapse_to_its_end_state() {
        let mut k = Coalescer::default();
        k.push(Change::Created(c("a")));
        k.push(Change::Modified(c("a")));
        k.push(Change::Created(c("tmp")));
        k.push(Change::Removed(c("tmp")));
        k.push(Change::Removed(c("b")));
        k.push(Change::Created(c("b")));
        k.push(Change::Modified(c("d")));
        k.push(Change::Removed(c("d")));
        assert_eq!(
            k.take(),
            Ok(vec![
                Change::Created(c("a")),
                Change::Modified(c("b")),
                Change::Removed(c("d"))
            ])
        );
    }

    #[test]
    fn renames_keep_their_order_against_later_changes() {
        let mut k = Coalescer::default();
        k.push(Change::Created(c("x")));
        k.push(Change::Renamed {
            from: c("x"),
            to: c("y"),
        });
        k.push(Change::Created(c("x")));
        assert_eq!(
            k.take(),
            Ok(vec![
                Change::Created(c("x")),
                Change::Renamed {
                    from: c("x"),
                    to: c("y")
                },
                Change::Created(c("x"))
            ])
        );
    }

    #[test]
    fn too_many_distinct_changes_become_an_overflow() {
        let mut k = Coalescer::default();
        for i in 0..=MAX_BATCH {
            k.push(Change::Created(format!("f{i}")));
        }
        assert_eq!(k.take(), Err(()));
        assert!(k.is_empty());
        k.push(Change::Created(c("next")));
        assert_eq!(k.take(), Ok(vec![Change::Created(c("next"))]));
    }
}
