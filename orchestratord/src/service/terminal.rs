//! Terminal sessions: a shell on a terminal in a user's box, owned by the daemon, not by
//! a WebSocket (docs/terminal-protocol.md).
//!
//! A session outlives its sockets. It ends when its shell exits, when it is closed (by a
//! client's `close`, `DELETE .../sessions/{id}`, the user's deletion or disabling), or when
//! nobody has been attached for the profile's `terminal_detach`. Its output goes into a
//! bounded [`Ring`] numbered by stream offset; a pump task reads the terminal only while
//! the output beyond the highest acknowledged offset is below the window, so a program
//! that writes without end is stopped by the kernel (it blocks in `write`) instead of
//! growing the daemon. Input goes straight to the terminal, so Ctrl-C reaches the line
//! discipline whatever the output is doing.
//!
//! Browsers authenticate with a ticket: a front end holding a token asks for one (bound to
//! one user, optionally one session, single use, 30 s), and the browser presents it when
//! it opens the WebSocket. Every attachment is registered with the principal and token it
//! came from, so revoking the token or deleting/disabling the user closes its sockets.
//! Opening and closing a session are audited with the duration and byte counts; input and
//! output never are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use policy::terminal::Ring;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::auth::{hash, random_hex};
use super::{now, rfc3339, Actor, App, Principal, Result, ServiceError};
use crate::runtime::boxes::spec::PtySize;
use crate::runtime::pty::{self, Master};

/// How long a ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// How long the helper has to hand over the terminal.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// All sessions and tickets of the daemon.
#[derive(Debug, Default)]
pub struct Terminals {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    attachments: Mutex<HashMap<u64, AttachInfo>>,
    next_attach: AtomicU64,
    reaper: OnceLock<()>,
}

/// What a ticket allows.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// What the ticket opens: a terminal, or a directory watch of the file API.
    pub purpose: TicketPurpose,
    pub user_id: i64,
    pub login: String,
    pub session: Option<String>,
    pub read_only: bool,
    /// Who asked for it (the front end): the attachment acts as this actor.
    pub actor: Actor,
    expires: Instant,
}

/// The one WebSocket a ticket may open (a ticket for one never opens the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketPurpose {
    Terminal,
    FilesWatch,
}

#[derive(Debug, Clone)]
struct AttachInfo {
    session: String,
    /// The user whose box it is.
    user_id: i64,
    /// The user behind the principal, when it is a user token.
    actor_user: Option<i64>,
    token_id: Option<String>,
    by: String,
    read_only: bool,
    since: i64,
    kick: watch::Sender<Option<&'static str>>,
}

/// One shell on a terminal.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub user_id: i64,
    pub login: String,
    created: i64,
    started: Instant,
    detach: Duration,
    window: u64,
    master: Master,
    state: Mutex<SessionState>,
    /// Bumped whenever output, the exit status or the attachments change.
    changed: watch::Sender<()>,
    /// Wakes the pump when credit arrives or the session is closed.
    credit: Notify,
    /// Turns true when the session is closed.
    closing: watch::Sender<bool>,
    opened_by: Actor,
}

#[derive(Debug)]
struct SessionState {
    ring: Ring,
    /// Highest offset acknowledged by a read-write client.
    acked: u64,
    exit: Option<i32>,
    /// Why it was closed, once it was.
    closed: Option<&'static str>,
    attached: usize,
    detached_since: Option<Instant>,
    bytes_in: u64,
    size: PtySize,
}

/// What a client gets to read from a session: `frame` is the encoded `output` frame
/// (opcode, offset, bytes) of `len` bytes at `offset`, built straight from the ring.
#[derive(Debug)]
pub struct Chunk {
    pub gap: Option<(u64, u64)>,
    pub offset: u64,
    pub len: usize,
    pub frame: Vec<u8>,
}

/// A session as the API lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub created: String,
    pub cols: u16,
    pub rows: u16,
    /// Output offset reached (bytes the shell has written).
    pub output_bytes: u64,
    pub exit_code: Option<i32>,
    /// Who is attached now; read-only watchers (admins helping) are listed too.
    pub attached: Vec<AttachmentView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentView {
    pub by: String,
    pub read_only: bool,
    pub since: String,
}

