//! `terminal-bench`: B2, B5 and B6 (PERFORMANCE.md) over a terminal WebSocket, for our
//! daemon (binary protocol, docs/terminal-protocol.md), terminado (JSON messages
//! `["stdin", s]` / `["stdout", s]`) and WeTTY (socket.io events, with its `commit` flow
//! control), driven the same way. bench/b-terminal.sh runs it.
//!
//! - B2: connect (opening a new shell) until the first output byte, `--samples` times.
//! - B5: keystroke echo round trip: `cat` in cooked mode on the terminal, one byte sent,
//!   timed until it comes back (the line discipline echoes it); idle, then while a second
//!   session floods output to a greedy reader.
//! - B6: throughput of `yes | head -c N` to a greedy client (acks every frame; on the
//!   cooked terminal, and again after `stty raw`) and to a
//!   client that acknowledges (ours) or reads (terminado) at 30 MB/s; then Ctrl-C during a
//!   flood: time until the last output byte (before 200 ms of silence) and the bytes that
//!   arrived after the Ctrl-C.
//!
//! One JSON object per measurement on stdout.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use policy::terminal::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Ours,
    Terminado,
    /// WeTTY: socket.io (Engine.IO v4 over a WebSocket): `42["input",s]`,
    /// `42["data",s]`, `42["commit",n]` (its flow control), pings `2` answered `3`.
    Wetty,
}

#[derive(Clone)]
struct Target {
    proto: Proto,
    url: String,
    headers: Vec<(String, String)>,
}

struct Conn {
    ws: Ws,
    proto: Proto,
    /// Ours: acknowledge every frame (greedy) unless paced.
    ack: bool,
    next: u64,
    /// WeTTY: output received and not yet committed.
    uncommitted: u64,
}

