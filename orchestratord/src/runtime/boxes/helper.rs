//! The privileged helper: `orchestratord-helper start|exec`, a freshly exec'd,
//! single-threaded process (Firecracker's jailer, bubblewrap's privileged part). It reads a
//! fully validated spec on stdin and performs one linear sequence; every step has a name
//! that failures report.
//!
//! # `start`: build a box and exec its init
//! In the helper H (host root):
//! 1. `dumpable = 0` (nothing in a box may open /proc/H/exe or its memory) and
//!    `pdeathsig = SIGKILL` (a daemon killed mid-start takes its helper along).
//! 2. Join the box cgroup, so everything below is accounted and killable as one.
//! 3. `unshare(CLONE_NEWNS)`, make `/` recursively private: every mount below exists only
//!    in this namespace and in the box's copy of it, so nothing is ever mounted on the host
//!    and everything vanishes with the box's last process (no mount to clean up after a
//!    crash).
//! 4. Enter the box's network namespace (`enter_netns`): the one kept from the box's
//!    previous run, as it is, or a new one (owned by the host's user namespace) with
//!    loopback up, IPv6 off and, when boxes have a network, the veth pair created with its
//!    box end directly inside.
//! 5. Build the root on a staging tmpfs: the overlay over the box's generated layer (its
//!    /etc files, /root) and the daemon's shared skeleton (mount points, host /etc entries
//!    that hold no secrets; see `skeleton`) with a persistent upper directory, a tmpfs
//!    upper for ephemeral boxes, or none for a read-only root; the host's /usr, /bin,
//!    /lib*, /sbin bound read-only, a minimal /dev, the home bound `nosuid,nodev`, sysfs
//!    (of the box's network namespace) read-only. Every mount target is walked component
//!    by component without following symlinks, so a symlink a user left in a persistent
//!    upper directory cannot redirect a mount.
//! 6. Open the init binary (`O_PATH`): it is executed through this descriptor after
//!    pivot_root, so no host path of it is reachable from inside (runc CVE-2019-5736).
//! 7. `clone` the box's init C into new user, mount, pid, uts, ipc and cgroup namespaces
//!    (the network namespace is the helper's, step 4); write its uid/gid maps (user's own
//!    id -> same host id, box-root -> the box's private range, host root never mapped);
//!    let it go. Without user namespaces
//!    (refused by the kernel) C is cloned without one and the reply says so.
//!
//! In C (pid 1 of the box):
//! 8. Become box-root; set the hostname; mount devpts (own instance), mqueue, /dev/shm,
//!    /tmp, /run, /proc and, on cgroup v2, /sys/fs/cgroup (read-only).
//! 9. `pivot_root(".", ".")` and detach the old root (runc's trick: no directory for it).
//! 10. Mask /proc and /sys paths (files with /dev/null, directories with an empty read-only
//!    tmpfs) and make /proc/{bus,fs,irq,sys,sysrq-trigger} read-only.
//! 11. stdio: /dev/null in, the box log out; all other descriptors close-on-exec; empty
//!     bounding set except CAP_KILL for init, no_new_privs, the seccomp filter; exec init.
//!     H sees its status pipe close (success) or an error message, kills C on error, and
//!     replies with C's pid.
//!
//! # `exec`: run a command in a running box
//! H2 checks the init pid still is the box's (start time), joins the cgroup, enters the
//! network namespace (owned by the host's user namespace), then the user namespace (so it
//! holds capabilities over the box's other namespaces), then cgroup, ipc, uts, pid and
//! mount, and forks. The child sets the user's groups, gid
//! and uid (keep-caps), the bounding set and the other capability sets, changes to the
//! working directory (verified inside the box, runc CVE-2024-21626), marks every
//! descriptor but 0-2 close-on-exec, arranges the AppArmor transition, sets
//! `pdeathsig`, no_new_privs and seccomp, and execs. H2 exits with the command's status.
//!
//! With a terminal (`pty` in the spec), the child, now the user and fully confined, opens
//! `/dev/ptmx` of the box (its own devpts instance, so the terminal is the box's and owned
//! by the user, like a login's), opens the peer through the master (`TIOCGPTPEER`, no
//! path lookup), becomes a session leader with the terminal as its controlling terminal
//! (`setsid`, `TIOCSCTTY`), sends the master to the daemon over its stdout (a Unix socket,
//! `SCM_RIGHTS`), puts the terminal on 0-2 and execs. The daemon owns the master from then
//! on; H2 still waits and exits with the command's status.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{clone, setns, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    chdir, fork, pivot_root, sethostname, setresgid, setresuid, ForkResult, Gid, Pid, Uid,
};

