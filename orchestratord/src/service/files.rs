//! The file API's use cases: authorise (who may act for the user, and what the user's
//! profile allows), normalise the path ([`HomePath`]), run the operation in `runtime`
//! with the user's ids, audit every write, delete and rename with its path (never its
//! contents), and turn errno values into named errors.

use std::fs::File;

use base64::Engine;
use nix::errno::Errno;
use policy::config::{HomesConfig, LocalQuota};
use policy::files::{Cursor, HomePath, ListSpec};
use policy::profile::Access;
use policy::Role;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{Actor, App, Principal, Result, ServiceError};
use crate::runtime::files::{
    self as rt, Chunk, CopyOptions, Entry, FilesError, FsId, Home, WriteOptions,
};
use crate::runtime::quota::{QuotaError, QuotaHome, Resize, Tools};
use crate::runtime::smb;
use crate::store::UserRecord;

/// One file or directory as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Final path component (empty for the home itself).
    pub name: String,
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char` or `block`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// Permission bits in octal, e.g. `"644"`.
    #[schema(value_type = String)]
    pub mode: Octal,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, RFC 3339 UTC.
    #[schema(value_type = String)]
    pub mtime: super::Rfc3339,
    /// Modification time in nanoseconds since the epoch.
    #[schema(value_type = String)]
    pub mtime_ns: Decimal,
    /// Where a symlink points (resolved inside the home).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl From<Entry> for FileEntry {
    fn from(e: Entry) -> Self {
        FileEntry {
            name: e.name,
            kind: e.kind.as_str(),
            size: e.size,
            mode: Octal(e.mode),
            uid: e.uid,
            gid: e.gid,
            mtime: super::Rfc3339(e.mtime_ns.div_euclid(1_000_000_000) as i64),
            mtime_ns: Decimal(e.mtime_ns),
            target: e.target,
        }
    }
}

/// Permission bits, shown as an octal string (`"644"`); written without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Octal(pub u32);

impl Serialize for Octal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:o}", self.0))
    }
}

/// A 128-bit integer shown as a decimal string (JSON numbers lose precision past 2^53);
/// written without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal(pub i128);

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An upload or copy in flight, recorded in the staging table until dropped.
pub(crate) struct Staging<'a> {
    app: &'a App,
    id: Option<i64>,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            if let Err(err) = self.app.store.remove_staging(id) {
                error!(%err, "cannot update the staging table");
            }
        }
    }
}

/// A box's home as its status shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeView {
    /// `local` or `smb`.
    pub backend: &'static str,
    /// `ok`, `not_mounted`, `failed` or `unresponsive` (a probe that got no answer
    /// within two seconds: a dead server).
    pub health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Quota images: bytes used and the size of the filesystem (what the home really
    /// has: a changed quota can be pending, see `detail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Quota images: the quota of the user's profile (`limits.disk`) in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

/// Probes the home of `plan` (bounded in time; see [`smb::probe`]).
pub fn home_view(plan: &policy::BoxPlan) -> HomeView {
    use policy::plan::HomeSource;
    let limit = crate::runtime::boxes::HOME_PROBE_LIMIT;
    match &plan.home.source {
        HomeSource::Local { path } => {
            let mut v = HomeView {
                backend: "local",
                health: "ok",
                detail: None,
                used_bytes: None,
                size_bytes: None,
                quota_bytes: None,
            };
            if let Some(image) = &plan.home.image {
                let quota = plan.home.quota.bytes();
                v.quota_bytes = Some(quota);
                let h = smb::probe(path, limit);
                v.health = h.as_str();
                if let smb::Health::Failed(d) = h {
                    v.detail = Some(d);
                } else if h == smb::Health::Ok {
                    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
                        let frag = st.fragment_size();
                        v.size_bytes = Some(st.blocks() * frag);
                        v.used_bytes = Some((st.blocks() - st.blocks_free()) * frag);
                    }
                    v.detail = quota_note(path, image, quota, v.used_bytes);
                }
            }
            v
        }
        HomeSource::Smb { mountpoint, .. } => {
            let h = smb::probe(mountpoint, limit);
            HomeView {
                backend: "smb",
                health: h.as_str(),
                detail: match h {
                    smb::Health::Failed(d) => Some(d),
                    _ => None,
                },
                used_bytes: None,
                size_bytes: None,
                quota_bytes: None,
            }
        }
    }
}

