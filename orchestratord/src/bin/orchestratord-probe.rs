//! orchestratord-probe: run inside a box by the black-box tests, it prints one JSON object
//! on stdout describing what a process there sees (ids, capabilities, seccomp mode,
//! namespaces, mounts, masked and read-only paths, /dev, cgroup limits, visible pids) and
//! how the kernel answers a list of syscalls a box must not be able to use (youki's
//! runtimetest and crun's tests/init.c play the same part).
//!
//! The probe never stops at a refused call: every probe records its outcome, `"ok"` or
//! `"errno:N"`. The arguments are chosen so that a call the filter lets through still
//! changes nothing on the host when the probe runs there as root: the permission check
//! comes first in the kernel and the call then fails on a bogus argument (a wrong reboot
//! magic, a path that cannot exist, a null pointer), or it acts on an object the probe
//! created and closes again (a socket, an fs context), or it runs in a forked child that
//! exits at once (unshare, personality, ptrace). So `"errno:1"` (EPERM) is a refusal, by
//! the seccomp filter or by the kernel's permission check; `"errno:38"` (ENOSYS) is the
//! filter's answer to clone3 or a kernel built without the call; any other errno means the
//! call got past both and failed on its harmless argument (the comment at each call says
//! which errno that is).
//!
//! Modes, for tests that need a helper inside a box:
//! - no arguments: the JSON report;
//! - `sleep SECS`: sleeps;
//! - `fork-bomb [MAX]`: forks until the first failure (or MAX forks), each child closing
//!   its stdio and pausing, then prints `{"forks": N, "errno": E}` and exits 0 without
//!   waiting for the children;
//! - `hog MIB`: allocates and touches MIB mebibytes, 1 MiB at a time, printing
//!   `{"mib": N}` after each and `{"hog_mib": N, "done": true}` at the end (exit 1 with
//!   `{"hog_mib": N, "error": ...}` if an allocation is refused, e.g. by RLIMIT_AS);
//! - `kill PID SIG`: prints the result of kill(PID, SIG) as `ok` or `errno:N`.
//!
//! Single-threaded on purpose: the children forked by the probes only make raw syscalls
//! and `_exit`.

// The probes are raw syscalls; every unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{json, Map, Value};

#[path = "probe/net.rs"]
mod net;

/// A path that cannot exist (procfs has no such entry), for calls that must fail after
/// their permission check.
const NO_PATH: &CStr = c"/proc/self/orchestratord-probe-nonexistent";
/// A key description nobody uses.
const NO_KEY: &CStr = c"orchestratord-probe-nonexistent";

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Checked for writability; `$HOME` is added under its own path.
const WRITE_CHECKED: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys/kernel/hostname",
    "/proc/sysrq-trigger",
    "/sys/kernel",
    "/sys/fs/cgroup",
    "/",
    "/usr",
    "/etc/passwd",
    "/tmp",
    "/dev/shm",
];

const NAMESPACES: &[&str] = &[
    "cgroup",
    "ipc",
    "mnt",
    "net",
    "pid",
    "pid_for_children",
    "time",
    "user",
    "uts",
];

const CGROUP_LIMITS: &[&str] = &[
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/pids.max",
    "/sys/fs/cgroup/cpu.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    "/sys/fs/cgroup/pids/pids.max",
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
];

const MIB: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match args.as_slice() {
        [] => emit(&report().to_string()),
        ["sleep", secs] => match secs.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                std::thread::sleep(std::time::Duration::from_secs_f64(s));
                0
            }
            _ => usage(&format!("sleep: not a number of seconds: {secs:?}")),
        },
        ["fork-bomb"] => fork_bomb(None),
        ["fork-bomb", max] => match max.parse() {
            Ok(m) => fork_bomb(Some(m)),
            Err(_) => usage(&format!("fork-bomb: not a count: {max:?}")),
        },
        ["hog", mib] => match mib.parse() {
            Ok(m) => hog(m),
            Err(_) => usage(&format!("hog: not a number of MiB: {mib:?}")),
        },
        ["kill", pid, sig] => match (pid.parse::<libc::pid_t>(), sig.parse::<libc::c_int>()) {
            (Ok(pid), Ok(sig)) => {
                // SAFETY: kill has no memory arguments.
                let rc = unsafe { libc::kill(pid, sig) };
                emit(&outcome(rc.into()))
            }
            _ => usage(&format!("kill: not a pid and a signal: {pid:?} {sig:?}")),
        },
        ["net-serve", specs @ ..] => net::serve(specs),
        ["net-check", rest @ ..] => net::check(rest),
        _ => usage(&format!("unknown arguments: {args:?}")),
    };
    std::process::exit(code);
}

