//! Black-box tests of the web terminal: the real daemon as root, a real box, real
//! WebSockets over loopback speaking the binary protocol of docs/terminal-protocol.md.
//!
//! Every daemon runs in its own temporary directory and cgroup subtree (unique per test
//! and run), killed and removed on drop, also when an assertion fails. No timed
//! assertions: tests wait for conditions, with generous deadlines as hang guards only.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use policy::terminal::{ClientFrame, Hello, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Hang guard for one wait (never a performance bound).
const GUARD: Duration = Duration::from_secs(60);

impl Daemon {
    /// A daemon of these tests (`orchd-term-*`) whose terminal accepts the origins
    /// `http://allowed.example` and its own. `extra`: top-level keys, or tables (starting
    /// with `[`) after ours.
    fn start(extra: &str) -> Daemon {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "terminal tests run as root (scripts/test runs them as root)"
        );
        let b = Daemon::builder("term");
        let port = b.port();
        let (top, extra) = if extra.starts_with('[') {
            ("", extra)
        } else {
            (extra, "")
        };
        b.top(top)
            .tables(&format!(
                "[http]\nallowed_origins = [\"http://allowed.example\", \"http://127.0.0.1:{port}\"]\n{extra}"
            ))
            .start()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Adds a user with a running box and returns a user token.
    fn user_with_box(&self, login: &str, profile: &str) -> String {
        self.add_user(login, "member", profile);
        let (st, v) = self.http(
            "POST",
            &format!("/api/v1/boxes/{login}/start"),
            Some(&self.admin_token()),
            None,
        );
        assert_eq!(st, 200, "{v}\n{}", self.log());
        self.user_token(login)
    }

    fn ticket(&self, token: &str, user: &str, body: Value) -> String {
        let (st, v) = self.http(
            "POST",
            &format!("/api/v1/boxes/{user}/terminal/tickets"),
            Some(token),
            Some(&body),
        );
        assert_eq!(st, 200, "{v}");
        v["ticket"].as_str().unwrap().to_string()
    }

    fn sessions(&self, token: &str, user: &str) -> Vec<Value> {
        let (st, v) = self.http(
            "GET",
            &format!("/api/v1/boxes/{user}/terminal/sessions"),
            Some(token),
            None,
        );
        assert_eq!(st, 200, "{v}");
        v["sessions"].as_array().unwrap().clone()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "hang guard: {what} never happened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client that checks every output frame continues exactly where the last
/// one ended (no loss, no duplication), unless a gap frame said otherwise.
struct Client {
    ws: Stream,
    hello: Hello,
    /// Next offset expected.
    next: u64,
    /// Output received on this connection, from `first`.
    out: Vec<u8>,
    gaps: Vec<(u64, u64)>,
    exit: Option<i32>,
    errors: Vec<String>,
}

/// Opens the terminal WebSocket; Err(status) when the upgrade is refused.
async fn open(port: u16, user: &str, query: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let url = format!("ws://127.0.0.1:{port}/api/v1/boxes/{user}/terminal?{query}");
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(resp.status().as_u16())
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    };
    let mut c = Client {
        ws,
        hello: Hello {
            session: String::new(),
            read_only: false,
            window: 0,
            buffer: 0,
            max_frame: 0,
            heartbeat_ms: 0,
            start: 0,
            end: 0,
        },
        next: 0,
        out: vec![],
        gaps: vec![],
        exit: None,
        errors: vec![],
    };
    match c.frame().await {
        Some(ServerFrame::Hello(h)) => c.hello = h,
        other => panic!("expected hello, got {other:?}"),
    }
    Ok(c)
}

impl Client {
    async fn send(&mut self, f: ClientFrame) {
        self.ws
            .send(Message::Binary(f.encode().into()))
            .await
            .unwrap();
    }

    /// Acks are best effort: after `exit` (or a revocation) the daemon closes the socket
    /// while acks for frames still being read may be on their way.
    async fn ack(&mut self, offset: u64) {
        let _ = self
            .ws
            .send(Message::Binary(ClientFrame::Ack(offset).encode().into()))
            .await;
    }

