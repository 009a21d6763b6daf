//! The SQLite schema and its forward migrations. The version lives in
//! `PRAGMA user_version`; step `i` of [`MIGRATIONS`] moves a file from version `i` to
//! `i + 1`. Migrating takes the write lock before it reads the version, so two first
//! runs on a new file (a crontab starting `poll contacts` and `poll deals` at once)
//! cannot both try to create the tables.

use anyhow::{Context, Result};
use rusqlite::Connection;

/// A state file whose schema is newer than this build understands. Exits 78: no rerun
/// of this version fixes it.
#[derive(Debug, thiserror::Error)]
#[error(
    "schema version {found} is newer than this martech-sync understands ({known}); upgrade martech-sync"
)]
pub struct NewerSchema {
    pub found: usize,
    pub known: usize,
}

/// Schema steps.
pub const MIGRATIONS: &[&str] = &[
    // 1: the engine.
    "
    CREATE TABLE cursors (
        object     TEXT PRIMARY KEY,
        cursor_ms  INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE windows (
        object    TEXT PRIMARY KEY,
        lo_ms     INTEGER NOT NULL,
        hi_ms     INTEGER NOT NULL,
        pages     INTEGER NOT NULL DEFAULT 0,
        opened_ms INTEGER NOT NULL
    );
    CREATE TABLE slices (
        object   TEXT NOT NULL,
        slice    INTEGER NOT NULL,
        after_id INTEGER,
        upto_id  INTEGER,
        last_id  INTEGER,
        done     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (object, slice)
    ) WITHOUT ROWID;
    CREATE TABLE delivered (
        object      TEXT NOT NULL,
        id          INTEGER NOT NULL,
        modified_ms INTEGER NOT NULL,
        PRIMARY KEY (object, id)
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        object      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        ended_at    TEXT,
        duration_ms INTEGER,
        lo_ms       INTEGER NOT NULL,
        hi_ms       INTEGER NOT NULL,
        resumed     INTEGER NOT NULL,
        pages       INTEGER NOT NULL,
        seen        INTEGER NOT NULL,
        delivered   INTEGER NOT NULL,
        skipped     INTEGER NOT NULL,
        requests    INTEGER NOT NULL,
        retries     INTEGER NOT NULL,
        rate_limited INTEGER NOT NULL DEFAULT 0,
        error       TEXT
    );
    CREATE INDEX runs_by_object ON runs (object, id);
    CREATE TABLE property_names (
        object     TEXT PRIMARY KEY,
        fetched_ms INTEGER NOT NULL,
        names      TEXT NOT NULL
    );
    CREATE TABLE records (
        object      TEXT NOT NULL,
        id          INTEGER NOT NULL,
        modified_ms INTEGER NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        archived    INTEGER NOT NULL,
        properties  TEXT NOT NULL,
        PRIMARY KEY (object, id)
    ) WITHOUT ROWID;
    ",
    // 2: the webhook queue.
    "
    CREATE TABLE webhook_events (
        key             TEXT PRIMARY KEY,
        object          TEXT NOT NULL,
        object_id       INTEGER NOT NULL,
        kind            TEXT NOT NULL,
        occurred_ms     INTEGER NOT NULL,
        received_ms     INTEGER NOT NULL,
        state           TEXT NOT NULL DEFAULT 'queued',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT
    ) WITHOUT ROWID;
    CREATE INDEX webhook_events_queued ON webhook_events (state, occurred_ms);
    ",
    // 3: destinations, and `meta` (the receiver's heartbeat). A sync is (object,
    // destination): cursors, windows, slices and the
    // ledger (delivered versions, now with tombstones) are keyed by the sync. What a
    // version-2 file holds goes to the placeholder destination `(unassigned)`, which the
    // next run of the object claims for its own destination. Passes (main, recheck,
    // side) each have their own window.
    "
    CREATE TABLE syncs (
        id          INTEGER PRIMARY KEY,
        object      TEXT NOT NULL,
        destination TEXT NOT NULL,
        sink        TEXT NOT NULL,
        cursor_ms   INTEGER,
        recheck_ms  INTEGER,
        swept_ms    INTEGER,
        properties  TEXT,
        created_ms  INTEGER NOT NULL,
        UNIQUE (object, destination)
    );
    INSERT INTO syncs (object, destination, sink, cursor_ms, created_ms)
    SELECT o.object, '(unassigned)', '', c.cursor_ms, CAST(strftime('%s', 'now') AS INTEGER) * 1000
    FROM (SELECT object FROM cursors UNION SELECT object FROM windows
          UNION SELECT object FROM delivered UNION SELECT object FROM runs) o
    LEFT JOIN cursors c ON c.object = o.object;

    CREATE TABLE pass_windows (
        sync      INTEGER NOT NULL,
        pass      TEXT NOT NULL,
        lo_ms     INTEGER NOT NULL,
        hi_ms     INTEGER NOT NULL,
        pages     INTEGER NOT NULL DEFAULT 0,
        opened_ms INTEGER NOT NULL,
        refresh   INTEGER NOT NULL DEFAULT 0,
        seen      INTEGER NOT NULL DEFAULT 0,
        total     INTEGER,
        PRIMARY KEY (sync, pass)
    ) WITHOUT ROWID;
    INSERT INTO pass_windows (sync, pass, lo_ms, hi_ms, pages, opened_ms)
    SELECT s.id, 'main', w.lo_ms, w.hi_ms, w.pages, w.opened_ms
    FROM windows w JOIN syncs s ON s.object = w.object;

    CREATE TABLE pass_slices (
        sync     INTEGER NOT NULL,
        pass     TEXT NOT NULL,
        slice    INTEGER NOT NULL,
        after_id INTEGER,
        upto_id  INTEGER,
        last_id  INTEGER,
        done     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sync, pass, slice)
    ) WITHOUT ROWID;
    INSERT INTO pass_slices (sync, pass, slice, after_id, upto_id, last_id, done)
    SELECT s.id, 'main', x.slice, x.after_id, x.upto_id, x.last_id, x.done
    FROM slices x JOIN syncs s ON s.object = x.object;

    CREATE TABLE ledger (
        sync        INTEGER NOT NULL,
        id          INTEGER NOT NULL,
        modified_ms INTEGER NOT NULL,
        archived    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sync, id)
    ) WITHOUT ROWID;
    INSERT INTO ledger (sync, id, modified_ms)
    SELECT s.id, d.id, d.modified_ms FROM delivered d JOIN syncs s ON s.object = d.object;

    DROP TABLE cursors;
    DROP TABLE windows;
    DROP TABLE slices;
    DROP TABLE delivered;
    ALTER TABLE pass_windows RENAME TO windows;
    ALTER TABLE pass_slices RENAME TO slices;

    ALTER TABLE runs ADD COLUMN sync INTEGER;
    ALTER TABLE runs ADD COLUMN pass TEXT NOT NULL DEFAULT 'main';
    UPDATE runs SET sync = (SELECT id FROM syncs WHERE syncs.object = runs.object);
    CREATE INDEX runs_by_sync ON runs (sync, pass, id);

    ALTER TABLE records ADD COLUMN archived_at TEXT;
    ALTER TABLE records ADD COLUMN merged_into INTEGER;
    ALTER TABLE webhook_events ADD COLUMN merged_into INTEGER;

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN summary TEXT;
    ",
    // 4: requests counted by UTC day, for `--daily-budget` and `status`.
    "
    CREATE TABLE usage (
        day      TEXT PRIMARY KEY,
        requests INTEGER NOT NULL DEFAULT 0
    );
    ",
];

/// An SQLite database that is not a state file (version 0 with tables of its own).
#[derive(Debug, thiserror::Error)]
#[error("it is an SQLite database of something else (it has tables but no martech-sync schema)")]
pub struct Foreign;

/// Moves the file forward to the current schema, under the write lock.
///
/// # Errors
/// [`NewerSchema`], [`Foreign`], or when the file is not an SQLite database or cannot
/// be written.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    check_version(version)?;
    if version == 0 {
        let tables: i64 = tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 {
            return Err(Foreign.into());
        }
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(step)
            .with_context(|| format!("migrating to schema version {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

/// Fails with [`NewerSchema`] for a version past the last migration.
///
/// # Errors
/// As said.
pub fn check_version(version: usize) -> Result<(), NewerSchema> {
    if version > MIGRATIONS.len() {
        return Err(NewerSchema {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    Ok(())
}
