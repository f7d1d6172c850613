//! The compiler from (config, user, profile, services) to a [`BoxPlan`]: everything the
//! runtime needs to build a user's box, fully validated, so the privileged helper makes no
//! policy decisions of its own (the bubblewrap/crun split: small privileged code applies a
//! policy someone else owns).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::caps::Capability;
use crate::config::{Config, HomesConfig, Image, LocalQuota};
use crate::names::{ProfileName, Role, ServiceName, UserName};
use crate::net::Ipv4Net;
use crate::profile::{Access, DnsPolicy, Persistence, Profile};
use crate::seccomp::SeccompRules;
use crate::service::{Service, Subject, Upstream};
use crate::units::{ByteSize, Span};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("profile {profile} does not suit role {role} (demo users need an ephemeral, read-only profile)")]
    ProfileUnsuitable { profile: ProfileName, role: Role },
    #[error("slot {slot} is outside the subnet pool {pool}")]
    SlotOutOfPool { slot: u32, pool: Ipv4Net },
    #[error("user uid {uid} collides with the box id ranges starting at {uid_base}")]
    UidInBoxRange { uid: u32, uid_base: u32 },
    #[error("service {0} is not registered")]
    UnknownService(ServiceName),
    #[error("service {service} requires role {required}, user has {role}")]
    ServiceRequiresRole {
        service: ServiceName,
        required: Role,
        role: Role,
    },
    #[error("path for {what} escapes its base directory")]
    PathEscape { what: &'static str },
}

impl PlanError {
    pub fn kind(&self) -> &'static str {
        match self {
            PlanError::ProfileUnsuitable { .. } => "profile_unsuitable",
            PlanError::SlotOutOfPool { .. } => "pool_exhausted",
            PlanError::UidInBoxRange { .. } => "uids_exhausted",
            PlanError::UnknownService(_) => "unknown_service",
            PlanError::ServiceRequiresRole { .. } => "service_requires_role",
            PlanError::PathEscape { .. } => "invalid_path",
        }
    }
}

/// What the compiler needs to know about a user (from the store).
#[derive(Debug, Clone)]
pub struct PlanUser {
    pub name: UserName,
    pub uid: u32,
    pub gid: u32,
    pub role: Role,
    pub disabled: bool,
    /// Index of the user's /24 in the pool and of their box id range.
    pub slot: u32,
    /// Services assigned to the user directly.
    pub services: BTreeSet<ServiceName>,
}

