//! Black-box tests of `orchestratorctl files` against the real daemon on a temporary state
//! directory (local homes), over the root-only Unix socket.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{text, Builder, Daemon, CTL};
use serde_json::Value;

const SMALL: &str = r#"
description = "small home"
persistence = "persistent"
rootfs = "rw"
files = "rw"
[limits]
memory = "1G"
cpu = 1
pids = 512
disk = "64M"
[network]
internet = false
lan = false
dns = "block"
"#;

/// The daemons of these tests (`orchd-files-*`): a 4M upload limit unless a test sets
/// another.
fn daemon() -> Builder {
    Daemon::builder("files").upload_limit("4M")
}

impl Daemon {
    fn start() -> Daemon {
        daemon().start()
    }

    /// Kills the daemon (with `private_mounts`, its homes go with its mount namespace)
    /// and waits for the loop device of `image` to detach.
    fn kill_and_await_detach(&mut self, image: &std::path::Path) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !loops_backed_by(image).is_empty() {
            assert!(
                Instant::now() < deadline,
                "loop device of {image:?} never went away"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon, waits for the loop device of `image` to detach and starts the
    /// daemon again.
    fn restart_detached(&mut self, image: &std::path::Path) {
        self.kill_and_await_detach(image);
        self.spawn();
    }
}

fn names(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_cli_puts_gets_lists_moves_and_removes_files() {
    let d = Daemon::start();
    d.add_user("alice", "member", "homelabber");
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let l = local.to_str().unwrap();

    let v = d.ctl_json(&["files", "mkdir", "alice", "-p", "docs/sub", "music"]);
    assert_eq!(v["created"].as_array().unwrap().len(), 2);
    let v = d.ctl_json(&["files", "put", "alice", l, "docs/data.bin"]);
    assert_eq!(v["size"], 3_000_000);
    let home = d.state_dir().join("homes/alice");
    assert_eq!(std::fs::read(home.join("docs/data.bin")).unwrap(), data);
    let uid = std::fs::metadata(home.join("docs/data.bin")).unwrap().uid();
    assert_ne!(uid, 0, "written as the user");

    // An existing name: an API error (409), exit 1; --overwrite replaces it.
    let out = d.ctl(&["files", "put", "alice", l, "docs/data.bin"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = d.ctl_in(
        &["files", "put", "alice", "-", "docs/data.bin", "--overwrite"],
        b"from stdin",
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = d.ctl(&["files", "get", "alice", "docs/data.bin", "-"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"from stdin");
    d.ctl_json(&["files", "put", "alice", l, "big.bin"]);
    let back = work.path().join("back.bin");
    let v = d.ctl_json(&["files", "get", "alice", "big.bin", back.to_str().unwrap()]);
    assert_eq!(v["bytes"], 3_000_000);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let v = d.ctl_json(&["files", "ls", "alice", "/"]);
    assert_eq!(names(&v), ["big.bin", "docs", "music"]);
    let out = d.ctl(&["files", "ls", "alice", "docs"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("TYPE"), "{table}");
    assert!(
        table.contains("data.bin") && table.contains("sub"),
        "{table}"
    );

    let v = d.ctl_json(&["files", "mv", "alice", "big.bin", "docs/data.bin", "music"]);
    assert_eq!(v["moved"].as_array().unwrap().len(), 2);
    assert_eq!(
        names(&d.ctl_json(&["files", "ls", "alice", "music"])),
        ["big.bin", "data.bin"]
    );

    // Exit codes: 4 for a missing file, 1 for a non-empty directory, 2 for usage.
    let out = d.ctl(&["files", "get", "alice", "nope", "-"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = d.ctl(&["files", "rm", "alice", "music"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = d.ctl(&["files", "mv", "alice", "onlyone"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = d.ctl(&["files", "ls", "bob", "/"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // Over the upload limit (4M): 413, exit 1, nothing left behind.
    let huge = work.path().join("huge.bin");
    std::fs::write(&huge, vec![0u8; 5 * 1024 * 1024]).unwrap();
    let out = d.ctl(&["files", "put", "alice", huge.to_str().unwrap(), "huge.bin"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!home.join("huge.bin").exists());

    let v = d.ctl_json(&["files", "rm", "alice", "-r", "music", "docs"]);
    assert_eq!(v["deleted"].as_array().unwrap().len(), 2);
    assert!(names(&d.ctl_json(&["files", "ls", "alice", "/", "--all"])).is_empty());
    let audit = d.ctl_json(&["audit", "--action", "file.delete"]);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 3, "{audit}");
}

#[test]
fn the_cli_copies_a_directory_tree_whole_or_not_at_all() {
    let d = Daemon::start();
    d.add_user("carol", "member", "homelabber");
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let l = local.to_str().unwrap();
    d.ctl_json(&["files", "mkdir", "carol", "-p", "tree/sub"]);
    d.ctl_json(&["files", "put", "carol", l, "tree/sub/data.bin"]);
    let out = d.ctl_in(&["files", "put", "carol", "-", "tree/a.txt"], b"alpha");
    assert!(out.status.success(), "{}", text(&out));
    // A link out of the home and a FIFO, made the way a shell in the box would.
    let home = d.state_dir().join("homes/carol");
    let uid = std::fs::metadata(home.join("tree/a.txt")).unwrap().uid();
    std::os::unix::fs::symlink("/etc/passwd", home.join("tree/link")).unwrap();
    nix::unistd::mkfifo(
        &home.join("tree/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    for f in ["tree/link", "tree/fifo"] {
        std::os::unix::fs::lchown(home.join(f), Some(uid), Some(uid)).unwrap();
    }

    let out = d.ctl(&["files", "cp", "carol", "tree", "copy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(is_a_directory)"),
        "{}",
        text(&out)
    );
    let v = d.ctl_json(&["files", "cp", "carol", "-r", "tree", "copy"]);
    assert_eq!(v["copied"][0]["type"], "dir", "{v}");
    assert_eq!(std::fs::read(home.join("copy/sub/data.bin")).unwrap(), data);
    let out = d.ctl(&["files", "get", "carol", "copy/a.txt", "-"]);
    assert_eq!(out.stdout, b"alpha", "{}", text(&out));
    assert_eq!(
        std::fs::read_link(home.join("copy/link")).unwrap(),
        PathBuf::from("/etc/passwd"),
        "the link is copied as a link"
    );
    assert_eq!(
        names(&d.ctl_json(&["files", "ls", "carol", "copy"])),
        ["a.txt", "link", "sub"],
        "the FIFO is left out"
    );
    assert_eq!(
        std::fs::metadata(home.join("copy/sub/data.bin"))
            .unwrap()
            .uid(),
        uid,
        "copied as the user"
    );

    // Never over an existing name, never into itself.
    let out = d.ctl(&["files", "cp", "carol", "-r", "--overwrite", "tree", "copy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(file_exists)"));
    let out = d.ctl(&["files", "cp", "carol", "-r", "tree", "tree/sub/inner"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(into_itself)"));
    // Over the upload limit (4M) in total, though each file is under it: nothing stays.
    d.ctl_json(&["files", "put", "carol", l, "tree/sub/more.bin"]);
    let out = d.ctl(&["files", "cp", "carol", "-r", "tree", "big"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(upload_too_large)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        names(&d.ctl_json(&["files", "ls", "carol", "/", "--all"])),
        ["copy", "tree"]
    );
    let audit = d.ctl_json(&["audit", "--action", "file.copy"]);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 5, "{audit}");
}

/// Deterministic bytes (xorshift64), so a stream can be made twice without being kept.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Regression: `files put USER - REMOTE` read all of stdin into memory before sending it.
/// 64 MiB made on the fly go through a pipe and arrive whole, while the CLI's peak
/// resident memory (its own `ru_maxrss`, from `wait4`) stays far below that.
#[test]
#[allow(unsafe_code)]
fn put_from_stdin_streams_a_large_pipe_in_bounded_memory() {
    const MIB: usize = 1024 * 1024;
    const TOTAL: usize = 64 * MIB;
    let d = daemon().upload_limit("128M").start();
    d.add_user("dave", "member", "homelabber");
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    // Reaped by `wait4` below, which also reports its peak memory. If the test fails
    // before that, closing stdin (or the daemon going away with `d`) ends the CLI.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(CTL)
        .env_clear()
        .arg("--socket")
        .arg(d.socket())
        .args(["--json", "files", "put", "dave", "-", "big.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (mut noise, mut buf) = (Noise(seed), vec![0u8; MIB]);
    let mut sent = 0;
    while sent < TOTAL {
        noise.fill(&mut buf);
        if stdin.write_all(&buf).is_err() {
            break; // the CLI gave up: its stderr below says why
        }
        sent += MIB;
    }
    drop(stdin);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our own unwaited child; both pointers are to live locals for the
    // duration of the call. After it, `child` is not waited or killed again.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "{}", std::io::Error::last_os_error());
    let read_all = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        r.unwrap().read_to_string(&mut s).unwrap();
        s
    };
    let stdout = read_all(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let stderr = read_all(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}, sent {sent} bytes\nstdout: {stdout}\nstderr: {stderr}"
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["size"], TOTAL as u64, "{v}");

    let peak_kib = usage.ru_maxrss as usize; // Linux reports KiB
    assert!(
        peak_kib < 32 * 1024,
        "the CLI peaked at {peak_kib} KiB resident for a {TOTAL}-byte stream"
    );

    // The same bytes, in order.
    let mut stored = std::fs::File::open(d.state_dir().join("homes/dave/big.bin")).unwrap();
    assert_eq!(stored.metadata().unwrap().len(), TOTAL as u64);
    let (mut noise, mut want, mut got) = (Noise(seed), vec![0u8; MIB], vec![0u8; MIB]);
    for i in 0..TOTAL / MIB {
        noise.fill(&mut want);
        std::io::Read::read_exact(&mut stored, &mut got).unwrap();
        assert!(want == got, "MiB {i} differs");
    }
}

/// Loop devices whose backing file is `image` (from sysfs).
fn loops_backed_by(image: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap() {
        let e = e.unwrap();
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = std::fs::read_to_string(&backing) {
            if b.trim() == image.to_str().unwrap() {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn a_home_quota_image_stops_uploads_with_507_and_goes_away_with_the_daemon() {
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(profiles.path().join("small.toml"), SMALL).unwrap();
    let mut d = daemon()
        .top(&format!("profiles_dir = \"{}\"", profiles.path().display()))
        .tables("[homes]\nbackend = \"local\"\nquota = \"image\"\n")
        .private_mounts()
        .start();
    d.add_user("quser", "member", "small");
    let work = tempfile::tempdir().unwrap();
    let small = work.path().join("small.bin");
    std::fs::write(&small, vec![5u8; 1024 * 1024]).unwrap();
    d.ctl_json(&["files", "put", "quser", small.to_str().unwrap(), "keep.bin"]);
    let image = d.state_dir().join("homes/.images/quser.ext4");
    assert!(image.exists(), "the image was made");
    let pid = d.child.as_ref().unwrap().id();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let home = d.state_dir().join("homes/quser");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(home.to_str().unwrap()))
        .unwrap_or_else(|| panic!("home not mounted in the daemon's namespace:\n{mountinfo}"));
    assert!(line.contains(" ext4 "), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    // Fill the home with 3M pieces (under the 4M upload limit) until the quota answers.
    let piece = work.path().join("piece.bin");
    std::fs::write(&piece, vec![7u8; 3 * 1024 * 1024]).unwrap();
    let mut stored = 0;
    let full = loop {
        let out = d.ctl(&[
            "files",
            "put",
            "quser",
            piece.to_str().unwrap(),
            &format!("p{stored}"),
        ]);
        if !out.status.success() {
            break out;
        }
        stored += 1;
        assert!(stored < 40, "64M quota never filled after {stored} x 3M");
    };
    assert_eq!(full.status.code(), Some(1), "{}", text(&full));
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("insufficient_storage"),
        "{}",
        text(&full)
    );
    assert!(stored >= 15, "only {stored} x 3M fit in 64M");
    let listed = names(&d.ctl_json(&["files", "ls", "quser", "/", "--all"]));
    assert_eq!(
        listed.len(),
        stored + 1,
        "the refused upload left nothing: {listed:?}"
    );
    // The space of the refused upload was given back: a small file still fits after a
    // delete.
    d.ctl_json(&["files", "rm", "quser", "p0"]);
    d.ctl_json(&[
        "files",
        "put",
        "quser",
        small.to_str().unwrap(),
        "after.bin",
    ]);

    // The daemon's mount namespace dies with it; the loop device clears itself.
    assert_eq!(
        loops_backed_by(&image).len(),
        1,
        "one loop device while mounted"
    );
    d.kill_and_await_detach(&image);
}

/// The daemon's root has CAP_SYS_RESOURCE, which online ext4 growth needs.
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[test]
fn moving_a_user_to_a_profile_with_another_disk_limit_resizes_the_home_and_keeps_its_files() {
    const MIB: u64 = 1 << 20;
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(profiles.path().join("small.toml"), SMALL).unwrap();
    std::fs::write(
        profiles.path().join("big.toml"),
        SMALL.replace("disk = \"64M\"", "disk = \"128M\""),
    )
    .unwrap();
    let mut d = daemon()
        .top(&format!("profiles_dir = \"{}\"", profiles.path().display()))
        .tables("[homes]\nbackend = \"local\"\nquota = \"image\"\n")
        .private_mounts()
        .start();
    d.add_user("ruser", "member", "small");
    let work = tempfile::tempdir().unwrap();
    let keep = work.path().join("keep.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&keep, &data).unwrap();
    d.ctl_json(&["files", "put", "ruser", keep.to_str().unwrap(), "keep.bin"]);
    let image = d.state_dir().join("homes/.images/ruser.ext4");
    let home = |d: &Daemon| d.ctl_json(&["box", "status", "ruser"])["home"].clone();
    let intact = |d: &Daemon| {
        let out = d.ctl(&["files", "get", "ruser", "keep.bin", "-"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stdout == data, "keep.bin changed");
    };
    // Newest first: "outcome detail".
    let resizes = |d: &Daemon| -> Vec<String> {
        d.ctl_json(&["audit", "--action", "home.resize"])["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["outcome"].as_str().unwrap(),
                    e["detail"].as_str().unwrap()
                )
            })
            .collect()
    };
    let h = home(&d);
    assert_eq!(h["quotaBytes"], 64 * MIB, "{h}");
    assert!(h["sizeBytes"].as_u64().unwrap() < 64 * MIB, "{h}");
    assert!(h.get("detail").is_none(), "{h}");

    // Raised while mounted: grown online where the daemon may (CAP_SYS_RESOURCE), else
    // reported and done at the next mount. Either way the files stay and work goes on.
    d.ctl_json(&["user", "set", "ruser", "--profile", "big"]);
    intact(&d);
    let h = home(&d);
    assert_eq!(h["quotaBytes"], 128 * MIB, "{h}");
    if has_cap_sys_resource() {
        assert_eq!(resizes(&d), ["ok from 67108864 to 134217728 bytes"]);
        assert!(h["sizeBytes"].as_u64().unwrap() > 100 * MIB, "{h}");
        assert!(h.get("detail").is_none(), "{h}");
    } else {
        let r = resizes(&d);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("error quota 134217728: resize2fs"),
            "{r:?}"
        );
        assert!(h["sizeBytes"].as_u64().unwrap() < 64 * MIB, "{h}");
        let detail = h["detail"].as_str().unwrap();
        assert!(detail.contains("grow") && detail.contains("pending"), "{h}");
        d.restart_detached(&image);
        intact(&d);
        let r = resizes(&d);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0], "ok from 67108864 to 134217728 bytes");
        let h = home(&d);
        assert!(h["sizeBytes"].as_u64().unwrap() > 100 * MIB, "{h}");
        assert!(h.get("detail").is_none(), "{h}");
    }
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 128 * MIB);

    // Lowered while mounted: pending until the home is next mounted, then shrunk.
    d.ctl_json(&["user", "set", "ruser", "--profile", "small"]);
    intact(&d);
    let r = resizes(&d);
    assert!(
        r[0].starts_with("ok pending: 134217728 bytes kept"),
        "{r:?}"
    );
    let h = home(&d);
    assert!(h["sizeBytes"].as_u64().unwrap() > 100 * MIB, "{h}");
    let detail = h["detail"].as_str().unwrap();
    assert!(
        detail.contains("pending until the home is unmounted"),
        "{h}"
    );
    d.restart_detached(&image);
    intact(&d);
    assert_eq!(resizes(&d)[0], "ok from 134217728 to 67108864 bytes");
    let h = home(&d);
    assert_eq!(h["quotaBytes"], 64 * MIB, "{h}");
    assert!(h["sizeBytes"].as_u64().unwrap() < 64 * MIB, "{h}");
    assert!(h.get("detail").is_none(), "{h}");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 * MIB);

    d.kill_and_await_detach(&image);
}
