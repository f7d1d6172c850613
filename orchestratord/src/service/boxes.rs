//! The box lifecycle: a state machine per box, one operation at a time, driven through the
//! runtime's closed command set. States (DESIGN.md):
//!
//! ```text
//!   absent ──start──> starting ──ok──> running ──stop──> stopping ──> stopped
//!     ^                  │                │                             │
//!     │                  └──fail──> error <── init died ─┘              │
//!     └────────────── rm (from any state but starting/stopping) ────────┘
//! ```
//!
//! `restart` is stop then start; `reset` wipes the persistent upper directory of a box
//! (stopping and starting it again if it was running); `rm` stops the box and deletes its
//! files (never the home). An operation that the current state does not allow fails with a
//! named error (`box_running`, `box_not_running`); one that finds another operation in
//! progress fails with `box_busy`.
//!
//! The store records the desired state (running/stopped) and the observed one, with the
//! init's pid and start time. [`App::reconcile_boxes`] makes the two agree after a daemon
//! restart or crash: boxes whose init still runs are adopted; everything else (including a
//! start or stop that a crash interrupted) is killed and cleaned, and started again if it
//! should run. Ephemeral boxes expire at their TTL, also across restarts.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::plan::{BoxPlan, PlanUser};
use policy::profile::Persistence;
use policy::seccomp::{box_filter, Arch};
use policy::Role;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::{now, rfc3339, Actor, App, Result, ServiceError};
use crate::runtime::boxes::{self, log, BoxRuntime, Command, ExecRequest, Outcome, Running};
use crate::runtime::seccomp::{self, Compiled};
use crate::store::{BoxRecord, UserRecord};

/// What the lifecycle needs besides the app: the runtime, the compiled seccomp filter of
/// every profile (compiled once at start), and one lock per box.
#[derive(Debug)]
pub struct BoxManager {
    runtime: BoxRuntime,
    seccomp: HashMap<String, Arc<Compiled>>,
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Time between SIGTERM and SIGKILL on stop.
    pub grace: Duration,
    /// Box networking (the firewall), when enabled.
    pub network: Option<super::net::Network>,
}

impl BoxManager {
    /// Compiles every profile's seccomp filter once.
    pub fn new(runtime: BoxRuntime, profiles: &policy::ProfileSet) -> anyhow::Result<BoxManager> {
        let arch = Arch::native().ok_or_else(|| anyhow::anyhow!("unsupported architecture"))?;
        let mut seccomp = HashMap::new();
        for p in profiles.iter() {
            let compiled = seccomp::compile(&box_filter(arch, &p.spec.seccomp))
                .map_err(|e| anyhow::anyhow!("profile {}: seccomp: {e}", p.name))?;
            seccomp.insert(p.name.to_string(), Arc::new(compiled));
        }
        Ok(BoxManager {
            runtime,
            seccomp,
            locks: Mutex::default(),
            grace: Duration::from_secs(10),
            network: None,
        })
    }

    /// The same manager with box networking: the runtime gives boxes a link, and every
    /// box's rules are applied before it gets one.
    pub fn with_network(mut self, network: super::net::Network) -> BoxManager {
        self.runtime = self.runtime.with_network(true);
        self.network = Some(network);
        self
    }

    pub fn runtime(&self) -> &BoxRuntime {
        &self.runtime
    }

    fn lock(&self, user_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("box locks poisoned")
            .entry(user_id)
            .or_default()
            .clone()
    }
}

/// Limits of a box as the API shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsView {
    pub memory_bytes: u64,
    pub memory_swap_bytes: u64,
    /// CPUs (quota / period).
    pub cpus: f64,
    pub pids: u32,
    /// Disk bandwidth on the state directory's device, bytes per second (null: unlimited).
    pub io_read_bps: Option<u64>,
    pub io_write_bps: Option<u64>,
}

/// Current consumption, from the box's cgroup.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_usec: u64,
}

