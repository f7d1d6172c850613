//! Box routes: list, status, lifecycle operations, logs, exec (whole or streamed) and bulk
//! operations. Handlers authenticate and call `service`, which authorizes (members reach
//! only their own box, with the same 404 as for a box that does not exist) and audits.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body::Frame;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::auth::Authed;
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::service::{BoxFilter, BoxView, BulkRequest, BulkResult, ExecBody, ExecOutput};

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Serialize, ToSchema)]
pub struct BoxList {
    pub boxes: Vec<BoxView>,
}

/// Boxes the caller may see (members: their own), filtered by state, user and role.
#[utoipa::path(get, path = "/api/v1/boxes", tag = "boxes", params(BoxFilter),
    responses((status = 200, body = BoxList), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_boxes(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Query(f): Query<BoxFilter>,
) -> ApiResult<axum::Json<BoxList>> {
    Ok(axum::Json(BoxList {
        boxes: s.app.list_boxes(&actor, &f)?,
    }))
}

/// State, pid, uptime, limits, current usage from the cgroup, last error.
#[utoipa::path(get, path = "/api/v1/boxes/{user}", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn box_status(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_status(&actor, &user)?))
}

/// A user's effective network policy: subnet, address, counters, the rules in words and
/// in nft syntax (`orchestratorctl net show`).
#[utoipa::path(get, path = "/api/v1/users/{user}/network", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = crate::service::net::NetPolicyView),
              (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "box networking is disabled")),
    security(("bearer" = [])))]
pub async fn network_policy(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<crate::service::net::NetPolicyView>> {
    Ok(axum::Json(s.app.net_policy(&actor, &user)?))
}

/// Starts the box (absent, stopped or error -> running).
#[utoipa::path(post, path = "/api/v1/boxes/{user}/start", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "box_running or box_busy"),
              (status = 500, body = ErrorBody, description = "box_failed: the failing step")),
    security(("bearer" = [])))]
pub async fn start_box(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_start(&actor, &user).await?))
}

/// Stops the box: SIGTERM, then SIGKILL after the grace period.
#[utoipa::path(post, path = "/api/v1/boxes/{user}/stop", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "box_not_running or box_busy")),
    security(("bearer" = [])))]
pub async fn stop_box(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_stop(&actor, &user).await?))
}

/// Stops the box if it runs, then starts it.
#[utoipa::path(post, path = "/api/v1/boxes/{user}/restart", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn restart_box(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_restart(&actor, &user).await?))
}

/// Wipes the box's persistent root changes (a running box restarts on a clean root).
#[utoipa::path(post, path = "/api/v1/boxes/{user}/reset", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reset_box(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_reset(&actor, &user).await?))
}

/// Stops the box and deletes its files (never the home): state `absent`.
#[utoipa::path(delete, path = "/api/v1/boxes/{user}", tag = "boxes",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = BoxView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_box(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<BoxView>> {
    Ok(axum::Json(s.app.box_remove(&actor, &user).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Lines from the end (default 100).
    pub lines: Option<usize>,
}

/// The box log: lifecycle events and the init's output (text, newest last).
#[utoipa::path(get, path = "/api/v1/boxes/{user}/logs", tag = "boxes",
    params(("user" = String, Path, description = "login or email"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn box_logs(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let text = s.app.box_logs(&actor, &user, q.lines.unwrap_or(100))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Runs a command in the running box as its user and waits for it: exit code and output
/// (each stream capped at 1 MiB).
#[utoipa::path(post, path = "/api/v1/boxes/{user}/exec", tag = "boxes", request_body = ExecBody,
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = ExecOutput), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "box_not_running"),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn exec(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(body): Json<ExecBody>,
) -> ApiResult<axum::Json<ExecOutput>> {
    Ok(axum::Json(s.app.box_exec(&actor, &user, &body).await?))
}

/// A body fed from a channel (exec output, file downloads).
pub(super) struct ChannelBody(pub(super) mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn ndjson(v: serde_json::Value) -> Bytes {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// Runs a command and streams its output as NDJSON lines while it runs:
/// `{"stdout": base64}`, `{"stderr": base64}`, finally `{"exitCode": N, "timedOut": b}`.
/// A client that goes away kills the command.
#[utoipa::path(post, path = "/api/v1/boxes/{user}/exec/stream", tag = "boxes",
    request_body = ExecBody,
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, content_type = "application/x-ndjson", body = String),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn exec_stream(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(body): Json<ExecBody>,
) -> ApiResult<Response> {
    let prepared = s.app.box_exec_prepare(&actor, &user, &body)?;
    let mut cmd = tokio::process::Command::from(prepared.command);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("spawn exec helper")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut stdin = child.stdin.take();
    let input = prepared.stdin;
    let timeout = prepared.timeout;
    tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input).await;
        }
    });
    let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                name: &'static str,
                tx: mpsc::Sender<Bytes>| async move {
        let Some(mut r) = r else { return };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                    if tx
                        .send(ndjson(serde_json::json!({ name: data })))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let out = tokio::spawn(pump(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        "stdout",
        tx.clone(),
    ));
    let err = tokio::spawn(pump(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        "stderr",
        tx.clone(),
    ));
    tokio::spawn(async move {
        let closed = tx.clone();
        let (code, timed_out) = tokio::select! {
            r = tokio::time::timeout(timeout, child.wait()) => match r {
                Ok(Ok(st)) => (st.code().unwrap_or(125), false),
                Ok(Err(_)) => (125, false),
                Err(_) => { let _ = child.kill().await; (124, true) }
            },
            // The client went away: the command goes too.
            _ = closed.closed() => { let _ = child.kill().await; return; }
        };
        let _ = out.await;
        let _ = err.await;
        let _ = tx
            .send(ndjson(
                serde_json::json!({ "exitCode": code, "timedOut": timed_out }),
            ))
            .await;
    });
    let mut resp = Response::new(Body::new(ChannelBody(rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResults {
    pub results: Vec<BulkResult>,
}

/// Admins: start, stop or restart every box a filter selects (e.g. stop all demo boxes).
#[utoipa::path(post, path = "/api/v1/boxes/bulk", tag = "boxes", request_body = BulkRequest,
    responses((status = 200, body = BulkResults), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bulk(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Json(req): Json<BulkRequest>,
) -> ApiResult<Response> {
    let results = s.app.box_bulk(&actor, &req).await?;
    Ok((StatusCode::OK, axum::Json(BulkResults { results })).into_response())
}
