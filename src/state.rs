//! The state file: one SQLite database (WAL) that holds where every sync stands.
//!
//! Tables: `cursors` (per object, the `hi` of the last committed window), `windows` (the
//! open window of an object), `slices` (its id ranges, each with its checkpoint),
//! `delivered` (the newest version of each
//! record the sink has confirmed, so overlap re-reads and resumed windows skip it), `runs`
//! (one row per run), `records` (the default sqlite sink), `property_names` (the
//! `--all-properties` cache) and, from schema 2, `webhook_events` (the webhook queue). The schema version lives in
//! `PRAGMA user_version`; [`MIGRATIONS`] moves an older file forward on open.
//!
//! Invariant: a page's checkpoint, its delivered versions and (for the sqlite sink) its
//! records are written in one transaction, after the sink confirmed the page. The cursor
//! moves only in [`State::commit_window`].

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::report::{Outcome, RunReport, WindowReport};
use crate::timestamp::Millis;
use crate::window::{OpenWindow, Slice, Window};

/// Schema steps; step `i` moves a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
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
];

/// A run's row in `runs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId(i64);

/// What `status` shows for one object.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub object: String,
    pub cursor: Option<String>,
    pub cursor_ms: Option<i64>,
    pub open_window: Option<OpenWindowStatus>,
    pub last_run: Option<RunReport>,
}

/// An open window as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenWindowStatus {
    #[serde(flatten)]
    pub window: WindowReport,
    /// The checkpoint while the window is one slice.
    pub last_id: Option<String>,
    pub pages: u64,
    pub slices: Vec<SliceStatus>,
}

/// A slice as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceStatus {
    pub after_id: Option<String>,
    pub upto_id: Option<String>,
    pub last_id: Option<String>,
    pub done: bool,
}

impl From<&Slice> for SliceStatus {
    fn from(s: &Slice) -> Self {
        let text = |id: Option<RecordId>| id.map(|i| i.0.to_string());
        SliceStatus {
            after_id: text(s.after),
            upto_id: text(s.upto),
            last_id: text(s.last_id),
            done: s.done,
        }
    }
}

/// Whether the default sink's records go into the same transaction as the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsTable {
    Write,
    Skip,
}

/// An open state file.
pub struct State {
    pub(crate) conn: Connection,
}

