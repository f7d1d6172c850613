//! File operations inside a user's home, for the file API.
//!
//! Order of every operation (SECURITY.md "Files API"):
//! 1. `service` hands a normalised [`HomePath`] (no `..`, no NUL) and the user's ids;
//! 2. the work runs on a blocking thread whose filesystem ids are switched to the user's
//!    (`setfsuid`/`setfsgid` and a per-thread `setgroups` with the raw syscalls: on Linux
//!    credentials are per thread, while glibc's wrappers of `setgroups` would change every
//!    thread of the daemon). Switching fsuid away from 0 also drops `CAP_DAC_OVERRIDE`,
//!    `CAP_FOWNER` and the other file capabilities from the effective set
//!    (capabilities(7)), so the kernel checks permissions exactly as for the user. The
//!    ids are restored when the operation ends, also when it panics ([`FsCreds`]'s drop);
//! 3. the path is resolved once, by the kernel: `openat2(home, path, RESOLVE_IN_ROOT |
//!    RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to an `O_PATH` descriptor of the
//!    home. `..` and absolute symlinks are clamped to the home, `/proc/self/...` magic
//!    links are refused, other mounts are not entered;
//! 4. the operation works on the descriptor (or on a name inside a resolved parent
//!    directory descriptor: `unlinkat`, `renameat2`, `mkdirat`, `linkat`). A path string
//!    is never checked and then reopened (docker cp, CVE-2018-15664). The one reopen,
//!    of an `O_PATH` descriptor for reading, goes through `/proc/thread-self/fd/N`, i.e.
//!    through the descriptor, after `fstat` showed a regular file; FIFOs, sockets and
//!    devices are therefore never opened at all.
//!
//! Uploads are written to an `O_TMPFILE` in the target directory: a failed or abandoned
//! upload, even a daemon killed mid-way, leaves nothing behind. On success the file is
//! linked into place (`linkat`, which fails if the name exists: the overwrite guard) or,
//! when overwriting, linked under a temporary name and renamed over the target. Copies of
//! files take the same way; copies of directories are built under a hidden name and
//! renamed into place (`tree`).

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use policy::files::{Change, Cursor, HomePath};
use tokio::sync::mpsc;

/// What a directory watch listens for.
const WATCH_FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// What one read of a directory watch yielded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WatchEvents {
    pub changes: Vec<Change>,
    /// The kernel's queue overflowed: events were lost.
    pub overflow: bool,
    /// The watched directory itself was removed or moved away.
    pub gone: bool,
}

/// Turns inotify events into changes; a `MOVED_FROM` and `MOVED_TO` with the same cookie
/// in one read are a rename, an unpaired one is a removal or a creation.
pub fn changes_of(events: Vec<InotifyEvent>) -> WatchEvents {
    let mut out = WatchEvents::default();
    let mut pending: Vec<(u32, String)> = Vec::new();
    for ev in events {
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.overflow = true;
            continue;
        }
        if m.intersects(
            AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED,
        ) {
            out.gone = true;
            continue;
        }
        let Some(name) = ev
            .name
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        else {
            continue;
        };
        if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            pending.push((ev.cookie, name));
        } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
            match pending.iter().position(|(c, _)| *c == ev.cookie) {
                Some(i) => {
                    let (_, from) = pending.remove(i);
                    out.changes.push(Change::Renamed { from, to: name });
                }
                None => out.changes.push(Change::Created(name)),
            }
        } else if m.contains(AddWatchFlags::IN_CREATE) {
            out.changes.push(Change::Created(name));
        } else if m.contains(AddWatchFlags::IN_DELETE) {
            out.changes.push(Change::Removed(name));
        } else {
            out.changes.push(Change::Modified(name));
        }
    }
    // Moved out of the directory (or the pair's half arrives in a later read).
    out.changes
        .extend(pending.into_iter().map(|(_, n)| Change::Removed(n)));
    out
}

/// An inotify descriptor for tokio's reactor.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A directory watch that can be awaited.
#[derive(Debug)]
pub struct AsyncWatch(tokio::io::unix::AsyncFd<InotifyFd>);