use policy::boxfs::{MASKED_PATHS, READ_ONLY_PATHS};

use super::super::net::netlink::{self, Netlink};
use super::spec::{
    ExecSpec, NetSpec, ProcessSpec, RootSpec, StartReply, StartSpec, UpperSpec, EXIT_CANNOT_EXEC,
    EXIT_NOT_FOUND, EXIT_SETUP_FAILED,
};

/// A failed step: its name and what went wrong.
#[derive(Debug)]
pub struct StepError {
    pub step: String,
    pub message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

type Step<T = ()> = Result<T, StepError>;

trait Context<T> {
    fn step(self, step: &'static str) -> Step<T>;
    fn step_at(self, step: &'static str, what: &Path) -> Step<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn step(self, step: &'static str) -> Step<T> {
        self.map_err(|e| StepError {
            step: step.into(),
            message: e.to_string(),
        })
    }
    fn step_at(self, step: &'static str, what: &Path) -> Step<T> {
        self.map_err(|e| StepError {
            step: step.into(),
            message: format!("{}: {e}", what.display()),
        })
    }
}

fn fail<T>(step: &'static str, message: impl Into<String>) -> Step<T> {
    Err(StepError {
        step: step.into(),
        message: message.into(),
    })
}

/// Entry point of the `orchestratord-helper` binary.
pub fn main() -> ! {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "start" => {
            let reply = match read_spec::<StartSpec>(false).and_then(|s| start(&s)) {
                Ok(r) => r,
                Err(e) => StartReply::Failed {
                    step: e.step,
                    message: e.message,
                },
            };
            let ok = matches!(reply, StartReply::Started { .. });
            let mut out = std::io::stdout();
            let _ = serde_json::to_writer(&mut out, &reply);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            std::process::exit(if ok { 0 } else { 1 })
        }
        "exec" => {
            let code = match read_spec::<ExecSpec>(true).and_then(|s| exec(&s)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("orchestratord: exec failed: {e}");
                    EXIT_SETUP_FAILED
                }
            };
            std::process::exit(code)
        }
        _ => {
            eprintln!("orchestratord-helper: internal program of orchestratord (start|exec)");
            std::process::exit(2)
        }
    }
}

/// Reads the spec from stdin. `framed`: a decimal length line, then exactly that many
/// bytes, so whatever follows stays for the command; otherwise everything up to EOF.
fn read_spec<T: serde::de::DeserializeOwned>(framed: bool) -> Step<T> {
    // Unbuffered: std's stdin would read ahead into the command's input.
    // SAFETY: fd 0 is open for the whole life of the process; ManuallyDrop keeps the File
    // from closing it.
    let mut stdin =
        std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(0) });
    let mut buf = Vec::new();
    if framed {
        let mut len = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let n = stdin.read(&mut byte).step("read_spec")?;
            if n == 0 || byte[0] == b'\n' || len.len() > 20 {
                break;
            }
            len.push(byte[0]);
        }
        let len: usize = std::str::from_utf8(&len)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StepError {
                step: "read_spec".into(),
                message: "missing length line".into(),
            })?;
        buf.resize(len, 0);
        stdin.read_exact(&mut buf).step("read_spec")?;
    } else {
        stdin.read_to_end(&mut buf).step("read_spec")?;
    }
    serde_json::from_slice(&buf).step("parse_spec")
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

fn join_cgroup(dirs: &[PathBuf]) -> Step {
    for dir in dirs {
        // On v1, `tasks` moves just this thread (the helper is single-threaded, so that
        // is the whole process) and skips the global lock behind `cgroup.procs`, whose
        // write waits for an RCU grace period (5-16 ms measured, bench/README.md B1).
        let tasks = dir.join("tasks");
        let file = if tasks.exists() {
            tasks
        } else {
            dir.join("cgroup.procs")
        };
        write_file(&file, "0").step_at("cgroup", &file)?;
    }
    Ok(())
}

fn mnt(
    step: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Step {
    mount(source, target, fstype, flags, data).step_at(step, target)
}

const RO_BIND: MsFlags = MsFlags::MS_BIND
    .union(MsFlags::MS_REMOUNT)
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV);