/// A box's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoxView {
    pub user: String,
    pub role: String,
    pub profile: String,
    /// absent, starting, running, stopping, stopped or error.
    pub state: String,
    /// running or stopped.
    pub desired: String,
    pub persistent: bool,
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub uptime_secs: Option<i64>,
    pub expires_at: Option<String>,
    pub last_error: Option<String>,
    /// Whether the box has its own user namespace (false: the kernel refused one).
    pub user_namespace: Option<bool>,
    pub apparmor: bool,
    pub limits: Option<LimitsView>,
    pub usage: Option<UsageView>,
    /// The box's subnet, address and packet counters (status only), when boxes have a
    /// network.
    pub network: Option<super::net::NetView>,
    /// The home: backend, mount health (SMB: probed in bounded time) and, for quota
    /// images, usage (status only).
    pub home: Option<super::files::HomeView>,
}

/// Filter of `box list`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BoxFilter {
    pub state: Option<String>,
    pub user: Option<String>,
    pub role: Option<String>,
}

/// A bulk operation over the boxes a filter selects (admins only).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BulkRequest {
    /// start, stop or restart.
    pub action: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    pub user: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// A command to run in a box.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecBody {
    pub argv: Vec<String>,
    /// Variables added to the box's clean default environment.
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// Working directory inside the box (default: the home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds before the command is killed (default 60, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Given to the command on stdin.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// The result of a non-streaming exec.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecOutput {
    /// The command's exit code (128+N when killed by signal N; 124 on timeout).
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond 1 MiB per stream is dropped.
    pub truncated: bool,
}

/// A command about to run: the helper process and what to write to its stdin first.
#[derive(Debug)]
pub struct PreparedExec {
    pub command: std::process::Command,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

const STATES: [&str; 6] = [
    "absent", "starting", "running", "stopping", "stopped", "error",
];

fn conflict(kind: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict {
        kind,
        message: message.into(),
    }
}

impl App {
    pub(super) fn manager(&self) -> Result<&BoxManager> {
        self.boxes
            .as_ref()
            .ok_or(ServiceError::Unavailable("the box runtime is not enabled"))
    }

    fn box_record(&self, user: &UserRecord) -> Result<BoxRecord> {
        self.store
            .box_of(user.id)?
            .ok_or(ServiceError::NotFound { what: "box" })
    }

    /// The plan of a user's box, compiled from the current user, profile and registry.
    pub fn plan_for(&self, user: &UserRecord) -> Result<BoxPlan> {
        let profile = self.profiles.get(user.profile.as_str()).ok_or_else(|| {
            ServiceError::invalid(
                "unknown_profile",
                format!("profile {} is gone", user.profile),
            )
        })?;
        let registry = self.store.list_services()?;
        let pu = PlanUser {
            name: user.login.clone(),
            uid: user.uid,
            gid: user.gid,
            role: user.role,
            disabled: user.disabled,
            slot: user.slot,
            services: user.services.clone(),
        };
        policy::plan::compile(&self.config, &pu, profile, &registry)
            .map_err(|e| ServiceError::invalid(e.kind(), e))
    }

    fn box_view(&self, user: &UserRecord, b: &BoxRecord, with_usage: bool) -> BoxView {
        let plan = self.plan_for(user).ok();
        let now = now();
        let running = b.observed == "running";
        let usage = match (&self.boxes, &plan) {
            (Some(m), Some(p)) if with_usage => {
                m.runtime
                    .usage(&p.cgroup)
                    .ok()
                    .flatten()
                    .map(|u| UsageView {
                        memory_bytes: u.memory_bytes,
                        pids: u.pids,
                        cpu_usec: u.cpu_usec,
                    })
            }
            _ => None,
        };
        BoxView {
            user: user.login.to_string(),
            role: user.role.to_string(),
            profile: user.profile.to_string(),
            state: b.observed.clone(),
            desired: b.desired.clone(),
            persistent: plan
                .as_ref()
                .is_some_and(|p| p.persistence == Persistence::Persistent),
            pid: b.pid.filter(|_| running),
            started_at: b.started_at.filter(|_| running).map(rfc3339),
            uptime_secs: b.started_at.filter(|_| running).map(|t| (now - t).max(0)),
            expires_at: b.expires_at.map(rfc3339),
            last_error: b.last_error.clone(),
            user_namespace: b.userns,
            apparmor: self.boxes.as_ref().is_some_and(|m| m.runtime.apparmor()),
            limits: plan.as_ref().map(|p| LimitsView {
                memory_bytes: p.limits.memory_bytes,
                memory_swap_bytes: p.limits.memory_swap_bytes,
                cpus: p.limits.cpu_quota_us as f64 / p.limits.cpu_period_us as f64,
                pids: p.limits.pids,
                io_read_bps: p.limits.io_read_bps,
                io_write_bps: p.limits.io_write_bps,
            }),
            usage,
            network: plan.as_ref().and_then(|p| self.net_view(p, with_usage)),
            home: plan
                .as_ref()
                .filter(|_| with_usage)
                .map(super::files::home_view),
        }
    }

