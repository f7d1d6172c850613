//! Copying a directory tree inside a home (`Home::copy` with `recursive`).
//!
//! Order of steps, all on the file thread with the user's ids:
//! 1. the source was resolved like every path (openat2 in the home; a final symlink is
//!    followed inside it, as `cp -rH` does) and `fstat` showed a directory; the target's
//!    parent is resolved the same way and the target name must not exist: a directory
//!    copy never replaces anything, `overwrite` or not;
//! 2. the target's parent and each of its ancestors, walked up by `..` through
//!    descriptors until the home's root, are compared with the source by device and
//!    inode: a tree copied into itself or below itself is refused before anything is
//!    made (comparing path strings would miss symlinks);
//! 3. the copy is built in a hidden `.orchestratord-copy.*` directory in the target's
//!    parent, descending the source by descriptors: each entry is `lstat`ed in its
//!    directory and opened with openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!    RESOLVE_NO_XDEV`, so no symlink is ever followed and no other mount entered.
//!    Regular files are copied through their descriptor after `fstat` showed a regular
//!    file; symlinks are made again with the same target text; directories are descended
//!    to at most [`MAX_DEPTH`]; FIFOs, sockets and devices are skipped without being
//!    opened (a file manager has no use for them, and `cp -r` would block on a FIFO).
//!    Modes without setuid/setgid, and
//!    modification times, are kept (a directory gets its mode once it is filled: built
//!    `0700`, it can be filled whatever its mode will be). Hard links become separate
//!    files; everything made belongs to the user;
//! 4. the bytes copied are counted against the limit as they are copied (one file may
//!    not grow past it while it is read either);
//! 5. complete, the hidden directory is renamed onto the target name
//!    (`RENAME_NOREPLACE`). On any failure (limit, full disk or quota, a permission, a
//!    race) the hidden tree is removed: nothing stays behind. Only a daemon killed in the
//!    middle leaves the hidden directory, as it leaves a named upload on cifs; the next
//!    run removes both ([`Home::sweep_staging`], driven by the service's staging table).

use super::*;

/// Most ancestors walked up from a copy's target (a path has at most 4096 bytes, so it
/// has fewer components than that).
const MAX_ANCESTORS: usize = 4096;

/// Device and inode: which file a `stat` describes.
fn id(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Opens the entry `name` of `dir` without following any symlink (a final one fails, or
/// with `O_PATH | O_NOFOLLOW` is opened itself) and without entering another mount.
fn open_beneath(dir: &OwnedFd, name: &OsStr, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    openat2(dir.as_raw_fd(), name, how).map(own)
}

/// Gives a copied file or directory the mode (without setuid/setgid) and the
/// modification time of its source.
fn finish(fd: std::os::fd::BorrowedFd<'_>, st: &FileStat) -> Result<(), Errno> {
    nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        Mode::from_bits_truncate(st.st_mode & 0o1777),
    )?;
    set_mtime(fd, st)
}

/// A tree being built under a hidden name in `parent`: removed, with everything in it,
/// unless it was put in place.
struct StagedTree {
    parent: OwnedFd,
    name: String,
    placed: bool,
}

impl Drop for StagedTree {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        let name = OsStr::new(&self.name);
        let shown = HomePath::default().join(&self.name);
        let removed = Home::empty_dir(&self.parent, name, &shown, 0, true).and_then(|()| {
            nix::unistd::unlinkat(
                Some(self.parent.as_raw_fd()),
                name,
                UnlinkatFlags::RemoveDir,
            )
            .map_err(|e| FilesError::io("delete", &shown, e))
        });
        if let Err(err) = removed {
            // The copy already failed (that error is the answer); this one is the
            // daemon's to report.
            tracing::error!(?err, dir = %self.name, "cannot remove an unfinished copy");
        }
    }
}

/// One tree copy under way.
struct Walk<'a> {
    limit: u64,
    bytes: u64,
    /// The hidden directory being built: met inside the source, the target was moved
    /// below the source after the check, and the copy is refused.
    staging: (u64, u64),
    from: &'a HomePath,
    to: &'a HomePath,
}

