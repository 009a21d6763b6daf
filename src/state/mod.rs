//! The state: where every sync stands, behind one storage interface ([`Storage`]).
//!
//! A sync is (object, destination). Per sync the state holds its cursor (the `hi` of
//! the last committed main window), the recheck cursor of the trailing pass, when the
//! archived records were last swept, the properties the destination was given, the open
//! window of each pass with its slices' checkpoints, and the ledger: the newest version
//! (or tombstone) of every record the destination confirmed. Besides: the runs, the
//! default sink's `records` table, the `--all-properties` name cache and the webhook
//! queue.
//!
//! Invariants (tested in `tests.rs` against every backend):
//! - a page's checkpoint, its ledger entries and (for the default sink) its records are
//!   written in one transaction, after the sink confirmed the page;
//! - a cursor moves only in [`Storage::commit_window`], which refuses while a slice of
//!   the window is not done, and in the explicit `cursor set|reset` commands;
//! - the ledger never goes back to an older version.
//!
//! The SQLite backend (`sqlite/`) keeps all of it in one WAL file; the Postgres backend
//! (`postgres/`) in a schema of the user's database, keyed by HubSpot portal as well.

mod location;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;

use crate::destination::Destination;
use crate::object::ObjectType;
use crate::properties::PropertySet;
use crate::record::{Record, RecordId};
use crate::report::RunReport;
use crate::timestamp::Millis;
use crate::webhook::event::Event;
use crate::window::{OpenWindow, Slice};

pub use location::Location;
pub use postgres::Postgres;
pub use sqlite::Sqlite;

/// A shared handle on the state.
pub type State = Arc<dyn Storage>;

/// Opens (creating and migrating if needed) the state at `db`. A Postgres state sees
/// every portal until narrowed with [`Storage::for_portal`].
///
/// # Errors
/// When it cannot be opened, is not a state, or has a newer schema.
pub async fn open(db: &Location) -> Result<State> {
    Ok(match db {
        Location::File(path) => Arc::new(Sqlite::open(path)?),
        Location::Postgres(url) => Arc::new(Postgres::open(url).await?),
    })
}

/// Opens an existing state to read it (`status`, `cursor show`, `dead-letters list`),
/// creating nothing: `None` when there is none yet. As [`open`] when it can be written
/// (so an older schema is migrated), else read-only, so that these commands work on a
/// file the user may only read.
///
/// # Errors
/// When it cannot be opened even read-only, is not a state, or has a newer schema.
pub async fn open_existing(db: &Location) -> Result<Option<State>> {
    match db {
        Location::File(path) if !path.exists() => Ok(None),
        Location::File(path) => match Sqlite::open(path) {
            Ok(state) => Ok(Some(Arc::new(state))),
            Err(e) if sqlite::is_read_only(&e) => Ok(Some(Arc::new(Sqlite::open_read_only(path)?))),
            Err(e) => Err(e),
        },
        Location::Postgres(url) => Ok(Postgres::open_existing(url)
            .await?
            .map(|state| Arc::new(state) as State)),
    }
}

/// `state` narrowed to `portal` when it keeps many portals; else `state` itself.
pub fn for_portal(state: State, portal: Option<u64>) -> State {
    match portal.and_then(|p| state.for_portal(p)) {
        Some(narrowed) => narrowed,
        None => state,
    }
}

/// What `status` shows for `sync`: `open` is its open window (of the first pass that
/// has one) with the pages checkpointed in it.
pub(crate) fn sync_status(
    sync: &Sync,
    open: Option<(Pass, OpenWindow, u64)>,
    last_run: Option<RunReport>,
) -> SyncStatus {
    SyncStatus {
        portal: sync.portal,
        object: sync.object.to_string(),
        destination: sync.destination.key().to_owned(),
        sink: sync.destination.sink().to_owned(),
        cursor: sync.cursor.map(Millis::to_rfc3339),
        cursor_ms: sync.cursor.map(|c| c.0),
        recheck_cursor: sync.recheck.map(Millis::to_rfc3339),
        recheck_cursor_ms: sync.recheck.map(|c| c.0),
        deletes_checked_at: sync.swept.map(Millis::to_rfc3339),
        open_window: open.map(|(pass, open, pages)| OpenWindowStatus {
            pass: pass.as_str(),
            window: open.window.into(),
            last_id: match open.slices.as_slice() {
                [one] => one.last_id.map(|i| i.0.to_string()),
                _ => None,
            },
            pages,
            seen: open.seen,
            total: open.total,
            refresh: open.refresh,
            slices: open.slices.iter().map(SliceStatus::from).collect(),
        }),
        last_run,
    }
}

/// The row of one (object, destination) in the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncId(pub i64);

