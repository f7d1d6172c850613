//! Seam tests of the file operations: real syscalls as root on a spare thread.

use super::*;

fn fsuid() -> u32 {
    // SAFETY: -1 is never a valid id, so the call only reports the current one.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

#[test]
fn user_ids_are_restored_when_the_operation_panics() {
    std::thread::spawn(|| {
        let before_uid = fsuid();
        let before_groups = nix::unistd::getgroups().unwrap();
        let r = std::panic::catch_unwind(|| {
            let _c = FsCreds::enter(FsId {
                uid: 4242,
                gid: 4243,
            })
            .unwrap();
            assert_eq!(fsuid(), 4242);
            assert_eq!(
                nix::unistd::getgroups().unwrap(),
                vec![nix::unistd::Gid::from_raw(4243)]
            );
            panic!("operation failed");
        });
        assert!(r.is_err());
        assert_eq!(fsuid(), before_uid);
        assert_eq!(nix::unistd::getgroups().unwrap(), before_groups);
    })
    .join()
    .unwrap();
}

#[test]
fn switching_ids_touches_only_the_calling_thread() {
    let main_uid = fsuid();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let _c = FsCreds::enter(FsId {
            uid: 4242,
            gid: 4242,
        })
        .unwrap();
        tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    rx.recv().unwrap();
    assert_eq!(fsuid(), main_uid);
    assert!(!nix::unistd::getgroups()
        .unwrap()
        .contains(&nix::unistd::Gid::from_raw(4242)));
    done_tx.send(()).unwrap();
    t.join().unwrap();
}

/// Filesystems without `O_TMPFILE` (cifs, SMB homes) get a hidden named file that is put
/// in place by a rename, or removed when the upload fails or is abandoned.
#[test]
fn without_o_tmpfile_uploads_use_a_named_file_that_never_stays_behind() {
    let t = tempfile::tempdir().unwrap();
    let home = Home::open(t.path(), FsId { uid: 0, gid: 0 })
        .unwrap()
        .without_tmpfile();
    let p = |s: &str| HomePath::parse(s).unwrap();
    let opts = |overwrite| WriteOptions {
        overwrite,
        mode: 0o640,
        limit: 1 << 20,
    };
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let send = |chunks: Vec<Chunk>, end: bool| {
        let (tx, rx) = mpsc::channel(8);
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        if end {
            tx.try_send(Chunk::End).unwrap();
        }
        drop(tx);
        rx
    };
    let data = |s: &'static str| Chunk::Data(Bytes::from_static(s.as_bytes()));

    // Complete: in place with its mode, nothing else.
    let e = home
        .upload(
            &p("a.txt"),
            opts(false),
            send(vec![data("hello "), data("world")], true),
        )
        .unwrap();
    assert_eq!(e.size, 11);
    assert_eq!(
        std::fs::read_to_string(t.path().join("a.txt")).unwrap(),
        "hello world"
    );
    let mode = std::fs::metadata(t.path().join("a.txt"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
    assert_eq!(names(), ["a.txt"]);

    // The overwrite guard holds, and the refused upload leaves nothing.
    let err = home
        .upload(&p("a.txt"), opts(false), send(vec![data("x")], true))
        .unwrap_err();
    assert!(
        matches!(
            err,
            FilesError::Io {
                errno: Errno::EEXIST,
                ..
            }
        ),
        "{err:?}"
    );
    // Abandoned (the channel closes before End), and too large: nothing left.
    let err = home
        .upload(&p("b.txt"), opts(false), send(vec![data("partial")], false))
        .unwrap_err();
    assert!(matches!(err, FilesError::Aborted), "{err:?}");
    let big = Chunk::Data(Bytes::from(vec![0u8; (1 << 20) + 1]));
    let err = home
        .upload(&p("c.txt"), opts(false), send(vec![big], true))
        .unwrap_err();
    assert!(matches!(err, FilesError::TooLarge { .. }), "{err:?}");
    assert_eq!(names(), ["a.txt"], "no temporary file stayed behind");

    // With overwrite the old content is replaced whole.
    home.upload(&p("a.txt"), opts(true), send(vec![data("new")], true))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("a.txt")).unwrap(),
        "new"
    );
    // A copy takes the same path.
    let copy = CopyOptions {
        overwrite: false,
        recursive: false,
        limit: 1 << 20,
    };
    home.copy(&p("a.txt"), &p("d.txt"), copy).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("d.txt")).unwrap(),
        "new"
    );
    assert_eq!(names(), ["a.txt", "d.txt"]);
}

