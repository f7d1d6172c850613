//! The nftables rule model: the text of every transaction the daemon sends to the kernel,
//! rendered from validated data, so the whole firewall policy is decided (and tested) here
//! without root. `runtime::net` only hands these texts to libnftables.
//!
//! # Shape (see `nft/orchestratord.nft`, the base ruleset)
//!
//! The daemon owns one table, `inet orchestratord`, and nothing else in the host's ruleset.
//! Every box has one host-side interface `ob-<login>` (routed point to point: the host end
//! holds the gateway `.1/24` of the user's subnet, the box end `eth0` holds `.2/24`; no
//! bridge, so boxes share no layer-2 segment). The hook chains of the base ruleset drop all
//! traffic from `ob-*` interfaces that no per-user chain accepts, so a box whose interface
//! is not in the verdict maps has no network at all.
//!
//! Per user, one transaction ([`apply_user`]) creates or replaces:
//! - chains `user_<login>_fwd` (traffic routed through the host) and `user_<login>_in`
//!   (traffic to the host itself), flushed and refilled, so a live policy change (role,
//!   profile, services) is atomic and never leaves a moment without rules;
//! - every accepting and dropping rule of those chains carries an anonymous counter, so
//!   the sums are the user's allowed and dropped packets since their last policy change
//!   (named counter objects cannot be re-added idempotently by nft 1.0.6);
//! - elements of the maps `box_forward` and `box_input` (interface -> jump to the user's
//!   chain) and of the set `box_sources` (interface . its one source address);
//! - a fingerprint, a hash of the transaction, as the comment of the last rule of the
//!   user's input chain (`fp <n>`), which reconciliation compares to see whether the kernel
//!   holds exactly what the store says.
//!
//! The transaction touches only that user's objects and elements, and per-user rules use
//! no set of their own (neither anonymous `{ ... }` sets nor named ones): the address
//! ranges, DNS ports and resolver live in named sets of the base ruleset. This matters for
//! speed: before each transaction nft fetches every set of the table (and, for element
//! changes, every set's elements, one request per set), so per-user sets would make each
//! change cost grow with the number of users (measured: 127 ms to add one element with 300
//! users that each had eight anonymous sets, against 8 ms without). As it is, a change
//! costs the same with 10 or 1000 users (B7). [`remove_user`] deletes them, also in one
//! transaction, and succeeds whether or not they exist (each delete is preceded by an
//! idempotent add).

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::names::UserName;
use crate::net::{Ipv4Net, PRIVATE_RANGES};
use crate::plan::NetworkPlan;
use crate::profile::DnsPolicy;

/// The daemon's table (family `inet`).
pub const TABLE: &str = "orchestratord";

/// Version of the base ruleset; part of the marker counter's name ([`base_marker`]) so a
/// daemon can tell whether the loaded table is the one it would load.
pub const BASE_VERSION: u32 = 2;

/// The base ruleset, as shipped in `nft/`.
pub const BASE_RULESET: &str = include_str!("../../nft/orchestratord.nft");

/// Addresses no box may ever reach, whatever its profile: "this network", loopback,
/// link-local (cloud metadata lives at 169.254.169.254), multicast, reserved and broadcast.
pub const NEVER: [&str; 5] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Ports treated as DNS: plain DNS and DNS over TLS.
pub const DNS_PORTS: [u16; 2] = [53, 853];

/// What every user's rules share: the daemon's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The subnet pool (all boxes); boxes never reach each other.
    pub pool: Ipv4Net,
    /// The one resolver boxes may query, where their profile allows DNS.
    pub resolver: Option<Ipv4Addr>,
    /// The daemon's API port: never reachable from a box, even if a service names it.
    pub api_port: Option<u16>,
}

/// A registered service's upstream, resolved to an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upstream {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One user's network policy, as the firewall needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub login: UserName,
    pub interface: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub address: Ipv4Addr,
    pub internet: bool,
    pub lan: bool,
    pub dns: DnsPolicy,
    /// Resolved upstreams of the services the user may use (sorted, deduplicated).
    pub services: Vec<Upstream>,
}

