//! Serving the router on TCP and on the admin Unix socket.
//!
//! A hand-written accept loop instead of `axum::serve` so that every connection gets a
//! header-read timeout (slowloris) and its peer identity (`SO_PEERCRED` uid on the Unix
//! socket) as a request extension, and so that shutdown is graceful: stop accepting, let
//! in-flight requests finish for a bounded time.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;
use tracing::{debug, warn};

use super::auth::Peer;

fn spawn_connection<I>(
    io: I,
    peer: Peer,
    router: Router,
    tracker: &mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer);
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // With upgrades (the terminal's WebSockets). hyper-util's GracefulShutdown does not
    // watch upgradeable connections, so this loop does it: on stop, the connection is told
    // to finish its in-flight request; the drain waits for every tracker clone to drop.
    // Upgraded sockets run in tasks of their own and are closed by the service
    // (`Terminals::shutdown`).
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let tracker = tracker.clone();
    tokio::spawn(async move {
        let _tracker = tracker;
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(err) = result {
            debug!(?err, "connection ended with an error");
        }
    });
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long in-flight requests get after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

async fn drain(tracker: mpsc::Sender<()>, mut done: mpsc::Receiver<()>) {
    drop(tracker);
    if tokio::time::timeout(DRAIN, done.recv()).await.is_err() {
        warn!("connections still open after the drain period; closing them");
    }
}

/// A listener whose connections carry a [`Peer`] identity.
pub trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Short name for logs.
    const NAME: &'static str;
    fn accept_peer(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;
    const NAME: &'static str = "TCP listener";
    async fn accept_peer(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, addr) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(addr)))
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;
    const NAME: &'static str = "admin socket";
    async fn accept_peer(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, _) = self.accept().await?;
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        Ok((stream, Peer::Unix { uid }))
    }
}

/// Serves `router` on `listener` until `stop` turns true, then drains.
pub async fn serve<A: Acceptor>(
    listener: A,
    router: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection holds a clone of `tracker`; `done` yields None once all are gone.
    let (tracker, done) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept_peer() => match accepted {
                Ok((io, peer)) => spawn_connection(io, peer, router.clone(), &tracker, stop.clone(), header_timeout),
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(?err, listener = A::NAME, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    drain(tracker, done).await;
}

/// Binds the admin socket: the parent directory is created 0755 if missing, a stale socket
/// from a previous run is replaced (anything else at that path is an error), and the socket
/// is made 0600 so only root can connect. The peer uid is still checked per connection.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}