/// Says why a mounted quota home's filesystem does not have its quota's size.
fn quota_note(
    mountpoint: &std::path::Path,
    image: &std::path::Path,
    quota: u64,
    used: Option<u64>,
) -> Option<String> {
    use std::cmp::Ordering;
    let fs = match crate::runtime::quota::mounted_size(mountpoint, image) {
        Ok(fs) => fs,
        Err(e) => {
            return Some(format!(
                "cannot read the home's size: {}",
                super::boxes::chain(&e)
            ))
        }
    };
    let size = fs.bytes();
    match fs.compared_to(quota) {
        Ordering::Equal => None,
        Ordering::Less => Some(format!(
            "quota grow from {size} to {quota} bytes pending: online at the next box start or \
             file access, else when the home is next mounted (see the audit log)"
        )),
        Ordering::Greater if used.is_some_and(|u| u > quota) => Some(format!(
            "quota shrink from {size} to {quota} bytes impossible: more than that is in use"
        )),
        Ordering::Greater => Some(format!(
            "quota shrink from {size} to {quota} bytes pending until the home is unmounted \
             (if the data fits)"
        )),
    }
}

/// Most directory watches (file WebSockets) one user may have open at once.
pub const MAX_WATCHES_PER_USER: usize = 8;

/// Most transfers (downloads and uploads in flight) one user may have at once: each holds
/// a blocking thread of the daemon for as long as the client takes, so one user must not
/// be able to take them all.
pub const MAX_TRANSFERS_PER_USER: usize = 8;

/// Per-user counts of something bounded (open watches, transfers in flight).
#[derive(Debug, Default)]
pub struct UserSlots(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

/// One taken slot, given back on drop.
#[derive(Debug)]
pub struct UserSlot {
    slots: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl UserSlots {
    fn take(&self, user: &str, limit: usize) -> Option<UserSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            slots: self.0.clone(),
            user: user.to_string(),
        })
    }
}

/// A directory watch: the inotify instance and the slot it holds.
#[derive(Debug)]
pub struct DirWatch {
    pub inotify: nix::sys::inotify::Inotify,
    pub path: String,
    /// The watched user (by id: a user re-created under the same login is another one).
    pub user_id: i64,
    pub _slot: UserSlot,
}

/// A page of a directory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of a directory as the runtime read it: [`FileList`] once each entry is shown
/// as a [`FileEntry`] (done one entry at a time while the answer is written).
#[derive(Debug, Clone)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
    pub next_cursor: Option<String>,
}

impl From<Listing> for FileList {
    fn from(l: Listing) -> Self {
        FileList {
            path: l.path,
            entries: l.entries.into_iter().map(FileEntry::from).collect(),
            next_cursor: l.next_cursor,
        }
    }
}

/// A file opened for download.
#[derive(Debug)]
pub struct Download {
    pub file: File,
    pub entry: Entry,
    /// Held until the body has been sent (or the client went away).
    pub slot: UserSlot,
}

fn too_many_transfers() -> ServiceError {
    ServiceError::Conflict {
        kind: "too_many_transfers",
        message: format!("at most {MAX_TRANSFERS_PER_USER} downloads and uploads per user at once"),
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MkdirRequest {
    pub path: String,
    /// Create missing parents; an existing directory is then not an error.
    #[serde(default)]
    pub parents: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
    /// Replace an existing target (a file, or an empty directory for a directory).
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CopyRequest {
    pub from: String,
    pub to: String,
    /// Replace an existing file. A directory is only copied to a name that does not
    /// exist yet (409 `file_exists`, also with `overwrite`).
    #[serde(default)]
    pub overwrite: bool,
    /// Copy a directory with everything in it: symlinks as symlinks (never followed),
    /// FIFOs, sockets and devices left out. Without it a directory answers 422
    /// `is_a_directory`.
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChmodRequest {
    /// Octal permission bits, e.g. `"640"`; setuid and setgid are stripped.
    pub mode: String,
}

/// How an upload lands.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    pub overwrite: bool,
    pub mode: u32,
    /// `Content-Length`, when the client sent one: checked against the limit and the free
    /// space before a byte is written.
    pub length: Option<u64>,
}

fn path(s: &str) -> Result<HomePath> {
    HomePath::parse(s).map_err(|e| ServiceError::invalid(e.kind(), e))
}

/// Cursors are opaque to clients: base64url of the policy cursor.
pub fn encode_cursor(c: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.encode())
}

pub fn decode_cursor(s: &str) -> Result<Cursor> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| Cursor::decode(&t))
        .ok_or_else(|| ServiceError::invalid("invalid_cursor", "cursor is not one this API issued"))
}