    /// Boxes the actor may see, filtered.
    pub fn list_boxes(&self, actor: &Actor, f: &BoxFilter) -> Result<Vec<BoxView>> {
        if let Some(s) = &f.state {
            if !STATES.contains(&s.as_str()) {
                return Err(ServiceError::invalid(
                    "invalid_state",
                    format!("unknown state {s:?} (one of {})", STATES.join(", ")),
                ));
            }
        }
        let role: Option<Role> = match &f.role {
            Some(r) => Some(
                r.parse()
                    .map_err(|e| ServiceError::invalid("invalid_role", e))?,
            ),
            None => None,
        };
        let users = self.store.list_users(&Default::default())?;
        let boxes: HashMap<i64, BoxRecord> = self
            .store
            .list_boxes()?
            .into_iter()
            .map(|b| (b.user_id, b))
            .collect();
        let mut out = vec![];
        for u in users {
            if !actor.principal.may_act_for(&u) {
                continue;
            }
            if f.user.as_deref().is_some_and(|n| n != u.login.as_str()) {
                continue;
            }
            if role.is_some_and(|r| r != u.role) {
                continue;
            }
            let Some(b) = boxes.get(&u.id) else { continue };
            if f.state.as_deref().is_some_and(|s| s != b.observed) {
                continue;
            }
            out.push(self.box_view(&u, b, false));
        }
        Ok(out)
    }

    pub fn box_status(&self, actor: &Actor, user: &str) -> Result<BoxView> {
        let u = self.user_for(actor, user)?;
        let b = self.box_record(&u)?;
        Ok(self.box_view(&u, &b, true))
    }

    pub fn box_logs(&self, actor: &Actor, user: &str, lines: usize) -> Result<String> {
        let u = self.user_for(actor, user)?;
        let m = self.manager()?;
        let path = m.runtime.paths(u.login.as_str()).log;
        log::tail(&path, lines.clamp(1, 100_000)).map_err(|e| {
            error!(?e, user = %u.login, "cannot read box log");
            ServiceError::Internal("cannot read the box log")
        })
    }

    pub(crate) fn box_event(&self, login: &str, event: &str) {
        if let Some(m) = &self.boxes {
            let path = m.runtime.paths(login).log;
            let line = format!("{} orchestratord: {event}", rfc3339(now()));
            if let Err(e) = log::append(&path, &line, log::CAP) {
                warn!(?e, user = login, "cannot write box log");
            }
        }
    }

    fn save_box(&self, b: &mut BoxRecord) -> Result<()> {
        b.updated_at = now();
        self.store.update_box(b)?;
        Ok(())
    }

    /// Runs one lifecycle operation under the box's lock, audited.
    async fn box_op<F, Fut>(
        self: &Arc<Self>,
        actor: &Actor,
        user: &str,
        action: &str,
        f: F,
    ) -> Result<BoxView>
    where
        F: FnOnce(Arc<App>, UserRecord) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let result = async {
            let u = self.user_for(actor, user)?;
            let m = self.manager()?;
            let lock = m.lock(u.id);
            let _guard = lock.try_lock().map_err(|_| {
                conflict("box_busy", "another operation on this box is in progress")
            })?;
            f(self.clone(), u.clone()).await?;
            let b = self.box_record(&u)?;
            Ok(self.box_view(&u, &b, true))
        }
        .await;
        self.audit_result(actor, action, user, &result);
        result
    }

    /// Audits the outcome of a use case; internal errors are summarised (their detail
    /// goes to the log only).
    pub(crate) fn audit_result<T>(&self, actor: &Actor, action: &str, target: &str, r: &Result<T>) {
        match r {
            Ok(_) => self.audit(actor, action, target, "ok", None),
            Err(e) => {
                let detail = match e {
                    ServiceError::Store(_)
                    | ServiceError::Random(_)
                    | ServiceError::Internal(_) => "internal error".to_string(),
                    other => other.to_string(),
                };
                self.audit(actor, action, target, e.outcome(), Some(detail));
            }
        }
    }

