//! Directory listings, and a cache of the sorted names of large directories.
//!
//! A page sorted by name needs no `stat` to be chosen: the names are read (getdents), the
//! page is picked from them, and only its entries are stat'ed. Without a cache every page
//! of a walk re-reads every name of the directory (the cursor is stateless), so walking a
//! 100k-entry directory in pages of 10k costs ten getdents passes of 100k names.
//!
//! [`ListCache`] keeps the names of large directories (1000 or more), sorted, and keeps
//! them exact with an inotify watch on each: every create, delete and rename in or out
//! of a watched directory is queued by the kernel inside the call that made it, and the
//! queue is drained (the changes merged into the names) before the cache answers. So a
//! later page, or a walk after something changed, finds the names after one `fstat` of
//! the directory, which is opened as the user on every request: the kernel checks the
//! user's read permission each time, and the cache never answers for a directory the
//! caller cannot open. The watch is added (with the user's ids) before the names are
//! read, and what it reports during the read is applied to them afterwards; for each
//! name the last change wins, so a change the read already saw comes out the same. A
//! lost event (queue overflow) drops every cached directory; a removed or unmounted one
//! is dropped. Only local filesystems get a cache: a network filesystem's changes made
//! by other clients reach no inotify queue.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
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
/// Directories smaller than this (`st_size`) are not watched: too few names to cache.
const CACHE_HINT_BYTES: i64 = 8 << 10;

