//! The box runtime against the real kernel, as root: boxes started through
//! `runtime::boxes` with the built helper and init, commands run in them through the exec
//! helper. Every box lives under a cgroup subtree and a state directory unique to the test
//! run, removed on drop, also when an assertion fails.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use orchestratord::runtime::boxes::{Binaries, BoxRuntime, Command, ExecRequest, Outcome, Running};
use orchestratord::runtime::cgroup::{Cgroups, Version};
use orchestratord::runtime::seccomp::{self, Compiled};
use policy::plan::{BoxPlan, PlanUser};
use policy::seccomp::{box_filter, Arch};
use policy::{Config, ProfileSet, Role};

const HELPER: &str = env!("CARGO_BIN_EXE_orchestratord-helper");
const PROBE: &str = env!("CARGO_BIN_EXE_orchestratord-probe");

struct Lab {
    dir: tempfile::TempDir,
    rt: BoxRuntime,
    cgroups: Cgroups,
    boxes: Vec<(BoxPlan, Option<Running>)>,
}

impl Lab {
    fn new() -> Lab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "box tests run as root (scripts/test runs them as root)"
        );
        orchestratord::runtime::boxes::become_subreaper().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("orchd-box-")
            .tempdir()
            .unwrap();
        let subtree = format!(
            "orchd-boxtest-{}-{}",
            std::process::id(),
            orchestratord::testing::unique()
        );
        let cgroups = Cgroups::detect(&subtree).unwrap();
        // As the daemon finds them: the static builds when scripts/build-static made them.
        let bins = Binaries::beside(Path::new(HELPER));
        let rt = BoxRuntime::new(bins, cgroups.clone(), dir.path().join("state"));
        Lab {
            dir,
            rt,
            cgroups,
            boxes: vec![],
        }
    }

    fn plan(&self, login: &str, profile: &str, role: Role, slot: u32) -> BoxPlan {
        self.plan_with(login, profile, role, slot, policy::config::Image::Host)
    }

    fn plan_with(
        &self,
        login: &str,
        profile: &str,
        role: Role,
        slot: u32,
        image: policy::config::Image,
    ) -> BoxPlan {
        let mut config = Config {
            state_dir: self.dir.path().join("state"),
            ..Default::default()
        };
        config.boxes.image = image;
        let user = PlanUser {
            name: login.parse().unwrap(),
            uid: 20_000 + slot,
            gid: 20_000 + slot,
            role,
            disabled: false,
            slot,
            services: BTreeSet::new(),
        };
        let set = ProfileSet::builtin();
        policy::plan::compile(&config, &user, set.get(profile).unwrap(), &[]).unwrap()
    }

    fn seccomp(plan: &BoxPlan) -> Compiled {
        seccomp::compile(&box_filter(Arch::native().unwrap(), &plan.seccomp)).unwrap()
    }

    /// Starts a box and returns its index.
    fn start(&mut self, plan: BoxPlan) -> usize {
        let compiled = Self::seccomp(&plan);
        let out = self.rt.run(Command::Start {
            plan: &plan,
            seccomp: &compiled,
        });
        let running = match out {
            Ok(Outcome::Started(r)) => r,
            other => {
                let log = std::fs::read_to_string(self.rt.paths(plan.user.as_str()).log)
                    .unwrap_or_default();
                panic!("start failed: {other:?}\nbox log:\n{log}");
            }
        };
        self.boxes.push((plan, Some(running)));
        self.boxes.len() - 1
    }

    fn exec(&self, i: usize, argv: &[&str]) -> Output {
        self.exec_with(i, argv, b"")
    }

    fn exec_with(&self, i: usize, argv: &[&str], input: &[u8]) -> Output {
        let (plan, running) = &self.boxes[i];
        let compiled = Self::seccomp(plan);
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (mut cmd, framed) = self
            .rt
            .exec_command(plan, running.as_ref().unwrap(), &compiled, &req)
            .unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&framed).unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Copies the probe into the box's home (owned by the user) and returns its path
    /// inside the box.
    fn install_probe(&self, i: usize) -> String {
        let plan = &self.boxes[i].0;
        let policy::plan::HomeSource::Local { path, .. } = &plan.home.source else {
            panic!("local homes only")
        };
        let dst = path.join("probe");
        if !dst.exists() {
            std::fs::copy(PROBE, &dst).unwrap();
        }
        std::os::unix::fs::chown(&dst, Some(plan.ids.user_uid), Some(plan.ids.user_gid)).unwrap();
        format!("{}/probe", plan.home.target.display())
    }

    /// Runs the probe in box `i` and parses its report.
    fn probe(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let path = self.install_probe(i);
        let mut argv = vec![path.as_str()];
        argv.extend_from_slice(args);
        let out = self.exec(i, &argv);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    fn stop(&mut self, i: usize) {
        let (plan, running) = &mut self.boxes[i];
        self.rt
            .run(Command::Stop {
                cgroup: &plan.cgroup,
                running: running.take(),
                grace: Duration::from_secs(2),
                home_mount: None,
            })
            .unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (plan, running) in &mut self.boxes {
            let _ = self.rt.run(Command::Stop {
                cgroup: &plan.cgroup,
                running: running.take(),
                grace: Duration::from_millis(100),
                home_mount: None,
            });
        }
        let _ = self.rt.run(Command::Sweep {
            known: &BTreeSet::new(),
        });
        for base in self.cgroups.bases() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_member_box_starts_runs_a_command_as_the_user_and_stops_without_residue() {
    let mut lab = Lab::new();
    let plan = lab.plan("alice", "homelabber", Role::Member, 1);
    let cg = plan.cgroup.clone();
    let i = lab.start(plan);
    let out = lab.exec(
        i,
        &["sh", "-c", "id -u; id -g; hostname; cat /etc/passwd; pwd"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "20001", "{stdout}");
    assert_eq!(lines[1], "20001");
    assert_eq!(lines[2], "alice");
    assert!(stdout.contains("alice:x:20001:20001"));
    assert_eq!(*lines.last().unwrap(), "/home/alice");

    let code = lab.exec(i, &["sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));
    let missing = lab.exec(i, &["no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing));

    lab.stop(i);
    let cgb = lab.cgroups.boxed(&cg).unwrap();
    assert!(!cgb.exists(), "cgroup left behind");
}

/// SECURITY.md "Inside a box", checked from inside with the probe.
/// The mode the helper falls back to when the kernel refuses user namespaces: the box
/// still has its other namespaces, and its user still gets no capability, no_new_privs and
/// the seccomp filter; init runs as nobody.
#[test]
fn without_a_user_namespace_a_box_still_confines_its_user() {
    let mut lab = Lab::new();
    lab.rt = lab.rt.clone().with_user_namespaces(false);
    let plan = lab.plan("nouserns", "homelabber", Role::Member, 3);
    let i = lab.start(plan);
    assert_eq!(lab.boxes[i].1.map(|r| r.userns), Some(false));
    let v = lab.probe(i, &[]);
    for k in ["uid", "euid", "fsuid", "gid", "egid"] {
        assert_eq!(v[k], 20003, "{k}");
    }
    for set in ["inh", "prm", "eff", "bnd", "amb"] {
        assert_eq!(v["caps"][set], 0, "cap set {set}");
    }
    assert_eq!(v["no_new_privs"], 1);
    assert_eq!(v["seccomp"], 2);
    let host_ns = |ns: &str| {
        std::fs::read_link(format!("/proc/self/ns/{ns}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(v["namespaces"]["user"], host_ns("user").as_str());
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "uts"] {
        assert_ne!(v["namespaces"][ns], host_ns(ns).as_str(), "{ns}");
    }
    assert_eq!(v["pids_visible"], serde_json::json!([1, 2]));
    let init = lab.boxes[i].1.unwrap().pid;
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "init runs as nobody: {uid_line}"
    );
    lab.stop(i);
}

#[test]
fn a_box_process_sees_exactly_the_security_baseline() {
    let mut lab = Lab::new();
    let plan = lab.plan("alice", "homelabber", Role::Member, 1);
    let memory = plan.limits.memory_bytes;
    let cgroup = plan.cgroup.clone();
    let i = lab.start(plan);
    let v = lab.probe(i, &[]);

    // Credentials: the user's own ids, nothing else.
    for k in [
        "uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid",
    ] {
        assert_eq!(v[k], 20001, "{k}");
    }
    assert_eq!(v["groups"], serde_json::json!([20001]));
    // Capabilities: every set empty; no_new_privs; a seccomp filter.
    for set in ["inh", "prm", "eff", "bnd", "amb"] {
        assert_eq!(v["caps"][set], 0, "cap set {set}");
    }
    assert_eq!(v["no_new_privs"], 1);
    assert_eq!(v["seccomp"], 2);

    // Forbidden syscalls fail with EPERM; clone3 answers ENOSYS so libc falls back.
    let sys = v["syscalls"].as_object().unwrap();
    for (name, outcome) in sys {
        let expected = match name.as_str() {
            "clone3" => "errno:38",
            "socket_inet" | "personality_query" => "ok",
            _ => "errno:1",
        };
        assert_eq!(outcome, expected, "syscall {name}");
    }
    assert!(sys.len() >= 40, "{sys:?}");

    // Every namespace but time differs from the host's.
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(v["namespaces"][ns], host.to_string_lossy().as_ref(), "{ns}");
    }
    // Only the box's own processes are visible: init and the probe.
    assert_eq!(v["pids_visible"], serde_json::json!([1, 2]));
    assert_eq!(v["pid1_comm"], "orchestratord-i");
    assert_eq!(v["hostname"], "alice");
    assert_eq!(v["fds"], serde_json::json!([0, 1, 2]));
    assert_eq!(
        v["env"],
        serde_json::json!(["HOME", "LANG", "LOGNAME", "PATH", "SHELL", "USER"])
    );

    // Mounts and their flags.
    let mounts = v["mounts"].as_array().unwrap();
    let find = |t: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m["target"] == t)
            .unwrap_or_else(|| panic!("no mount at {t}: {mounts:?}"))
    };
    let opts = |t: &str| find(t)["options"].as_str().unwrap().to_string();
    assert_eq!(find("/")["fstype"], "overlay");
    assert!(opts("/usr").starts_with("ro,") && opts("/usr").contains("nodev"));
    for t in ["/home/alice", "/tmp", "/dev/shm"] {
        assert!(
            opts(t).contains("nosuid") && opts(t).contains("nodev"),
            "{t}: {}",
            opts(t)
        );
    }
    assert_eq!(find("/sys")["fstype"], "sysfs");
    assert!(opts("/sys").starts_with("ro,"));
    assert_eq!(find("/dev/pts")["fstype"], "devpts");
    assert_eq!(find("/proc")["fstype"], "proc");
    for t in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"] {
        assert!(opts(t).starts_with("ro,"), "{t} is not read-only");
    }
    // No mount of the host's root, state directory or daemon binary is visible.
    for m in mounts {
        let t = m["target"].as_str().unwrap();
        assert!(!t.contains("orchd-box-") && !t.contains("target"), "{t}");
    }

    // Masked paths: present ones read as empty.
    for (path, m) in v["masked"].as_object().unwrap() {
        if m["exists"] == true {
            let empty = m["readable_bytes"] == 0
                || m["entries"] == 0
                || m["readable_bytes"].is_null() && m["entries"].is_null();
            assert!(empty, "{path} is not masked: {m}");
        }
    }
    // Read-only paths refuse writes; /tmp, /dev/shm and the home take them.
    let ro = &v["read_only"];
    for p in [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/sys/kernel",
        "/sys/fs/cgroup",
        "/usr",
    ] {
        assert_ne!(ro[p], "ok", "{p} is writable");
    }
    for p in ["/tmp", "/dev/shm", "/home/alice"] {
        assert_eq!(ro[p], "ok", "{p} is not writable");
    }
    // /dev holds exactly the minimal set, with its own devpts.
    assert_eq!(
        v["dev"],
        serde_json::json!([
            "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
            "stdout", "tty", "urandom", "zero"
        ])
    );
    assert_eq!(v["ptmx_link"], "pts/ptmx");
    assert_eq!(v["dev_pts"], serde_json::json!(["ptmx"]));

    // The process sits at the root of its own cgroup namespace, and the host's view of the
    // box cgroup holds the plan's memory limit.
    assert!(
        v["cgroup"]
            .as_str()
            .unwrap()
            .lines()
            .all(|l| l.ends_with(":/")),
        "{}",
        v["cgroup"]
    );
    let cg = lab.cgroups.boxed(&cgroup).unwrap();
    let mem_dir = cg
        .dirs()
        .find(|d| d.to_string_lossy().contains("memory") || lab.cgroups.version() == Version::V2)
        .unwrap()
        .to_path_buf();
    let limit_file = if lab.cgroups.version() == Version::V2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit: u64 = std::fs::read_to_string(mem_dir.join(limit_file))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(limit, memory);
}

/// A demo box: read-only root, no upper directory, nothing persists.
#[test]
fn a_demo_box_has_a_read_only_root() {
    let mut lab = Lab::new();
    let plan = lab.plan("visitor", "demo", Role::Demo, 2);
    let i = lab.start(plan);
    let out = lab.exec(
        i,
        &[
            "sh",
            "-c",
            "touch /etc/x; echo $?; touch /tmp/x && echo tmp-ok",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with('1'), "{}", text(&out));
    assert!(stdout.contains("tmp-ok"), "{}", text(&out));
    let v = lab.probe(i, &[]);
    let root = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["target"] == "/")
        .unwrap()
        .clone();
    assert!(
        root["options"].as_str().unwrap().starts_with("ro,"),
        "{root}"
    );
}

/// A persistent box keeps changes to its root across a restart; a reset wipes them.
#[test]
fn a_persistent_root_survives_a_restart_and_reset_wipes_it() {
    let mut lab = Lab::new();
    let plan = lab.plan("carol", "homelabber", Role::Member, 3);
    let i = lab.start(plan.clone());
    // Box-root is not available to the user; the home and /var/tmp are.
    let out = lab.exec(i, &["sh", "-c", "echo kept > /var/tmp/marker && echo ok"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        text(&out)
    );
    lab.stop(i);
    let j = lab.start(plan.clone());
    let out = lab.exec(j, &["cat", "/var/tmp/marker"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "{}",
        text(&out)
    );
    lab.stop(j);
    lab.rt.run(Command::Wipe { plan: &plan }).unwrap();
    let k = lab.start(plan);
    let out = lab.exec(k, &["cat", "/var/tmp/marker"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

/// A symlink planted in a persistent upper directory cannot redirect a mount.
#[test]
fn a_symlink_left_in_the_upper_directory_stops_the_start_with_a_named_step() {
    let mut lab = Lab::new();
    let plan = lab.plan("mallory", "homelabber", Role::Member, 4);
    let i = lab.start(plan.clone());
    lab.stop(i);
    let policy::plan::UpperPlan::Dir { upper, .. } = &plan.rootfs.upper else {
        panic!()
    };
    let _ = std::fs::remove_dir(upper.join("home").join("mallory"));
    std::fs::create_dir_all(upper.join("home")).unwrap();
    std::os::unix::fs::symlink("/etc", upper.join("home").join("mallory")).unwrap();
    let compiled = Lab::seccomp(&plan);
    let err = lab
        .rt
        .run(Command::Start {
            plan: &plan,
            seccomp: &compiled,
        })
        .unwrap_err();
    assert_eq!(err.step(), "mountpoint", "{err:?}");
    assert!(
        !lab.cgroups.boxed(&plan.cgroup).unwrap().exists(),
        "cgroup left after a failed start"
    );
}

/// A fork bomb and a memory hog hit their own box's limits; another box stays responsive,
/// and neither box can see or signal the other's processes.
#[test]
fn resource_bombs_are_contained_and_boxes_cannot_reach_each_other() {
    let mut lab = Lab::new();
    let a = lab.start(lab.plan("bomber", "demo", Role::Demo, 5));
    let b = lab.start(lab.plan("bystander", "demo", Role::Demo, 6));
    let pids_limit = lab.boxes[a].0.limits.pids as u64;

    let bomb = lab.probe(a, &["fork-bomb"]);
    let forks = bomb["forks"].as_u64().unwrap();
    assert!(forks < pids_limit, "forks {forks} >= pids.max {pids_limit}");
    assert_eq!(bomb["errno"], 11, "{bomb}");
    // The other box answers while the first is full of processes.
    let out = lab.exec(b, &["true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // 2 GiB in a 512 MiB box: the kernel kills the hog inside its own cgroup.
    let path = lab.install_probe(a);
    let hog = lab.exec(a, &[&path, "hog", "2048"]);
    assert_ne!(hog.status.code(), Some(0), "{}", text(&hog));
    assert!(!String::from_utf8_lossy(&hog.stdout).contains("\"done\":true"));
    let out = lab.exec(b, &["true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Box a's processes (as the host numbers them) do not exist for box b.
    let a_pids = lab.rt.pids(&lab.boxes[a].0.cgroup).unwrap();
    assert!(a_pids.len() > 2);
    let v = lab.probe(b, &[]);
    // Box a holds hundreds of processes after the fork bomb; box b sees only its init
    // and the probe (and a probe child at most).
    let seen = v["pids_visible"].as_array().unwrap();
    assert!(seen.len() <= 3 && seen[0] == 1, "box b sees {seen:?}");
    let probe_b = lab.install_probe(b);
    let target = a_pids.iter().max().unwrap().to_string();
    let out = lab.exec(b, &[&probe_b, "kill", &target, "9"]);
    let res = String::from_utf8_lossy(&out.stdout);
    assert!(
        res.trim() == "errno:3" || res.trim() == "errno:1",
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.rt.pids(&lab.boxes[a].0.cgroup).unwrap().len(),
        a_pids.len()
    );
}

/// A box on an image directory: a minimal root made of the host's dash and the libraries
/// it needs (what an unpacked debootstrap root would hold, in miniature).
#[test]
fn a_box_runs_on_an_image_directory_with_the_generated_etc_bound_over_its_own() {
    let mut lab = Lab::new();
    let image = lab.dir.path().join("image");
    for d in [
        "usr/bin", "etc", "proc", "sys", "dev", "tmp", "run", "home", "var/tmp",
    ] {
        std::fs::create_dir_all(image.join(d)).unwrap();
    }
    let libdir = std::fs::canonicalize("/lib/x86_64-linux-gnu")
        .or_else(|_| std::fs::canonicalize("/lib/aarch64-linux-gnu"))
        .unwrap();
    let rel = libdir.strip_prefix("/").unwrap();
    std::fs::create_dir_all(image.join(rel)).unwrap();
    std::fs::copy("/bin/dash", image.join("usr/bin/sh")).unwrap();
    for lib in std::fs::read_dir(&libdir).unwrap().flatten() {
        let name = lib.file_name().to_string_lossy().to_string();
        // dash needs libc; the box's init (dynamically linked, like any Rust program)
        // also needs libgcc_s, which every Debian or Ubuntu root has.
        if name.starts_with("libc.so")
            || name.starts_with("ld-linux")
            || name.starts_with("libgcc_s")
        {
            std::fs::copy(lib.path(), image.join(rel).join(&name)).unwrap();
        }
    }
    std::os::unix::fs::symlink("usr/bin", image.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", image.join("lib")).unwrap();
    if std::path::Path::new("/lib64").exists() {
        std::fs::create_dir_all(image.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", image.join("lib64")).unwrap();
        for l in std::fs::read_dir("/lib64").unwrap().flatten() {
            let target = std::fs::canonicalize(l.path()).unwrap();
            std::fs::copy(target, image.join("usr/lib64").join(l.file_name())).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        image.join("var/tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    std::fs::write(image.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::write(image.join("etc/image-marker"), "from the image\n").unwrap();

    let plan = lab.plan_with(
        "dora",
        "homelabber",
        Role::Member,
        7,
        policy::config::Image::Dir(image.clone()),
    );
    let i = lab.start(plan);
    let script =
        "read m < /etc/image-marker; echo $m; while read l; do echo $l; done < /etc/passwd; \
                  echo x > /var/tmp/w && echo wrote";
    let out = lab.exec(i, &["/bin/sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout.starts_with("from the image\n"), "{stdout}");
    assert!(
        stdout.contains("dora:x:20007:20007"),
        "generated passwd not bound: {stdout}"
    );
    assert!(stdout.contains("wrote"), "{stdout}");
    // The image itself is untouched: writes went to the box's upper directory.
    assert!(!image.join("var/tmp/w").exists());
    assert_eq!(
        std::fs::read_to_string(image.join("etc/passwd")).unwrap(),
        "root:x:0:0::/:/bin/sh\n"
    );
}