fn usage(problem: &str) -> i32 {
    eprintln!(
        "orchestratord-probe: {problem}\n\
         usage: orchestratord-probe [sleep SECS | fork-bomb [MAX] | hog MIB | kill PID SIG |\n                net-serve SPEC... | net-check [--from ADDR] [--timeout MS] SPEC...]"
    );
    2
}

/// Prints one line on stdout; exit code 1 if stdout is gone.
fn emit(line: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("orchestratord-probe: cannot write to stdout: {e}");
            1
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `"ok"` or `"errno:N"` for the return value of a raw syscall, read right after it.
fn outcome(ret: libc::c_long) -> String {
    if ret == -1 {
        format!("errno:{}", errno())
    } else {
        "ok".to_string()
    }
}

fn io_outcome(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("errno:{n}"),
        None => e.to_string(),
    }
}

/// Like [`outcome`] for a call that returns a new descriptor, which is then closed.
fn fd_outcome(ret: libc::c_long) -> String {
    let o = outcome(ret);
    if ret >= 0 {
        close(ret as libc::c_int);
    }
    o
}

fn close(fd: libc::c_int) {
    // SAFETY: closes a descriptor this probe opened and no Rust object owns.
    unsafe { libc::close(fd) };
}

/// A raw syscall with at most six word-sized arguments (missing ones are passed as 0;
/// the kernel ignores what a call does not take).
///
/// # Safety
/// Every argument the kernel treats as a pointer must be null, invalid on purpose (the
/// kernel then fails with EFAULT), or point to live memory of the size and type the
/// syscall expects, writable where the syscall writes.
unsafe fn raw(nr: libc::c_long, args: &[usize]) -> libc::c_long {
    let mut a = [0usize; 6];
    a[..args.len()].copy_from_slice(args);
    // SAFETY: the caller vouches for the pointer arguments.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// A C int (fd, dirfd, key serial) as a syscall word; the kernel truncates it back.
fn int(v: libc::c_int) -> usize {
    v as isize as usize
}

fn ptr<T: ?Sized>(p: *const T) -> usize {
    p.cast::<u8>() as usize
}

/// For buffers the kernel writes to.
fn ptr_mut<T: ?Sized>(p: *mut T) -> usize {
    p.cast::<u8>() as usize
}

/// Waits for `pid`, retrying on EINTR; the wait status or `None`.
fn wait(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a live c_int the kernel writes to.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc == pid {
            return Some(status);
        }
        if rc == -1 && errno() != libc::EINTR {
            return None;
        }
    }
}

/// The outcome a child reported through its exit status (0 = ok, N = errno N).
fn status_outcome(status: Option<libc::c_int>) -> String {
    match status {
        None => "wait-failed".to_string(),
        Some(s) if libc::WIFEXITED(s) => match libc::WEXITSTATUS(s) {
            0 => "ok".to_string(),
            n => format!("errno:{n}"),
        },
        Some(s) if libc::WIFSIGNALED(s) => format!("signal:{}", libc::WTERMSIG(s)),
        Some(s) => format!("status:{s}"),
    }
}