/// The names of one directory: one buffer of the names as shown (lossy UTF-8), where
/// each ends, and the raw bytes of the few names that are not UTF-8.
#[derive(Debug, Default, Clone)]
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
            out.push_from(self, i);
        }
        out
    }

    /// Appends name `i` of `from` (shown and raw).
    fn push_from(&mut self, from: &Names, i: usize) {
        if let Ok(k) = from.raw.binary_search_by_key(&i, |r| r.0) {
            self.raw.push((self.len(), from.raw[k].1.clone()));
        }
        self.buf.push_str(from.shown(i));
        self.ends.push(self.buf.len());
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

/// One change to a directory's names, as inotify reported it (raw bytes).
#[derive(Debug, Clone)]
enum Change {
    Added(Vec<u8>),
    Removed(Vec<u8>),
}

impl Names {
    /// These (sorted) names with `changes` applied in order, in one merge: for each name
    /// the last change decides, so a change that getdents already saw (or missed) comes
    /// out the same. The result is sorted.
    fn apply(&self, changes: &[Change]) -> Names {
        let mut last: std::collections::HashMap<&[u8], bool> = Default::default();
        for c in changes {
            match c {
                Change::Added(n) => last.insert(n.as_slice(), true),
                Change::Removed(n) => last.insert(n.as_slice(), false),
            };
        }
        let mut added = Names::default();
        for (name, present) in &last {
            if *present {
                added.push(name);
            }
        }
        let added = added.sorted();
        let mut out = Names {
            buf: String::with_capacity(self.buf.len() + added.buf.len()),
            ends: Vec::with_capacity(self.len() + added.len()),
            raw: Vec::new(),
        };
        let mut j = 0;
        for i in 0..self.len() {
            if last.contains_key(self.raw(i).as_bytes()) {
                continue;
            }
            while j < added.len() && added.shown(j).as_bytes() < self.shown(i).as_bytes() {
                out.push_from(&added, j);
                j += 1;
            }
            out.push_from(self, i);
        }
        for j in j..added.len() {
            out.push_from(&added, j);
        }
        out
    }
}

/// What inotify reports of a watched directory: the changes to its names.
const WATCH_FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

#[derive(Debug)]
enum State {
    /// Being read by one request: the changes seen since its watch was added.
    Reading(Vec<Change>),
    /// Sorted, and kept up to date with every change.
    Ready(Arc<Names>),
}

#[derive(Debug)]
struct Slot {
    dev: u64,
    ino: u64,
    wd: WatchDescriptor,
    state: State,
    bytes: usize,
    used: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Created on first use; `None` with `broken` when inotify is not available.
    inotify: Option<Inotify>,
    broken: bool,
    slots: Vec<Slot>,
}

impl Inner {
    fn forget(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        if let Some(inotify) = &self.inotify {
            // The watch may be gone already (the directory was removed): nothing to undo.
            let _ = inotify.rm_watch(slot.wd);
        }
    }

    /// Reads every pending inotify event and applies it: changes are merged into the
    /// names (one merge per directory), a removed or unmounted directory is forgotten,
    /// and a queue overflow (events lost) forgets everything.
    fn drain(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let mut events = Vec::new();
        let mut lost = false;
        loop {
            match inotify.read_events() {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => events.extend(batch),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost
            || events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW))
        {
            while !self.slots.is_empty() {
                self.forget(0);
            }
            return;
        }
        let mut changed: Vec<(WatchDescriptor, Vec<Change>)> = Vec::new();
        for ev in events {
            let Some(i) = self.slots.iter().position(|s| s.wd == ev.wd) else {
                continue;
            };
            if ev.mask.intersects(
                AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_UNMOUNT
                    | AddWatchFlags::IN_DELETE_SELF,
            ) {
                self.forget(i);
                continue;
            }
            let Some(name) = ev.name else { continue };
            let name = name.into_vec();
            let change = if ev
                .mask
                .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                Change::Added(name)
            } else {
                Change::Removed(name)
            };
            match &mut self.slots[i].state {
                State::Reading(log) => log.push(change),
                State::Ready(_) => match changed.iter_mut().find(|(wd, _)| *wd == ev.wd) {
                    Some((_, log)) => log.push(change),
                    None => changed.push((ev.wd, vec![change])),
                },
            }
        }
        for (wd, log) in changed {
            if let Some(slot) = self.slots.iter_mut().find(|s| s.wd == wd) {
                if let State::Ready(names) = &slot.state {
                    let names = Arc::new(names.apply(&log));
                    slot.bytes = names.bytes();
                    slot.state = State::Ready(names);
                }
            }
        }
    }

    /// Forgets directories idle for `idle`, then the least recently used ready ones
    /// until `room` more bytes and one more directory fit.
    fn make_room(&mut self, idle: Duration, room: usize) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.slots.len() {
            if now.duration_since(self.slots[i].used) >= idle {
                self.forget(i);
            } else {
                i += 1;
            }
        }
        loop {
            let ready = self
                .slots
                .iter()
                .filter(|s| matches!(s.state, State::Ready(_)));
            let (count, bytes) = ready.fold((0, 0), |(c, b), s| (c + 1, b + s.bytes));
            if room == 0 || (count < CACHE_DIRS && bytes + room <= CACHE_BYTES) {
                return;
            }
            let lru = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.state, State::Ready(_)))
                .min_by_key(|(_, s)| s.used)
                .map(|(i, _)| i);
            match lru {
                Some(i) => self.forget(i),
                None => return,
            }
        }
    }
}

/// The sorted names of recently listed large directories, each kept exact by an inotify
/// watch (see the module comment). Shared by every home of the daemon; bounded in
/// directories and bytes.
#[derive(Debug, Default)]
pub struct ListCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
}

impl ListCache {
    pub fn new() -> ListCache {
        ListCache::default()
    }