impl UserNet {
    /// From a compiled plan and the resolved upstreams of `plan.allowed`.
    pub fn new(login: &UserName, net: &NetworkPlan, mut services: Vec<Upstream>) -> UserNet {
        services.sort();
        services.dedup();
        UserNet {
            login: login.clone(),
            interface: net.host_interface.clone(),
            subnet: net.subnet,
            gateway: net.gateway,
            address: net.address,
            internet: net.internet,
            lan: net.lan,
            dns: net.dns,
            services,
        }
    }
}

/// Names of one user's objects in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub forward: String,
    pub input: String,
}

impl Names {
    pub fn of(login: &str) -> Names {
        Names {
            forward: format!("user_{login}_fwd"),
            input: format!("user_{login}_in"),
        }
    }

    /// The login a chain or counter name belongs to (`user_<login>_fwd` -> `login`).
    pub fn login_of(object: &str) -> Option<&str> {
        let rest = object.strip_prefix("user_")?;
        ["_fwd", "_in"]
            .iter()
            .find_map(|s| rest.strip_suffix(s))
            .filter(|l| UserName::parse(l).is_ok())
    }
}

/// A per-user transaction and the fingerprint it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub text: String,
    pub fingerprint: u32,
}

/// FNV-1a, 32 bits: a stable fingerprint of a rule text (not a security boundary: it only
/// tells reconciliation whether the kernel holds the text the store implies).
pub fn fingerprint(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // 0 is what a missing element reads as.
    h.max(1)
}

/// `{ a, b, c }`: the elements of an `add element` command.
fn set<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", v.join(", "))
}

/// The rules of a user's chains, without the chain and element plumbing: what `net show`
/// prints and what [`apply_user`] installs.
pub fn user_rules(ctx: &Context, u: &UserNet) -> (Vec<String>, Vec<String>) {
    let ok = "counter accept".to_string();
    let drop = "counter drop".to_string();
    let mut fwd = Vec::new();
    let mut inp = Vec::new();
    // Anti-spoofing (the hook chains check box_sources too; this counts it per user).
    for chain in [&mut fwd, &mut inp] {
        chain.push(format!("ip saddr != {} {drop}", u.address));
    }
    // The daemon's API on any host address, whatever else is allowed.
    if let Some(port) = ctx.api_port {
        inp.push(format!("tcp dport {port} {drop}"));
    }
    // DNS: only the configured resolver, and only where the profile allows it.
    if let (DnsPolicy::Allow, Some(_)) = (u.dns, ctx.resolver) {
        for chain in [&mut fwd, &mut inp] {
            chain.push(format!(
                "ip daddr . meta l4proto . th dport @{SET_RESOLVER} {ok}"
            ));
        }
    }
    for chain in [&mut fwd, &mut inp] {
        chain.push(format!("meta l4proto . th dport @{SET_DNS_PORTS} {drop}"));
    }
    // Registered services the user may use: exactly their host:port, TCP and UDP.
    for s in &u.services {
        for proto in ["tcp", "udp"] {
            for chain in [&mut fwd, &mut inp] {
                chain.push(format!("ip daddr {} {proto} dport {} {ok}", s.addr, s.port));
            }
        }
    }
    // Nothing else on the host itself.
    inp.push(drop.clone());
    // Never: other boxes, loopback, link-local/metadata, multicast, reserved.
    fwd.push(format!("ip daddr @{SET_NEVER} {drop}"));
    if u.lan {
        fwd.push(format!("ip daddr @{SET_PRIVATE} {ok}"));
    } else {
        fwd.push(format!("ip daddr @{SET_PRIVATE} {drop}"));
    }
    if u.internet {
        fwd.push(ok);
    }
    fwd.push(drop);
    (fwd, inp)
}

