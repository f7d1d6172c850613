//! The daemon's configuration file (TOML). Every field has a documented default, so an
//! empty file (or no file at all) is a working configuration for a first try.
//!
//! ```toml
//! listen = "127.0.0.1:9000"                       # HTTP API (the tunnel routes here)
//! socket = "/run/orchestratord/orchestratord.sock" # root-only Unix socket for the CLI
//! state_dir = "/var/lib/orchestratord"             # database, homes, box upper dirs
//! # profiles_dir = "/etc/orchestratord/profiles"   # default: the built-in profiles
//!
//! [network]
//! pool = "10.87.0.0/16"          # cut into one /24 per user; clear of Docker's 172.17/16
//! enabled = true                 # false: boxes get loopback only (no veth, no nft table)
//! # resolver = "192.168.1.1"     # the one DNS server boxes may query; default: the first
//!                                # non-loopback nameserver of the host's /etc/resolv.conf
//!
//! [users]
//! uid_min = 1000                 # first host uid/gid given to a user; never reused
//!
//! [boxes]
//! image = "host"                 # or an absolute path to an unpacked root filesystem
//! uid_base = 1000000000          # box-root of slot n is host uid uid_base + n*uid_range
//! uid_range = 65536              # ids per box user namespace
//!
//! [homes]
//! backend = "local"              # or "smb" with server, share, credentials_file
//! quota = "none"                 # local only: "image" enforces limits.disk (docs/homes.md)
//!
//! [audit]
//! retention = "30d"
//!
//! [files]
//! upload_limit = "8G"            # largest single upload through the file API
//!
//! [http]
//! allowed_origins = []           # e.g. ["https://lab.example.com"] for WebSockets
//! trusted_proxies = []           # peers whose X-Forwarded-For is believed
//! header_timeout = "10s"
//! body_limit = "1M"
//!
//! [terminal]
//! max_sessions = 8               # open terminal sessions per user
//! buffer = "1M"                  # output kept per session for resume (the ring)
//! window = "256K"                # output sent beyond the client's last acknowledgement
//! idle_timeout = "90s"           # a socket silent this long is closed
//! heartbeat = "25s"              # WebSocket pings from the daemon; clients ping as often
//! # web_dir = "/usr/share/orchestratord/web"  # web/ after `npm ci`, served at /terminal
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::net::{Ipv4Net, DOCKER_DEFAULT_BRIDGE, PRIVATE_RANGES};
use crate::units::{ByteSize, Span};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot parse config")]
    Parse(#[source] toml::de::Error),
    #[error("{field} must be an absolute path, got {value:?}")]
    NotAbsolute { field: &'static str, value: PathBuf },
    #[error(
        "subnet pool {0} is not inside a private range (10/8, 172.16/12, 192.168/16, 100.64/10)"
    )]
    PoolNotPrivate(Ipv4Net),
    #[error("subnet pool {0} overlaps Docker's default bridge 172.17.0.0/16")]
    PoolOverlapsDocker(Ipv4Net),
    #[error("subnet pool {0} is smaller than one /24")]
    PoolTooSmall(Ipv4Net),
    #[error("users.uid_min {0} is below 1000 (system accounts live there)")]
    UidMinTooLow(u32),
    #[error("boxes.uid_range {0} is below 65536 (a distribution needs ids up to 65534)")]
    UidRangeTooSmall(u32),
    #[error("boxes.uid_base {base} must be above users.uid_min {uid_min} with room for users")]
    UidBaseTooLow { base: u32, uid_min: u32 },
    #[error("boxes.uid_base + slots * uid_range does not fit in 32 bits ({slots} slots)")]
    UidSpaceOverflow { slots: u32 },
    #[error("boxes.cgroup {0:?} must be 1-64 of [a-z0-9_-]")]
    BadCgroupName(String),
    #[error("boxes.stop_grace must be at most 5m, got {0}")]
    GraceTooLong(Span),
    #[error("audit.retention must be at least one day, got {0}")]
    RetentionTooShort(Span),
    #[error("allowed origin {0:?} is not scheme://host[:port] with scheme http or https")]
    BadOrigin(String),
    #[error("terminal.{field} must be between {min} and {max}")]
    TerminalRange {
        field: &'static str,
        min: String,
        max: String,
    },
    #[error("http.{field} must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        min: String,
        max: String,
    },
    #[error("smb {field} {value:?} is not valid: {why}")]
    Smb {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

impl ConfigError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Parse(_) => "config_parse",
            ConfigError::NotAbsolute { .. } => "config_path",
            ConfigError::PoolNotPrivate(_)
            | ConfigError::PoolOverlapsDocker(_)
            | ConfigError::PoolTooSmall(_) => "config_pool",
            ConfigError::UidMinTooLow(_)
            | ConfigError::UidRangeTooSmall(_)
            | ConfigError::UidBaseTooLow { .. }
            | ConfigError::UidSpaceOverflow { .. } => "config_uids",
            ConfigError::BadCgroupName(_) | ConfigError::GraceTooLong(_) => "config_boxes",
            ConfigError::RetentionTooShort(_) => "config_audit",
            ConfigError::BadOrigin(_) | ConfigError::OutOfRange { .. } => "config_http",
            ConfigError::Smb { .. } => "config_smb",
            ConfigError::TerminalRange { .. } => "config_terminal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP address of the HTTP API. Default `127.0.0.1:9000`.
    pub listen: SocketAddr,
    /// Root-only Unix socket for `orchestratorctl`. Default
    /// `/run/orchestratord/orchestratord.sock`.
    pub socket: PathBuf,
    /// Database, local homes, box upper directories, the first admin token.
    /// Default `/var/lib/orchestratord`.
    pub state_dir: PathBuf,
    /// Directory of `<name>.toml` profiles. Default: none, the built-in profiles are used.
    pub profiles_dir: Option<PathBuf>,
    pub network: NetworkConfig,
    pub users: UsersConfig,
    pub boxes: BoxesConfig,
    pub homes: HomesConfig,
    pub audit: AuditConfig,
    pub http: HttpConfig,
    pub files: FilesConfig,
    pub terminal: TerminalConfig,
}

