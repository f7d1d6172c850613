//! `shell USER [--session ID]`: an interactive terminal in a user's box from the admin's
//! own terminal, over the terminal WebSocket (docs/terminal-protocol.md), on the Unix
//! socket (root) or `--url` with a token.
//!
//! When stdin is a terminal it is put in raw mode for the session (restored on every way
//! out), its size is sent at the start and on every SIGWINCH, and Ctrl-] detaches: the
//! session keeps running in the daemon and `--session ID` attaches to it again. Output is
//! written as it comes and acknowledged (flow control). The process exits with the
//! shell's exit status, or 0 after a detach.

use std::io::Write;
use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use policy::terminal::{ClientFrame, ServerFrame};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::ShellArgs;
use crate::client::{encode, Client, Failure, Secret, Target};

/// Ctrl-]: detach (telnet's escape).
pub const DETACH: u8 = 0x1d;

/// How much recent output an attach shows (the ring may hold up to the daemon's buffer).
const CONTEXT: u64 = 4096;

/// Raw mode for the life of the guard.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(stdin.as_fd()) {
            return None;
        }
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Flush, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Flush,
            &self.saved,
        );
    }
}

/// Reads stdin on a thread of its own, straight from the descriptor: `main` holds std's
/// stdin lock for the whole run, and a read must not hold up the socket.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rustix::io::read(std::io::stdin().as_fd(), &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
        }
    });
    rx
}

fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

pub async fn run(client: &Client, args: &ShellArgs) -> Result<u8> {
    let mut path = format!(
        "/api/v1/boxes/{}/terminal?readOnly={}",
        encode(&args.user),
        args.read_only
    );
    if let Some(s) = &args.session {
        path.push_str(&format!("&session={}", encode(s)));
    }
    let initial = size();
    if let Some((c, r)) = initial {
        path.push_str(&format!("&cols={c}&rows={r}"));
    }
    let (host, base) = match &client.target {
        Target::Unix(_) => ("localhost".to_string(), String::new()),
        Target::Tcp {
            authority, base, ..
        } => (authority.clone(), base.clone()),
    };
    let mut req = format!("ws://{host}{base}{path}")
        .into_client_request()
        .map_err(|e| anyhow!("bad request: {e}"))?;
    if let Some(Secret(token)) = &client.token {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("the token holds characters that cannot go in a header"))?;
        v.set_sensitive(true);
        req.headers_mut().insert("authorization", v);
    }
    let unreachable = |e: std::io::Error| -> anyhow::Error {
        Failure::Unreachable(format!("cannot connect to {}: {e}", client.target)).into()
    };
    let refused = |e: tokio_tungstenite::tungstenite::Error| -> anyhow::Error {
        match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let body = resp.body().clone().unwrap_or_default();
                Failure::from_response(status, &body).into()
            }
            other => Failure::Unreachable(format!("websocket: {other}")).into(),
        }
    };
    match &client.target {
        Target::Unix(p) => {
            let s = UnixStream::connect(p).await.map_err(unreachable)?;
            let (ws, _) = tokio_tungstenite::client_async(req, s)
                .await
                .map_err(refused)?;
            session(ws, args.session.is_some()).await
        }
        Target::Tcp { host, port, .. } => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(unreachable)?;
            let _ = s.set_nodelay(true);
            let (ws, _) = tokio_tungstenite::client_async(req, s)
                .await
                .map_err(refused)?;
            session(ws, args.session.is_some()).await
        }
    }
}

async fn session<S>(ws: tokio_tungstenite::WebSocketStream<S>, attach: bool) -> Result<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let hello = match rx.next().await {
        Some(Ok(Message::Binary(b))) => match ServerFrame::decode(&b) {
            Ok(ServerFrame::Hello(h)) => h,
            other => return Err(anyhow!("expected hello, got {other:?}")),
        },
        other => return Err(anyhow!("expected hello, got {other:?}")),
    };
    let send = |f: ClientFrame| Message::Binary(f.encode().into());
    let from = if attach {
        hello.start.max(hello.end.saturating_sub(CONTEXT))
    } else {
        0
    };
    tx.send(send(ClientFrame::Resume(from))).await?;
    let raw = RawMode::enter();
    if raw.is_some() {
        if let Some((cols, rows)) = size() {
            tx.send(send(ClientFrame::Resize { cols, rows })).await?;
        }
        eprint!("[session {} - Ctrl-] detaches]\r\n", hello.session);
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("SIGWINCH handler")?;
    let mut stdin = stdin_reader();
    let mut stdin_open = true;
    let mut out = std::io::stdout();
    let mut next = from;
    loop {
        tokio::select! {
            chunk = stdin.recv(), if stdin_open => {
                let Some(data) = chunk else {
                    stdin_open = false;
                    continue;
                };
                let data = &data[..];
                if raw.is_some() {
                    if let Some(i) = data.iter().position(|b| *b == DETACH) {
                        if i > 0 {
                            tx.send(send(ClientFrame::Input(data[..i].to_vec()))).await?;
                        }
                        let _ = tx.close().await;
                        drop(raw);
                        eprintln!("\n[detached from session {}]", hello.session);
                        return Ok(0);
                    }
                }
                // A socket that broke shows up on the read side (no exit status).
                let _ = tx.send(send(ClientFrame::Input(data.to_vec()))).await;
            }
            _ = winch.recv() => {
                if let Some((cols, rows)) = size() {
                    let _ = tx.send(send(ClientFrame::Resize { cols, rows })).await;
                }
            }
            msg = rx.next() => {
                let Some(msg) = msg else { break };
                let Message::Binary(b) = msg.context("reading the socket")? else { continue };
                match ServerFrame::decode(&b) {
                    Ok(ServerFrame::Output { offset, data }) => {
                        out.write_all(&data).context("writing the output")?;
                        out.flush().context("writing the output")?;
                        next = offset + data.len() as u64;
                        // Best effort: after `exit` the daemon closes the socket while
                        // acks for the last frames may still be on their way; what it
                        // sent (the exit status included) is still read below.
                        let _ = tx.send(send(ClientFrame::Ack(next))).await;
                    }
                    Ok(ServerFrame::Gap { to, .. }) => {
                        if next != from {
                            eprint!("\r\n[output lost]\r\n");
                        }
                        next = to;
                    }
                    Ok(ServerFrame::Exit(code)) => {
                        drop(raw);
                        return Ok(u8::try_from(code).unwrap_or(1));
                    }
                    Ok(ServerFrame::Error { kind, message }) => {
                        eprint!("\r\n[{kind}: {message}]\r\n");
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("bad frame from the daemon: {e}")),
                }
            }
        }
    }
    drop(raw);
    Err(Failure::Unreachable("the daemon closed the terminal".into()).into())
}