    pub async fn box_start(self: &Arc<Self>, actor: &Actor, user: &str) -> Result<BoxView> {
        self.box_op(actor, user, "box.start", |app, u| async move {
            let b = app.box_record(&u)?;
            match b.observed.as_str() {
                "running" => Err(conflict("box_running", "the box is already running")),
                _ => app.do_start(&u).await,
            }
        })
        .await
    }

    pub async fn box_stop(self: &Arc<Self>, actor: &Actor, user: &str) -> Result<BoxView> {
        self.box_op(actor, user, "box.stop", |app, u| async move {
            let b = app.box_record(&u)?;
            match b.observed.as_str() {
                "absent" | "stopped" => Err(conflict("box_not_running", "the box is not running")),
                _ => app.do_stop(&u, "stopped").await,
            }
        })
        .await
    }

    pub async fn box_restart(self: &Arc<Self>, actor: &Actor, user: &str) -> Result<BoxView> {
        self.box_op(actor, user, "box.restart", |app, u| async move {
            let b = app.box_record(&u)?;
            if b.observed != "absent" && b.observed != "stopped" {
                app.do_stop(&u, "stopped").await?;
            }
            app.do_start(&u).await
        })
        .await
    }

    /// Wipes the box's persistent changes; a running box is restarted on a clean root.
    pub async fn box_reset(self: &Arc<Self>, actor: &Actor, user: &str) -> Result<BoxView> {
        self.box_op(actor, user, "box.reset", |app, u| async move {
            let b = app.box_record(&u)?;
            let was_running = b.observed == "running";
            if b.observed != "absent" && b.observed != "stopped" {
                app.do_stop(&u, "stopped").await?;
            }
            let plan = app.plan_for(&u)?;
            let m = app.manager()?;
            let rt = m.runtime.clone();
            blocking(move || rt.run(Command::Wipe { plan: &plan })).await?;
            app.box_event(u.login.as_str(), "reset: upper directory wiped");
            if was_running {
                app.do_start(&u).await?;
            }
            Ok(())
        })
        .await
    }

    /// Stops the box and deletes its files (not the home): state `absent`.
    pub async fn box_remove(self: &Arc<Self>, actor: &Actor, user: &str) -> Result<BoxView> {
        self.box_op(actor, user, "box.rm", |app, u| async move {
            app.do_remove(&u).await
        })
        .await
    }

    async fn do_remove(self: &Arc<Self>, u: &UserRecord) -> Result<()> {
        let b = self.box_record(u)?;
        if b.observed != "absent" && b.observed != "stopped" {
            self.do_stop(u, "stopped").await?;
        }
        let m = self.manager()?;
        let rt = m.runtime.clone();
        let login = u.login.to_string();
        blocking(move || rt.run(Command::Remove { user: &login })).await?;
        let mut b = self.box_record(u)?;
        b.observed = "absent".into();
        b.desired = "stopped".into();
        b.last_error = None;
        b.expires_at = None;
        self.save_box(&mut b)
    }

