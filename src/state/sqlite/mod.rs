//! The SQLite backend: one WAL file beside the user, zero setup. Each concern's SQL
//! lives in its own file (`schema`, `syncs`, `windows`, `ledger`, `queue`, `status`);
//! this file opens the connection and implements [`Storage`] by running those on it.
//!
//! SQLite calls block. They run under [`tokio::task::block_in_place`], so a slow disk
//! never stalls the async workers that serve webhooks; one connection per `Sqlite`,
//! behind a mutex (a receiver opens its own).

mod ledger;
mod queue;
pub mod schema;
mod status;
mod syncs;
mod windows;

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction};

use super::{
    Checkpoint, Held, LedgerEntry, Pass, QueueDepth, Queued, RecordsTable, RunId, Storage, Sync,
    SyncId, SyncStatus, Unassigned,
};
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::properties::PropertySet;
use crate::record::{Record, RecordId};
use crate::report::RunReport;
use crate::timestamp::Millis;
use crate::webhook::event::Event;
use crate::window::{OpenWindow, Slice};

pub use schema::NewerSchema;

/// The file is not a state file (not SQLite, or SQLite without our schema). Exits 78.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a martech-sync state file")]
pub struct NotAStateFile(pub String);

/// The state file has other names. SQLite finds its journal and locks by name, so two
/// processes opening one file under two names can corrupt it
/// (<https://www.sqlite.org/howtocorrupt.html>, "Multiple links to the same file"); our
/// own locks are by name too. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error(
    "state file {path} has {links} hard links: SQLite and martech-sync's locks go by name, \
     so two names for one file could corrupt it; copy the file instead of linking it"
)]
pub struct HardLinked {
    pub path: String,
    pub links: u64,
}

fn refuse_hard_links(meta: &std::fs::Metadata, name: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let links = meta.nlink();
    if links > 1 {
        return Err(HardLinked {
            path: name.to_owned(),
            links,
        }
        .into());
    }
    Ok(())
}

/// A SQLite state file.
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// How long a write waits for another process's transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Sqlite {
    /// Opens (creating if needed) the state file and migrates it.
    ///
    /// # Errors
    /// When it cannot be opened or written, is not a state file, or has a newer schema.
    pub fn open(path: &Path) -> Result<Sqlite> {
        let name = path.display().to_string();
        // The state holds customers' records: a new file is private to the user, and
        // SQLite gives its -wal and -shm files the same mode.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| ".".into(), |p| p.display().to_string());
                return Err(crate::lock::NoStateDir {
                    path: name,
                    why: format!("its directory {dir} does not exist"),
                }
                .into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // A read-only place: SQLite says so in its own words below.
            }
            Err(e) => return Err(e).with_context(|| format!("creating state file {name}")),
        }
        // By stat, never by opening it: closing a descriptor of the file would drop
        // SQLite's POSIX locks on it (https://www.sqlite.org/howtocorrupt.html, 2.2).
        let meta = std::fs::metadata(path).ok();
        if let Some(meta) = &meta {
            refuse_hard_links(meta, &name)?;
        }
        let mut conn =
            Connection::open(path).with_context(|| format!("opening state file {name}"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets `status` read while a run writes; NORMAL sync is durable across process
        // crashes, which is what a checkpoint must survive.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy) => named(e.into(), path),
                _ => not_a_state_file(e, &name),
            })?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut conn).map_err(|e| match e.downcast::<rusqlite::Error>() {
            Ok(sql) if sql.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                named(sql.into(), path)
            }
            Ok(sql) => not_a_state_file(sql, &name),
            Err(e) if e.is::<schema::Foreign>() => NotAStateFile(format!("{name} ({e})")).into(),
            Err(e) => named(e, path),
        })?;
        if let Some(meta) = &meta {
            crate::private::warn_if_shared(meta, path);
        }
        Ok(Sqlite {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// Opens an existing state file without writing to it.
    ///
    /// # Errors
    /// When it cannot be read, is not a state file, or has a newer schema.
    pub fn open_read_only(path: &Path) -> Result<Sqlite> {
        let name = path.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |conn: Connection| -> rusqlite::Result<(Connection, usize)> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            Ok((conn, version))
        };
        let opened = Connection::open_with_flags(path, flags).and_then(open);
        // A WAL file in a directory this user may not write has no -shm to share while no
        // writer runs (the last one checkpointed and removed the WAL on close): then the
        // file itself is the whole state, and may be read as it is.
        let (conn, version) = match opened {
            Ok(opened) => opened,
            Err(_) => {
                let uri = format!("file:{}?immutable=1", path.display());
                Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .and_then(open)
                    .map_err(|e| not_a_state_file(e, &name))?
            }
        };
        schema::check_version(version).with_context(|| format!("state file {name}"))?;
        if version < schema::MIGRATIONS.len() {
            anyhow::bail!(
                "state file {name} has schema version {version}; run a sync once (or any command that writes) to migrate it"
            );
        }
        Ok(Sqlite {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// Runs `f` on the connection, off the async workers, naming the file in errors.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let run = || {
            let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        };
        // block_in_place needs the multi-threaded runtime; elsewhere (unit tests, a
        // current-thread runtime) nothing else waits on this thread anyway.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let result = if multi {
            tokio::task::block_in_place(run)
        } else {
            run()
        };
        result.map_err(|e| named(e, &self.path))
    }

    /// Runs `f` in one write transaction that takes the write lock at once (a deferred
    /// one that reads first fails with SQLITE_BUSY_SNAPSHOT, without waiting, when
    /// another connection commits in between).
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// How long a write waits for another connection's lock before failing.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<()> {
        self.with(|conn| Ok(conn.busy_timeout(timeout)?))
    }
}

