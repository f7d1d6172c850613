//! SQLite state (rusqlite, bundled). SQL lives only in this module.
//!
//! The database is the source of truth for desired state: users, token hashes, services,
//! boxes (desired and observed state, subnet slot, uid range), the audit log and per-user
//! desktop state. It runs in WAL mode with `synchronous=NORMAL` (a crash loses at most the
//! last transactions since a checkpoint, never consistency) and foreign keys on, so
//! deleting a user removes their tokens, box row, service assignments and desktop state in
//! the same transaction.
//!
//! One connection behind a mutex: every query here is a short indexed lookup or a small
//! write, well under the cost of the HTTP request around it.

mod migrations;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use policy::{DisplayName, Email, ProfileName, Role, Service, ServiceName, UserName};
use rusqlite::{named_params, params, Connection, OptionalExtension, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0} is already taken")]
    Conflict(&'static str),
    #[error("no free subnet slot left in the pool")]
    PoolExhausted,
    #[error("no free uid left below the box id ranges")]
    UidsExhausted,
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("database schema version {found} is newer than this daemon's {supported}")]
    TooNew { found: i64, supported: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: i64,
    pub login: UserName,
    pub email: Email,
    pub display_name: DisplayName,
    pub role: Role,
    pub profile: ProfileName,
    pub services: BTreeSet<ServiceName>,
    pub uid: u32,
    pub gid: u32,
    pub slot: u32,
    pub disabled: bool,
    pub box_state: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user's box as stored: what it should be and what it was last seen to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxRecord {
    pub user_id: i64,
    pub slot: u32,
    /// `running` or `stopped`.
    pub desired: String,
    /// `absent`, `starting`, `running`, `stopping`, `stopped` or `error`.
    pub observed: String,
    pub pid: Option<i32>,
    pub init_start: Option<u64>,
    pub userns: Option<bool>,
    pub started_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub login: UserName,
    pub email: Email,
    pub display_name: DisplayName,
    pub role: Role,
    pub profile: ProfileName,
    pub services: BTreeSet<ServiceName>,
}

/// Limits the allocator must respect (from the config).
#[derive(Debug, Clone, Copy)]
pub struct Allocation {
    pub uid_min: u32,
    /// First uid that is not a user's (the box id ranges start here).
    pub uid_limit: u32,
    /// Number of /24 slots in the pool.
    pub slots: u32,
}

