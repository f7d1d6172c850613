//! Terminal routes: tickets, the session list, closing a session, and the WebSocket that
//! carries the terminal protocol (docs/terminal-protocol.md, `policy::terminal`).
//!
//! The WebSocket is authenticated either by a ticket (`?ticket=`, browsers: they cannot set
//! headers) or like every other route (bearer token, or root on the admin socket). A
//! request carrying an `Origin` header must come from one of `http.allowed_origins`
//! (cross-site WebSocket hijacking); clients without one (the CLI) have no ambient
//! credentials a foreign page could borrow. Messages are limited to one client frame
//! (64 KiB of input), the socket is closed after `terminal.idle_timeout` without a frame
//! from the client, and the daemon pings every `terminal.heartbeat`.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, OriginalUri, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use policy::terminal::{ClientFrame, Hello, ServerFrame, MAX_CLIENT_FRAME, MAX_OUTPUT};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{origin_allowed, peer_name, Authed};
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::service::terminal::{
    AttachRequest, Attachment, SessionView, TicketPurpose, TicketRequest, TicketView,
};
use crate::service::Actor;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// A single-use ticket (30 s) for a browser to open the terminal WebSocket of `user`.
#[utoipa::path(post, path = "/api/v1/boxes/{user}/terminal/tickets", tag = "terminal",
    params(("user" = String, Path, description = "login or email")),
    request_body = TicketRequest,
    responses((status = 200, body = TicketView), (status = 403, body = ErrorBody,
        description = "the profile has no terminal"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_ticket(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(req): Json<TicketRequest>,
) -> ApiResult<axum::Json<TicketView>> {
    Ok(axum::Json(s.app.terminal_ticket(&actor, &user, &req)?))
}

/// The user's terminal sessions, with who is attached (read-only watchers included).
#[utoipa::path(get, path = "/api/v1/boxes/{user}/terminal/sessions", tag = "terminal",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = SessionList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<SessionList>> {
    Ok(axum::Json(SessionList {
        sessions: s.app.terminal_sessions(&actor, &user)?,
    }))
}

/// Ends a session: its shell is killed and its sockets get the exit status.
#[utoipa::path(delete, path = "/api/v1/boxes/{user}/terminal/sessions/{id}", tag = "terminal",
    params(("user" = String, Path, description = "login or email"),
           ("id" = String, Path, description = "session id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn close_session(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path((user, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.app.terminal_close(&actor, &user, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the terminal WebSocket.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WsQuery {
    /// A ticket from `POST .../terminal/tickets` (browsers); otherwise a bearer token.
    pub ticket: Option<String>,
    /// Attach to this session; absent: open a new one.
    pub session: Option<String>,
    /// Watch without input.
    #[serde(default)]
    pub read_only: bool,
    /// Initial size of a new session (default 80x24).
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// The terminal WebSocket (binary frames, docs/terminal-protocol.md).
#[utoipa::path(get, path = "/api/v1/boxes/{user}/terminal", tag = "terminal",
    params(("user" = String, Path, description = "login or email"), WsQuery),
    responses((status = 101, description = "WebSocket"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "foreign Origin, or no terminal for the profile"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("ticket" = [])))]
pub async fn websocket(State(s): State<AppState>, req: Request) -> Response {
    match upgrade(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn upgrade(s: AppState, req: Request) -> ApiResult<Response> {
    let (mut parts, _body) = req.into_parts();
    let Path(user) = Path::<String>::from_request_parts(&mut parts, &s).await?;
    let Query(q) = Query::<WsQuery>::from_request_parts(&mut parts, &s).await?;
    let app = &s.app;
    let peer_name = peer_name(&parts, &app.config.http.trusted_proxies);
    if !origin_allowed(&parts.headers, &app.config.http.allowed_origins) {
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path().to_string(), |u| u.path().to_string());
        s.metrics.auth_failure();
        app.audit_auth_failure(&peer_name, &path, "WebSocket from a foreign origin");
        return Err(ApiError::Forbidden("origin not allowed".into()));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
        .await
        .map_err(|_| ApiError::BadRequest {
            kind: "websocket_required",
            message: "this route is a WebSocket".into(),
        })?;
    let mut attach = AttachRequest {
        session: q.session.clone(),
        read_only: q.read_only,
        cols: q.cols,
        rows: q.rows,
    };
    let actor: Actor = match &q.ticket {
        Some(secret) => {
            let t = app.redeem_ticket_for(
                secret,
                &peer_name,
                TicketPurpose::Terminal,
                &user,
                q.session.as_deref(),
            )?;
            if t.session.is_some() {
                attach.session = t.session.clone();
            }
            attach.read_only = t.read_only || q.read_only;
            t.actor
        }
        None => Authed::from_request_parts(&mut parts, &s).await?.0,
    };
    let attachment = app.terminal_attach(&actor, &user, &attach).await?;
    let cfg = app.config.terminal.clone();
    let ws = ws
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024);
    Ok(ws.on_upgrade(move |socket| async move {
        Connection {
            a: attachment,
            heartbeat: cfg.heartbeat.0,
            idle: cfg.idle_timeout.0,
        }
        .run(socket)
        .await
    }))
}

struct Connection {
    a: Attachment,
    heartbeat: Duration,
    idle: Duration,
}

/// What a connection does after a client frame.
enum Next {
    Continue,
    Stop,
}

fn bin(v: Vec<u8>) -> Message {
    Message::Binary(v.into())
}

fn error_frame(kind: &str, message: &str) -> Message {
    bin(ServerFrame::Error {
        kind: kind.into(),
        message: message.into(),
    }
    .encode())
}

impl Connection {
    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let s = self.a.session.clone();
        let (start, end) = s.offsets();
        let hello = ServerFrame::Hello(Hello {
            session: s.id.clone(),
            read_only: self.a.read_only,
            window: s.window() as u32,
            buffer: s.buffer() as u32,
            max_frame: MAX_CLIENT_FRAME as u32,
            heartbeat_ms: self.heartbeat.as_millis() as u32,
            start,
            end,
        });
        if tx.send(bin(hello.encode())).await.is_err() {
            return;
        }
        // Nothing is sent until the client says where to resume.
        let mut cursor: Option<u64> = None;
        let mut acked: u64 = 0;
        let mut last_rx = Instant::now();
        let mut ping = tokio::time::interval(self.heartbeat);
        ping.tick().await;
        let mut more = false;
        loop {
            tokio::select! {
                biased;
                _ = self.a.kick.changed() => {
                    let why = (*self.a.kick.borrow()).unwrap_or("closed");
                    let _ = tx.send(error_frame(why, "the daemon closed this connection")).await;
                    break;
                }
                msg = rx.next() => {
                    last_rx = Instant::now();
                    let Some(Ok(msg)) = msg else { break };
                    match msg {
                        Message::Binary(b) => {
                            match self.frame(&b, &mut cursor, &mut acked, &mut tx).await {
                                Next::Continue => {}
                                Next::Stop => break,
                            }
                        }
                        Message::Text(_) => {
                            let _ = tx.send(error_frame("malformed_frame", "binary frames only")).await;
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => break,
                    }
                }
                _ = self.a.changed.changed(), if cursor.is_some() && !more => {}
                _ = ping.tick() => {
                    if last_rx.elapsed() >= self.idle {
                        let _ = tx.send(error_frame("idle_timeout", "no frame from the client")).await;
                        break;
                    }
                    if tx.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
                _ = std::future::ready(()), if more => {}
            }
            // Send at most one frame per turn, so input keeps being read.
            if let Some(at) = cursor.as_mut() {
                match self.flush_one(at, acked, &mut tx).await {
                    Ok(m) => more = m,
                    Err(()) => break,
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    }

    /// Sends the next output frame within the client's credit. Ok(true) when more could
    /// be sent right away; Err when the socket is done.
    async fn flush_one(
        &mut self,
        cursor: &mut u64,
        acked: u64,
        tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    ) -> Result<bool, ()> {
        let s = &self.a.session;
        let exit = s.exit();
        let limit = acked + s.window();
        if *cursor < limit {
            let chunk = s.read(*cursor, ((limit - *cursor) as usize).min(MAX_OUTPUT));
            if let Some((from, to)) = chunk.gap {
                tx.send(bin(ServerFrame::Gap { from, to }.encode()))
                    .await
                    .map_err(|_| ())?;
            }
            *cursor = chunk.offset;
            if chunk.len > 0 {
                tx.send(bin(chunk.frame)).await.map_err(|_| ())?;
                *cursor += chunk.len as u64;
                return Ok(true);
            }
        }
        if let Some(code) = exit {
            if *cursor >= s.offsets().1 {
                let _ = tx.send(bin(ServerFrame::Exit(code).encode())).await;
                return Err(());
            }
        }
        Ok(false)
    }

    async fn frame(
        &mut self,
        b: &[u8],
        cursor: &mut Option<u64>,
        acked: &mut u64,
        tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    ) -> Next {
        let s = self.a.session.clone();
        let frame = match ClientFrame::decode(b) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(error_frame(e.kind(), &e.to_string())).await;
                return Next::Continue;
            }
        };
        let writes = matches!(
            frame,
            ClientFrame::Input(_) | ClientFrame::Resize { .. } | ClientFrame::Close
        );
        if writes && self.a.read_only {
            let _ = tx
                .send(error_frame("read_only", "this attachment is read-only"))
                .await;
            return Next::Continue;
        }
        match frame {
            ClientFrame::Input(d) => {
                // A program that does not read its input can keep this write waiting
                // (the terminal's input queue is full); a revocation must still close us.
                tokio::select! {
                    r = s.input(&d) => {
                        if let Err(e) = r {
                            tracing::debug!(?e, "terminal input failed");
                        }
                    }
                    _ = self.a.kick.changed() => {
                        let why = (*self.a.kick.borrow()).unwrap_or("closed");
                        let _ = tx.send(error_frame(why, "the daemon closed this connection")).await;
                        return Next::Stop;
                    }
                }
            }
            ClientFrame::Resize { cols, rows } => {
                if let Err(e) = s.resize(cols, rows) {
                    tracing::debug!(?e, "terminal resize failed");
                }
            }
            ClientFrame::Ack(o) => {
                *acked = (*acked).max(o.min(cursor.unwrap_or(0)));
                if !self.a.read_only {
                    s.ack(*acked);
                }
            }
            ClientFrame::Ping(p) => {
                if tx.send(bin(ServerFrame::Pong(p).encode())).await.is_err() {
                    return Next::Stop;
                }
            }
            ClientFrame::Resume(o) => {
                *cursor = Some(o);
                *acked = o;
                if !self.a.read_only {
                    s.ack(o);
                }
            }
            ClientFrame::Close => {
                self.a.close();
            }
        }
        Next::Continue
    }
}

/// The page's files: a fixed list, nothing else is reachable below `terminal.web_dir`.
fn web_file(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "" => ("index.html", "text/html; charset=utf-8"),
        "app.js" => ("app.js", "text/javascript; charset=utf-8"),
        "client.js" => ("terminal-client.js", "text/javascript; charset=utf-8"),
        "xterm.js" => (
            "node_modules/@xterm/xterm/lib/xterm.js",
            "text/javascript; charset=utf-8",
        ),
        "xterm.css" => (
            "node_modules/@xterm/xterm/css/xterm.css",
            "text/css; charset=utf-8",
        ),
        _ => return None,
    })
}

async fn serve_web(s: &AppState, name: &str) -> ApiResult<Response> {
    let not_found = || ApiError::NotFound("no such page".into());
    let dir = s
        .app
        .config
        .terminal
        .web_dir
        .as_ref()
        .ok_or_else(not_found)?;
    let (file, content_type) = web_file(name).ok_or_else(not_found)?;
    let body = tokio::fs::read(dir.join(file)).await.map_err(|e| {
        tracing::warn!(?e, file, "cannot read a web terminal file");
        not_found()
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response())
}

/// The web terminal page (static; the ticket travels in the URL fragment, never to us).
pub async fn web_index(State(s): State<AppState>) -> ApiResult<Response> {
    serve_web(&s, "").await
}

/// The page's scripts and styles.
pub async fn web_asset(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    serve_web(&s, &name).await
}