/// How box ids map to host ids (user namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdMap {
    /// The user's own uid/gid, mapped to the same host uid/gid (files keep their owner).
    pub user_uid: u32,
    pub user_gid: u32,
    /// Host uid/gid of box-root; box ids `0..size` map to `root_host..root_host+size`
    /// except the user's own id. Host root is never mapped.
    pub root_host: u32,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ImagePlan {
    Host,
    Dir { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum UpperPlan {
    /// Persistent overlay upper and work directories.
    Dir { upper: PathBuf, work: PathBuf },
    /// A tmpfs upper of this size: ephemeral boxes.
    Tmpfs { size: ByteSize },
    /// No overlay: the root is read-only.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootfsPlan {
    pub image: ImagePlan,
    pub upper: UpperPlan,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum HomeSource {
    Local {
        path: PathBuf,
    },
    Smb {
        /// `//server/share[/subdir]`, already templated.
        unc: String,
        credentials_file: PathBuf,
        /// Where the daemon mounts the share on the host (`<state_dir>/smb/<login>`);
        /// the box gets a bind of it.
        mountpoint: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HomePlan {
    pub source: HomeSource,
    /// Where the home appears inside the box.
    pub target: PathBuf,
    pub quota: ByteSize,
    /// Local homes with `quota = "image"`: the ext4 image of `quota` bytes that is
    /// loop-mounted on the home.
    pub image: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsPlan {
    pub memory_bytes: u64,
    /// Memory + swap limit (cgroup v1 memsw / v2 memory.swap.max is this minus memory).
    pub memory_swap_bytes: u64,
    /// CPU quota in microseconds per `cpu_period_us`.
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub pids: u32,
    pub disk_bytes: u64,
    /// Disk bandwidth limits in bytes per second (None: unlimited).
    pub io_read_bps: Option<u64>,
    pub io_write_bps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub service: ServiceName,
    pub upstream: Upstream,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub address: Ipv4Addr,
    /// Host-side interface name, `ob-<login>` (fits IFNAMSIZ).
    pub host_interface: String,
    pub internet: bool,
    pub lan: bool,
    pub dns: DnsPolicy,
    /// The resolver the box may query (when `dns` allows it), from the config.
    pub resolver: Option<Ipv4Addr>,
    /// Exactly the upstreams of the services the user may use.
    pub allowed: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxPlan {
    pub user: UserName,
    pub role: Role,
    pub profile: ProfileName,
    pub hostname: String,
    pub ids: IdMap,
    pub persistence: Persistence,
    /// Lifetime of an ephemeral box.
    pub ttl: Option<Span>,
    pub rootfs: RootfsPlan,
    pub home: HomePlan,
    pub limits: LimitsPlan,
    pub network: NetworkPlan,
    /// Directory name of the box's cgroup under the daemon's subtree.
    pub cgroup: String,
    pub capabilities: Vec<Capability>,
    pub seccomp: SeccompRules,
    pub terminal: bool,
    pub files: Access,
}

/// Joins `name` under `base` and checks the result is still beneath it (names are already
/// validated; this is the second, independent guard).
fn under(base: &Path, parts: &[&str], what: &'static str) -> Result<PathBuf, PlanError> {
    let mut p = base.to_path_buf();
    for part in parts {
        p.push(part);
    }
    let clean = p
        .components()
        .all(|c| !matches!(c, std::path::Component::ParentDir));
    if clean && p.starts_with(base) && p != base {
        Ok(p)
    } else {
        Err(PlanError::PathEscape { what })
    }
}

/// Checks the services assigned to `user` directly: each must be registered and usable
/// with the user's role (or owned by them), so an admin's mistake is reported rather than
/// silently ignored.
pub fn check_assignments(user: &PlanUser, registry: &[Service]) -> Result<(), PlanError> {
    for name in &user.services {
        let svc = registry
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| PlanError::UnknownService(name.clone()))?;
        let owner = svc.owner.as_ref() == Some(&user.name);
        if !owner && user.role != Role::Admin && user.role < svc.required_role {
            return Err(PlanError::ServiceRequiresRole {
                service: name.clone(),
                required: svc.required_role,
                role: user.role,
            });
        }
    }
    Ok(())
}

/// Services `user` may use under the access rule, in name order. Assignments the rule
/// refuses (e.g. a service restricted after it was assigned) are simply not usable.
pub fn usable_services<'a>(
    user: &PlanUser,
    profile: &Profile,
    registry: &'a [Service],
) -> Vec<&'a Service> {
    let subject = Subject {
        name: &user.name,
        role: user.role,
        disabled: user.disabled,
        services: &user.services,
        profile_services: &profile.spec.services,
    };
    let mut out: Vec<&Service> = registry
        .iter()
        .filter(|s| s.may_be_used_by(&subject))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// [`check_assignments`], then [`usable_services`].
pub fn services_for<'a>(
    user: &PlanUser,
    profile: &Profile,
    registry: &'a [Service],
) -> Result<Vec<&'a Service>, PlanError> {
    check_assignments(user, registry)?;
    Ok(usable_services(user, profile, registry))
}

/// Compiles a user's box plan.
pub fn compile(
    config: &Config,
    user: &PlanUser,
    profile: &Profile,
    registry: &[Service],
) -> Result<BoxPlan, PlanError> {
    if !profile.suits(user.role) {
        return Err(PlanError::ProfileUnsuitable {
            profile: profile.name.clone(),
            role: user.role,
        });
    }
    let pool = config.network.pool;
    let subnet = pool.slot(user.slot).ok_or(PlanError::SlotOutOfPool {
        slot: user.slot,
        pool,
    })?;
    let boxes = &config.boxes;
    if user.uid >= boxes.uid_base || user.gid >= boxes.uid_base {
        return Err(PlanError::UidInBoxRange {
            uid: user.uid,
            uid_base: boxes.uid_base,
        });
    }
    // Config validation guarantees base + slots * range fits in u32.
    let root_host = boxes.uid_base + user.slot * boxes.uid_range;

    let spec = &profile.spec;
    let login = user.name.as_str();
    let state = &config.state_dir;
    let upper = match (spec.persistence, spec.rootfs) {
        (_, Access::Ro) | (_, Access::None) => UpperPlan::None,
        (Persistence::Persistent, Access::Rw) => UpperPlan::Dir {
            upper: under(state, &["boxes", login, "upper"], "upper directory")?,
            work: under(state, &["boxes", login, "work"], "work directory")?,
        },
        (Persistence::Ephemeral, Access::Rw) => UpperPlan::Tmpfs {
            size: spec.limits.disk,
        },
    };
    let image = match &boxes.image {
        Image::Host => ImagePlan::Host,
        Image::Dir(p) => ImagePlan::Dir { path: p.clone() },
    };
    let mut home_image = None;
    let source = match &config.homes {
        HomesConfig::Local(local) => {
            if local.quota == LocalQuota::Image {
                home_image = Some(under(
                    state,
                    &["homes", ".images", &format!("{login}.ext4")],
                    "home image",
                )?);
            }
            HomeSource::Local {
                path: under(state, &["homes", login], "home")?,
            }
        }
        HomesConfig::Smb(smb) => {
            let share = smb.share.replace("{login}", login);
            let mut unc = format!("//{}/{}", smb.server, share);
            if let Some(sub) = &smb.subdir {
                unc.push('/');
                unc.push_str(&sub.replace("{login}", login));
            }
            HomeSource::Smb {
                unc,
                credentials_file: smb.credentials_file.clone(),
                mountpoint: under(state, &["smb", login], "smb mount point")?,
            }
        }
    };

    let allowed = services_for(user, profile, registry)?
        .into_iter()
        .map(|s| Endpoint {
            service: s.name.clone(),
            upstream: s.upstream.clone(),
        })
        .collect();

    let memory = spec.limits.memory.bytes();
    let period = 100_000u64;
    Ok(BoxPlan {
        user: user.name.clone(),
        role: user.role,
        profile: profile.name.clone(),
        hostname: login.to_string(),
        ids: IdMap {
            user_uid: user.uid,
            user_gid: user.gid,
            root_host,
            size: boxes.uid_range,
        },
        persistence: spec.persistence,
        ttl: profile.ttl(),
        rootfs: RootfsPlan {
            image,
            upper,
            read_only: spec.rootfs != Access::Rw,
        },
        home: HomePlan {
            source,
            target: PathBuf::from("/home").join(login),
            quota: spec.limits.disk,
            image: home_image,
        },
        limits: LimitsPlan {
            memory_bytes: memory,
            memory_swap_bytes: memory.saturating_mul(2),
            cpu_quota_us: ((spec.limits.cpu * period as f64).round() as u64).max(1000),
            cpu_period_us: period,
            pids: spec.limits.pids,
            disk_bytes: spec.limits.disk.bytes(),
            io_read_bps: spec.limits.io_read.map(|b| b.bytes()),
            io_write_bps: spec.limits.io_write.map(|b| b.bytes()),
        },
        network: NetworkPlan {
            subnet,
            gateway: subnet.host(1).expect("a /24 has .1"),
            address: subnet.host(2).expect("a /24 has .2"),
            host_interface: format!("ob-{login}"),
            internet: spec.network.internet,
            lan: spec.network.lan,
            dns: spec.network.dns,
            resolver: config.network.resolver,
            allowed,
        },
        cgroup: format!("box-{login}"),
        capabilities: spec.capabilities.clone(),
        seccomp: spec.seccomp.clone(),
        terminal: spec.terminal,
        files: spec.files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileSet;

    fn user(name: &str, role: Role, slot: u32, services: &[&str]) -> PlanUser {
        PlanUser {
            name: name.parse().unwrap(),
            uid: 1000 + slot,
            gid: 1000 + slot,
            role,
            disabled: false,
            slot,
            services: services.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn registry() -> Vec<Service> {
        let mk = |name: &str, up: &str, role, owner: Option<&str>| Service {
            name: name.parse().unwrap(),
            category: "apps".parse().unwrap(),
            url: format!("https://{name}.lab").parse().unwrap(),
            upstream: up.parse().unwrap(),
            required_role: role,
            owner: owner.map(|o| o.parse().unwrap()),
            icon: None,
        };
        vec![
            mk("jellyfin", "192.168.1.10:8096", Role::Member, None),
            mk("grafana", "192.168.1.11:3000", Role::Admin, None),
            mk("wiki", "192.168.1.12:80", Role::Demo, None),
            mk("bobs-app", "192.168.1.13:8080", Role::Admin, Some("bob")),
        ]
    }

    #[test]
    fn a_member_plan_has_every_part_derived_from_its_inputs() {
        let cfg = Config::default();
        let set = ProfileSet::builtin();
        let p = set.get("homelabber").unwrap();
        let plan = compile(
            &cfg,
            &user("alice", Role::Member, 3, &["jellyfin"]),
            p,
            &registry(),
        )
        .unwrap();
        assert_eq!(plan.network.subnet.to_string(), "10.87.3.0/24");
        assert_eq!(plan.network.gateway.to_string(), "10.87.3.1");
        assert_eq!(plan.network.address.to_string(), "10.87.3.2");
        assert_eq!(plan.network.host_interface, "ob-alice");
        assert!(plan.network.host_interface.len() <= 15);
        assert_eq!(plan.ids.root_host, 1_000_000_000 + 3 * 65_536);
        assert_eq!(plan.ids.user_uid, 1003);
        assert_eq!(plan.cgroup, "box-alice");
        assert_eq!(plan.home.target, PathBuf::from("/home/alice"));
        assert_eq!(
            plan.home.source,
            HomeSource::Local {
                path: "/var/lib/orchestratord/homes/alice".into()
            }
        );
        assert!(matches!(plan.rootfs.upper, UpperPlan::Dir { ref upper, .. }
            if upper == Path::new("/var/lib/orchestratord/boxes/alice/upper")));
        assert!(!plan.rootfs.read_only);
        assert_eq!(plan.limits.memory_bytes, 2 << 30);
        assert_eq!(plan.limits.cpu_quota_us, 100_000);
        let allowed: Vec<_> = plan
            .network
            .allowed
            .iter()
            .map(|e| e.service.as_str())
            .collect();
        assert_eq!(allowed, ["jellyfin"]);
        assert!(plan.capabilities.is_empty());
        assert_eq!(plan.ttl, None);
    }

    #[test]
    fn a_demo_plan_is_ephemeral_read_only_and_time_limited() {
        let cfg = Config::default();
        let set = ProfileSet::builtin();
        let plan = compile(
            &cfg,
            &user("visitor", Role::Demo, 0, &["wiki"]),
            set.get("demo").unwrap(),
            &registry(),
        )
        .unwrap();
        assert_eq!(plan.persistence, Persistence::Ephemeral);
        assert_eq!(plan.ttl, Some(Span::minutes(60)));
        assert!(plan.rootfs.read_only);
        assert_eq!(plan.rootfs.upper, UpperPlan::None);
        assert!(!plan.terminal);
        assert_eq!(plan.files, Access::Ro);
        assert_eq!(plan.network.dns, DnsPolicy::Block);
    }

    #[test]
    fn admins_reach_every_service_and_owners_their_own() {
        let cfg = Config::default();
        let set = ProfileSet::builtin();
        let admin = compile(
            &cfg,
            &user("root-ish", Role::Admin, 1, &[]),
            set.get("admin").unwrap(),
            &registry(),
        );
        assert_eq!(admin.unwrap().network.allowed.len(), 4);
        let bob = compile(
            &cfg,
            &user("bob", Role::Member, 2, &[]),
            set.get("media").unwrap(),
            &registry(),
        )
        .unwrap();
        let allowed: Vec<_> = bob
            .network
            .allowed
            .iter()
            .map(|e| e.service.as_str())
            .collect();
        assert_eq!(allowed, ["bobs-app"]);
    }

    #[test]
    fn smb_homes_template_the_login() {
        let cfg = Config::from_toml(
            "[homes]\nbackend = \"smb\"\nserver = \"nas.lan\"\nshare = \"homes\"\nsubdir = \"users/{login}\"\ncredentials_file = \"/etc/o/smb.cred\"",
        )
        .unwrap();
        let set = ProfileSet::builtin();
        let plan = compile(
            &cfg,
            &user("alice", Role::Member, 0, &[]),
            set.get("media").unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(
            plan.home.source,
            HomeSource::Smb {
                unc: "//nas.lan/homes/users/alice".into(),
                mountpoint: "/var/lib/orchestratord/smb/alice".into(),
                credentials_file: "/etc/o/smb.cred".into()
            }
        );
    }

    #[test]
    fn invalid_inputs_fail_with_a_named_error() {
        let cfg = Config::default();
        let set = ProfileSet::builtin();
        let reg = registry();
        let cases: Vec<(PlanUser, &str, &str)> = vec![
            (
                user("eve", Role::Demo, 0, &[]),
                "homelabber",
                "ProfileUnsuitable",
            ),
            (
                user("eve", Role::Member, 256, &[]),
                "media",
                "SlotOutOfPool",
            ),
            (
                PlanUser {
                    uid: 1_000_000_000,
                    ..user("eve", Role::Member, 0, &[])
                },
                "media",
                "UidInBoxRange",
            ),
            (
                user("eve", Role::Member, 0, &["nope"]),
                "media",
                "UnknownService",
            ),
            (
                user("eve", Role::Member, 0, &["grafana"]),
                "media",
                "ServiceRequiresRole",
            ),
            (
                user("eve", Role::Demo, 0, &["jellyfin"]),
                "demo",
                "ServiceRequiresRole",
            ),
        ];
        for (u, profile, rule) in cases {
            let err = compile(&cfg, &u, set.get(profile).unwrap(), &reg).unwrap_err();
            let dbg = format!("{err:?}");
            assert!(dbg.starts_with(rule), "expected {rule}, got {dbg}");
        }
    }

    #[test]
    fn a_disabled_user_reaches_no_service() {
        let cfg = Config::default();
        let set = ProfileSet::builtin();
        let mut u = user("alice", Role::Admin, 0, &[]);
        u.disabled = true;
        let plan = compile(&cfg, &u, set.get("admin").unwrap(), &registry()).unwrap();
        assert!(plan.network.allowed.is_empty());
    }

    #[test]
    fn paths_are_checked_to_stay_under_their_base() {
        let base = Path::new("/var/lib/o");
        assert!(under(base, &["homes", "alice"], "home").is_ok());
        assert!(under(base, &["homes", ".."], "home").is_err());
        assert!(under(base, &["/etc"], "home").is_err());
    }
}