/// Terminal sessions (docs/terminal-protocol.md). The detach timeout is per profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// Open sessions per user (attached or not). Default 8.
    pub max_sessions: u32,
    /// Output kept per session for resume. Default `1M`; 64K to 16M.
    pub buffer: ByteSize,
    /// Output sent (and read from the terminal) beyond the client's last acknowledged
    /// offset. Default `256K`; 16K up to `buffer`.
    pub window: ByteSize,
    /// A socket that sends nothing (not even a pong) for this long is closed. Default `90s`.
    pub idle_timeout: Span,
    /// Interval of the daemon's WebSocket pings. Default `25s` (tunnels drop idle sockets
    /// after about 100 s).
    pub heartbeat: Span,
    /// The repository's `web/` directory after `npm ci` (the page, its client module and
    /// xterm.js), served at `/terminal`. Default: none (no page).
    pub web_dir: Option<PathBuf>,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            max_sessions: 8,
            buffer: ByteSize::mib(1),
            window: ByteSize(256 * 1024),
            idle_timeout: Span(std::time::Duration::from_secs(90)),
            heartbeat: Span(std::time::Duration::from_secs(25)),
            web_dir: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            socket: PathBuf::from("/run/orchestratord/orchestratord.sock"),
            state_dir: PathBuf::from("/var/lib/orchestratord"),
            profiles_dir: None,
            network: NetworkConfig::default(),
            users: UsersConfig::default(),
            boxes: BoxesConfig::default(),
            homes: HomesConfig::default(),
            audit: AuditConfig::default(),
            files: FilesConfig::default(),
            http: HttpConfig::default(),
            terminal: TerminalConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Pool cut into one /24 per user. Default `10.87.0.0/16` (256 users), clear of
    /// Docker's `172.17.0.0/16`.
    pub pool: Ipv4Net,
    /// Give boxes a network (a veth behind the daemon's nftables table). `false`: boxes
    /// have loopback only, and the daemon touches no interface or firewall. Default true.
    pub enabled: bool,
    /// The one DNS server boxes may query (where their profile allows DNS). Default: the
    /// first non-loopback IPv4 nameserver of the host's /etc/resolv.conf, if any.
    pub resolver: Option<std::net::Ipv4Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            resolver: None,
            pool: "10.87.0.0/16".parse().expect("default pool is valid"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// First uid/gid given to a user (their files on the home keep it). Default 1000.
    pub uid_min: u32,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig { uid_min: 1000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxesConfig {
    /// Root filesystem of boxes. Default `host` (read-only binds of the host's /usr etc.).
    pub image: Image,
    /// Host uid of box-root for slot 0. Default 1_000_000_000.
    pub uid_base: u32,
    /// Size of each box's id range. Default 65536.
    pub uid_range: u32,
    /// Name of the daemon's cgroup subtree (below its own cgroup in each hierarchy).
    /// Default `boxes`.
    pub cgroup: String,
    /// Time between SIGTERM and SIGKILL when a box stops. Default 10s.
    pub stop_grace: Span,
}

impl Default for BoxesConfig {
    fn default() -> Self {
        BoxesConfig {
            image: Image::Host,
            uid_base: 1_000_000_000,
            uid_range: 65_536,
            cgroup: "boxes".into(),
            stop_grace: Span(std::time::Duration::from_secs(10)),
        }
    }
}

/// Root filesystem source of a box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// Read-only binds of the host's /usr, /bin, /lib*, /sbin with a generated /etc.
    Host,
    /// An unpacked root filesystem (absolute path).
    Dir(PathBuf),
}

impl Serialize for Image {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Image::Host => s.serialize_str("host"),
            Image::Dir(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "host" {
            Ok(Image::Host)
        } else {
            Ok(Image::Dir(PathBuf::from(s)))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum HomesConfig {
    /// A directory per user under `<state_dir>/homes`.
    Local(LocalHomes),
    /// A per-user share (or subdirectory of one) mounted with mount.cifs.
    Smb(SmbConfig),
}

impl Default for HomesConfig {
    fn default() -> Self {
        HomesConfig::Local(LocalHomes::default())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalHomes {
    /// How the profile's `limits.disk` is enforced on local homes. Default `none`.
    pub quota: LocalQuota,
}

/// Enforcement of the home size quota (`limits.disk` of the user's profile).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalQuota {
    /// No quota: the home is a plain directory on the state directory's filesystem.
    #[default]
    None,
    /// Each home is an ext4 image of `limits.disk` bytes, loop-mounted on the home
    /// (see docs/homes.md).
    Image,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmbConfig {
    /// File server host name or address, e.g. `nas.lan`.
    pub server: String,
    /// Share name template; `{login}` is replaced by the user's login, e.g. `{login}` for a
    /// share per user or `homes` for one share.
    pub share: String,
    /// Optional subdirectory template inside the share, e.g. `{login}`.
    #[serde(default)]
    pub subdir: Option<String>,
    /// 0600 file in mount.cifs credentials format (username=, password=, domain=).
    pub credentials_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Largest file accepted by one upload (streamed; checked while it arrives).
    /// Default `8G`.
    pub upload_limit: ByteSize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            upload_limit: ByteSize::gib(8),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries older than this are pruned. Default `30d`.
    pub retention: Span,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Span::days(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins allowed to open WebSockets (`https://lab.example.com`). Default: none.
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For` header is believed (e.g. the tunnel on 127.0.0.1).
    /// Default: none.
    pub trusted_proxies: Vec<IpAddr>,
    /// Time a client has to send its request headers. Default `10s`.
    pub header_timeout: Span,
    /// Largest accepted request body. Default `1M`.
    pub body_limit: ByteSize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            header_timeout: Span(std::time::Duration::from_secs(10)),
            body_limit: ByteSize::mib(1),
        }
    }
}

fn absolute(field: &'static str, p: &Path) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::NotAbsolute {
            field,
            value: p.to_path_buf(),
        })
    }
}

/// Checks a string placed into a mount.cifs device or option: no separators that would
/// change its meaning, no control characters (a newline must never reach a config file).
fn smb_part(field: &'static str, value: &str, allow_slash: bool) -> Result<(), ConfigError> {
    let err = |why| ConfigError::Smb {
        field,
        value: value.chars().take(128).collect(),
        why,
    };
    if value.is_empty() || value.len() > 255 {
        return Err(err("must be 1 to 255 characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == ',' || c == '\\')
    {
        return Err(err("must not contain control characters, ',' or '\\'"));
    }
    if !allow_slash && value.contains('/') {
        return Err(err("must not contain '/'"));
    }
    if value.split('/').any(|part| part == ".." || part == ".") {
        return Err(err("must not contain '.' or '..' components"));
    }
    Ok(())
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(ConfigError::Parse)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field rules, one named error each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        absolute("socket", &self.socket)?;
        absolute("state_dir", &self.state_dir)?;
        if let Some(dir) = &self.profiles_dir {
            absolute("profiles_dir", dir)?;
        }
        if let Image::Dir(dir) = &self.boxes.image {
            absolute("boxes.image", dir)?;
        }
        let cg = &self.boxes.cgroup;
        if cg.is_empty()
            || cg.len() > 64
            || !cg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::BadCgroupName(cg.clone()));
        }
        if self.boxes.stop_grace.0 > std::time::Duration::from_secs(300) {
            return Err(ConfigError::GraceTooLong(self.boxes.stop_grace));
        }

        let pool = self.network.pool;
        if !PRIVATE_RANGES
            .iter()
            .any(|r| r.contains(pool.addr()) && r.prefix() <= pool.prefix())
        {
            return Err(ConfigError::PoolNotPrivate(pool));
        }
        if pool.overlaps(&DOCKER_DEFAULT_BRIDGE) {
            return Err(ConfigError::PoolOverlapsDocker(pool));
        }
        if pool.slots() == 0 {
            return Err(ConfigError::PoolTooSmall(pool));
        }

        if self.users.uid_min < 1000 {
            return Err(ConfigError::UidMinTooLow(self.users.uid_min));
        }
        if self.boxes.uid_range < 65_536 {
            return Err(ConfigError::UidRangeTooSmall(self.boxes.uid_range));
        }
        // Users get uids from uid_min upward, at most one per slot plus churn; leave them
        // a generous band below the box ranges.
        if u64::from(self.boxes.uid_base) < u64::from(self.users.uid_min) + 100_000 {
            return Err(ConfigError::UidBaseTooLow {
                base: self.boxes.uid_base,
                uid_min: self.users.uid_min,
            });
        }
        let end = u64::from(self.boxes.uid_base)
            + u64::from(pool.slots()) * u64::from(self.boxes.uid_range);
        // u32::MAX itself is the kernel's "invalid id"; stay below it.
        if end >= u64::from(u32::MAX) {
            return Err(ConfigError::UidSpaceOverflow {
                slots: pool.slots(),
            });
        }

        if self.audit.retention < Span::days(1) {
            return Err(ConfigError::RetentionTooShort(self.audit.retention));
        }

        for origin in &self.http.allowed_origins {
            if !valid_origin(origin) {
                return Err(ConfigError::BadOrigin(origin.chars().take(128).collect()));
            }
        }
        let t = self.http.header_timeout.as_secs();
        if !(1..=300).contains(&t) {
            return Err(ConfigError::OutOfRange {
                field: "header_timeout",
                min: "1s".into(),
                max: "300s".into(),
            });
        }
        let b = self.http.body_limit;
        if b < ByteSize(4096) || b > ByteSize::mib(64) {
            return Err(ConfigError::OutOfRange {
                field: "body_limit",
                min: "4K".into(),
                max: "64M".into(),
            });
        }

        let t = &self.terminal;
        let range = |field, min: &str, max: &str| ConfigError::TerminalRange {
            field,
            min: min.into(),
            max: max.into(),
        };
        if let Some(dir) = &t.web_dir {
            absolute("terminal.web_dir", dir)?;
        }
        if !(1..=1000).contains(&t.max_sessions) {
            return Err(range("max_sessions", "1", "1000"));
        }
        if t.buffer < ByteSize(64 * 1024) || t.buffer > ByteSize::mib(16) {
            return Err(range("buffer", "64K", "16M"));
        }
        if t.window < ByteSize(16 * 1024) || t.window > t.buffer {
            return Err(range("window", "16K", "terminal.buffer"));
        }
        if !(5..=3600).contains(&t.idle_timeout.as_secs()) {
            return Err(range("idle_timeout", "5s", "1h"));
        }
        if t.heartbeat.0 < std::time::Duration::from_secs(1) || t.heartbeat.0 >= t.idle_timeout.0 {
            return Err(range("heartbeat", "1s", "terminal.idle_timeout"));
        }

        if let HomesConfig::Smb(smb) = &self.homes {
            smb_part("server", &smb.server, false)?;
            smb_part("share", &smb.share, false)?;
            if let Some(sub) = &smb.subdir {
                smb_part("subdir", sub, true)?;
            }
            absolute("homes.credentials_file", &smb.credentials_file)?;
        }
        Ok(())
    }

    /// Where the SQLite database lives.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("orchestratord.db")
    }

    /// Where the first admin token is written on first start.
    pub fn admin_token_path(&self) -> PathBuf {
        self.state_dir.join("admin.token")
    }
}

/// `scheme://host[:port]` with scheme http/https and nothing after the authority.
fn valid_origin(origin: &str) -> bool {
    let rest = match origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    {
        Some(r) => r,
        None => return false,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_documented_default() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.network.pool.to_string(), "10.87.0.0/16");
        assert!(!cfg.network.pool.overlaps(&DOCKER_DEFAULT_BRIDGE));
        assert_eq!(cfg.audit.retention, Span::days(30));
        assert_eq!(cfg.boxes.image, Image::Host);
        assert_eq!(cfg.homes, HomesConfig::Local(LocalHomes::default()));
    }

    #[test]
    fn local_homes_may_ask_for_image_quotas() {
        let cfg = Config::from_toml("[homes]\nbackend = \"local\"\nquota = \"image\"").unwrap();
        assert_eq!(
            cfg.homes,
            HomesConfig::Local(LocalHomes {
                quota: LocalQuota::Image
            })
        );
        let cfg = Config::from_toml("[homes]\nbackend = \"local\"").unwrap();
        assert_eq!(cfg.homes, HomesConfig::default());
        assert!(Config::from_toml("[homes]\nbackend = \"local\"\nquota = \"xfs\"").is_err());
        assert!(Config::from_toml("[homes]\nbackend = \"local\"\nsize = 1").is_err());
    }

    #[test]
    fn a_full_config_parses() {
        let cfg = Config::from_toml(
            r#"
            listen = "0.0.0.0:9100"
            socket = "/tmp/o.sock"
            state_dir = "/srv/orch"
            profiles_dir = "/etc/orchestratord/profiles"
            [network]
            pool = "10.99.0.0/20"
            [users]
            uid_min = 2000
            [boxes]
            image = "/srv/rootfs/debian"
            [homes]
            backend = "smb"
            server = "nas.lan"
            share = "{login}"
            credentials_file = "/etc/orchestratord/smb.cred"
            [audit]
            retention = "90d"
            [http]
            allowed_origins = ["https://lab.example.com", "http://localhost:5173"]
            trusted_proxies = ["127.0.0.1", "::1"]
            header_timeout = "5s"
            body_limit = "2M"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.network.pool.slots(), 16);
        assert_eq!(cfg.boxes.image, Image::Dir("/srv/rootfs/debian".into()));
        assert!(matches!(cfg.homes, HomesConfig::Smb(ref s) if s.share == "{login}"));
    }

    #[test]
    fn invalid_configs_fail_with_the_rule_that_broke() {
        let cases: &[(&str, &str)] = &[
            ("listen = 5", "Parse"),
            ("unknown = 1", "Parse"),
            ("[network]\nextra = 1", "Parse"),
            ("state_dir = \"relative/dir\"", "NotAbsolute"),
            ("socket = \"o.sock\"", "NotAbsolute"),
            ("[boxes]\nimage = \"rootfs\"", "NotAbsolute"),
            ("[network]\npool = \"8.8.0.0/16\"", "PoolNotPrivate"),
            ("[network]\npool = \"172.16.0.0/12\"", "PoolOverlapsDocker"),
            ("[network]\npool = \"172.17.5.0/24\"", "PoolOverlapsDocker"),
            ("[network]\npool = \"10.1.1.0/25\"", "PoolTooSmall"),
            ("[network]\npool = \"10.1.1.1/16\"", "Parse"),
            ("[users]\nuid_min = 0", "UidMinTooLow"),
            ("[boxes]\nuid_range = 1000", "UidRangeTooSmall"),
            ("[boxes]\ncgroup = \"../x\"", "BadCgroupName"),
            ("[boxes]\nstop_grace = \"1h\"", "GraceTooLong"),
            ("[boxes]\nuid_base = 5000", "UidBaseTooLow"),
            ("[network]\npool = \"10.0.0.0/8\"", "UidSpaceOverflow"),
            ("[audit]\nretention = \"1h\"", "RetentionTooShort"),
            ("[audit]\nretention = \"forever\"", "Parse"),
            ("[http]\nallowed_origins = [\"lab.example.com\"]", "BadOrigin"),
            ("[terminal]\nmax_sessions = 0", "TerminalRange"),
            ("[terminal]\nbuffer = \"1K\"", "TerminalRange"),
            ("[terminal]\nbuffer = \"64M\"", "TerminalRange"),
            ("[terminal]\nwindow = \"2M\"", "TerminalRange"),
            ("[terminal]\nidle_timeout = \"1s\"", "TerminalRange"),
            ("[terminal]\nheartbeat = \"90s\"", "TerminalRange"),
            ("[terminal]\nlinger = \"1s\"", "Parse"),
            ("[http]\nallowed_origins = [\"https://x.com/path\"]", "BadOrigin"),
            ("[http]\nallowed_origins = [\"ftp://x.com\"]", "BadOrigin"),
            ("[http]\nheader_timeout = \"0s\"", "OutOfRange"),
            ("[http]\nbody_limit = \"1G\"", "OutOfRange"),
            ("[homes]\nbackend = \"nfs\"", "Parse"),
            ("[homes]\nbackend = \"smb\"\nserver = \"nas\"\nshare = \"h\"", "Parse"),
            (
                "[homes]\nbackend = \"smb\"\nserver = \"nas\"\nshare = \"a,b\"\ncredentials_file = \"/c\"",
                "Smb",
            ),
            (
                "[homes]\nbackend = \"smb\"\nserver = \"nas\"\nshare = \"h\"\nsubdir = \"../x\"\ncredentials_file = \"/c\"",
                "Smb",
            ),
            (
                "[homes]\nbackend = \"smb\"\nserver = \"nas\\nx\"\nshare = \"h\"\ncredentials_file = \"/c\"",
                "Smb",
            ),
            (
                "[homes]\nbackend = \"smb\"\nserver = \"nas\"\nshare = \"h\"\ncredentials_file = \"c\"",
                "NotAbsolute",
            ),
        ];
        for (text, rule) in cases {
            let err = Config::from_toml(text).unwrap_err();
            let dbg = format!("{err:?}");
            assert!(
                dbg.starts_with(rule),
                "{text:?}: expected {rule}, got {dbg}"
            );
        }
    }

    #[test]
    fn origins_are_checked_structurally() {
        for ok in ["https://a.b", "http://localhost:5173", "https://[::1]:8443"] {
            assert!(valid_origin(ok), "{ok}");
        }
        for bad in [
            "https://",
            "https://a.b:0",
            "https://a.b:x",
            "https://a b",
            "null",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }
}
