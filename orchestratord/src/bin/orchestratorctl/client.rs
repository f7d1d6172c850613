//! The HTTP/1.1 transport: one connection per command, over the daemon's Unix socket or a
//! plain `http://` URL, plus the pieces of the API contract the transport owns (path and
//! query encoding, the error body).

use std::fmt;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

use crate::output::sanitize;

/// A failure that decides the exit code; anything else exits 1.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// A bad argument noticed by us rather than by clap (exit 2, like clap's).
    Usage(String),
    /// The daemon could not be reached, or the connection broke before a full answer.
    Unreachable(String),
    /// An error answer from the API: `{"error": {"kind", "message"}}` and its status.
    Api {
        status: u16,
        kind: String,
        message: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) | Self::Unreachable(why) => f.write_str(why),
            Self::Api { kind, message, .. } => {
                write!(f, "{} ({})", sanitize(message), sanitize(kind))
            }
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// The exit codes documented in `cli::EXIT_CODES`.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Api { status: 404, .. } => 4,
            Self::Api {
                status: 401 | 403, ..
            } => 5,
            Self::Api { .. } => 1,
        }
    }

    /// Reads an error answer; anything else (a proxy's HTML page, an empty body) still
    /// yields an error that names the status, so odd answers never go unreported.
    pub fn from_response(status: StatusCode, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            let value = parsed.as_ref()?.get("error")?.get(name)?;
            value.as_str().map(str::to_owned)
        };
        let (kind, message) = match (field("kind"), field("message")) {
            (Some(kind), Some(message)) => (kind, message),
            _ => (
                format!("http_{}", status.as_u16()),
                format!("the daemon answered {status} without an API error body"),
            ),
        };
        Self::Api {
            status: status.as_u16(),
            kind,
            message,
        }
    }
}

/// Shorthand for a usage failure as an `anyhow::Error`.
pub fn usage(why: impl Into<String>) -> anyhow::Error {
    Failure::Usage(why.into()).into()
}

/// A bearer token. Its `Debug` is redacted so that no error or log line can show it.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl From<&str> for Secret {
    fn from(token: &str) -> Self {
        Self(token.trim().to_owned())
    }
}

impl Secret {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `authority` is the `Host` header value; `base` a path prefix without trailing `/`.
    Tcp {
        host: String,
        port: u16,
        authority: String,
        base: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "socket {}", path.display()),
            Self::Tcp {
                authority, base, ..
            } => write!(f, "http://{authority}{base}"),
        }
    }
}