/// Where one sync stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sync {
    pub id: SyncId,
    pub object: ObjectType,
    pub destination: Destination,
    /// The `hi` of the last committed main window.
    pub cursor: Option<Millis>,
    /// The `hi` of the last committed trailing (recheck) window.
    pub recheck: Option<Millis>,
    /// When the archived records were last swept for deletions.
    pub swept: Option<Millis>,
    /// What every record the destination holds was delivered with; `None` before the
    /// first run.
    pub properties: Option<PropertySet>,
    /// The HubSpot portal, in a state that keeps many (Postgres); `None` in a state
    /// file, which keeps one.
    pub portal: Option<u64>,
}

/// What a new sync does with the state a pre-destination file left unassigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unassigned {
    /// Take it over: only a main poll does, the one run that is surely the user's own.
    Claim,
    /// Leave it for the next poll.
    Leave,
}

/// A window's role in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The window from the cursor: committing it moves the cursor.
    Main,
    /// The trailing window an hour (`--recheck`) behind now, for a late search index;
    /// committing it moves the recheck cursor.
    Recheck,
    /// A window that moves no cursor (`reconcile`).
    Side,
}

impl Pass {
    /// The name stored in the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Main => "main",
            Pass::Recheck => "recheck",
            Pass::Side => "side",
        }
    }
}

impl Pass {
    /// The cursor column of `syncs` that committing this pass's window moves, if any.
    pub(crate) fn cursor_column(self) -> Option<&'static str> {
        match self {
            Pass::Main => Some("cursor_ms"),
            Pass::Recheck => Some("recheck_ms"),
            Pass::Side => None,
        }
    }
}

/// The last line of defence for the guarantee, for every backend: never move a cursor
/// past a slice that is not done (`slices` of the window, `open` of them not done).
///
/// # Errors
/// When a slice is not done, or there are none.
pub(crate) fn all_slices_done(pass: Pass, object: &str, slices: i64, open: i64) -> Result<()> {
    anyhow::ensure!(
        slices > 0 && open == 0,
        "refusing to commit the {} window of {object}: {open} of {slices} slices are not done",
        pass.as_str(),
    );
    Ok(())
}

/// What a destination holds of one record: the version (its modified time) and whether
/// it is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub modified: Millis,
    pub archived: bool,
}

/// One ledger entry, for `verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: RecordId,
    pub held: Held,
}

/// What a confirmed page moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub slice: u32,
    /// The page's last id; `None` for an empty page.
    pub last_id: Option<RecordId>,
    /// Whether this was the slice's last page.
    pub done: bool,
    /// Records the page held (for progress).
    pub records: u64,
    /// What the window's first page said it holds (for progress), if this is it.
    pub total: Option<u64>,
}

/// Whether the default sink's records go into the same transaction as the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsTable {
    Write,
    Skip,
}

/// A run's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId(pub i64);

/// What `status` shows for one sync.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The HubSpot portal, in a state that keeps many (Postgres).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal: Option<u64>,
    pub object: String,
    pub destination: String,
    pub sink: String,
    pub cursor: Option<String>,
    pub cursor_ms: Option<i64>,
    pub recheck_cursor: Option<String>,
    pub recheck_cursor_ms: Option<i64>,
    pub deletes_checked_at: Option<String>,
    pub open_window: Option<OpenWindowStatus>,
    pub last_run: Option<RunReport>,
}

/// An open window as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenWindowStatus {
    pub pass: &'static str,
    #[serde(flatten)]
    pub window: crate::report::WindowReport,
    /// The checkpoint while the window is one slice.
    pub last_id: Option<String>,
    pub pages: u64,
    /// Records scanned so far, and how many the window holds.
    pub seen: u64,
    pub total: Option<u64>,
    pub refresh: bool,
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

/// A queued webhook event as the worker and `dead-letters` see it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub key: String,
    pub object: String,
    pub id: u64,
    pub kind: String,
    pub occurred_ms: i64,
    /// For a record merged away: the record it was merged into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// How many events wait, and how many were given up on.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    pub queued: u64,
    pub dead: u64,
    /// Since when the longest-waiting due event has been due (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_due_ms: Option<i64>,
}

/// The state, whatever keeps it. Every method is one transaction.
#[async_trait]
pub trait Storage: Send + std::marker::Sync {
    /// What this state is, for messages: `state file /srv/state.db`.
    fn describe(&self) -> String;

    /// The database of a Postgres state: a postgres sink in the same one records each
    /// page's checkpoint in the transaction that writes its rows.
    fn postgres(&self) -> Option<&crate::postgres::PgUrl> {
        None
    }

    /// This state narrowed to `portal`, when it keeps many portals (Postgres); `None`
    /// when it is one portal's already (a SQLite file).
    fn for_portal(&self, _portal: u64) -> Option<State> {
        None
    }