impl Walk<'_> {
    fn refused_into_itself(&self) -> FilesError {
        FilesError::IntoItself {
            from: self.from.to_string(),
            to: self.to.to_string(),
        }
    }

    /// Copies the entries of the directory `src` into the directory `dst`.
    /// `depth` is that of `src` below the copied directory (0).
    fn dir(&mut self, src: &OwnedFd, dst: &OwnedFd, path: &HomePath, depth: usize) -> Result<()> {
        for name in Home::names_in(src, "copy", path)? {
            let p = path.join(&name.to_string_lossy());
            let io = |op: &'static str| {
                let p = &p;
                move |e: Errno| FilesError::io(op, p, e)
            };
            let st = match nix::sys::stat::fstatat(
                Some(src.as_raw_fd()),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue, // removed meanwhile
                Err(e) => return Err(FilesError::io("stat", &p, e)),
            };
            match Kind::of(st.st_mode) {
                Kind::Dir => {
                    // Checked before the directory is made: the copy is never deeper
                    // than what the removal of a failed one descends.
                    if depth + 1 >= MAX_DEPTH {
                        return Err(FilesError::TooDeep {
                            path: p.to_string(),
                        });
                    }
                    let sub = open_beneath(
                        src,
                        &name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
                    )
                    .map_err(io("open"))?;
                    let sub_st = nix::sys::stat::fstat(sub.as_raw_fd()).map_err(io("stat"))?;
                    if id(&sub_st) == self.staging {
                        return Err(self.refused_into_itself());
                    }
                    nix::sys::stat::mkdirat(Some(dst.as_raw_fd()), name.as_os_str(), Mode::S_IRWXU)
                        .map_err(io("copy"))?;
                    let out = open_beneath(dst, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                        .map_err(io("copy"))?;
                    self.dir(&sub, &out, &p, depth + 1)?;
                    finish(out.as_fd(), &sub_st).map_err(io("copy"))?;
                }
                Kind::File => {
                    let fp = open_beneath(src, &name, OFlag::O_PATH | OFlag::O_NOFOLLOW)
                        .map_err(io("open"))?;
                    let (file, st) = Home::read_regular(&fp, &p)?;
                    let room = self.limit - self.bytes;
                    if st.st_size.max(0) as u64 > room {
                        return Err(FilesError::TooLarge { limit: self.limit });
                    }
                    let mut out = nix::fcntl::openat(
                        Some(dst.as_raw_fd()),
                        name.as_os_str(),
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_WRONLY
                            | OFlag::O_CLOEXEC,
                        Mode::S_IRUSR | Mode::S_IWUSR,
                    )
                    .map(|fd| File::from(own(fd)))
                    .map_err(io("copy"))?;
                    // At most one byte past the room left: a file growing meanwhile fails.
                    let n = std::io::copy(&mut file.take(room.saturating_add(1)), &mut out)
                        .map_err(|e| FilesError::io("copy", &p, errno_of(&e)))?;
                    self.bytes += n;
                    if self.bytes > self.limit {
                        return Err(FilesError::TooLarge { limit: self.limit });
                    }
                    finish(out.as_fd(), &st).map_err(io("copy"))?;
                }
                Kind::Symlink => {
                    let target = nix::fcntl::readlinkat(Some(src.as_raw_fd()), name.as_os_str())
                        .map_err(io("readlink"))?;
                    nix::unistd::symlinkat(
                        target.as_os_str(),
                        Some(dst.as_raw_fd()),
                        name.as_os_str(),
                    )
                    .map_err(io("copy"))?;
                    // Best effort: not every filesystem sets times on a link itself.
                    let _ = nix::sys::stat::utimensat(
                        Some(dst.as_raw_fd()),
                        name.as_os_str(),
                        &nix::sys::time::TimeSpec::UTIME_OMIT,
                        &nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                    );
                }
                Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {}
            }
        }
        Ok(())
    }
}

impl Home {
    /// Copies the directory `src` (an `O_PATH` descriptor, `st` its `fstat`) to `to`; see
    /// the module's documentation for the steps.
    pub(super) fn copy_tree(
        &self,
        src: OwnedFd,
        st: &FileStat,
        from: &HomePath,
        to: &HomePath,
        limit: u64,
    ) -> Result<Entry> {
        let (dir, name) = self.parent(to)?;
        match Self::lstat_in(&dir, name, to) {
            Ok(_) => return Err(FilesError::io("copy", to, Errno::EEXIST)),
            Err(FilesError::Io {
                errno: Errno::ENOENT,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.refuse_into_itself(st, &dir, from, to)?;
        // Read through the descriptor that was checked, never by the path again.
        let src = nix::fcntl::open(
            fd_path(&src).as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(own)
        .map_err(|e| FilesError::io("open", from, e))?;
        let tmp = temp_name("copy");
        nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), tmp.as_str(), Mode::S_IRWXU)
            .map_err(|e| FilesError::io("copy", to, e))?;
        let mut staged = StagedTree {
            parent: dir
                .try_clone()
                .map_err(|e| FilesError::io("copy", to, errno_of(&e)))?,
            name: tmp,
            placed: false,
        };
        let dst = open_beneath(
            &dir,
            OsStr::new(&staged.name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| FilesError::io("copy", to, e))?;
        let dst_st =
            nix::sys::stat::fstat(dst.as_raw_fd()).map_err(|e| FilesError::io("copy", to, e))?;
        let mut walk = Walk {
            limit,
            bytes: 0,
            staging: id(&dst_st),
            from,
            to,
        };
        walk.dir(&src, &dst, from, 0)?;
        finish(dst.as_fd(), st).map_err(|e| FilesError::io("copy", to, e))?;
        renameat2(&dir, &staged.name, &dir, name, libc::RENAME_NOREPLACE)
            .map_err(|e| FilesError::io("rename", to, e))?;
        staged.placed = true;
        let done =
            nix::sys::stat::fstat(dst.as_raw_fd()).map_err(|e| FilesError::io("stat", to, e))?;
        Ok(Entry::from_stat(name.to_string(), &done))
    }

    /// Fails when the directory `dir` (a copy's target parent) is the source `src` or
    /// lies below it: walks up `..` by descriptor, comparing device and inode, until the
    /// home's root (or the top of the filesystem, where `..` is the directory itself).
    fn refuse_into_itself(
        &self,
        src: &FileStat,
        dir: &OwnedFd,
        from: &HomePath,
        to: &HomePath,
    ) -> Result<()> {
        let stat = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd.as_raw_fd())
                .map(|st| id(&st))
                .map_err(|e| FilesError::io("stat", to, e))
        };
        let root = stat(&self.root)?;
        let mut cur = dir
            .try_clone()
            .map_err(|e| FilesError::io("stat", to, errno_of(&e)))?;
        let mut here = stat(&cur)?;
        for _ in 0..MAX_ANCESTORS {
            // The source first: copying the home itself is copying into itself.
            if here == id(src) {
                return Err(FilesError::IntoItself {
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
            if here == root {
                return Ok(());
            }
            let up = nix::fcntl::openat(
                Some(cur.as_raw_fd()),
                "..",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(own)
            .map_err(|e| FilesError::io("stat", to, e))?;
            let above = stat(&up)?;
            if above == here {
                return Ok(());
            }
            (cur, here) = (up, above);
        }
        Err(FilesError::TooDeep {
            path: to.to_string(),
        })
    }
}