/// Body of `POST /boxes/{user}/terminal/tickets`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TicketRequest {
    /// Attach to this session; absent: the ticket opens a new one.
    #[serde(default)]
    pub session: Option<String>,
    /// Watch without input (admins helping a user).
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketView {
    pub ticket: String,
    pub expires_in_secs: u64,
}

/// How a client attaches.
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    pub session: Option<String>,
    pub read_only: bool,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// A live attachment: detaches on drop.
#[derive(Debug)]
pub struct Attachment {
    pub session: Arc<Session>,
    pub read_only: bool,
    /// Becomes `Some(reason)` when the socket must close (revocation, shutdown).
    pub kick: watch::Receiver<Option<&'static str>>,
    /// Output changes of the session.
    pub changed: watch::Receiver<()>,
    id: u64,
    terminals: Weak<App>,
}

impl Attachment {
    /// The client asked to end the session.
    pub fn close(&self) {
        self.session.close("closed");
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(app) = self.terminals.upgrade() {
            app.terminals.detach(self.id, &self.session);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn state(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    pub fn buffer(&self) -> u64 {
        self.state().ring.capacity() as u64
    }

    /// (start, end) of the ring.
    pub fn offsets(&self) -> (u64, u64) {
        let st = self.state();
        (st.ring.start(), st.ring.end())
    }

    /// Up to `max` bytes of output from `from`, as an `output` frame.
    pub fn read(&self, from: u64, max: usize) -> Chunk {
        let st = self.state();
        let s = st.ring.read(from, max);
        let mut frame = Vec::with_capacity(9 + s.len());
        frame.push(policy::terminal::op::OUTPUT);
        frame.extend_from_slice(&s.offset.to_be_bytes());
        frame.extend_from_slice(s.data.0);
        frame.extend_from_slice(s.data.1);
        Chunk {
            gap: s.gap,
            offset: s.offset,
            len: s.len(),
            frame,
        }
    }

    /// The exit status once the shell ended and all of its output is in the ring.
    pub fn exit(&self) -> Option<i32> {
        self.state().exit
    }

    /// A read-write client consumed output up to `offset`.
    pub fn ack(&self, offset: u64) {
        let mut st = self.state();
        let offset = offset.min(st.ring.end());
        if offset > st.acked {
            st.acked = offset;
            drop(st);
            self.credit.notify_one();
        }
    }

    pub async fn input(&self, data: &[u8]) -> std::io::Result<()> {
        self.state().bytes_in += data.len() as u64;
        self.master.write_all(data).await
    }

    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        self.master.resize(cols, rows)?;
        self.state().size = PtySize { cols, rows };
        Ok(())
    }

    fn close(&self, why: &'static str) {
        let mut st = self.state();
        if st.closed.is_none() {
            st.closed = Some(why);
        }
        drop(st);
        self.closing.send_replace(true);
        self.credit.notify_one();
    }

    fn closed(&self) -> Option<&'static str> {
        self.state().closed
    }

    fn view(&self, attached: Vec<AttachmentView>) -> SessionView {
        let st = self.state();
        SessionView {
            id: self.id.clone(),
            user: self.login.clone(),
            created: rfc3339(self.created),
            cols: st.size.cols,
            rows: st.size.rows,
            output_bytes: st.ring.end(),
            exit_code: st.exit,
            attached,
        }
    }
}

impl Terminals {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        lock(&self.sessions)
    }

    fn detach(&self, id: u64, session: &Session) {
        lock(&self.attachments).remove(&id);
        let mut st = session.state();
        st.attached = st.attached.saturating_sub(1);
        if st.attached == 0 {
            st.detached_since = Some(Instant::now());
        }
        drop(st);
        session.changed.send_replace(());
    }

    /// Closes the sockets matching `pred`, with `reason` sent to the client.
    fn kick(&self, reason: &'static str, pred: impl Fn(&AttachInfo) -> bool) {
        for a in lock(&self.attachments).values() {
            if pred(a) {
                a.kick.send_replace(Some(reason));
            }
        }
    }