/// Binds `source` on `target`, then makes it read-only, nosuid and nodev.
fn bind_ro(step: &'static str, source: &Path, target: &Path) -> Step {
    mnt(
        step,
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mnt(step, None, target, None, RO_BIND, None)
}

/// `root/rel`, with every existing component checked to be a real directory (never a
/// symlink) and missing ones created: the target of a mount must not be redirectable by
/// what a user left in a persistent upper directory. `last`: the kind of the final
/// component to create when missing.
fn safe_target(root: &Path, rel: &Path, last: Kind) -> Step<PathBuf> {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut path = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let is_last = i + 1 == parts.len();
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_symlink() => {
                return fail(
                    "mountpoint",
                    format!(
                        "{} is a symlink inside the box; reset the box to repair it",
                        rel.display()
                    ),
                )
            }
            Ok(md) if !is_last && !md.is_dir() => {
                return fail(
                    "mountpoint",
                    format!("{} is not a directory", rel.display()),
                )
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if is_last && last == Kind::File {
                    File::create(&path).step_at("mountpoint", &path)?;
                } else {
                    fs::create_dir(&path).step_at("mountpoint", &path)?;
                }
            }
            Err(e) => return Err(e).step_at("mountpoint", &path),
        }
    }
    Ok(path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

fn check_option_path(p: &Path) -> Step<&str> {
    let s = p.to_str().unwrap_or(",");
    if s.contains([',', ':', '\\']) {
        return fail(
            "overlay",
            format!("{s}: a path in overlay options may not hold ',', ':' or '\\'"),
        );
    }
    Ok(s)
}

/// Builds the box's root under the staging directory and returns it (a mount point).
fn build_root(spec: &StartSpec) -> Step<PathBuf> {
    let stage = &spec.stage;
    mnt(
        "stage",
        Some(Path::new("tmpfs")),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )?;
    let root_ids = (spec.root_uid, spec.root_gid);

    // The lower layers: the box's generated layer over the daemon's skeleton (host image),
    // or the image directory.
    let lower = match &spec.root {
        RootSpec::Host { layers, .. } => {
            let parts = layers
                .iter()
                .map(|l| check_option_path(l))
                .collect::<Step<Vec<&str>>>()?;
            parts.join(":")
        }
        RootSpec::Dir { path } => check_option_path(path)?.to_string(),
    };

    // The root: overlay over the lower layer, or the lower layer itself read-only.
    let root = stage.join("root");
    fs::create_dir(&root).step_at("stage", &root)?;
    let (upper, work) = match &spec.upper {
        UpperSpec::Dir { upper, work } => (Some(upper.clone()), Some(work.clone())),
        UpperSpec::Tmpfs { bytes } => {
            let t = stage.join("upper-tmpfs");
            fs::create_dir(&t).step_at("stage", &t)?;
            mnt(
                "upper",
                Some(Path::new("tmpfs")),
                &t,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(&format!("mode=0755,size={bytes}")),
            )?;
            let (u, w) = (t.join("upper"), t.join("work"));
            fs::create_dir(&u).step_at("upper", &u)?;
            fs::create_dir(&w).step_at("upper", &w)?;
            std::os::unix::fs::chown(&u, Some(root_ids.0), Some(root_ids.1)).step("upper")?;
            (Some(u), Some(w))
        }
        UpperSpec::None => (None, None),
    };
    match (upper, work, &spec.root) {
        (Some(upper), Some(work), _) => {
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                check_option_path(&upper)?,
                check_option_path(&work)?
            );
            mnt(
                "overlay",
                Some(Path::new("overlay")),
                &root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )?;
        }
        // No upper directory: the layers as a read-only overlay, or the image itself.
        (_, _, RootSpec::Host { .. }) => mnt(
            "overlay",
            Some(Path::new("overlay")),
            &root,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(&format!("lowerdir={lower}")),
        )?,
        (_, _, RootSpec::Dir { path }) => mnt(
            "rootfs",
            Some(path),
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
    }

    // Host directories, read-only.
    if let RootSpec::Host {
        binds, etc_shared, ..
    } = &spec.root
    {
        for b in binds {
            let name = b.strip_prefix("/").unwrap_or(b);
            if fs::symlink_metadata(b).is_ok_and(|m| m.is_dir()) {
                let target = safe_target(&root, name, Kind::Dir)?;
                bind_ro("bind_host", b, &target)?;
            }
        }
        for name in etc_shared {
            let src = Path::new("/etc").join(name);
            if fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()) {
                let target = safe_target(&root, &Path::new("etc").join(name), Kind::Dir)?;
                bind_ro("etc", &src, &target)?;
            }
        }
    } else {
        // An image keeps its own /etc; the generated files are bound over it.
        let gen = stage.join("etc");
        fs::create_dir(&gen).step_at("etc", &gen)?;
        for (name, text) in &spec.etc {
            let src = gen.join(name);
            fs::write(&src, text).step_at("etc", &src)?;
            let target = safe_target(&root, &Path::new("etc").join(name), Kind::File)?;
            bind_ro("etc", &src, &target)?;
        }
    }

    // /dev: a small tmpfs with the host's harmless character devices bound in (a user
    // namespace may not mknod), everything else is made by init's side below.
    let dev = safe_target(&root, Path::new("dev"), Kind::Dir)?;
    mnt(
        "dev",
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        File::create(&target).step_at("dev", &target)?;
        mnt(
            "dev",
            Some(&Path::new("/dev").join(node)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for d in ["pts", "shm", "mqueue"] {
        fs::create_dir(dev.join(d)).step_at("dev", &dev.join(d))?;
    }
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).step_at("dev", &dev.join(link))?;
    }

    // The home, nosuid and nodev.
    let home = safe_target(&root, &spec.home_target, Kind::Dir)?;
    mnt(
        "home",
        Some(&spec.home_source),
        &home,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    mnt(
        "home",
        None,
        &home,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;

    // Mount points init's side needs, checked now while only the helper can touch them.
    for d in ["proc", "tmp", "run"] {
        safe_target(&root, Path::new(d), Kind::Dir)?;
    }
    // sysfs shows the network namespace of whoever mounts it, and only a capability over
    // that namespace's owner (the host's user namespace, see `enter_netns`) allows the
    // mount: the helper makes it, read-only, from inside the box's network namespace.
    let sys = safe_target(&root, Path::new("sys"), Kind::Dir)?;
    mnt(
        "sys",
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        NO_EXEC | MsFlags::MS_RDONLY,
        None,
    )?;

    if spec.read_only {
        mnt(
            "read_only_root",
            None,
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            None,
        )?;
    }
    Ok(root)
}

const NO_EXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Init's side, before pivot_root: the mounts that must be made inside the box's user
/// namespace (devpts, mqueue, proc, sysfs belong to its namespaces).
fn mount_kernel_fs(spec: &StartSpec, root: &Path) -> Step {
    let gid = if spec.idmaps.is_some() { ",gid=5" } else { "" };
    mnt(
        "devpts",
        Some(Path::new("devpts")),
        &root.join("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!("newinstance,ptmxmode=0666,mode=0620{gid}")),
    )?;
    mnt(
        "shm",
        Some(Path::new("shm")),
        &root.join("dev/shm"),
        Some("tmpfs"),
        NO_EXEC,
        Some(&format!("mode=1777,size={}", spec.shm_bytes)),
    )?;
    mnt(
        "mqueue",
        Some(Path::new("mqueue")),
        &root.join("dev/mqueue"),
        Some("mqueue"),
        NO_EXEC,
        None,
    )?;
    mnt(
        "tmp",
        Some(Path::new("tmpfs")),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=1777,size={}", spec.tmp_bytes)),
    )?;
    mnt(
        "run",
        Some(Path::new("tmpfs")),
        &root.join("run"),
        Some("tmpfs"),
        NO_EXEC,
        Some("mode=0755,size=8m"),
    )?;
    mnt(
        "proc",
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        NO_EXEC,
        None,
    )?;
    if spec.cgroup2 {
        mnt(
            "sys_fs_cgroup",
            Some(Path::new("cgroup2")),
            &root.join("sys/fs/cgroup"),
            Some("cgroup2"),
            NO_EXEC | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// After pivot_root: masks and read-only paths.
fn mask_paths() -> Step {
    for p in MASKED_PATHS {
        let path = Path::new(p);
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => mnt(
                "mask",
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                NO_EXEC | MsFlags::MS_RDONLY,
                Some("size=0,mode=0555"),
            )?,
            Ok(_) => mnt(
                "mask",
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            Err(_) => {}
        }
    }
    for p in READ_ONLY_PATHS {
        let path = Path::new(p);
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        mnt(
            "read_only",
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mnt(
            "read_only",
            None,
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NO_EXEC,
            None,
        )?;
    }
    Ok(())
}

/// Host pid start time (field 22 of /proc/<pid>/stat), to tell a pid from its reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Applies the confinement of a box process as the last steps before exec: bounding set,
/// credentials, capability sets, AppArmor, no_new_privs, seccomp.
fn confine(p: &ProcessSpec, ids_mapped: bool, die_with_parent: bool) -> Step {
    let keep = crate::runtime::caps::from_names(&p.caps).step("caps")?;
    crate::runtime::caps::restrict_bounding(&keep).step("caps")?;
    let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if ids_mapped || p.uid != 0 {
        nix::unistd::setgroups(&groups).step("setgroups")?;
        prctl::set_keepcaps(true).step("keepcaps")?;
        setresgid(
            Gid::from_raw(p.gid),
            Gid::from_raw(p.gid),
            Gid::from_raw(p.gid),
        )
        .step("setgid")?;
        setresuid(
            Uid::from_raw(p.uid),
            Uid::from_raw(p.uid),
            Uid::from_raw(p.uid),
        )
        .step("setuid")?;
        prctl::set_keepcaps(false).step("keepcaps")?;
    }
    if die_with_parent {
        // After the credential change, which clears it.
        prctl::set_pdeathsig(Signal::SIGKILL).step("pdeathsig")?;
    }
    crate::runtime::caps::set_process(&keep).step("caps")?;
    if let Some(profile) = &p.apparmor {
        // Before no_new_privs, which forbids profile transitions on exec.
        crate::runtime::apparmor::exec_transition(profile).step("apparmor")?;
    }
    prctl::set_no_new_privs().step("no_new_privs")?;
    crate::runtime::seccomp::apply_raw(&p.seccomp).step("seccomp")?;
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec (close_range(2), Linux 5.11).
fn cloexec_from_3() -> Step {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it
    // closes nothing and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(Errno::last()).step("close_fds");
    }
    Ok(())
}

fn cstrings(items: impl IntoIterator<Item = String>) -> Step<Vec<CString>> {
    items
        .into_iter()
        .map(|s| CString::new(s).step("argv"))
        .collect()
}

/// Runs in the box's init C between clone and exec. Returns only on failure.
fn init_side(spec: &StartSpec, root: &Path, go: OwnedFd, init: &OwnedFd, log: &OwnedFd) -> Step {
    let mut go = File::from(go);
    let mut b = [0u8; 1];
    if go.read(&mut b).step("sync")? != 1 {
        return fail("sync", "the helper went away");
    }
    drop(go);
    // The root came from the helper's namespace, so in ours it is locked to its parent,
    // and pivot_root refuses a locked mount: bind it onto itself (recursively) to get a
    // mount of our own. Then into it while still the host's uid 0: the staging path may
    // run through directories only host root can traverse, which box-root cannot.
    // Everything below uses paths relative to it.
    mnt(
        "pivot_root",
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    chdir(root).step_at("pivot_root", root)?;
    let root = Path::new(".");
    let userns = spec.idmaps.is_some();
    if userns {
        // Box-root (mapped to the box's private range). Capabilities stay: the effective
        // uid goes from unmapped to 0 inside the namespace.
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).step("setgid")?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).step("setuid")?;
    }
    sethostname(&spec.hostname).step("hostname")?;
    mount_kernel_fs(spec, root)?;

    pivot_root(".", ".").step("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).step("pivot_root")?;
    chdir("/").step("pivot_root")?;
    mask_paths()?;

    // stdio: nothing in, the box log out.
    let null = OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .step("stdio")?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 onto the standard descriptors of this process; both are valid.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(Errno::last()).step("stdio");
        }
    }
    drop(null);
    cloexec_from_3()?;
    confine(&spec.init_process, userns, false)?;
    let argv = cstrings(["orchestratord-init".to_string()])?;
    let env = cstrings(["PATH=/usr/local/bin:/usr/bin:/bin".to_string()])?;
    let err = nix::unistd::fexecve(init.as_raw_fd(), &argv, &env).unwrap_err();
    fail("exec_init", err.to_string())
}

fn start(spec: &StartSpec) -> Step<StartReply> {
    prctl::set_dumpable(false).step("dumpable")?;
    prctl::set_pdeathsig(Signal::SIGKILL).step("pdeathsig")?;
    join_cgroup(&spec.cgroup_dirs)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).step("unshare")?;
    mnt(
        "unshare",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    enter_netns(spec)?;
    let root = build_root(spec)?;
    let init: OwnedFd = OpenOptions::new()
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .read(true)
        .open(&spec.init)
        .step_at("init_binary", &spec.init)?
        .into();
    let log: OwnedFd = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&spec.log)
        .step_at("log", &spec.log)?
        .into();

    let base = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    let mut attempt = spec.clone();
    loop {
        let userns = attempt.idmaps.is_some();
        let flags = if userns {
            base | CloneFlags::CLONE_NEWUSER
        } else {
            base
        };
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).step("pipe")?;
        let (st_r, st_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).step("pipe")?;
        let mut stack = vec![0u8; 256 * 1024];
        let child_spec = attempt.clone();
        let (root_c, init_c, log_c) = (&root, &init, &log);
        let mut go_r = Some(go_r);
        let mut st_w_opt = Some(st_w.as_raw_fd());
        let cb = Box::new(move || -> isize {
            let status_fd = st_w_opt.take().unwrap_or(-1);
            let go = match go_r.take() {
                Some(g) => g,
                None => return 1,
            };
            let err = match init_side(&child_spec, root_c, go, init_c, log_c) {
                Ok(()) => return 0,
                Err(e) => e,
            };
            let msg = format!("{}\n{}", err.step, err.message);
            // SAFETY: writes a local buffer to the status pipe inherited from the helper.
            unsafe { libc::write(status_fd, msg.as_ptr().cast(), msg.len()) };
            1
        });
        // SAFETY: the helper is single-threaded, so the child (which does not share memory,
        // no CLONE_VM) starts with a consistent copy of the heap and locks; the stack is
        // owned here and outlives the call.
        let pid = unsafe { clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) };
        let pid = match pid {
            Ok(p) => p,
            Err(e @ (Errno::EINVAL | Errno::EPERM | Errno::ENOSPC | Errno::EUSERS)) if userns => {
                // No user namespaces on this kernel: go on without one (status says so).
                eprintln!("orchestratord-helper: no user namespace ({e}); continuing without");
                attempt.idmaps = None;
                attempt.init_process.uid = 65534;
                attempt.init_process.gid = 65534;
                continue;
            }
            Err(e) => return fail("clone", e.to_string()),
        };
        drop(st_w);
        let result = parent_side(&attempt, pid, go_w, st_r);
        return match result {
            Ok(()) => Ok(StartReply::Started {
                pid: pid.as_raw(),
                start_time: start_time(pid.as_raw()).unwrap_or(0),
                userns,
            }),
            Err(e) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                if let Some(net) = attempt.net.as_ref().filter(|_| attempt.netns.is_none()) {
                    if let Ok(mut nl) = Netlink::open() {
                        let _ = nl.delete_link(&net.host_interface);
                    }
                }
                Err(e)
            }
        };
    }
}

/// The box's network namespace, entered by the helper before it builds the root (sysfs is
/// mounted from it) and inherited by init. A namespace kept from the box's previous run is
/// joined as it is: its link, addresses and settings are in place, so neither making one
/// (about 1 ms) nor destroying a veth (an RCU grace period or two: 10-30 ms) is on the path
/// of a restart. A new one belongs to the host's user namespace: no process of the box
/// ever holds a capability over it.
fn enter_netns(spec: &StartSpec) -> Step {
    if let Some(path) = &spec.netns {
        let ns = File::open(path).step_at("netns", path)?;
        setns(&ns, CloneFlags::CLONE_NEWNET).step_at("netns", path)?;
    } else {
        let host = File::open("/proc/self/ns/net").step("netns")?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).step("netns")?;
        let boxed = File::open("/proc/self/ns/net").step("netns")?;
        if let Some(net) = &spec.net {
            setns(&host, CloneFlags::CLONE_NEWNET).step("netns")?;
            host_net(net, &boxed)?;
            setns(&boxed, CloneFlags::CLONE_NEWNET).step("netns")?;
        }
        box_net(spec.net.as_ref())?;
    }
    // /proc/sys/net shows the namespace of the process that opens it: the box's, here.
    let ports = Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    if ports.exists() {
        write_file(ports, &spec.unprivileged_port_start.to_string()).step_at("netns", ports)?;
    }
    Ok(())
}

/// The host side of the box's link, from the host's network namespace: the veth pair is
/// created with its peer `eth0` directly in the box's namespace `boxed` (creating it here
/// and moving it would cost 30 times more), IPv6 is disabled on the host end before it
/// comes up (so it never gets a link-local address a box could talk to), and the host end
/// gets the gateway address. The daemon installed the user's rules before this: traffic
/// on the link is policed from its first packet.
fn host_net(net: &NetSpec, boxed: &File) -> Step {
    let mut nl = Netlink::open().step("veth")?;
    // A link of the same name is a leftover of this box's previous life (the kernel
    // destroys a namespace's links asynchronously): the box is not running, by the
    // precondition of Start.
    nl.delete_link(&net.host_interface).step("veth")?;
    nl.create_veth(
        &net.host_interface,
        "eth0",
        netlink::PeerNs::Fd(boxed.as_raw_fd()),
    )
    .step("veth")?;
    let v6 = PathBuf::from(format!(
        "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
        net.host_interface
    ));
    if v6.exists() {
        write_file(&v6, "1").step_at("veth", &v6)?;
    }
    let idx = netlink::index(&net.host_interface).step("veth")?;
    nl.add_address(idx, net.gateway, net.prefix).step("veth")?;
    nl.set_up(idx).step("veth")?;
    Ok(())
}

/// The box side, in the box's new network namespace: IPv6 off (boxes are IPv4 only; the
/// host drops anything else from them as well), loopback up, and `eth0` with the box's
/// address and a default route via the gateway.
fn box_net(net: Option<&NetSpec>) -> Step {
    // /proc is the host's mount, but /proc/sys/net shows the namespace of the process that
    // opens it: these are the box's own settings.
    for conf in ["all", "default"] {
        let p = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"));
        if p.exists() {
            write_file(&p, "1").step_at("network", &p)?;
        }
    }
    // Unprivileged ICMP echo sockets (`ping` without CAP_NET_RAW) for the user's group
    // (the range is in host gids: the user's gid is mapped to itself); the firewall
    // decides where echoes may go.
    let ping = Path::new("/proc/sys/net/ipv4/ping_group_range");
    if let Some(n) = net.filter(|_| ping.exists()) {
        let g = n.ping_gid;
        write_file(ping, &format!("{g} {g}")).step_at("network", ping)?;
    }
    let mut nl = Netlink::open().step("network")?;
    nl.set_up(netlink::index("lo").step("network")?)
        .step("network")?;
    if let Some(net) = net {
        let idx = netlink::index("eth0").step("network")?;
        nl.add_address(idx, net.address, net.prefix)
            .step("network")?;
        nl.set_up(idx).step("network")?;
        nl.add_default_route(net.gateway).step("network")?;
    }
    Ok(())
}

fn parent_side(spec: &StartSpec, pid: Pid, go: OwnedFd, status: OwnedFd) -> Step {
    if let Some(maps) = &spec.idmaps {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        write_file(&proc.join("uid_map"), &maps.uid_map).step("uid_map")?;
        write_file(&proc.join("gid_map"), &maps.gid_map).step("gid_map")?;
    }
    File::from(go).write_all(b"g").step("sync")?;
    let mut msg = String::new();
    File::from(status).read_to_string(&mut msg).step("sync")?;
    if msg.is_empty() {
        // The pipe closed on exec: init is running.
        if let Ok(WaitStatus::Exited(_, code)) =
            waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            return fail(
                "exec_init",
                format!("init exited at once with status {code}"),
            );
        }
        return Ok(());
    }
    let (step, message) = msg.split_once('\n').unwrap_or(("init", msg.as_str()));
    Err(StepError {
        step: step.to_string(),
        message: message.to_string(),
    })
}