/// `e` with the state file named, and a lock held too long said as such.
fn named(e: anyhow::Error, path: &Path) -> anyhow::Error {
    let busy = e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>()
            .is_some_and(|e| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    });
    if busy {
        e.context(format!(
            "the state file {} stayed locked by another process (another martech-sync run or \
             serve, or an open sqlite3 transaction) past the busy timeout",
            path.display()
        ))
    } else {
        e.context(format!("state file {}", path.display()))
    }
}

/// Whether opening for writing failed only because the file (or its directory) may not
/// be written.
pub fn is_read_only(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
            )
        }) || c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// "file is not a database" and friends, named for the exit code.
fn not_a_state_file(e: rusqlite::Error, name: &str) -> anyhow::Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => NotAStateFile(name.to_owned()).into(),
        _ => anyhow::Error::new(e).context(format!("opening state file {name}")),
    }
}

#[async_trait]
impl Storage for Sqlite {
    fn describe(&self) -> String {
        format!("state file {}", self.path.display())
    }

    async fn sync(
        &self,
        object: &ObjectType,
        destination: &Destination,
        unassigned: Unassigned,
    ) -> Result<Sync> {
        self.write(|tx| syncs::sync(tx, object, destination, unassigned))
    }

    async fn syncs(&self, object: Option<&ObjectType>) -> Result<Vec<Sync>> {
        self.with(|conn| syncs::all(conn, object))
    }

    async fn set_properties(&self, sync: SyncId, properties: &PropertySet) -> Result<()> {
        self.write(|tx| syncs::set_properties(tx, sync, properties))
    }

    async fn set_cursor(&self, sync: SyncId, cursor: Millis) -> Result<()> {
        self.write(|tx| syncs::set_cursor(tx, sync, cursor))
    }

    async fn reset(&self, sync: SyncId, forget_delivered: bool) -> Result<()> {
        self.write(|tx| syncs::reset(tx, sync, forget_delivered))
    }

    async fn set_swept(&self, sync: SyncId, at: Millis) -> Result<()> {
        self.write(|tx| syncs::set_swept(tx, sync, at))
    }

    async fn open_window(&self, sync: SyncId, pass: Pass) -> Result<Option<OpenWindow>> {
        self.with(|conn| windows::open_window(conn, sync, pass))
    }

    async fn start_run(&self, sync: SyncId, pass: Pass, report: &RunReport) -> Result<RunId> {
        self.write(|tx| windows::start_run(tx, sync, pass, report))
    }

    async fn split(&self, sync: SyncId, pass: Pass, whole: &Slice, parts: &[Slice]) -> Result<()> {
        self.write(|tx| windows::split(tx, sync, pass, whole, parts))
    }

