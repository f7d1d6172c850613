//! cgroups for boxes, on cgroup v2 (a modern homelab host) and v1 (this CI machine).
//!
//! The daemon owns one subtree per hierarchy, `<its own cgroup>/<subtree>`, and never
//! touches anything outside it (DESIGN.md: under systemd, `Delegate=yes`). A box gets
//! `<subtree>/<box>` with the limits of its plan:
//!
//! | limit  | v2                                   | v1                                         |
//! |--------|--------------------------------------|--------------------------------------------|
//! | memory | `memory.max`, `memory.swap.max`      | `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (if swap accounting is on) |
//! | cpu    | `cpu.max` = `quota period`           | `cpu.cfs_period_us`, `cpu.cfs_quota_us`    |
//! | pids   | `pids.max`                           | `pids.max`                                 |
//! | io     | `io.max` = `MAJ:MIN rbps= wbps=`     | `blkio.throttle.{read,write}_bps_device`   |
//!
//! io limits apply to the block device of the daemon's state directory (homes and upper
//! directories live there), where the kernel offers them: the v2 `io` controller, or a
//! mounted v1 `blkio` hierarchy, and a state directory on a block device (not tmpfs).
//! Discovery reads `/proc/self/mountinfo` and `/proc/self/cgroup` (passed in as text so it
//! is tested without root). v2 is used when its mount offers the memory, pids and cpu
//! controllers; otherwise each v1 controller is used at its own mount. Roots are parameters,
//! so seam tests point the whole thing at a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use policy::plan::LimitsPlan;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes after {waited:?}")]
    Busy { path: PathBuf, waited: Duration },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cgroup name {0:?}")]
    Name(String),
}

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
}

/// v1 controllers the daemon uses; on v2 there is a single unified directory.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// One line of mountinfo that is a cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    mountpoint: PathBuf,
    v2: bool,
    /// v1: the controllers in the super options (`rw,memory` -> `memory`).
    controllers: Vec<String>,
    /// The path inside the hierarchy that is mounted (usually `/`).
    root: String,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mountpoint opts [optional...] - fstype source superopts
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut rest = right.split(' ');
            let fstype = rest.next()?;
            let _source = rest.next()?;
            let superopts = rest.next().unwrap_or("");
            let root = fields.get(3)?.to_string();
            let mountpoint = PathBuf::from(fields.get(4)?.replace("\\040", " "));
            match fstype {
                "cgroup2" => Some(CgroupMount {
                    mountpoint,
                    v2: true,
                    controllers: Vec::new(),
                    root,
                }),
                "cgroup" => Some(CgroupMount {
                    mountpoint,
                    v2: false,
                    controllers: superopts
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || *o == "blkio")
                        .map(String::from)
                        .collect(),
                    root,
                }),
                _ => None,
            }
        })
        .collect()
}

/// `/proc/self/cgroup`: `id:controllers:path` lines. Returns controller -> path, with the
/// v2 entry under the key `""`.
fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// Joins a cgroup path (`/a/b`) seen from a mount whose root is `root` onto its mountpoint.
fn join_cgroup(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(path);
    let mut p = mount.mountpoint.clone();
    for part in rel.split('/').filter(|s| !s.is_empty() && *s != "..") {
        p.push(part);
    }
    p
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with("cgroup.")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name != ".."
}

/// The daemon's cgroup subtree: one directory per hierarchy it uses.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// controller -> subtree directory (v2: one entry, key `"unified"`).
    bases: BTreeMap<String, PathBuf>,
    /// v2: the `io` controller is offered (and is handed to the subtree).
    io: bool,
    /// The block device io limits apply to (see [`Cgroups::with_io_device`]).
    io_device: Option<(u32, u32)>,
}