    /// How many listings were answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(AtomicOrdering::Relaxed)
    }

    /// How many directories are cached now.
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.drain();
        inner
            .slots
            .iter()
            .filter(|s| matches!(s.state, State::Ready(_)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent slots: keep using them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the directories not asked for during the last minute (the daemon calls
    /// this every minute, so an idle cache gives its memory and watches back).
    pub fn sweep(&self) {
        self.sweep_idle(CACHE_IDLE);
    }

    fn sweep_idle(&self, idle: Duration) {
        let mut inner = self.lock();
        inner.drain();
        inner.make_room(idle, 0);
    }

    /// The names of the directory `(dev, ino)`, up to date, if cached.
    fn get(&self, dev: u64, ino: u64) -> Option<Arc<Names>> {
        let mut inner = self.lock();
        inner.drain();
        let slot = inner
            .slots
            .iter_mut()
            .find(|s| (s.dev, s.ino) == (dev, ino))?;
        let State::Ready(names) = &slot.state else {
            return None;
        };
        slot.used = Instant::now();
        self.hits.fetch_add(1, AtomicOrdering::Relaxed);
        Some(names.clone())
    }

    /// Starts watching the directory `dfd` (`(dev, ino)`) before its names are read;
    /// `None` when it cannot be cached now (no inotify, or another request is reading
    /// or has cached it). Must run with the user's ids: inotify checks the user's read
    /// permission on the directory.
    fn watch(&self, dfd: RawFd, dev: u64, ino: u64) -> Option<WatchDescriptor> {
        let mut inner = self.lock();
        if inner.inotify.is_none() && !inner.broken {
            match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(i) => inner.inotify = Some(i),
                Err(_) => inner.broken = true,
            }
        }
        inner.drain();
        if inner.slots.iter().any(|s| (s.dev, s.ino) == (dev, ino)) {
            return None;
        }
        let path = format!("/proc/thread-self/fd/{dfd}");
        let wd = inner
            .inotify
            .as_ref()?
            .add_watch(path.as_str(), WATCH_FLAGS)
            .ok()?;
        if inner.slots.iter().any(|s| s.wd == wd) {
            return None;
        }
        inner.slots.push(Slot {
            dev,
            ino,
            wd,
            state: State::Reading(Vec::new()),
            bytes: 0,
            used: Instant::now(),
        });
        Some(wd)
    }

    /// Stops a watch whose directory is not cached after all.
    fn unwatch(&self, wd: WatchDescriptor) {
        let mut inner = self.lock();
        if let Some(i) = inner.slots.iter().position(|s| s.wd == wd) {
            inner.forget(i);
        }
    }

    /// Caches the sorted `names` read under the watch `wd`, with every change seen
    /// since the watch began applied; returns them (cached or not).
    fn put(&self, wd: WatchDescriptor, names: Names) -> Arc<Names> {
        let mut inner = self.lock();
        inner.drain();
        let Some(i) = inner.slots.iter().position(|s| s.wd == wd) else {
            // The directory went away meanwhile: these names are still this request's.
            return Arc::new(names);
        };
        let State::Reading(log) = &inner.slots[i].state else {
            return Arc::new(names);
        };
        let names = if log.is_empty() {
            names
        } else {
            names.apply(log)
        };
        let bytes = names.bytes();
        if bytes > CACHE_BYTES {
            inner.forget(i);
            return Arc::new(names);
        }
        // Room for one more directory of this size (never by dropping this one: it is
        // not ready yet), then it is ready.
        inner.make_room(CACHE_IDLE, bytes);
        let Some(slot) = inner.slots.iter_mut().find(|s| s.wd == wd) else {
            return Arc::new(names);
        };
        let names = Arc::new(names);
        slot.state = State::Ready(names.clone());
        slot.bytes = bytes;
        slot.used = Instant::now();
        names
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
    /// The names of the directory `dfd`: from the cache when it holds the directory, else
    /// read, and cached when the directory is large.
    fn names_of(&self, dfd: RawFd, path: &HomePath) -> Result<Listed> {
        let Some(cache) = &self.listings else {
            return Ok(Listed::Unsorted(Names::read(dfd, path)?));
        };
        let st = nix::sys::stat::fstat(dfd).map_err(|e| FilesError::io("list", path, e))?;
        if let Some(names) = cache.get(st.st_dev, st.st_ino) {
            return Ok(Listed::Sorted(names));
        }
        // Only directories that look large are watched: a directory of 1000 names is
        // well over 8 KiB on ext4, xfs, btrfs and tmpfs.
        let wd = (st.st_size >= CACHE_HINT_BYTES)
            .then(|| cache.watch(dfd, st.st_dev, st.st_ino))
            .flatten();
        let names = Names::read(dfd, path).inspect_err(|_| {
            if let Some(wd) = wd {
                cache.unwatch(wd);
            }
        })?;
        match wd {
            Some(wd) if names.len() >= CACHE_MIN_NAMES => {
                Ok(Listed::Sorted(cache.put(wd, names.sorted())))
            }
            Some(wd) => {
                cache.unwatch(wd);
                Ok(Listed::Unsorted(names))
            }
            None => Ok(Listed::Unsorted(names)),
        }
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
        let cache = Arc::new(ListCache::new());
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
    fn changes_between_pages_are_merged_into_the_cached_names() {
        let t = big_dir(1500);
        let cache = Arc::new(ListCache::new());
        let home = Home::open(t.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        let plain = Home::open(t.path(), ROOT).unwrap();
        let spec = ListSpec {
            limit: 100,
            ..ListSpec::default()
        };
        let first = home.list(&p("big"), &spec).unwrap();
        assert_eq!(cache.len(), 1);
        let big = t.path().join("big");
        // Created, removed, renamed within, moved out and in, replaced by a rename, a
        // name removed and made again, a non-UTF-8 name: all after the cursor.
        std::fs::File::create(big.join("f00200x")).unwrap();
        std::fs::remove_file(big.join("f00201")).unwrap();
        std::fs::rename(big.join("f00202"), big.join("f00202-renamed")).unwrap();
        std::fs::rename(big.join("f00209"), t.path().join("out")).unwrap();
        std::fs::rename(t.path().join("out"), big.join("f00209-back")).unwrap();
        std::fs::rename(big.join("f00204"), big.join("f00205")).unwrap();
        std::fs::remove_file(big.join("f00206")).unwrap();
        std::fs::File::create(big.join("f00206")).unwrap();
        std::fs::File::create(big.join(OsStr::from_bytes(b"f00208\xfe"))).unwrap();
        let hits = cache.hits();
        let mut next = ListSpec {
            after: first.next.clone(),
            ..spec.clone()
        };
        // The rest of the walk, cached and not, page by page.
        loop {
            let cached = home.list(&p("big"), &next).unwrap();
            let read = plain.list(&p("big"), &next).unwrap();
            assert_eq!(cached.entries, read.entries);
            assert_eq!(cached.next, read.next);
            match cached.next {
                Some(c) => next.after = Some(c),
                None => break,
            }
        }
        assert!(
            cache.hits() > hits,
            "the changes were merged, not read again"
        );
        let all = home
            .list(
                &p("big"),
                &ListSpec {
                    limit: 5000,
                    hidden: true,
                    ..ListSpec::default()
                },
            )
            .unwrap();
        let names: Vec<&str> = all.entries.iter().map(|e| e.name.as_str()).collect();
        for n in [
            "f00200x",
            "f00202-renamed",
            "f00209-back",
            "f00205",
            "f00206",
            "f00208\u{fffd}",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        for n in ["f00201", "f00202", "f00209", "f00204"] {
            assert!(!names.contains(&n), "{n} still listed");
        }
        assert_eq!(names.iter().filter(|n| **n == "f00205").count(), 1);
        // The directory removed: forgotten, and its names never answer again.
        drop(home);
        std::fs::remove_dir_all(&big).unwrap();
        assert!(cache.is_empty());
        assert!(cache.lock().slots.is_empty());
    }

    /// The watch starts before getdents: what changes while the names are read, or
    /// before they are cached, is in them once cached, whether the read saw it or not.
    #[test]
    fn changes_during_the_read_are_in_the_cached_names() {
        let t = big_dir(1200);
        let big = t.path().join("big");
        let dir = std::fs::File::open(&big).unwrap();
        let st = nix::sys::stat::fstat(dir.as_raw_fd()).unwrap();
        let cache = ListCache::new();
        let wd = cache.watch(dir.as_raw_fd(), st.st_dev, st.st_ino).unwrap();
        std::fs::File::create(big.join("before-the-read")).unwrap();
        let names = Names::read(dir.as_raw_fd(), &p("big")).unwrap();
        std::fs::File::create(big.join("after-the-read")).unwrap();
        std::fs::remove_file(big.join("f00001")).unwrap();
        let names = cache.put(wd, names.sorted());
        let shown: Vec<&str> = (0..names.len()).map(|i| names.shown(i)).collect();
        let count = |n: &str| shown.iter().filter(|s| **s == n).count();
        assert_eq!(count("before-the-read"), 1);
        assert_eq!(count("after-the-read"), 1);
        assert_eq!(count("f00001"), 0);
        assert_eq!(names.len(), 1200 + 2 + 2 - 1);
        let mut sorted = shown.clone();
        sorted.sort();
        assert_eq!(shown, sorted);
        assert!(cache.get(st.st_dev, st.st_ino).is_some());
    }

    #[test]
    fn small_directories_are_not_cached_and_leave_no_watch() {
        let t = big_dir(500);
        let cache = Arc::new(ListCache::new());
        let home = Home::open(t.path(), ROOT)
            .unwrap()
            .with_list_cache(cache.clone());
        home.list(&p("big"), &ListSpec::default()).unwrap();
        assert!(cache.is_empty());
        assert!(cache.lock().slots.is_empty());
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
        let cache = Arc::new(ListCache::new());
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
    fn the_cache_is_bounded_in_directories_and_bytes() {
        let t = tempfile::tempdir().unwrap();
        let cache = ListCache::new();
        let names = |n: usize| {
            let mut v = Names::default();
            for i in 0..n {
                v.push(format!("n{i}").as_bytes());
            }
            v.sorted()
        };
        // Watched directories (real ones: inotify needs them), cached one after another.
        let dirs: Vec<std::fs::File> = (0..CACHE_DIRS + 4)
            .map(|i| {
                let d = t.path().join(format!("d{i}"));
                std::fs::create_dir(&d).unwrap();
                std::fs::File::open(&d).unwrap()
            })
            .collect();
        let key = |f: &std::fs::File| {
            let st = nix::sys::stat::fstat(f.as_raw_fd()).unwrap();
            (st.st_dev, st.st_ino)
        };
        for f in &dirs {
            let (dev, ino) = key(f);
            let wd = cache.watch(f.as_raw_fd(), dev, ino).unwrap();
            assert!(cache.watch(f.as_raw_fd(), dev, ino).is_none(), "one reader");
            cache.put(wd, names(10));
        }
        assert_eq!(cache.len(), CACHE_DIRS);
        let (dev, ino) = key(&dirs[0]);
        assert!(cache.get(dev, ino).is_none(), "the oldest went first");
        let (dev, ino) = key(dirs.last().unwrap());
        assert!(cache.get(dev, ino).is_some());
        // Recently used directories survive a sweep; idle ones go, watches too.
        cache.sweep();
        assert_eq!(cache.len(), CACHE_DIRS);
        cache.sweep_idle(Duration::ZERO);
        assert!(cache.is_empty());
        assert!(cache.lock().slots.is_empty());
        // A directory whose names alone exceed the budget is not kept.
        let mut v = Names::default();
        let long = "x".repeat(255);
        for _ in 0..(CACHE_BYTES / 255 + 1) {
            v.push(long.as_bytes());
        }
        let (dev, ino) = key(&dirs[0]);
        let wd = cache.watch(dirs[0].as_raw_fd(), dev, ino).unwrap();
        cache.put(wd, v);
        assert!(cache.is_empty());
        assert!(cache.lock().slots.is_empty());
    }

    #[test]
    fn changes_merge_into_sorted_names_and_the_last_one_wins() {
        let mut v = Names::default();
        for n in [&b"a"[..], b"c", b"e", b"g\xff"] {
            v.push(n);
        }
        let v = v.sorted();
        let add = |n: &[u8]| Change::Added(n.to_vec());
        let rm = |n: &[u8]| Change::Removed(n.to_vec());
        let out = v.apply(&[
            add(b"b"),
            rm(b"c"),
            add(b"d"),
            rm(b"d"),
            rm(b"e"),
            add(b"e"),
            add(b"a"),
            add(b"zz\xfe"),
            rm(b"never-there"),
        ]);
        let shown: Vec<&str> = (0..out.len()).map(|i| out.shown(i)).collect();
        assert_eq!(shown, ["a", "b", "e", "g\u{fffd}", "zz\u{fffd}"]);
        assert_eq!(out.raw(3).as_bytes(), b"g\xff");
        assert_eq!(out.raw(4).as_bytes(), b"zz\xfe");
        assert_eq!(out.raw(1).as_bytes(), b"b");
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
