//! The box probe (`orchestratord-probe`) run on the host, as root, outside any box: its
//! report must be complete and agree with what the test process sees itself, and its
//! helper modes must behave as the box tests expect.

// Signals to the fork bomb's process group go through libc.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_orchestratord-probe");

/// Every key of the "syscalls" object (iopl and ioperm exist on x86_64 only).
const SYSCALL_KEYS: &[&str] = &[
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "setns",
    "unshare_newns",
    "unshare_newuser",
    "clone_newns",
    "clone3",
    "personality_bad",
    "personality_query",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "reboot",
    "swapon",
    "acct",
    #[cfg(target_arch = "x86_64")]
    "iopl",
    #[cfg(target_arch = "x86_64")]
    "ioperm",
    "socket_alg",
    "socket_vsock",
    "socket_inet",
    "socket_raw",
    "tiocsti",
    "tiocsti_high",
    "chroot",
    "ptrace_attach",
    "kill_init",
    "sethostname",
    "mknod",
];

fn probe(args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(PROBE);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    cmd.output().expect("run orchestratord-probe")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "probe failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("utf-8 output")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The report of a probe run with `home` as $HOME and `cwd` as working directory.
fn report(home: &Path, cwd: &Path) -> Value {
    let out = probe(&[], |c| {
        c.env("HOME", home)
            .env("ORCHESTRATORD_PROBE_TEST_SECRET", "value-must-not-leak")
            .current_dir(cwd);
    });
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "exactly one line of JSON: {lines:?}");
    assert!(
        !lines[0].contains("value-must-not-leak"),
        "environment values must not be reported"
    );
    serde_json::from_str(&lines[0]).expect("the report is JSON")
}

fn is_outcome(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s == "ok"
            || s.strip_prefix("errno:")
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
    })
}

