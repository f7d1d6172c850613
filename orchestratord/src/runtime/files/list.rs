//! Directory listings, and a cache of the sorted names of large directories.
//!
//! A page sorted by name needs no `stat` to be chosen: the names are read (getdents), the
//! page is picked from them, and only its entries are stat'ed. Without a cache every page
//! of a walk re-reads every name of the directory (the cursor is stateless), so walking a
//! 100k-entry directory in pages of 10k costs ten getdents passes of 100k names.
//!
//! [`ListCache`] keeps the names of large directories, sorted, keyed by the directory's
//! device, inode, `ctime`, `mtime`, size and link count. A later page finds them after
//! one `fstat` of the directory, which is opened as the user every time (so the kernel
//! checks the user's read permission on each request; the cache never answers for a
//! directory the caller cannot open). Correctness rests on `ctime`: every change of a
//! directory's entries (create, unlink, rename in or out, and also `utimensat`, which a
//! user could use to put an old `mtime` back) sets the directory's `ctime` to the current
//! time, and no unprivileged call can set `ctime`. Names are only cached when the
//! directory's `ctime` is at least [`ListCache::settle`] in the past (default one second,
//! far above the kernel's coarse timestamp granularity) and the same before and after
//! getdents: a change during or after the read then always produces a different `ctime`.
//! Only local filesystems get a cache: a network filesystem's attributes are cached by
//! the client and may lag the server's directory.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;
use policy::files::{Cursor, HomePath, ListSpec, SortBy};

use super::{Entry, FilesError, Home, Page, Result};

/// Directories with fewer names are not cached (one getdents pass is cheap).
pub const CACHE_MIN_NAMES: usize = 1000;
/// At most this many directories are cached at once.
const CACHE_DIRS: usize = 16;
/// At most this many bytes of names are cached at once (about 16 bytes per name plus
/// the name: 16 MiB holds several directories of 100k entries).
const CACHE_BYTES: usize = 16 << 20;
/// A cached directory not asked for during this long is dropped.
const CACHE_IDLE: Duration = Duration::from_secs(60);

/// The names of one directory: one buffer of the names as shown (lossy UTF-8), where
/// each ends, and the raw bytes of the few names that are not UTF-8.
#[derive(Debug, Default)]
pub(super) struct Names {
    buf: String,
    ends: Vec<usize>,
    /// `(index, raw bytes)`, ordered by index.
    raw: Vec<(usize, Box<[u8]>)>,
}

impl Names {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn shown(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    /// The name as the filesystem has it.
    fn raw(&self, i: usize) -> &OsStr {
        match self.raw.binary_search_by_key(&i, |r| r.0) {
            Ok(k) => OsStr::from_bytes(&self.raw[k].1),
            Err(_) => OsStr::new(self.shown(i)),
        }
    }

    fn push(&mut self, name: &[u8]) {
        let shown = String::from_utf8_lossy(name);
        if let std::borrow::Cow::Owned(_) = shown {
            self.raw.push((self.len(), name.into()));
        }
        self.buf.push_str(&shown);
        self.ends.push(self.buf.len());
    }

    /// Memory held, for the cache's budget.
    fn bytes(&self) -> usize {
        self.buf.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.raw.iter().map(|r| r.1.len() + 32).sum::<usize>()
    }

    /// The same names in listing order (bytes of the shown name, ascending).
    fn sorted(&self) -> Names {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_unstable_by(|&a, &b| self.shown(a).as_bytes().cmp(self.shown(b).as_bytes()));
        let mut out = Names {
            buf: String::with_capacity(self.buf.len()),
            ends: Vec::with_capacity(self.len()),
            raw: Vec::new(),
        };
        for i in order {
            if let Ok(k) = self.raw.binary_search_by_key(&i, |r| r.0) {
                out.raw.push((out.len(), self.raw[k].1.clone()));
            }
            out.buf.push_str(self.shown(i));
            out.ends.push(out.buf.len());
        }
        out
    }

    /// Reads every name of the directory `dfd` (not `.` and `..`).
    fn read(dfd: RawFd, path: &HomePath) -> Result<Names> {
        // `Dir` owns (and closes) its descriptor, also when `fdopendir` fails: give it a
        // duplicate, the caller keeps `dfd` for the stats.
        let dup = nix::unistd::dup(dfd).map_err(|e| FilesError::io("list", path, e))?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| FilesError::io("list", path, e))?;
        let mut names = Names::default();
        for ent in dir.iter() {
            let ent = ent.map_err(|e| FilesError::io("list", path, e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n);
            }
        }
        Ok(names)
    }
}

