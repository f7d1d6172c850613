use std::process::Command;

use super::*;

const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const V1_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/1ea5
2:cpuacct:/
1:cpu:/
0::/
";

fn plan_limits() -> LimitsPlan {
    LimitsPlan {
        memory_bytes: 256 << 20,
        memory_swap_bytes: 512 << 20,
        cpu_quota_us: 50_000,
        cpu_period_us: 100_000,
        pids: 64,
        disk_bytes: 1 << 30,
        io_read_bps: Some(100 << 20),
        io_write_bps: None,
    }
}

#[test]
fn a_v1_host_uses_each_controller_under_the_daemons_own_cgroup() {
    let cg = Cgroups::discover(V1_MOUNTINFO, V1_SELF, "", "orch").unwrap();
    assert_eq!(cg.version(), Version::V1);
    let bases: Vec<_> = cg.bases().map(|p| p.display().to_string()).collect();
    assert_eq!(
        bases,
        [
            "/sys/fs/cgroup/cpu/orch",
            "/sys/fs/cgroup/cpuacct/orch",
            "/sys/fs/cgroup/memory/process_api/1ea5/orch",
            "/sys/fs/cgroup/pids/orch",
        ]
    );
}

#[test]
fn a_hybrid_host_whose_v2_mount_lacks_controllers_falls_back_to_v1() {
    let cg = Cgroups::discover(V1_MOUNTINFO, V1_SELF, "cpu", "orch").unwrap();
    assert_eq!(cg.version(), Version::V1);
}

#[test]
fn a_v2_host_uses_one_unified_directory_under_the_service_cgroup() {
    let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    let own = "0::/system.slice/orchestratord.service\n";
    let cg =
        Cgroups::discover(mountinfo, own, "cpuset cpu io memory hugetlb pids", "boxes").unwrap();
    assert_eq!(cg.version(), Version::V2);
    let bases: Vec<_> = cg.bases().map(|p| p.display().to_string()).collect();
    assert_eq!(
        bases,
        ["/sys/fs/cgroup/system.slice/orchestratord.service/boxes"]
    );
    // A cgroup namespace root that is not "/" is stripped from the path.
    let nsroot = "30 23 0:26 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let cg = Cgroups::discover(
        nsroot,
        "0::/system.slice/o.service\n",
        "cpu memory pids",
        "b",
    )
    .unwrap();
    assert_eq!(
        cg.bases().next().unwrap(),
        Path::new("/sys/fs/cgroup/o.service/b")
    );
}

