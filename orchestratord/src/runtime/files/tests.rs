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
    home.copy(&p("a.txt"), &p("d.txt"), opts(false)).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("d.txt")).unwrap(),
        "new"
    );
    assert_eq!(names(), ["a.txt", "d.txt"]);
}