/// Runs `call` in a forked child, for calls that would change the probe itself
/// (namespaces, personality, tracing): the child exits right after with 0 or the errno.
fn in_child(call: impl FnOnce() -> libc::c_long) -> String {
    // SAFETY: the probe is single-threaded, so the child is a complete copy; it only makes
    // the raw syscall, reads errno and calls _exit (no allocation, no unwinding, no
    // buffered output to flush twice).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => format!("fork-failed:errno:{}", errno()),
        0 => {
            let code = if call() == -1 {
                errno().clamp(1, 255)
            } else {
                0
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        child => status_outcome(wait(child)),
    }
}

// ---------------------------------------------------------------------------------------
// The report

fn report() -> Value {
    // First, before the probe opens anything else.
    let fds = open_fds();
    let status = read_string("/proc/self/status");
    let thread_status =
        read_string("/proc/thread-self/status").or_else(|| read_string("/proc/self/status"));
    let status = status.as_deref().unwrap_or("");
    let thread_status = thread_status.as_deref().unwrap_or("");

    let mut r = Map::new();
    let uid = ids(status, "Uid");
    let gid = ids(status, "Gid");
    for (i, name) in ["uid", "euid", "suid", "fsuid"].into_iter().enumerate() {
        r.insert(name.into(), json!(uid.map(|v| v[i])));
    }
    for (i, name) in ["gid", "egid", "sgid", "fsgid"].into_iter().enumerate() {
        r.insert(name.into(), json!(gid.map(|v| v[i])));
    }
    r.insert("groups".into(), json!(groups(status)));
    let mut caps = Map::new();
    for (key, line) in [
        ("inh", "CapInh"),
        ("prm", "CapPrm"),
        ("eff", "CapEff"),
        ("bnd", "CapBnd"),
        ("amb", "CapAmb"),
    ] {
        caps.insert(key.into(), json!(hex_field(thread_status, line)));
    }
    r.insert("caps".into(), Value::Object(caps));
    r.insert(
        "no_new_privs".into(),
        json!(number_field(thread_status, "NoNewPrivs")),
    );
    r.insert(
        "seccomp".into(),
        json!(number_field(thread_status, "Seccomp")),
    );

    let (syscalls, tiocsti_fd) = syscalls();
    r.insert("syscalls".into(), Value::Object(syscalls));
    r.insert("tiocsti_fd".into(), json!(tiocsti_fd));

    let mut ns = Map::new();
    for name in NAMESPACES {
        let link = fs::read_link(format!("/proc/self/ns/{name}"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned());
        ns.insert((*name).into(), json!(link));
    }
    r.insert("namespaces".into(), Value::Object(ns));

    let mounts: Vec<Mount> = read_string("/proc/self/mountinfo")
        .map(|t| t.lines().filter_map(Mount::parse).collect())
        .unwrap_or_default();
    let home = std::env::var("HOME").ok();
    // The last entry for a target is the one on top (later mounts shadow earlier ones).
    let home_mount = home
        .as_deref()
        .and_then(|h| mounts.iter().rev().find(|m| m.target == h))
        .map(Mount::to_json);
    r.insert(
        "mounts".into(),
        Value::Array(mounts.iter().map(Mount::to_json).collect()),
    );

    let mut masked = Map::new();
    for path in MASKED {
        masked.insert((*path).into(), masked_entry(Path::new(path)));
    }
    r.insert("masked".into(), Value::Object(masked));

    let mut read_only = Map::new();
    for path in WRITE_CHECKED {
        read_only.insert((*path).into(), json!(write_probe(Path::new(path))));
    }
    if let Some(h) = &home {
        read_only.insert(h.clone(), json!(write_probe(Path::new(h))));
    }
    r.insert("read_only".into(), Value::Object(read_only));

    r.insert("dev".into(), json!(dir_names("/dev")));
    r.insert("dev_pts".into(), json!(dir_names("/dev/pts")));
    r.insert(
        "ptmx_link".into(),
        json!(fs::read_link("/dev/ptmx")
            .ok()
            .map(|l| l.to_string_lossy().into_owned())),
    );

    r.insert("cgroup".into(), json!(read_string("/proc/self/cgroup")));
    let mut limits = Map::new();
    for path in CGROUP_LIMITS {
        if let Some(v) = read_string(path) {
            limits.insert((*path).into(), json!(v.trim_end()));
        }
    }
    r.insert("cgroup_limits".into(), Value::Object(limits));

    r.insert("pid".into(), json!(std::process::id()));
    r.insert("ppid".into(), json!(std::os::unix::process::parent_id()));
    r.insert("pids_visible".into(), json!(visible_pids()));
    r.insert(
        "pid1_comm".into(),
        json!(read_string("/proc/1/comm").map(|c| c.trim_end().to_string())),
    );

    r.insert("hostname".into(), json!(nodename().map(|n| lossy(&n))));
    r.insert(
        "cwd".into(),
        json!(std::env::current_dir()
            .ok()
            .map(|p| p.to_string_lossy().into_owned())),
    );
    let mut env: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    env.sort();
    r.insert("env".into(), json!(env));
    r.insert("fds".into(), json!(fds));
    r.insert("home".into(), json!(home));
    r.insert("home_mount".into(), home_mount.unwrap_or(Value::Null));
    Value::Object(r)
}

fn read_string(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Open descriptors from /proc/self/fd, without the one that listed the directory.
fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return Vec::new(),
    };
    // The directory's descriptor is closed now: keep only what is still open.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1);
    fds.sort_unstable();
    fds
}

fn dir_names(path: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(path)
        .ok()?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Some(names)
}

fn visible_pids() -> Vec<u64> {
    let mut pids: Vec<u64> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The node name from uname(2).
fn nodename() -> Option<Vec<u8>> {
    // SAFETY: utsname is plain old data; all zeroes is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a live utsname for the kernel to fill.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    Some(
        u.nodename
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// /proc/self/status

/// The value of a `Key:` line of /proc/<pid>/status, trimmed.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then_some(v.trim())
    })
}