/// The transaction that installs or replaces `u`'s rules and elements.
pub fn apply_user(ctx: &Context, u: &UserNet) -> Transaction {
    let fp = fingerprint(&render_user(ctx, u, None));
    Transaction {
        text: render_user(ctx, u, Some(fp)),
        fingerprint: fp,
    }
}

/// The comment that carries a user's fingerprint (on the last rule of their input chain).
pub fn fingerprint_comment(fp: u32) -> String {
    format!("fp {fp}")
}

/// The fingerprint in a rule comment written by [`fingerprint_comment`].
pub fn parse_fingerprint_comment(comment: &str) -> Option<u32> {
    comment.strip_prefix("fp ")?.parse().ok()
}

fn render_user(ctx: &Context, u: &UserNet, fp: Option<u32>) -> String {
    let n = Names::of(u.login.as_str());
    let (fwd, inp) = user_rules(ctx, u);
    let mut body = String::new();
    for (chain, rules) in [(&n.forward, &fwd), (&n.input, &inp)] {
        let _ = writeln!(body, "add chain inet {TABLE} {chain}");
        let _ = writeln!(body, "flush chain inet {TABLE} {chain}");
        for (i, r) in rules.iter().enumerate() {
            let _ = write!(body, "add rule inet {TABLE} {chain} {r}");
            if let (Some(fp), true) = (fp, chain == &n.input && i + 1 == rules.len()) {
                let _ = write!(body, " comment \"{}\"", fingerprint_comment(fp));
            }
            let _ = writeln!(body);
        }
    }
    let ifname = &u.interface;
    let _ = writeln!(
        body,
        "add element inet {TABLE} box_sources {{ \"{ifname}\" . {} }}",
        u.address
    );
    let _ = writeln!(
        body,
        "add element inet {TABLE} box_forward {{ \"{ifname}\" : jump {} }}",
        n.forward
    );
    let _ = writeln!(
        body,
        "add element inet {TABLE} box_input {{ \"{ifname}\" : jump {} }}",
        n.input
    );
    body
}

/// The transaction that removes everything of `login` (interface `ob-<login>`), whether or
/// not it exists: each delete follows an add of the same object, which is a no-op when it
/// exists. Elements go first (they jump to the chains), then the chains.
pub fn remove_user(login: &UserName, interface: &str, address: Ipv4Addr) -> String {
    let n = Names::of(login.as_str());
    let mut t = String::new();
    let elems = [
        (
            "box_forward",
            format!("\"{interface}\" : jump {}", n.forward),
        ),
        ("box_input", format!("\"{interface}\" : jump {}", n.input)),
        ("box_sources", format!("\"{interface}\" . {address}")),
    ];
    // The chains must exist for the jump elements to be added.
    for chain in [&n.forward, &n.input] {
        let _ = writeln!(t, "add chain inet {TABLE} {chain}");
    }
    for (map, e) in &elems {
        let _ = writeln!(t, "add element inet {TABLE} {map} {{ {e} }}");
        let key = e.split(" : ").next().unwrap_or(e);
        let _ = writeln!(t, "delete element inet {TABLE} {map} {{ {key} }}");
    }
    for chain in [&n.forward, &n.input] {
        let _ = writeln!(t, "flush chain inet {TABLE} {chain}");
        let _ = writeln!(t, "delete chain inet {TABLE} {chain}");
    }
    t
}

/// Named sets of the base ruleset that per-user rules refer to.
pub const SET_NEVER: &str = "never_reach";
pub const SET_PRIVATE: &str = "private_ranges";
pub const SET_DNS_PORTS: &str = "dns_ports";
pub const SET_RESOLVER: &str = "dns_resolver";

/// The transaction that (re)creates the table from scratch with the base ruleset, the pool
/// and the address sets, atomically replacing whatever table of that name exists.
/// `transit_drop`: the host did not forward packets before the daemon turned forwarding
/// on, so traffic that neither comes from nor goes to a box is dropped (the host stays the
/// non-router it was). Its last line adds the marker counter [`base_marker`] names.
pub fn base(ctx: &Context, transit_drop: bool) -> String {
    let mut t = base_body(ctx, transit_drop);
    let _ = writeln!(
        t,
        "add counter inet {TABLE} {}",
        base_marker(ctx, transit_drop)
    );
    t
}