impl State {
    /// Opens (creating if needed) the state file and migrates it to the current schema.
    ///
    /// # Errors
    /// When the file cannot be opened or written, or was written by a newer version.
    pub fn open(path: &Path) -> Result<State> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening state file {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL lets `status` read while a run writes; NORMAL sync is durable across process
        // crashes, which is what a checkpoint must survive.
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("opening state file {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut state = State { conn };
        state
            .migrate()
            .with_context(|| format!("migrating state file {}", path.display()))?;
        Ok(state)
    }

    /// A write transaction that takes the write lock at once. A deferred one that
    /// reads first fails with SQLITE_BUSY_SNAPSHOT, without waiting, when another
    /// connection (the webhook receiver) commits in between.
    pub(crate) fn write(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// How long a write waits for another connection's lock before failing.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        self.conn.busy_timeout(timeout)?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let version: usize = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        anyhow::ensure!(
            version <= MIGRATIONS.len(),
            "schema version {version} is newer than this martech-sync understands ({}); upgrade martech-sync",
            MIGRATIONS.len()
        );
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.write()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The stored cursor of `object`, if a window was ever committed.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn cursor(&self, object: &ObjectType) -> Result<Option<Millis>> {
        Ok(self
            .conn
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE object = ?1",
                [object.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .map(Millis))
    }

    /// The window a previous run of `object` left open, with its slices' checkpoints.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn open_window(&self, object: &ObjectType) -> Result<Option<OpenWindow>> {
        let window = self
            .conn
            .query_row(
                "SELECT lo_ms, hi_ms FROM windows WHERE object = ?1",
                [object.as_str()],
                |r| {
                    Ok(Window {
                        lo: Millis(r.get(0)?),
                        hi: Millis(r.get(1)?),
                    })
                },
            )
            .optional()?;
        let Some(window) = window else {
            return Ok(None);
        };
        let slices = self.slices(object.as_str())?;
        Ok(Some(OpenWindow { window, slices }))
    }

    fn slices(&self, object: &str) -> Result<Vec<Slice>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT slice, after_id, upto_id, last_id, done FROM slices WHERE object = ?1 ORDER BY slice",
        )?;
        let id = |v: Option<i64>| v.map(to_id);
        let rows = stmt.query_map([object], |r| {
            Ok(Slice {
                index: r.get(0)?,
                after: id(r.get(1)?),
                upto: id(r.get(2)?),
                last_id: id(r.get(3)?),
                done: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the start of a run: marks runs of `object` that never finished as
    /// interrupted (the caller holds the object's lock, so none is alive), opens
    /// `window` unless it is being resumed, and inserts the run's row.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn start_run(&mut self, object: &ObjectType, report: &RunReport) -> Result<RunId> {
        let tx = self.write()?;
        tx.execute(
            "UPDATE runs SET outcome = 'interrupted' WHERE object = ?1 AND outcome = 'running'",
            [object.as_str()],
        )?;
        if !report.resumed {
            tx.execute(
                "INSERT OR REPLACE INTO windows (object, lo_ms, hi_ms, pages, opened_ms)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![
                    object.as_str(),
                    report.window.lo_ms,
                    report.window.hi_ms,
                    Millis::now().0
                ],
            )?;
            tx.execute("DELETE FROM slices WHERE object = ?1", [object.as_str()])?;
            insert_slices(&tx, object, &[Slice::WHOLE])?;
        }
        tx.execute(
            "INSERT INTO runs (object, outcome, started_at, lo_ms, hi_ms, resumed, pages, seen,
                               delivered, skipped, requests, retries)
             VALUES (?1, 'running', ?2, ?3, ?4, ?5, 0, 0, 0, 0, 0, 0)",
            params![
                object.as_str(),
                report.started_at,
                report.window.lo_ms,
                report.window.hi_ms,
                report.resumed
            ],
        )?;
        let id = RunId(tx.last_insert_rowid());
        tx.commit()?;
        Ok(id)
    }

    /// Keeps the records whose version the sink does not have yet, in order.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn undelivered<'r>(
        &self,
        object: &ObjectType,
        records: &'r [Record],
    ) -> Result<Vec<&'r Record>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT modified_ms FROM delivered WHERE object = ?1 AND id = ?2")?;
        let mut fresh = Vec::with_capacity(records.len());
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        for record in records {
            // The same record twice in one page (merged records in a batch read).
            if !seen.insert(record.id) {
                continue;
            }
            let have: Option<i64> = stmt
                .query_row(params![object.as_str(), to_sql(record.id)], |r| r.get(0))
                .optional()?;
            if have.is_none_or(|m| m < record.modified.0) {
                fresh.push(record);
            }
        }
        Ok(fresh)
    }

    /// Checkpoints a confirmed page of `slice` in one transaction: the versions
    /// delivered, the records themselves for the sqlite sink, the slice's `last_id` (the
    /// page's last id, if it had records) and whether the slice is done.
    ///
    /// # Errors
    /// On SQLite errors; nothing of the page is then written.
    pub fn commit_page(
        &mut self,
        object: &ObjectType,
        checkpoint: Checkpoint,
        delivered: &[&Record],
        records_table: RecordsTable,
    ) -> Result<()> {
        let tx = self.write()?;
        remember_delivered(&tx, object, delivered)?;
        if records_table == RecordsTable::Write {
            upsert_records(&tx, object, delivered)?;
        }
        tx.execute(
            "UPDATE slices SET last_id = COALESCE(?3, last_id), done = ?4
             WHERE object = ?1 AND slice = ?2",
            params![
                object.as_str(),
                checkpoint.slice,
                checkpoint.last_id.map(to_sql),
                checkpoint.done
            ],
        )?;
        tx.execute(
            "UPDATE windows SET pages = pages + 1 WHERE object = ?1",
            [object.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the open window's slice `whole` (not done) by `parts`, which cover its
    /// remaining ids, and marks `whole` done up to its checkpoint, in one transaction.
    ///
    /// # Errors
    /// On SQLite errors; the window then stays one slice.
    pub fn split(&mut self, object: &ObjectType, whole: &Slice, parts: &[Slice]) -> Result<()> {
        let tx = self.write()?;
        tx.execute(
            "UPDATE slices SET upto_id = last_id, done = 1 WHERE object = ?1 AND slice = ?2",
            params![object.as_str(), whole.index],
        )?;
        insert_slices(&tx, object, parts)?;
        tx.commit()?;
        Ok(())
    }

    /// Commits the window: moves the cursor to `cursor`, closes the window and finishes
    /// the run's row, in one transaction.
    ///
    /// # Errors
    /// On SQLite errors; the cursor then stays where it was.
    pub fn commit_window(
        &mut self,
        object: &ObjectType,
        cursor: Millis,
        run: RunId,
        report: &RunReport,
    ) -> Result<()> {
        let tx = self.write()?;
        // The last line of defence for the guarantee: never move the cursor past a slice
        // that is not done.
        let (slices, open): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE done = 0) FROM slices WHERE object = ?1",
            [object.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        anyhow::ensure!(
            slices > 0 && open == 0,
            "refusing to commit the window of {object}: {open} of {slices} slices are not done"
        );
        write_cursor(&tx, object, cursor)?;
        finish_run(&tx, run, report)?;
        tx.commit()?;
        Ok(())
    }

    /// Moves the cursor of `object` to `cursor` and closes its open window.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn set_cursor(&mut self, object: &ObjectType, cursor: Millis) -> Result<()> {
        let tx = self.write()?;
        write_cursor(&tx, object, cursor)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the cursor and open window of `object`, and with `forget_delivered` which
    /// versions the sink has.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn reset_cursor(&mut self, object: &ObjectType, forget_delivered: bool) -> Result<()> {
        let tx = self.write()?;
        tx.execute("DELETE FROM cursors WHERE object = ?1", [object.as_str()])?;
        close_window(&tx, object)?;
        if forget_delivered {
            tx.execute("DELETE FROM delivered WHERE object = ?1", [object.as_str()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Finishes a run that did not commit; the cursor and the open window stay.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn finish_run(&mut self, run: RunId, report: &RunReport) -> Result<()> {
        let tx = self.write()?;
        finish_run(&tx, run, report)?;
        tx.commit()?;
        Ok(())
    }

    /// The property names of `object` cached less than `max_age` ago.
    ///
    /// # Errors
    /// On SQLite errors or a corrupt cache entry.
    pub fn cached_property_names(
        &self,
        object: &ObjectType,
        max_age: std::time::Duration,
    ) -> Result<Option<Vec<String>>> {
        let since = Millis::now().minus(max_age).0;
        let names: Option<String> = self
            .conn
            .query_row(
                "SELECT names FROM property_names WHERE object = ?1 AND fetched_ms >= ?2",
                params![object.as_str(), since],
                |r| r.get(0),
            )
            .optional()?;
        names
            .map(|n| serde_json::from_str(&n).context("reading cached property names"))
            .transpose()
    }

    /// Caches the property names of `object`.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn cache_property_names(&mut self, object: &ObjectType, names: &[String]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO property_names (object, fetched_ms, names) VALUES (?1, ?2, ?3)",
            params![
                object.as_str(),
                Millis::now().0,
                serde_json::to_string(names)?
            ],
        )?;
        Ok(())
    }

    /// Where every object stands, ordered by object name.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn status(&self) -> Result<Vec<ObjectStatus>> {
        let mut objects: Vec<String> = self
            .conn
            .prepare(
                "SELECT object FROM cursors UNION SELECT object FROM windows
                 UNION SELECT object FROM runs ORDER BY 1",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        objects.dedup();
        objects.iter().map(|o| self.object_status(o)).collect()
    }

    /// Up to `n` rows of the sqlite sink's records of `object`, as JSON lines.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn sample_records(&self, object: &str, n: usize) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT json_object('id', CAST(id AS TEXT), 'updatedAt', updated_at,
                                'properties', json(properties))
             FROM records WHERE object = ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![object, i64::try_from(n)?], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn object_status(&self, object: &str) -> Result<ObjectStatus> {
        let cursor: Option<i64> = self
            .conn
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE object = ?1",
                [object],
                |r| r.get(0),
            )
            .optional()?;
        let slices = self.slices(object)?;
        let open_window = self
            .conn
            .query_row(
                "SELECT lo_ms, hi_ms, pages FROM windows WHERE object = ?1",
                [object],
                |r| {
                    let window = Window {
                        lo: Millis(r.get(0)?),
                        hi: Millis(r.get(1)?),
                    };
                    Ok(OpenWindowStatus {
                        window: window.into(),
                        last_id: match slices.as_slice() {
                            [one] => one.last_id.map(|i| i.0.to_string()),
                            _ => None,
                        },
                        pages: r.get(2)?,
                        slices: slices.iter().map(SliceStatus::from).collect(),
                    })
                },
            )
            .optional()?;
        let last_run = self
            .conn
            .query_row(
                "SELECT object, outcome, started_at, ended_at, duration_ms, lo_ms, hi_ms, resumed,
                        pages, seen, delivered, skipped, requests, retries, error, rate_limited
                 FROM runs WHERE object = ?1 ORDER BY id DESC LIMIT 1",
                [object],
                |r| {
                    let window = Window {
                        lo: Millis(r.get(5)?),
                        hi: Millis(r.get(6)?),
                    };
                    Ok(RunReport {
                        object: r.get(0)?,
                        outcome: Outcome::parse(&r.get::<_, String>(1)?),
                        started_at: r.get(2)?,
                        ended_at: r.get(3)?,
                        duration_ms: r.get(4)?,
                        window: window.into(),
                        resumed: r.get(7)?,
                        pages: r.get(8)?,
                        seen: r.get(9)?,
                        delivered: r.get(10)?,
                        skipped: r.get(11)?,
                        requests: r.get(12)?,
                        retries: r.get(13)?,
                        error: r.get(14)?,
                        rate_limited: r.get(15)?,
                        peak_rss_kb: None,
                    })
                },
            )
            .optional()?;
        Ok(ObjectStatus {
            object: object.to_owned(),
            cursor: cursor.map(|c| Millis(c).to_rfc3339()),
            cursor_ms: cursor,
            open_window,
            last_run,
        })
    }
}

fn finish_run(tx: &Transaction<'_>, run: RunId, report: &RunReport) -> Result<()> {
    tx.execute(
        "UPDATE runs SET outcome = ?2, ended_at = ?3, duration_ms = ?4, pages = ?5, seen = ?6,
                         delivered = ?7, skipped = ?8, requests = ?9, retries = ?10, error = ?11,
                         rate_limited = ?12
         WHERE id = ?1",
        params![
            run.0,
            report.outcome.as_str(),
            report.ended_at,
            report.duration_ms,
            report.pages,
            report.seen,
            report.delivered,
            report.skipped,
            report.requests,
            report.retries,
            report.error,
            report.rate_limited
        ],
    )?;
    Ok(())
}

/// What a confirmed page moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub slice: u32,
    /// The page's last id; `None` for an empty page.
    pub last_id: Option<RecordId>,
    /// Whether this was the slice's last page.
    pub done: bool,
}