#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub display_name: Option<DisplayName>,
    pub role: Option<Role>,
    pub profile: Option<ProfileName>,
    pub services: Option<BTreeSet<ServiceName>>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub role: Option<Role>,
    pub profile: Option<ProfileName>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Admin,
    User,
    Service,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::User => "user",
            TokenKind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "admin" => Some(TokenKind::Admin),
            "user" => Some(TokenKind::User),
            "service" => Some(TokenKind::Service),
            _ => None,
        }
    }
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub hash: [u8; 32],
    pub kind: TokenKind,
    pub user_id: Option<i64>,
    pub user_login: Option<String>,
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct StateEntry {
    pub key: String,
    pub value: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub time: i64,
    pub actor: String,
    pub token_id: Option<String>,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub users_by_role: Vec<(String, i64)>,
    pub boxes_by_state: Vec<(String, i64)>,
    pub active_tokens: i64,
    pub services: i64,
    pub audit_entries: i64,
}

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite itself inconsistent (every
        // multi-statement change is a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- users -------------------------------------------------------------------------

    const USER_COLUMNS: &'static str = "u.id, u.login, u.email, u.display_name, u.role, \
        u.profile, u.uid, u.gid, b.slot, u.disabled, b.observed_state, u.created_at, \
        u.updated_at";

    fn user_from_row(conn: &Connection, row: &Row<'_>) -> Result<UserRecord> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("user {what}: {e}"))
        };
        let id: i64 = row.get(0)?;
        let login: String = row.get(1)?;
        let email: String = row.get(2)?;
        let display: String = row.get(3)?;
        let role: String = row.get(4)?;
        let profile: String = row.get(5)?;
        let mut stmt = conn.prepare_cached(
            "SELECT service FROM user_services WHERE user_id = ?1 ORDER BY service",
        )?;
        let services = stmt
            .query_map([id], |r| r.get::<_, String>(0))?
            .map(|s| {
                let s = s?;
                ServiceName::parse(&s).map_err(|e| corrupt("service", &e))
            })
            .collect::<Result<BTreeSet<_>>>()?;
        Ok(UserRecord {
            id,
            login: UserName::parse(&login).map_err(|e| corrupt("login", &e))?,
            email: Email::parse(&email).map_err(|e| corrupt("email", &e))?,
            display_name: DisplayName::parse(&display).map_err(|e| corrupt("name", &e))?,
            role: role.parse().map_err(|e| corrupt("role", &e))?,
            profile: ProfileName::parse(&profile).map_err(|e| corrupt("profile", &e))?,
            services,
            uid: row.get(6)?,
            gid: row.get(7)?,
            slot: row.get(8)?,
            disabled: row.get(9)?,
            box_state: row.get(10)?,
            created_at: row.get(11)?,
            updated_at: row.get(12)?,
        })
    }

    fn user_where(
        conn: &Connection,
        clause: &str,
        param: &dyn rusqlite::ToSql,
    ) -> Result<Option<UserRecord>> {
        let sql = format!(
            "SELECT {} FROM users u JOIN boxes b ON b.user_id = u.id WHERE {clause}",
            Self::USER_COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([param])?;
        match rows.next()? {
            Some(row) => Ok(Some(Self::user_from_row(conn, row)?)),
            None => Ok(None),
        }
    }

    /// Creates a user and their box row in one transaction: uid/gid from `uid_min` upward
    /// (never reused, so a new user never inherits a deleted user's files), and the lowest
    /// free subnet slot.
    pub fn create_user(&self, new: &NewUser, alloc: Allocation, now: i64) -> Result<UserRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let taken = |col: &str, v: &str| -> Result<bool> {
            Ok(tx
                .prepare_cached(&format!("SELECT 1 FROM users WHERE {col} = ?1"))?
                .exists([v])?)
        };
        if taken("login", new.login.as_str())? {
            return Err(StoreError::Conflict("login"));
        }
        if taken("email", new.email.as_str())? {
            return Err(StoreError::Conflict("email"));
        }
        let next_uid: i64 = tx
            .query_row(
                "SELECT value FROM counters WHERE name = 'next_uid'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0)
            .max(i64::from(alloc.uid_min));
        if next_uid >= i64::from(alloc.uid_limit) {
            return Err(StoreError::UidsExhausted);
        }
        // Lowest slot not held by any box row.
        let slot: i64 = tx.query_row(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM boxes WHERE slot = 0) THEN 0 ELSE \
             (SELECT MIN(b.slot + 1) FROM boxes b WHERE NOT EXISTS \
               (SELECT 1 FROM boxes c WHERE c.slot = b.slot + 1)) END",
            [],
            |r| r.get(0),
        )?;
        if slot >= i64::from(alloc.slots) {
            return Err(StoreError::PoolExhausted);
        }
        tx.execute(
            "INSERT INTO users (login, email, display_name, role, profile, uid, gid, disabled, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, ?7, ?7)",
            params![
                new.login.as_str(),
                new.email.as_str(),
                new.display_name.as_str(),
                new.role.as_str(),
                new.profile.as_str(),
                next_uid,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO boxes (user_id, slot, desired_state, observed_state, updated_at) \
             VALUES (?1, ?2, 'stopped', 'absent', ?3)",
            params![id, slot, now],
        )?;
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('next_uid', ?1) \
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [next_uid + 1],
        )?;
        Self::set_services(&tx, id, &new.services)?;
        let user = Self::user_where(&tx, "u.id = ?1", &id)?
            .ok_or_else(|| StoreError::Corrupt("inserted user vanished".into()))?;
        tx.commit()?;
        Ok(user)
    }

    fn set_services(
        conn: &Connection,
        user_id: i64,
        services: &BTreeSet<ServiceName>,
    ) -> Result<()> {
        conn.execute("DELETE FROM user_services WHERE user_id = ?1", [user_id])?;
        let mut stmt =
            conn.prepare_cached("INSERT INTO user_services (user_id, service) VALUES (?1, ?2)")?;
        for s in services {
            stmt.execute(params![user_id, s.as_str()])?;
        }
        Ok(())
    }

    /// Finds a user by login or, when `key` contains `@`, by email (case-insensitive).
    pub fn find_user(&self, key: &str) -> Result<Option<UserRecord>> {
        let conn = self.conn();
        if key.contains('@') {
            Self::user_where(&conn, "u.email = ?1", &key.to_ascii_lowercase())
        } else {
            Self::user_where(&conn, "u.login = ?1", &key)
        }
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>> {
        Self::user_where(&self.conn(), "u.id = ?1", &id)
    }

    pub fn list_users(&self, filter: &UserFilter) -> Result<Vec<UserRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM users u JOIN boxes b ON b.user_id = u.id \
             WHERE (:role IS NULL OR u.role = :role) \
               AND (:profile IS NULL OR u.profile = :profile) \
               AND (:disabled IS NULL OR u.disabled = :disabled) \
             ORDER BY u.login",
            Self::USER_COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(named_params! {
            ":role": filter.role.map(Role::as_str),
            ":profile": filter.profile.as_ref().map(ProfileName::as_str),
            ":disabled": filter.disabled,
        })?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::user_from_row(&conn, row)?);
        }
        Ok(out)
    }

    pub fn update_user(
        &self,
        id: i64,
        update: &UserUpdate,
        now: i64,
    ) -> Result<Option<UserRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE users SET \
               display_name = COALESCE(:name, display_name), \
               role = COALESCE(:role, role), \
               profile = COALESCE(:profile, profile), \
               disabled = COALESCE(:disabled, disabled), \
               updated_at = :now \
             WHERE id = :id",
            named_params! {
                ":name": update.display_name.as_ref().map(DisplayName::as_str),
                ":role": update.role.map(Role::as_str),
                ":profile": update.profile.as_ref().map(ProfileName::as_str),
                ":disabled": update.disabled,
                ":now": now,
                ":id": id,
            },
        )?;
        if changed == 0 {
            return Ok(None);
        }
        if let Some(services) = &update.services {
            Self::set_services(&tx, id, services)?;
        }
        let user = Self::user_where(&tx, "u.id = ?1", &id)?;
        tx.commit()?;
        Ok(user)
    }

    /// Deletes a user; tokens, box row, service assignments and desktop state go with it
    /// (foreign keys), owned services lose their owner.
    pub fn delete_user(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM users WHERE id = ?1", [id])?
            > 0)
    }

    // ---- tokens ------------------------------------------------------------------------

    pub fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (id, hash, kind, user_id, name, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id,
                &t.hash[..],
                t.kind.as_str(),
                t.user_id,
                t.name,
                t.created_at,
                t.expires_at
            ],
        )?;
        Ok(())
    }

    const TOKEN_COLUMNS: &'static str = "t.id, t.hash, t.kind, t.user_id, u.login, t.name, \
        t.created_at, t.expires_at, t.revoked_at";

    fn token_from_row(row: &Row<'_>) -> Result<TokenRecord> {
        let hash: Vec<u8> = row.get(1)?;
        let kind: String = row.get(2)?;
        Ok(TokenRecord {
            id: row.get(0)?,
            hash: hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("token hash length".into()))?,
            kind: TokenKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("token kind {kind:?}")))?,
            user_id: row.get(3)?,
            user_login: row.get(4)?,
            name: row.get(5)?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
            revoked_at: row.get(8)?,
        })
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = ?1",
            Self::TOKEN_COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            Some(row) => Ok(Some(Self::token_from_row(row)?)),
            None => Ok(None),
        }
    }

    pub fn list_tokens(&self, user_id: Option<i64>) -> Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             WHERE (?1 IS NULL OR t.user_id = ?1) ORDER BY t.created_at, t.id",
            Self::TOKEN_COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([user_id])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::token_from_row(row)?);
        }
        Ok(out)
    }

    /// Marks a token revoked; returns false when there is no such token. Revoking twice
    /// keeps the first revocation time.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, now],
        )?;
        Ok(n > 0)
    }

    pub fn has_admin_token(&self) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM tokens WHERE kind = 'admin'")?
            .exists([])?)
    }

    // ---- services ----------------------------------------------------------------------

    pub fn insert_service(&self, s: &Service, owner_id: Option<i64>, now: i64) -> Result<()> {
        let conn = self.conn();
        let exists = conn
            .prepare_cached("SELECT 1 FROM services WHERE name = ?1")?
            .exists([s.name.as_str()])?;
        if exists {
            return Err(StoreError::Conflict("service name"));
        }
        conn.execute(
            "INSERT INTO services (name, category, url, upstream, required_role, owner_id, icon, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                s.name.as_str(),
                s.category.as_str(),
                s.url.as_str(),
                s.upstream.to_string(),
                s.required_role.as_str(),
                owner_id,
                s.icon.clone().map(String::from),
                now
            ],
        )?;
        Ok(())
    }

    fn service_from_row(row: &Row<'_>) -> Result<Service> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("service: {e}"));
        let name: String = row.get(0)?;
        let category: String = row.get(1)?;
        let url: String = row.get(2)?;
        let upstream: String = row.get(3)?;
        let role: String = row.get(4)?;
        let owner: Option<String> = row.get(5)?;
        let icon: Option<String> = row.get(6)?;
        Ok(Service {
            name: name.parse().map_err(|e| corrupt(&e))?,
            category: category.parse().map_err(|e| corrupt(&e))?,
            url: url.parse().map_err(|e| corrupt(&e))?,
            upstream: upstream.parse().map_err(|e| corrupt(&e))?,
            required_role: role.parse().map_err(|e| corrupt(&e))?,
            owner: owner
                .map(|o| o.parse())
                .transpose()
                .map_err(|e| corrupt(&e))?,
            icon: icon
                .map(|i| i.parse())
                .transpose()
                .map_err(|e| corrupt(&e))?,
        })
    }

    pub fn list_services(&self) -> Result<Vec<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT s.name, s.category, s.url, s.upstream, s.required_role, u.login, s.icon \
             FROM services s LEFT JOIN users u ON u.id = s.owner_id ORDER BY s.name",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::service_from_row(row)?);
        }
        Ok(out)
    }

    pub fn service(&self, name: &str) -> Result<Option<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT s.name, s.category, s.url, s.upstream, s.required_role, u.login, s.icon \
             FROM services s LEFT JOIN users u ON u.id = s.owner_id WHERE s.name = ?1",
        )?;
        let mut rows = stmt.query([name])?;
        match rows.next()? {
            Some(row) => Ok(Some(Self::service_from_row(row)?)),
            None => Ok(None),
        }
    }

    /// Removes a service and every assignment of it.
    pub fn delete_service(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM services WHERE name = ?1", [name])?
            > 0)
    }

    // ---- desktop state -----------------------------------------------------------------

    pub fn state(&self, user_id: i64, key: &str) -> Result<Option<StateEntry>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT key, value, updated_at FROM desktop_state WHERE user_id = ?1 AND key = ?2",
            )?
            .query_row(params![user_id, key], |r| {
                Ok(StateEntry {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    pub fn list_state(&self, user_id: i64) -> Result<Vec<StateEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT key, value, updated_at FROM desktop_state WHERE user_id = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map([user_id], |r| {
            Ok(StateEntry {
                key: r.get(0)?,
                value: r.get(1)?,
                updated_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn put_state(&self, user_id: i64, key: &str, value: &str, now: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO desktop_state (user_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(user_id, key) DO UPDATE SET value = excluded.value, \
             updated_at = excluded.updated_at",
            params![user_id, key, value, now],
        )?;
        Ok(())
    }

    pub fn delete_state(&self, user_id: i64, key: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM desktop_state WHERE user_id = ?1 AND key = ?2",
            params![user_id, key],
        )? > 0)
    }

    // ---- staging of uploads and copies ---------------------------------------------------

    /// Records that daemon run `run` stages an upload or copy in `dir` of the user's home.
    pub fn add_staging(&self, user_id: i64, run: &str, dir: &str, now: i64) -> Result<i64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO staging (user_id, run, dir, started) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![user_id, run, dir, now])?;
        Ok(conn.last_insert_rowid())
    }

    pub fn remove_staging(&self, id: i64) -> Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM staging WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// The stagings of the user recorded by other runs than `run`: `(id, dir)`.
    pub fn stale_staging(&self, user_id: i64, run: &str) -> Result<Vec<(i64, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, dir FROM staging WHERE user_id = ?1 AND run != ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![user_id, run], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- audit -------------------------------------------------------------------------

    pub fn append_audit(&self, e: &AuditRecord) -> Result<i64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO audit (time, actor, token_id, peer, action, target, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            e.time, e.actor, e.token_id, e.peer, e.action, e.target, e.outcome, e.detail
        ])?;
        Ok(conn.last_insert_rowid())
    }

    /// Newest first. `filter.actor` matches the actor or the target (so "what happened to
    /// or by alice" is one query).
    pub fn query_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, time, actor, token_id, peer, action, target, outcome, detail FROM audit \
             WHERE (:actor IS NULL OR actor = :actor OR target = :actor) \
               AND (:action IS NULL OR action = :action OR action LIKE :action || '.%') \
               AND (:outcome IS NULL OR outcome = :outcome) \
               AND (:since IS NULL OR time >= :since) \
               AND (:until IS NULL OR time <= :until) \
               AND (:before IS NULL OR id < :before) \
             ORDER BY id DESC LIMIT :limit",
        )?;
        let rows = stmt.query_map(
            named_params! {
                ":actor": f.actor,
                ":action": f.action,
                ":outcome": f.outcome,
                ":since": f.since,
                ":until": f.until,
                ":before": f.before,
                ":limit": f.limit,
            },
            |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    actor: r.get(2)?,
                    token_id: r.get(3)?,
                    peer: r.get(4)?,
                    action: r.get(5)?,
                    target: r.get(6)?,
                    outcome: r.get(7)?,
                    detail: r.get(8)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes audit entries older than `before` (Unix seconds); returns how many.
    pub fn prune_audit(&self, before: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM audit WHERE time < ?1", [before])?)
    }

    fn box_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BoxRecord> {
        Ok(BoxRecord {
            user_id: row.get(0)?,
            slot: row.get(1)?,
            desired: row.get(2)?,
            observed: row.get(3)?,
            pid: row.get(4)?,
            init_start: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            userns: row.get::<_, Option<i64>>(6)?.map(|v| v != 0),
            started_at: row.get(7)?,
            expires_at: row.get(8)?,
            last_error: row.get(9)?,
            updated_at: row.get(10)?,
        })
    }

    const BOX_COLUMNS: &'static str = "user_id, slot, desired_state, observed_state, pid, \
        init_start, userns, started_at, expires_at, last_error, updated_at";

    /// The box of a user.
    pub fn box_of(&self, user_id: i64) -> Result<Option<BoxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM boxes WHERE user_id = ?1",
            Self::BOX_COLUMNS
        ))?;
        Ok(stmt.query_row([user_id], Self::box_from_row).optional()?)
    }

    /// Every box, by user id.
    pub fn list_boxes(&self) -> Result<Vec<BoxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM boxes ORDER BY user_id",
            Self::BOX_COLUMNS
        ))?;
        let rows = stmt.query_map([], Self::box_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes a box's mutable fields (the slot never changes).
    pub fn update_box(&self, b: &BoxRecord) -> Result<()> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE boxes SET desired_state = ?2, observed_state = ?3, pid = ?4, init_start = ?5, \
             userns = ?6, started_at = ?7, expires_at = ?8, last_error = ?9, updated_at = ?10 \
             WHERE user_id = ?1",
            params![
                b.user_id,
                b.desired,
                b.observed,
                b.pid,
                b.init_start.map(|v| v as i64),
                b.userns.map(i64::from),
                b.started_at,
                b.expires_at,
                b.last_error,
                b.updated_at
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Corrupt(format!(
                "no box for user {}",
                b.user_id
            )));
        }
        Ok(())
    }

    pub fn counts(&self, now: i64) -> Result<Counts> {
        let conn = self.conn();
        let pairs = |sql: &str| -> Result<Vec<(String, i64)>> {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        Ok(Counts {
            users_by_role: pairs("SELECT role, COUNT(*) FROM users GROUP BY role ORDER BY role")?,
            boxes_by_state: pairs(
                "SELECT observed_state, COUNT(*) FROM boxes GROUP BY observed_state ORDER BY 1",
            )?,
            active_tokens: conn.query_row(
                "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL AND expires_at > ?1",
                [now],
                |r| r.get(0),
            )?,
            services: conn.query_row("SELECT COUNT(*) FROM services", [], |r| r.get(0))?,
            audit_entries: conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?,
        })
    }
}

#[cfg(test)]
mod tests;