impl Target {
    /// Parses `--url`: only `http://host[:port][/prefix]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|e| usage(format!("invalid --url {url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(usage(
                    "https URLs are not supported: orchestratorctl speaks plain HTTP; use the \
                     daemon's local URL (http://127.0.0.1:9000, over an SSH tunnel if remote) \
                     or the Unix socket",
                ))
            }
            _ => return Err(usage(format!("--url must start with http://, got {url:?}"))),
        }
        let authority = uri.authority().ok_or_else(|| usage("--url has no host"))?;
        if authority.as_str().contains('@') {
            return Err(usage("--url must not carry credentials; use --token-file"));
        }
        if uri.query().is_some() {
            return Err(usage("--url must not have a query string"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Self::Tcp {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// One API request: `path` already holds the encoded path and query.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Percent-encodes everything outside RFC 3986's unreserved set, byte by byte of UTF-8.
pub fn encode(text: &str) -> String {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    text.bytes()
        .map(|b| {
            if unreserved(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/api/v1/` followed by the encoded segments. Empty, `.` and `..` segments are refused:
/// they would address a different route, or be rewritten by a proxy.
pub fn api_path(segments: &[&str]) -> Result<String> {
    let mut path = String::from("/api/v1");
    for segment in segments {
        if ["", ".", ".."].contains(segment) {
            return Err(usage(format!(
                "invalid name {segment:?}: it cannot address anything"
            )));
        }
        path = format!("{path}/{}", encode(segment));
    }
    Ok(path)
}

/// `?k=v&...` from the pairs that have a value; empty when none has.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| Some(format!("{}={}", encode(k), encode(v.as_ref()?))))
        .collect();
    if present.is_empty() {
        String::new()
    } else {
        format!("?{}", present.join("&"))
    }
}

/// A request body: JSON in one piece, or a file streamed as it is read.
pub type SendBody = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
pub struct Client {
    pub target: Target,
    pub token: Option<Secret>,
    pub timeout: Duration,
}

impl Client {
    /// Sends one request over a new connection and reads the whole answer, within the
    /// timeout.
    pub async fn send(&self, call: &Call) -> Result<Response> {
        let exchange = async {
            let mut answer = self.exchange(call, "application/json").await?;
            let body = answer.rest().await?;
            Ok(Response {
                status: answer.status,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(self.no_answer()))
    }

    /// Sends one request over a new connection and waits, within the timeout, only for the
    /// head of the answer: its body is the caller's to read as it arrives, for as long as
    /// it takes (`exec` output).
    pub async fn open(&self, call: &Call, accept: &'static str) -> Result<Answer> {
        tokio::time::timeout(self.timeout, self.exchange(call, accept))
            .await
            .unwrap_or_else(|_| Err(self.no_answer()))
    }

    fn no_answer(&self) -> anyhow::Error {
        let limit = humantime::format_duration(self.timeout);
        Failure::Unreachable(format!("no answer from {} within {limit}", self.target)).into()
    }

    /// Sends `call` with a streamed body (`application/octet-stream`, a file upload) and
    /// waits for the head of the answer. The timeout counts only the time spent waiting
    /// on the daemon (connecting, taking the body, answering once it is sent), never the
    /// time spent waiting on the body's own source: a slow pipe may take hours.
    pub async fn open_stream(&self, call: &Call, body: SendBody) -> Result<Answer> {
        let waiting = Arc::new(Mutex::new(Waiting {
            since: Instant::now(),
            on_source: false,
        }));
        let body = Watched {
            inner: body,
            waiting: waiting.clone(),
        };
        let request = self
            .head(call, "application/json")?
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(BodyExt::boxed(body))
            .with_context(|| format!("building a request for {}", call.path))?;
        let exchange = self.exchange_request(request);
        tokio::pin!(exchange);
        loop {
            let deadline = {
                let w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                (!w.on_source).then(|| w.since + self.timeout)
            };
            let check = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
            tokio::select! {
                answer = &mut exchange => return answer,
                _ = tokio::time::sleep_until(check.into()) => {
                    let w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                    if !w.on_source && w.since.elapsed() >= self.timeout {
                        return Err(self.no_answer());
                    }
                }
            }
        }
    }

    /// Connects, sends the request and reads the head of the answer.
    async fn exchange(&self, call: &Call, accept: &'static str) -> Result<Answer> {
        let request = self.request(call, accept)?;
        self.exchange_request(request).await
    }

    async fn exchange_request(&self, request: Request<SendBody>) -> Result<Answer> {
        let unreachable = |why: String| Failure::Unreachable(why).into();
        match &self.target {
            Target::Unix(path) => match UnixStream::connect(path).await {
                Ok(stream) => self.roundtrip(stream, request).await,
                Err(err) => Err(unreachable(format!(
                    "cannot connect to {}: {} (is orchestratord running?)",
                    self.target,
                    match err.kind() {
                        ErrorKind::NotFound => "no such socket".to_owned(),
                        ErrorKind::PermissionDenied => "permission denied on the socket, \
                            which is root-only: run as root or use --url with a token"
                            .to_owned(),
                        _ => err.to_string(),
                    }
                ))),
            },
            Target::Tcp { host, port, .. } => {
                match TcpStream::connect((host.as_str(), *port)).await {
                    Ok(stream) => self.roundtrip(stream, request).await,
                    Err(err) => Err(unreachable(format!(
                        "cannot connect to {}: {err} (is orchestratord running?)",
                        self.target
                    ))),
                }
            }
        }
    }

    fn request(&self, call: &Call, accept: &'static str) -> Result<Request<SendBody>> {
        let mut builder = self.head(call, accept)?;
        let body = match &call.body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(json).context("encoding the request body")?)
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(body).map_err(|never| match never {}).boxed())
            .with_context(|| format!("building a request for {}", call.path))
    }

    /// The request line and the headers every request carries.
    fn head(&self, call: &Call, accept: &'static str) -> Result<hyper::http::request::Builder> {
        let (host, base) = match &self.target {
            Target::Unix(_) => ("localhost", ""),
            Target::Tcp {
                authority, base, ..
            } => (authority.as_str(), base.as_str()),
        };
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("{base}{}", call.path))
            .header(HOST, host)
            .header(ACCEPT, accept)
            .header(
                USER_AGENT,
                concat!("orchestratorctl/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(Secret(token)) = &self.token {
            // The error deliberately does not carry the header value.
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| usage("the token holds characters that cannot go in a header"))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        Ok(builder)
    }

    async fn roundtrip<S>(&self, io: S, request: Request<SendBody>) -> Result<Answer>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let broken = |err| broken(&self.target, err);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(broken)?;
        // The connection future does the I/O while `sender` waits for the answer and the
        // caller reads its body; dropping the `Answer` stops it.
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(broken)?;
        Ok(Answer {
            status: response.status(),
            body: response.into_body(),
            driver,
            target: self.target.clone(),
        })
    }
}

/// Since when a streamed upload has been waiting on the daemon, unless it is waiting on
/// its own source.
#[derive(Debug)]
struct Waiting {
    since: Instant,
    on_source: bool,
}

/// A request body that keeps [`Waiting`] up to date: each time the connection asks for
/// more, either the source has it (the daemon took the last piece: waiting on it starts
/// again) or the source has nothing yet (waiting on the source, not the daemon).
struct Watched {
    inner: SendBody,
    waiting: Arc<Mutex<Waiting>>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.on_source = polled.is_pending();
        if polled.is_ready() {
            w.since = Instant::now();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection broke (or the daemon spoke something other than HTTP).
fn broken(target: &Target, err: hyper::Error) -> anyhow::Error {
    let why = format!("{:#}", anyhow::Error::new(err));
    Failure::Unreachable(format!("the connection to {target} failed: {why}")).into()
}

/// An answer whose head has arrived and whose body is read piece by piece.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    body: Incoming,
    driver: JoinHandle<hyper::Result<()>>,
    target: Target,
}

impl Answer {
    /// The next piece of the body, as soon as it arrives; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|err| broken(&self.target, err))?;
            // Trailers carry nothing we use.
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// The rest of the body.
    pub async fn rest(&mut self) -> Result<Bytes> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A one-shot HTTP server on a Unix socket, for tests of the real transport.
#[cfg(test)]
pub mod fake_server {
    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;
    use tokio::task::JoinHandle;

    /// A canned answer with a JSON body (none when `body` is empty).
    pub fn answer(status: &str, body: &str) -> String {
        let length = body.len();
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n{body}")
    }

    /// Listens on `dir/api.sock`, reads one request (head, then a `content-length` body),
    /// writes `answer`, and yields the raw request.
    pub fn serve_once(dir: &Path, answer: String) -> (PathBuf, JoinHandle<String>) {
        let path = dir.join("api.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake daemon socket");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = String::new();
            let mut chunk = [0_u8; 4096];
            let complete = |r: &str| {
                let (head, body) = r.split_once("\r\n\r\n")?;
                let length = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")?
                        .trim()
                        .parse()
                        .ok()
                });
                (body.len() >= length.unwrap_or(0)).then_some(())
            };
            while complete(&request).is_none() {
                let n = stream.read(&mut chunk).await.expect("read the request");
                assert!(n > 0, "the client closed before a full request: {request}");
                request.push_str(std::str::from_utf8(&chunk[..n]).expect("UTF-8 request"));
            }
            stream.write_all(answer.as_bytes()).await.expect("answer");
            stream.shutdown().await.expect("shutdown");
            request
        });
        (path, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(target: Target, token: Option<&str>) -> Client {
        let token = token.map(Secret::from);
        Client {
            target,
            token,
            timeout: Duration::from_secs(5),
        }
    }

    fn is_usage(err: &anyhow::Error) -> bool {
        matches!(err.downcast_ref::<Failure>(), Some(Failure::Usage(_)))
    }

    #[test]
    fn path_segments_percent_encode_everything_but_unreserved() {
        assert_eq!(
            api_path(&["users", "alice@example.com", "state", "a b/c?"]).unwrap(),
            "/api/v1/users/alice%40example.com/state/a%20b%2Fc%3F"
        );
        assert_eq!(encode("Ünï-._~"), "%C3%9Cn%C3%AF-._~");
    }

    #[test]
    fn empty_and_dot_segments_are_refused_as_usage_errors() {
        for bad in ["", ".", ".."] {
            assert!(is_usage(&api_path(&["users", bad]).unwrap_err()), "{bad:?}");
        }
    }

    #[test]
    fn query_skips_absent_values_and_encodes_present_ones() {
        let q = query(&[
            ("user", Some("bob+x@example.com".into())),
            ("role", None),
            ("since", Some("2026-11-22T14:00:00Z".into())),
        ]);
        assert_eq!(
            q,
            "?user=bob%2Bx%40example.com&since=2026-11-22T14%3A00%3A00Z"
        );
        assert_eq!(query(&[("role", None)]), "");
    }

    #[test]
    fn http_url_gives_host_port_and_base_path() {
        let (host, port, authority, base) = ("::1".into(), 9000, "[::1]:9000".into(), "/o".into());
        assert_eq!(
            Target::from_url("http://[::1]:9000/o/").unwrap(),
            Target::Tcp {
                host,
                port,
                authority,
                base
            }
        );
        assert!(matches!(
            Target::from_url("http://box.lan"),
            Ok(Target::Tcp { port: 80, .. })
        ));
    }

    #[test]
    fn https_and_credential_urls_are_refused_with_a_reason() {
        let https = Target::from_url("https://orch.example.com").unwrap_err();
        assert!(https.to_string().contains("https URLs are not supported"));
        assert!(is_usage(&https));
        let creds = Target::from_url("http://root:pw@127.0.0.1:9000").unwrap_err();
        assert!(is_usage(&creds) && !creds.to_string().contains("pw"));
    }

    #[test]
    fn api_error_body_is_parsed_into_kind_and_message() {
        let body = br#"{"error": {"kind": "login_taken", "message": "login alice is taken"}}"#;
        let err = Failure::from_response(StatusCode::CONFLICT, body);
        assert_eq!(err.to_string(), "login alice is taken (login_taken)");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn non_api_error_body_still_names_the_status() {
        let err = Failure::from_response(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            err.to_string(),
            "the daemon answered 502 Bad Gateway without an API error body (http_502)"
        );
    }

    #[test]
    fn control_characters_in_error_messages_are_neutralised() {
        let body = br#"{"error": {"kind": "x", "message": "a\nerror: forged\u001b[0m"}}"#;
        let err = Failure::from_response(StatusCode::BAD_REQUEST, body);
        assert_eq!(err.to_string(), "a?error: forged?[0m (x)");
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let api = |status| Failure::Api {
            status,
            kind: "k".into(),
            message: "m".into(),
        };
        for (status, code) in [
            (401, 5),
            (403, 5),
            (404, 4),
            (400, 1),
            (409, 1),
            (422, 1),
            (500, 1),
        ] {
            assert_eq!(api(status).exit_code(), code, "status {status}");
        }
        assert_eq!(Failure::Usage("bad".into()).exit_code(), 2);
        assert_eq!(Failure::Unreachable("down".into()).exit_code(), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn token_is_never_printed_in_errors_or_debug_output() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let c = client(
            Target::from_url(&url).unwrap(),
            Some("orch_0123456789ab_supersecret"),
        );
        let call = Call {
            method: Method::GET,
            path: "/api/v1/users".into(),
            body: None,
        };
        let err = c.send(&call).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(3)
        );
        for text in [format!("{err:#}"), format!("{err:?}"), format!("{c:?}")] {
            assert!(!text.contains("supersecret"), "{text}");
        }
        let bad = client(Target::Unix("/x".into()), Some("orch_\u{7f}supersecret"));
        let err = bad.request(&call, "application/json").unwrap_err();
        assert!(is_usage(&err) && !format!("{err:#} {err:?}").contains("supersecret"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_socket_is_reported_as_unreachable_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let call = Call {
            method: Method::GET,
            path: "/healthz".into(),
            body: None,
        };
        let err = client(Target::Unix(path.clone()), None)
            .send(&call)
            .await
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(3)
        );
        let text = format!("{err:#}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains("no such socket (is orchestratord running?)"),
            "{text}"
        );
    }

    /// A body fed through a channel, as `files put` feeds it.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, std::io::Error>>,
        SendBody,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = http_body_util::StreamBody::new(frames);
        (tx, BodyExt::boxed(body))
    }

    fn upload_call() -> Call {
        Call {
            method: Method::PUT,
            path: "/api/v1/users/alice/files/content?path=x".into(),
            body: None,
        }
    }

    /// Regression: the timeout capped the whole upload, so `slow | files put -` failed
    /// once the pipe had taken longer than `--timeout` to produce its data.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_source_does_not_count_against_the_timeout_of_a_streamed_upload() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Answers once the whole chunked body is in.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0_u8; 4096];
            while !request.ends_with(b"\r\n0\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before the end of the body");
                request.extend_from_slice(&chunk[..n]);
            }
            let reply = fake_server::answer("201 Created", r#"{"size": 2}"#);
            stream.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let mut c = client(Target::Unix(path), None);
        c.timeout = Duration::from_millis(200);
        let (tx, body) = channel_body();
        let source = tokio::spawn(async move {
            for piece in ["a", "b"] {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let frame = http_body::Frame::data(Bytes::from_static(piece.as_bytes()));
                tx.send(Ok(frame)).await.unwrap();
            }
        });
        let mut answer = c.open_stream(&upload_call(), body).await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(&answer.rest().await.unwrap()[..], br#"{"size": 2}"#);
        source.await.unwrap();
        let request = server.await.unwrap();
        assert!(request.contains("\r\n1\r\na\r\n1\r\nb\r\n"), "{request:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_daemon_that_never_answers_a_streamed_upload_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let mut c = client(Target::Unix(path), None);
        c.timeout = Duration::from_millis(200);
        let body = BodyExt::boxed(Full::new(Bytes::from_static(b"data")).map_err(|e| match e {}));
        let err = c.open_stream(&upload_call(), body).await.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Failure>(), Some(Failure::Unreachable(m)) if m.contains("no answer")),
            "{err:#}"
        );
        server.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_over_unix_socket_carries_method_path_headers_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let reply = fake_server::answer("200 OK", r#"{"key": "bg", "value": {"color": "blue"}}"#);
        let (socket, server) = fake_server::serve_once(dir.path(), reply);
        let call = Call {
            method: Method::PUT,
            path: api_path(&["users", "alice@example.com", "state", "bg"]).unwrap(),
            body: Some(json!({"color": "blue"})),
        };
        let response = client(Target::Unix(socket), Some("orch_abc_def"))
            .send(&call)
            .await
            .unwrap();
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(
            lines.next(),
            Some("PUT /api/v1/users/alice%40example.com/state/bg HTTP/1.1")
        );
        let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
        for expected in [
            "host: localhost",
            "content-type: application/json",
            "authorization: bearer orch_abc_def",
            "accept: application/json",
            "content-length: 16",
        ] {
            assert!(
                headers.iter().any(|h| h == expected),
                "{expected} in {headers:?}"
            );
        }
        assert_eq!(body, r#"{"color":"blue"}"#);
        assert_eq!(response.status, StatusCode::OK);
        let parsed: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(parsed["value"]["color"], "blue");
    }
}