/// Moves the cursor and closes the open window: the two always go together.
fn write_cursor(tx: &Transaction<'_>, object: &ObjectType, cursor: Millis) -> Result<()> {
    tx.execute(
        "INSERT INTO cursors (object, cursor_ms, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (object) DO UPDATE SET cursor_ms = excluded.cursor_ms,
                                            updated_ms = excluded.updated_ms",
        params![object.as_str(), cursor.0, Millis::now().0],
    )?;
    close_window(tx, object)
}

fn close_window(tx: &Transaction<'_>, object: &ObjectType) -> Result<()> {
    tx.execute("DELETE FROM windows WHERE object = ?1", [object.as_str()])?;
    tx.execute("DELETE FROM slices WHERE object = ?1", [object.as_str()])?;
    Ok(())
}

fn insert_slices(tx: &Transaction<'_>, object: &ObjectType, slices: &[Slice]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO slices (object, slice, after_id, upto_id, last_id, done)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for s in slices {
        stmt.execute(params![
            object.as_str(),
            s.index,
            s.after.map(to_sql),
            s.upto.map(to_sql),
            s.last_id.map(to_sql),
            s.done
        ])?;
    }
    Ok(())
}

pub(crate) fn remember_delivered(
    tx: &Transaction<'_>,
    object: &ObjectType,
    records: &[&Record],
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO delivered (object, id, modified_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (object, id) DO UPDATE SET modified_ms = excluded.modified_ms
         WHERE excluded.modified_ms > delivered.modified_ms",
    )?;
    for r in records {
        stmt.execute(params![object.as_str(), to_sql(r.id), r.modified.0])?;
    }
    Ok(())
}