/// Real, effective, saved and filesystem ids of a `Uid:` or `Gid:` line.
fn ids(status: &str, key: &str) -> Option<[u64; 4]> {
    let mut it = status_field(status, key)?.split_ascii_whitespace();
    let mut out = [0; 4];
    for v in &mut out {
        *v = it.next()?.parse().ok()?;
    }
    Some(out)
}

fn groups(status: &str) -> Option<Vec<u64>> {
    status_field(status, "Groups")?
        .split_ascii_whitespace()
        .map(|g| g.parse().ok())
        .collect()
}

fn hex_field(status: &str, key: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, key)?, 16).ok()
}

fn number_field(status: &str, key: &str) -> Option<u64> {
    status_field(status, key)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// /proc/self/mountinfo

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    target: String,
    fstype: String,
    source: String,
    options: String,
    super_options: String,
}

impl Mount {
    /// One line of mountinfo (proc(5)): `id parent major:minor root target options
    /// [optional fields...] - fstype source super_options`. Paths are octal-escaped.
    fn parse(line: &str) -> Option<Mount> {
        let mut fields = line.split(' ');
        let target = fields.nth(4)?;
        let options = fields.next()?;
        // Optional fields (shared:N, master:N, ...) up to the separator.
        fields.by_ref().find(|f| *f == "-")?;
        let fstype = fields.next()?;
        let source = fields.next()?;
        let super_options = fields.next()?;
        Some(Mount {
            target: unescape(target),
            fstype: unescape(fstype),
            source: unescape(source),
            options: options.to_string(),
            super_options: super_options.to_string(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "fstype": self.fstype,
            "source": self.source,
            "options": self.options,
            "super_options": self.super_options,
        })
    }
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash) in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c))
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    lossy(&out)
}

// ---------------------------------------------------------------------------------------
// Masked and read-only paths

/// What a masked path looks like: masked files are /dev/null (0 bytes), masked
/// directories an empty tmpfs (0 entries).
fn masked_entry(path: &Path) -> Value {
    let mut exists = true;
    let mut is_dir = false;
    let mut readable_bytes = None;
    let mut entries = None;
    let mut error = None;
    match fs::metadata(path) {
        Err(e) => {
            exists = !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR));
            error = Some(io_outcome(&e));
        }
        Ok(m) if m.is_dir() => {
            is_dir = true;
            match fs::read_dir(path) {
                Ok(d) => entries = Some(d.count()),
                Err(e) => error = Some(io_outcome(&e)),
            }
        }
        Ok(_) => match read_prefix(path, 4096) {
            Ok(n) => readable_bytes = Some(n),
            Err(e) => error = Some(io_outcome(&e)),
        },
    }
    json!({
        "exists": exists,
        "readable_bytes": readable_bytes,
        "error": error,
        "is_dir": is_dir,
        "entries": entries,
    })
}