/// What identifies one state of a directory's entries (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirKey {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: i64,
    nlink: u64,
}

impl DirKey {
    fn of(st: &FileStat) -> DirKey {
        DirKey {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            size: st.st_size,
            nlink: st.st_nlink,
        }
    }

    /// Whether the last change is at least `settle` old by the wall clock.
    fn settled(&self, settle: Duration) -> bool {
        let changed = UNIX_EPOCH
            + Duration::new(
                self.ctime.0.max(0) as u64,
                self.ctime.1.clamp(0, 999_999_999) as u32,
            );
        SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age >= settle)
    }
}

#[derive(Debug)]
struct Slot {
    key: DirKey,
    names: Arc<Names>,
    bytes: usize,
    used: Instant,
}

/// The sorted names of recently listed large directories (see the module comment).
/// Shared by every home of the daemon; bounded in directories and bytes.
#[derive(Debug)]
pub struct ListCache {
    slots: Mutex<Vec<Slot>>,
    settle: Duration,
    hits: AtomicU64,
}

impl Default for ListCache {
    fn default() -> Self {
        ListCache::new()
    }
}

impl ListCache {
    pub fn new() -> ListCache {
        ListCache::with_settle(Duration::from_secs(1))
    }

    /// A cache that only keeps directories whose last change is `settle` old.
    pub fn with_settle(settle: Duration) -> ListCache {
        ListCache {
            slots: Mutex::new(Vec::new()),
            settle,
            hits: AtomicU64::new(0),
        }
    }

    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// How many listings were answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(AtomicOrdering::Relaxed)
    }

    /// How many directories are cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // A panic while holding the lock leaves a consistent Vec: keep using it.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the directories not asked for during the last minute (the daemon calls
    /// this every minute, so an idle cache gives its memory back).
    pub fn sweep(&self) {
        self.sweep_idle(CACHE_IDLE);
    }

    fn sweep_idle(&self, idle: Duration) {
        let now = Instant::now();
        self.lock().retain(|s| now.duration_since(s.used) < idle);
    }

    fn get(&self, key: &DirKey) -> Option<Arc<Names>> {
        let now = Instant::now();
        let mut slots = self.lock();
        slots.retain(|s| now.duration_since(s.used) < CACHE_IDLE);
        let slot = slots.iter_mut().find(|s| s.key == *key)?;
        slot.used = now;
        self.hits.fetch_add(1, AtomicOrdering::Relaxed);
        Some(slot.names.clone())
    }

    fn put(&self, key: DirKey, names: Arc<Names>) {
        let bytes = names.bytes();
        if bytes > CACHE_BYTES {
            return;
        }
        let now = Instant::now();
        let mut slots = self.lock();
        // An older state of the same directory is of no use any more.
        slots.retain(|s| {
            now.duration_since(s.used) < CACHE_IDLE && (s.key.dev, s.key.ino) != (key.dev, key.ino)
        });
        while slots.len() >= CACHE_DIRS
            || slots.iter().map(|s| s.bytes).sum::<usize>() + bytes > CACHE_BYTES
        {
            let Some(lru) = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.used)
                .map(|(i, _)| i)
            else {
                break;
            };
            slots.swap_remove(lru);
        }
        slots.push(Slot {
            key,
            names,
            bytes,
            used: now,
        });
    }
}

/// The names of a directory, as read now or as cached.
enum Listed {
    /// In listing order (ascending by name).
    Sorted(Arc<Names>),
    /// In getdents order.
    Unsorted(Names),
}

/// The first index in `0..n` for which `pred` is false (`pred` true on a prefix).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

impl Home {
    /// The names of the directory `dfd`: from the cache when it holds this state of the
    /// directory, else read, and cached when the directory is large and settled.
    fn names_of(&self, dfd: RawFd, path: &HomePath) -> Result<Listed> {
        let Some(cache) = &self.listings else {
            return Ok(Listed::Unsorted(Names::read(dfd, path)?));
        };
        let stat = |fd| nix::sys::stat::fstat(fd).map_err(|e| FilesError::io("list", path, e));
        let before = DirKey::of(&stat(dfd)?);
        if let Some(names) = cache.get(&before) {
            return Ok(Listed::Sorted(names));
        }
        let names = Names::read(dfd, path)?;
        if names.len() < CACHE_MIN_NAMES || !before.settled(cache.settle) {
            return Ok(Listed::Unsorted(names));
        }
        let sorted = Arc::new(names.sorted());
        if DirKey::of(&stat(dfd)?) == before {
            cache.put(before, sorted.clone());
        }
        Ok(Listed::Sorted(sorted))
    }