pub(crate) fn upsert_records(
    tx: &Transaction<'_>,
    object: &ObjectType,
    records: &[&Record],
) -> Result<()> {
    // Never replace a newer version with an older one: a resumed window or a webhook may
    // bring an older version after a newer one.
    let mut stmt = tx.prepare_cached(
        "INSERT INTO records (object, id, modified_ms, created_at, updated_at, archived, properties)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (object, id) DO UPDATE SET
             modified_ms = excluded.modified_ms, created_at = excluded.created_at,
             updated_at = excluded.updated_at, archived = excluded.archived,
             properties = excluded.properties
         WHERE excluded.modified_ms >= records.modified_ms",
    )?;
    for r in records {
        let properties = serde_json::to_string(&r.properties)?;
        stmt.execute(params![
            object.as_str(),
            to_sql(r.id),
            r.modified.0,
            r.created_at,
            r.updated_at,
            r.archived,
            properties
        ])?;
    }
    Ok(())
}

// SQLite integers are i64; HubSpot ids are far below 2^63.
fn to_sql(id: RecordId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn to_id(v: i64) -> RecordId {
    RecordId(u64::try_from(v).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn record(id: u64, modified: i64) -> Record {
        Record {
            id: RecordId(id),
            modified: Millis(modified),
            properties: Map::new(),
            created_at: String::new(),
            updated_at: String::new(),
            archived: false,
        }
    }

    /// A state file with a fresh window of contacts open, and its run.
    fn started() -> (tempfile::TempDir, State, ObjectType, RunId, RunReport) {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("s.db")).unwrap();
        let object: ObjectType = "contacts".parse().unwrap();
        let window = Window {
            lo: Millis(0),
            hi: Millis(100),
        };
        let report = RunReport::start(&object, window, false);
        let run = state.start_run(&object, &report).unwrap();
        (dir, state, object, run, report)
    }

    #[test]
    fn delivered_versions_are_skipped_and_newer_ones_pass() {
        let (_dir, mut state, object, _run, _report) = started();
        let first = [record(1, 10), record(2, 10)];
        let fresh = state.undelivered(&object, &first).unwrap();
        assert_eq!(fresh.len(), 2);
        let checkpoint = Checkpoint {
            slice: 0,
            last_id: Some(RecordId(2)),
            done: false,
        };
        state
            .commit_page(&object, checkpoint, &fresh, RecordsTable::Write)
            .unwrap();
        let again = [record(1, 10), record(2, 11), record(3, 5)];
        let ids: Vec<u64> = state
            .undelivered(&object, &again)
            .unwrap()
            .iter()
            .map(|r| r.id.0)
            .collect();
        assert_eq!(ids, [2, 3]);
        let open = state.open_window(&object).unwrap().unwrap();
        assert_eq!(open.slices[0].last_id, Some(RecordId(2)));
    }

    #[test]
    fn a_window_with_an_unfinished_slice_does_not_commit() {
        let (_dir, mut state, object, run, mut report) = started();
        report.finish(Outcome::Committed, None);
        let err = state
            .commit_window(&object, Millis(100), run, &report)
            .unwrap_err();
        assert!(
            err.to_string().contains("1 of 1 slices are not done"),
            "{err}"
        );
        assert_eq!(state.cursor(&object).unwrap(), None);
        let last = Checkpoint {
            slice: 0,
            last_id: None,
            done: true,
        };
        state
            .commit_page(&object, last, &[], RecordsTable::Write)
            .unwrap();
        state
            .commit_window(&object, Millis(100), run, &report)
            .unwrap();
        assert_eq!(state.cursor(&object).unwrap(), Some(Millis(100)));
    }

    #[test]
    fn reopening_keeps_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(State::open(&path).unwrap());
        let state = State::open(&path).unwrap();
        let v: usize = state
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len());
    }
}
