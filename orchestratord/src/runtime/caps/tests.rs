use std::process::Command;

use super::*;

/// The capability lines of a `/proc/<pid>/status` text, as (name, mask).
fn cap_lines(status: &str) -> Vec<(String, u64)> {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap").then(|| {
                (
                    k.to_string(),
                    u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX),
                )
            })
        })
        .collect()
}

#[test]
fn policy_capabilities_map_to_kernel_capabilities() {
    let keep = to_set(&[
        "NET_BIND_SERVICE".parse().unwrap(),
        "CHOWN".parse().unwrap(),
    ])
    .unwrap();
    assert_eq!(keep.len(), 2);
    assert!(keep.contains(&caps::Capability::CAP_NET_BIND_SERVICE));
    assert!(to_set(&[]).unwrap().is_empty());
}

/// Runs inside the re-executed child: drops to `keep`, prints this process's capability
/// lines, then those of a program it executes.
fn probe(keep: &[&str]) {
    let keep: Vec<policy::caps::Capability> = keep.iter().map(|c| c.parse().unwrap()).collect();
    let keep = to_set(&keep).unwrap();
    restrict_bounding(&keep).unwrap();
    set_process(&keep).unwrap();
    // Capabilities are per thread: read this thread's, not the main thread's.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for (k, v) in cap_lines(&own) {
        println!("self.{k}={v:x}");
    }
    let child = Command::new("cat")
        .arg("/proc/self/status")
        .output()
        .unwrap();
    for (k, v) in cap_lines(&String::from_utf8_lossy(&child.stdout)) {
        println!("exec.{k}={v:x}");
    }
}

fn run_probe(test: &str, keep: &str) -> Vec<(String, String)> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("ORCHD_CAPS_PROBE", keep)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<(String, String)> = stdout
        .split_whitespace()
        .filter_map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .filter(|(k, _)| k.starts_with("self.") || k.starts_with("exec."))
        .collect();
    assert_eq!(
        lines.len(),
        10,
        "probe output:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        crate::testing::skip("caps", "not running as root");
        false
    }
}

#[test]
fn a_box_process_ends_with_every_capability_set_empty_even_as_root() {
    const NAME: &str =
        "runtime::caps::tests::a_box_process_ends_with_every_capability_set_empty_even_as_root";
    if std::env::var_os("ORCHD_CAPS_PROBE").is_some() {
        return probe(&[]);
    }
    if !require_root() {
        return;
    }
    for (k, v) in run_probe(NAME, "") {
        // Root's exec would normally regain the full set; the empty bounding set forbids it.
        assert_eq!(v, "0", "{k} is not empty");
    }
}

#[test]
fn a_granted_capability_is_all_that_survives_exec() {
    const NAME: &str = "runtime::caps::tests::a_granted_capability_is_all_that_survives_exec";
    if std::env::var_os("ORCHD_CAPS_PROBE").is_some() {
        return probe(&["NET_BIND_SERVICE"]);
    }
    if !require_root() {
        return;
    }
    let bind = format!("{:x}", 1u64 << 10);
    for (k, v) in run_probe(NAME, "NET_BIND_SERVICE") {
        assert_eq!(v, bind, "{k}");
    }
}