fn exec(spec: &ExecSpec) -> Step<i32> {
    prctl::set_dumpable(false).step("dumpable")?;
    prctl::set_pdeathsig(Signal::SIGKILL).step("pdeathsig")?;
    if start_time(spec.pid) != Some(spec.start_time) {
        return fail("box", "the box's init is gone");
    }
    join_cgroup(&spec.cgroup_dirs)?;
    let proc = PathBuf::from(format!("/proc/{}/ns", spec.pid));
    // The network namespace first: it belongs to the host's user namespace (see
    // `enter_netns`), over which the helper has no capability once in the box's.
    let mut order = vec![("net", CloneFlags::CLONE_NEWNET)];
    if spec.userns {
        order.push(("user", CloneFlags::CLONE_NEWUSER));
    }
    order.extend([
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]);
    // Open all first: after entering the mount namespace, /proc is the box's.
    let mut fds = vec![];
    for (name, flag) in &order {
        let f = File::open(proc.join(name)).step_at("setns", &proc.join(name))?;
        fds.push((f, *flag));
    }
    if start_time(spec.pid) != Some(spec.start_time) {
        return fail("box", "the box's init is gone");
    }
    for (f, flag) in fds {
        setns(&f, flag).step("setns")?;
    }
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).step("pipe")?;
    // SAFETY: single-threaded process; the child only runs code that does not depend on
    // locks held by other threads (there are none).
    match unsafe { fork() }.step("fork")? {
        ForkResult::Child => {
            drop(err_r);
            let e = exec_child(spec);
            let (code, msg) = match e {
                ExecFailure::Setup(e) => (EXIT_SETUP_FAILED, e.to_string()),
                ExecFailure::NotFound(m) => (EXIT_NOT_FOUND, m),
                ExecFailure::CannotExec(m) => (EXIT_CANNOT_EXEC, m),
            };
            let mut w = File::from(err_w);
            let _ = w.write_all(msg.as_bytes());
            drop(w);
            // SAFETY: _exit skips destructors and atexit handlers of the forked copy.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut msg = String::new();
            let _ = File::from(err_r).read_to_string(&mut msg);
            if !msg.is_empty() {
                eprintln!("orchestratord: {msg}");
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => continue,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return fail("wait", e.to_string()),
                }
            }
        }
    }
}