    /// absent/stopped/error -> starting -> running (or error).
    async fn do_start(self: &Arc<Self>, u: &UserRecord) -> Result<()> {
        let m = self.manager()?;
        let plan = self.plan_for(u)?;
        let compiled = m
            .seccomp
            .get(u.profile.as_str())
            .cloned()
            .ok_or(ServiceError::Internal("no seccomp filter for the profile"))?;
        let mut b = self.box_record(u)?;
        b.desired = "running".into();
        b.observed = "starting".into();
        b.last_error = None;
        self.save_box(&mut b)?;
        self.box_event(u.login.as_str(), "starting");
        // Fail closed: the box gets its link only once its rules are in force.
        if let Err(e) = self.net_apply(&plan).await {
            let msg = format!("start failed at step network_rules: {e}");
            error!(user = %u.login, error = %msg, "box start failed");
            let mut b = self.box_record(u)?;
            b.observed = "error".into();
            b.pid = None;
            b.last_error = Some(msg.clone());
            self.save_box(&mut b)?;
            self.box_event(u.login.as_str(), &msg);
            return Err(ServiceError::BoxFailed(msg));
        }
        // A quota home is mounted and sized here, where a resize can be audited; the
        // runtime's own check at start then finds it done. A failure is left to the start
        // below, which reports it as the step that failed.
        if plan.home.image.is_some() {
            let _ = self.ensure_quota_home(u, &plan).await;
        }
        let rt = m.runtime.clone();
        let plan2 = plan.clone();
        let started = blocking(move || {
            rt.run(Command::Start {
                plan: &plan2,
                seccomp: &compiled,
            })
        })
        .await;
        let mut b = self.box_record(u)?;
        match started {
            Ok(Outcome::Started(r)) => {
                let t = now();
                b.observed = "running".into();
                b.pid = Some(r.pid);
                b.init_start = Some(r.start_time);
                b.userns = Some(r.userns);
                b.started_at = Some(t);
                b.expires_at = plan.ttl.map(|ttl| t + ttl.as_secs() as i64);
                self.save_box(&mut b)?;
                let ns = if r.userns {
                    ""
                } else {
                    " (no user namespace: the kernel refused one)"
                };
                self.box_event(
                    u.login.as_str(),
                    &format!("running, init pid {}{ns}", r.pid),
                );
                info!(user = %u.login, pid = r.pid, "box started");
                self.watch(u.id, r);
                Ok(())
            }
            Ok(_) => Err(ServiceError::Internal("unexpected runtime outcome")),
            Err(e) => {
                let msg = format!("start failed at step {}: {}", e.step(), chain(&e));
                error!(user = %u.login, error = %msg, "box start failed");
                b.observed = "error".into();
                b.pid = None;
                b.last_error = Some(msg.clone());
                self.save_box(&mut b)?;
                self.box_event(u.login.as_str(), &msg);
                Err(ServiceError::BoxFailed(msg))
            }
        }
    }

    /// running/error/starting -> stopping -> `end` (stopped).
    async fn do_stop(self: &Arc<Self>, u: &UserRecord, end: &str) -> Result<()> {
        let m = self.manager()?;
        let plan = self.plan_for(u)?;
        let mut b = self.box_record(u)?;
        let running = running_of(&b);
        b.desired = "stopped".into();
        b.observed = "stopping".into();
        self.save_box(&mut b)?;
        self.box_event(u.login.as_str(), "stopping");
        let rt = m.runtime.clone();
        let grace = m.grace;
        let cgroup = plan.cgroup.clone();
        let home_mount = smb_mount(&plan);
        let r = blocking(move || {
            rt.run(Command::Stop {
                cgroup: &cgroup,
                running,
                grace,
                home_mount: home_mount.as_deref(),
            })
        })
        .await;
        let mut b = self.box_record(u)?;
        match r {
            Ok(_) => {
                b.observed = end.into();
                b.pid = None;
                b.init_start = None;
                b.started_at = None;
                self.save_box(&mut b)?;
                self.box_event(u.login.as_str(), end);
                Ok(())
            }
            Err(e) => {
                let msg = format!("stop failed at step {}: {}", e.step(), chain(&e));
                b.observed = "error".into();
                b.last_error = Some(msg.clone());
                self.save_box(&mut b)?;
                self.box_event(u.login.as_str(), &msg);
                Err(ServiceError::BoxFailed(msg))
            }
        }
    }