    async fn commit_page(
        &self,
        sync: SyncId,
        pass: Pass,
        checkpoint: Checkpoint,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()> {
        self.write(|tx| {
            ledger::remember(tx, sync, delivered, records)?;
            windows::checkpoint(tx, sync, pass, checkpoint)
        })
    }

    async fn commit_window(
        &self,
        sync: SyncId,
        pass: Pass,
        to: Option<Millis>,
        run: RunId,
        report: &RunReport,
    ) -> Result<()> {
        self.write(|tx| windows::commit(tx, sync, pass, to, run, report))
    }

    async fn finish_run(&self, run: RunId, report: &RunReport) -> Result<()> {
        self.write(|tx| windows::finish_run(tx, run, report))
    }

    async fn held(&self, sync: SyncId, ids: &[RecordId]) -> Result<HashMap<RecordId, Held>> {
        self.with(|conn| ledger::held(conn, sync, ids))
    }

    async fn record_delivered(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()> {
        self.write(|tx| ledger::remember(tx, sync, delivered, records))
    }

    async fn ledger_page(
        &self,
        sync: SyncId,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        self.with(|conn| ledger::page(conn, sync, after, limit))
    }

    async fn cached_property_names(
        &self,
        object: &ObjectType,
        max_age: Duration,
    ) -> Result<Option<Vec<String>>> {
        self.with(|conn| syncs::cached_property_names(conn, object, max_age))
    }

    async fn cache_property_names(&self, object: &ObjectType, names: &[String]) -> Result<()> {
        self.write(|tx| syncs::cache_property_names(tx, object, names))
    }

    async fn portal(&self, account: &str) -> Result<Option<u64>> {
        self.with(|conn| syncs::portal(conn, account))
    }

    async fn remember_portal(&self, account: &str, portal: u64) -> Result<()> {
        self.write(|tx| syncs::remember_portal(tx, account, portal))
    }

    async fn bind_portal(&self, target: &str, portal: u64) -> Result<u64> {
        self.write(|tx| syncs::bind_portal(tx, target, portal))
    }

    async fn status(&self) -> Result<Vec<SyncStatus>> {
        self.with(|conn| status::all(conn))
    }

    async fn sample_records(&self, object: &ObjectType, n: usize) -> Result<Vec<String>> {
        self.with(|conn| ledger::sample_records(conn, object, n))
    }

    async fn enqueue(&self, events: &[Event], now: Millis) -> Result<usize> {
        self.write(|tx| queue::enqueue(tx, events, now))
    }

    async fn due_events(&self, now: Millis, limit: usize, skip: &[String]) -> Result<Vec<Queued>> {
        self.with(|conn| queue::due(conn, now, limit, skip))
    }

    async fn dead_letters(&self) -> Result<Vec<Queued>> {
        self.with(|conn| queue::dead(conn))
    }

    async fn commit_events(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
        keys: &[String],
    ) -> Result<()> {
        self.write(|tx| {
            ledger::remember(tx, sync, delivered, records)?;
            queue::mark_done(tx, keys)
        })
    }

    async fn events_failed(
        &self,
        keys: &[String],
        error: &str,
        retry_at: Millis,
        max_attempts: u32,
    ) -> Result<()> {
        self.write(|tx| queue::failed(tx, keys, error, retry_at, max_attempts))
    }

    async fn requests_on(&self, day: &str) -> Result<u64> {
        self.with(|conn| {
            let n: Option<i64> = conn
                .query_row("SELECT requests FROM usage WHERE day = ?1", [day], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        })
    }

    async fn add_requests(&self, day: &str, n: u64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO usage (day, requests) VALUES (?1, ?2)
                 ON CONFLICT (day) DO UPDATE SET requests = requests + excluded.requests",
                rusqlite::params![day, i64::try_from(n).unwrap_or(i64::MAX)],
            )?;
            Ok(())
        })
    }

    async fn prune_done_events(&self, before: Millis) -> Result<usize> {
        self.write(|tx| queue::prune_done(tx, before))
    }

    async fn retry_dead(&self) -> Result<usize> {
        self.write(queue::retry_dead)
    }

    async fn queue_depth(&self) -> Result<QueueDepth> {
        self.with(|conn| queue::depth(conn))
    }

    async fn check_writable(&self) -> Result<()> {
        self.write(queue::heartbeat)
    }
}

/// SQLite integers are i64; HubSpot ids are far below 2^63.
fn to_sql(id: RecordId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn to_id(v: i64) -> RecordId {
    RecordId(u64::try_from(v).unwrap_or(0))
}
