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
