//! The harness the black-box tests share: the real `orchestratord` on a temporary state
//! directory, driven with `orchestratorctl` over its Unix socket and with raw HTTP over TCP.
//!
//! Every daemon runs in its own temporary directory and cgroup subtree (unique per test
//! and run). When its guard drops, also when an assertion fails, the daemon is killed, the
//! boxes it left behind are killed and reaped and the subtree is removed.
//!
//! Each test binary compiles this module (`mod common;`) and uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_orchestratord");
pub const CTL: &str = env!("CARGO_BIN_EXE_orchestratorctl");
/// Hang guard for one wait of the harness (never a performance bound).
const GUARD: Duration = Duration::from_secs(60);

/// A daemon of a test, with its directory (config, socket, state, log) and cgroup subtree.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The daemon's cgroup subtree, unique per test run; removed on drop with every box
    /// process left in it.
    pub cgroup: String,
    /// Spawned in a mount namespace of its own (see [`Builder::private_mounts`]).
    private_mounts: bool,
}

/// What a test's daemon differs in; [`Builder::start`] writes the config and spawns it.
///
/// The config is the test's paths, then [`Builder::top`], then `[network] enabled =
/// false` (left out when the test brings a `[network]` table of its own), `[boxes]` with
/// the unique cgroup subtree, `[files] upload_limit` when set, then [`Builder::tables`].
#[derive(Debug)]
pub struct Builder {
    name: &'static str,
    port: u16,
    top: String,
    tables: String,
    upload_limit: Option<String>,
    private_mounts: bool,
}

impl Builder {
    /// The API port the daemon will listen on (for config that names it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Top-level keys, after the test's paths (`listen`, `socket`, `state_dir`).
    pub fn top(mut self, toml: &str) -> Builder {
        self.top.push_str(toml);
        self
    }

    /// Tables after the harness's own.
    pub fn tables(mut self, toml: &str) -> Builder {
        self.tables.push_str(toml);
        self
    }

    /// `files.upload_limit`.
    pub fn upload_limit(mut self, limit: &str) -> Builder {
        self.upload_limit = Some(limit.to_string());
        self
    }

    /// Runs the daemon (on every spawn) in a mount namespace of its own, so every mount it
    /// makes dies with it (also when the test fails).
    pub fn private_mounts(mut self) -> Builder {
        self.private_mounts = true;
        self
    }

    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix(&format!("orchd-{}-", self.name))
            .tempdir()
            .unwrap();
        let mut d = Daemon {
            child: None,
            dir,
            port: self.port,
            cgroup: format!(
                "orchd-{}-{}-{}",
                self.name,
                std::process::id(),
                orchestratord::testing::unique()
            ),
            private_mounts: self.private_mounts,
        };
        // Boxes outlive a killed daemon; the test process reaps them (see Drop).
        let _ = orchestratord::runtime::boxes::become_subreaper();
        // Boxes of these tests have loopback only: their daemons share the host's network
        // namespace, where one daemon's table would police another's boxes. The network
        // is tested in tests/network.rs, with each daemon in a namespace of its own.
        let (top, tables) = (&self.top, &self.tables);
        let network = if top.contains("[network]") || tables.contains("[network]") {
            ""
        } else {
            "[network]\nenabled = false\n"
        };
        let files = match &self.upload_limit {
            Some(limit) => format!("[files]\nupload_limit = \"{limit}\"\n"),
            None => String::new(),
        };
        let config = format!(
            "listen = \"127.0.0.1:{}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n{top}\n\
             {network}[boxes]\ncgroup = \"{}\"\nstop_grace = \"2s\"\n{files}{tables}\n",
            d.port,
            d.socket().display(),
            d.state_dir().display(),
            d.cgroup
        );
        std::fs::write(d.config(), config).unwrap();
        d.spawn();
        d
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// A daemon whose directory and cgroup subtree are named `orchd-{name}-…`.
    pub fn builder(name: &'static str) -> Builder {
        Builder {
            name,
            port: free_port(),
            top: String::new(),
            tables: String::new(),
            upload_limit: None,
            private_mounts: false,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("o.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon on the config and state directory of `self` and waits until it
    /// serves both its socket and its port.
    pub fn spawn(&mut self) {
        // The socket of a killed daemon stays behind; only the new daemon's counts.
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = if self.private_mounts {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", DAEMON]);
            c
        } else {
            Command::new(DAEMON)
        };
        let child = cmd
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + GUARD;
        loop {
            if self.socket().exists() && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Sends `sig` and waits for the daemon to exit.
    pub fn stop_with(&mut self, sig: &str) -> ExitStatus {
        self.signal(sig);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon ignored {sig}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon gracefully (SIGTERM, which must succeed) and starts it again.
    pub fn restart(&mut self) {
        let status = self.stop_with("-TERM");
        assert!(
            status.success(),
            "daemon exit status {status}:\n{}",
            self.log()
        );
        self.spawn();
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs orchestratorctl against this daemon's socket.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_command(&self.socket()).args(args).output().unwrap()
    }

    /// Runs orchestratorctl against this daemon's socket with `stdin` as its input.
    pub fn ctl_in(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = ctl_command(&self.socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs orchestratorctl with `--json`, asserts success and parses stdout.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "orchestratorctl {args:?} failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {}", text(&out)))
    }

    /// Adds the user `login` (`login@example.com`) with `role` and `profile`.
    pub fn add_user(&self, login: &str, role: &str, profile: &str) -> Value {
        self.ctl_json(&[
            "user",
            "add",
            &format!("{login}@example.com"),
            "--login",
            login,
            "--role",
            role,
            "--profile",
            profile,
        ])
    }

    /// A new user token of `login`.
    pub fn user_token(&self, login: &str) -> String {
        let tok = self.ctl_json(&[
            "token", "create", "--kind", "user", "--user", login, "--name", "t",
        ]);
        tok["token"].as_str().unwrap().to_string()
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        http(self.port, method, path, token, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_cgroup_subtree(&self.cgroup);
    }
}

/// Boxes keep running when their daemon goes (they are adopted on restart): kills the
/// boxes of the cgroup subtree `subtree`, reaps their inits (orphaned to this process, a
/// subreaper) and removes the subtree.
pub fn remove_cgroup_subtree(subtree: &str) {
    if let Ok(cgroups) = orchestratord::runtime::cgroup::Cgroups::detect(subtree) {
        for name in cgroups.list().unwrap_or_default() {
            if let Ok(b) = cgroups.boxed(&name) {
                let _ = b.kill_all(Duration::from_secs(5));
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    reap_orphans();
                    if b.remove(Duration::from_millis(100)).is_ok() || Instant::now() > deadline {
                        break;
                    }
                }
            }
        }
        for base in cgroups.bases() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Reaps exited children that no `Child` handle waits for (box inits orphaned to this
/// process when a daemon is killed).
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(st) = waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

/// orchestratorctl on the Unix socket `socket`, in a clean environment.
pub fn ctl_command(socket: &Path) -> Command {
    let mut cmd = Command::new(CTL);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("--socket")
        .arg(socket);
    cmd
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}