// ---- copies of directories ---------------------------------------------------------------

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The user copies run as: not root, so the kernel checks permissions as for the user.
const USER: FsId = FsId {
    uid: 4242,
    gid: 4242,
};

fn p(s: &str) -> HomePath {
    HomePath::parse(s).unwrap()
}

fn recursive(limit: u64) -> CopyOptions {
    CopyOptions {
        overwrite: false,
        recursive: true,
        limit,
    }
}

/// Sorted names in a directory, hidden ones included.
fn names_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Makes `path` and everything below it belong to the user, as if they had made it.
fn give(path: &Path) {
    std::os::unix::fs::lchown(path, Some(USER.uid), Some(USER.gid)).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            give(&e.unwrap().path());
        }
    }
}

/// Runs `f` on a thread of its own with the user's filesystem ids (as `run_as` does). A
/// copy that blocked (on a FIFO, say) fails the test instead of hanging it.
fn as_user<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _c = FsCreds::enter(USER).unwrap();
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the file operation panicked or never returned (blocked?)")
}

/// A home owned by the user in a fresh temporary directory, next to an `outside`
/// directory that a copy following a link out of the home would reach.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "outside secret").unwrap();
        give(&dir.path().join("home"));
        Tree { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn home(&self) -> Home {
        Home::open(&self.path(), USER).unwrap()
    }

    /// Files (path, content) and directories (path ending in `/`) in the home, the
    /// user's.
    fn make(&self, entries: &[(&str, &[u8])]) {
        for (path, content) in entries {
            let full = self.path().join(path);
            if path.ends_with('/') {
                std::fs::create_dir_all(&full).unwrap();
            } else {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, content).unwrap();
            }
        }
        give(&self.path());
    }

    fn copy(&self, from: &str, to: &str, opts: CopyOptions) -> Result<Entry> {
        let (home, from, to) = (self.home(), p(from), p(to));
        as_user(move || home.copy(&from, &to, opts))
    }
}

fn errno(r: Result<Entry>) -> Errno {
    match r {
        Err(FilesError::Io { errno, .. }) => errno,
        other => panic!("expected a failed system call, got {other:?}"),
    }
}

