//! Embedded schema migrations, applied in order inside one transaction each and tracked
//! with `PRAGMA user_version`. Never edit a released migration; add a new one.

use rusqlite::Connection;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: the spine.
    r#"
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE users (
        id           INTEGER PRIMARY KEY,
        login        TEXT NOT NULL UNIQUE,
        email        TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('admin', 'member', 'demo')),
        profile      TEXT NOT NULL,
        uid          INTEGER NOT NULL UNIQUE,
        gid          INTEGER NOT NULL,
        disabled     INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) STRICT;

    -- One box per user. The slot indexes both the user's /24 in the pool and their box id
    -- range; it is held until the row is deleted.
    CREATE TABLE boxes (
        user_id        INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        slot           INTEGER NOT NULL UNIQUE,
        desired_state  TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')),
        observed_state TEXT NOT NULL CHECK (observed_state IN
            ('absent', 'starting', 'running', 'stopping', 'stopped', 'error')),
        pid            INTEGER,
        started_at     INTEGER,
        expires_at     INTEGER,
        last_error     TEXT,
        updated_at     INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE services (
        name          TEXT PRIMARY KEY,
        category      TEXT NOT NULL,
        url           TEXT NOT NULL,
        upstream      TEXT NOT NULL,
        required_role TEXT NOT NULL CHECK (required_role IN ('admin', 'member', 'demo')),
        owner_id      INTEGER REFERENCES users(id) ON DELETE SET NULL,
        icon          TEXT,
        created_at    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE user_services (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
        PRIMARY KEY (user_id, service)
    ) STRICT;

    -- Only SHA-256 of the secret is kept.
    CREATE TABLE tokens (
        id         TEXT PRIMARY KEY,
        hash       BLOB NOT NULL CHECK (length(hash) = 32),
        kind       TEXT NOT NULL CHECK (kind IN ('admin', 'user', 'service')),
        user_id    INTEGER REFERENCES users(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER,
        CHECK ((kind = 'user') = (user_id IS NOT NULL))
    ) STRICT;
    CREATE INDEX tokens_user ON tokens(user_id);

    CREATE TABLE desktop_state (
        user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, key)
    ) STRICT;

    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        time     INTEGER NOT NULL,
        actor    TEXT NOT NULL,
        token_id TEXT,
        peer     TEXT NOT NULL,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'invalid', 'error')),
        detail   TEXT
    ) STRICT;
    CREATE INDEX audit_time ON audit(time);
    "#,
    // 2: the box runtime: init's start time (pid reuse guard) and whether the box has a
    // user namespace.
    r#"
    ALTER TABLE boxes ADD COLUMN init_start INTEGER;
    ALTER TABLE boxes ADD COLUMN userns INTEGER CHECK (userns IN (0, 1));
    "#,
    // 3: uploads and copies in flight, by daemon run: the directory of a user's home where
    // each stages its hidden file or tree. A daemon killed mid-way leaves the row, and a
    // later run removes what that run left there before it works in the home again.
    r#"
    CREATE TABLE staging (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        run     TEXT NOT NULL,
        dir     TEXT NOT NULL,
        started INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX staging_user ON staging(user_id);
    "#,
];

/// Schema version this daemon writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub fn apply(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