/// Maps a runtime failure to what the client may know. Anything unexpected is logged and
/// becomes a generic internal error.
fn files_error(e: FilesError) -> ServiceError {
    let conflict = |kind, message: &str| ServiceError::Conflict {
        kind,
        message: message.into(),
    };
    match &e {
        FilesError::Io { errno, path, op } => match errno {
            Errno::ENOENT => ServiceError::NotFound { what: "file" },
            Errno::EACCES | Errno::EPERM => {
                ServiceError::Forbidden("permission denied by the file's owner or mode")
            }
            Errno::EEXIST => conflict("file_exists", &format!("{path} already exists")),
            Errno::ENOTEMPTY => conflict("not_empty", &format!("{path} is a non-empty directory")),
            Errno::ENOTDIR => ServiceError::invalid(
                "not_a_directory",
                format!("a component of {path} is not a directory"),
            ),
            Errno::EISDIR => {
                ServiceError::invalid("is_a_directory", format!("{path} is a directory"))
            }
            Errno::ELOOP => ServiceError::invalid(
                "path_refused",
                format!("{path} leads through a link the file API does not follow"),
            ),
            Errno::EXDEV => {
                ServiceError::invalid("cross_device", format!("{path} is on another filesystem"))
            }
            Errno::ENAMETOOLONG => {
                ServiceError::invalid("invalid_path", format!("{path} is too long"))
            }
            Errno::EINVAL => {
                ServiceError::invalid("invalid_operation", format!("cannot {op} {path}"))
            }
            Errno::EBUSY => ServiceError::invalid(
                "home_root",
                "the home itself cannot be the target of this operation",
            ),
            Errno::ENOSPC | Errno::EDQUOT => ServiceError::NoSpace,
            Errno::ETXTBSY => conflict("busy", &format!("{path} is busy")),
            Errno::EOPNOTSUPP => ServiceError::invalid(
                "not_supported",
                format!("the home's filesystem cannot {op} {path} this way"),
            ),
            _ => {
                error!(
                    err = format!("{:#}", anyhow::Error::new(e)),
                    "file operation failed"
                );
                ServiceError::Internal("file operation failed")
            }
        },
        FilesError::NotRegular { path } => {
            ServiceError::invalid("not_a_file", format!("{path} is not a regular file"))
        }
        FilesError::IsDirectory { path } => ServiceError::invalid(
            "is_a_directory",
            format!("{path} is a directory: copy it with recursive"),
        ),
        FilesError::IntoItself { from, to } => ServiceError::invalid(
            "into_itself",
            format!("cannot copy {from} into itself ({to} is inside it)"),
        ),
        FilesError::TooDeep { path } => ServiceError::invalid(
            "too_deep",
            format!("{path} is nested deeper than {} directories", rt::MAX_DEPTH),
        ),
        FilesError::TooLarge { limit } => ServiceError::TooLarge { limit: *limit },
        FilesError::Aborted => {
            ServiceError::invalid("upload_aborted", "the upload body ended early")
        }
        FilesError::Home { .. } | FilesError::Creds(_) | FilesError::Thread => {
            error!(
                err = format!("{:#}", anyhow::Error::new(e)),
                "file operation failed"
            );
            ServiceError::Internal("file operation failed")
        }
    }
}

impl App {
    /// The user whose home `actor` may read (or, with `write`, change): the profile's
    /// `files` access and the demo rule decide.
    fn files_user(&self, actor: &Actor, user: &str, write: bool) -> Result<UserRecord> {
        let u = self.user_for(actor, user)?;
        let profile = self
            .profiles
            .get(u.profile.as_str())
            .ok_or(ServiceError::Internal("user's profile is gone"))?;
        match profile.spec.files {
            Access::None => {
                return Err(ServiceError::Forbidden(
                    "file access is disabled by this user's profile",
                ))
            }
            Access::Ro if write => {
                return Err(ServiceError::Forbidden("files are read-only for this user"))
            }
            _ => {}
        }
        let demo_actor = matches!(&actor.principal, Principal::User(me) if me.role == Role::Demo);
        if write && (u.role == Role::Demo || demo_actor) {
            return Err(ServiceError::Forbidden("demo users are read-only"));
        }
        Ok(u)
    }