/// `major:minor` of the whole block device holding `path` (a partition's disk), or None
/// when `path` is on no block device (tmpfs, overlay) or sysfs does not know it.
pub fn block_device(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let text = if sys.join("partition").exists() {
        let real = fs::canonicalize(&sys).ok()?;
        fs::read_to_string(real.parent()?.join("dev")).ok()?
    } else {
        fs::read_to_string(sys.join("dev")).ok()?
    };
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Cgroups {
    /// Finds the hierarchies from mountinfo and the process's own cgroups, and places the
    /// daemon's subtree `subtree` under its own cgroup in each. Pure: nothing is created.
    /// `v2_controllers` is the content of `cgroup.controllers` at the v2 mount's own cgroup
    /// (empty when there is none).
    pub fn discover(
        mountinfo: &str,
        self_cgroup: &str,
        v2_controllers: &str,
        subtree: &str,
    ) -> Result<Cgroups> {
        if !valid_name(subtree) {
            return Err(CgroupError::Name(subtree.into()));
        }
        let mounts = parse_mountinfo(mountinfo);
        let own = parse_proc_cgroup(self_cgroup);
        let offered: Vec<&str> = v2_controllers.split_whitespace().collect();
        if let Some(m) = mounts.iter().find(|m| m.v2) {
            if V2_CONTROLLERS.iter().all(|c| offered.contains(c)) {
                let own_path = own.get("").map(String::as_str).unwrap_or("/");
                let base = join_cgroup(m, own_path).join(subtree);
                return Ok(Cgroups {
                    version: Version::V2,
                    bases: [("unified".to_string(), base)].into(),
                    io: offered.contains(&"io"),
                    io_device: None,
                });
            }
        }
        let mut bases = BTreeMap::new();
        for ctrl in V1_CONTROLLERS {
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
                .ok_or_else(|| {
                    CgroupError::NoHierarchy(format!(
                        "v2 lacks controllers ({v2_controllers:?}) and the v1 {ctrl} controller is not mounted"
                    ))
                })?;
            let own_path = own.get(ctrl).map(String::as_str).unwrap_or("/");
            bases.insert(ctrl.to_string(), join_cgroup(mount, own_path).join(subtree));
        }
        // Optional: io limits only (see `with_io_device`).
        if let Some(mount) = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == "blkio"))
        {
            let own_path = own.get("blkio").map(String::as_str).unwrap_or("/");
            bases.insert("blkio".into(), join_cgroup(mount, own_path).join(subtree));
        }
        Ok(Cgroups {
            version: Version::V1,
            bases,
            io: false,
            io_device: None,
        })
    }

    /// The block device io limits apply to (the state directory's: [`block_device`]).
    /// Without one, boxes get no io limits and, on v1, no `blkio` cgroup at all.
    pub fn with_io_device(mut self, device: Option<(u32, u32)>) -> Cgroups {
        self.io_device = device;
        if device.is_none() {
            self.bases.remove("blkio");
        }
        self
    }

    /// The controllers handed to the subtree on v2.
    fn v2_subtree_control(&self) -> String {
        let mut c = "+memory +pids +cpu".to_string();
        if self.io {
            c.push_str(" +io");
        }
        c
    }

    /// Discovery on the running system.
    pub fn detect(subtree: &str) -> Result<Cgroups> {
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|source| CgroupError::Read {
                path: p.into(),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let self_cgroup = read("/proc/self/cgroup")?;
        let v2 = parse_mountinfo(&mountinfo).into_iter().find(|m| m.v2);
        let controllers = v2
            .map(|m| {
                let own = parse_proc_cgroup(&self_cgroup);
                let dir = join_cgroup(&m, own.get("").map(String::as_str).unwrap_or("/"));
                fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default()
            })
            .unwrap_or_default();
        Self::discover(&mountinfo, &self_cgroup, &controllers, subtree)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The subtree directories (one per hierarchy).
    pub fn bases(&self) -> impl Iterator<Item = &Path> {
        self.bases.values().map(PathBuf::as_path)
    }

    /// Creates the subtree directories (and on v2 enables the controllers for the boxes
    /// below it).
    pub fn ensure_subtree(&self) -> Result<()> {
        for base in self.bases.values() {
            fs::create_dir_all(base).map_err(|source| CgroupError::Create {
                path: base.clone(),
                source,
            })?;
        }
        if self.version == Version::V2 {
            let base = &self.bases["unified"];
            let control = self.v2_subtree_control();
            if let Some(own) = base.parent() {
                Self::delegate_v2(own, std::process::id(), &control)?;
            }
            write(&base.join("cgroup.subtree_control"), &control)?;
        }
        Ok(())
    }

    /// cgroup v2's "no internal processes" rule: the controllers can only be handed to the
    /// subtree from a cgroup without processes. Under systemd (`Delegate=yes`) the daemon
    /// sits in its unit's cgroup, so it first moves itself into a leaf `daemon` beside the
    /// subtree, then enables the controllers in its own cgroup (as systemd's delegation
    /// documentation describes). Nothing is done when they are enabled already.
    fn delegate_v2(own: &Path, pid: u32, wanted: &str) -> Result<()> {
        let control = own.join("cgroup.subtree_control");
        let enabled = read_trim(&control).unwrap_or_default();
        let have = |c: &str| enabled.split_whitespace().any(|e| e == c);
        if wanted.split_whitespace().all(|c| have(&c[1..])) {
            return Ok(());
        }
        let leaf = own.join("daemon");
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: leaf, source }),
        }
        write(&leaf.join("cgroup.procs"), &pid.to_string())?;
        write(&control, wanted)
    }

    /// Names of the box cgroups that exist (for reconciliation after a crash).
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        for base in self.bases.values() {
            let entries = match fs::read_dir(base) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: base.clone(),
                        source,
                    })
                }
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The box cgroup `name` (not created).
    pub fn boxed(&self, name: &str) -> Result<BoxCgroup> {
        if !valid_name(name) {
            return Err(CgroupError::Name(name.into()));
        }
        Ok(BoxCgroup {
            version: self.version,
            dirs: self
                .bases
                .iter()
                .map(|(c, b)| (c.clone(), b.join(name)))
                .collect(),
        })
    }

    /// Creates the box cgroup with its limits. On failure, whatever was created is removed.
    pub fn create(&self, name: &str, limits: &LimitsPlan) -> Result<BoxCgroup> {
        self.ensure_subtree()?;
        let cg = self.boxed(name)?;
        let result = (|| {
            for dir in cg.dirs.values() {
                fs::create_dir(dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
            }
            for (ctrl, file, value) in limit_files(self.version, limits, self.io_device) {
                let Some(dir) = cg.dirs.get(ctrl) else {
                    continue;
                };
                let path = dir.join(file);
                // Swap accounting may be off (no memsw files); swap is then not limited
                // separately, and memory.limit_in_bytes still caps RAM. The io files exist
                // only where the kernel has the controller.
                let optional =
                    file == "memory.memsw.limit_in_bytes" || ctrl == "blkio" || file == "io.max";
                if optional && !path.exists() {
                    continue;
                }
                write(&path, &value)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(cg),
            Err(err) => {
                let _ = cg.remove(Duration::from_secs(1));
                Err(err)
            }
        }
    }
}

/// The files and values that set a plan's limits, in the order they must be written
/// (v1 refuses a memsw limit below the memory limit, and a quota before its period); io
/// limits only with the `device` they apply to.
pub fn limit_files(
    version: Version,
    l: &LimitsPlan,
    device: Option<(u32, u32)>,
) -> Vec<(&'static str, &'static str, String)> {
    let mut files = match version {
        Version::V2 => vec![
            ("unified", "memory.max", l.memory_bytes.to_string()),
            (
                "unified",
                "memory.swap.max",
                l.memory_swap_bytes
                    .saturating_sub(l.memory_bytes)
                    .to_string(),
            ),
            (
                "unified",
                "cpu.max",
                format!("{} {}", l.cpu_quota_us, l.cpu_period_us),
            ),
            ("unified", "pids.max", l.pids.to_string()),
        ],
        Version::V1 => vec![
            (
                "memory",
                "memory.limit_in_bytes",
                l.memory_bytes.to_string(),
            ),
            (
                "memory",
                "memory.memsw.limit_in_bytes",
                l.memory_swap_bytes.to_string(),
            ),
            ("cpu", "cpu.cfs_period_us", l.cpu_period_us.to_string()),
            ("cpu", "cpu.cfs_quota_us", l.cpu_quota_us.to_string()),
            ("pids", "pids.max", l.pids.to_string()),
        ],
    };
    let Some((major, minor)) = device else {
        return files;
    };
    match version {
        Version::V2 if l.io_read_bps.is_some() || l.io_write_bps.is_some() => {
            let bps = |v: Option<u64>| v.map_or("max".to_string(), |b| b.to_string());
            files.push((
                "unified",
                "io.max",
                format!(
                    "{major}:{minor} rbps={} wbps={}",
                    bps(l.io_read_bps),
                    bps(l.io_write_bps)
                ),
            ));
        }
        Version::V2 => {}
        Version::V1 => {
            for (file, v) in [
                ("blkio.throttle.read_bps_device", l.io_read_bps),
                ("blkio.throttle.write_bps_device", l.io_write_bps),
            ] {
                if let Some(v) = v {
                    files.push(("blkio", file, format!("{major}:{minor} {v}")));
                }
            }
        }
    }
    files
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.into(),
        source,
    })
}