    /// A token was revoked: its sockets close.
    pub fn revoke_token(&self, token_id: &str) {
        self.kick("revoked", |a| a.token_id.as_deref() == Some(token_id));
    }

    /// A user was deleted or disabled: their sockets close (also those opened by a
    /// service for them) and their sessions end.
    pub fn revoke_user(&self, user_id: i64) {
        self.kick("revoked", |a| {
            a.user_id == user_id || a.actor_user == Some(user_id)
        });
        for s in self.sessions().values() {
            if s.user_id == user_id {
                s.close("user_revoked");
            }
        }
    }

    /// Daemon shutdown: every socket closes and every session ends.
    pub fn shutdown(&self) {
        self.kick("shutdown", |_| true);
        for s in self.sessions().values() {
            s.close("shutdown");
        }
    }

    /// Number of live sessions (metrics, tests).
    pub fn count(&self) -> usize {
        self.sessions().len()
    }
}

fn attach_view(a: &AttachInfo) -> AttachmentView {
    AttachmentView {
        by: a.by.clone(),
        read_only: a.read_only,
        since: rfc3339(a.since),
    }
}

impl App {
    /// The user and profile of a terminal request, or why there is none.
    fn terminal_user(&self, actor: &Actor, user: &str) -> Result<crate::store::UserRecord> {
        let u = self.user_for(actor, user)?;
        // Fresh from the store: a principal (a ticket's in particular) may carry a record
        // from before the user was disabled.
        let u = self
            .store
            .find_user(u.login.as_str())?
            .ok_or(ServiceError::NotFound { what: "user" })?;
        let profile = self
            .profiles
            .get(u.profile.as_str())
            .ok_or(ServiceError::Internal("the user's profile is gone"))?;
        if !profile.spec.terminal {
            return Err(ServiceError::Forbidden("this profile has no terminal"));
        }
        if u.disabled {
            return Err(ServiceError::Forbidden("the user is disabled"));
        }
        Ok(u)
    }

    fn session_of(&self, user_id: i64, id: &str) -> Result<Arc<Session>> {
        match self.terminals.sessions().get(id) {
            Some(s) if s.user_id == user_id => Ok(s.clone()),
            _ => Err(ServiceError::NotFound {
                what: "terminal session",
            }),
        }
    }

    /// Mints a ticket for a browser (audited: who asked, for which user).
    pub fn terminal_ticket(
        &self,
        actor: &Actor,
        user: &str,
        req: &TicketRequest,
    ) -> Result<TicketView> {
        self.audited(actor, "terminal.ticket", user, || {
            let u = self.terminal_user(actor, user)?;
            if let Some(id) = &req.session {
                self.session_of(u.id, id)?;
            }
            self.mint_ticket(
                TicketPurpose::Terminal,
                &u,
                actor,
                req.session.clone(),
                req.read_only,
            )
        })
    }

    /// Stores a new single-use ticket (30 s) for `u`, minted by `actor`, and returns its
    /// secret (only its hash is kept).
    pub(crate) fn mint_ticket(
        &self,
        purpose: TicketPurpose,
        u: &crate::store::UserRecord,
        actor: &Actor,
        session: Option<String>,
        read_only: bool,
    ) -> Result<TicketView> {
        let secret = random_hex(32).map_err(ServiceError::Random)?;
        let mut tickets = lock(&self.terminals.tickets);
        let t = Instant::now();
        tickets.retain(|_, v| v.expires > t);
        if tickets.len() > 10_000 {
            return Err(ServiceError::Unavailable("too many outstanding tickets"));
        }
        tickets.insert(
            hash(&secret),
            Ticket {
                purpose,
                user_id: u.id,
                login: u.login.to_string(),
                session,
                read_only,
                actor: actor.clone(),
                expires: t + TICKET_TTL,
            },
        );
        Ok(TicketView {
            ticket: secret,
            expires_in_secs: TICKET_TTL.as_secs(),
        })
    }

