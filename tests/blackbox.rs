//! Black-box tests: the real `orchestratord` process on a temporary state directory,
//! driven with `orchestratorctl` over its Unix socket and with raw HTTP over TCP.
//!
//! Every daemon runs in its own temporary directory (unique per test and run) and is
//! killed when its guard drops, also when an assertion fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, text, Daemon, CTL, DAEMON};
use serde_json::{json, Value};

impl Daemon {
    /// A daemon of these tests (`orchd-bb-*`), on the harness's config.
    fn start() -> Daemon {
        Daemon::builder("bb").start()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------

#[test]
fn first_start_writes_a_private_admin_token_and_serves_both_listeners() {
    let d = Daemon::start();
    let token_file = d.state_dir().join("admin.token");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&d.state_dir()), 0o700);
    assert_eq!(mode(&d.socket()), 0o600);
    assert!(
        d.log().contains(&token_file.display().to_string()),
        "the log says where the token is"
    );
    assert!(
        !d.log().contains(&d.admin_token()),
        "the token itself is never logged"
    );

    assert_eq!(
        d.http("GET", "/healthz", None, None),
        (200, json!({"status": "ok"}))
    );
    let (status, _) = d.http("GET", "/api/v1/users", None, None);
    assert_eq!(status, 401);
    let (status, body) = d.http("GET", "/api/v1/users", Some(&d.admin_token()), None);
    assert_eq!((status, body), (200, json!({"users": []})));
    assert_eq!(d.ctl_json(&["user", "list"]), json!({"users": []}));
}