/// How many bytes of the file can be read, up to `limit`. Non-blocking, so a FIFO or a
/// device cannot hang the probe.
fn read_prefix(path: &Path, limit: usize) -> std::io::Result<usize> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let mut buf = vec![0u8; limit];
    let mut n = 0;
    while n < limit {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Keep what was read before a later error.
            Err(_) if n > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether `path` can be written: files are opened O_WRONLY (no truncation, nothing
/// written); in a directory a file is created and removed.
fn write_probe(path: &Path) -> String {
    match fs::metadata(path) {
        Err(e) => io_outcome(&e),
        Ok(m) if m.is_dir() => dir_write_probe(path),
        Ok(_) => match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
        {
            Ok(_) => "ok".to_string(),
            Err(e) => io_outcome(&e),
        },
    }
}

/// Creates a file in `dir`: an unnamed O_TMPFILE where the filesystem has them (it never
/// shows up in the directory), otherwise a uniquely named file that is removed at once.
fn dir_write_probe(dir: &Path) -> String {
    let tmpfile = fs::OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(_) => return "ok".to_string(),
        // EOPNOTSUPP: no O_TMPFILE on this filesystem; EISDIR: a kernel without O_TMPFILE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
        Err(e) => return io_outcome(&e),
    }
    let name = dir.join(format!(".orchestratord-probe-{}", unique_suffix()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)
    {
        Ok(_) => {
            let _ = fs::remove_file(&name);
            "ok".to_string()
        }
        Err(e) => io_outcome(&e),
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------
// Syscalls

/// perf_event_attr up to PERF_ATTR_SIZE_VER0 (64 bytes), which every kernel accepts.
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit field: disabled (bit 0), exclude_kernel (bit 5), exclude_hv (bit 6), ...
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// What a probed call returns: a plain result, or a new descriptor to close again.
#[derive(Clone, Copy)]
enum Ret {
    Plain,
    Fd,
}

/// How the kernel answers each probed syscall, and which descriptor TIOCSTI was tried on.
fn syscalls() -> (Map<String, Value>, &'static str) {
    use libc::*;
    use Ret::{Fd, Plain};

    // Buffers some calls read or fill in; they outlive every call below.
    let perf_attr = PerfEventAttr {
        type_: 1, // PERF_TYPE_SOFTWARE
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: 9, // PERF_COUNT_SW_DUMMY
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: 1 | 1 << 5 | 1 << 6, // disabled, exclude_kernel, exclude_hv
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    // struct io_uring_params is 120 bytes; all zeroes asks for nothing special.
    let mut uring_params = [0u64; 15];
    // struct mount_attr (set, clear, propagation, userns_fd): all zeroes changes nothing.
    let mount_attr = [0u64; 4];
    // SAFETY: timex is plain old data; all zeroes is a valid value.
    let mut tx: timex = unsafe { std::mem::zeroed() };
    tx.modes = ADJ_TICK;
    tx.tick = 0;
    // Joining the UTS namespace the probe is already in is a real permission check that
    // changes nothing.
    let uts = fs::File::open("/proc/self/ns/uts");
    let uts_fd = uts.as_ref().map_or(-1, |f| f.as_raw_fd());
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY | O_NONBLOCK)
        .open("/dev/tty");
    let (tty_fd, tiocsti_fd) = match &tty {
        Ok(f) => (f.as_raw_fd(), "/dev/tty"),
        Err(_) => (0, "stdin"),
    };
    let host = nodename().unwrap_or_default();
    let cwd = int(AT_FDCWD);

    #[rustfmt::skip]
    let calls: &[(&str, c_long, &[usize], Ret)] = &[
        // Keyrings are not namespaced. The thread keyring without create: ENOKEY.
        ("keyctl", SYS_keyctl, &[0, int(-1), 0], Plain),
        // Keyring id 0 is invalid: EINVAL before anything is created.
        ("add_key", SYS_add_key, &[ptr(c"user"), ptr(c"orchestratord-probe"), 0, 0, 0], Plain),
        // No such key and no callout: ENOKEY.
        ("request_key", SYS_request_key, &[ptr(c"user"), ptr(NO_KEY), 0, 0], Plain),
        // BPF_MAP_CREATE with an empty attribute (map type 0): EINVAL.
        ("bpf", SYS_bpf, &[0, 0, 0], Plain),
        // A disabled software dummy counter on this process, user space only.
        ("perf_event_open", SYS_perf_event_open, &[ptr(&perf_attr), 0, int(-1), int(-1), 0], Fd),
        ("userfaultfd", SYS_userfaultfd, &[(O_CLOEXEC | O_NONBLOCK) as usize], Fd),
        ("io_uring_setup", SYS_io_uring_setup, &[1, ptr_mut(uring_params.as_mut_ptr())], Fd),
        // More segments than KEXEC_SEGMENT_MAX: EINVAL after the permission check (zero
        // segments would unload a loaded crash kernel).
        ("kexec_load", SYS_kexec_load, &[0, 1024, 0, 0], Plain),
        // An empty image: ENOEXEC after the permission check.
        ("init_module", SYS_init_module, &[0, 0, ptr(c"")], Plain),
        ("finit_module", SYS_finit_module, &[int(-1), ptr(c""), 0], Plain),
        ("delete_module", SYS_delete_module, &[ptr(c"orchestratord_probe_none"), O_NONBLOCK as usize], Plain),
        // The mount family fails on a path that cannot exist or a bad descriptor after the
        // permission check, or is a no-op.
        ("mount", SYS_mount, &[ptr(NO_PATH), ptr(c"/"), 0, MS_BIND as usize, 0], Plain),
        // /proc/<pid> is never a mount root: EINVAL.
        ("umount2", SYS_umount2, &[ptr(c"/proc/self"), 0], Plain),
        // A tmpfs context that is never configured or mounted (FSOPEN_CLOEXEC).
        ("fsopen", SYS_fsopen, &[ptr(c"tmpfs"), 1], Fd),
        ("fsmount", SYS_fsmount, &[int(-1), 1, 0], Plain),
        ("move_mount", SYS_move_mount, &[cwd, ptr(NO_PATH), cwd, ptr(NO_PATH), 0], Plain),
        // OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC: cloning is what needs privilege (a plain
        // open_tree is an O_PATH open).
        ("open_tree", SYS_open_tree, &[cwd, ptr(NO_PATH), 1 | O_CLOEXEC as usize], Fd),
        ("mount_setattr", SYS_mount_setattr, &[cwd, ptr(c"/"), 0, ptr(&mount_attr), 32], Plain),
        ("pivot_root", SYS_pivot_root, &[ptr(NO_PATH), ptr(NO_PATH)], Plain),
        ("setns", SYS_setns, &[int(uts_fd), CLONE_NEWUTS as usize], Plain),
        // A null clone_args of size 0: EINVAL when the call is reachable (a box: ENOSYS).
        ("clone3", SYS_clone3, &[0, 0], Plain),
        ("personality_query", SYS_personality, &[0xffff_ffff], Plain),
        // settimeofday(NULL, NULL) checks CAP_SYS_TIME and sets nothing.
        ("settimeofday", SYS_settimeofday, &[0, 0], Plain),
        // clock_settime reads its argument before any permission check, so a null time
        // (EFAULT) is the only harmless one: EFAULT means the call got past the filter.
        ("clock_settime", SYS_clock_settime, &[CLOCK_REALTIME as usize, 0], Plain),
        // ADJ_TICK with tick 0: CAP_SYS_TIME, then the kernel's range check fails (EINVAL),
        // so the clock is never touched (ADJ_OFFSET would change the PLL state).
        ("adjtimex", SYS_adjtimex, &[ptr_mut(&mut tx)], Plain),
        // LINUX_REBOOT_MAGIC1 with a wrong second magic: EINVAL after CAP_SYS_BOOT.
        ("reboot", SYS_reboot, &[0xfee1_dead, 0, 0, 0], Plain),
        // A null path: EFAULT after CAP_SYS_ADMIN.
        ("swapon", SYS_swapon, &[0, 0], Plain),
        // An empty path: ENOENT after CAP_SYS_PACCT (a null path would switch process
        // accounting off on the host).
        ("acct", SYS_acct, &[ptr(c"")], Plain),
        // Level 0 never raises the I/O privilege level; an empty port range grants nothing.
        #[cfg(target_arch = "x86_64")]
        ("iopl", SYS_iopl, &[0], Plain),
        #[cfg(target_arch = "x86_64")]
        ("ioperm", SYS_ioperm, &[0, 0, 0], Plain),
        ("socket_alg", SYS_socket, &[38, int(SOCK_SEQPACKET | SOCK_CLOEXEC), 0], Fd),
        ("socket_vsock", SYS_socket, &[40, int(SOCK_STREAM | SOCK_CLOEXEC), 0], Fd),
        ("socket_inet", SYS_socket, &[int(AF_INET), int(SOCK_STREAM | SOCK_CLOEXEC), 0], Fd),
        ("socket_raw", SYS_socket, &[int(AF_INET), int(SOCK_RAW | SOCK_CLOEXEC), int(IPPROTO_ICMP)], Fd),
        // TIOCSTI with a null character pointer: the kernel checks that the caller may push
        // into that terminal, then fails to read the character (EFAULT), so nothing is ever
        // injected into a real terminal. The high variant is the sign-extension bypass (the
        // kernel truncates the request to 32 bits; a filter must too).
        ("tiocsti", SYS_ioctl, &[int(tty_fd), 0x5412, 0], Plain),
        ("tiocsti_high", SYS_ioctl, &[int(tty_fd), 0xffff_ffff_0000_5412, 0], Plain),
        // chroot("/") resolves to the current root: nothing changes even when allowed.
        ("chroot", SYS_chroot, &[ptr(c"/")], Plain),
        // Signal 0: only the permission check.
        ("kill_init", SYS_kill, &[1, 0], Plain),
        // The current name again.
        ("sethostname", SYS_sethostname, &[ptr(host.as_ptr()), host.len()], Plain),
    ];
    // Calls that would change the probe itself, made in a child that exits right after.
    // PTRACE_SEIZE goes through the same permission check as PTRACE_ATTACH but never stops
    // pid 1 (on the host that is init); the child's exit detaches.
    #[rustfmt::skip]
    let in_children: &[(&str, c_long, &[usize])] = &[
        ("unshare_newns", SYS_unshare, &[CLONE_NEWNS as usize]),
        ("unshare_newuser", SYS_unshare, &[CLONE_NEWUSER as usize]),
        ("personality_bad", SYS_personality, &[0x0040000]), // ADDR_NO_RANDOMIZE
        ("ptrace_attach", SYS_ptrace, &[PTRACE_SEIZE as usize, 1, 0, 0]),
    ];

    let mut m = Map::new();
    for &(name, nr, args, ret) in calls {
        // SAFETY: every pointer argument in the table is null, a NUL-terminated static
        // string, or a live local of the type and size the call expects (perf_attr,
        // uring_params, mount_attr, tx, host), writable where the kernel writes.
        let rc = unsafe { raw(nr, args) };
        let o = match ret {
            Plain => outcome(rc),
            Fd => fd_outcome(rc),
        };
        m.insert(name.into(), Value::String(o));
    }
    for &(name, nr, args) in in_children {
        // SAFETY: scalar arguments only.
        let o = in_child(|| unsafe { raw(nr, args) });
        m.insert(name.into(), Value::String(o));
    }
    m.insert("clone_newns".into(), Value::String(clone_newns()));
    m.insert("mknod".into(), Value::String(mknod_probe()));
    drop((uts, tty));
    (m, tiocsti_fd)
}

/// clone(CLONE_NEWNS | SIGCHLD) as a raw syscall, which libc's wrappers do not offer.
fn clone_newns() -> String {
    let flags = (libc::CLONE_NEWNS | libc::SIGCHLD) as usize;
    // SAFETY: without CLONE_VM the child runs on a copy-on-write copy of this
    // single-threaded process (like fork) and calls only _exit; null stack and tid
    // pointers mean "same stack" and "no tid writes".
    let ret = unsafe { raw(libc::SYS_clone, &[flags]) };
    if ret == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let o = outcome(ret);
    if ret > 0 {
        wait(ret as libc::pid_t);
    }
    o
}

/// mknod of the char device 1:3 (/dev/null's numbers) in /tmp, removed if it worked.
fn mknod_probe() -> String {
    let path = format!("/tmp/.orchestratord-probe-mknod-{}", unique_suffix());
    let path = std::ffi::CString::new(path).expect("no NUL in the path");
    let at = int(libc::AT_FDCWD);
    let mode = (libc::S_IFCHR | 0o600) as usize;
    let dev = libc::makedev(1, 3) as usize;
    // SAFETY: NUL-terminated path.
    let ret = unsafe { raw(libc::SYS_mknodat, &[at, ptr(path.as_ptr()), mode, dev]) };
    let o = outcome(ret);
    if ret == 0 {
        // SAFETY: NUL-terminated path.
        unsafe { raw(libc::SYS_unlinkat, &[at, ptr(path.as_ptr()), 0]) };
    }
    o
}

// ---------------------------------------------------------------------------------------
// Helper modes

/// Forks until the first failure (or `max` forks). Each child closes its stdio, so a
/// reader of the parent's output sees EOF when the parent exits, and pauses until killed.
fn fork_bomb(max: Option<u64>) -> i32 {
    let mut forks: u64 = 0;
    let mut failed = None;
    while max.is_none_or(|m| forks < m) {
        // SAFETY: single-threaded; the child only closes descriptors and pauses.
        match unsafe { libc::fork() } {
            -1 => {
                failed = Some(errno());
                break;
            }
            0 => {
                // SAFETY: closes the inherited stdio and sleeps until a signal ends it; no
                // Rust state is touched in the child.
                unsafe {
                    libc::close(0);
                    libc::close(1);
                    libc::close(2);
                    loop {
                        libc::pause();
                    }
                }
            }
            _ => forks += 1,
        }
    }
    emit(&json!({"forks": forks, "errno": failed}).to_string())
}

/// Allocates and touches `mib` MiB, 1 MiB at a time, reporting progress after each.
fn hog(mib: u64) -> i32 {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        let mut chunk = Vec::new();
        if chunks.try_reserve(1).is_err() || chunk.try_reserve_exact(MIB).is_err() {
            emit(&json!({"hog_mib": i - 1, "error": "allocation failed"}).to_string());
            return 1;
        }
        // Writing every byte makes the kernel back every page.
        chunk.resize(MIB, 0xa5);
        chunks.push(std::hint::black_box(chunk));
        if emit(&json!({"mib": i}).to_string()) != 0 {
            return 1;
        }
    }
    std::hint::black_box(&chunks);
    emit(&json!({"hog_mib": mib, "done": true}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tprobe\nUmask:\t0022\nState:\tR (running)\n\
        Uid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\n\
        FDSize:\t64\nGroups:\t4 24 27 \nNSpid:\t7\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
        Seccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn status_lines_give_all_four_ids_in_kernel_order() {
        assert_eq!(ids(STATUS, "Uid"), Some([1000, 1001, 1002, 1003]));
        assert_eq!(ids(STATUS, "Gid"), Some([2000, 2001, 2002, 2003]));
        assert_eq!(ids("Uid:\t1\t2\n", "Uid"), None, "short line");
        assert_eq!(ids(STATUS, "Xid"), None);
    }

    #[test]
    fn groups_are_parsed_and_may_be_empty() {
        assert_eq!(groups(STATUS), Some(vec![4, 24, 27]));
        assert_eq!(groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(groups("Groups:\t1 x\n"), None);
    }

    #[test]
    fn capability_lines_are_hex_and_prefixes_do_not_match() {
        assert_eq!(hex_field(STATUS, "CapPrm"), Some(0x1ff_ffff_ffff));
        assert_eq!(hex_field(STATUS, "CapInh"), Some(0));
        assert_eq!(number_field(STATUS, "NoNewPrivs"), Some(1));
        // "Seccomp" must not pick up the "Seccomp_filters" line, nor the reverse.
        assert_eq!(number_field(STATUS, "Seccomp"), Some(2));
        assert_eq!(
            number_field("Seccomp_filters:\t3\nSeccomp:\t0\n", "Seccomp"),
            Some(0)
        );
    }

    #[test]
    fn mountinfo_line_with_optional_fields_and_escapes() {
        let line = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:2 - \
                    ext3 /dev/root\\134x rw,errors=continue";
        assert_eq!(
            Mount::parse(line),
            Some(Mount {
                target: "/mnt/my disk".into(),
                fstype: "ext3".into(),
                source: "/dev/root\\x".into(),
                options: "rw,noatime".into(),
                super_options: "rw,errors=continue".into(),
            })
        );
    }

    #[test]
    fn mountinfo_line_without_optional_fields() {
        let line = "25 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw";
        let m = Mount::parse(line).unwrap();
        assert_eq!(
            (m.target.as_str(), m.fstype.as_str(), m.source.as_str()),
            ("/proc", "proc", "proc")
        );
        assert_eq!(m.options, "rw,nosuid,nodev,noexec,relatime");
        assert_eq!(m.super_options, "rw");
    }

    #[test]
    fn truncated_mountinfo_lines_are_rejected() {
        assert_eq!(Mount::parse(""), None);
        assert_eq!(Mount::parse("25 1 0:22 / /proc rw shared:1"), None);
        assert_eq!(Mount::parse("25 1 0:22 / /proc rw - proc"), None);
    }

    #[test]
    fn unescape_leaves_stray_backslashes_alone() {
        assert_eq!(unescape("a\\011b\\012c"), "a\tb\nc");
        assert_eq!(unescape("a\\9xy\\"), "a\\9xy\\");
        assert_eq!(unescape("\\04"), "\\04");
    }

    #[test]
    fn child_exit_status_becomes_an_outcome() {
        assert_eq!(status_outcome(Some(0)), "ok");
        assert_eq!(status_outcome(Some(1 << 8)), "errno:1");
        assert_eq!(status_outcome(Some(22 << 8)), "errno:22");
        assert_eq!(status_outcome(Some(9)), "signal:9");
        assert_eq!(status_outcome(None), "wait-failed");
    }

    #[test]
    fn raw_outcome_reports_the_errno_of_a_failed_call() {
        // SAFETY: close of a descriptor that cannot be open has no effect.
        let ret = unsafe { raw(libc::SYS_close, &[int(-1)]) };
        assert_eq!(outcome(ret), format!("errno:{}", libc::EBADF));
        // SAFETY: getpid has no arguments.
        let ret = unsafe { raw(libc::SYS_getpid, &[]) };
        assert_eq!(outcome(ret), "ok");
    }

    #[test]
    fn write_probe_leaves_no_trace_and_reports_the_errno_of_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_probe(dir.path()), "ok");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe leaves nothing behind"
        );
        let file = dir.path().join("f");
        fs::write(&file, "keep").unwrap();
        assert_eq!(write_probe(&file), "ok");
        assert_eq!(fs::read_to_string(&file).unwrap(), "keep", "no truncation");
        assert_eq!(
            write_probe(&dir.path().join("missing")),
            format!("errno:{}", libc::ENOENT)
        );
    }

    #[test]
    fn masked_entry_counts_bytes_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, vec![7u8; 5000]).unwrap();
        let f = masked_entry(&file);
        assert_eq!(f["exists"], true);
        assert_eq!(f["is_dir"], false);
        assert_eq!(f["readable_bytes"], 4096, "{f}");
        assert_eq!(f["entries"], Value::Null);
        let d = masked_entry(dir.path());
        assert_eq!(
            (d["is_dir"].clone(), d["entries"].clone()),
            (json!(true), json!(1))
        );
        let missing = masked_entry(&dir.path().join("nope"));
        assert_eq!(missing["exists"], false);
        assert_eq!(missing["error"], format!("errno:{}", libc::ENOENT));
        assert_eq!(masked_entry(Path::new("/dev/null"))["readable_bytes"], 0);
    }
}