    /// Takes a ticket (single use): it is gone whether or not it is still valid.
    pub fn redeem_ticket(&self, secret: &str, peer: &str) -> Result<Ticket> {
        let t = lock(&self.terminals.tickets).remove(&hash(secret));
        // The token the ticket was minted with must still be good: revoking it also
        // voids its outstanding tickets.
        let token_ok = |t: &Ticket| -> Result<bool> {
            Ok(match &t.actor.token_id {
                None => true,
                Some(id) => self
                    .store
                    .token(id)?
                    .is_some_and(|r| r.revoked_at.is_none() && r.expires_at > now()),
            })
        };
        match t {
            Some(t) if t.expires > Instant::now() && token_ok(&t)? => {
                let mut t = t;
                t.actor.peer = peer.to_string();
                Ok(t)
            }
            _ => {
                self.audit_auth_failure(peer, "terminal", "invalid or expired ticket");
                Err(ServiceError::Unauthorized("invalid or expired ticket"))
            }
        }
    }

    /// Takes a ticket (single use) for a WebSocket of `purpose` on `login`'s box or home,
    /// optionally asking for `session`: a ticket minted for another purpose, another user or
    /// another session is refused (and used up) like an invalid one.
    pub fn redeem_ticket_for(
        &self,
        secret: &str,
        peer: &str,
        purpose: TicketPurpose,
        login: &str,
        session: Option<&str>,
    ) -> Result<Ticket> {
        let t = self.redeem_ticket(secret, peer)?;
        let session_ok = match (&t.session, session) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if t.purpose != purpose || !t.login.eq_ignore_ascii_case(login) || !session_ok {
            let what = match purpose {
                TicketPurpose::Terminal => "terminal",
                TicketPurpose::FilesWatch => "files.watch",
            };
            self.audit_auth_failure(peer, what, "ticket for another target");
            return Err(ServiceError::Unauthorized("invalid or expired ticket"));
        }
        Ok(t)
    }

