//! Boxes: the daemon's side of starting, stopping and entering them. The privileged
//! sequence itself runs in the exec'd helper ([`helper`]); this module prepares what the
//! helper needs (directories, cgroup, a spec), runs it, and cleans up after it.
//!
//! The privileged interface is the closed set [`Command`]; `service` drives boxes only
//! through it (and [`BoxRuntime::exec_command`] for commands in a box).

#![allow(unsafe_code)]

pub mod helper;
pub mod log;
pub mod skeleton;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use policy::boxfs::{self, HOST_BINDS, HOST_ETC};
use policy::plan::{BoxPlan, HomeSource, ImagePlan, UpperPlan};
use serde::{Deserialize, Serialize};

use super::apparmor::{AppArmorError, Parser};
use super::cgroup::{BoxCgroup, CgroupError, Cgroups, Usage, Version};
use super::seccomp::Compiled;
use spec::{ExecSpec, IdMaps, ProcessSpec, RootSpec, StartReply, StartSpec, UpperSpec};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("box cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("cannot prepare {what} {path}")]
    Prepare {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run the helper {path}")]
    Helper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the helper gave no answer ({status}): {stderr}")]
    NoReply { status: String, stderr: String },
    #[error("box start failed at step {step}: {message}")]
    Start { step: String, message: String },
    #[error("cannot load the box's AppArmor profile")]
    AppArmor(#[from] AppArmorError),
    #[error("home backend {0} is not available yet")]
    HomeBackend(&'static str),
    #[error("cannot mount the home's quota image")]
    HomeQuota(#[from] crate::runtime::quota::QuotaError),
    #[error("cannot mount or unmount the SMB home")]
    HomeSmb(#[from] crate::runtime::smb::SmbError),
    #[error("the box's processes did not go away within {0:?}")]
    StopTimeout(Duration),
    #[error("cannot delete link {name}")]
    Link {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The failing step, for status and the API (`cgroup`, `overlay`, `pivot_root`, ...).
    pub fn step(&self) -> &str {
        match self {
            RuntimeError::Cgroup(_) => "cgroup",
            RuntimeError::Prepare { what, .. } => what,
            RuntimeError::Helper { .. } | RuntimeError::NoReply { .. } => "helper",
            RuntimeError::Start { step, .. } => step,
            RuntimeError::AppArmor(_) => "apparmor",
            RuntimeError::HomeBackend(_)
            | RuntimeError::HomeQuota(_)
            | RuntimeError::HomeSmb(_) => "home",
            RuntimeError::StopTimeout(_) => "stop",
            RuntimeError::Remove { .. } => "remove",
            RuntimeError::Link { .. } => "veth",
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The helper and init programs (installed beside the daemon).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub helper: PathBuf,
    pub init: PathBuf,
}

impl Binaries {
    /// `orchestratord-helper` and `orchestratord-init` in the directory of `exe`, or in
    /// its `static/` subdirectory where `scripts/build-static` put statically linked (musl)
    /// builds of them: those are preferred. Both run at every box start and exec, and on a
    /// VM a glibc program spends most of a millisecond starting up (its CPU feature and
    /// cache probes are `cpuid` instructions, each a VM exit), a static musl one about
    /// 0.1 ms (bench/README.md, B1). A static init also runs on any image directory.
    /// A static build older than `exe` is ignored: it was built from older sources than
    /// the program asking (a `cargo build` after `scripts/build-static`), and helper and
    /// daemon must come from the same sources.
    pub fn beside(exe: &Path) -> Binaries {
        let dir = exe.parent().unwrap_or(Path::new("/usr/local/bin"));
        let built = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let pick = |name: &str| {
            let fast = dir.join("static").join(name);
            match (built(&fast), built(exe)) {
                (Some(f), Some(e)) if f >= e => fast,
                (Some(_), None) => fast,
                _ => dir.join(name),
            }
        };
        Binaries {
            helper: pick("orchestratord-helper"),
            init: pick("orchestratord-init"),
        }
    }
}

/// A running box's init, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot): a reused pid has another.
    pub start_time: u64,
    pub userns: bool,
}

/// The closed set of privileged operations on boxes. Each is idempotent where it can be,
/// so a retry after a crash is safe.
#[derive(Debug)]
pub enum Command<'a> {
    /// Build and start the box of `plan`. Precondition: no process of the box runs (its
    /// cgroup is empty or absent). A hostile tenant controls only the contents of their
    /// persistent upper directory and home; mount targets are checked for symlinks, and
    /// everything runs in namespaces whose ids map to the box's own unprivileged range.
    Start {
        plan: &'a BoxPlan,
        seccomp: &'a Compiled,
    },
    /// SIGTERM to the box (init forwards it), SIGKILL to whatever is left after `grace`,
    /// then remove the cgroup. The box's network namespace (and its link) is kept for the
    /// next start: with no process left in it, nothing can use it, and the user's rules
    /// stay in force. A tenant can only delay its own box's stop by `grace`; a fork bomb
    /// racing the kill is bounded by pids.max.
    Stop {
        cgroup: &'a str,
        running: Option<Running>,
        grace: Duration,
        /// The host mount of an SMB home, unmounted (lazily) once the box's processes
        /// are gone. The tenant cannot keep it: nothing of the box is left to hold it.
        home_mount: Option<&'a Path>,
    },
    /// Delete the persistent upper directory (reset) of a stopped box. Removal does not
    /// follow symlinks a tenant left there.
    Wipe { plan: &'a BoxPlan },
    /// Delete every file of a stopped box except the home, its kept network namespace and
    /// the host end of its link (box removal, user deletion).
    Remove { user: &'a str },
    /// Kill and remove box cgroups that belong to no known box (crash leftovers).
    Sweep { known: &'a BTreeSet<String> },
}

/// What a [`Command`] produced.
#[derive(Debug)]
pub enum Outcome {
    Started(Running),
    Done,
    Swept(Vec<String>),
}

/// Longest wait for an SMB home's health probe.
pub const HOME_PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Daemon-side box runtime.
#[derive(Debug, Clone)]
pub struct BoxRuntime {
    bins: Binaries,
    cgroups: Cgroups,
    state_dir: PathBuf,
    /// Set when the kernel has AppArmor: boxes then run under their generated profile.
    apparmor: Option<Parser>,
    /// Boxes get a veth link (the daemon's firewall must hold their rules first); without
    /// it they have loopback only.
    network: bool,
    /// Network namespaces of boxes, by user, kept from one run of a box to the next (see
    /// [`Command::Stop`]); held only by this process, so a daemon restart lets the
    /// namespaces of stopped boxes go.
    kept: Arc<Mutex<BTreeMap<String, OwnedFd>>>,
    /// Boxes get a user namespace (the default). Off: what the helper falls back to when
    /// the kernel refuses user namespaces (`user.max_user_namespaces = 0`, some hardened
    /// kernels), asked for directly so that mode can be tested on a machine that has them.
    user_namespaces: bool,
}

/// Files of one box on the host.
#[derive(Debug, Clone)]
pub struct BoxPaths {
    pub dir: PathBuf,
    pub stage: PathBuf,
    pub log: PathBuf,
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl BoxRuntime {
    /// A runtime on this machine: AppArmor is used when the kernel has it.
    pub fn new(bins: Binaries, cgroups: Cgroups, state_dir: PathBuf) -> BoxRuntime {
        let sys = Path::new("/sys");
        let apparmor =
            super::apparmor::kernel_enabled(sys).then(|| Parser::new(Parser::DEFAULT_PATH, sys));
        // io limits apply to the disk of the state directory (homes, upper directories).
        let cgroups = cgroups.with_io_device(super::cgroup::block_device(&state_dir));
        BoxRuntime {
            bins,
            cgroups,
            state_dir,
            apparmor,
            network: false,
            kept: Arc::default(),
            user_namespaces: true,
        }
    }

    /// The same runtime, giving boxes a network link.
    pub fn with_network(mut self, on: bool) -> BoxRuntime {
        self.network = on;
        self
    }

    /// The same runtime, giving boxes a user namespace or not (see `user_namespaces`).
    pub fn with_user_namespaces(mut self, on: bool) -> BoxRuntime {
        self.user_namespaces = on;
        self
    }

    pub fn network(&self) -> bool {
        self.network
    }

    /// Whether boxes run under an AppArmor profile.
    pub fn apparmor(&self) -> bool {
        self.apparmor.is_some()
    }

    fn apparmor_profile(&self, plan: &BoxPlan) -> Option<String> {
        self.apparmor
            .as_ref()
            .map(|_| policy::apparmor::profile_name(&plan.user))
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    pub fn paths(&self, user: &str) -> BoxPaths {
        let dir = self.state_dir.join("boxes").join(user);
        BoxPaths {
            stage: dir.join("stage"),
            log: dir.join("box.log"),
            dir,
        }
    }

    pub fn run(&self, cmd: Command<'_>) -> Result<Outcome> {
        match cmd {
            Command::Start { plan, seccomp } => self.start(plan, seccomp).map(Outcome::Started),
            Command::Stop {
                cgroup,
                running,
                grace,
                home_mount,
            } => {
                self.stop(cgroup, running, grace)?;
                if let Some(m) = home_mount {
                    crate::runtime::smb::unmount(m)?;
                }
                Ok(Outcome::Done)
            }
            Command::Wipe { plan } => self.wipe(plan).map(|()| Outcome::Done),
            Command::Remove { user } => self.remove(user).map(|()| Outcome::Done),
            Command::Sweep { known } => self.sweep(known).map(Outcome::Swept),
        }
    }

    fn prepare_dir(what: &'static str, path: &Path, mode: u32) -> Result<()> {
        match fs::DirBuilder::new()
            .mode(mode)
            .recursive(true)
            .create(path)
        {
            Ok(()) => Ok(()),
            Err(source) => Err(RuntimeError::Prepare {
                what,
                path: path.into(),
                source,
            }),
        }
    }

    fn chown(what: &'static str, path: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| {
            RuntimeError::Prepare {
                what,
                path: path.into(),
                source,
            }
        })
    }

    /// The host directory of the user's home, created (owned by the user, 0700) if missing.
    fn prepare_home(&self, plan: &BoxPlan) -> Result<PathBuf> {
        match &plan.home.source {
            HomeSource::Local { path } => {
                if let Some(image) = &plan.home.image {
                    // The service has usually mounted (and resized, and reported) the home
                    // just before; this is then a cheap check.
                    let resize = crate::runtime::quota::QuotaHome {
                        image: image.clone(),
                        mountpoint: path.clone(),
                        size: plan.home.quota.bytes(),
                        uid: plan.ids.user_uid,
                        gid: plan.ids.user_gid,
                    }
                    .ensure(&crate::runtime::quota::Tools::default())?;
                    if !matches!(resize, crate::runtime::quota::Resize::None) {
                        tracing::warn!(?resize, box_name = %plan.user, "home quota resize at box start");
                    }
                    return Ok(path.clone());
                }
                if let Some(parent) = path.parent() {
                    Self::prepare_dir("home", parent, 0o711)?;
                }
                if !path.exists() {
                    Self::prepare_dir("home", path, 0o700)?;
                    Self::chown("home", path, plan.ids.user_uid, plan.ids.user_gid)?;
                }
                Ok(path.clone())
            }
            HomeSource::Smb {
                unc,
                credentials_file,
                mountpoint,
            } => {
                // A mount left from an earlier start (or a crash) is reused when healthy,
                // replaced when not.
                match crate::runtime::smb::probe(mountpoint, HOME_PROBE_LIMIT) {
                    crate::runtime::smb::Health::Ok => return Ok(mountpoint.clone()),
                    crate::runtime::smb::Health::NotMounted => {}
                    _ => crate::runtime::smb::unmount(mountpoint)?,
                }
                crate::runtime::smb::MountCifs::default().mount(
                    &crate::runtime::smb::CifsMount {
                        unc: unc.clone(),
                        target: mountpoint.clone(),
                        uid: plan.ids.user_uid,
                        gid: plan.ids.user_gid,
                        credentials_file: credentials_file.clone(),
                    },
                )?;
                Ok(mountpoint.clone())
            }
        }
    }

    /// The helper spec of `plan`'s box; `netns`: the path of a kept network namespace.
    pub fn start_spec(
        &self,
        plan: &BoxPlan,
        seccomp: &Compiled,
        netns: Option<PathBuf>,
    ) -> Result<StartSpec> {
        let user = plan.user.as_str();
        let paths = self.paths(user);
        let home = self.prepare_home(plan)?;
        let etc: Vec<(String, String)> = boxfs::etc_files(plan)
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let root = match &plan.rootfs.image {
            ImagePlan::Host => {
                let skel = self.skeleton()?;
                let gen = paths.dir.join("gen");
                skeleton::write_generated(&gen, &etc, plan.ids.root_host, &plan.home.target)?;
                RootSpec::Host {
                    layers: vec![gen, skel],
                    binds: HOST_BINDS.iter().map(PathBuf::from).collect(),
                    etc_shared: HOST_ETC.iter().map(|s| s.to_string()).collect(),
                }
            }
            ImagePlan::Dir { path } => RootSpec::Dir { path: path.clone() },
        };
        let upper = match &plan.rootfs.upper {
            UpperPlan::Dir { upper, work } => UpperSpec::Dir {
                upper: upper.clone(),
                work: work.clone(),
            },
            UpperPlan::Tmpfs { size } => UpperSpec::Tmpfs {
                bytes: size.bytes(),
            },
            UpperPlan::None => UpperSpec::None,
        };
        let box_cg = self.cgroups.boxed(&plan.cgroup)?;
        let mem = plan.limits.memory_bytes;
        Ok(StartSpec {
            name: user.to_string(),
            hostname: plan.hostname.clone(),
            idmaps: self.user_namespaces.then(|| IdMaps {
                uid_map: boxfs::render_map(&plan.ids.uid_lines()),
                gid_map: boxfs::render_map(&plan.ids.gid_lines()),
            }),
            cgroup_dirs: box_cg.dirs().map(Path::to_path_buf).collect(),
            cgroup2: self.cgroups.version() == Version::V2,
            root_uid: plan.ids.root_host,
            root_gid: plan.ids.root_host,
            stage: paths.stage,
            root,
            upper,
            read_only: plan.rootfs.read_only,
            etc,
            home_source: home,
            home_target: plan.home.target.clone(),
            // tmpfs pages are charged to the box's memory cgroup; the sizes only keep one
            // mount from taking all of it.
            tmp_bytes: (mem / 2).min(plan.limits.disk_bytes).max(1 << 20),
            shm_bytes: (mem / 4).max(1 << 20),
            init: self.bins.init.clone(),
            log: paths.log,
            // Without a user namespace init is nobody on the host, as when the helper finds
            // the kernel refusing one.
            init_process: ProcessSpec {
                uid: if self.user_namespaces { 0 } else { 65534 },
                gid: if self.user_namespaces { 0 } else { 65534 },
                groups: vec![],
                caps: vec!["CAP_KILL".into()],
                seccomp: seccomp.raw(),
                apparmor: self.apparmor_profile(plan),
            },
            net: self.network.then(|| spec::NetSpec {
                host_interface: plan.network.host_interface.clone(),
                address: plan.network.address,
                gateway: plan.network.gateway,
                prefix: plan.network.subnet.prefix(),
                ping_gid: plan.ids.user_gid,
            }),
            netns,
            unprivileged_port_start: if plan
                .capabilities
                .iter()
                .any(|c| c.to_string() == "CAP_NET_BIND_SERVICE")
            {
                0
            } else {
                1024
            },
        })
    }

    /// The shared skeleton for the host as it is now (see [`skeleton`]); when this builds
    /// a new one, older ones no running box has mounted are deleted.
    fn skeleton(&self) -> Result<PathBuf> {
        let base = self.state_dir.join("skel");
        let (dir, built) = skeleton::ensure(&base, &HOST_BINDS, &HOST_ETC)?;
        if built {
            self.prune_skeletons(&base, &dir)?;
        }
        Ok(dir)
    }

    fn prune_skeletons(&self, base: &Path, keep: &Path) -> Result<()> {
        // The mount tables of the running boxes (one process per box cgroup will do: all
        // of a box's processes share its mount namespace).
        let mut mounted = vec![];
        for name in self.cgroups.list()? {
            let pids = self.cgroups.boxed(&name)?.pids()?;
            if let Some(pid) = pids.first() {
                match fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                    Ok(text) => mounted.push(text),
                    // Cannot tell: keep everything this time.
                    Err(_) => return Ok(()),
                }
            }
        }
        for path in skeleton::prune(base, keep, &mounted)? {
            tracing::info!(path = %path.display(), "deleted an outdated box skeleton");
        }
        Ok(())
    }

    /// The kept network namespace of `user`'s box, if it is still whole: with a network,
    /// the host end of its link must exist (reconciliation or an admin may have deleted
    /// it, and the box end goes with it). A namespace that is not whole is let go.
    fn kept_netns(&self, user: &str, plan: &BoxPlan) -> Option<OwnedFd> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let fd = kept.get(user)?;
        if self.network && super::net::netlink::index(&plan.network.host_interface).is_err() {
            kept.remove(user);
            return None;
        }
        fd.try_clone().ok()
    }

    /// Keeps the network namespace of a running box's init for its next start; `running`
    /// is checked again after the open, so a reused pid cannot hand over another one.
    pub fn keep_netns(&self, user: &str, running: &Running) {
        let Ok(f) = fs::File::open(format!("/proc/{}/ns/net", running.pid)) else {
            return;
        };
        if proc_state(running.pid).map(|(st, _)| st) != Some(running.start_time) {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.insert(user.to_string(), f.into());
    }

    /// Whether `user`'s box has a kept network namespace (its link is no stray).
    pub fn keeps_netns(&self, user: &str) -> bool {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.contains_key(user)
    }

    fn start(&self, plan: &BoxPlan, seccomp: &Compiled) -> Result<Running> {
        let user = plan.user.as_str();
        let paths = self.paths(user);
        Self::prepare_dir("box directory", &paths.dir, 0o700)?;
        Self::prepare_dir("stage", &paths.stage, 0o700)?;
        if let UpperPlan::Dir { upper, work } = &plan.rootfs.upper {
            if !upper.exists() {
                Self::prepare_dir("upper", upper, 0o755)?;
                Self::chown("upper", upper, plan.ids.root_host, plan.ids.root_host)?;
            }
            Self::prepare_dir("work", work, 0o700)?;
        }
        // The helper opens the kept namespace through this process's descriptor table; the
        // duplicate stays open until it has answered.
        let kept = self.kept_netns(user, plan);
        let netns = kept.as_ref().map(|fd| {
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                fd.as_raw_fd()
            ))
        });
        let spec = self.start_spec(plan, seccomp, netns)?;
        if let Some(parser) = &self.apparmor {
            parser.load(&policy::apparmor::render(&plan.user))?;
        }
        // Leftovers of a crashed run go first; then a fresh cgroup with the plan's limits.
        let cg = self.cgroups.boxed(&plan.cgroup)?;
        if cg.exists() {
            cg.remove(Duration::from_secs(5))?;
        }
        let cg = self.cgroups.create(&plan.cgroup, &plan.limits)?;
        match self.spawn_start(&spec) {
            Ok(r) => {
                if kept.is_none() {
                    self.keep_netns(user, &r);
                }
                Ok(r)
            }
            Err(err) => {
                if let Err(e) = cg.remove(Duration::from_secs(5)) {
                    tracing::error!(
                        ?e,
                        box_name = user,
                        "cannot remove the cgroup of a failed start"
                    );
                }
                Err(err)
            }
        }
    }

    fn spawn_start(&self, spec: &StartSpec) -> Result<Running> {
        let helper_err = |source| RuntimeError::Helper {
            path: self.bins.helper.clone(),
            source,
        };
        let mut child = std::process::Command::new(&self.bins.helper)
            .arg("start")
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(helper_err)?;
        let text = serde_json::to_vec(spec).expect("spec serializes");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&text).map_err(helper_err)?;
        }
        let out = child.wait_with_output().map_err(helper_err)?;
        let reply: Option<StartReply> = out
            .stdout
            .split(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .and_then(|l| serde_json::from_slice(l).ok());
        match reply {
            Some(StartReply::Started {
                pid,
                start_time,
                userns,
            }) => Ok(Running {
                pid,
                start_time,
                userns,
            }),
            Some(StartReply::Failed { step, message }) => {
                Err(RuntimeError::Start { step, message })
            }
            None => Err(RuntimeError::NoReply {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    /// Whether `running` is still the box's live init.
    pub fn alive(running: &Running) -> bool {
        proc_state(running.pid).is_some_and(|(st, state)| st == running.start_time && state != 'Z')
    }

    fn stop(&self, cgroup: &str, running: Option<Running>, grace: Duration) -> Result<()> {
        let cg = self.cgroups.boxed(cgroup)?;
        if let Some(r) = running.filter(Self::alive) {
            let pid = Pid::from_raw(r.pid);
            // Everyone gets SIGTERM: init forwards it too, but commands started by exec
            // are not its children and may run as another uid.
            for p in cg.pids().unwrap_or_default() {
                if let Ok(p) = i32::try_from(p) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                }
            }
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Self::alive(&r) && Instant::now() < deadline {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                std::thread::sleep(Duration::from_millis(5));
            }
            // SIGKILL to init takes the whole pid namespace down.
            let _ = kill(pid, Signal::SIGKILL);
        }
        self.kill_and_remove(&cg, running)
    }

    /// Deletes the host end of a box's link (box removal: the kernel would destroy it with
    /// the box's network namespace anyway, but asynchronously, and a user created again
    /// must not find it).
    fn delete_link(&self, interface: &str) -> Result<()> {
        if !interface.starts_with(super::net::IFACE_PREFIX) {
            return Ok(());
        }
        let mut nl = super::net::netlink::Netlink::open().map_err(|source| RuntimeError::Link {
            name: interface.to_string(),
            source,
        })?;
        nl.delete_link(interface)
            .map(|_| ())
            .map_err(|source| RuntimeError::Link {
                name: interface.to_string(),
                source,
            })
    }

    fn kill_and_remove(&self, cg: &BoxCgroup, running: Option<Running>) -> Result<()> {
        if !cg.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            cg.kill_all(Duration::from_secs(5))?;
            // Reap the init if it is our child (the daemon is a subreaper), so the cgroup
            // empties; a box adopted after a restart is reaped by its own parent.
            if let Some(r) = running {
                let _ = waitpid(Pid::from_raw(r.pid), Some(WaitPidFlag::WNOHANG));
            }
            match cg.remove(Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Usage of a box's cgroup, or None when it has none.
    pub fn usage(&self, cgroup: &str) -> Result<Option<Usage>> {
        let cg = self.cgroups.boxed(cgroup)?;
        if !cg.exists() {
            return Ok(None);
        }
        Ok(Some(cg.usage()?))
    }

    /// Pids of the box's processes.
    pub fn pids(&self, cgroup: &str) -> Result<Vec<u32>> {
        Ok(self.cgroups.boxed(cgroup)?.pids()?)
    }

    fn wipe(&self, plan: &BoxPlan) -> Result<()> {
        if let UpperPlan::Dir { upper, work } = &plan.rootfs.upper {
            for dir in [upper, work] {
                remove_tree(dir)?;
            }
        }
        Ok(())
    }

    fn remove(&self, user: &str) -> Result<()> {
        if let (Some(parser), Ok(name)) = (&self.apparmor, user.parse()) {
            parser.unload(&policy::apparmor::profile_name(&name))?;
        }
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        drop(kept);
        if self.network {
            self.delete_link(&format!("{}{user}", super::net::IFACE_PREFIX))?;
        }
        remove_tree(&self.paths(user).dir)
    }

    fn sweep(&self, known: &BTreeSet<String>) -> Result<Vec<String>> {
        // Outdated skeletons go; the current one is built by the first start that needs it.
        let base = self.state_dir.join("skel");
        let current = skeleton::current(&base, &HOST_BINDS, &HOST_ETC);
        self.prune_skeletons(&base, &current)?;
        let mut swept = vec![];
        for name in self.cgroups.list()? {
            if known.contains(&name) || !name.starts_with("box-") {
                continue;
            }
            let cg = self.cgroups.boxed(&name)?;
            self.kill_and_remove(&cg, None)?;
            swept.push(name);
        }
        Ok(swept)
    }

    /// The helper invocation for a command in a running box: the program to spawn (stdin,
    /// stdout and stderr are the caller's to set) and the framed spec to write to its stdin
    /// before any input for the command.
    pub fn exec_command(
        &self,
        plan: &BoxPlan,
        running: &Running,
        seccomp: &Compiled,
        req: &ExecRequest,
    ) -> Result<(std::process::Command, Vec<u8>)> {
        let cg = self.cgroups.boxed(&plan.cgroup)?;
        let user = plan.user.as_str();
        let home = plan.home.target.display().to_string();
        // A clean environment: nothing of the daemon's, only what a login would set.
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), home.clone()),
            ("USER".into(), user.into()),
            ("LOGNAME".into(), user.into()),
            ("SHELL".into(), "/bin/bash".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        for (k, v) in &req.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let spec = ExecSpec {
            pid: running.pid,
            start_time: running.start_time,
            userns: running.userns,
            cgroup_dirs: cg.dirs().map(Path::to_path_buf).collect(),
            argv: req.argv.clone(),
            env,
            cwd: req.cwd.clone().unwrap_or_else(|| PathBuf::from(home)),
            process: ProcessSpec {
                uid: plan.ids.user_uid,
                gid: plan.ids.user_gid,
                groups: vec![plan.ids.user_gid],
                caps: plan.capabilities.iter().map(|c| c.to_string()).collect(),
                seccomp: seccomp.raw(),
                apparmor: self.apparmor_profile(plan),
            },
            pty: req.pty,
        };
        let json = serde_json::to_vec(&spec).expect("spec serializes");
        let mut framed = format!("{}\n", json.len()).into_bytes();
        framed.extend_from_slice(&json);
        let mut cmd = std::process::Command::new(&self.bins.helper);
        cmd.arg("exec").env_clear().env("PATH", PATH);
        Ok((cmd, framed))
    }
}

/// A command to run in a box.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Added to (or replacing in) the clean default environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Run on a new terminal of the box (see [`crate::runtime::pty`]).
    pub pty: Option<spec::PtySize>,
}

/// (start time, state letter) of a host pid.
fn proc_state(pid: i32) -> Option<(u64, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// Removes a directory tree without following symlinks (std's remove_dir_all does not
/// follow them). Missing is fine.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RuntimeError::Remove {
            path: path.into(),
            source,
        }),
    }
}

/// Makes the calling process the reaper of orphans below it: box inits outlive the helper
/// that started them and are reparented to the daemon, which reaps them.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Waits until `pid` exits (pidfd, so no polling and no pid-reuse race), then reaps it
/// if it is the caller's child.
pub async fn wait_exit(pid: i32) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(nix::libc::ESRCH) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the descriptor is owned by the AsyncFd for its whole registration and is
    // closed only when it is dropped (after deregistration).
    let afd = unsafe { tokio::io::unix::AsyncFd::register(owned) }.map_err(|e| e.into_parts().1)?;
    let _guard = afd.readable().await?;
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    Ok(())
}

/// Reaps `pid` if it is a child that has exited (no-op otherwise).
pub fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn touch(p: &Path, when: SystemTime) {
        fs::write(p, b"").unwrap();
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    // Regression: a static helper built before the daemon (cargo build after
    // scripts/build-static) did not know the daemon's newer requests.
    #[test]
    fn a_static_build_is_preferred_only_when_it_is_not_older_than_the_program() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("orchestratord");
        fs::create_dir(t.path().join("static")).unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        touch(&exe, now);
        for name in ["orchestratord-helper", "orchestratord-init"] {
            touch(&t.path().join("static").join(name), now + hour);
        }
        let b = Binaries::beside(&exe);
        assert_eq!(b.helper, t.path().join("static/orchestratord-helper"));
        assert_eq!(b.init, t.path().join("static/orchestratord-init"));
        touch(&t.path().join("static/orchestratord-helper"), now - hour);
        let b = Binaries::beside(&exe);
        assert_eq!(b.helper, t.path().join("orchestratord-helper"), "stale");
        assert_eq!(b.init, t.path().join("static/orchestratord-init"));
        fs::remove_dir_all(t.path().join("static")).unwrap();
        assert_eq!(
            Binaries::beside(&exe).init,
            t.path().join("orchestratord-init")
        );
    }
}