#[test]
fn host_report_shows_root_with_capabilities_and_no_seccomp_filter() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let r = report(home.path(), cwd.path());

    for id in ["uid", "euid", "suid", "fsuid", "gid", "egid"] {
        assert_eq!(
            r[id], 0,
            "{id} of a probe run as root (CI runs the tests as root)"
        );
    }
    assert!(r["groups"].is_array(), "{}", r["groups"]);
    let eff = r["caps"]["eff"].as_u64().expect("caps.eff is a number");
    assert_ne!(eff, 0, "root on the host has effective capabilities");
    assert!(
        r["caps"]["bnd"].as_u64().unwrap() & eff == eff,
        "effective within bounding"
    );
    for set in ["inh", "prm", "amb"] {
        assert!(r["caps"][set].is_u64(), "caps.{set}: {}", r["caps"][set]);
    }
    assert_eq!(r["seccomp"], 0, "no filter on the host");
    assert!(r["no_new_privs"].is_u64());

    let syscalls = r["syscalls"].as_object().expect("syscalls object");
    for key in SYSCALL_KEYS {
        let v = syscalls
            .get(*key)
            .unwrap_or_else(|| panic!("syscalls.{key} missing"));
        assert!(is_outcome(v), "syscalls.{key} = {v}");
    }
    assert_eq!(syscalls.len(), SYSCALL_KEYS.len(), "{syscalls:?}");
    // Root outside a box: these are allowed, and prove the child and raw-clone probes
    // decode their results.
    for key in [
        "socket_inet",
        "kill_init",
        "personality_query",
        "unshare_newns",
        "clone_newns",
        "personality_bad",
        "chroot",
    ] {
        assert_eq!(syscalls[key], "ok", "syscalls.{key}");
    }
    // A call the filter lets through fails on its own bogus argument, never with EPERM.
    assert_eq!(syscalls["reboot"], format!("errno:{}", libc::EINVAL));
    assert_eq!(syscalls["pivot_root"], format!("errno:{}", libc::ENOENT));

    let mounts = r["mounts"].as_array().expect("mounts array");
    assert!(
        mounts.iter().any(|m| m["target"] == "/"),
        "a root mount: {mounts:?}"
    );
    for m in mounts {
        for f in ["target", "fstype", "source", "options", "super_options"] {
            assert!(m[f].is_string(), "{f} in {m}");
        }
    }

    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(r["namespaces"]["mnt"], own_mnt.to_str().unwrap());
    assert_eq!(
        r["namespaces"].as_object().unwrap().len(),
        9,
        "{}",
        r["namespaces"]
    );

    // Nothing is masked on the host.
    let interrupts = &r["masked"]["/proc/interrupts"];
    assert_eq!(interrupts["exists"], true);
    assert!(
        interrupts["readable_bytes"].as_u64().unwrap() > 0,
        "{interrupts}"
    );
    assert_eq!(r["masked"].as_object().unwrap().len(), 12);

    let home_str = home.path().to_str().unwrap();
    assert_eq!(r["home"], home_str);
    assert_eq!(r["read_only"][home_str], "ok");
    assert_eq!(r["read_only"]["/tmp"], "ok");
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        0,
        "the write check leaves nothing in $HOME"
    );
    assert_eq!(
        r["home_mount"],
        Value::Null,
        "a temporary directory is no mount"
    );

    assert!(r["dev"].as_array().unwrap().iter().any(|d| d == "null"));
    assert!(r["dev_pts"].is_array());
    assert!(!r["cgroup"].as_str().unwrap().is_empty(), "{}", r["cgroup"]);
    assert!(r["cgroup_limits"].is_object());

    let pid = r["pid"].as_u64().unwrap();
    assert_eq!(
        r["ppid"],
        u64::from(std::process::id()),
        "the test spawned it"
    );
    let pids: Vec<u64> = r["pids_visible"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(pids.contains(&pid) && pids.contains(&1), "{pids:?}");
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(r["pid1_comm"].is_string());

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(r["hostname"], hostname.trim_end());
    assert_eq!(
        r["cwd"],
        cwd.path().canonicalize().unwrap().to_str().unwrap()
    );
    let env: Vec<&str> = r["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"ORCHESTRATORD_PROBE_TEST_SECRET") && env.contains(&"HOME"));
    let fds: Vec<u64> = r["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(fds.get(..3), Some(&[0, 1, 2][..]), "stdio first: {fds:?}");
}

#[test]
fn home_mount_is_the_mount_on_top_of_home() {
    let cwd = tempfile::tempdir().unwrap();
    let r = report(Path::new("/proc"), cwd.path());
    assert_eq!(r["home_mount"]["target"], "/proc");
    assert_eq!(r["home_mount"]["fstype"], "proc", "{}", r["home_mount"]);
}

#[test]
fn kill_mode_reports_ok_or_the_errno() {
    let me = std::process::id().to_string();
    assert_eq!(stdout_lines(&probe(&["kill", &me, "0"], |_| {})), ["ok"]);
    // No process has the highest pid number.
    let none = i32::MAX.to_string();
    assert_eq!(
        stdout_lines(&probe(&["kill", &none, "0"], |_| {})),
        [format!("errno:{}", libc::ESRCH)]
    );
}

#[test]
fn hog_mode_reports_each_mebibyte_and_the_end() {
    let lines = stdout_lines(&probe(&["hog", "3"], |_| {}));
    assert_eq!(
        lines,
        [
            r#"{"mib":1}"#,
            r#"{"mib":2}"#,
            r#"{"mib":3}"#,
            r#"{"done":true,"hog_mib":3}"#
        ]
    );
}

/// Kills the whole process group of a fork bomb, also when an assertion fails.
struct GroupGuard(libc::pid_t);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: kill has no memory arguments; the group is the one the test created.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn fork_bomb_mode_stops_at_its_limit_and_leaves_paused_children() {
    let child = Command::new(PROBE)
        .args(["fork-bomb", "3"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = GroupGuard(child.id() as libc::pid_t);
    // Returns only when every holder of the pipes has closed them: the children must have
    // closed their stdio.
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout_lines(&out), [r#"{"errno":null,"forks":3}"#]);
    // SAFETY: signal 0 only checks that the group still has members.
    let alive = unsafe { libc::kill(-group.0, 0) };
    assert_eq!(alive, 0, "the paused children outlive the parent");
}

#[test]
fn unknown_mode_is_a_usage_error_and_sleep_zero_is_silent() {
    let out = probe(&["no-such-mode"], |_| {});
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    assert!(stdout_lines(&probe(&["sleep", "0"], |_| {})).is_empty());
}