    /// A single-use ticket (30 s) for a browser to open the directory watch WebSocket of
    /// `user`'s home (browsers cannot set an Authorization header on a WebSocket).
    pub fn files_watch_ticket(
        &self,
        actor: &Actor,
        user: &str,
    ) -> Result<super::terminal::TicketView> {
        self.audited(actor, "files.watch.ticket", user, || {
            let u = self.files_user(actor, user, false)?;
            self.mint_ticket(
                super::terminal::TicketPurpose::FilesWatch,
                &u,
                actor,
                None,
                true,
            )
        })
    }

    /// The user's home, if the actor may act for the user and the user's profile (and,
    /// for writes, role and the actor's own role) allows this kind of access.
    async fn home_for(&self, actor: &Actor, user: &str, write: bool) -> Result<(UserRecord, Home)> {
        let u = self.files_user(actor, user, write)?;
        let id = FsId {
            uid: u.uid,
            gid: u.gid,
        };
        let home = match &self.config.homes {
            HomesConfig::Local(local) => {
                let p = self.config.state_dir.join("homes").join(u.login.as_str());
                if local.quota == LocalQuota::Image {
                    // The same image and size a box start uses: the plan's.
                    let plan = self.plan_for(&u)?;
                    self.ensure_quota_home(&u, &plan).await?;
                    Home::open(&p, id).map_err(files_error)?
                } else {
                    Home::open_local(&p, id).map_err(files_error)?
                }
                .with_list_cache(self.listings.clone())
            }
            HomesConfig::Smb(_) => {
                // An SMB home is mounted while its box runs; the file API uses that mount
                // when it is healthy and never mounts one itself.
                let plan = self.plan_for(&u)?;
                let policy::plan::HomeSource::Smb { mountpoint, .. } = &plan.home.source else {
                    return Err(ServiceError::Internal("smb config without an smb plan"));
                };
                match smb::probe(mountpoint, crate::runtime::boxes::HOME_PROBE_LIMIT) {
                    smb::Health::Ok => Home::open(mountpoint, id).map_err(files_error)?,
                    smb::Health::NotMounted => {
                        return Err(ServiceError::Unavailable(
                            "the SMB home is mounted only while the box runs",
                        ))
                    }
                    _ => {
                        return Err(ServiceError::Unavailable(
                            "the SMB home's server does not answer",
                        ))
                    }
                }
            }
        };
        self.sweep_staging(&u, &home).await;
        Ok((u, home))
    }

    fn file_target(u: &UserRecord, p: &HomePath) -> String {
        format!("{}:{p}", u.login)
    }

    /// Mounts the quota home of `plan` (which has an image) and brings it to the plan's
    /// size where it can (`runtime::quota`), on a blocking thread: making, copying or
    /// resizing an image takes a while. A resize is logged and audited (`home.resize`,
    /// by the daemon); a resize that fails or has to wait leaves the home usable.
    pub(crate) async fn ensure_quota_home(
        &self,
        u: &UserRecord,
        plan: &policy::BoxPlan,
    ) -> Result<()> {
        let image = plan
            .home
            .image
            .clone()
            .ok_or(ServiceError::Internal("plan without a home image"))?;
        let policy::plan::HomeSource::Local { path } = &plan.home.source else {
            return Err(ServiceError::Internal(
                "a quota image for a home that is not local",
            ));
        };
        let quota = QuotaHome {
            image,
            mountpoint: path.clone(),
            size: plan.home.quota.bytes(),
            uid: u.uid,
            gid: u.gid,
        };
        let r = tokio::task::spawn_blocking(move || quota.ensure(&Tools::default()))
            .await
            .map_err(|_| ServiceError::Internal("home mount task failed"))?;
        match r {
            Ok(resize) => {
                self.report_resize(u.login.as_str(), &resize);
                Ok(())
            }
            Err(e) => {
                let err = super::boxes::chain(&e);
                error!(err, user = %u.login, "failed to mount home");
                Err(ServiceError::Unavailable(
                    "the home's quota image cannot be mounted",
                ))
            }
        }
    }