/// The name of the counter that marks a table loaded by [`base`] with these settings:
/// `base_v<version>_<hash of the transaction>`, so a changed pool, resolver or transit
/// policy, like a new version, makes reconciliation reload the base.
pub fn base_marker(ctx: &Context, transit_drop: bool) -> String {
    format!(
        "base_v{BASE_VERSION}_{}",
        fingerprint(&base_body(ctx, transit_drop))
    )
}

fn base_body(ctx: &Context, transit_drop: bool) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "table inet {TABLE}");
    let _ = writeln!(t, "delete table inet {TABLE}");
    t.push_str(BASE_RULESET);
    let _ = writeln!(t);
    let _ = writeln!(t, "add element inet {TABLE} box_pool {{ {} }}", ctx.pool);
    let never = std::iter::once(ctx.pool.to_string()).chain(NEVER.iter().map(|s| s.to_string()));
    let _ = writeln!(t, "add element inet {TABLE} {SET_NEVER} {}", set(never));
    let _ = writeln!(
        t,
        "add element inet {TABLE} {SET_PRIVATE} {}",
        set(PRIVATE_RANGES.iter())
    );
    let dns_ports = DNS_PORTS
        .iter()
        .flat_map(|p| ["tcp", "udp"].map(|proto| format!("{proto} . {p}")));
    let _ = writeln!(
        t,
        "add element inet {TABLE} {SET_DNS_PORTS} {}",
        set(dns_ports)
    );
    if let Some(r) = ctx.resolver {
        let _ = writeln!(
            t,
            "add element inet {TABLE} {SET_RESOLVER} {}",
            set(["tcp", "udp"].map(|proto| format!("{r} . {proto} . 53")))
        );
    }
    if transit_drop {
        let _ = writeln!(t, "add rule inet {TABLE} transit drop");
    }
    t
}