#[test]
fn the_cli_manages_users_services_tokens_state_and_audit_over_the_socket() {
    let d = Daemon::start();
    let alice = d.ctl_json(&[
        "user",
        "add",
        "alice@example.com",
        "--role",
        "member",
        "--profile",
        "homelabber",
    ]);
    assert_eq!(alice["login"], "alice");
    assert_eq!(alice["uid"], 1000);
    d.ctl_json(&[
        "user",
        "add",
        "Bob.B@example.com",
        "--login",
        "bob",
        "--name",
        "Bob B",
        "--role",
        "member",
        "--profile",
        "media",
    ]);
    d.ctl_json(&[
        "user",
        "add",
        "viz@example.com",
        "--role",
        "demo",
        "--profile",
        "demo",
    ]);

    let svc = d.ctl_json(&[
        "service",
        "add",
        "jellyfin",
        "--url",
        "https://jf.lab",
        "--upstream",
        "192.168.1.10:8096",
        "--category",
        "media",
    ]);
    assert_eq!(svc["requiredRole"], "member");
    d.ctl_json(&["user", "set", "alice", "--services", "jellyfin"]);
    let shown = d.ctl_json(&["user", "show", "alice@example.com"]);
    assert_eq!(shown["services"], json!(["jellyfin"]));

    let list = d.ctl_json(&["user", "list", "--role", "member"]);
    let logins: Vec<_> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].clone())
        .collect();
    assert_eq!(logins, [json!("alice"), json!("bob")]);

    // The access check scripts by exit code.
    assert_eq!(
        d.ctl(&["service", "check", "alice", "jellyfin"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        d.ctl(&["service", "check", "bob", "jellyfin"])
            .status
            .code(),
        Some(1)
    );
    let mine = d.ctl_json(&["service", "list", "--user", "alice"]);
    assert_eq!(mine["services"][0]["name"], "jellyfin");

    d.ctl_json(&["state", "set", "alice", "wallpaper", "\"blue.png\""]);
    let st = d.ctl_json(&["state", "get", "alice", "wallpaper"]);
    assert_eq!(st["value"], "blue.png");

    // A user token made with the CLI works over HTTP for that user only.
    let tok = d.ctl_json(&[
        "token", "create", "--kind", "user", "--user", "alice", "--name", "laptop",
    ]);
    let secret = tok["token"].as_str().unwrap().to_string();
    let (status, me) = d.http("GET", "/api/v1/users/alice", Some(&secret), None);
    assert_eq!((status, me["login"].clone()), (200, json!("alice")));
    assert_eq!(
        d.http("GET", "/api/v1/users/bob", Some(&secret), None).0,
        404
    );
    let tokens = d.ctl_json(&["token", "list"]);
    assert!(
        !tokens.to_string().contains(&secret[18..]),
        "listing leaks no secret"
    );
    let id = tok["id"].as_str().unwrap();
    assert!(d.ctl(&["token", "revoke", id]).status.success());
    assert_eq!(
        d.http("GET", "/api/v1/users/alice", Some(&secret), None).0,
        401
    );

    // Errors: one line on stderr, scriptable exit codes.
    let out = d.ctl(&["user", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not_found"), "{stderr}");
    let out = d.ctl(&[
        "user",
        "add",
        "x@example.com",
        "--login",
        "Bad/Name",
        "--role",
        "member",
        "--profile",
        "media",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_login"));
    let out = d.ctl(&[
        "user",
        "add",
        "alice@example.com",
        "--role",
        "member",
        "--profile",
        "media",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("login_taken"));

    assert!(d.ctl(&["user", "rm", "bob"]).status.success());
    assert_eq!(d.ctl(&["user", "show", "bob"]).status.code(), Some(4));

    let audit = d.ctl_json(&["audit", "--action", "user"]);
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert!(actions.contains(&"user.delete".to_string()), "{actions:?}");
    assert!(actions.iter().filter(|a| *a == "user.create").count() >= 4);
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["peer"] == "unix" && e["actor"] == "root"));
}

#[test]
fn the_cli_works_over_http_with_a_token_and_bad_tokens_exit_5() {
    let d = Daemon::start();
    let url = format!("http://127.0.0.1:{}", d.port);
    let run = |token: &str, args: &[&str]| {
        Command::new(CTL)
            .env_clear()
            .env("ORCHESTRATOR_URL", &url)
            .env("ORCHESTRATOR_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(
        &d.admin_token(),
        &[
            "--json",
            "user",
            "add",
            "carol@example.com",
            "--role",
            "admin",
            "--profile",
            "admin",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&d.admin_token(), &["--json", "user", "list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["users"][0]["login"], "carol");
    let bogus = format!("orch_000000000000_{}", "0".repeat(64));
    let out = run(&bogus, &["user", "list"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&bogus),
        "the token is never printed"
    );
    let audit = d.ctl_json(&["audit", "--action", "auth.failure"]);
    assert_eq!(audit["entries"][0]["peer"], "127.0.0.1");

    // Unreachable daemon: exit 3.
    let out = Command::new(CTL)
        .args(["--socket", "/nonexistent/o.sock", "user", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn everything_persists_across_a_restart() {
    let mut d = Daemon::start();
    let admin = d.admin_token();
    d.ctl_json(&[
        "user",
        "add",
        "alice@example.com",
        "--role",
        "member",
        "--profile",
        "developer",
    ]);
    d.ctl_json(&[
        "service",
        "add",
        "wiki",
        "--url",
        "https://wiki.lab",
        "--upstream",
        "wiki.lan:80",
        "--role",
        "demo",
    ]);
    d.ctl_json(&["user", "set", "alice", "--services", "wiki"]);
    d.ctl_json(&["state", "set", "alice", "windows", "[{\"app\":\"files\"}]"]);
    let tok = d.ctl_json(&["token", "create", "--kind", "service", "--name", "frontend"]);
    let service_token = tok["token"].as_str().unwrap().to_string();
    let audit_before = d.ctl_json(&["audit", "--limit", "1000"])["entries"]
        .as_array()
        .unwrap()
        .len();

    d.restart();
    assert!(d.socket().exists());

    assert_eq!(
        d.admin_token(),
        admin,
        "the first admin token is written once"
    );
    let alice = d.ctl_json(&["user", "show", "alice"]);
    assert_eq!(alice["osProfile"], "developer");
    assert_eq!(alice["services"], json!(["wiki"]));
    assert_eq!(alice["uid"], 1000);
    let st = d.ctl_json(&["state", "get", "alice", "windows"]);
    assert_eq!(st["value"], json!([{"app": "files"}]));
    let (status, svcs) = d.http(
        "GET",
        "/api/v1/users/alice/services",
        Some(&service_token),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(svcs["services"][0]["upstream"], "wiki.lan:80");
    assert_eq!(d.http("GET", "/api/v1/users", Some(&admin), None).0, 200);
    let audit_after = d.ctl_json(&["audit", "--limit", "1000"])["entries"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        audit_after >= audit_before,
        "audit entries survive a restart"
    );
    // Allocation continues where it left off.
    let bob = d.ctl_json(&[
        "user",
        "add",
        "bob@example.com",
        "--role",
        "member",
        "--profile",
        "media",
    ]);
    assert_eq!(bob["uid"], 1001);
    assert_eq!(bob["subnet"], "10.87.1.0/24");
}

#[test]
fn sigint_and_sigterm_shut_down_gracefully_and_remove_the_socket() {
    for sig in ["-INT", "-TERM"] {
        let mut d = Daemon::start();
        let status = d.stop_with(sig);
        assert!(status.success(), "{sig}: {status}\n{}", d.log());
        assert!(!d.socket().exists(), "{sig}: socket left behind");
        assert!(d.log().contains("stopped"), "{}", d.log());
    }
}

#[test]
fn a_non_root_peer_is_refused_on_the_admin_socket() {
    let d = Daemon::start();
    // Open the socket up so the connection reaches the daemon and SO_PEERCRED decides.
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    for dir in [d.dir.path().to_path_buf(), d.dir.path().join("run")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            CTL,
            "--socket",
        ])
        .arg(d.socket())
        .args(["user", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let audit = d.ctl_json(&["audit", "--action", "auth.failure"]);
    assert_eq!(audit["entries"][0]["peer"], "unix:uid=65534");
}

#[test]
fn an_invalid_config_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("orchd-bb-")
        .tempdir()
        .unwrap();
    let cases = [
        ("[network]\npool = \"172.17.0.0/16\"\n", "Docker"),
        ("listen = \"nonsense\"\n", "invalid config"),
        ("typo = 1\n", "unknown field"),
    ];
    for (body, needle) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, body).unwrap();
        let out = Command::new(DAEMON)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{body}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{body}: {}",
            text(&out)
        );
    }
    let out = Command::new(DAEMON)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
    let out = Command::new(DAEMON).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("127.0.0.1:9000") && printed.contains("10.87.0.0/16"),
        "{printed}"
    );
    assert!(
        printed.contains("admin, demo, developer, homelabber, media"),
        "{printed}"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let d = Daemon::builder("bb")
        .tables("[http]\nheader_timeout = \"1s\"\n")
        .start();
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408); a read timeout here would
    // mean the slow client holds the connection forever.
    let r = s.read_to_end(&mut buf);
    assert!(r.is_ok(), "connection was not closed: {r:?}");
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
    // The daemon still serves others.
    assert_eq!(d.http("GET", "/healthz", None, None).0, 200);
}

#[test]
fn profiles_can_come_from_a_directory() {
    let dir = tempfile::Builder::new()
        .prefix("orchd-bb-prof-")
        .tempdir()
        .unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/media.toml");
    std::fs::copy(&src, profiles.join("kiosk.toml")).unwrap();
    let d = Daemon::builder("bb")
        .top(&format!("profiles_dir = \"{}\"\n", profiles.display()))
        .start();
    let u = d.ctl_json(&[
        "user",
        "add",
        "k@example.com",
        "--role",
        "member",
        "--profile",
        "kiosk",
    ]);
    assert_eq!(u["osProfile"], "kiosk");
    let out = d.ctl(&[
        "user",
        "add",
        "h@example.com",
        "--role",
        "member",
        "--profile",
        "homelabber",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_profile"));
}

// ---- boxes --------------------------------------------------------------------------------

fn exec(d: &Daemon, token: &str, user: &str, body: Value) -> (u16, Value) {
    d.http(
        "POST",
        &format!("/api/v1/boxes/{user}/exec"),
        Some(token),
        Some(&body),
    )
}

#[test]
fn a_box_starts_runs_commands_as_its_user_and_stops_through_the_api() {
    let d = Daemon::start();
    let admin = d.admin_token();
    d.add_user("alice", "member", "homelabber");
    d.add_user("bob", "member", "homelabber");

    let (st, v) = d.http("POST", "/api/v1/boxes/alice/start", Some(&admin), None);
    assert_eq!(st, 200, "{v}\n{}", d.log());
    assert_eq!(v["state"], "running");
    assert!(v["pid"].as_i64().unwrap() > 1);
    assert_eq!(v["userNamespace"], true);
    let (st, v) = d.http("POST", "/api/v1/boxes/alice/start", Some(&admin), None);
    assert_eq!(
        (st, v["error"]["kind"].clone()),
        (409, json!("box_running"))
    );

    let (st, v) = exec(
        &d,
        &admin,
        "alice",
        json!({"argv": ["sh", "-c", "id -un; echo oops >&2; exit 3"]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["exitCode"], 3);
    assert_eq!(v["stdout"], "alice\n");
    assert_eq!(v["stderr"], "oops\n");

    // A clean environment: nothing of the daemon's.
    let (_, v) = exec(
        &d,
        &admin,
        "alice",
        json!({"argv": ["env"], "env": {"FOO": "bar"}}),
    );
    let env = v["stdout"].as_str().unwrap();
    assert!(
        env.contains("HOME=/home/alice") && env.contains("FOO=bar"),
        "{env}"
    );
    assert!(!env.contains("RUST_LOG") && !env.contains("ORCH"), "{env}");

    // Timeouts kill the command.
    let (_, v) = exec(
        &d,
        &admin,
        "alice",
        json!({"argv": ["sleep", "30"], "timeoutSecs": 1}),
    );
    assert_eq!(
        (v["timedOut"].clone(), v["exitCode"].clone()),
        (json!(true), json!(124))
    );

    // stdin reaches the command.
    let (_, v) = exec(
        &d,
        &admin,
        "alice",
        json!({"argv": ["cat"], "stdin": "hello"}),
    );
    assert_eq!(v["stdout"], "hello");

    // Members reach their own box only; another user's box is simply not found.
    let alice = d.user_token("alice");
    let bob = d.user_token("bob");
    let (st, v) = exec(&d, &alice, "alice", json!({"argv": ["true"]}));
    assert_eq!((st, v["exitCode"].clone()), (200, json!(0)));
    assert_eq!(exec(&d, &bob, "alice", json!({"argv": ["true"]})).0, 404);
    assert_eq!(
        d.http("POST", "/api/v1/boxes/alice/stop", Some(&bob), None)
            .0,
        404
    );
    let (_, list) = d.http("GET", "/api/v1/boxes", Some(&bob), None);
    assert_eq!(list["boxes"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["boxes"][0]["user"], "bob");
    // Exec in a box that is not running is a named conflict.
    let (st, v) = exec(&d, &bob, "bob", json!({"argv": ["true"]}));
    assert_eq!(
        (st, v["error"]["kind"].clone()),
        (409, json!("box_not_running"))
    );

    let (_, status) = d.http("GET", "/api/v1/boxes/alice", Some(&alice), None);
    assert!(
        status["usage"]["memoryBytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(status["usage"]["pids"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["limits"]["memoryBytes"], 2u64 << 30);
    assert!(status["uptimeSecs"].as_i64().unwrap() >= 0);

    let (st, v) = d.http("POST", "/api/v1/boxes/alice/stop", Some(&alice), None);
    assert_eq!((st, v["state"].clone()), (200, json!("stopped")), "{v}");
    let (st, v) = d.http("POST", "/api/v1/boxes/alice/stop", Some(&alice), None);
    assert_eq!(
        (st, v["error"]["kind"].clone()),
        (409, json!("box_not_running"))
    );

    let logs = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {admin}")])
        .arg(format!(
            "http://127.0.0.1:{}/api/v1/boxes/alice/logs",
            d.port
        ))
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("starting") && logs.contains("stopped"),
        "{logs}"
    );

    let audit = d.ctl_json(&["audit", "--action", "box.start"]);
    assert!(!audit["entries"].as_array().unwrap().is_empty(), "{audit}");
    let audit = d.ctl_json(&["audit", "--action", "box.exec"]);
    assert!(audit.to_string().contains("alice: sh"), "{audit}");
}

/// Reaps zombie box inits that were orphaned to this process (a subreaper) when a daemon
/// was killed, until the returned guard drops. Only processes named like the box init are
/// reaped, so the `Child` handles of daemons and CLI runs keep their statuses.
struct InitReaper(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl InitReaper {
    fn start() -> InitReaper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                reap_zombie_inits();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        InitReaper(stop)
    }
}

impl Drop for InitReaper {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn reap_zombie_inits() {
    let me = std::process::id();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{me}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains("(orchestratord-i) Z") {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
        }
    }
}

impl Daemon {
    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn box_cgroups(&self) -> Vec<String> {
        orchestratord::runtime::cgroup::Cgroups::detect(&self.cgroup)
            .unwrap()
            .list()
            .unwrap_or_default()
    }

    fn boxes(&self, token: &str) -> Vec<Value> {
        let (st, v) = self.http("GET", "/api/v1/boxes", Some(token), None);
        assert_eq!(st, 200, "{v}");
        v["boxes"].as_array().unwrap().clone()
    }

    /// Waits until no box is starting or stopping.
    fn settle(&self, token: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let boxes = self.boxes(token);
            if boxes
                .iter()
                .all(|b| b["state"] != "starting" && b["state"] != "stopping")
            {
                return boxes;
            }
            assert!(Instant::now() < deadline, "boxes never settled: {boxes:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every box is in a true state: running ones have a live init inside their cgroup;
    /// no other box has a cgroup; no mount of the daemon's state is visible on the host.
    fn assert_true_states(&self, token: &str) {
        let boxes = self.settle(token);
        let cgroups = self.box_cgroups();
        let cg = orchestratord::runtime::cgroup::Cgroups::detect(&self.cgroup).unwrap();
        for b in &boxes {
            let name = format!("box-{}", b["user"].as_str().unwrap());
            if b["state"] == "running" {
                let pid = b["pid"].as_u64().unwrap() as u32;
                let pids = cg.boxed(&name).unwrap().pids().unwrap();
                assert!(pids.contains(&pid), "{name}: init {pid} not in {pids:?}");
            } else {
                assert!(
                    !cgroups.contains(&name),
                    "{name} is {} but has a cgroup",
                    b["state"]
                );
            }
        }
        for name in &cgroups {
            assert!(
                boxes
                    .iter()
                    .any(|b| format!("box-{}", b["user"].as_str().unwrap()) == *name
                        && b["state"] == "running"),
                "orphaned cgroup {name}"
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let state = self.state_dir().display().to_string();
        assert!(
            !mounts.contains(&state),
            "a mount under {state} leaked to the host"
        );
    }
}

#[test]
fn a_running_box_is_adopted_after_the_daemon_is_killed() {
    let _reaper = InitReaper::start();
    let mut d = Daemon::start();
    let admin = d.admin_token();
    d.add_user("alice", "member", "homelabber");
    let (st, v) = d.http("POST", "/api/v1/boxes/alice/start", Some(&admin), None);
    assert_eq!(st, 200, "{v}");
    let pid = v["pid"].clone();
    d.kill9();
    d.spawn();
    let boxes = d.settle(&admin);
    assert_eq!(boxes[0]["state"], "running", "{boxes:?}\n{}", d.log());
    assert_eq!(
        boxes[0]["pid"], pid,
        "the box was restarted instead of adopted"
    );
    let (_, v) = exec(&d, &admin, "alice", json!({"argv": ["true"]}));
    assert_eq!(v["exitCode"], 0, "{v}");
    d.assert_true_states(&admin);
    // Stopping an adopted box works and leaves nothing.
    let (st, v) = d.http("POST", "/api/v1/boxes/alice/stop", Some(&admin), None);
    assert_eq!((st, v["state"].clone()), (200, json!("stopped")), "{v}");
    d.assert_true_states(&admin);
}

#[test]
fn killing_the_daemon_during_starts_and_stops_leaves_no_orphans() {
    let _reaper = InitReaper::start();
    let mut d = Daemon::start();
    let admin = d.admin_token();
    let users: Vec<String> = (0..4).map(|i| format!("crash{i}")).collect();
    for u in &users {
        d.add_user(u, "member", "homelabber");
    }
    for (round, delay_ms) in [0u64, 3, 8, 15, 30].into_iter().enumerate() {
        // Start (even rounds) or stop (odd rounds) all boxes at once, then kill -9 the
        // daemon while those operations are in flight.
        let action = if round % 2 == 0 { "start" } else { "stop" };
        let port = d.port;
        let threads: Vec<_> = users
            .iter()
            .map(|u| {
                let (u, t) = (u.clone(), admin.clone());
                std::thread::spawn(move || {
                    let _ = std::panic::catch_unwind(|| {
                        http(
                            port,
                            "POST",
                            &format!("/api/v1/boxes/{u}/{action}"),
                            Some(&t),
                            None,
                        )
                    });
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill9();
        for t in threads {
            let _ = t.join();
        }
        d.spawn();
        d.assert_true_states(&admin);
    }
}

fn wait_absent(d: &Daemon, token: &str, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = d.http("GET", &format!("/api/v1/boxes/{user}"), Some(token), None);
        if v["state"] == "absent" {
            return;
        }
        assert!(Instant::now() < deadline, "box did not expire: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_ephemeral_box_is_destroyed_when_its_ttl_passes_also_across_a_restart() {
    let _reaper = InitReaper::start();
    let mut d = Daemon::start();
    let admin = d.admin_token();
    d.add_user("visitor", "demo", "demo");
    d.add_user("guest", "demo", "demo");
    for u in ["visitor", "guest"] {
        let (st, v) = d.http(
            "POST",
            &format!("/api/v1/boxes/{u}/start"),
            Some(&admin),
            None,
        );
        assert_eq!(st, 200, "{v}");
        // The TTL of the demo profile: 60 minutes from the start.
        let exp = humantime::parse_rfc3339(v["expiresAt"].as_str().unwrap()).unwrap();
        let left = exp.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{v}"
        );
    }
    let db = d.state_dir().join("orchestratord.db");
    let expire = |login: &str| {
        let sql = format!(
            "UPDATE boxes SET expires_at = 1 WHERE user_id = (SELECT id FROM users WHERE login = '{login}');"
        );
        let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    // While the daemon runs: the expiry loop destroys it within seconds.
    expire("visitor");
    wait_absent(&d, &admin, "visitor");
    assert!(
        !d.state_dir().join("boxes/visitor").exists(),
        "box files left behind"
    );
    // While the daemon is down: reconciliation destroys it at start.
    d.kill9();
    expire("guest");
    d.spawn();
    wait_absent(&d, &admin, "guest");
    d.assert_true_states(&admin);
    let audit = d.ctl_json(&["audit", "--action", "box.expire"]);
    assert!(audit.to_string().contains("visitor"), "{audit}");
}

#[test]
fn the_cli_drives_boxes_and_exec_propagates_the_exit_code() {
    let d = Daemon::start();
    d.add_user("alice", "member", "homelabber");
    d.add_user("visitor", "demo", "demo");
    let v = d.ctl_json(&["box", "start", "alice"]);
    assert_eq!(v["state"], "running", "{v}");
    let out = d.ctl(&["box", "start", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("box_running"));

    let out = d.ctl(&[
        "exec",
        "alice",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = d.ctl(&["exec", "alice", "id", "-un"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
        ),
        (Some(0), "alice\n".into())
    );
    let out = d.ctl(&["exec", "--timeout", "1", "alice", "--", "sleep", "20"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));

    d.ctl_json(&["box", "start", "visitor"]);
    let running = d.ctl_json(&["box", "list", "--state", "running"]);
    assert_eq!(running["boxes"].as_array().unwrap().len(), 2, "{running}");
    let out = d.ctl(&["box", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("alice") && table.contains("running"),
        "{table}"
    );
    let status = d.ctl(&["box", "status", "alice"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("memory"),
        "{}",
        text(&status)
    );

    // Stop every demo box in one call; alice keeps running.
    let out = d.ctl(&["box", "bulk", "stop", "--role", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("visitor: ok"));
    assert_eq!(
        d.ctl_json(&["box", "status", "visitor"])["state"],
        "stopped"
    );
    assert_eq!(d.ctl_json(&["box", "status", "alice"])["state"], "running");

    let logs = d.ctl(&["box", "logs", "alice"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("running, init pid"),
        "{}",
        text(&logs)
    );
    let v = d.ctl_json(&["box", "rm", "alice"]);
    assert_eq!(v["state"], "absent");
    assert!(d.box_cgroups().is_empty(), "{:?}", d.box_cgroups());
    // Deleting a user removes their box first.
    d.ctl_json(&["box", "start", "visitor"]);
    let out = d.ctl(&["user", "rm", "visitor"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.box_cgroups().is_empty(), "{:?}", d.box_cgroups());
}