    /// Once per daemon run and user: removes the hidden files and trees that earlier runs
    /// staged in the user's home and never finished (a daemon killed mid-upload or
    /// mid-copy), in the directories the staging table names. Failures are logged: the
    /// request goes on, and the next run tries again (the rows stay).
    async fn sweep_staging(&self, u: &UserRecord, home: &Home) {
        let first = self
            .swept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(u.id);
        if !first {
            return;
        }
        let run = format!("{:016x}", rt::run_id());
        let rows = match self.store.stale_staging(u.id, &run) {
            Ok(rows) => rows,
            Err(err) => {
                error!(%err, user = %u.login, "cannot read the staging table");
                return;
            }
        };
        for (id, dir) in rows {
            let Ok(p) = policy::files::HomePath::parse(&dir) else {
                let _ = self.store.remove_staging(id);
                continue;
            };
            let h = home.clone();
            match rt::run_as(home.id(), move || h.sweep_staging(&p)).await {
                Ok(removed) => {
                    if removed > 0 {
                        info!(user = %u.login, dir, removed, "removed unfinished uploads and copies of an earlier run");
                    }
                    if let Err(err) = self.store.remove_staging(id) {
                        error!(%err, "cannot update the staging table");
                    }
                }
                Err(err) => {
                    let err = format!("{:#}", anyhow::Error::new(err));
                    warn!(err, user = %u.login, dir, "cannot remove unfinished uploads and copies of an earlier run");
                }
            }
        }
    }