    /// Sessions of a user (attached watchers included).
    pub fn terminal_sessions(&self, actor: &Actor, user: &str) -> Result<Vec<SessionView>> {
        let u = self.user_for(actor, user)?;
        let attachments = lock(&self.terminals.attachments).clone();
        let mut out: Vec<SessionView> = self
            .terminals
            .sessions()
            .values()
            .filter(|s| s.user_id == u.id)
            .map(|s| {
                s.view(
                    attachments
                        .values()
                        .filter(|a| a.session == s.id)
                        .map(attach_view)
                        .collect(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Ends a session (its shell is hung up and killed).
    pub fn terminal_close(&self, actor: &Actor, user: &str, id: &str) -> Result<()> {
        self.audited(actor, "terminal.close", user, || {
            let u = self.user_for(actor, user)?;
            self.session_of(u.id, id)?.close("closed");
            Ok(())
        })
    }

    /// Attaches `actor` to a session of `user`: the named one, or a new shell. Read-only
    /// attachments to a session are for watching (admins helping), audited as such.
    pub async fn terminal_attach(
        self: &Arc<Self>,
        actor: &Actor,
        user: &str,
        req: &AttachRequest,
    ) -> Result<Attachment> {
        let result = self.do_attach(actor, user, req).await;
        let action = match (&req.session, req.read_only) {
            (None, _) => "terminal.open",
            (Some(_), false) => "terminal.attach",
            (Some(_), true) => "terminal.watch",
        };
        let target = match (&result, &req.session) {
            (Ok(a), _) => format!("{user}: {}", a.session.id),
            (Err(_), Some(id)) => format!("{user}: {id}"),
            (Err(_), None) => user.to_string(),
        };
        self.audit_result(actor, action, &target, &result);
        result
    }

    async fn do_attach(
        self: &Arc<Self>,
        actor: &Actor,
        user: &str,
        req: &AttachRequest,
    ) -> Result<Attachment> {
        let u = self.terminal_user(actor, user)?;
        let session = match &req.session {
            Some(id) => {
                let s = self.session_of(u.id, id)?;
                if s.closed().is_some() {
                    return Err(ServiceError::NotFound {
                        what: "terminal session",
                    });
                }
                s
            }
            None => {
                if req.read_only {
                    return Err(ServiceError::invalid(
                        "invalid_session",
                        "a read-only attachment needs a session",
                    ));
                }
                self.open_session(actor, &u, req).await?
            }
        };
        let id = self.terminals.next_attach.fetch_add(1, Ordering::Relaxed);
        let (kick, kick_rx) = watch::channel(None);
        let actor_user = match &actor.principal {
            Principal::User(me) => Some(me.id),
            _ => None,
        };
        lock(&self.terminals.attachments).insert(
            id,
            AttachInfo {
                session: session.id.clone(),
                user_id: u.id,
                actor_user,
                token_id: actor.token_id.clone(),
                by: actor.principal.audit_name(),
                read_only: req.read_only,
                since: now(),
                kick,
            },
        );
        {
            let mut st = session.state();
            st.attached += 1;
            st.detached_since = None;
        }
        session.changed.send_replace(());
        Ok(Attachment {
            changed: session.changed.subscribe(),
            session,
            read_only: req.read_only,
            kick: kick_rx,
            id,
            terminals: Arc::downgrade(self),
        })
    }

    async fn open_session(
        self: &Arc<Self>,
        actor: &Actor,
        u: &crate::store::UserRecord,
        req: &AttachRequest,
    ) -> Result<Arc<Session>> {
        let cfg = &self.config.terminal;
        let open = self
            .terminals
            .sessions()
            .values()
            .filter(|s| s.user_id == u.id)
            .count();
        if open >= cfg.max_sessions as usize {
            return Err(ServiceError::Conflict {
                kind: "too_many_sessions",
                message: format!("at most {} terminal sessions per user", cfg.max_sessions),
            });
        }
        let size = PtySize {
            cols: req.cols.unwrap_or(80),
            rows: req.rows.unwrap_or(24),
        };
        if size.cols == 0
            || size.rows == 0
            || size.cols > policy::terminal::MAX_COLS
            || size.rows > policy::terminal::MAX_ROWS
        {
            return Err(ServiceError::invalid(
                "invalid_size",
                "cols and rows must be 1..=1000",
            ));
        }
        let (cmd, framed) = self.shell_command(u, size)?;
        let spawned = pty::spawn(cmd, framed, SPAWN_TIMEOUT).await.map_err(|e| {
            error!(err = %super::boxes::chain(&e), user = %u.login, "cannot open a terminal");
            ServiceError::BoxFailed("cannot open a terminal in the box".into())
        })?;
        let detach = self
            .profiles
            .get(u.profile.as_str())
            .map(|p| p.terminal_detach().0)
            .unwrap_or(policy::profile::DEFAULT_TERMINAL_DETACH.0);
        let id = random_hex(16).map_err(ServiceError::Random)?;
        let session = Arc::new(Session {
            id: id.clone(),
            user_id: u.id,
            login: u.login.to_string(),
            created: now(),
            started: Instant::now(),
            detach,
            window: cfg.window.bytes(),
            master: spawned.master,
            state: Mutex::new(SessionState {
                ring: Ring::new(cfg.buffer.bytes() as usize),
                acked: 0,
                exit: None,
                closed: None,
                attached: 0,
                detached_since: Some(Instant::now()),
                bytes_in: 0,
                size,
            }),
            changed: watch::channel(()).0,
            credit: Notify::new(),
            closing: watch::channel(false).0,
            opened_by: actor.clone(),
        });
        self.terminals.sessions().insert(id, session.clone());
        tokio::spawn(pump(Arc::downgrade(self), session.clone(), spawned.helper));
        self.start_reaper();
        info!(user = %u.login, session = %session.id, "terminal session opened");
        Ok(session)
    }

    /// Once per daemon: a task that ends sessions nobody attached to for their detach
    /// timeout.
    fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.terminals.reaper.get_or_init(|| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(app) = weak.upgrade() else { return };
                    for s in app.terminals.sessions().values() {
                        let st = s.state();
                        let expired = st.attached == 0
                            && st.detached_since.is_some_and(|t| t.elapsed() >= s.detach);
                        drop(st);
                        if expired {
                            s.close("detach_timeout");
                        }
                    }
                }
            });
        });
    }