impl AsyncWatch {
    /// Registers the (non-blocking) inotify descriptor with tokio's reactor.
    pub fn new(inotify: Inotify) -> std::io::Result<AsyncWatch> {
        // SAFETY: `InotifyFd` owns the descriptor and always returns the same one; it is
        // closed only when the AsyncFd (and with it the Inotify) is dropped, after
        // deregistration.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(inotify)) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncWatch(fd))
    }

    /// The next events (waits until there are some).
    pub async fn next(&self) -> std::io::Result<WatchEvents> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.get_inner().0.read_events() {
                Ok(events) => return Ok(changes_of(events)),
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Deepest directory tree a recursive delete descends (bounded stack on a blocking thread).
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A system call on a path inside the home failed; `errno` tells the service what
    /// the client did wrong (or that the disk is full).
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        errno: Errno,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    /// A directory was asked to be copied without `recursive`.
    #[error("{path} is a directory")]
    IsDirectory { path: String },
    /// A directory was asked to be copied into itself or below itself.
    #[error("{to} is inside {from}")]
    IntoItself { from: String, to: String },
    #[error("{path} is deeper than {MAX_DEPTH} directories")]
    TooDeep { path: String },
    #[error("upload or copy is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upload ended before its body was complete")]
    Aborted,
    #[error("cannot prepare home {path}")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot switch to the user's filesystem ids")]
    Creds(#[source] Errno),
    #[error("file operation thread failed")]
    Thread,
}

impl FilesError {
    fn io(op: &'static str, path: &HomePath, errno: Errno) -> FilesError {
        FilesError::Io {
            op,
            path: path.to_string(),
            errno,
        }
    }

    /// The errno of a failed call, if that is what failed.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            FilesError::Io { errno, .. } | FilesError::Creds(errno) => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T, E = FilesError> = std::result::Result<T, E>;

/// The user whose rights file operations run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsId {
    pub uid: u32,
    pub gid: u32,
}

/// The calling thread's filesystem ids switched to a user's until dropped.
#[derive(Debug)]
struct FsCreds {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

/// `setgroups(2)` for the calling thread only (the raw system call; glibc's wrapper
/// applies it to every thread of the process).
fn thread_setgroups(groups: &[libc::gid_t]) -> Result<(), Errno> {
    // SAFETY: the pointer and length describe a live slice of gid_t for the duration of
    // the call; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    Errno::result(r).map(drop)
}

impl FsCreds {
    fn enter(id: FsId) -> Result<FsCreds, Errno> {
        let groups: Vec<libc::gid_t> = nix::unistd::getgroups()?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        thread_setgroups(&[id.gid])?;
        // setfsuid/setfsgid return the previous value and never fail visibly; asking
        // again (with an invalid id, which changes nothing) tells whether it took.
        // SAFETY: plain system calls without pointers.
        let gid = unsafe { libc::setfsgid(id.gid) } as u32;
        // SAFETY: as above.
        let uid = unsafe { libc::setfsuid(id.uid) } as u32;
        let creds = FsCreds { uid, gid, groups };
        // SAFETY: as above; -1 is never a valid id, so the call only reports.
        let (now_uid, now_gid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        if now_uid as u32 != id.uid || now_gid as u32 != id.gid {
            return Err(Errno::EPERM); // creds drops and restores what did change
        }
        Ok(creds)
    }
}

impl Drop for FsCreds {
    fn drop(&mut self) {
        // SAFETY: plain system calls without pointers.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
        if let Err(err) = thread_setgroups(&self.groups) {
            // A thread left with fewer groups can only do less; say so loudly.
            tracing::error!(?err, "cannot restore supplementary groups of a file thread");
        }
    }
}

/// Runs `f` on a blocking thread with the filesystem ids of `id`.
pub async fn run_as<T, F>(id: FsId, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let _creds = FsCreds::enter(id).map_err(FilesError::Creds)?;
        f()
    })
    .await
    .map_err(|_| FilesError::Thread)?
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The `/proc/thread-self/fd/N` path of a descriptor: reopening or linking through it
/// acts on the descriptor's file, not on any path.
fn fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/thread-self/fd/{}", fd.as_raw_fd())).expect("no NUL in digits")
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFSOCK => Kind::Socket,
            SFlag::S_IFCHR => Kind::CharDevice,
            SFlag::S_IFBLK => Kind::BlockDevice,
            _ => Kind::File,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "char",
            Kind::BlockDevice => "block",
        }
    }
}