impl Conn {
    async fn open(t: &Target) -> Conn {
        let mut req = t.url.as_str().into_client_request().unwrap();
        for (k, v) in &t.headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .expect("connect");
        let mut c = Conn {
            ws,
            proto: t.proto,
            ack: true,
            next: 0,
            uncommitted: 0,
        };
        if c.proto == Proto::Wetty {
            // Engine.IO open packet, then connect to the default namespace.
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Text(t))) if t.starts_with('0') => break,
                    Some(Ok(_)) => continue,
                    other => panic!("expected the engine.io open packet: {other:?}"),
                }
            }
            c.ws.send(Message::Text("40".into())).await.unwrap();
        }
        if c.proto == Proto::Ours {
            match c.ws.next().await {
                Some(Ok(Message::Binary(b))) => match ServerFrame::decode(&b) {
                    Ok(ServerFrame::Hello(_)) => {}
                    other => panic!("expected hello: {other:?}"),
                },
                other => panic!("expected hello: {other:?}"),
            }
            c.ws.send(Message::Binary(ClientFrame::Resume(0).encode().into()))
                .await
                .unwrap();
        }
        c
    }

    async fn input(&mut self, s: &[u8]) {
        let msg = match self.proto {
            Proto::Ours => Message::Binary(ClientFrame::Input(s.to_vec()).encode().into()),
            Proto::Terminado => Message::Text(
                serde_json::json!(["stdin", String::from_utf8_lossy(s)])
                    .to_string()
                    .into(),
            ),
            Proto::Wetty => Message::Text(
                format!(
                    "42{}",
                    serde_json::json!(["input", String::from_utf8_lossy(s)])
                )
                .into(),
            ),
        };
        self.ws.send(msg).await.unwrap();
    }

    async fn ack_now(&mut self) {
        match self.proto {
            Proto::Ours => {
                let f = ClientFrame::Ack(self.next).encode();
                let _ = self.ws.send(Message::Binary(f.into())).await;
            }
            Proto::Wetty if self.uncommitted > 0 => {
                let m = format!("42{}", serde_json::json!(["commit", self.uncommitted]));
                self.uncommitted = 0;
                let _ = self.ws.send(Message::Text(m.into())).await;
            }
            _ => {}
        }
    }

    /// The next output bytes (None when the socket ended).
    async fn output(&mut self) -> Option<Vec<u8>> {
        loop {
            let msg = self.ws.next().await?.ok()?;
            match (self.proto, msg) {
                (Proto::Ours, Message::Binary(b)) => match ServerFrame::decode(&b).ok()? {
                    ServerFrame::Output { offset, data } => {
                        self.next = offset + data.len() as u64;
                        if self.ack {
                            self.ack_now().await;
                        }
                        return Some(data);
                    }
                    ServerFrame::Exit(_) => return None,
                    _ => continue,
                },
                (Proto::Wetty, Message::Text(t)) => {
                    if t.as_str() == "2" {
                        let _ = self.ws.send(Message::Text("3".into())).await;
                        continue;
                    }
                    let Some(json) = t.strip_prefix("42") else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(json).ok()?;
                    if v[0] == "data" {
                        let d = v[1].as_str().unwrap_or("").as_bytes().to_vec();
                        self.uncommitted +=
                            v[1].as_str().map_or(0, |s| s.encode_utf16().count()) as u64;
                        if self.ack {
                            self.ack_now().await;
                        }
                        return Some(d);
                    }
                    if v[0] == "logout" {
                        return None;
                    }
                }
                (Proto::Terminado, Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                    if v[0] == "stdout" {
                        return Some(v[1].as_str().unwrap_or("").as_bytes().to_vec());
                    }
                }
                (_, Message::Close(_)) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until `needle` appears in what arrives from now on; returns the bytes read.
    async fn until(&mut self, needle: &[u8]) -> usize {
        let mut seen: Vec<u8> = Vec::new();
        let mut total = 0;
        loop {
            let d = self.output().await.expect("socket ended");
            total += d.len();
            seen.extend_from_slice(&d);
            if seen.windows(needle.len()).any(|w| w == needle) {
                return total;
            }
            if seen.len() > 4 * needle.len() + 65536 {
                seen.drain(..seen.len() - needle.len());
            }
        }
    }

    async fn close(mut self) {
        if self.proto == Proto::Ours {
            let _ = self
                .ws
                .send(Message::Binary(ClientFrame::Close.encode().into()))
                .await;
        }
        let _ = self.ws.close(None).await;
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, proto: Proto, extra: serde_json::Value) {
    let mut o = serde_json::json!({"bench": name, "proto": format!("{proto:?}").to_lowercase()});
    o.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    println!("{o}");
}

async fn b2(t: &Target, samples: usize) {
    let mut ms = vec![];
    for _ in 0..samples {
        let t0 = Instant::now();
        let mut c = Conn::open(t).await;
        let first = c.output().await.expect("no prompt");
        assert!(!first.is_empty());
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        c.close().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(
        "b2_first_byte",
        t.proto,
        serde_json::json!({"samples": samples, "p50_ms": pct(&mut ms.clone(), 0.5), "p99_ms": pct(&mut ms, 0.99)}),
    );
}

async fn echo_rtts(c: &mut Conn, samples: usize) -> Vec<f64> {
    let samples = samples.min(4000);
    c.input(b"stty -echoctl; cat\r").await;
    c.until(b"cat\r\n").await;
    let mut us = vec![];
    for i in 0..samples {
        let ch = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        c.input(&[ch]).await;
        c.until(&[ch]).await;
        us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    // (The line stays below the 4095-byte canonical limit for up to 4000 samples.)
    c.input(b"\x03").await;
    us
}

async fn b5(t: &Target, samples: usize) {
    let mut c = Conn::open(t).await;
    c.output().await;
    let mut idle = echo_rtts(&mut c, samples).await;
    c.close().await;
    // A flooding neighbour with a greedy reader.
    let tf = t.clone();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let flood = tokio::spawn(async move {
        let mut f = Conn::open(&tf).await;
        f.input(b"yes flood-flood-flood-flood-flood\r").await;
        loop {
            tokio::select! {
                o = f.output() => if o.is_none() { return },
                _ = stop.changed() => break,
            }
        }
        f.input(b"\x03").await;
        f.close().await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Conn::open(t).await;
    c.output().await;
    let mut load = echo_rtts(&mut c, samples).await;
    c.close().await;
    let _ = stop_tx.send(true);
    let _ = flood.await;
    report(
        "b5_echo",
        t.proto,
        serde_json::json!({
            "samples": samples,
            "idle_p50_us": pct(&mut idle.clone(), 0.5), "idle_p99_us": pct(&mut idle, 0.99),
            "load_p50_us": pct(&mut load.clone(), 0.5), "load_p99_us": pct(&mut load, 0.99),
        }),
    );
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn throughput(
    t: &Target,
    bytes: u64,
    pace: Option<f64>,
    pid: Option<u32>,
    raw: bool,
) -> (f64, u64) {
    let mut c = Conn::open(t).await;
    c.output().await;
    c.ack = pace.is_none();
    // Raw: no output processing in the line discipline (the PTY's raw floor).
    let (pre, post) = if raw {
        ("stty raw -echo; ", "; stty sane")
    } else {
        ("", "")
    };
    let cmd = format!(
        "{pre}yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW | head -c {bytes}; echo; echo EN''D-MARK{post}\r"
    );
    c.input(cmd.as_bytes()).await;
    let mut got = 0u64;
    let mut seen: Vec<u8> = vec![];
    let mut t0: Option<Instant> = None;
    let mut peak = 0;
    let mut frames = 0u64;
    loop {
        let d = c.output().await.expect("socket ended");
        let now = Instant::now();
        let start = *t0.get_or_insert(now);
        got += d.len() as u64;
        seen.extend_from_slice(&d);
        if seen.len() > 64 {
            seen.drain(..seen.len() - 64);
        }
        if let Some(rate) = pace {
            // Consume at `rate` bytes/s: ack (ours), commit (WeTTY) or read (terminado) no
            // faster.
            let due = start + Duration::from_secs_f64(got as f64 / rate);
            if due > now {
                tokio::time::sleep(due - now).await;
            }
            c.ack_now().await;
        }
        frames += 1;
        if frames % 64 == 0 {
            peak = peak.max(rss_kib(pid));
        }
        if seen.windows(8).any(|w| w == b"END-MARK") {
            break;
        }
    }
    let secs = t0.unwrap().elapsed().as_secs_f64();
    c.close().await;
    (got as f64 / secs / 1e6, peak)
}

async fn b6(t: &Target, bytes: u64, pid: Option<u32>) {
    let base = rss_kib(pid);
    let (greedy, peak_g) = throughput(t, bytes, None, pid, false).await;
    let (greedy_raw, _) = throughput(t, bytes, None, pid, true).await;
    eprintln!("b6 {:?}: greedy raw {greedy_raw:.1} MB/s", t.proto);
    eprintln!("b6 {:?}: greedy {greedy:.1} MB/s", t.proto);
    let (paced, peak_p) = throughput(t, bytes / 4, Some(30e6), pid, false).await;
    eprintln!("b6 {:?}: paced {paced:.1} MB/s", t.proto);
    // Ctrl-C during a flood (greedy reader).
    let mut c = Conn::open(t).await;
    c.output().await;
    c.input(b"yes flood-flood-flood-flood-flood\r").await;
    let t_flood = Instant::now();
    while t_flood.elapsed() < Duration::from_millis(500) {
        c.output().await;
    }
    // Quiet: the last output byte before 200 ms of silence, measured from the Ctrl-C.
    let t0 = Instant::now();
    c.input(b"\x03").await;
    let mut after = 0usize;
    let mut last = t0;
    let mut quiet = true;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), c.output()).await {
        after += d.len();
        last = Instant::now();
        if t0.elapsed() > Duration::from_secs(20) {
            // Never quiet within 20 s: reported as such.
            quiet = false;
            break;
        }
    }
    let quiet_ms = (last - t0).as_secs_f64() * 1e3;
    c.close().await;
    report(
        "b6_throughput",
        t.proto,
        serde_json::json!({
            "bytes": bytes, "greedy_mb_s": greedy, "greedy_raw_mb_s": greedy_raw, "paced_30mb_s_mb_s": paced,
            "rss_base_kib": base, "rss_peak_greedy_kib": peak_g, "rss_peak_paced_kib": peak_p,
            "ctrl_c_quiet_ms": quiet_ms, "quiet_within_20s": quiet, "bytes_after_ctrl_c": after,
        }),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut proto = Proto::Ours;
    let mut url = String::new();
    let mut headers = vec![];
    let mut samples = 30usize;
    let mut echo_samples = 500usize;
    let mut bytes = 100_000_000u64;
    let mut pid = None;
    let mut which = "all".to_string();
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("missing value");
        match a.as_str() {
            "--proto" => {
                proto = match v().as_str() {
                    "ours" => Proto::Ours,
                    "terminado" => Proto::Terminado,
                    "wetty" => Proto::Wetty,
                    p => panic!("unknown proto {p}"),
                }
            }
            "--url" => url = v(),
            "--header" => {
                let h = v();
                let (k, val) = h.split_once(':').expect("K:V");
                headers.push((k.trim().to_string(), val.trim().to_string()));
            }
            "--samples" => samples = v().parse().unwrap(),
            "--echo-samples" => echo_samples = v().parse().unwrap(),
            "--bytes" => bytes = v().parse().unwrap(),
            "--pid" => pid = Some(v().parse().unwrap()),
            "--only" => which = v(),
            other => panic!("unknown argument {other}"),
        }
    }
    let t = Target {
        proto,
        url,
        headers,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if which == "all" || which == "b2" {
            b2(&t, samples).await;
        }
        if which == "all" || which == "b5" {
            b5(&t, echo_samples).await;
        }
        if which == "all" || which == "b6" {
            b6(&t, bytes, pid).await;
        }
    });
}
