//! Box networks with real traffic, as root, entirely inside network namespaces this test
//! creates (nothing is added to the machine's own namespace):
//!
//! ```text
//!   boxes (ob-*) --- [host ns: the daemon, its nft table]  lan0 192.168.77.1
//!                                                              |
//!                     [lan ns] 192.168.77.10: tcp/udp echo :7, tcp echo :8, DNS :53
//!                              198.51.100.1  (routes and forwards)
//!                                                              |
//!                     [internet ns] 198.51.100.2: tcp/udp echo :80
//! ```
//!
//! The daemon runs in the host namespace, so its table, veths and forwarding setting live
//! and die there. Drop removes the daemon, the boxes (cgroups), the servers and the three
//! namespaces, also when an assertion fails.

// setns between fork and exec, for the processes started in the lab's namespaces.
#![allow(unsafe_code)]

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::DAEMON;
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_orchestratord-probe");

const LAN: &str = "192.168.77.10";
const INTERNET: &str = "198.51.100.2";
const API_PORT: u16 = 9000;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A named network namespace (`ip netns`), deleted on drop with everything in it.
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    fn new(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let file = File::open(format!("/run/netns/{name}")).unwrap();
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name, file }
    }

    /// `cmd`, run inside this namespace (joined between fork and exec).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the descriptor stays open in the parent
        // (and so in the child) for the duration of the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run(self
            .command("sh")
            .args(["-c", &format!("echo {value} > {path}")]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Lab {
    daemon: Option<Proc>,
    servers: Vec<Proc>,
    dir: tempfile::TempDir,
    cgroup: String,
    // Dropped last (declaration order): the namespaces outlive everything in them.
    host: Netns,
    lan: Netns,
    _internet: Netns,
}

impl Lab {
    fn new() -> Lab {
        let id = format!(
            "obt{}x{}",
            std::process::id(),
            orchestratord::testing::unique()
        );
        let _ = orchestratord::runtime::boxes::become_subreaper();
        let host = Netns::new(format!("{id}-host"));
        let lan = Netns::new(format!("{id}-lan"));
        let internet = Netns::new(format!("{id}-inet"));
        let (h, l, i) = (&host.name, &lan.name, &internet.name);
        ip(&[
            "-n", h, "link", "add", "lan0", "type", "veth", "peer", "name", "up0", "netns", l,
        ]);
        ip(&["-n", h, "addr", "add", "192.168.77.1/24", "dev", "lan0"]);
        ip(&["-n", h, "link", "set", "lan0", "up"]);
        ip(&["-n", h, "route", "add", "default", "via", LAN]);
        ip(&["-n", l, "addr", "add", &format!("{LAN}/24"), "dev", "up0"]);
        ip(&["-n", l, "link", "set", "up0", "up"]);
        ip(&[
            "-n", l, "link", "add", "wan0", "type", "veth", "peer", "name", "up0", "netns", i,
        ]);
        ip(&["-n", l, "addr", "add", "198.51.100.1/24", "dev", "wan0"]);
        ip(&["-n", l, "link", "set", "wan0", "up"]);
        // The LAN host knows the way to the boxes (so an attempt to open a connection into
        // a box really reaches the host's firewall).
        ip(&[
            "-n",
            l,
            "route",
            "add",
            "10.87.0.0/16",
            "via",
            "192.168.77.1",
        ]);
        lan.sysctl("net.ipv4.ip_forward", "1");
        ip(&[
            "-n",
            i,
            "addr",
            "add",
            &format!("{INTERNET}/24"),
            "dev",
            "up0",
        ]);
        ip(&["-n", i, "link", "set", "up0", "up"]);
        ip(&["-n", i, "route", "add", "default", "via", "198.51.100.1"]);

        let dir = tempfile::Builder::new()
            .prefix("orchd-net-")
            .tempdir()
            .unwrap();
        let cgroup = format!("{id}-boxes");
        let mut lab = Lab {
            daemon: None,
            servers: Vec::new(),
            dir,
            cgroup,
            host,
            lan,
            _internet: internet,
        };
        lab.serve_in(
            0,
            &[
                &format!("tcp:{LAN}:7"),
                &format!("udp:{LAN}:7"),
                &format!("tcp:{LAN}:8"),
                &format!("dns:{LAN}:53"),
            ],
        );
        lab.serve_in(
            1,
            &[&format!("tcp:{INTERNET}:80"), &format!("udp:{INTERNET}:80")],
        );
        let config = format!(
            "listen = \"0.0.0.0:{API_PORT}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n\
             [network]\nresolver = \"{LAN}\"\n\
             [boxes]\ncgroup = \"{}\"\nstop_grace = \"1s\"\n",
            lab.socket().display(),
            lab.state_dir().display(),
            lab.cgroup
        );
        std::fs::write(lab.dir.path().join("config.toml"), config).unwrap();
        lab.spawn_daemon();
        lab
    }

    /// Servers in the LAN (0) or internet (1) namespace; waits for "ready".
    fn serve_in(&mut self, which: usize, specs: &[&str]) {
        let ns = if which == 0 {
            &self.lan
        } else {
            &self._internet
        };
        let mut child = ns
            .command(PROBE)
            .arg("net-serve")
            .args(specs)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "server in ns {which} did not start");
        self.servers.push(Proc(child));
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("o.sock")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn spawn_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let child = self
            .host
            .command(DAEMON)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.socket().exists() && self.ctl(&["box", "list"]).status.success()) {
            if let Some(st) = self.daemon.as_mut().unwrap().0.try_wait().unwrap() {
                panic!("daemon exited early with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9_daemon(&mut self) {
        self.daemon.take();
    }

    fn ctl(&self, args: &[&str]) -> Output {
        common::ctl_command(&self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "orchestratorctl {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&all)).unwrap()
    }

    fn add_user(&self, login: &str, role: &str, profile: &str, services: &str) -> Value {
        let email = format!("{login}@example.com");
        let mut args = vec![
            "user",
            "add",
            &email,
            "--login",
            login,
            "--role",
            role,
            "--profile",
            profile,
        ];
        if !services.is_empty() {
            args.extend(["--services", services]);
        }
        self.json(&args)
    }

    /// Starts the user's box and copies the probe into their home.
    fn start_box(&self, login: &str) -> Value {
        let v = self.json(&["box", "start", login]);
        assert_eq!(v["state"], "running", "{v}\n{}", self.log());
        let home = self.state_dir().join("homes").join(login);
        let dst = home.join("probe");
        std::fs::copy(PROBE, &dst).unwrap();
        let meta = std::fs::metadata(&home).unwrap();
        std::os::unix::fs::chown(
            &dst,
            Some(std::os::unix::fs::MetadataExt::uid(&meta)),
            Some(std::os::unix::fs::MetadataExt::gid(&meta)),
        )
        .unwrap();
        v
    }

    /// Runs `net-check` in the user's box (as the user) and returns spec -> outcome.
    fn check(&self, login: &str, specs: &[String]) -> Value {
        let probe = format!("/home/{login}/probe");
        let mut args = vec!["exec", login, "--", probe.as_str(), "net-check"];
        args.extend(specs.iter().map(String::as_str));
        let out = self.ctl(&args);
        assert!(
            out.status.success(),
            "net-check in {login}'s box: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `net-check` in a namespace of the lab (0 = LAN) as root.
    fn check_from_lan(&self, specs: &[String]) -> Value {
        let out = run(self.lan.command(PROBE).arg("net-check").args(specs));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn box_pid(&self, login: &str) -> i64 {
        self.json(&["box", "status", login])["pid"]
            .as_i64()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemon.take();
        self.servers.clear();
        common::remove_cgroup_subtree(&self.cgroup);
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Asserts each spec got the expected outcome ("ok" or "blocked": anything but ok, and
/// never "refused", which would mean a packet reached a listener-less peer).
fn expect(who: &str, got: &Value, want: &[(&String, &str)]) {
    for (spec, w) in want {
        let g = got[spec.as_str()].as_str().unwrap_or("missing");
        match *w {
            "ok" => assert_eq!(g, "ok", "{who}: {spec} should be reachable; all: {got}"),
            "blocked" => assert!(
                g == "timeout" || g == "unreachable" || g == "denied",
                "{who}: {spec} should be dropped, got {g}; all: {got}"
            ),
            other => assert_eq!(g, other, "{who}: {spec}; all: {got}"),
        }
    }
}

#[test]
fn box_firewall_enforces_each_profile_with_real_traffic_live_and_across_a_daemon_kill() {
    let mut lab = Lab::new();
    // The service "echo" is the LAN host's port 7 (tcp and udp); port 8 is not registered.
    lab.ctl_ok(&[
        "service",
        "add",
        "echo",
        "--url",
        "http://echo.lan/",
        "--upstream",
        &format!("{LAN}:7"),
        "--role",
        "member",
    ]);
    // admin profile: LAN, internet, DNS. media: services only, no DNS. developer:
    // internet and DNS, no LAN.
    lab.add_user("alice", "admin", "admin", "");
    lab.add_user("bob", "member", "media", "echo");
    lab.add_user("dave", "member", "developer", "");
    let a = lab.start_box("alice");
    let b = lab.start_box("bob");
    lab.start_box("dave");
    let addr = |v: &Value| v["network"]["address"].as_str().unwrap().to_string();
    let gw = |v: &Value| v["network"]["gateway"].as_str().unwrap().to_string();
    let (alice_ip, bob_ip) = (addr(&a), addr(&b));
    assert_ne!(alice_ip, bob_ip);

    let svc_tcp = format!("tcp:{LAN}:7");
    let svc_udp = format!("udp:{LAN}:7");
    let lan_tcp = format!("tcp:{LAN}:8");
    let lan_icmp = format!("icmp:{LAN}");
    let dns = format!("dns:{LAN}:example.lan");
    let inet_tcp = format!("tcp:{INTERNET}:80");
    let inet_udp = format!("udp:{INTERNET}:80");
    let inet_icmp = format!("icmp:{INTERNET}");
    let metadata = s("tcp:169.254.169.254:80");
    let api_b = format!("tcp:{}:{API_PORT}", gw(&b));
    let api_lan_side = format!("tcp:192.168.77.1:{API_PORT}");
    let to_alice = format!("tcp:{alice_ip}:22");
    let to_bob = format!("tcp:{bob_ip}:22");
    let v6 = s("tcp6:[fd00::10]:7");
    let all = [
        &svc_tcp,
        &svc_udp,
        &lan_tcp,
        &lan_icmp,
        &dns,
        &inet_tcp,
        &inet_udp,
        &inet_icmp,
        &metadata,
        &api_b,
        &api_lan_side,
        &to_alice,
        &to_bob,
        &v6,
    ];
    let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();

    // bob (media: services only, DNS blocked).
    let got = lab.check("bob", &all);
    expect(
        "bob",
        &got,
        &[
            (&svc_tcp, "ok"),
            (&svc_udp, "ok"),
            (&lan_tcp, "blocked"),
            (&lan_icmp, "blocked"),
            (&dns, "blocked"),
            (&inet_tcp, "blocked"),
            (&inet_udp, "blocked"),
            (&inet_icmp, "blocked"),
            (&metadata, "blocked"),
            (&api_b, "blocked"),
            (&api_lan_side, "blocked"),
            (&to_alice, "blocked"),
        ],
    );
    // No IPv6 in a box at all.
    assert_ne!(got[&v6], "ok", "{got}");

    // alice (admin profile: LAN, internet, DNS).
    let got = lab.check("alice", &all);
    expect(
        "alice",
        &got,
        &[
            (&svc_tcp, "ok"),
            (&lan_tcp, "ok"),
            (&lan_icmp, "ok"),
            (&dns, "ok"),
            (&inet_tcp, "ok"),
            (&inet_udp, "ok"),
            (&inet_icmp, "ok"),
            (&metadata, "blocked"),
            (&api_lan_side, "blocked"),
            (&to_bob, "blocked"),
        ],
    );
    assert_ne!(got[&v6], "ok", "{got}");

    // dave (developer: internet and DNS, no LAN).
    let got = lab.check("dave", &all);
    expect(
        "dave",
        &got,
        &[
            (&dns, "ok"),
            (&inet_tcp, "ok"),
            (&lan_tcp, "blocked"),
            (&lan_icmp, "blocked"),
            (&svc_tcp, "blocked"),
            (&to_alice, "blocked"),
        ],
    );

    // Nothing from the LAN opens a connection into a box (a reachable box without a
    // listener would answer "refused").
    let got = lab.check_from_lan(&[to_bob.clone(), format!("icmp:{bob_ip}")]);
    expect("lan", &got, &[(&to_bob, "blocked")]);
    assert_ne!(got[&format!("icmp:{bob_ip}")], "ok", "{got}");

    // Anti-spoofing: root in bob's network namespace adds a second address and sends from
    // it; only the box's own address gets through.
    let pid = lab.box_pid("bob").to_string();
    let netns = format!("--net=/proc/{pid}/ns/net");
    let spoofed = bob_ip.rsplit_once('.').unwrap().0.to_string() + ".77";
    run(Command::new("nsenter").args([
        &netns,
        "ip",
        "addr",
        "add",
        &format!("{spoofed}/32"),
        "dev",
        "eth0",
    ]));
    let from = |addr: &str| -> Value {
        let out = run(Command::new("nsenter").args([
            &netns,
            PROBE,
            "net-check",
            "--from",
            addr,
            &svc_tcp,
            &svc_udp,
        ]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    expect(
        "bob spoofed",
        &from(&spoofed),
        &[(&svc_tcp, "blocked"), (&svc_udp, "blocked")],
    );
    expect("bob real", &from(&bob_ip), &[(&svc_tcp, "ok")]);

    // Status shows the network and counts the drops; net show explains the policy.
    let st = lab.json(&["box", "status", "bob"]);
    assert_eq!(st["network"]["interface"], "ob-bob");
    assert!(
        st["network"]["packets"]["droppedPackets"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert!(st["network"]["packets"]["allowedPackets"].as_u64().unwrap() > 0);
    let show = lab.ctl_ok(&["net", "show", "bob"]);
    for needle in [
        "DNS blocked",
        "internet blocked",
        &format!("{LAN}:7"),
        "chain user_bob_fwd",
        "chain user_bob_in",
    ] {
        assert!(show.contains(needle), "net show lacks {needle:?}:\n{show}");
    }

    // A role/profile downgrade closes access at once, without restarting the box.
    let alice_pid = lab.box_pid("alice");
    lab.ctl_ok(&[
        "user",
        "set",
        "alice",
        "--role",
        "member",
        "--profile",
        "media",
    ]);
    let got = lab.check("alice", &[lan_tcp.clone(), inet_tcp.clone(), dns.clone()]);
    expect(
        "alice downgraded",
        &got,
        &[
            (&lan_tcp, "blocked"),
            (&inet_tcp, "blocked"),
            (&dns, "blocked"),
        ],
    );
    assert_eq!(lab.box_pid("alice"), alice_pid, "the box was not restarted");

    // kill -9: the kernel keeps every rule in force while no daemon runs...
    lab.kill9_daemon();
    let got = lab.check_in_netns_of("bob", &pid, &[svc_tcp.clone(), lan_tcp.clone()]);
    expect(
        "bob, no daemon",
        &got,
        &[(&svc_tcp, "ok"), (&lan_tcp, "blocked")],
    );
    // ... and after a restart (adoption and reconciliation) nothing opened up.
    lab.spawn_daemon();
    let got = lab.check("bob", &[svc_tcp.clone(), lan_tcp.clone(), inet_tcp.clone()]);
    expect(
        "bob, restarted daemon",
        &got,
        &[
            (&svc_tcp, "ok"),
            (&lan_tcp, "blocked"),
            (&inet_tcp, "blocked"),
        ],
    );
    assert_eq!(lab.box_pid("bob").to_string(), pid, "bob's box was adopted");

    // A stopped box keeps its network namespace and link (nothing runs in it), and the
    // next start joins them: the same interface, the same policy.
    let link_of = |name: &str| -> String {
        let out = run(Command::new("ip").args(["-n", &lab.host.name, "-o", "link", "show", name]));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let index = link_of("ob-bob");
    assert!(!index.is_empty(), "bob has a link");
    lab.ctl_ok(&["box", "stop", "bob"]);
    assert_eq!(link_of("ob-bob"), index, "the stopped box kept its link");
    lab.ctl_ok(&["box", "start", "bob"]);
    assert_ne!(lab.box_pid("bob").to_string(), pid, "a new init");
    assert_eq!(
        link_of("ob-bob"),
        index,
        "the restarted box joined its kept link"
    );
    let got = lab.check("bob", &[svc_tcp.clone(), lan_tcp.clone(), inet_tcp.clone()]);
    expect(
        "bob, restarted box",
        &got,
        &[
            (&svc_tcp, "ok"),
            (&lan_tcp, "blocked"),
            (&inet_tcp, "blocked"),
        ],
    );

    // Deleting a user removes their rules and link.
    lab.ctl_ok(&["user", "rm", "dave"]);
    let show = lab.ctl(&["net", "show", "dave"]);
    assert!(!show.status.success());
    let links = run(Command::new("ip").args(["-n", &lab.host.name, "-o", "link"]));
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("ob-dave"), "{links}");
    assert!(links.contains("ob-bob"), "{links}");
    let table = run(lab
        .host
        .command("nft")
        .args(["list", "table", "inet", "orchestratord"]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains("user_dave"), "{table}");
    assert!(table.contains("user_bob_fwd"), "{table}");
}

impl Lab {
    /// `net-check` as the box's user while no daemon runs: enter the box's namespaces
    /// directly (nsenter, as root, network namespace only) — the firewall on the host does
    /// not care who sends.
    fn check_in_netns_of(&self, _login: &str, pid: &str, specs: &[String]) -> Value {
        let netns = format!("--net=/proc/{pid}/ns/net");
        let out = run(Command::new("nsenter")
            .arg(&netns)
            .arg(PROBE)
            .arg("net-check")
            .args(specs));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn a_box_does_not_start_when_its_rules_cannot_be_applied() {
    let lab = Lab::new();
    // Let the start-up reconciliation load the table first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.log().contains("loaded the firewall table") {
        assert!(
            Instant::now() < deadline,
            "table never loaded:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.add_user("erin", "member", "media", "");
    // Sabotage: root deletes the daemon's table by hand, so erin's transaction (which
    // adds to the table's maps) cannot apply until the next reconciliation.
    run(lab
        .host
        .command("nft")
        .args(["delete", "table", "inet", "orchestratord"]));
    let out = lab.ctl(&["box", "start", "erin"]);
    assert!(!out.status.success(), "the box started without its rules");
    let st = lab.json(&["box", "status", "erin"]);
    assert_eq!(st["state"], "error", "{st}");
    assert!(
        st["lastError"].as_str().unwrap().contains("network_rules"),
        "{st}"
    );
    let links = run(Command::new("ip").args(["-n", &lab.host.name, "-o", "link"]));
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("ob-erin"),
        "no link without rules"
    );
}