/// One directory entry or stat result (the link itself for a symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Final component (lossy UTF-8; empty for the home itself).
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (`07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    /// Where a symlink points (as stored; it is resolved inside the home).
    pub target: Option<String>,
}

impl Entry {
    fn from_stat(name: String, st: &FileStat) -> Entry {
        Entry {
            name,
            kind: Kind::of(st.st_mode),
            size: st.st_size.max(0) as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
            target: None,
        }
    }
}

/// A page of a directory listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Present when more entries follow: the cursor of the last entry of this page.
    pub next: Option<Cursor>,
}

/// How an upload or copy lands.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Replace an existing file (never a directory); otherwise an existing name fails
    /// with `EEXIST`.
    pub overwrite: bool,
    /// Permission bits of the new file (setuid/setgid already stripped by policy).
    pub mode: u32,
    /// Largest number of bytes accepted.
    pub limit: u64,
}

/// How a copy lands.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// Replace an existing file (never a directory). A directory is only ever copied to
    /// a name that does not exist yet.
    pub overwrite: bool,
    /// Copy a directory with everything in it; without it a directory is refused.
    pub recursive: bool,
    /// Largest number of bytes accepted: of the file, or the total of a tree's files.
    pub limit: u64,
}

/// Sets the modification time of `fd` to that of `st` (the access time is left alone).
fn set_mtime(fd: std::os::fd::BorrowedFd<'_>, st: &FileStat) -> Result<(), Errno> {
    let mtime = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    nix::sys::stat::futimens(
        fd.as_raw_fd(),
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &mtime,
    )
}

/// One message of a streamed upload.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The body is complete; link the file into place.
    End,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// This daemon run's id: random, drawn once. It is part of every staging name, so names
/// from an earlier run (a daemon killed mid-upload or mid-copy, maybe with this very pid)
/// never collide with this run's and can be told apart and removed.
pub fn run_id() -> u64 {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RUN.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without randomness the pid and the clock still tell runs apart.
        getrandom::fill(&mut b).unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
        });
        u64::from_le_bytes(b)
    })
}

/// A hidden name for a file (`upload`) or a directory tree (`copy`) on its way into place:
/// `.orchestratord-<what>.<run id, 16 hex digits>.<counter>`.
fn temp_name(what: &str) -> String {
    format!(
        ".orchestratord-{what}.{:016x}.{}",
        run_id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `name` is a staging name of another daemon run than this one.
fn stale_staging(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(".orchestratord-upload.")
        .or_else(|| name.strip_prefix(".orchestratord-copy."))
    else {
        return false;
    };
    let Some((run, seq)) = rest.split_once('.') else {
        return false;
    };
    run.len() == 16
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
        && u64::from_str_radix(run, 16).is_ok_and(|r| r != run_id())
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `renameat2(2)` through the raw system call: nix offers it for glibc only, and the
/// static (musl) build of the helper compiles this module too.
fn renameat2(
    from_dir: &OwnedFd,
    from: &str,
    to_dir: &OwnedFd,
    to: &str,
    flags: u32,
) -> Result<(), Errno> {
    let from = std::ffi::CString::new(from).map_err(|_| Errno::EINVAL)?;
    let to = std::ffi::CString::new(to).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both descriptors are owned and open for the call; both names are
    // NUL-terminated strings that outlive it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// An upload or copy on its way into place (see `Home::stage`).
enum Staged {
    /// `O_TMPFILE`: nothing to clean up, the file vanishes with its descriptor.
    Anonymous(File),
    Named(NamedTemp),
}

/// A hidden file `name` in `dir`, removed on drop unless it was put in place.
struct NamedTemp {
    file: File,
    dir: OwnedFd,
    name: String,
    placed: bool,
}

impl Staged {
    fn file(&mut self) -> &mut File {
        match self {
            Staged::Anonymous(f) | Staged::Named(NamedTemp { file: f, .. }) => f,
        }
    }
}

impl NamedTemp {
    /// The mode, then a rename onto `to` (replacing it only with `overwrite`).
    fn rename_into(mut self, to: &str, path: &HomePath, opts: WriteOptions) -> Result<Entry> {
        nix::sys::stat::fchmod(
            self.file.as_raw_fd(),
            Mode::from_bits_truncate(opts.mode & 0o1777),
        )
        .map_err(|e| FilesError::io("chmod", path, e))?;
        let flags = if opts.overwrite {
            0
        } else {
            libc::RENAME_NOREPLACE
        };
        renameat2(&self.dir, &self.name, &self.dir, to, flags)
            .map_err(|e| FilesError::io("rename", path, e))?;
        self.placed = true;
        let st = nix::sys::stat::fstat(self.file.as_raw_fd())
            .map_err(|e| FilesError::io("stat", path, e))?;
        Ok(Entry::from_stat(to.to_string(), &st))
    }
}

impl Drop for NamedTemp {
    fn drop(&mut self) {
        if !self.placed {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.as_raw_fd()),
                self.name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// A user's home: an `O_PATH` descriptor of its root, and the user's ids.
#[derive(Debug, Clone)]
pub struct Home {
    root: Arc<OwnedFd>,
    id: FsId,
    /// Try `O_TMPFILE` for uploads first (local filesystems have it; cifs does not, and
    /// the named fallback is used there).
    tmpfile: bool,
    /// Where large directories' names are cached between pages (local filesystems only).
    listings: Option<Arc<ListCache>>,
}

impl Home {
    /// Opens a local home `<homes>/<login>`, creating it (owned by the user, 0700) under a
    /// root-owned 0711 `homes` directory if missing, exactly as a box start does. Runs as
    /// root: the state directory belongs to the daemon.
    pub fn open_local(path: &Path, id: FsId) -> Result<Home> {
        let err = |source| FilesError::Home {
            path: path.into(),
            source,
        };
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(parent)
                    .map_err(err)?;
            }
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => std::os::unix::fs::chown(path, Some(id.uid), Some(id.gid)).map_err(err)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        Self::open(path, id)
    }

    /// Opens an existing home (a local directory or the host side of a mounted share).
    pub fn open(path: &Path, id: FsId) -> Result<Home> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FilesError::Home {
            path: path.into(),
            source: e.into(),
        })?;
        Ok(Home {
            root: Arc::new(own(fd)),
            id,
            tmpfile: true,
            listings: None,
        })
    }

    /// The same home, staging uploads in named temporary files only (what a filesystem
    /// without `O_TMPFILE` gets; lets that path be tested on a local directory).
    pub fn without_tmpfile(mut self) -> Home {
        self.tmpfile = false;
        self
    }

    /// The same home, listing large directories through `cache` (see [`ListCache`]:
    /// for local filesystems, whose directory `ctime` is exact).
    pub fn with_list_cache(mut self, cache: Arc<ListCache>) -> Home {
        self.listings = Some(cache);
        self
    }

    pub fn id(&self) -> FsId {
        self.id
    }

    /// Resolves `path` inside the home. Must run on a thread with the user's ids.
    fn resolve(&self, path: &HomePath, flags: OFlag, mode: u32) -> Result<OwnedFd> {
        // openat2 refuses O_PATH with any flag but O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW.
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new()
            .flags(flags | extra)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let fd = openat2(self.root.as_raw_fd(), path.relative().as_str(), how)
            .map_err(|e| FilesError::io("open", path, e))?;
        Ok(own(fd))
    }

    /// The parent directory of `path` (resolved) and its final name.
    fn parent<'p>(&self, path: &'p HomePath) -> Result<(OwnedFd, &'p str)> {
        let (parent, name) = path
            .split_last()
            .map_err(|_| FilesError::io("resolve", path, Errno::EBUSY))?;
        let dir = self.resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok((dir, name))
    }

    fn lstat_in(dir: &OwnedFd, name: &str, path: &HomePath) -> Result<FileStat> {
        nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FilesError::io("stat", path, e))
    }

    /// `lstat` of `name` in `dir`, and where it points if it is a symlink.
    fn lstat_target(dir: RawFd, name: &OsStr) -> Result<(FileStat, Option<String>), Errno> {
        let st =
            nix::sys::stat::fstatat(Some(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let target = if Kind::of(st.st_mode) == Kind::Symlink {
            nix::fcntl::readlinkat(Some(dir), name)
                .ok()
                .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
        } else {
            None
        };
        Ok((st, target))
    }

    /// The entry `name` of `dir`, shown as `shown` (its lossy UTF-8 form).
    fn entry_in(dir: RawFd, name: &OsStr, shown: String) -> Result<Entry, Errno> {
        let (st, target) = Self::lstat_target(dir, name)?;
        let mut e = Entry::from_stat(shown, &st);
        e.target = target;
        Ok(e)
    }

    /// Stat of `path` itself (a symlink is described, not followed).
    pub fn stat(&self, path: &HomePath) -> Result<Entry> {
        if path.is_root() {
            let fd = self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
            let st = nix::sys::stat::fstat(fd.as_raw_fd())
                .map_err(|e| FilesError::io("stat", path, e))?;
            return Ok(Entry::from_stat(String::new(), &st));
        }
        let (dir, name) = self.parent(path)?;
        Self::entry_in(dir.as_raw_fd(), OsStr::new(name), name.to_string())
            .map_err(|e| FilesError::io("stat", path, e))
    }

    /// Opens a regular file for reading (a final symlink is followed inside the home).
    /// Anything else is refused before it is opened, so a FIFO cannot block and a device
    /// is never touched.
    pub fn open_read(&self, path: &HomePath) -> Result<(File, Entry)> {
        let p = self.resolve(path, OFlag::O_PATH, 0)?;
        let (file, st) = Self::read_regular(&p, path)?;
        let name = path.components().last().cloned().unwrap_or_default();
        Ok((file, Entry::from_stat(name, &st)))
    }

    /// Opens the file of the `O_PATH` descriptor `p` for reading, through the descriptor,
    /// after `fstat` showed a regular file; anything else is refused without being opened.
    fn read_regular(p: &OwnedFd, path: &HomePath) -> Result<(File, FileStat)> {
        let st =
            nix::sys::stat::fstat(p.as_raw_fd()).map_err(|e| FilesError::io("stat", path, e))?;
        if Kind::of(st.st_mode) != Kind::File {
            return Err(FilesError::NotRegular {
                path: path.to_string(),
            });
        }
        let fd = nix::fcntl::open(
            fd_path(p).as_c_str(),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FilesError::io("open", path, e))?;
        let fd = own(fd);
        let st2 =
            nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| FilesError::io("stat", path, e))?;
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
            return Err(FilesError::io("open", path, Errno::ESTALE));
        }
        Ok((File::from(fd), st2))
    }

    /// Space left for the user on the home's filesystem, in bytes.
    pub fn available(&self) -> Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&*self.root)
            .map_err(|e| FilesError::io("statvfs", &HomePath::default(), e))?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Receives an upload into an anonymous file in `path`'s directory and links it into
    /// place when [`Chunk::End`] arrives. If the channel closes first, or the limit or
    /// the disk runs out, the anonymous file is simply closed: nothing remains.
    pub fn upload(
        &self,
        path: &HomePath,
        opts: WriteOptions,
        mut rx: mpsc::Receiver<Chunk>,
    ) -> Result<Entry> {
        let (dir, name) = self.parent(path)?;
        self.check_target(&dir, name, path, opts.overwrite)?;
        let mut staged = self.stage(&dir, path)?;
        let file = staged.file();
        let mut written: u64 = 0;
        loop {
            match rx.blocking_recv() {
                Some(Chunk::Data(b)) => {
                    written += b.len() as u64;
                    if written > opts.limit {
                        return Err(FilesError::TooLarge { limit: opts.limit });
                    }
                    file.write_all(&b).map_err(|e| {
                        FilesError::io(
                            "write",
                            path,
                            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        )
                    })?;
                }
                Some(Chunk::End) => break,
                None => return Err(FilesError::Aborted),
            }
        }
        self.put_in_place(staged, &dir, name, path, opts)
    }

    /// Copies `from` to `to` (a final symlink of `from` is followed inside the home, as
    /// for a download). A regular file lands like an upload: through an anonymous file,
    /// as a new file or, with `overwrite`, replacing one. A directory needs `recursive`
    /// and is copied as a tree (see [`Home::copy_tree`]). Modes (without setuid/setgid)
    /// and modification times are kept; anything else is refused without being opened.
    pub fn copy(&self, from: &HomePath, to: &HomePath, opts: CopyOptions) -> Result<Entry> {
        let src = self.resolve(from, OFlag::O_PATH, 0)?;
        let st =
            nix::sys::stat::fstat(src.as_raw_fd()).map_err(|e| FilesError::io("stat", from, e))?;
        match Kind::of(st.st_mode) {
            Kind::Dir if opts.recursive => self.copy_tree(src, &st, from, to, opts.limit),
            Kind::Dir => Err(FilesError::IsDirectory {
                path: from.to_string(),
            }),
            _ => {
                let (src, st) = Self::read_regular(&src, from)?;
                self.copy_file(src, &st, to, opts)
            }
        }
    }

    fn copy_file(
        &self,
        src: File,
        st: &FileStat,
        to: &HomePath,
        opts: CopyOptions,
    ) -> Result<Entry> {
        let limit = opts.limit;
        if st.st_size.max(0) as u64 > limit {
            return Err(FilesError::TooLarge { limit });
        }
        let (dir, name) = self.parent(to)?;
        self.check_target(&dir, name, to, opts.overwrite)?;
        let mut staged = self.stage(&dir, to)?;
        // At most one byte past the limit: a file growing while it is copied is caught.
        let copied = std::io::copy(&mut src.take(limit.saturating_add(1)), staged.file())
            .map_err(|e| FilesError::io("copy", to, errno_of(&e)))?;
        if copied > limit {
            return Err(FilesError::TooLarge { limit });
        }
        set_mtime(staged.file().as_fd(), st).map_err(|e| FilesError::io("copy", to, e))?;
        let wopts = WriteOptions {
            overwrite: opts.overwrite,
            mode: st.st_mode & 0o7777,
            limit,
        };
        self.put_in_place(staged, &dir, name, to, wopts)
    }

    /// Fails early (before any byte is written) when the target cannot be written.
    fn check_target(
        &self,
        dir: &OwnedFd,
        name: &str,
        path: &HomePath,
        overwrite: bool,
    ) -> Result<()> {
        match Self::lstat_in(dir, name, path) {
            Ok(st) if Kind::of(st.st_mode) == Kind::Dir => {
                Err(FilesError::io("write", path, Errno::EISDIR))
            }
            Ok(_) if !overwrite => Err(FilesError::io("write", path, Errno::EEXIST)),
            Ok(_) => Ok(()),
            Err(FilesError::Io {
                errno: Errno::ENOENT,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Where an upload or copy is written before it is put in place: an anonymous file in
    /// the target directory, or, where the filesystem has no `O_TMPFILE` (cifs), a hidden
    /// named one that is removed unless it is put in place.
    fn stage(&self, dir: &OwnedFd, path: &HomePath) -> Result<Staged> {
        if self.tmpfile {
            match nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                ".",
                OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => return Ok(Staged::Anonymous(File::from(own(fd)))),
                // No O_TMPFILE on this filesystem: the named fallback.
                Err(Errno::EOPNOTSUPP) | Err(Errno::EISDIR) | Err(Errno::EINVAL) => {}
                Err(e) => return Err(FilesError::io("create", path, e)),
            }
        }
        let name = temp_name("upload");
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| FilesError::io("create", path, e))?;
        let dir = dir
            .try_clone()
            .map_err(|e| FilesError::io("create", path, errno_of(&e)))?;
        Ok(Staged::Named(NamedTemp {
            file: File::from(own(fd)),
            dir,
            name,
            placed: false,
        }))
    }

    fn put_in_place(
        &self,
        staged: Staged,
        dir: &OwnedFd,
        name: &str,
        path: &HomePath,
        opts: WriteOptions,
    ) -> Result<Entry> {
        let file = match staged {
            Staged::Anonymous(file) => OwnedFd::from(file),
            Staged::Named(named) => return named.rename_into(name, path, opts),
        };
        nix::sys::stat::fchmod(
            file.as_raw_fd(),
            Mode::from_bits_truncate(opts.mode & 0o1777),
        )
        .map_err(|e| FilesError::io("chmod", path, e))?;
        let src = fd_path(&file);
        let link = |to: &str| -> Result<(), Errno> {
            nix::unistd::linkat(
                None,
                src.as_c_str(),
                Some(dir.as_raw_fd()),
                CString::new(to).map_err(|_| Errno::EINVAL)?.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            )
        };
        if opts.overwrite {
            let tmp = temp_name("upload");
            link(&tmp).map_err(|e| FilesError::io("link", path, e))?;
            if let Err(e) = nix::fcntl::renameat(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                Some(dir.as_raw_fd()),
                name,
            ) {
                let _ = nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    tmp.as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
                return Err(FilesError::io("rename", path, e));
            }
        } else {
            link(name).map_err(|e| FilesError::io("link", path, e))?;
        }
        let st =
            nix::sys::stat::fstat(file.as_raw_fd()).map_err(|e| FilesError::io("stat", path, e))?;
        Ok(Entry::from_stat(name.to_string(), &st))
    }

    /// An inotify instance watching the directory `path` for changes of its entries. The
    /// directory is resolved like every other path and watched through its descriptor
    /// (`/proc/thread-self/fd/N`), with the user's ids: the user must be able to read it.
    pub fn watch(&self, path: &HomePath) -> Result<Inotify> {
        let dir = self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| FilesError::io("watch", path, e))?;
        ino.add_watch(fd_path(&dir).as_c_str(), WATCH_FLAGS)
            .map_err(|e| FilesError::io("watch", path, e))?;
        Ok(ino)
    }

    /// `mkdir` (with `parents`, `mkdir -p`: existing directories are fine).
    pub fn mkdir(&self, path: &HomePath, parents: bool, mode: u32) -> Result<Entry> {
        let mode = Mode::from_bits_truncate(mode & 0o1777);
        if parents {
            let mut cur = HomePath::default();
            for c in path.components() {
                cur = cur.join(c);
                let (dir, name) = self.parent(&cur)?;
                match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(FilesError::io("mkdir", &cur, e)),
                }
                // An existing non-directory (or a symlink to one) fails here.
                self.resolve(&cur, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
            }
        } else {
            let (dir, name) = self.parent(path)?;
            nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, mode)
                .map_err(|e| FilesError::io("mkdir", path, e))?;
        }
        self.stat(path)
    }

    /// `rename`/move; with `overwrite` false an existing target fails (`RENAME_NOREPLACE`).
    pub fn rename(&self, from: &HomePath, to: &HomePath, overwrite: bool) -> Result<Entry> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        let flags = if overwrite { 0 } else { libc::RENAME_NOREPLACE };
        renameat2(&fdir, fname, &tdir, tname, flags)
            .map_err(|e| FilesError::io("rename", from, e))?;
        self.stat(to)
    }

    /// `chmod` of what `path` names (a final symlink is followed inside the home).
    pub fn chmod(&self, path: &HomePath, mode: u32) -> Result<Entry> {
        let fd = self.resolve(path, OFlag::O_PATH, 0)?;
        nix::sys::stat::fchmodat(
            None,
            fd_path(&fd).as_c_str(),
            Mode::from_bits_truncate(mode & 0o1777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| FilesError::io("chmod", path, e))?;
        let st =
            nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| FilesError::io("stat", path, e))?;
        Ok(Entry::from_stat(
            path.components().last().cloned().unwrap_or_default(),
            &st,
        ))
    }

    /// Deletes `path` (a symlink itself, never its target); a non-empty directory only
    /// with `recursive`, descending by descriptors (`O_NOFOLLOW`), never by path.
    pub fn delete(&self, path: &HomePath, recursive: bool) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        let st = Self::lstat_in(&dir, name, path)?;
        if Kind::of(st.st_mode) == Kind::Dir {
            if recursive {
                Self::empty_dir(&dir, OsStr::new(name), path, 0, false)?;
            }
            nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
                .map_err(|e| FilesError::io("delete", path, e))
        } else {
            nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| FilesError::io("delete", path, e))
        }
    }

    /// Removes what earlier daemon runs left in the directory `dir` while staging an upload
    /// or a copy there (only names of that exact form and of another run: this run's
    /// are in use). Returns how many were removed; a directory that is gone has none.
    pub fn sweep_staging(&self, dir: &HomePath) -> Result<usize> {
        let fd = match self.resolve(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(FilesError::Io {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for name in Self::names_in(&fd, "sweep", dir)? {
            let Some(shown) = name.to_str().filter(|n| stale_staging(n)) else {
                continue;
            };
            let path = dir.join(shown);
            let st = match Self::lstat_in(&fd, shown, &path) {
                Ok(st) => st,
                Err(FilesError::Io {
                    errno: Errno::ENOENT,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let flags = if Kind::of(st.st_mode) == Kind::Dir {
                // A half-built tree: its directories may already have read-only modes.
                Self::empty_dir(&fd, &name, &path, 0, true)?;
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            nix::unistd::unlinkat(Some(fd.as_raw_fd()), name.as_os_str(), flags)
                .map_err(|e| FilesError::io("delete", &path, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The names in the directory `fd` (read from a duplicate, so `fd` stays usable for
    /// the `*at` calls on them), without `.` and `..`.
    fn names_in(fd: &OwnedFd, op: &'static str, path: &HomePath) -> Result<Vec<OsString>> {
        let dup = nix::unistd::dup(fd.as_raw_fd()).map_err(|e| FilesError::io(op, path, e))?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| FilesError::io(op, path, e))?;
        let mut names = Vec::new();
        for ent in d.iter() {
            let ent = ent.map_err(|e| FilesError::io(op, path, e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_owned());
            }
        }
        Ok(names)
    }

    /// Removes everything inside the directory `name` of `parent`. With `force` (for a
    /// tree the daemon itself made, see `tree`), each directory is first made `0700` so
    /// that modes it was given on the way cannot keep its owner out.
    fn empty_dir(
        parent: &OwnedFd,
        name: &OsStr,
        path: &HomePath,
        depth: usize,
        force: bool,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(FilesError::TooDeep {
                path: path.to_string(),
            });
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = if force {
            let p = nix::fcntl::openat(
                Some(parent.as_raw_fd()),
                name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(own)
            .map_err(|e| FilesError::io("delete", path, e))?;
            nix::sys::stat::fchmodat(
                None,
                fd_path(&p).as_c_str(),
                Mode::S_IRWXU,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| FilesError::io("delete", path, e))?;
            nix::fcntl::open(fd_path(&p).as_c_str(), flags, Mode::empty())
        } else {
            nix::fcntl::openat(
                Some(parent.as_raw_fd()),
                name,
                flags | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
        }
        .map_err(|e| FilesError::io("delete", path, e))?;
        let fd = own(fd);
        for n in Self::names_in(&fd, "delete", path)? {
            let st = match nix::sys::stat::fstatat(
                Some(fd.as_raw_fd()),
                n.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(FilesError::io("delete", path, e)),
            };
            let flag = if Kind::of(st.st_mode) == Kind::Dir {
                Self::empty_dir(&fd, &n, path, depth + 1, force)?;
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match nix::unistd::unlinkat(Some(fd.as_raw_fd()), n.as_os_str(), flag) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(FilesError::io("delete", path, e)),
            }
        }
        Ok(())
    }
}

mod list;
mod tree;
pub use list::{ListCache, CACHE_MIN_NAMES};

#[cfg(test)]
mod tests;
