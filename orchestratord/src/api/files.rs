//! File routes over a user's home: list, stat, download (Range, conditional requests),
//! streamed upload, mkdir, move, copy, delete, chmod. Handlers parse and authenticate and
//! call `service`, which authorises by profile and role, runs the operation with the
//! user's ids inside the home and audits writes.

use std::os::unix::fs::FileExt;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use super::auth::Authed;
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::runtime::files::{Chunk, Entry};
use crate::service::files::{
    decode_cursor, ChmodRequest, CopyRequest, FileEntry, FileList, Listing, MkdirRequest,
    MoveRequest, UploadOptions,
};

type ApiResult<T> = Result<T, ApiError>;

/// How much of a refused upload's body is still read (and dropped) so the client sees
/// the error answer; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Size of the chunks a download is read and sent in.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Directory, relative to the home (`/` or empty: the home).
    #[serde(default)]
    pub path: String,
    /// `name` (default), `size` or `mtime`.
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Include names starting with `.`. Default false.
    #[serde(default)]
    pub hidden: bool,
    /// Entries per page, 1 to 10000. Default 1000.
    pub limit: Option<usize>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// Path relative to the home.
    pub path: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Path of the file to write, relative to the home.
    pub path: String,
    /// Replace an existing file. Default false: an existing name is a 409.
    #[serde(default)]
    pub overwrite: bool,
    /// Octal permission bits of the new file. Default `644`; setuid/setgid are stripped.
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    pub path: String,
    /// Delete a non-empty directory with its contents. Default false.
    #[serde(default)]
    pub recursive: bool,
}

/// List a directory of the user's home, a page at a time.
#[utoipa::path(get, path = "/api/v1/users/{user}/files", tag = "files", params(("user" = String, Path), ListQuery),
    responses((status = 200, body = FileList), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let invalid = |m: String| ApiError::Invalid {
        kind: "invalid_query",
        message: m,
    };
    let sort = match q.sort.as_deref() {
        None => policy::files::SortBy::Name,
        Some(s) => s.parse().map_err(invalid)?,
    };
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(invalid(format!("unknown order {o:?} (asc or desc)"))),
    };
    let limit = q.limit.unwrap_or(policy::files::DEFAULT_PAGE);
    if limit == 0 || limit > policy::files::MAX_PAGE {
        return Err(invalid(format!(
            "limit must be 1 to {}",
            policy::files::MAX_PAGE
        )));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let spec = policy::files::ListSpec {
        sort,
        descending,
        hidden: q.hidden,
        limit,
        after,
    };
    let list = s.app.files_list(&actor, &user, &q.path, spec).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        list_body(list),
    )
        .into_response())
}

/// A listing as JSON (the same document `FileList` serialises to), written in chunks of
/// about 64 KiB as the socket takes them: a 10k-entry page (~1.5 MB) never sits whole
/// in one buffer, and the few small buffers stay warm in the allocator and the caches.
pub(super) fn list_body(list: Listing) -> Body {
    const CHUNK: usize = 64 * 1024;
    let Listing {
        path,
        entries,
        next_cursor,
    } = list;
    let mut entries = entries.into_iter();
    let mut head = Some(path);
    let mut tail = Some(next_cursor);
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        let mut tail_cursor = tail.take()?;
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        let write = || -> serde_json::Result<()> {
            if let Some(path) = head.take() {
                buf.extend_from_slice(b"{\"path\":");
                serde_json::to_writer(&mut buf, &path)?;
                buf.extend_from_slice(b",\"entries\":[");
            }
            while buf.len() < CHUNK {
                let Some(e) = entries.next() else {
                    buf.push(b']');
                    if let Some(c) = tail_cursor.take() {
                        buf.extend_from_slice(b",\"nextCursor\":");
                        serde_json::to_writer(&mut buf, &c)?;
                    }
                    buf.push(b'}');
                    return Ok(());
                };
                if !std::mem::take(&mut first) {
                    buf.push(b',');
                }
                serde_json::to_writer(&mut buf, &FileEntry::from(e))?;
            }
            // More entries follow: the cursor waits for the last chunk.
            tail = Some(tail_cursor);
            Ok(())
        };
        let written = write();
        Some(
            written
                .map(|()| Bytes::from(buf))
                .map_err(std::io::Error::other),
        )
    });
    Body::from_stream(futures_util::stream::iter(chunks))
}