    /// The session ended: remove it and audit the close with duration and bytes.
    fn session_ended(&self, s: &Session) {
        self.terminals.sessions().remove(&s.id);
        let st = s.state();
        let why = st.closed.unwrap_or("exit");
        let detail = format!(
            "session={} reason={why} exit={} duration_secs={} bytes_in={} bytes_out={}",
            s.id,
            st.exit.map_or("none".to_string(), |c| c.to_string()),
            s.started.elapsed().as_secs(),
            st.bytes_in,
            st.ring.end()
        );
        drop(st);
        info!(user = %s.login, session = %s.id, reason = why, "terminal session ended");
        self.audit(&s.opened_by, "terminal.end", &s.login, "ok", Some(detail));
    }
}

/// A read of at least this much output starts gathering (see `pump`).
const COALESCE_FROM: usize = 1024;
/// How long a flood is gathered into one frame at most (PERFORMANCE.md: "a millisecond or
/// up to 64 KiB").
const COALESCE: Duration = Duration::from_millis(1);

/// Reads the terminal into the ring while there is credit; on EOF (every holder of the
/// terminal's other end exited) or close, reaps the helper and records the exit status.
async fn pump(app: Weak<App>, s: Arc<Session>, mut helper: tokio::process::Child) {
    let mut buf = vec![0u8; policy::terminal::MAX_OUTPUT];
    let mut closing = s.closing.subscribe();
    'outer: loop {
        // Wait for credit (or close). notify_one keeps a permit, so a wake-up between the
        // check and the wait is not lost.
        let room = loop {
            let notified = s.credit.notified();
            {
                let st = s.state();
                if st.closed.is_some() {
                    break 'outer;
                }
                let limit = st.acked + s.window;
                if st.ring.end() < limit {
                    break (limit - st.ring.end()) as usize;
                }
            }
            notified.await;
        };
        let want = room.min(buf.len());
        let n = tokio::select! {
            r = s.master.read(&mut buf[..want]) => match r {
                Ok(0) => break 'outer,
                Ok(n) => n,
                Err(e) => {
                    warn!(?e, session = %s.id, "terminal read failed");
                    break 'outer;
                }
            },
            _ = closing.wait_for(|c| *c) => break 'outer,
        };
        // Coalesce: whatever else is there now, up to a frame. A small read (an echo, a
        // prompt) goes out at once; a big one means a flood, which the kernel hands over
        // 4 KiB at a time: it is gathered for up to COALESCE or a frame, so a frame (a
        // WebSocket write and an ack from the client) carries up to 64 KiB, not 4.
        let mut filled = n;
        let bulk = n >= COALESCE_FROM;
        let until = tokio::time::Instant::now() + COALESCE;
        while filled < want {
            match s.master.try_read(&mut buf[filled..want]) {
                Ok(Some(0)) | Err(_) => break,
                Ok(Some(m)) => filled += m,
                Ok(None) if bulk => {
                    match tokio::time::timeout_at(until, s.master.read(&mut buf[filled..want]))
                        .await
                    {
                        Ok(Ok(m)) if m > 0 => filled += m,
                        _ => break,
                    }
                }
                Ok(None) => break,
            }
        }
        s.state().ring.push(&buf[..filled]);
        s.changed.send_replace(());
    }
    // Closed: SIGKILL the helper; its child (the shell) dies with it (pdeathsig), and the
    // terminal hangs up for whatever else runs on it.
    if s.closed().is_some() {
        let _ = helper.start_kill();
    }
    let code = match helper.wait().await {
        Ok(st) => st.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
        }),
        Err(e) => {
            error!(?e, session = %s.id, "cannot wait for the terminal helper");
            -1
        }
    };
    s.state().exit = Some(code);
    s.changed.send_replace(());
    if let Some(app) = app.upgrade() {
        app.session_ended(&s);
    }
}
