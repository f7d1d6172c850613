//! What the box helper writes, rendered as data: the user namespace id maps and the
//! generated `/etc` of a box on the host image. Pure, so every line is tested here.
//!
//! Id maps (user_namespaces(7)): box ids `0..size` map to the box's private host range
//! `root_host..root_host+size`, except the user's own uid/gid, which maps to the same host
//! id so files on the home keep their real owner. Host root (0) is never a target.

use crate::plan::{BoxPlan, IdMap};
use crate::profile::DnsPolicy;

/// Host directories a box on the host image sees read-only (a symlink on the host, as
/// /bin -> usr/bin on merged-/usr systems, becomes the same symlink in the box).
pub const HOST_BINDS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Entries of the host's /etc a box on the host image shares read-only: what programs
/// from /usr need to work (the dynamic linker's cache, alternatives, certificates, time
/// zone, terminal and shell setup). Nothing that identifies or authenticates the host:
/// no shadow, ssh keys, machine-id, hostname, fstab, sudoers or the daemon's own config.
pub const HOST_ETC: [&str; 24] = [
    "alternatives",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "environment",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "services",
    "shells",
    "skel",
    "ssl",
    "terminfo",
    "timezone",
];

/// Paths masked in every box (SECURITY.md): files with /dev/null, directories with an
/// empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths made read-only in every box (SECURITY.md).
pub const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One line of `/proc/<pid>/uid_map` or `gid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLine {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

fn map_for(own: u32, root_host: u32, size: u32) -> Vec<MapLine> {
    if own >= size {
        // The user's id lies outside the box range: map the range whole, the id beside it.
        return vec![
            MapLine {
                inside: 0,
                outside: root_host,
                count: size,
            },
            MapLine {
                inside: own,
                outside: own,
                count: 1,
            },
        ];
    }
    let mut lines = vec![];
    if own > 0 {
        lines.push(MapLine {
            inside: 0,
            outside: root_host,
            count: own,
        });
    }
    lines.push(MapLine {
        inside: own,
        outside: own,
        count: 1,
    });
    if own + 1 < size {
        lines.push(MapLine {
            inside: own + 1,
            outside: root_host + own + 1,
            count: size - own - 1,
        });
    }
    lines
}

impl IdMap {
    pub fn uid_lines(&self) -> Vec<MapLine> {
        map_for(self.user_uid, self.root_host, self.size)
    }

    pub fn gid_lines(&self) -> Vec<MapLine> {
        map_for(self.user_gid, self.root_host, self.size)
    }
}

/// The text written to a map file.
pub fn render_map(lines: &[MapLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {} {}\n", l.inside, l.outside, l.count))
        .collect()
}

/// Files of the generated `/etc`, as (name relative to /etc, content). Names and ids come
/// from validated types, so no field can hold a `:` or a newline.
pub fn etc_files(plan: &BoxPlan) -> Vec<(&'static str, String)> {
    let user = plan.user.as_str();
    let (uid, gid) = (plan.ids.user_uid, plan.ids.user_gid);
    let home = plan.home.target.display();
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\n\
         {user}:x:{uid}:{gid}:{user}:{home}:/bin/bash\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\n{user}:x:{gid}:\nnogroup:x:65534:\n");
    let hostname = format!("{}\n", plan.hostname);
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        plan.hostname
    );
    let resolv = match (plan.network.dns, plan.network.resolver) {
        // The box's only resolver is the configured one; the firewall drops DNS to any
        // other address.
        (DnsPolicy::Allow, Some(r)) => format!("nameserver {r}\noptions edns0\n"),
        (DnsPolicy::Allow, None) => "# No resolver is configured for boxes.\n".to_string(),
        (DnsPolicy::Block, _) => "# DNS is blocked for this box by its profile.\n".to_string(),
    };
    vec![
        ("passwd", passwd),
        ("group", group),
        ("hostname", hostname),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{compile, PlanUser};
    use crate::profile::ProfileSet;
    use crate::{Config, Role};

    fn plan(profile: &str, role: Role, uid: u32) -> BoxPlan {
        let user = PlanUser {
            name: "alice".parse().unwrap(),
            uid,
            gid: uid,
            role,
            disabled: false,
            slot: 2,
            services: Default::default(),
        };
        let mut config = Config::default();
        config.network.resolver = Some("192.168.1.1".parse().unwrap());
        compile(
            &config,
            &user,
            ProfileSet::builtin().get(profile).unwrap(),
            &[],
        )
        .unwrap()
    }

    /// Half-open id ranges `[start, end)`.
    type Ranges = Vec<(u32, u32)>;

    fn covered(lines: &[MapLine]) -> (Ranges, Ranges) {
        let inside = lines
            .iter()
            .map(|l| (l.inside, l.inside + l.count))
            .collect();
        let outside = lines
            .iter()
            .map(|l| (l.outside, l.outside + l.count))
            .collect();
        (inside, outside)
    }

    fn disjoint(mut ranges: Ranges) -> bool {
        ranges.sort();
        ranges.windows(2).all(|w| w[0].1 <= w[1].0)
    }

    #[test]
    fn the_user_keeps_their_host_id_and_box_root_maps_to_the_private_range() {
        let p = plan("homelabber", Role::Member, 1000);
        let base = 1_000_000_000 + 2 * 65_536;
        assert_eq!(
            p.ids.uid_lines(),
            [
                MapLine {
                    inside: 0,
                    outside: base,
                    count: 1000
                },
                MapLine {
                    inside: 1000,
                    outside: 1000,
                    count: 1
                },
                MapLine {
                    inside: 1001,
                    outside: base + 1001,
                    count: 64_535
                },
            ]
        );
        assert_eq!(
            render_map(&p.ids.gid_lines()),
            format!("0 {base} 1000\n1000 1000 1\n1001 {} 64535\n", base + 1001)
        );
    }

    #[test]
    fn id_maps_never_map_host_root_never_overlap_and_cover_the_whole_box_range() {
        for uid in [1000, 1001, 4242, 65_534, 65_535, 65_536, 70_000, 999_999] {
            let p = plan("media", Role::Member, uid);
            for lines in [p.ids.uid_lines(), p.ids.gid_lines()] {
                assert!(
                    lines.iter().all(|l| l.outside != 0 && l.count > 0),
                    "{uid}: {lines:?}"
                );
                let (inside, outside) = covered(&lines);
                assert!(
                    disjoint(inside.clone()),
                    "{uid}: inside ranges overlap {lines:?}"
                );
                assert!(disjoint(outside), "{uid}: host ranges overlap {lines:?}");
                let total: u64 = lines.iter().map(|l| u64::from(l.count)).sum();
                let expected = if uid >= 65_536 { 65_537 } else { 65_536 };
                assert_eq!(total, expected, "{uid}");
                assert!(lines
                    .iter()
                    .any(|l| l.inside == uid && l.outside == uid && l.count == 1));
                assert!(lines.len() <= 5, "older kernels accept at most 5 lines");
            }
        }
    }

    #[test]
    fn etc_is_generated_from_the_plan() {
        let p = plan("developer", Role::Member, 1000);
        let files: std::collections::BTreeMap<_, _> = etc_files(&p).into_iter().collect();
        assert_eq!(
            files["passwd"].lines().nth(1).unwrap(),
            "alice:x:1000:1000:alice:/home/alice:/bin/bash"
        );
        assert!(files["group"].contains("alice:x:1000:\n"));
        assert_eq!(files["hostname"], "alice\n");
        assert!(files["hosts"].contains("127.0.1.1\talice\n"));
        assert_eq!(
            files["resolv.conf"],
            "nameserver 192.168.1.1\noptions edns0\n"
        );
        for (name, text) in &files {
            assert!(text.ends_with('\n'), "{name}");
        }
    }

    #[test]
    fn a_profile_that_blocks_dns_gets_no_nameserver() {
        let p = plan("demo", Role::Demo, 1000);
        let files: std::collections::BTreeMap<_, _> = etc_files(&p).into_iter().collect();
        assert!(!files["resolv.conf"].contains("nameserver"));
    }
}