    async fn resume(&mut self, offset: u64) {
        self.next = offset;
        self.send(ClientFrame::Resume(offset)).await;
    }

    async fn input(&mut self, s: &str) {
        self.send(ClientFrame::Input(s.as_bytes().to_vec())).await;
    }

    /// The next server frame (None when the socket closed).
    async fn frame(&mut self) -> Option<ServerFrame> {
        loop {
            let msg = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("hang guard: no frame from the daemon");
            match msg {
                Some(Ok(Message::Binary(b))) => return Some(ServerFrame::decode(&b).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads frames, acknowledging output when `ack`, until `done(output so far)` holds.
    /// Panics if the socket closes first.
    async fn read_until(&mut self, ack: bool, mut done: impl FnMut(&[u8]) -> bool) {
        while !done(&self.out) {
            let Some(f) = self.frame().await else {
                panic!(
                    "socket closed; output so far: {:?}",
                    String::from_utf8_lossy(&self.out[self.out.len().saturating_sub(2000)..])
                );
            };
            self.handle(f, ack).await;
        }
    }

    async fn handle(&mut self, f: ServerFrame, ack: bool) {
        match f {
            ServerFrame::Output { offset, data } => {
                assert_eq!(
                    offset, self.next,
                    "output must continue exactly where it ended"
                );
                self.next += data.len() as u64;
                self.out.extend_from_slice(&data);
                if ack {
                    let n = self.next;
                    self.ack(n).await;
                }
            }
            ServerFrame::Gap { from, to } => {
                assert_eq!(from, self.next, "a gap starts where the client is");
                self.gaps.push((from, to));
                self.next = to;
            }
            ServerFrame::Exit(code) => self.exit = Some(code),
            ServerFrame::Error { kind, message } => self.errors.push(format!("{kind}: {message}")),
            ServerFrame::Pong(_) | ServerFrame::Hello(_) => {}
        }
    }

    /// Reads (acking) until the socket closes.
    async fn until_closed(&mut self) {
        let deadline = Instant::now() + GUARD;
        while let Some(f) = self.frame().await {
            self.handle(f, true).await;
            assert!(
                Instant::now() < deadline,
                "hang guard: the socket never closed"
            );
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_shell_runs_commands_as_the_user_on_the_boxs_own_terminal_and_resizes() {
    let d = Daemon::start("");
    let token = d.user_with_box("alice", "homelabber");
    rt().block_on(async {
        let t = d.ticket(&token, "alice", json!({}));
        let mut c = open(d.port, "alice", &format!("ticket={t}&cols=90&rows=20"), &[])
            .await
            .unwrap_or_else(|s| panic!("upgrade refused: {s}\n{}", d.log()));
        assert!(!c.hello.read_only);
        c.resume(0).await;
        c.input("echo id=$(id -un) tty=$(tty) hi-$((6*7)); stty size\r")
            .await;
        c.read_until(true, |o| contains(o, "hi-42")).await;
        c.read_until(true, |o| contains(o, "20 90")).await;
        let text = String::from_utf8_lossy(&c.out).to_string();
        assert!(text.contains("id=alice"), "{text}");
        // The box's own devpts: the first terminal of a fresh instance is /dev/pts/0.
        assert!(text.contains("tty=/dev/pts/0"), "{text}");
        c.send(ClientFrame::Resize {
            cols: 100,
            rows: 33,
        })
        .await;
        c.input("stty size; ps -o sid= -o pid= -o comm= -p $$; echo done-$((1+1))\r")
            .await;
        c.read_until(true, |o| contains(o, "done-2")).await;
        assert!(contains(&c.out, "33 100"));
        // The shell is a session leader (sid == pid).
        let text = String::from_utf8_lossy(&c.out).to_string();
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_end().ends_with("bash"))
            .unwrap_or_else(|| panic!("{text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], f[1], "shell is its session's leader: {line}");
        // Listed with its attachment.
        let list = d.sessions(&token, "alice");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["id"], c.hello.session.as_str());
        assert_eq!(list[0]["cols"], 100);
        assert_eq!(list[0]["attached"].as_array().unwrap().len(), 1);
        // exit ends the session with its status.
        c.input("exit 7\r").await;
        c.until_closed().await;
        assert_eq!(c.exit, Some(7), "{:?}", c.errors);
        wait_for("the session to go", || {
            d.sessions(&token, "alice").is_empty()
        });
    });
    let audit = d.ctl_json(&["audit", "--action", "terminal.end"]);
    let detail = audit["entries"][0]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("exit=7") && detail.contains("bytes_out="),
        "{detail}"
    );
    // Never keystrokes or output.
    let all = d.ctl_json(&["audit"]).to_string();
    assert!(!all.contains("hi-") && !all.contains("stty"), "{all}");
}

#[test]
fn a_client_that_disconnects_mid_output_resumes_without_loss_or_duplication() {
    let d = Daemon::start("");
    let token = d.user_with_box("bob", "homelabber");
    rt().block_on(async {
        let t = d.ticket(&token, "bob", json!({}));
        let mut c = open(d.port, "bob", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        let id = c.hello.session.clone();
        c.resume(0).await;
        // About 1.3 MB: more than the window, less than the ring.
        c.input("seq 1 190000; echo END-$((1+1))\r").await;
        c.read_until(true, |o| o.len() > 300_000).await;
        let at = c.next;
        let mut all = c.out.clone();
        drop(c);
        // Bearer token this time (CLI clients), same session, from where we were.
        let auth = format!("Bearer {token}");
        let mut c = open(
            d.port,
            "bob",
            &format!("session={id}"),
            &[("authorization", &auth)],
        )
        .await
        .unwrap();
        assert_eq!(c.hello.session, id);
        c.resume(at).await;
        c.read_until(true, |o| contains(o, "END-2")).await;
        assert!(c.gaps.is_empty(), "no gap expected: {:?}", c.gaps);
        all.extend_from_slice(&c.out);
        let text = String::from_utf8_lossy(&all).replace("\r\n", "\n");
        let expected: String = (1..=190000).map(|i| format!("{i}\n")).collect();
        assert!(
            text.contains(&expected),
            "the stream lost or repeated output"
        );
    });
}

#[test]
fn output_older_than_the_ring_is_reported_as_a_gap() {
    let d = Daemon::start("[terminal]\nbuffer = \"64K\"\nwindow = \"16K\"\n");
    let token = d.user_with_box("carol", "homelabber");
    rt().block_on(async {
        let t = d.ticket(&token, "carol", json!({}));
        let mut c = open(d.port, "carol", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        let id = c.hello.session.clone();
        c.resume(0).await;
        c.input("seq 1 40000; echo END-$((2+1))\r").await;
        c.read_until(true, |o| contains(o, "END-3")).await;
        let end = c.next;
        drop(c);
        let t = d.ticket(&token, "carol", json!({"session": id}));
        let mut c = open(d.port, "carol", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        assert!(c.hello.start > 0 && c.hello.end >= end, "{:?}", c.hello);
        c.resume(0).await;
        let f = c.frame().await.unwrap();
        assert_eq!(
            f,
            ServerFrame::Gap {
                from: 0,
                to: c.hello.start
            }
        );
        c.handle(f, true).await;
        c.read_until(true, |o| contains(o, "END-3")).await;
        assert!(c.out.len() as u64 <= 64 * 1024 + 1024);
    });
}

#[test]
fn a_flood_to_a_slow_client_stays_bounded_and_ctrl_c_stops_it() {
    let d = Daemon::start("");
    let token = d.user_with_box("dave", "homelabber");
    rt().block_on(async {
        let t = d.ticket(&token, "dave", json!({}));
        let mut c = open(d.port, "dave", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        let window = u64::from(c.hello.window);
        c.resume(0).await;
        c.input("echo ready-$((4*4))\r").await;
        c.read_until(true, |o| contains(o, "ready-16")).await;
        let rss_before = d.rss_kib();
        let acked = c.next;
        c.input("yes flood\r").await;
        // A client that never acknowledges: the daemon sends the window and stops.
        while c.next < acked + window / 2 {
            let f = c.frame().await.unwrap();
            c.handle(f, false).await;
        }
        wait_for("the output to stop at the window", || {
            let s = d.sessions(&token, "dave");
            s[0]["outputBytes"].as_u64().unwrap() >= acked + window
        });
        // It stays there: the pump stopped reading the terminal (`yes` is blocked).
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            let s = d.sessions(&token, "dave");
            assert!(s[0]["outputBytes"].as_u64().unwrap() <= acked + window);
        }
        let rss_after = d.rss_kib();
        assert!(
            rss_after < rss_before + 16 * 1024,
            "daemon grew from {rss_before} KiB to {rss_after} KiB"
        );
        // Ctrl-C gets through while output is stalled; the prompt comes back.
        c.input("\x03").await;
        c.input("echo after-$((3*3))\r").await;
        // Drain (acking) until the shell answers.
        let from = c.out.len();
        c.send(ClientFrame::Ack(c.next)).await;
        c.read_until(true, |o| contains(&o[from..], "after-9"))
            .await;
    });
}

#[test]
fn tickets_are_single_use_expire_and_foreign_origins_and_demo_are_refused() {
    let d = Daemon::start("");
    let token = d.user_with_box("erin", "homelabber");
    d.ctl_json(&[
        "user",
        "add",
        "visitor@example.com",
        "--login",
        "visitor",
        "--role",
        "demo",
        "--profile",
        "demo",
    ]);
    let admin = d.admin_token();
    rt().block_on(async {
        let t = d.ticket(&token, "erin", json!({}));
        let c = open(
            d.port,
            "erin",
            &format!("ticket={t}"),
            &[("origin", "http://allowed.example")],
        )
        .await
        .expect("allowed origin");
        drop(c);
        // Reuse.
        assert_eq!(
            open(d.port, "erin", &format!("ticket={t}"), &[])
                .await
                .err(),
            Some(401)
        );
        // A made-up ticket.
        assert_eq!(
            open(d.port, "erin", "ticket=00ff", &[]).await.err(),
            Some(401)
        );
        // A ticket for another user's box.
        let t = d.ticket(&admin, "erin", json!({}));
        assert_eq!(
            open(d.port, "visitor", &format!("ticket={t}"), &[])
                .await
                .err(),
            Some(401)
        );
        // Foreign origin, with a valid ticket and with a valid token.
        let t = d.ticket(&token, "erin", json!({}));
        assert_eq!(
            open(
                d.port,
                "erin",
                &format!("ticket={t}"),
                &[("origin", "http://evil.example")]
            )
            .await
            .err(),
            Some(403)
        );
        let auth = format!("Bearer {token}");
        assert_eq!(
            open(
                d.port,
                "erin",
                "",
                &[("origin", "http://evil.example"), ("authorization", &auth)]
            )
            .await
            .err(),
            Some(403)
        );
        // No credentials at all.
        assert_eq!(open(d.port, "erin", "", &[]).await.err(), Some(401));
        // Demo profiles have no terminal.
        let (st, v) = d.http(
            "POST",
            "/api/v1/boxes/visitor/terminal/tickets",
            Some(&admin),
            Some(&json!({})),
        );
        assert_eq!((st, v["error"]["kind"].clone()), (403, json!("forbidden")));
        let auth = format!("Bearer {admin}");
        assert_eq!(
            open(d.port, "visitor", "", &[("authorization", &auth)])
                .await
                .err(),
            Some(403)
        );
        // Expiry (30 s).
        let t = d.ticket(&token, "erin", json!({}));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            open(d.port, "erin", &format!("ticket={t}"), &[])
                .await
                .err(),
            Some(401)
        );
    });
    let audit = d
        .ctl_json(&["audit", "--action", "auth.failure"])
        .to_string();
    assert!(
        audit.contains("foreign origin") && audit.contains("expired ticket"),
        "{audit}"
    );
}

#[test]
fn admins_watch_read_only_visibly_and_revocation_closes_sockets() {
    let d = Daemon::start("");
    let token = d.user_with_box("frank", "homelabber");
    let admin = d.admin_token();
    rt().block_on(async {
        let t = d.ticket(&token, "frank", json!({}));
        let mut c = open(d.port, "frank", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        let id = c.hello.session.clone();
        c.resume(0).await;
        c.input("echo mark-$((5*5))\r").await;
        c.read_until(true, |o| contains(o, "mark-25")).await;

        let t = d.ticket(&admin, "frank", json!({"session": id, "readOnly": true}));
        let mut w = open(d.port, "frank", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        assert!(w.hello.read_only);
        w.resume(w.hello.start).await;
        w.read_until(true, |o| contains(o, "mark-25")).await;
        w.input("echo nope\r").await;
        // The user sees the watcher.
        let list = d.sessions(&token, "frank");
        let att = list[0]["attached"].as_array().unwrap();
        assert!(
            att.iter()
                .any(|a| a["readOnly"] == true && a["by"] != "frank"),
            "{list:?}"
        );
        // The watcher's input was refused.
        while w.errors.is_empty() {
            let f = w.frame().await.unwrap();
            w.handle(f, true).await;
        }
        assert!(w.errors[0].starts_with("read_only"), "{:?}", w.errors);
        drop(w);

        // Revoking the user's token closes the socket it opened (through a ticket).
        let tokens = d.ctl_json(&["token", "list", "--user", "frank"]);
        let tid = tokens["tokens"][0]["id"].as_str().unwrap().to_string();
        let (st, v) = d.http(
            "DELETE",
            &format!("/api/v1/tokens/{tid}"),
            Some(&admin),
            None,
        );
        assert_eq!(st, 204, "{v}");
        c.until_closed().await;
        assert!(
            c.errors.iter().any(|e| e.starts_with("revoked")),
            "{:?}",
            c.errors
        );
        // The session itself lives on (it belongs to the daemon); the admin attaches.
        let auth = format!("Bearer {admin}");
        let mut a = open(
            d.port,
            "frank",
            &format!("session={id}"),
            &[("authorization", &auth)],
        )
        .await
        .unwrap();
        a.resume(a.hello.start).await;
        a.read_until(true, |o| contains(o, "mark-25")).await;
        // Disabling the user closes sockets and ends the session.
        let (st, v) = d.http(
            "PATCH",
            "/api/v1/users/frank",
            Some(&admin),
            Some(&json!({"disabled": true})),
        );
        assert_eq!(st, 200, "{v}");
        a.until_closed().await;
        assert!(
            a.errors.iter().any(|e| e.starts_with("revoked")) || a.exit.is_some(),
            "{:?} {:?}",
            a.errors,
            a.exit
        );
        wait_for("the session to end", || {
            d.sessions(&admin, "frank").is_empty()
        });
    });
    let audit = d.ctl_json(&["audit", "--action", "terminal.watch"]);
    assert_eq!(audit["entries"][0]["outcome"], "ok");
}

#[test]
fn a_detached_session_lives_on_until_closed_and_the_session_limit_holds() {
    let d = Daemon::start("[terminal]\nmax_sessions = 2\n");
    let token = d.user_with_box("gina", "homelabber");
    rt().block_on(async {
        let auth = format!("Bearer {token}");
        let mut ids = vec![];
        for _ in 0..2 {
            let mut c = open(d.port, "gina", "", &[("authorization", &auth)])
                .await
                .unwrap();
            c.resume(0).await;
            c.input("sleep 0; echo ready\r").await;
            c.read_until(true, |o| contains(o, "ready")).await;
            ids.push(c.hello.session.clone());
        }
        assert_eq!(d.sessions(&token, "gina").len(), 2);
        assert_eq!(
            open(d.port, "gina", "", &[("authorization", &auth)])
                .await
                .err(),
            Some(409)
        );
        let (st, _) = d.http(
            "DELETE",
            &format!("/api/v1/boxes/gina/terminal/sessions/{}", ids[0]),
            Some(&token),
            None,
        );
        assert_eq!(st, 204);
        wait_for("the closed session to go", || {
            d.sessions(&token, "gina").len() == 1
        });
        // A member cannot see or touch another user's sessions.
        let other = d.user_with_box("hank", "homelabber");
        let (st, _) = d.http(
            "DELETE",
            &format!("/api/v1/boxes/gina/terminal/sessions/{}", ids[1]),
            Some(&other),
            None,
        );
        assert_eq!(st, 404);
        let other_auth = format!("Bearer {other}");
        assert_eq!(
            open(
                d.port,
                "gina",
                &format!("session={}", ids[1]),
                &[("authorization", &other_auth)]
            )
            .await
            .err(),
            Some(404)
        );
        assert_eq!(
            open(
                d.port,
                "hank",
                &format!("session={}", ids[1]),
                &[("authorization", &other_auth)]
            )
            .await
            .err(),
            Some(404)
        );
    });
}

#[test]
fn orchestratorctl_shell_runs_a_session_and_attaches_to_one_with_the_same_protocol() {
    let d = Daemon::start("");
    let token = d.user_with_box("ivy", "homelabber");
    let ctl = |args: &[&str], input: &str| d.ctl_in(args, input.as_bytes());
    let out = ctl(&["shell", "ivy"], "echo cli-$((2+5)); exit 3\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cli-7"), "{stdout}");
    // A session opened elsewhere, attached to by id.
    let id = rt().block_on(async {
        let auth = format!("Bearer {token}");
        let mut c = open(d.port, "ivy", "", &[("authorization", &auth)])
            .await
            .unwrap();
        c.resume(0).await;
        c.input("echo opened\r").await;
        c.read_until(true, |o| contains(o, "opened")).await;
        c.hello.session.clone()
    });
    let out = ctl(
        &["shell", "ivy", "--session", &id],
        "echo again-$((1+1)); exit 4\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("again-2"), "{stdout}");
    // Demo users have no terminal: forbidden (exit 5).
    d.ctl_json(&[
        "user",
        "add",
        "v2@example.com",
        "--login",
        "v2",
        "--role",
        "demo",
        "--profile",
        "demo",
    ]);
    let out = ctl(&["shell", "v2"], "");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_session_nobody_attaches_to_ends_after_the_profiles_detach_timeout() {
    let profiles = tempfile::Builder::new()
        .prefix("orchd-term-profiles-")
        .tempdir()
        .unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    for e in std::fs::read_dir(&repo).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text = text.replace("terminal_detach = \"30m\"", "terminal_detach = \"10s\"");
        std::fs::write(profiles.path().join(e.file_name()), text).unwrap();
    }
    let d = Daemon::start(&format!(
        "profiles_dir = \"{}\"\n",
        profiles.path().display()
    ));
    let token = d.user_with_box("jay", "homelabber");
    rt().block_on(async {
        let auth = format!("Bearer {token}");
        let mut c = open(d.port, "jay", "", &[("authorization", &auth)])
            .await
            .unwrap();
        c.resume(0).await;
        // Attached for longer than the timeout: the session stays.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(12) {
            c.send(ClientFrame::Ping(b"keep".to_vec())).await;
            let f = c.frame().await.unwrap();
            c.handle(f, true).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(d.sessions(&token, "jay").len(), 1);
        drop(c);
        // Detached: it ends.
        wait_for("the detached session to end", || {
            d.sessions(&token, "jay").is_empty()
        });
    });
    let audit = d
        .ctl_json(&["audit", "--action", "terminal.end"])
        .to_string();
    assert!(audit.contains("reason=detach_timeout"), "{audit}");
}

#[test]
fn the_web_page_types_into_xterm_and_a_reload_finds_the_same_session() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../web")
        .canonicalize()
        .unwrap();
    assert!(
        web.join("node_modules/@xterm/xterm/lib/xterm.js").exists()
            && web.join("node_modules/playwright-core").exists(),
        "web/node_modules is missing: scripts/install-deps runs npm ci in web/"
    );
    let d = Daemon::start(&format!("[terminal]\nweb_dir = \"{}\"\n", web.display()));
    let token = d.user_with_box("kim", "homelabber");
    let out = Command::new("node")
        .arg(web.join("browser-test.mjs"))
        .current_dir(&web)
        .env("ORCH_BASE", format!("http://127.0.0.1:{}", d.port))
        .env("ORCH_USER", "kim")
        .env("ORCH_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["sameSession"], true, "{v}");
    let screen = v["screen"].as_str().unwrap();
    assert!(
        screen.contains("web-42") && screen.contains("again-3"),
        "{screen}"
    );
    assert_eq!(d.sessions(&token, "kim").len(), 1);
    // The page is only the fixed files: nothing else below web_dir is reachable.
    for path in [
        "/terminal/package.json",
        "/terminal/..%2Fpackage.json",
        "/terminal/browser-test.mjs",
    ] {
        assert_eq!(d.http("GET", path, None, None).0, 404, "{path}");
    }
}

#[test]
fn revocation_closes_a_socket_whose_input_the_program_does_not_read() {
    // Regression: an input write blocked on a full terminal input queue kept the socket
    // from seeing its revocation.
    let d = Daemon::start("");
    let token = d.user_with_box("lee", "homelabber");
    let admin = d.admin_token();
    rt().block_on(async {
        let t = d.ticket(&token, "lee", json!({}));
        let mut c = open(d.port, "lee", &format!("ticket={t}"), &[])
            .await
            .unwrap();
        c.resume(0).await;
        c.input("stty raw -echo; echo rea''dy; sleep 600\r").await;
        c.read_until(true, |o| contains(o, "ready")).await;
        // Far more than the terminal's input queue holds: the daemon's write blocks.
        let chunk = vec![b'x'; 60_000];
        for _ in 0..8 {
            c.send(ClientFrame::Input(chunk.clone())).await;
        }
        let tokens = d.ctl_json(&["token", "list", "--user", "lee"]);
        let tid = tokens["tokens"][0]["id"].as_str().unwrap().to_string();
        let (st, _) = d.http(
            "DELETE",
            &format!("/api/v1/tokens/{tid}"),
            Some(&admin),
            None,
        );
        assert_eq!(st, 204);
        c.until_closed().await;
        assert!(
            c.errors.iter().any(|e| e.starts_with("revoked")),
            "{:?}",
            c.errors
        );
    });
}

#[test]
fn a_client_that_stops_answering_is_closed_after_the_idle_timeout_and_its_session_stays() {
    let d = Daemon::start("[terminal]\nidle_timeout = \"5s\"\nheartbeat = \"1s\"\n");
    let token = d.user_with_box("max", "homelabber");
    rt().block_on(async {
        let auth = format!("Bearer {token}");
        let mut c = open(d.port, "max", "", &[("authorization", &auth)])
            .await
            .unwrap();
        assert_eq!(c.hello.heartbeat_ms, 1000);
        c.resume(0).await;
        c.input("echo alive-$((7*6))\r").await;
        c.read_until(true, |o| contains(o, "alive-42")).await;
        // A dead client: nothing read, so not even the automatic pongs go out.
        tokio::time::sleep(Duration::from_secs(8)).await;
        // The daemon closes the socket (without the idle timeout it would ping forever and
        // this would hit the hang guard). Its `idle_timeout` error frame may be lost: the
        // daemon has closed by the time our queued pongs go out, and the reset drops it.
        c.until_closed().await;
        assert!(
            c.errors.iter().all(|e| e.starts_with("idle_timeout")),
            "{:?}",
            c.errors
        );
        // The session belongs to the daemon: still there, detached.
        let list = d.sessions(&token, "max");
        assert_eq!(list.len(), 1);
        wait_for("the attachment to go", || {
            d.sessions(&token, "max")[0]["attached"]
                .as_array()
                .unwrap()
                .is_empty()
        });
    });
}