/// The policy in words, for `orchestratorctl net show`.
pub fn describe(ctx: &Context, u: &UserNet) -> Vec<String> {
    let mut w = vec![format!(
        "box {} on {} (gateway {}), interface {}; sends only from {}",
        u.address, u.subnet, u.gateway, u.interface, u.address
    )];
    if u.services.is_empty() {
        w.push("no registered services reachable".into());
    } else {
        let list: Vec<String> = u
            .services
            .iter()
            .map(|s| format!("{}:{}", s.addr, s.port))
            .collect();
        w.push(format!(
            "registered services reachable (tcp and udp): {}",
            list.join(", ")
        ));
    }
    w.push(match (u.dns, ctx.resolver) {
        (DnsPolicy::Allow, Some(r)) => format!("DNS only through the resolver {r}"),
        (DnsPolicy::Allow, None) => {
            "DNS allowed by the profile, but no resolver is configured: no DNS".into()
        }
        (DnsPolicy::Block, _) => "DNS blocked (ports 53 and 853 to any address)".into(),
    });
    w.push(if u.lan {
        "LAN (private ranges) reachable".into()
    } else {
        "LAN (private ranges) blocked".into()
    });
    w.push(if u.internet {
        "internet reachable, masqueraded".into()
    } else {
        "internet blocked (no direct-IP egress)".into()
    });
    w.push(format!(
        "never: other boxes ({}), the host's own services{}, loopback, link-local/metadata, multicast, IPv6",
        ctx.pool,
        ctx.api_port
            .map(|p| format!(" including the API port {p}"))
            .unwrap_or_default()
    ));
    w.push("everything else dropped and counted".into());
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            pool: "10.87.0.0/16".parse().unwrap(),
            resolver: Some(Ipv4Addr::new(192, 168, 1, 1)),
            api_port: Some(9000),
        }
    }

    fn user(internet: bool, lan: bool, dns: DnsPolicy, services: &[(&str, u16)]) -> UserNet {
        UserNet {
            login: UserName::parse("alice").unwrap(),
            interface: "ob-alice".into(),
            subnet: "10.87.3.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 87, 3, 1),
            address: Ipv4Addr::new(10, 87, 3, 2),
            internet,
            lan,
            dns,
            services: services
                .iter()
                .map(|(a, p)| Upstream {
                    addr: a.parse().unwrap(),
                    port: *p,
                })
                .collect(),
        }
    }

    #[test]
    fn a_services_only_user_gets_exactly_their_services_and_a_final_drop() {
        let u = user(false, false, DnsPolicy::Block, &[("192.168.1.10", 8096)]);
        let (fwd, inp) = user_rules(&ctx(), &u);
        assert_eq!(
            fwd,
            [
                "ip saddr != 10.87.3.2 counter drop",
                "meta l4proto . th dport @dns_ports counter drop",
                "ip daddr 192.168.1.10 tcp dport 8096 counter accept",
                "ip daddr 192.168.1.10 udp dport 8096 counter accept",
                "ip daddr @never_reach counter drop",
                "ip daddr @private_ranges counter drop",
                "counter drop",
            ]
        );
        assert_eq!(inp.first().unwrap(), &fwd[0]);
        assert_eq!(inp[1], "tcp dport 9000 counter drop");
        assert_eq!(inp.last().unwrap(), "counter drop");
        assert!(!fwd.iter().chain(&inp).any(|r| r.contains("@dns_resolver")));
    }

    #[test]
    fn per_user_rules_have_no_sets_of_their_own() {
        let u = user(
            true,
            true,
            DnsPolicy::Allow,
            &[("192.168.1.10", 8096), ("192.168.1.11", 443)],
        );
        let t = apply_user(&ctx(), &u);
        for line in t.text.lines().filter(|l| l.starts_with("add rule")) {
            assert!(!line.contains('{'), "anonymous set in {line}");
        }
        assert!(!t.text.contains("add set"));
    }

    #[test]
    fn dns_is_accepted_only_to_the_resolver_and_only_when_allowed() {
        let allow = user(true, false, DnsPolicy::Allow, &[]);
        let (fwd, _) = user_rules(&ctx(), &allow);
        let accept = fwd
            .iter()
            .position(|r| r.contains("@dns_resolver counter accept"))
            .unwrap();
        let block = fwd
            .iter()
            .position(|r| r.contains("@dns_ports counter drop"))
            .unwrap();
        assert!(
            accept < block,
            "the resolver is accepted before DNS elsewhere is dropped"
        );
        let no_resolver = Context {
            resolver: None,
            ..ctx()
        };
        let (fwd, _) = user_rules(&no_resolver, &allow);
        assert!(!fwd.iter().any(|r| r.contains("@dns_resolver")));
        assert!(!base(&no_resolver, false).contains("add element inet orchestratord dns_resolver"));
        assert!(base(&ctx(), false).contains(
            "add element inet orchestratord dns_resolver { 192.168.1.1 . tcp . 53, 192.168.1.1 . udp . 53 }"
        ));
    }

    #[test]
    fn lan_and_internet_follow_the_profile_and_never_precede_the_forbidden_ranges() {
        for (internet, lan) in [(false, false), (true, false), (false, true), (true, true)] {
            let (fwd, _) = user_rules(&ctx(), &user(internet, lan, DnsPolicy::Block, &[]));
            let never = fwd.iter().position(|r| r.contains("@never_reach")).unwrap();
            let private = fwd
                .iter()
                .position(|r| r.contains("@private_ranges"))
                .unwrap();
            assert!(never < private);
            assert_eq!(fwd[private].ends_with("accept"), lan, "{internet} {lan}");
            let catch_all_accept = fwd.iter().any(|r| r == "counter accept");
            assert_eq!(catch_all_accept, internet);
            assert_eq!(fwd.last().unwrap(), "counter drop");
        }
    }

    #[test]
    fn apply_touches_only_the_users_objects_and_fingerprints_its_body() {
        let u = user(true, false, DnsPolicy::Allow, &[("192.168.1.10", 8096)]);
        let t = apply_user(&ctx(), &u);
        for line in t.text.lines() {
            assert!(
                line.contains("user_alice_") || line.contains("\"ob-alice\""),
                "{line}"
            );
            assert!(
                line.starts_with("add ") || line.starts_with("flush "),
                "{line}"
            );
        }
        let last_input_rule = t
            .text
            .lines()
            .rfind(|l| l.starts_with("add rule inet orchestratord user_alice_in "))
            .unwrap();
        assert!(
            last_input_rule.ends_with(&format!(" counter drop comment \"fp {}\"", t.fingerprint))
        );
        assert_eq!(t.text.matches("comment").count(), 1);
        assert_eq!(
            parse_fingerprint_comment(&fingerprint_comment(t.fingerprint)),
            Some(t.fingerprint)
        );
        let other = apply_user(&ctx(), &user(false, false, DnsPolicy::Allow, &[]));
        assert_ne!(t.fingerprint, other.fingerprint);
        assert_eq!(t, apply_user(&ctx(), &u), "rendering is deterministic");
    }

    #[test]
    fn remove_deletes_elements_before_chains_and_chains_before_counters() {
        let login = UserName::parse("alice").unwrap();
        let t = remove_user(&login, "ob-alice", Ipv4Addr::new(10, 87, 3, 2));
        let pos = |s: &str| t.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(
            pos("delete element inet orchestratord box_forward")
                < pos("delete chain inet orchestratord user_alice_fwd")
        );
        for line in t.lines().filter(|l| l.starts_with("delete")) {
            let object: Vec<&str> = line.split_whitespace().skip(1).take(4).collect();
            let add = format!("add {}", object.join(" "));
            assert!(
                t.find(&add).unwrap() < t.find(line).unwrap(),
                "{line} has no add before it"
            );
        }
    }

    #[test]
    fn object_names_map_back_to_their_login() {
        assert_eq!(Names::login_of("user_alice_fwd"), Some("alice"));
        assert_eq!(Names::login_of("user_bob-2_in"), Some("bob-2"));
        assert_eq!(Names::login_of("user_bob_drop"), None);
        assert_eq!(Names::login_of("forward"), None);
        assert_eq!(Names::login_of("user__in"), None);
    }

    #[test]
    fn the_base_replaces_the_table_and_names_the_pool() {
        let b = base(&ctx(), true);
        assert!(b.starts_with("table inet orchestratord\ndelete table inet orchestratord\n"));
        assert!(b.contains("add element inet orchestratord box_pool { 10.87.0.0/16 }"));
        assert!(b.contains(
            "add element inet orchestratord never_reach { 10.87.0.0/16, 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4, 240.0.0.0/4 }"
        ));
        assert!(b.contains(
            "add element inet orchestratord private_ranges { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 }"
        ));
        assert!(b.contains(
            "add element inet orchestratord dns_ports { tcp . 53, udp . 53, tcp . 853, udp . 853 }"
        ));
        assert!(b.contains("add rule inet orchestratord transit drop"));
        assert!(!base(&ctx(), false).contains("transit drop"));
        // The marker names the settings: any change of them means a reload.
        let marker = base_marker(&ctx(), true);
        assert!(b.ends_with(&format!("add counter inet orchestratord {marker}\n")));
        assert!(marker.starts_with(&format!("base_v{BASE_VERSION}_")));
        assert_ne!(marker, base_marker(&ctx(), false));
        let other_pool = Context {
            pool: "10.88.0.0/16".parse().unwrap(),
            ..ctx()
        };
        assert_ne!(marker, base_marker(&other_pool, true));
        let no_resolver = Context {
            resolver: None,
            ..ctx()
        };
        assert_ne!(marker, base_marker(&no_resolver, true));
    }
}