enum ExecFailure {
    Setup(StepError),
    NotFound(String),
    CannotExec(String),
}

fn exec_child(spec: &ExecSpec) -> ExecFailure {
    let argv = match cstrings(spec.argv.iter().cloned()) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return ExecFailure::Setup(StepError {
                step: "argv".into(),
                message: "empty command".into(),
            })
        }
        Err(e) => return ExecFailure::Setup(e),
    };
    let env = match cstrings(spec.env.iter().map(|(k, v)| format!("{k}={v}"))) {
        Ok(e) => e,
        Err(e) => return ExecFailure::Setup(e),
    };
    if let Err(e) = exec_prepare(spec) {
        return ExecFailure::Setup(e);
    }
    if let Some(size) = spec.pty {
        if let Err(e) = pty_setup(size) {
            return ExecFailure::Setup(e);
        }
    }
    // execvpe searches PATH of this process's environment: use the command's own.
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let name = &spec.argv[0];
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            .collect()
    };
    let mut last = Errno::ENOENT;
    for c in candidates {
        let Ok(file) = CString::new(c.as_os_str().as_encoded_bytes().to_vec()) else {
            continue;
        };
        let err = nix::unistd::execve(&file, &argv, &env).unwrap_err();
        if err != Errno::ENOENT && err != Errno::ENOTDIR {
            last = err;
            if err != Errno::EACCES {
                break;
            }
        }
    }
    if last == Errno::ENOENT {
        ExecFailure::NotFound(format!("{name}: command not found"))
    } else {
        ExecFailure::CannotExec(format!("{name}: {last}"))
    }
}