    /// Watches a box's init: if it dies while the box is supposed to run (not through a
    /// stop), the box goes to `error` and its leftovers are cleaned.
    fn watch(self: &Arc<Self>, user_id: i64, r: Running) {
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = boxes::wait_exit(r.pid).await {
                warn!(?e, pid = r.pid, "cannot watch box init");
                return;
            }
            let Ok(Some(u)) = app.store.user_by_id(user_id) else {
                return;
            };
            let Ok(m) = app.manager() else { return };
            let lock = m.lock(user_id);
            let _g = lock.lock().await;
            let Ok(mut b) = app.box_record(&u) else {
                return;
            };
            if b.observed != "running" || b.pid != Some(r.pid) {
                return; // stopped on purpose, or already replaced
            }
            let msg = "the box's init exited unexpectedly".to_string();
            warn!(user = %u.login, pid = r.pid, "box init exited");
            app.box_event(u.login.as_str(), &msg);
            if let Ok(plan) = app.plan_for(&u) {
                let rt = m.runtime.clone();
                let _ = blocking(move || {
                    rt.run(Command::Stop {
                        cgroup: &plan.cgroup,
                        running: None,
                        grace: Duration::ZERO,
                        home_mount: smb_mount(&plan).as_deref(),
                    })
                })
                .await;
            }
            b.observed = "error".into();
            b.pid = None;
            b.last_error = Some(msg);
            let _ = app.save_box(&mut b);
        });
    }

    /// Applies `req.action` to every box the filter selects, one after another.
    pub async fn box_bulk(
        self: &Arc<Self>,
        actor: &Actor,
        req: &BulkRequest,
    ) -> Result<Vec<BulkResult>> {
        self.require_admin(actor)?;
        if !["start", "stop", "restart"].contains(&req.action.as_str()) {
            return Err(ServiceError::invalid(
                "invalid_action",
                format!("unknown action {:?} (start, stop or restart)", req.action),
            ));
        }
        let filter = BoxFilter {
            state: req.state.clone(),
            user: None,
            role: req.role.clone(),
        };
        let selected: Vec<BoxView> = self
            .list_boxes(actor, &filter)?
            .into_iter()
            .filter(|b| req.profile.as_deref().is_none_or(|p| p == b.profile))
            .collect();
        let mut out = vec![];
        for b in selected {
            let r = match req.action.as_str() {
                "start" => self.box_start(actor, &b.user).await,
                "stop" => self.box_stop(actor, &b.user).await,
                _ => self.box_restart(actor, &b.user).await,
            };
            out.push(BulkResult {
                user: b.user,
                ok: r.is_ok(),
                error: r.err().map(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    /// Prepares a command in a running box (authorization, audit, the helper invocation).
    pub fn box_exec_prepare(
        &self,
        actor: &Actor,
        user: &str,
        body: &ExecBody,
    ) -> Result<PreparedExec> {
        let result = (|| {
            let u = self.user_for(actor, user)?;
            if body.argv.is_empty() || body.argv[0].is_empty() {
                return Err(ServiceError::invalid(
                    "invalid_command",
                    "argv must not be empty",
                ));
            }
            if body.argv.iter().any(|a| a.contains('\0'))
                || body
                    .env
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
            {
                return Err(ServiceError::invalid(
                    "invalid_command",
                    "arguments and environment may not contain NUL (or '=' in a name)",
                ));
            }
            let timeout = body.timeout_secs.unwrap_or(60);
            if timeout == 0 || timeout > 3600 {
                return Err(ServiceError::invalid(
                    "invalid_timeout",
                    "timeout_secs must be 1..=3600",
                ));
            }
            let m = self.manager()?;
            let b = self.box_record(&u)?;
            let running = running_of(&b)
                .filter(|r| b.observed == "running" && BoxRuntime::alive(r))
                .ok_or_else(|| conflict("box_not_running", "the box is not running"))?;
            let plan = self.plan_for(&u)?;
            let compiled = m
                .seccomp
                .get(u.profile.as_str())
                .ok_or(ServiceError::Internal("no seccomp filter for the profile"))?;
            let mut env: Vec<(String, String)> = body
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            env.sort();
            let req = ExecRequest {
                argv: body.argv.clone(),
                env,
                cwd: body.cwd.as_ref().map(PathBuf::from),
                pty: None,
            };
            let (command, mut stdin) = m
                .runtime
                .exec_command(&plan, &running, compiled, &req)
                .map_err(|e| {
                    error!(?e, "cannot prepare exec");
                    ServiceError::Internal("cannot prepare the command")
                })?;
            if let Some(input) = &body.stdin {
                stdin.extend_from_slice(input.as_bytes());
            }
            Ok(PreparedExec {
                command,
                stdin,
                timeout: Duration::from_secs(timeout),
            })
        })();
        // The command name only: arguments may hold what the user would not want logged.
        let what = format!(
            "{user}: {}",
            body.argv.first().map(String::as_str).unwrap_or("")
        );
        self.audit_result(actor, "box.exec", &what, &result);
        result
    }

    /// The helper invocation for the user's login shell on a new terminal in their
    /// running box (service::terminal).
    pub(crate) fn shell_command(
        &self,
        u: &UserRecord,
        size: boxes::spec::PtySize,
    ) -> Result<(std::process::Command, Vec<u8>)> {
        let m = self.manager()?;
        let b = self.box_record(u)?;
        let running = running_of(&b)
            .filter(|r| b.observed == "running" && BoxRuntime::alive(r))
            .ok_or_else(|| conflict("box_not_running", "the box is not running"))?;
        let plan = self.plan_for(u)?;
        let compiled = m
            .seccomp
            .get(u.profile.as_str())
            .ok_or(ServiceError::Internal("no seccomp filter for the profile"))?;
        let req = ExecRequest {
            argv: vec!["/bin/bash".into(), "-l".into()],
            env: vec![("TERM".into(), "xterm-256color".into())],
            cwd: None,
            pty: Some(size),
        };
        m.runtime
            .exec_command(&plan, &running, compiled, &req)
            .map_err(|e| {
                error!(?e, "cannot prepare the shell");
                ServiceError::Internal("cannot prepare the shell")
            })
    }

    /// Runs a command in a running box to completion: output, exit code, timeout.
    pub async fn box_exec(&self, actor: &Actor, user: &str, body: &ExecBody) -> Result<ExecOutput> {
        let prepared = self.box_exec_prepare(actor, user, body)?;
        run_exec(prepared).await
    }

    /// At daemon start: adopt boxes whose init still runs, clean up and (re)start the rest
    /// as their desired state says, expire ephemeral boxes past their TTL, and remove box
    /// cgroups that belong to no user.
    pub async fn reconcile_boxes(self: &Arc<Self>) -> Result<()> {
        let m = self.manager()?;
        let users = self.store.list_users(&Default::default())?;
        let mut known = BTreeSet::new();
        for u in &users {
            known.insert(format!("box-{}", u.login));
        }
        let rt = m.runtime.clone();
        let swept = blocking(move || rt.run(Command::Sweep { known: &known })).await;
        match swept {
            Ok(Outcome::Swept(names)) if !names.is_empty() => {
                warn!(?names, "removed box cgroups of no known user")
            }
            Err(e) => error!(error = %chain(&e), "cannot sweep box cgroups"),
            _ => {}
        }
        for u in users {
            if let Err(e) = self.reconcile_one(&u).await {
                error!(user = %u.login, error = %e, "cannot reconcile box");
            }
        }
        Ok(())
    }

    async fn reconcile_one(self: &Arc<Self>, u: &UserRecord) -> Result<()> {
        let m = self.manager()?;
        let lock = m.lock(u.id);
        let _g = lock.lock().await;
        let mut b = self.box_record(u)?;
        let expired = b.expires_at.is_some_and(|t| t <= now());
        if let Some(r) = running_of(&b) {
            if b.observed == "running" && BoxRuntime::alive(&r) && !expired {
                info!(user = %u.login, pid = r.pid, "adopted running box");
                m.runtime.keep_netns(u.login.as_str(), &r);
                self.box_event(u.login.as_str(), "adopted after a daemon restart");
                self.watch(u.id, r);
                return Ok(());
            }
        }
        if expired {
            info!(user = %u.login, "ephemeral box expired while the daemon was away");
            self.box_event(u.login.as_str(), "expired (TTL)");
            return self.do_remove(u).await;
        }
        // Whatever a crash left (a half-started or half-stopped box) goes.
        if b.observed != "absent" && b.observed != "stopped" {
            let plan = self.plan_for(u)?;
            let rt = m.runtime.clone();
            let running = running_of(&b);
            let r = blocking(move || {
                rt.run(Command::Stop {
                    cgroup: &plan.cgroup,
                    running,
                    grace: Duration::ZERO,
                    home_mount: smb_mount(&plan).as_deref(),
                })
            })
            .await;
            b = self.box_record(u)?;
            if let Err(e) = r {
                b.observed = "error".into();
                b.last_error = Some(format!("cleanup after restart failed: {}", chain(&e)));
                self.save_box(&mut b)?;
                return Ok(());
            }
            if b.observed != "error" {
                b.observed = "stopped".into();
            }
            b.pid = None;
            b.init_start = None;
            self.save_box(&mut b)?;
        }
        if b.desired == "running" {
            self.box_event(u.login.as_str(), "starting again after a daemon restart");
            // Ephemeral boxes do not come back: their content is gone with them.
            let plan = self.plan_for(u)?;
            if plan.persistence == Persistence::Persistent {
                self.do_start(u).await?;
            } else {
                b = self.box_record(u)?;
                b.desired = "stopped".into();
                self.save_box(&mut b)?;
            }
        }
        Ok(())
    }

    /// Destroys ephemeral boxes whose TTL has passed (run periodically).
    pub async fn expire_boxes(self: &Arc<Self>) -> Result<usize> {
        let t = now();
        let mut n = 0;
        for b in self.store.list_boxes()? {
            if b.expires_at.is_none_or(|e| e > t) || b.observed == "absent" {
                continue;
            }
            let Some(u) = self.store.user_by_id(b.user_id)? else {
                continue;
            };
            let m = self.manager()?;
            let lock = m.lock(u.id);
            let Ok(_g) = lock.try_lock() else { continue };
            info!(user = %u.login, "ephemeral box expired");
            self.box_event(u.login.as_str(), "expired (TTL)");
            let r = self.do_remove(&u).await;
            self.write_audit(
                "daemon".into(),
                None,
                "local",
                "box.expire",
                u.login.as_str(),
                if r.is_ok() { "ok" } else { "error" },
                r.err().map(|e| e.to_string()),
            );
            n += 1;
        }
        Ok(n)
    }

    /// Deletes a user after stopping and removing their box (the home stays).
    pub async fn delete_user_with_box(self: &Arc<Self>, actor: &Actor, key: &str) -> Result<()> {
        if self.boxes.is_some() && actor.principal.is_admin() {
            if let Ok(u) = self.user_for(actor, key) {
                self.remove_box_of(&u).await?;
            }
        }
        self.delete_user(actor, key)
    }

    /// Stops and removes a user's box before the user is deleted.
    pub async fn remove_box_of(self: &Arc<Self>, u: &UserRecord) -> Result<()> {
        if self.boxes.is_none() {
            return Ok(());
        }
        let m = self.manager()?;
        let lock = m.lock(u.id);
        let _g = lock.lock().await;
        self.do_remove(u).await
    }
}

fn running_of(b: &BoxRecord) -> Option<Running> {
    Some(Running {
        pid: b.pid?,
        start_time: b.init_start?,
        userns: b.userns.unwrap_or(false),
    })
}

/// The error and its sources, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, boxes::RuntimeError> + Send + 'static,
) -> Result<T, boxes::RuntimeError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(boxes::RuntimeError::Helper {
            path: "spawn_blocking".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl From<boxes::RuntimeError> for ServiceError {
    fn from(e: boxes::RuntimeError) -> ServiceError {
        ServiceError::BoxFailed(format!("{} failed: {}", e.step(), chain(&e)))
    }
}

const OUTPUT_CAP: usize = 1 << 20;

/// Runs a prepared command to completion, collecting capped output.
pub async fn run_exec(p: PreparedExec) -> Result<ExecOutput> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::from(p.command);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        error!(?e, "cannot spawn the exec helper");
        ServiceError::Internal("cannot start the command")
    })?;
    let mut stdin = child.stdin.take();
    let input = p.stdin;
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input).await;
        }
        drop(stdin);
    });
    let out_task = tokio::spawn(read_capped(child.stdout.take()));
    let err_task = tokio::spawn(read_capped(child.stderr.take()));
    let (code, timed_out) = match tokio::time::timeout(p.timeout, child.wait()).await {
        Ok(Ok(status)) => (status.code().unwrap_or(125), false),
        Ok(Err(e)) => {
            error!(?e, "exec helper wait failed");
            return Err(ServiceError::Internal("the command was lost"));
        }
        Err(_) => {
            // Killing the helper takes the command with it (pdeathsig).
            let _ = child.kill().await;
            (124, true)
        }
    };
    writer.abort();
    let (stdout, t1) = out_task.await.unwrap_or_default();
    let (stderr, t2) = err_task.await.unwrap_or_default();
    Ok(ExecOutput {
        exit_code: code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
        truncated: t1 || t2,
    })
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut truncated = false;
    if let Some(mut r) = r {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                    truncated |= n > room;
                }
            }
        }
    }
    (buf, truncated)
}

/// The host mount point of `plan`'s home when it is an SMB share (unmounted on stop).
fn smb_mount(plan: &BoxPlan) -> Option<std::path::PathBuf> {
    match &plan.home.source {
        policy::plan::HomeSource::Smb { mountpoint, .. } => Some(mountpoint.clone()),
        policy::plan::HomeSource::Local { .. } => None,
    }
}