/// Describe one entry (a symlink itself, not its target).
#[utoipa::path(get, path = "/api/v1/users/{user}/files/entry", tag = "files", params(("user" = String, Path), PathQuery),
    responses((status = 200, body = FileEntry), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stat(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<axum::Json<FileEntry>> {
    Ok(axum::Json(s.app.files_stat(&actor, &user, &q.path).await?))
}

/// Delete a file, symlink or directory (`recursive` for a non-empty one).
#[utoipa::path(delete, path = "/api/v1/users/{user}/files/entry", tag = "files", params(("user" = String, Path), DeleteQuery),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    s.app
        .files_delete(&actor, &user, &q.path, q.recursive)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change permission bits (setuid and setgid are stripped).
#[utoipa::path(patch, path = "/api/v1/users/{user}/files/entry", tag = "files", params(("user" = String, Path), PathQuery),
    request_body = ChmodRequest,
    responses((status = 200, body = FileEntry), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn chmod(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<PathQuery>,
    Json(req): Json<ChmodRequest>,
) -> ApiResult<axum::Json<FileEntry>> {
    Ok(axum::Json(
        s.app.files_chmod(&actor, &user, &q.path, &req).await?,
    ))
}

/// Create a directory (`parents`: like `mkdir -p`).
#[utoipa::path(post, path = "/api/v1/users/{user}/files/mkdir", tag = "files", params(("user" = String, Path)),
    request_body = MkdirRequest,
    responses((status = 201, body = FileEntry), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn mkdir(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(req): Json<MkdirRequest>,
) -> ApiResult<Response> {
    let e = s.app.files_mkdir(&actor, &user, &req).await?;
    Ok((StatusCode::CREATED, axum::Json(e)).into_response())
}

/// Rename or move inside the home.
#[utoipa::path(post, path = "/api/v1/users/{user}/files/move", tag = "files", params(("user" = String, Path)),
    request_body = MoveRequest,
    responses((status = 200, body = FileEntry), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rename(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(req): Json<MoveRequest>,
) -> ApiResult<axum::Json<FileEntry>> {
    Ok(axum::Json(s.app.files_move(&actor, &user, &req).await?))
}

/// Copy a regular file inside the home, or with `recursive` a directory tree.
#[utoipa::path(post, path = "/api/v1/users/{user}/files/copy", tag = "files", params(("user" = String, Path)),
    request_body = CopyRequest,
    responses((status = 201, body = FileEntry), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 507, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn copy(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(req): Json<CopyRequest>,
) -> ApiResult<Response> {
    let e = s.app.files_copy(&actor, &user, &req).await?;
    Ok((StatusCode::CREATED, axum::Json(e)).into_response())
}

/// Upload: the body is streamed into an anonymous file and linked into place when it
/// is complete; too large (413), disk or quota full (507), an aborted body: nothing stays.
#[utoipa::path(put, path = "/api/v1/users/{user}/files/content", tag = "files", params(("user" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FileEntry), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 507, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mode = match &q.mode {
        None => 0o644,
        Some(m) => policy::files::parse_mode(m).map_err(|e| ApiError::Invalid {
            kind: "invalid_mode",
            message: e.to_string(),
        })?,
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let opts = UploadOptions {
        overwrite: q.overwrite,
        mode,
        length,
    };
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let pump = async move {
        let mut body = body;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() && tx.send(Chunk::Data(data)).await.is_err() {
                            // The writer stopped: its error is the answer. Read (and drop)
                            // a bounded rest of the body first, so a client still sending
                            // gets to read that answer instead of a reset connection.
                            drop(tx);
                            let mut drained = 0usize;
                            while drained < DRAIN_LIMIT {
                                match body.frame().await {
                                    Some(Ok(f)) => {
                                        drained += f.data_ref().map_or(0, |d| d.len());
                                    }
                                    _ => return,
                                }
                            }
                            return;
                        }
                    }
                }
                // A broken body: dropping the sender without `End` aborts the upload.
                Some(Err(_)) => return,
                None => {
                    let _ = tx.send(Chunk::End).await;
                    return;
                }
            }
        }
    };
    let (result, ()) = tokio::join!(s.app.files_upload(&actor, &user, &q.path, opts, rx), pump);
    Ok((StatusCode::CREATED, axum::Json(result?)).into_response())
}

fn etag(e: &Entry) -> String {
    format!("\"{:x}-{:x}-{:x}\"", e.ino, e.size, e.mtime_ns)
}

fn http_date(e: &Entry) -> String {
    let t = UNIX_EPOCH + Duration::from_secs((e.mtime_ns / 1_000_000_000).max(0) as u64);
    httpdate::fmt_http_date(t)
}

/// `If-None-Match` (or, without it, `If-Modified-Since`) says the client's copy is
/// current.
fn not_modified(headers: &HeaderMap, tag: &str, e: &Entry) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag);
    }
    if let Some(ims) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let secs = ims
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i128)
            .unwrap_or(0);
        return e.mtime_ns / 1_000_000_000 <= secs;
    }
    false
}

