//! What the daemon hands the helper: fully resolved, validated data (paths, ids, the
//! compiled seccomp program), so the helper makes no policy decisions of its own. Sent as
//! JSON on the helper's stdin; the helper answers on stdout (see [`StartReply`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One classic BPF instruction (`struct sock_filter`: code, jt, jf, k).
pub type RawInsn = (u16, u8, u8, u32);

/// User namespace id maps as the text written to `/proc/<pid>/{uid,gid}_map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uid_map: String,
    pub gid_map: String,
}

/// How the root filesystem is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootSpec {
    /// The host's /usr, /bin, /lib*, /sbin read-only over the daemon's skeleton.
    Host {
        /// The lower layers, top first: the box's generated layer and the shared skeleton
        /// (see `skeleton`).
        layers: Vec<PathBuf>,
        /// Host directories bound read-only (those that are symlinks on the host are the
        /// same symlink in the skeleton).
        binds: Vec<PathBuf>,
        /// Entries of the host's /etc shared read-only (no secrets: see `HOST_ETC`); the
        /// directories among them are bound live, the rest is in the skeleton.
        etc_shared: Vec<String>,
    },
    /// An unpacked root filesystem.
    Dir { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UpperSpec {
    /// Persistent overlay directories (created by the daemon, owned by box-root).
    Dir { upper: PathBuf, work: PathBuf },
    /// tmpfs upper of this many bytes (ephemeral boxes).
    Tmpfs { bytes: u64 },
    /// No overlay: the root is read-only.
    None,
}

/// The credentials and confinement of a process in the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Ids as seen inside the box.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capability names (e.g. `CAP_NET_BIND_SERVICE`) kept in every set; usually empty.
    pub caps: Vec<String>,
    /// The compiled filter, programs in installation order.
    pub seccomp: Vec<Vec<RawInsn>>,
    /// AppArmor profile to exec under, when the kernel has AppArmor.
    pub apparmor: Option<String>,
}

/// The box's network link: a veth pair, `host_interface` on the host (holding `gateway`)
/// and `eth0` in the box (holding `address`, default route via `gateway`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub host_interface: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The user's gid, allowed unprivileged ICMP echo sockets (`ping`).
    pub ping_gid: u32,
}

/// `orchestratord-helper start`: build a box and exec its init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSpec {
    pub name: String,
    pub hostname: String,
    /// None: run without a user namespace (the kernel refuses them).
    pub idmaps: Option<IdMaps>,
    /// Box cgroup directories to join (one per hierarchy); cgroup v2 when `cgroup2`.
    pub cgroup_dirs: Vec<PathBuf>,
    pub cgroup2: bool,
    /// Host uid/gid of box-root (owner of the skeleton's /root and a tmpfs upper).
    pub root_uid: u32,
    pub root_gid: u32,
    /// An existing empty directory the helper mounts its staging tmpfs on (inside its own
    /// mount namespace: nothing is ever mounted on the host).
    pub stage: PathBuf,
    pub root: RootSpec,
    pub upper: UpperSpec,
    pub read_only: bool,
    /// Generated /etc files: (name relative to /etc, content).
    pub etc: Vec<(String, String)>,
    /// The home directory on the host and where it appears in the box.
    pub home_source: PathBuf,
    pub home_target: PathBuf,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    /// The init binary (executed through a descriptor opened before pivot_root, so the
    /// path is never reachable from inside).
    pub init: PathBuf,
    /// Where init's stdout/stderr go (opened O_APPEND by the helper).
    pub log: PathBuf,
    /// Credentials of init: box-root (or nobody without a user namespace), no capabilities.
    pub init_process: ProcessSpec,
    /// The box's link; `None`: loopback only. The daemon puts the user's firewall rules in
    /// place before it asks for a link (fail closed).
    pub net: Option<NetSpec>,
    /// The box's network namespace kept from its previous run, already set up (an nsfs
    /// path the helper opens: `/proc/<daemon pid>/fd/<n>`); `None`: the helper makes a
    /// new one.
    pub netns: Option<PathBuf>,
    /// `net.ipv4.ip_unprivileged_port_start` of the box: 0 when the profile grants
    /// CAP_NET_BIND_SERVICE (the namespace belongs to the host's user namespace, where no
    /// box process holds a capability), else the kernel's 1024.
    pub unprivileged_port_start: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReply {
    Started {
        /// Host pid of the box's init.
        pid: i32,
        /// Start time of that pid (field 22 of /proc/<pid>/stat), to detect pid reuse.
        start_time: u64,
        userns: bool,
    },
    Failed {
        step: String,
        message: String,
    },
}

/// `orchestratord-helper exec`: run a command in a running box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub pid: i32,
    pub start_time: u64,
    pub userns: bool,
    pub cgroup_dirs: Vec<PathBuf>,
    pub argv: Vec<String>,
    /// The complete environment of the command (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory inside the box; `/` when it does not exist there.
    pub cwd: PathBuf,
    pub process: ProcessSpec,
    /// Run the command on a new terminal of the box's own devpts instead of the helper's
    /// stdio; the terminal's master end is sent back over the helper's stdout (a Unix
    /// socket) with `SCM_RIGHTS`.
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// Initial size of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Exit codes of `orchestratord-helper exec` that are not the command's own (the
/// conventions of `docker exec`/`env`): the helper failed before exec, the command could
/// not be executed, the command was not found.
pub const EXIT_SETUP_FAILED: i32 = 125;
pub const EXIT_CANNOT_EXEC: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;