    /// The portals the state keeps syncs of, when it keeps many.
    ///
    /// # Errors
    /// On storage errors.
    async fn portals(&self) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }

    // --- syncs ---------------------------------------------------------------------

    /// The sync of `object` to `destination`, created if new. With [`Unassigned::Claim`]
    /// a new sync takes over the state of `object` that a pre-destination state file
    /// held (what it holds belongs to the destination of the object's next poll).
    ///
    /// # Errors
    /// On storage errors.
    async fn sync(
        &self,
        object: &ObjectType,
        destination: &Destination,
        unassigned: Unassigned,
    ) -> Result<Sync>;

    /// The syncs of `object` (all when `None`), by object and destination.
    ///
    /// # Errors
    /// On storage errors.
    async fn syncs(&self, object: Option<&ObjectType>) -> Result<Vec<Sync>>;

    /// Records what the destination is given from now on.
    ///
    /// # Errors
    /// On storage errors.
    async fn set_properties(&self, sync: SyncId, properties: &PropertySet) -> Result<()>;

    /// Moves the cursor and closes the open main window (`cursor set`).
    ///
    /// # Errors
    /// On storage errors.
    async fn set_cursor(&self, sync: SyncId, cursor: Millis) -> Result<()>;

    /// Forgets the cursors and open windows, and with `forget_delivered` the ledger
    /// (`cursor reset`).
    ///
    /// # Errors
    /// On storage errors.
    async fn reset(&self, sync: SyncId, forget_delivered: bool) -> Result<()>;

    /// Records that the archived records were swept at `at`.
    ///
    /// # Errors
    /// On storage errors.
    async fn set_swept(&self, sync: SyncId, at: Millis) -> Result<()>;

    // --- windows and runs ----------------------------------------------------------

    /// The window of `pass` a previous run left open, with its slices' checkpoints.
    ///
    /// # Errors
    /// On storage errors.
    async fn open_window(&self, sync: SyncId, pass: Pass) -> Result<Option<OpenWindow>>;

    /// Records the start of a run: marks runs of the sync that never finished as
    /// interrupted (the caller holds the lock), opens the window of `report` for `pass`
    /// unless it is being resumed, and inserts the run's row.
    ///
    /// # Errors
    /// On storage errors.
    async fn start_run(&self, sync: SyncId, pass: Pass, report: &RunReport) -> Result<RunId>;

    /// Replaces the open window's slice `whole` (not done) by `parts`, which cover its
    /// remaining ids, and marks `whole` done up to its checkpoint.
    ///
    /// # Errors
    /// On storage errors; the window then stays one slice.
    async fn split(&self, sync: SyncId, pass: Pass, whole: &Slice, parts: &[Slice]) -> Result<()>;

    /// Checkpoints a confirmed page: its ledger entries, the records for the default
    /// sink, the slice's `last_id` and whether it is done.
    ///
    /// # Errors
    /// On storage errors; nothing of the page is then written.
    async fn commit_page(
        &self,
        sync: SyncId,
        pass: Pass,
        checkpoint: Checkpoint,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()>;

    /// Commits the window of `pass`: moves its cursor to `to` (the main cursor for
    /// [`Pass::Main`], the recheck cursor for [`Pass::Recheck`], none for
    /// [`Pass::Side`]), closes the window and finishes the run's row.
    ///
    /// # Errors
    /// When a slice is not done, or on storage errors; the cursor then stays.
    async fn commit_window(
        &self,
        sync: SyncId,
        pass: Pass,
        to: Option<Millis>,
        run: RunId,
        report: &RunReport,
    ) -> Result<()>;

    /// Finishes a run that did not commit; the cursor and the open window stay.
    ///
    /// # Errors
    /// On storage errors.
    async fn finish_run(&self, run: RunId, report: &RunReport) -> Result<()>;

    /// Requests counted on `day` (UTC, `YYYY-MM-DD`), by every run on this state.
    ///
    /// # Errors
    /// On storage errors.
    async fn requests_on(&self, day: &str) -> Result<u64>;

    /// Counts `n` more requests on `day`.
    ///
    /// # Errors
    /// On storage errors.
    async fn add_requests(&self, day: &str, n: u64) -> Result<()>;

    // --- the ledger ----------------------------------------------------------------

    /// What the destination holds of `ids`.
    ///
    /// # Errors
    /// On storage errors.
    async fn held(&self, sync: SyncId, ids: &[RecordId]) -> Result<HashMap<RecordId, Held>>;

    /// Records versions the sink confirmed outside a window (the deletion sweep,
    /// `verify --repair`), with the records for the default sink.
    ///
    /// # Errors
    /// On storage errors.
    async fn record_delivered(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()>;

    /// Up to `limit` ledger entries with ids after `after`, by id.
    ///
    /// # Errors
    /// On storage errors.
    async fn ledger_page(
        &self,
        sync: SyncId,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>>;

    // --- caches and reports ----------------------------------------------------------

    /// The property names of `object` cached less than `max_age` ago.
    ///
    /// # Errors
    /// On storage errors.
    async fn cached_property_names(
        &self,
        object: &ObjectType,
        max_age: std::time::Duration,
    ) -> Result<Option<Vec<String>>>;

    /// Caches the property names of `object`.
    ///
    /// # Errors
    /// On storage errors.
    async fn cache_property_names(&self, object: &ObjectType, names: &[String]) -> Result<()>;

    /// The HubSpot portal id cached for `account` (a digest of the base URL and token).
    ///
    /// # Errors
    /// On storage errors.
    async fn portal(&self, account: &str) -> Result<Option<u64>>;

    /// Caches the portal id of `account`.
    ///
    /// # Errors
    /// On storage errors.
    async fn remember_portal(&self, account: &str, portal: u64) -> Result<()>;

    /// Binds the shared sink `target` (its stored form) to `portal` on first use, and
    /// returns the portal it is bound to: one state file's cursors for one target can
    /// serve one portal only.
    ///
    /// # Errors
    /// On storage errors.
    async fn bind_portal(&self, target: &str, portal: u64) -> Result<u64>;

    /// Where every sync stands, by object and destination.
    ///
    /// # Errors
    /// On storage errors.
    async fn status(&self) -> Result<Vec<SyncStatus>>;

    /// Up to `n` rows of the default sink's records of `object`, as JSON lines.
    ///
    /// # Errors
    /// On storage errors.
    async fn sample_records(&self, object: &ObjectType, n: usize) -> Result<Vec<String>>;

    // --- the webhook queue -----------------------------------------------------------

    /// Queues `events`; an event already queued (a redelivery) is ignored. Returns how
    /// many were new.
    ///
    /// # Errors
    /// On storage errors; then nothing was queued.
    async fn enqueue(&self, events: &[Event], now: Millis) -> Result<usize>;

    /// Up to `limit` queued events due at `now`, oldest `occurredAt` first, leaving out
    /// the object types in `skip` (those a poll holds the lock of).
    ///
    /// # Errors
    /// On storage errors.
    async fn due_events(&self, now: Millis, limit: usize, skip: &[String]) -> Result<Vec<Queued>>;

    /// Binds the webhook queue (of this handle's portal) to `destination` on first use
    /// and returns the destination it is bound to: the queue marks an event done for
    /// one destination, so every worker taking from it must deliver to that one.
    ///
    /// # Errors
    /// On storage errors.
    async fn bind_queue(&self, destination: &str) -> Result<String> {
        Ok(destination.to_owned())
    }

    /// Ends the claim [`Storage::due_events`] took on `keys` without counting an attempt
    /// (their object's lock was held), where events are claimed (Postgres).
    ///
    /// # Errors
    /// On storage errors.
    async fn release_events(&self, _keys: &[String]) -> Result<()> {
        Ok(())
    }

    /// The events given up on.
    ///
    /// # Errors
    /// On storage errors.
    async fn dead_letters(&self) -> Result<Vec<Queued>>;

    /// Records a batch's delivered versions and marks its events done.
    ///
    /// # Errors
    /// On storage errors; then nothing is marked.
    async fn commit_events(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
        keys: &[String],
    ) -> Result<()>;

    /// Counts a failed attempt on `keys`: retried at `retry_at`, or dead after
    /// `max_attempts`.
    ///
    /// # Errors
    /// On storage errors.
    async fn events_failed(
        &self,
        keys: &[String],
        error: &str,
        retry_at: Millis,
        max_attempts: u32,
    ) -> Result<()>;

    /// Forgets done events received before `before`.
    ///
    /// # Errors
    /// On storage errors.
    async fn prune_done_events(&self, before: Millis) -> Result<usize>;

    /// Queues every dead event again; returns how many.
    ///
    /// # Errors
    /// On storage errors.
    async fn retry_dead(&self) -> Result<usize>;

    /// How many events wait and how many are dead.
    ///
    /// # Errors
    /// On storage errors.
    async fn queue_depth(&self) -> Result<QueueDepth>;

    /// Whether the state takes writes (for `/healthz`): a real write, so that a full
    /// disk shows, not just the lock.
    ///
    /// # Errors
    /// When it does not.
    async fn check_writable(&self) -> Result<()>;
}

impl Queued {
    /// The event's kind.
    pub fn event_kind(&self) -> crate::webhook::event::EventKind {
        crate::webhook::event::EventKind::parse(&self.kind)
    }
}