/// A single `bytes=` range (first-last inclusive), `None` for the whole file. Several
/// ranges, or a syntax this does not know, are ignored (the whole file is sent, as RFC
/// 9110 allows); a range starting past the end is unsatisfiable.
pub(crate) fn parse_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(ApiError::RangeNotSatisfiable);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(ApiError::RangeNotSatisfiable);
        }
        (start, end)
    };
    Ok(Some(range))
}

/// Download a regular file (a final symlink is followed inside the home). Supports
/// `Range` (one range), `If-Range`, `If-None-Match` and `If-Modified-Since`.
#[utoipa::path(get, path = "/api/v1/users/{user}/files/content", tag = "files", params(("user" = String, Path), PathQuery),
    responses((status = 200, description = "the file"), (status = 206, description = "the requested range"),
              (status = 304, description = "not modified"), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 416, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let d = s.app.files_open(&actor, &user, &q.path).await?;
    let e = d.entry;
    let tag = etag(&e);
    let modified = http_date(&e);
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::LAST_MODIFIED, &modified)
        .header(header::ACCEPT_RANGES, "bytes");
    if not_modified(&headers, &tag, &e) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(|err| ApiError::Internal(err.into()));
    }
    let if_range_ok = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v == tag || v == modified,
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => match parse_range(r, e.size) {
            Err(err) => {
                let mut resp = err.into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", e.size))
                        .map_err(|err| ApiError::Internal(err.into()))?,
                );
                return Ok(resp);
            }
            Ok(r) => r,
        },
        _ => None,
    };
    let (start, len) = match range {
        Some((a, b)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{}", e.size));
            (a, b - a + 1)
        }
        None => (0, e.size),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let file = d.file;
    let slot = d.slot;
    // Reads need no user ids: the descriptor was opened with them.
    tokio::task::spawn_blocking(move || {
        let _slot = slot; // the transfer ends with this thread
        let mut off = start;
        let end = start + len;
        while off < end {
            let want = READ_CHUNK.min((end - off) as usize);
            let mut buf = vec![0u8; want];
            match file.read_at(&mut buf, off) {
                Ok(0) | Err(_) => return, // truncated meanwhile: the body ends short
                Ok(n) => {
                    buf.truncate(n);
                    off += n as u64;
                    if tx.blocking_send(Bytes::from(buf)).is_err() {
                        return; // client gone
                    }
                }
            }
        }
    });
    builder
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::new(super::boxes::ChannelBody(rx)))
        .map_err(|err| ApiError::Internal(err.into()))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_like_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-1000", 100).unwrap(), Some((0, 99)));
        assert_eq!(parse_range("bytes=50-1000", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert_eq!(parse_range("bytes=9-1", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=-0", 100).is_err());
        assert!(parse_range("bytes=0-", 0).is_err());
    }
}

// ---- directory watch (WebSocket) ---------------------------------------------------------

/// How long changes are gathered after the first one before a batch is sent: a burst
/// (an unpacked archive, a log written line by line) becomes one message.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);
/// How often an open watch re-checks that its token and user are still valid.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Heartbeat: tunnels drop idle sockets.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Directory to watch, relative to the home (default: the home).
    #[serde(default)]
    pub path: String,
    /// A ticket from `POST .../files/watch/tickets` (browsers); otherwise a bearer token.
    pub ticket: Option<String>,
}

/// A single-use ticket (30 s) for a browser to open the directory watch of `user`'s home.
#[utoipa::path(post, path = "/api/v1/users/{user}/files/watch/tickets", tag = "files",
    params(("user" = String, Path)),
    responses((status = 200, body = crate::service::terminal::TicketView),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn watch_ticket(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<crate::service::terminal::TicketView>> {
    Ok(axum::Json(s.app.files_watch_ticket(&actor, &user)?))
}

/// Watch a directory of the home: a WebSocket whose text messages are
/// `{"path", "events": [{"type": "created"|"removed"|"modified", "name"} |
/// {"type": "renamed", "from", "to"} | {"type": "overflow"} | {"type": "gone"}]}`.
#[utoipa::path(get, path = "/api/v1/users/{user}/files/watch", tag = "files",
    params(("user" = String, Path), WatchQuery),
    responses((status = 101, description = "WebSocket of change batches"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("ticket" = [])))]
pub async fn watch(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    match watch_upgrade(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn watch_upgrade(s: AppState, req: axum::extract::Request) -> ApiResult<Response> {
    use axum::extract::FromRequestParts;
    let (mut parts, _body) = req.into_parts();
    let Path(user) = Path::<String>::from_request_parts(&mut parts, &s).await?;
    let Query(q) = Query::<WatchQuery>::from_request_parts(&mut parts, &s).await?;
    if !super::auth::origin_allowed(&parts.headers, &s.app.config.http.allowed_origins) {
        return Err(ApiError::Forbidden(
            "this origin may not open WebSockets".into(),
        ));
    }
    let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &s)
        .await
        .map_err(|_| ApiError::BadRequest {
            kind: "websocket_required",
            message: "this route is a WebSocket".into(),
        })?;
    let actor = match &q.ticket {
        Some(secret) => {
            let peer = super::auth::peer_name(&parts, &s.app.config.http.trusted_proxies);
            s.app
                .redeem_ticket_for(
                    secret,
                    &peer,
                    crate::service::terminal::TicketPurpose::FilesWatch,
                    &user,
                    None,
                )?
                .actor
        }
        None => Authed::from_request_parts(&mut parts, &s).await?.0,
    };
    let w = s.app.files_watch(&actor, &user, &q.path).await?;
    let app = s.app.clone();
    Ok(ws
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| run_watch(socket, w, app, actor)))
}

fn change_json(c: &policy::files::Change) -> serde_json::Value {
    use policy::files::Change;
    match c {
        Change::Created(n) => serde_json::json!({"type": "created", "name": n}),
        Change::Removed(n) => serde_json::json!({"type": "removed", "name": n}),
        Change::Modified(n) => serde_json::json!({"type": "modified", "name": n}),
        Change::Renamed { from, to } => {
            serde_json::json!({"type": "renamed", "from": from, "to": to})
        }
    }
}

async fn run_watch(
    mut socket: axum::extract::ws::WebSocket,
    w: crate::service::files::DirWatch,
    app: std::sync::Arc<crate::service::App>,
    actor: crate::service::Actor,
) {
    use axum::extract::ws::Message;
    let crate::service::files::DirWatch {
        inotify,
        path,
        user_id,
        _slot: slot,
    } = w;
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    let _slot = slot; // held until the socket ends
    let Ok(watch) = crate::runtime::files::AsyncWatch::new(inotify) else {
        return;
    };
    let mut batch = policy::files::Coalescer::default();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut gone = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let flush = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = watch.next() => {
                match read {
                    Ok(we) => {
                        for c in we.changes {
                            batch.push(c);
                        }
                        if we.overflow {
                            batch.mark_overflow();
                        }
                        gone |= we.gone;
                        if flush_at.is_none() && (!batch.is_empty() || gone) {
                            flush_at = Some(tokio::time::Instant::now() + COALESCE);
                        }
                    }
                    Err(_) => return,
                }
            }
            _ = flush => {
                flush_at = None;
                let mut events: Vec<serde_json::Value> = match batch.take() {
                    Ok(changes) => changes.iter().map(change_json).collect(),
                    Err(()) => vec![serde_json::json!({"type": "overflow"})],
                };
                if gone {
                    events.push(serde_json::json!({"type": "gone"}));
                }
                let msg = serde_json::json!({"path": path, "events": events}).to_string();
                if socket.send(Message::Text(msg.into())).await.is_err() || gone {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {} // pongs and anything else: the client is alive
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            _ = recheck.tick() => {
                let (app, actor) = (app.clone(), actor.clone());
                let allowed = tokio::task::spawn_blocking(move || {
                    app.watch_still_allowed(&actor, user_id)
                })
                .await
                .unwrap_or(false);
                if !allowed {
                    // 1008: policy violation (the token or the user is gone).
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: 1008,
                            reason: "access revoked".into(),
                        })))
                        .await;
                    return;
                }
            }
        }
    }
}