/// The child's terminal: see the module docs. Runs as the user, after confinement.
fn pty_setup(size: super::spec::PtySize) -> Step {
    use std::os::fd::{AsFd, FromRawFd};
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .step("ptmx")?;
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(Errno::last()).step("ptmx");
    }
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    if unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(Errno::last()).step("ptmx");
    }
    nix::unistd::setsid().step("setsid")?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor or -1.
    let peer = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) };
    if peer < 0 {
        return Err(Errno::last()).step("pty_peer");
    }
    // SAFETY: peer is a fresh descriptor owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(peer) };
    // SAFETY: TIOCSCTTY takes an int by value; we are a session leader without one.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Errno::last()).step("controlling_tty");
    }
    let fds = [m];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"T")];
    nix::sys::socket::sendmsg::<()>(1, &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .step("send_pty")?;
    drop(master);
    for target in 0..3 {
        nix::unistd::dup2(slave.as_fd().as_raw_fd(), target).step("pty_stdio")?;
    }
    Ok(())
}

fn exec_prepare(spec: &ExecSpec) -> Step {
    cloexec_from_3()?;
    // The working directory, resolved inside the box (setns put us at its root) and
    // verified to be there (runc CVE-2024-21626: never a leaked host directory).
    if chdir(&spec.cwd).is_err() {
        chdir("/").step("cwd")?;
    }
    let cwd = nix::unistd::getcwd().step("cwd")?;
    if !cwd.is_absolute() || cwd.to_string_lossy().starts_with("(unreachable)") {
        return fail("cwd", "working directory is outside the box");
    }
    confine(&spec.process, spec.userns, true)
}