#[test]
fn a_directory_is_copied_whole_with_links_as_links_and_without_special_files() {
    let t = Tree::new();
    let (h, out) = (t.path(), t.outside());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    t.make(&[
        ("src/a.txt", b"alpha"),
        ("src/sub/deep/b.bin", &data),
        ("src/ro/c.txt", b"in a read-only directory"),
        ("src/empty/", b""),
    ]);
    std::os::unix::fs::symlink(out.join("secret"), h.join("src/abs_link")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret", h.join("src/rel_link")).unwrap();
    std::os::unix::fs::symlink(&out, h.join("src/out_dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", h.join("src/dangling")).unwrap();
    nix::unistd::mkfifo(&h.join("src/fifo"), Mode::from_bits_truncate(0o666)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(h.join("src/sock")).unwrap());
    nix::sys::stat::mknod(
        &h.join("src/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    give(&h.join("src"));
    // Someone else's file the user may read: the copy is the user's.
    std::os::unix::fs::chown(h.join("src/ro/c.txt"), Some(4343), Some(4343)).unwrap();
    // Modes after chown (which clears setuid); setuid and setgid must not survive.
    set_mode(&h.join("src/a.txt"), 0o640);
    set_mode(&h.join("src/sub/deep/b.bin"), 0o4755);
    set_mode(&h.join("src/ro/c.txt"), 0o644);
    set_mode(&h.join("src/ro"), 0o555);
    set_mode(&h.join("src"), 0o2750);
    let when = nix::sys::time::TimeSpec::new(1_000_000_000, 123);
    for (path, flag) in [
        ("src/a.txt", nix::sys::stat::UtimensatFlags::FollowSymlink),
        ("src/sub", nix::sys::stat::UtimensatFlags::FollowSymlink),
    ] {
        nix::sys::stat::utimensat(None, &h.join(path), &when, &when, flag).unwrap();
    }

    let e = t.copy("src", "dst", recursive(1 << 20)).unwrap();
    assert_eq!((e.kind, e.name.as_str()), (Kind::Dir, "dst"));

    let d = h.join("dst");
    assert_eq!(
        names_of(&d),
        ["a.txt", "abs_link", "dangling", "empty", "out_dir", "rel_link", "ro", "sub"],
        "FIFOs, sockets and devices are left out"
    );
    assert_eq!(std::fs::read(d.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(d.join("sub/deep/b.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read(d.join("ro/c.txt")).unwrap(),
        b"in a read-only directory"
    );
    assert_eq!(mode_of(&d), 0o750, "setgid stripped from a directory");
    assert_eq!(mode_of(&d.join("a.txt")), 0o640);
    assert_eq!(mode_of(&d.join("sub/deep/b.bin")), 0o755, "setuid stripped");
    assert_eq!(mode_of(&d.join("ro")), 0o555);
    assert_eq!(
        std::fs::metadata(d.join("ro/c.txt")).unwrap().uid(),
        USER.uid
    );
    for path in ["a.txt", "sub"] {
        let md = std::fs::metadata(d.join(path)).unwrap();
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_000_000_000, 123),
            "{path}"
        );
    }
    // Links are links again, with the same target text, never followed.
    for (link, target) in [
        ("abs_link", out.join("secret")),
        ("rel_link", PathBuf::from("../../outside/secret")),
        ("out_dir", out.clone()),
        ("dangling", PathBuf::from("nowhere")),
    ] {
        let md = std::fs::symlink_metadata(d.join(link)).unwrap();
        assert!(md.file_type().is_symlink(), "{link}");
        assert_eq!(std::fs::read_link(d.join(link)).unwrap(), target, "{link}");
    }
    assert_eq!(names_of(&out), ["secret"], "nothing made outside");
    assert_eq!(
        std::fs::read_to_string(out.join("secret")).unwrap(),
        "outside secret"
    );
    assert_eq!(names_of(&h), ["dst", "src"], "no staging directory left");
}

#[test]
fn a_directory_needs_recursive_and_never_replaces_an_existing_name() {
    let t = Tree::new();
    let h = t.path();
    t.make(&[("src/f", b"new"), ("there/keep", b"old"), ("file", b"old")]);
    let err = t
        .copy(
            "src",
            "new",
            CopyOptions {
                recursive: false,
                ..recursive(1 << 20)
            },
        )
        .unwrap_err();
    assert!(matches!(err, FilesError::IsDirectory { .. }), "{err:?}");
    for target in ["there", "file"] {
        let opts = CopyOptions {
            overwrite: true,
            ..recursive(1 << 20)
        };
        assert_eq!(
            errno(t.copy("src", target, opts)),
            Errno::EEXIST,
            "{target}"
        );
    }
    assert_eq!(names_of(&h.join("there")), ["keep"]);
    assert_eq!(std::fs::read_to_string(h.join("file")).unwrap(), "old");
    assert_eq!(names_of(&h), ["file", "src", "there"]);
}

#[test]
fn a_directory_is_never_copied_into_itself_however_the_target_is_spelled() {
    let t = Tree::new();
    let h = t.path();
    t.make(&[("src/sub/f", b"x")]);
    std::os::unix::fs::symlink("src/sub", h.join("l")).unwrap();
    std::os::unix::fs::symlink("/src", h.join("abs")).unwrap(); // `/` is the home
    give(&h);
    for (from, to) in [
        ("src", "src/x"),
        ("src", "src/sub/x"),
        ("src", "l/x"),
        ("src/sub", "l/x"),
        ("src", "abs/sub/x"),
        ("/", "x"),
    ] {
        let err = t.copy(from, to, recursive(1 << 20)).unwrap_err();
        assert!(
            matches!(err, FilesError::IntoItself { .. }),
            "{from} -> {to}: {err:?}"
        );
    }
    // Refused before the source is read: the walk would fail first on the directory
    // the user may search but not list.
    t.make(&[("locked/a/b/", b"")]);
    set_mode(&h.join("locked/a"), 0o100);
    let err = t
        .copy("locked", "locked/a/b/x", recursive(1 << 20))
        .unwrap_err();
    assert!(matches!(err, FilesError::IntoItself { .. }), "{err:?}");
    set_mode(&h.join("locked/a"), 0o700);
    assert_eq!(names_of(&h.join("locked/a/b")), Vec::<String>::new());
    std::fs::remove_dir_all(h.join("locked")).unwrap();
    // A sibling whose name starts with the source's is not inside it.
    t.copy("src/sub", "src/sub2", recursive(1 << 20)).unwrap();
    assert_eq!(std::fs::read(h.join("src/sub2/f")).unwrap(), b"x");
    assert_eq!(names_of(&h), ["abs", "l", "src"]);
    assert_eq!(names_of(&h.join("src")), ["sub", "sub2"]);
    assert_eq!(names_of(&h.join("src/sub")), ["f"]);
}

/// Over the limit after two of three files: the two already copied, in directories that
/// were already made read-only, go too.
#[test]
fn a_copy_failing_midway_leaves_nothing_even_in_read_only_directories() {
    let t = Tree::new();
    let h = t.path();
    let piece = vec![7u8; 400 * 1024];
    t.make(&[
        ("src/d1/f", &piece),
        ("src/d2/f", &piece),
        ("src/d3/f", &piece),
    ]);
    for d in ["d1", "d2", "d3"] {
        set_mode(&h.join("src").join(d), 0o555);
    }
    let err = t.copy("src", "dst", recursive(1 << 20)).unwrap_err();
    assert!(matches!(err, FilesError::TooLarge { .. }), "{err:?}");
    assert_eq!(names_of(&h), ["src"], "nothing left behind");
    // Under the limit the same tree copies.
    t.copy("src", "dst", recursive(2 << 20)).unwrap();
    assert_eq!(names_of(&h.join("dst")), ["d1", "d2", "d3"]);
}

#[test]
fn a_tree_deeper_than_the_delete_limit_is_refused_and_leaves_nothing() {
    let t = Tree::new();
    let h = t.path();
    let deep = "d/".repeat(MAX_DEPTH + 1);
    t.make(&[(deep.as_str(), b"")]);
    let err = t.copy("d", "copy", recursive(1 << 20)).unwrap_err();
    assert!(matches!(err, FilesError::TooDeep { .. }), "{err:?}");
    assert_eq!(names_of(&h), ["d"]);
    let deepest = "e/".repeat(MAX_DEPTH);
    t.make(&[(deepest.as_str(), b"")]);
    t.copy("e", "copy", recursive(1 << 20)).unwrap();
}

/// A full filesystem (a 512 KiB tmpfs, mounted in a mount namespace of a thread of its
/// own, so the mount dies with the thread whatever happens): the copy fails with ENOSPC,
/// which the service answers with 507, and leaves nothing.
#[test]
fn a_full_filesystem_fails_the_copy_with_enospc_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    set_mode(t.path(), 0o755);
    let mnt = t.path().join("home");
    std::fs::create_dir(&mnt).unwrap();
    std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let opts = format!("size=512k,mode=0700,uid={},gid={}", USER.uid, USER.gid);
        mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .unwrap();
        std::fs::create_dir(mnt.join("src")).unwrap();
        for f in ["a", "b"] {
            std::fs::write(mnt.join("src").join(f), vec![1u8; 160 * 1024]).unwrap();
        }
        give(&mnt);
        let home = Home::open(&mnt, USER).unwrap();
        let r = {
            let _c = FsCreds::enter(USER).unwrap();
            home.copy(&p("src"), &p("dst"), recursive(8 << 20))
        };
        let e = errno(r);
        assert!(e == Errno::ENOSPC || e == Errno::EDQUOT, "{e}");
        assert_eq!(names_of(&mnt), ["src"], "nothing left behind");
    })
    .join()
    .unwrap();
}

/// Filesystems without `O_TMPFILE` (cifs): a tree is built the same way, under a hidden
/// name, and lands whole or not at all.
#[test]
fn without_o_tmpfile_a_directory_copy_lands_whole_or_not_at_all() {
    let t = Tree::new();
    let h = t.path();
    t.make(&[("src/a", b"aa"), ("src/sub/b", &[9u8; 2048])]);
    let home = t.home().without_tmpfile();
    let copy = |to: &str, limit| {
        let (home, to) = (home.clone(), p(to));
        as_user(move || home.copy(&p("src"), &to, recursive(limit)))
    };
    let err = copy("small", 1024).unwrap_err();
    assert!(matches!(err, FilesError::TooLarge { .. }), "{err:?}");
    assert_eq!(names_of(&h), ["src"]);
    copy("dst", 1 << 20).unwrap();
    assert_eq!(std::fs::read(h.join("dst/sub/b")).unwrap(), [9u8; 2048]);
    assert_eq!(names_of(&h), ["dst", "src"]);
}

/// Regression: the mode of a file copied through a symlink was the link's own (0777),
/// which made a private file's copy world-writable.
#[test]
fn a_file_copied_through_a_link_keeps_the_files_mode_and_time_not_the_links() {
    let t = Tree::new();
    let h = t.path();
    t.make(&[("private", b"mine"), ("tool", b"#!/bin/sh")]);
    set_mode(&h.join("private"), 0o600);
    set_mode(&h.join("tool"), 0o4755);
    let when = nix::sys::time::TimeSpec::new(1_500_000_000, 7);
    nix::sys::stat::utimensat(
        None,
        &h.join("private"),
        &when,
        &when,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    std::os::unix::fs::symlink("private", h.join("link")).unwrap();
    give(&h.join("link"));
    let file = CopyOptions {
        recursive: false,
        ..recursive(1 << 20)
    };
    t.copy("link", "copy", file).unwrap();
    t.copy("tool", "tool2", file).unwrap();
    assert_eq!(std::fs::read(h.join("copy")).unwrap(), b"mine");
    assert_eq!(mode_of(&h.join("copy")), 0o600);
    assert_eq!(mode_of(&h.join("tool2")), 0o755, "setuid stripped");
    let md = std::fs::metadata(h.join("copy")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 7));
}

/// A daemon killed mid-upload leaves its staging name; the next run can have the same pid
/// (a service started early at boot). Its uploads must not trip over those names.
#[test]
fn staging_names_never_collide_with_a_previous_runs_leftovers() {
    let t = tempfile::tempdir().unwrap();
    let home = Home::open(t.path(), FsId { uid: 0, gid: 0 })
        .unwrap()
        .without_tmpfile();
    // What an earlier run with this pid could have left: every sequence number this
    // process may draw next (pid and counter were the whole name before).
    let next = TEMP_SEQ.load(Ordering::Relaxed);
    for seq in next..next + 64 {
        for what in ["upload", "copy"] {
            let name = format!(".orchestratord-{what}.{}.{seq}", std::process::id());
            std::fs::write(t.path().join(name), b"left behind").unwrap();
        }
    }
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(Chunk::Data(Bytes::from_static(b"fresh")))
        .unwrap();
    tx.try_send(Chunk::End).unwrap();
    drop(tx);
    let opts = WriteOptions {
        overwrite: false,
        mode: 0o644,
        limit: 1 << 20,
    };
    let p = |s: &str| HomePath::parse(s).unwrap();
    home.upload(&p("new.txt"), opts, rx).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("new.txt")).unwrap(),
        "fresh"
    );
    let copy = CopyOptions {
        overwrite: false,
        recursive: true,
        limit: 1 << 20,
    };
    home.copy(&p("new.txt"), &p("copy.txt"), copy).unwrap();
    std::fs::create_dir(t.path().join("d")).unwrap();
    std::fs::write(t.path().join("d/f"), b"tree").unwrap();
    home.copy(&p("d"), &p("d2"), copy).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("copy.txt")).unwrap(),
        "fresh"
    );
    assert_eq!(std::fs::read(t.path().join("d2/f")).unwrap(), b"tree");
}

#[test]
fn only_other_runs_staging_names_are_stale() {
    let now = format!("{:016x}", run_id());
    let other = if now == "00000000000000aa" {
        "00000000000000ab"
    } else {
        "00000000000000aa"
    };
    for (name, stale) in [
        (format!(".orchestratord-upload.{other}.4"), true),
        (format!(".orchestratord-copy.{other}.0"), true),
        (format!(".orchestratord-upload.{now}.4"), false),
        (format!(".orchestratord-copy.{now}.12"), false),
        (".orchestratord-upload.mine".into(), false),
        (format!(".orchestratord-upload.{other}."), false),
        (format!(".orchestratord-upload.{other}.4x"), false),
        (format!(".orchestratord-upload.{}.4", &other[1..]), false),
        (format!(".orchestratord-move.{other}.4"), false),
        (format!("x.orchestratord-upload.{other}.4"), false),
        (format!(".orchestratord-upload.{}.4", "g".repeat(16)), false),
    ] {
        assert_eq!(stale_staging(&name), stale, "{name}");
    }
    // The names this run makes are its own.
    assert!(!stale_staging(&temp_name("upload")));
    assert!(!stale_staging(&temp_name("copy")));
}