#[test]
fn no_usable_hierarchy_and_bad_names_are_errors() {
    let none = "22 1 0:21 / /proc rw - proc proc rw\n";
    assert!(matches!(
        Cgroups::discover(none, "0::/\n", "", "orch"),
        Err(CgroupError::NoHierarchy(_))
    ));
    for bad in ["", "..", "a/b", "cgroup.procs", ".hidden", "a b"] {
        assert!(
            matches!(
                Cgroups::discover(V1_MOUNTINFO, V1_SELF, "", bad),
                Err(CgroupError::Name(_))
            ),
            "{bad:?}"
        );
        let cg = Cgroups::discover(V1_MOUNTINFO, V1_SELF, "", "orch").unwrap();
        assert!(
            matches!(cg.boxed(bad), Err(CgroupError::Name(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn limits_are_rendered_per_version_in_a_writable_order() {
    let l = plan_limits();
    let v2 = limit_files(Version::V2, &l, None);
    assert_eq!(
        v2,
        [
            ("unified", "memory.max", "268435456".to_string()),
            ("unified", "memory.swap.max", "268435456".to_string()),
            ("unified", "cpu.max", "50000 100000".to_string()),
            ("unified", "pids.max", "64".to_string()),
        ]
    );
    let v1 = limit_files(Version::V1, &l, None);
    let order: Vec<_> = v1.iter().map(|(_, f, _)| *f).collect();
    assert_eq!(
        order,
        [
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "pids.max"
        ]
    );
    assert_eq!(v1[1].2, "536870912");
}

#[test]
fn io_limits_name_the_device_and_leave_unset_directions_unlimited() {
    let l = plan_limits();
    let v2 = limit_files(Version::V2, &l, Some((254, 0)));
    assert_eq!(
        v2.last().unwrap(),
        &(
            "unified",
            "io.max",
            "254:0 rbps=104857600 wbps=max".to_string()
        )
    );
    let v1 = limit_files(Version::V1, &l, Some((8, 16)));
    assert_eq!(
        v1.last().unwrap(),
        &(
            "blkio",
            "blkio.throttle.read_bps_device",
            "8:16 104857600".to_string()
        )
    );
    assert!(!v1.iter().any(|(_, f, _)| f.contains("write_bps")));
    let unlimited = LimitsPlan {
        io_read_bps: None,
        ..plan_limits()
    };
    assert_eq!(
        limit_files(Version::V2, &unlimited, Some((8, 0))).len(),
        4,
        "no io.max without a limit"
    );
}

#[test]
fn a_v1_host_with_blkio_uses_it_only_with_a_device() {
    let mountinfo = format!(
        "{V1_MOUNTINFO}38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio\n"
    );
    let cg = Cgroups::discover(&mountinfo, V1_SELF, "", "orch").unwrap();
    assert!(cg
        .clone()
        .with_io_device(Some((8, 0)))
        .bases()
        .any(|b| b.starts_with("/sys/fs/cgroup/blkio")));
    assert!(!cg
        .with_io_device(None)
        .bases()
        .any(|b| b.starts_with("/sys/fs/cgroup/blkio")));
}

#[test]
fn create_writes_the_limits_into_a_temporary_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mountinfo: String = ["cpu", "cpuacct", "memory", "pids"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{} 1 0:{} / {}/{c} rw - cgroup cgroup rw,{c}\n",
                40 + i,
                40 + i,
                root.display()
            )
        })
        .collect();
    let cg = Cgroups::discover(&mountinfo, "0::/\n", "", "orch").unwrap();
    let b = cg.create("box-alice", &plan_limits()).unwrap();
    let read = |p: PathBuf| fs::read_to_string(p).unwrap();
    assert_eq!(
        read(root.join("memory/orch/box-alice/memory.limit_in_bytes")),
        "268435456"
    );
    assert_eq!(
        read(root.join("cpu/orch/box-alice/cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(read(root.join("pids/orch/box-alice/pids.max")), "64");
    assert!(
        !root
            .join("memory/orch/box-alice/memory.memsw.limit_in_bytes")
            .exists(),
        "no memsw without swap accounting"
    );
    assert!(b.exists());
    assert_eq!(cg.list().unwrap(), ["box-alice"]);
    // Creating it again fails (one box, one cgroup), and the existing one is untouched.
    assert!(matches!(
        cg.create("box-alice", &plan_limits()),
        Err(CgroupError::Create { .. })
    ));
}

/// A child process that is killed and reaped when the test ends, also on failure (an
/// unreaped zombie would keep its cgroup busy).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real subtree under this process's own cgroups, removed on drop (also on failure).
struct RealSubtree {
    cgroups: Cgroups,
}

impl Drop for RealSubtree {
    fn drop(&mut self) {
        for name in self.cgroups.list().unwrap_or_default() {
            if let Ok(b) = self.cgroups.boxed(&name) {
                let _ = b.remove(Duration::from_secs(5));
            }
        }
        for base in self.cgroups.bases() {
            let _ = fs::remove_dir(base);
        }
    }
}

fn real_subtree() -> Option<RealSubtree> {
    if !nix::unistd::Uid::effective().is_root() {
        crate::testing::skip("cgroup", "not running as root");
        return None;
    }
    let name = format!(
        "orchd-test-{}-{}",
        std::process::id(),
        crate::testing::unique()
    );
    Some(RealSubtree {
        cgroups: Cgroups::detect(&name).unwrap(),
    })
}

#[test]
fn a_real_box_cgroup_enforces_limits_reports_usage_and_is_removed_with_its_processes() {
    let Some(sub) = real_subtree() else { return };
    let b = sub.cgroups.create("box-test", &plan_limits()).unwrap();
    let file = match sub.cgroups.version() {
        Version::V1 => "memory.limit_in_bytes",
        Version::V2 => "memory.max",
    };
    let mem_dir = b
        .dirs()
        .find(|d| d.join(file).exists())
        .unwrap()
        .to_path_buf();
    assert_eq!(
        fs::read_to_string(mem_dir.join(file)).unwrap().trim(),
        "268435456"
    );

    let mut child = ChildGuard(Command::new("sleep").arg("600").spawn().unwrap());
    b.add(child.0.id()).unwrap();
    assert_eq!(b.pids().unwrap(), [child.0.id()]);
    assert_eq!(b.usage().unwrap().pids, 1);

    b.kill_all(Duration::from_secs(5)).unwrap();
    let status = child.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the box's process was killed");
    b.remove(Duration::from_secs(5)).unwrap();
    assert!(!b.exists(), "cgroup directories left behind");
    b.remove(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_real_box_cgroup_gets_the_io_limits_of_its_plan_on_the_state_disk() {
    let Some(sub) = real_subtree() else { return };
    // The test's temporary directory stands for the state directory.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let Some(dev) = block_device(tmp.path()) else {
        crate::testing::skip("io", "the temporary directory is on no block device");
        return;
    };
    let cgroups = sub.cgroups.clone().with_io_device(Some(dev));
    let b = cgroups.create("box-io", &plan_limits()).unwrap();
    let (major, minor) = dev;
    let (file, want) = match cgroups.version() {
        Version::V1 => (
            "blkio.throttle.read_bps_device",
            format!("{major}:{minor} 104857600"),
        ),
        Version::V2 => ("io.max", format!("{major}:{minor} rbps=104857600 wbps=max")),
    };
    let dir = b.dirs().find(|d| d.join(file).exists());
    let Some(dir) = dir else {
        crate::testing::skip("io", "the kernel offers no io controller to this cgroup");
        return;
    };
    let text = fs::read_to_string(dir.join(file)).unwrap();
    assert!(
        text.lines().any(|l| l.trim().starts_with(&want)),
        "{file}: {text:?}, want {want:?}"
    );
    b.remove(Duration::from_secs(5)).unwrap();
    assert!(!b.exists());
}

#[test]
fn the_pids_limit_stops_a_fork_loop_inside_the_box() {
    let Some(sub) = real_subtree() else { return };
    let mut limits = plan_limits();
    limits.pids = 16;
    let b = sub.cgroups.create("box-forks", &limits).unwrap();
    // perl (Essential on Debian) keeps going when fork fails, unlike dash. It waits for a
    // line on stdin so it is inside the box before it forks; children drop stdout so the
    // pipe closes when the parent is done.
    let script = r#"
        $| = 1; <STDIN>; my $ok = 0;
        for (1..40) {
            my $p = fork();
            next unless defined $p;
            if ($p == 0) { close STDOUT; sleep 600; exit 0 }
            $ok++;
        }
        print "started $ok\n"; close STDOUT; sleep 600;
    "#;
    let mut child = ChildGuard(
        Command::new("perl")
            .args(["-e", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    b.add(child.0.id()).unwrap();
    use std::io::{BufRead, Write};
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: usize = line
        .trim()
        .strip_prefix("started ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..40).contains(&started),
        "{started} of 40 forks succeeded under pids.max=16"
    );
    let n = b.pids().unwrap().len();
    assert!(n <= 16, "{n} processes in a box limited to 16");
    b.kill_all(Duration::from_secs(5)).unwrap();
    let _ = child.0.wait();
    b.remove(Duration::from_secs(5)).unwrap();
    assert!(!b.exists());
}

#[test]
fn on_v2_the_daemon_moves_into_a_leaf_before_enabling_controllers_for_its_subtree() {
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path().join("orchestratord.service");
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("cgroup.subtree_control"), "").unwrap();
    Cgroups::delegate_v2(&own, 4242, "+memory +pids +cpu").unwrap();
    assert_eq!(
        fs::read_to_string(own.join("daemon/cgroup.procs")).unwrap(),
        "4242"
    );
    assert_eq!(
        fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
        "+memory +pids +cpu"
    );
    // Already delegated: nothing moves.
    fs::write(own.join("cgroup.subtree_control"), "cpu memory pids").unwrap();
    fs::write(own.join("daemon/cgroup.procs"), "").unwrap();
    Cgroups::delegate_v2(&own, 7, "+memory +pids +cpu").unwrap();
    assert_eq!(
        fs::read_to_string(own.join("daemon/cgroup.procs")).unwrap(),
        ""
    );
}