    /// Stats the chosen names (an entry removed since getdents is simply not listed).
    fn entries(dfd: RawFd, names: &Names, chosen: impl Iterator<Item = usize>) -> Vec<Entry> {
        chosen
            .filter_map(|i| {
                let (st, target) = Self::lstat_target(dfd, names.raw(i)).ok()?;
                let mut e = Entry::from_stat(names.shown(i).to_string(), &st);
                e.target = target;
                Some(e)
            })
            .collect()
    }

    /// The page of the `chosen` names (in listing order), `more` when others follow.
    /// That was decided on the names, before any stat: an entry removed meanwhile
    /// shortens this page but never ends the walk early.
    fn name_page(dfd: RawFd, names: &Names, chosen: Vec<usize>, more: bool) -> Page {
        let next = more.then(|| Cursor {
            key: 0,
            name: chosen
                .last()
                .map(|&i| names.shown(i).to_string())
                .unwrap_or_default(),
        });
        Page {
            entries: Self::entries(dfd, names, chosen.into_iter()),
            next,
        }
    }

    /// A page of the directory `path`.
    ///
    /// Sorting by name needs no `stat` to choose the page: names are read (or found in
    /// the cache), those after the cursor are chosen, and only the page is stat'ed.
    pub fn list(&self, path: &HomePath, spec: &ListSpec) -> Result<Page> {
        let fd = self.resolve(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
            0,
        )?;
        let dfd = fd.as_raw_fd();
        let want = spec.limit.max(1);
        let listed = self.names_of(dfd, path)?;
        let page = match (spec.sort, &listed) {
            (SortBy::Name, Listed::Sorted(names)) => {
                let names = &**names;
                let after = |i: usize| spec.is_after_cursor(0, names.shown(i));
                let mut chosen = Vec::with_capacity(want.min(names.len()));
                let mut more = false;
                let mut take = |i: usize| {
                    if !spec.shows(names.shown(i)) {
                        return true;
                    }
                    if chosen.len() == want {
                        more = true;
                        return false;
                    }
                    chosen.push(i);
                    true
                };
                if spec.descending {
                    // Descending, the names after the cursor are a prefix of the
                    // ascending order, walked from its end.
                    let end = partition_point(names.len(), after);
                    for i in (0..end).rev() {
                        if !take(i) {
                            break;
                        }
                    }
                } else {
                    let start = partition_point(names.len(), |i| !after(i));
                    for i in start..names.len() {
                        if !take(i) {
                            break;
                        }
                    }
                }
                Self::name_page(dfd, names, chosen, more)
            }
            (SortBy::Name, Listed::Unsorted(names)) => {
                let mut chosen: Vec<usize> = (0..names.len())
                    .filter(|&i| {
                        let n = names.shown(i);
                        spec.shows(n) && spec.is_after_cursor(0, n)
                    })
                    .collect();
                let cmp =
                    |a: &usize, b: &usize| spec.cmp((0, names.shown(*a)), (0, names.shown(*b)));
                if chosen.len() > want {
                    chosen.select_nth_unstable_by(want, cmp);
                }
                let more = chosen.len() > want;
                chosen.truncate(want);
                chosen.sort_unstable_by(cmp);
                Self::name_page(dfd, names, chosen, more)
            }
            (SortBy::Size | SortBy::Mtime, listed) => {
                let names = match listed {
                    Listed::Sorted(n) => &**n,
                    Listed::Unsorted(n) => n,
                };
                let mut all: Vec<Entry> = Self::entries(
                    dfd,
                    names,
                    (0..names.len()).filter(|&i| spec.shows(names.shown(i))),
                );
                all.retain(|e| spec.is_after_cursor(spec.key(e.size, e.mtime_ns), &e.name));
                let cmp = |a: &Entry, b: &Entry| {
                    spec.cmp(
                        (spec.key(a.size, a.mtime_ns), &a.name),
                        (spec.key(b.size, b.mtime_ns), &b.name),
                    )
                };
                if all.len() > want {
                    all.select_nth_unstable_by(want, cmp);
                }
                let more = all.len() > want;
                all.truncate(want);
                all.sort_unstable_by(cmp);
                let next = if more {
                    all.last().map(|e| Cursor {
                        key: spec.key(e.size, e.mtime_ns),
                        name: e.name.clone(),
                    })
                } else {
                    None
                };
                Page { entries: all, next }
            }
        };
        drop(fd);
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    use super::super::{FsCreds, FsId};
    use super::*;

    const ROOT: FsId = FsId { uid: 0, gid: 0 };

    fn p(s: &str) -> HomePath {
        HomePath::parse(s).unwrap()
    }

    /// A directory `big` of `n` files, some hidden, one symlink, one non-UTF-8 name.
    fn big_dir(n: usize) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..n {
            let name = if i % 7 == 0 {
                format!(".h{i:05}")
            } else {
                format!("f{i:05}")
            };
            std::fs::File::create(big.join(name)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", big.join("link")).unwrap();
        std::fs::File::create(big.join(OsStr::from_bytes(b"bad\xff"))).unwrap();
        t
    }

    /// Every page of a walk: the names and the cursors.
    fn walk(home: &Home, spec: &ListSpec) -> (Vec<String>, Vec<Option<Cursor>>) {
        let mut spec = spec.clone();
        let (mut names, mut cursors) = (Vec::new(), Vec::new());
        loop {
            let page = home.list(&p("big"), &spec).unwrap();
            names.extend(page.entries.iter().map(|e| e.name.clone()));
            cursors.push(page.next.clone());
            match page.next {
                Some(c) => spec.after = Some(c),
                None => return (names, cursors),
            }
        }
    }

    #[test]
    fn cached_pages_are_the_pages_read_without_a_cache() {
        let t = big_dir(2500);
        let cache = Arc::new(ListCache::with_settle(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(50));
        let plain = Home::open(t.path(), ROOT).unwrap();
        let cached = Home::open(t.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        let mut walks = 0;
        for descending in [false, true] {
            for hidden in [false, true] {
                for sort in [SortBy::Name, SortBy::Size, SortBy::Mtime] {
                    let spec = ListSpec {
                        sort,
                        descending,
                        hidden,
                        limit: 700,
                        after: None,
                    };
                    let want = walk(&plain, &spec);
                    assert_eq!(walk(&cached, &spec), want, "{spec:?}");
                    let shown = 2500 - 2500usize.div_ceil(7) + 2;
                    let all = if hidden { 2502 } else { shown };
                    assert_eq!(want.0.len(), all, "{spec:?}");
                    walks += 1;
                }
            }
        }
        assert_eq!(walks, 12);
        assert_eq!(cache.len(), 1);
        // Every page of every walk but the very first came from the cache.
        assert!(cache.hits() >= 12 * 4 - 1, "{} hits", cache.hits());
        // The non-UTF-8 name is stat'ed by its raw bytes (it would be missing otherwise)
        // and the symlink is described, not followed.
        let spec = ListSpec {
            limit: 5000,
            ..ListSpec::default()
        };
        let page = cached.list(&p("big"), &spec).unwrap();
        assert!(page.entries.iter().any(|e| e.name == "bad\u{fffd}"));
        let link = page.entries.iter().find(|e| e.name == "link").unwrap();
        assert_eq!(link.target.as_deref(), Some("/etc/passwd"));
    }

    #[test]
    fn a_change_to_the_directory_is_listed_at_once() {
        let t = big_dir(1500);
        let cache = Arc::new(ListCache::with_settle(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(50));
        let home = Home::open(t.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        let spec = ListSpec {
            limit: 100,
            ..ListSpec::default()
        };
        let first = home.list(&p("big"), &spec).unwrap();
        assert_eq!(cache.len(), 1);
        let big = t.path().join("big");
        let old = std::fs::metadata(&big).unwrap().modified().unwrap();
        // A new name on the next page, and the old mtime put back (as a user could):
        // the ctime still tells the change.
        std::fs::File::create(big.join("f00200x")).unwrap();
        std::fs::remove_file(big.join("f00201")).unwrap();
        std::fs::File::options()
            .read(true)
            .open(&big)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let hits = cache.hits();
        let next = home
            .list(
                &p("big"),
                &ListSpec {
                    after: first.next.clone(),
                    ..spec.clone()
                },
            )
            .unwrap();
        assert_eq!(cache.hits(), hits, "the changed directory was read again");
        let names: Vec<&str> = next.entries.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"f00200x"), "{names:?}");
        assert!(!names.contains(&"f00201"), "{names:?}");
    }

    #[test]
    fn a_directory_changed_within_the_settle_time_is_not_cached() {
        let t = big_dir(1500);
        let cache = Arc::new(ListCache::new());
        let home = Home::open(t.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        let page = home.list(&p("big"), &ListSpec::default()).unwrap();
        assert!(page.next.is_some());
        assert!(cache.is_empty());
        // Small directories are never cached.
        let small = tempfile::tempdir().unwrap();
        std::fs::create_dir(small.path().join("big")).unwrap();
        let cache = Arc::new(ListCache::with_settle(Duration::ZERO));
        let home = Home::open(small.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        home.list(&p("big"), &ListSpec::default()).unwrap();
        assert!(cache.is_empty());
    }

    /// The cache is shared by every home, but each request opens the directory as its
    /// user: names cached for the owner are never shown to a user who cannot read it.
    #[test]
    fn the_cache_never_answers_for_a_directory_the_caller_cannot_open() {
        let t = tempfile::tempdir().unwrap();
        let owner = FsId {
            uid: 4242,
            gid: 4242,
        };
        let other = FsId {
            uid: 4343,
            gid: 4343,
        };
        let home = t.path().join("home");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&home)
            .unwrap();
        let big = home.join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..1200 {
            std::fs::File::create(big.join(format!("secret{i}"))).unwrap();
        }
        for d in [&home, &big] {
            std::os::unix::fs::chown(d, Some(owner.uid), Some(owner.gid)).unwrap();
        }
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cache = Arc::new(ListCache::with_settle(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(50));
        let as_user = |id: FsId| {
            let h = Home::open(&home, id)
                .unwrap()
                .with_list_cache(cache.clone());
            std::thread::spawn(move || {
                let _c = FsCreds::enter(id).unwrap();
                h.list(&p("big"), &ListSpec::default())
            })
            .join()
            .unwrap()
        };
        assert_eq!(as_user(owner).unwrap().entries.len(), 1000);
        assert_eq!(cache.len(), 1);
        let err = as_user(other).unwrap_err();
        assert_eq!(err.errno(), Some(nix::errno::Errno::EACCES), "{err:?}");
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_one_state_per_directory() {
        let cache = ListCache::with_settle(Duration::ZERO);
        let names = |n: usize| {
            let mut v = Names::default();
            for i in 0..n {
                v.push(format!("n{i}").as_bytes());
            }
            Arc::new(v.sorted())
        };
        let key = |ino: u64, ctime: i64| DirKey {
            dev: 1,
            ino,
            ctime: (ctime, 0),
            mtime: (ctime, 0),
            size: 4096,
            nlink: 2,
        };
        for ino in 0..40 {
            cache.put(key(ino, 1), names(10));
        }
        assert_eq!(cache.len(), CACHE_DIRS);
        assert!(cache.get(&key(0, 1)).is_none(), "the oldest went first");
        assert!(cache.get(&key(39, 1)).is_some());
        cache.put(key(39, 2), names(10));
        assert!(
            cache.get(&key(39, 1)).is_none(),
            "a newer state replaces it"
        );
        assert!(cache.get(&key(39, 2)).is_some());
        assert_eq!(cache.len(), CACHE_DIRS);
        // Recently used directories survive a sweep; idle ones go.
        cache.sweep();
        assert_eq!(cache.len(), CACHE_DIRS);
        cache.sweep_idle(Duration::ZERO);
        assert!(cache.is_empty());
        // A directory whose names alone exceed the budget is not kept.
        let huge = ListCache::with_settle(Duration::ZERO);
        let mut v = Names::default();
        let long = "x".repeat(255);
        for _ in 0..(CACHE_BYTES / 255 + 1) {
            v.push(long.as_bytes());
        }
        huge.put(key(1, 1), Arc::new(v));
        assert!(huge.is_empty());
    }

    #[test]
    fn names_keep_raw_bytes_through_sorting() {
        let mut v = Names::default();
        for n in [&b"b"[..], b"a\xff", b"c", b"a"] {
            v.push(n);
        }
        let s = v.sorted();
        let shown: Vec<&str> = (0..s.len()).map(|i| s.shown(i)).collect();
        assert_eq!(shown, ["a", "a\u{fffd}", "b", "c"]);
        assert_eq!(s.raw(1).as_bytes(), b"a\xff");
        assert_eq!(s.raw(2).as_bytes(), b"b");
    }
}