    /// Records an upload or copy staging in `dir` until the returned guard drops, so a
    /// daemon killed meanwhile leaves a row that the next run sweeps (see
    /// [`App::sweep_staging`]). A failure to record is logged and the work goes on.
    fn record_staging(&self, u: &UserRecord, target: &policy::files::HomePath) -> Staging<'_> {
        let dir = match target.split_last() {
            Ok((parent, _)) => parent.to_string(),
            Err(_) => {
                return Staging {
                    app: self,
                    id: None,
                }
            }
        };
        let run = format!("{:016x}", rt::run_id());
        match self.store.add_staging(u.id, &run, &dir, super::now()) {
            Ok(id) => Staging {
                app: self,
                id: Some(id),
            },
            Err(err) => {
                error!(%err, user = %u.login, "cannot record a staging");
                Staging {
                    app: self,
                    id: None,
                }
            }
        }
    }

    /// Logs and audits what [`QuotaHome::ensure`] did about a home's size.
    fn report_resize(&self, login: &str, resize: &Resize) {
        let (outcome, detail) = match resize {
            Resize::None => return,
            Resize::Done { from, to } => {
                info!(user = login, from, to, "resized the home's quota image");
                ("ok", format!("from {from} to {to} bytes"))
            }
            Resize::Pending { size, wanted } => {
                warn!(
                    user = login,
                    size, wanted, "home quota resize pending until the home is unmounted"
                );
                // The audit's outcomes are ok/denied/invalid/error: nothing failed here.
                (
                    "ok",
                    format!(
                        "pending: {size} bytes kept, quota {wanted}, until the home is unmounted"
                    ),
                )
            }
            Resize::Failed { wanted, error } => {
                let err = super::boxes::chain(error);
                error!(
                    err,
                    user = login,
                    wanted,
                    "failed to resize the home's quota image"
                );
                let outcome = match error {
                    // The quota is too small for the data in the home.
                    QuotaError::ShrinkTooSmall { .. } => "invalid",
                    _ => "error",
                };
                (outcome, format!("quota {wanted}: {err}"))
            }
        };
        self.box_event(login, &format!("home quota resize: {detail}"));
        self.write_audit(
            "daemon".into(),
            None,
            "local",
            "home.resize",
            login,
            outcome,
            Some(detail),
        );
    }

    async fn audited_file<T: Send + 'static>(
        &self,
        actor: &Actor,
        action: &str,
        target: String,
        detail: Option<String>,
        home: Home,
        f: impl FnOnce(Home) -> rt::Result<T> + Send + 'static,
    ) -> Result<T> {
        let r = rt::run_as(home.id(), move || f(home))
            .await
            .map_err(files_error);
        match &r {
            Ok(_) => self.audit(actor, action, &target, "ok", detail),
            Err(e) => {
                let why = match e {
                    ServiceError::Internal(_) => "internal error".to_string(),
                    other => other.to_string(),
                };
                let d = match detail {
                    Some(d) => format!("{d}; {why}"),
                    None => why,
                };
                self.audit(actor, action, &target, e.outcome(), Some(d));
            }
        }
        r
    }

    /// Gives back the memory of directory listings nobody walked for a minute.
    pub fn sweep_listings(&self) {
        self.listings.sweep();
    }

    pub async fn files_list(
        &self,
        actor: &Actor,
        user: &str,
        dir: &str,
        spec: ListSpec,
    ) -> Result<Listing> {
        let (_, home) = self.home_for(actor, user, false).await?;
        let p = path(dir)?;
        let shown = p.to_string();
        let page = rt::run_as(home.id(), move || home.list(&p, &spec))
            .await
            .map_err(files_error)?;
        Ok(Listing {
            path: shown,
            entries: page.entries,
            next_cursor: page.next.as_ref().map(encode_cursor),
        })
    }

    /// Watches a directory of the user's home (read access), at most
    /// [`MAX_WATCHES_PER_USER`] at once per user (409 `too_many_watches`).
    pub async fn files_watch(&self, actor: &Actor, user: &str, dir: &str) -> Result<DirWatch> {
        let (u, home) = self.home_for(actor, user, false).await?;
        let p = path(dir)?;
        let shown = p.to_string();
        let slot = self
            .watches
            .take(u.login.as_str(), MAX_WATCHES_PER_USER)
            .ok_or_else(|| ServiceError::Conflict {
                kind: "too_many_watches",
                message: format!("at most {MAX_WATCHES_PER_USER} directory watches per user"),
            })?;
        let inotify = rt::run_as(home.id(), move || home.watch(&p))
            .await
            .map_err(files_error)?;
        Ok(DirWatch {
            inotify,
            path: shown,
            user_id: u.id,
            _slot: slot,
        })
    }

    /// Whether a watch opened by `actor` for user `user_id` may stay open: the token is
    /// still valid (not revoked, not expired, its user not disabled) and the user still
    /// exists and may be acted for. Open sockets are re-checked with this, so revoking a
    /// token or deleting a user ends them.
    pub fn watch_still_allowed(&self, actor: &Actor, user_id: i64) -> bool {
        let now = super::now();
        if let Some(id) = &actor.token_id {
            match self.store.token(id) {
                Ok(Some(t)) if t.revoked_at.is_none() && t.expires_at > now => {}
                _ => return false,
            }
        }
        if let Principal::User(me) = &actor.principal {
            match self.store.user_by_id(me.id) {
                Ok(Some(u)) if !u.disabled => {}
                _ => return false,
            }
        }
        match self.store.user_by_id(user_id) {
            Ok(Some(u)) => actor.principal.may_act_for(&u),
            _ => false,
        }
    }

    pub async fn files_stat(&self, actor: &Actor, user: &str, p: &str) -> Result<FileEntry> {
        let (_, home) = self.home_for(actor, user, false).await?;
        let p = path(p)?;
        let e = rt::run_as(home.id(), move || home.stat(&p))
            .await
            .map_err(files_error)?;
        Ok(FileEntry::from(e))
    }

    pub async fn files_open(&self, actor: &Actor, user: &str, p: &str) -> Result<Download> {
        let (u, home) = self.home_for(actor, user, false).await?;
        let p = path(p)?;
        let slot = self
            .transfers
            .take(u.login.as_str(), MAX_TRANSFERS_PER_USER)
            .ok_or_else(too_many_transfers)?;
        let (file, entry) = rt::run_as(home.id(), move || home.open_read(&p))
            .await
            .map_err(files_error)?;
        Ok(Download { file, entry, slot })
    }

    /// Receives an upload from `rx` (see [`rt::Home::upload`]).
    pub async fn files_upload(
        &self,
        actor: &Actor,
        user: &str,
        p: &str,
        opts: UploadOptions,
        rx: mpsc::Receiver<Chunk>,
    ) -> Result<FileEntry> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let p = path(p)?;
        let _slot = self
            .transfers
            .take(u.login.as_str(), MAX_TRANSFERS_PER_USER)
            .ok_or_else(too_many_transfers)?;
        let limit = self.config.files.upload_limit.bytes();
        let target = Self::file_target(&u, &p);
        if let Some(len) = opts.length {
            if len > limit {
                self.audit(
                    actor,
                    "file.write",
                    &target,
                    "invalid",
                    Some("too large".into()),
                );
                return Err(ServiceError::TooLarge { limit });
            }
            if home.available().map_err(files_error)? < len {
                self.audit(
                    actor,
                    "file.write",
                    &target,
                    "invalid",
                    Some("no space".into()),
                );
                return Err(ServiceError::NoSpace);
            }
        }
        let wopts = WriteOptions {
            overwrite: opts.overwrite,
            mode: opts.mode,
            limit,
        };
        let _staging = self.record_staging(&u, &p);
        let e = self
            .audited_file(actor, "file.write", target, None, home, move |h| {
                h.upload(&p, wopts, rx)
            })
            .await?;
        Ok(FileEntry::from(e))
    }

    pub async fn files_mkdir(
        &self,
        actor: &Actor,
        user: &str,
        req: &MkdirRequest,
    ) -> Result<FileEntry> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let p = path(&req.path)?;
        let parents = req.parents;
        let target = Self::file_target(&u, &p);
        let e = self
            .audited_file(actor, "file.mkdir", target, None, home, move |h| {
                h.mkdir(&p, parents, 0o755)
            })
            .await?;
        Ok(FileEntry::from(e))
    }

    pub async fn files_move(
        &self,
        actor: &Actor,
        user: &str,
        req: &MoveRequest,
    ) -> Result<FileEntry> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let from = path(&req.from)?;
        let to = path(&req.to)?;
        let overwrite = req.overwrite;
        let target = Self::file_target(&u, &from);
        let detail = Some(format!("to {to}"));
        let e = self
            .audited_file(actor, "file.rename", target, detail, home, move |h| {
                h.rename(&from, &to, overwrite)
            })
            .await?;
        Ok(FileEntry::from(e))
    }

    /// Copies a file, or with `recursive` a directory tree (see [`rt::Home::copy`]). A
    /// copy holds a transfer slot: a large tree keeps a daemon thread busy.
    pub async fn files_copy(
        &self,
        actor: &Actor,
        user: &str,
        req: &CopyRequest,
    ) -> Result<FileEntry> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let from = path(&req.from)?;
        let to = path(&req.to)?;
        let _slot = self
            .transfers
            .take(u.login.as_str(), MAX_TRANSFERS_PER_USER)
            .ok_or_else(too_many_transfers)?;
        let opts = CopyOptions {
            overwrite: req.overwrite,
            recursive: req.recursive,
            limit: self.config.files.upload_limit.bytes(),
        };
        let target = Self::file_target(&u, &to);
        let detail = if req.recursive {
            format!("from {from}; recursive")
        } else {
            format!("from {from}")
        };
        let _staging = self.record_staging(&u, &to);
        let e = self
            .audited_file(actor, "file.copy", target, Some(detail), home, move |h| {
                h.copy(&from, &to, opts)
            })
            .await?;
        Ok(FileEntry::from(e))
    }

    pub async fn files_delete(
        &self,
        actor: &Actor,
        user: &str,
        p: &str,
        recursive: bool,
    ) -> Result<()> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let p = path(p)?;
        if p.is_root() {
            return Err(ServiceError::invalid(
                "home_root",
                "the home itself cannot be deleted",
            ));
        }
        let target = Self::file_target(&u, &p);
        let detail = recursive.then(|| "recursive".to_string());
        self.audited_file(actor, "file.delete", target, detail, home, move |h| {
            h.delete(&p, recursive)
        })
        .await
    }

    pub async fn files_chmod(
        &self,
        actor: &Actor,
        user: &str,
        p: &str,
        req: &ChmodRequest,
    ) -> Result<FileEntry> {
        let (u, home) = self.home_for(actor, user, true).await?;
        let p = path(p)?;
        let mode = policy::files::parse_mode(&req.mode)
            .map_err(|e| ServiceError::invalid("invalid_mode", e))?;
        let target = Self::file_target(&u, &p);
        let detail = Some(format!("mode {mode:o}"));
        let e = self
            .audited_file(actor, "file.chmod", target, detail, home, move |h| {
                h.chmod(&p, mode)
            })
            .await?;
        Ok(FileEntry::from(e))
    }
}