fn read_trim(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Current consumption of a box.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_usec: u64,
}

/// One box's cgroup directories.
#[derive(Debug, Clone)]
pub struct BoxCgroup {
    version: Version,
    dirs: BTreeMap<String, PathBuf>,
}

impl BoxCgroup {
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.values().map(PathBuf::as_path)
    }

    pub fn exists(&self) -> bool {
        self.dirs.values().any(|d| d.is_dir())
    }

    /// Moves `pid` into the box cgroup in every hierarchy.
    pub fn add(&self, pid: u32) -> Result<()> {
        for dir in self.dirs.values() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the box (from the first hierarchy; all hold the same set).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for dir in self.dirs.values() {
            let text = match fs::read_to_string(dir.join("cgroup.procs")) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: dir.join("cgroup.procs"),
                        source,
                    })
                }
            };
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub fn usage(&self) -> Result<Usage> {
        let num = |ctrl: &str, file: &str| -> Result<u64> {
            match self.dirs.get(ctrl) {
                Some(dir) => Ok(read_trim(&dir.join(file))?.parse().unwrap_or(0)),
                None => Ok(0),
            }
        };
        Ok(match self.version {
            Version::V2 => {
                let stat = read_trim(&self.dirs["unified"].join("cpu.stat"))?;
                let cpu = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Usage {
                    memory_bytes: num("unified", "memory.current")?,
                    pids: num("unified", "pids.current")?,
                    cpu_usec: cpu,
                }
            }
            Version::V1 => Usage {
                memory_bytes: num("memory", "memory.usage_in_bytes")?,
                pids: num("pids", "pids.current")?,
                cpu_usec: num("cpuacct", "cpuacct.usage")? / 1000,
            },
        })
    }

    /// SIGKILLs every process in the box until none is left (a fork bomb racing the kill
    /// is bounded by pids.max, so this converges).
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if let Some(dir) = self.dirs.get("unified") {
            // cgroup.kill (Linux 5.14) kills the whole subtree atomically.
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                let _ = fs::write(&kill_file, "1");
            }
        }
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                if let Ok(p) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: self.dirs.values().next().cloned().unwrap_or_default(),
                    waited: timeout,
                });
            }
            // Short: the usual case is an init that exits within a millisecond of SIGKILL.
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Kills everything in the box, then removes its directories. Missing directories are
    /// not an error: removal is idempotent. A killed process that its parent has not
    /// reaped yet keeps the cgroup busy; removal waits for that up to `timeout`.
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.kill_all(timeout)?;
        for dir in self.dirs.values() {
            // A killed task may linger for a moment before the cgroup is empty for rmdir.
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(nix::libc::EBUSY)
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(source) => {
                        return Err(CgroupError::Remove {
                            path: dir.clone(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
