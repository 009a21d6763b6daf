//! The Postgres backend (`--db postgres://…`): the whole state in the schema
//! `martech_sync` of the user's database, which many processes on many machines share.
//! Each concern's SQL lives in its own file (`schema`, `syncs`, `windows`, `ledger`,
//! `queue`); this file holds the connection and implements [`Storage`] on it.
//!
//! Every sync is keyed by the HubSpot portal as well as by object and destination, so
//! one database holds many portals. A handle is opened for all portals (what `status`
//! reads) and narrowed to one with [`Storage::for_portal`] (what a run with a token
//! writes): a narrowed handle sees and writes only its portal's syncs, queue and counts.
//!
//! One connection per handle, behind an async mutex, as the SQLite backend has one per
//! file; a connection found closed (a server restart) is opened again on next use.
//! Every method is one transaction at READ COMMITTED: the object locks (advisory locks,
//! `lock.rs`) keep two runs off one sync, the ledger's upsert never goes back to an
//! older version, and the queue is claimed with `FOR UPDATE SKIP LOCKED`.

mod fence;
mod ledger;
mod queue;
pub mod schema;

pub use fence::LockLost;
mod syncs;
mod windows;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use super::{
    Checkpoint, Held, LedgerEntry, Pass, QueueDepth, Queued, RecordsTable, RunId, State, Storage,
    Sync, SyncId, SyncStatus, Unassigned,
};
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::postgres::PgUrl;
use crate::properties::PropertySet;
use crate::record::{Record, RecordId};
use crate::report::RunReport;
use crate::timestamp::Millis;
use crate::webhook::event::Event;
use crate::window::{OpenWindow, Slice};

/// The state in a Postgres database.
pub struct Postgres {
    url: PgUrl,
    conn: Arc<Mutex<Option<Client>>>,
    /// The portal this handle is narrowed to; `None` sees every portal and may not
    /// write a portal's rows.
    portal: Option<u64>,
}

/// A handle used before [`Storage::for_portal`] for what only a portal's handle does.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Postgres state holds many portals' syncs: this needs the portal (its token, or --portal)"
)]
pub struct NoPortal;

/// The connection, opened.
struct Conn<'a>(MutexGuard<'a, Option<Client>>);

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("opened by Postgres::conn"))
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("opened by Postgres::conn"))
    }
}

impl Postgres {
    /// Connects and migrates the schema.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses the login, or the schema is newer
    /// than this build or cannot be created.
    pub async fn open(url: &PgUrl) -> Result<Postgres> {
        let mut client = connect(url).await?;
        schema::migrate(&mut client)
            .await
            .map_err(|e| named(e, url))?;
        Ok(Postgres {
            url: url.clone(),
            conn: Arc::new(Mutex::new(Some(client))),
            portal: None,
        })
    }

    /// Connects to a state to read it (`status`), creating nothing: `None` when the
    /// database holds no state yet. An older schema is migrated first.
    ///
    /// # Errors
    /// As [`Postgres::open`].
    pub async fn open_existing(url: &PgUrl) -> Result<Option<Postgres>> {
        let client = connect(url).await?;
        match schema::version(&client).await.map_err(|e| named(e, url))? {
            None => Ok(None),
            Some(v) if v == schema::MIGRATIONS.len() => Ok(Some(Postgres {
                url: url.clone(),
                conn: Arc::new(Mutex::new(Some(client))),
                portal: None,
            })),
            Some(_) => Ok(Some(Self::open(url).await?)),
        }
    }

    /// The connection, opened again if it was lost.
    async fn conn(&self) -> Result<Conn<'_>> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            *guard = Some(connect(&self.url).await?);
        }
        Ok(Conn(guard))
    }

    /// The portal of a narrowed handle, as Postgres stores it.
    fn portal(&self) -> Result<i64> {
        let portal = self.portal.ok_or(NoPortal)?;
        i64::try_from(portal).context("a portal id past 2^63")
    }

    /// The portal filter of reads: `None` for every portal.
    fn scope(&self) -> Option<i64> {
        self.portal.and_then(|p| i64::try_from(p).ok())
    }

    /// `e` with the state named.
    fn named<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| named(e, &self.url))
    }
}

async fn connect(url: &PgUrl) -> Result<Client> {
    let client = url
        .connect()
        .await
        .map_err(|e| named(e.context("connecting"), url))?;
    // A holder of an advisory lock on a machine that died is found out by TCP
    // keepalives: these settings have the server drop its session, and so the lock,
    // within about 10 s ("Connections and Authentication", tcp_keepalives_*).
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 4; SET tcp_keepalives_interval = 2; \
             SET tcp_keepalives_count = 3",
        )
        .await
        .map_err(|e| named(e.into(), url))?;
    Ok(client)
}

/// `e` with the state named; refused logins, missing databases and lacking privileges
/// (SQLSTATE classes 28, 3D and 42), a password given nowhere and a newer schema exit
/// 78: no rerun fixes them.
fn named(e: anyhow::Error, url: &PgUrl) -> anyhow::Error {
    let fatal = e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>().is_some_and(|pg| {
            pg.code().is_some_and(|code| {
                let code = code.code();
                code.starts_with("28") || code.starts_with("3D") || code.starts_with("42")
            }) || pg.to_string().starts_with("invalid configuration")
        })
    });
    if e.is::<StateUnusable>() || e.downcast_ref::<Named>().is_some() {
        return e;
    }
    if fatal || e.is::<super::sqlite::NewerSchema>() {
        let why = format!("{e:#}");
        StateUnusable {
            state: url.to_string(),
            why: if why.contains("password missing") {
                format!("{why} (give it in PGPASSWORD)")
            } else {
                why
            },
        }
        .into()
    } else {
        e.context(Named(url.to_string()))
    }
}

/// The context that names the state in an error, once.
#[derive(Debug)]
struct Named(String);

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state in {}", self.0)
    }
}

/// The Postgres state refuses this user, this database or this build. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the state in {state}: {why}")]
pub struct StateUnusable {
    pub state: String,
    pub why: String,
}

/// Runs `$body` in one transaction named `$tx` on `$self`'s connection.
macro_rules! in_tx {
    ($self:ident, $tx:ident => $body:expr) => {
        $self.named(
            async {
                let mut conn = $self.conn().await?;
                let $tx = conn.transaction().await?;
                let out = $body;
                $tx.commit().await?;
                Ok(out)
            }
            .await,
        )
    };
}

/// Runs `$body` with `$self`'s connection as `$c`.
macro_rules! on_conn {
    ($self:ident, $c:ident => $body:expr) => {
        $self.named(
            async {
                let conn = $self.conn().await?;
                let $c: &Client = &conn;
                Ok($body)
            }
            .await,
        )
    };
}

#[async_trait]
impl Storage for Postgres {
    fn describe(&self) -> String {
        match self.portal {
            Some(portal) => format!("the state of portal {portal} in {}", self.url),
            None => format!("the state in {}", self.url),
        }
    }

    fn postgres(&self) -> Option<&PgUrl> {
        Some(&self.url)
    }

    fn for_portal(&self, portal: u64) -> Option<State> {
        Some(Arc::new(Postgres {
            url: self.url.clone(),
            conn: Arc::clone(&self.conn),
            portal: Some(portal),
        }))
    }

    async fn portals(&self) -> Result<Vec<u64>> {
        on_conn!(self, c => syncs::portals(c).await?)
    }

    async fn sync(
        &self,
        object: &ObjectType,
        destination: &Destination,
        _unassigned: Unassigned,
    ) -> Result<Sync> {
        let portal = self.portal()?;
        in_tx!(self, tx => syncs::sync(&tx, portal, object, destination).await?)
    }

    async fn syncs(&self, object: Option<&ObjectType>) -> Result<Vec<Sync>> {
        let portal = self.scope();
        on_conn!(self, c => syncs::all(c, portal, object).await?)
    }

    async fn set_properties(&self, sync: SyncId, properties: &PropertySet) -> Result<()> {
        in_tx!(self, tx => syncs::set_properties(&tx, sync, properties).await?)
    }

    async fn set_cursor(&self, sync: SyncId, cursor: Millis) -> Result<()> {
        in_tx!(self, tx => syncs::set_cursor(&tx, sync, cursor).await?)
    }

    async fn reset(&self, sync: SyncId, forget_delivered: bool) -> Result<()> {
        in_tx!(self, tx => syncs::reset(&tx, sync, forget_delivered).await?)
    }

    async fn set_swept(&self, sync: SyncId, at: Millis) -> Result<()> {
        in_tx!(self, tx => syncs::set_swept(&tx, sync, at).await?)
    }

    async fn open_window(&self, sync: SyncId, pass: Pass) -> Result<Option<OpenWindow>> {
        on_conn!(self, c => windows::open_window(c, sync, pass).await?)
    }

    async fn start_run(&self, sync: SyncId, pass: Pass, report: &RunReport) -> Result<RunId> {
        in_tx!(self, tx => windows::start_run(&tx, sync, pass, report).await?)
    }

    async fn split(&self, sync: SyncId, pass: Pass, whole: &Slice, parts: &[Slice]) -> Result<()> {
        in_tx!(self, tx => windows::split(&tx, sync, pass, whole, parts).await?)
    }

    async fn commit_page(
        &self,
        sync: SyncId,
        pass: Pass,
        checkpoint: Checkpoint,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()> {
        in_tx!(self, tx => record_page(&tx, sync, pass, checkpoint, delivered, records).await?)
    }

    async fn commit_window(
        &self,
        sync: SyncId,
        pass: Pass,
        to: Option<Millis>,
        run: RunId,
        report: &RunReport,
    ) -> Result<()> {
        in_tx!(self, tx => {
            fence::fence(&tx, sync).await?;
            windows::commit(&tx, sync, pass, to, run, report).await?
        })
    }

    async fn finish_run(&self, run: RunId, report: &RunReport) -> Result<()> {
        in_tx!(self, tx => windows::finish_run(&tx, run, report).await?)
    }

    async fn requests_on(&self, day: &str) -> Result<u64> {
        let portal = self.scope();
        on_conn!(self, c => {
            let n: Option<i64> = c
                .query_one(
                    "SELECT SUM(requests)::BIGINT FROM martech_sync.usage
                     WHERE day = $1 AND ($2::BIGINT IS NULL OR portal_id = $2)",
                    &[&day, &portal],
                )
                .await?
                .get(0);
            n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
        })
    }

    async fn add_requests(&self, day: &str, n: u64) -> Result<()> {
        let portal = self.portal()?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        in_tx!(self, tx => {
            tx.execute(
                "INSERT INTO martech_sync.usage (portal_id, day, requests) VALUES ($1, $2, $3)
                 ON CONFLICT (portal_id, day) DO UPDATE SET requests = usage.requests + excluded.requests",
                &[&portal, &day, &n],
            )
            .await?;
        })
    }

    async fn held(&self, sync: SyncId, ids: &[RecordId]) -> Result<HashMap<RecordId, Held>> {
        on_conn!(self, c => ledger::held(c, sync, ids).await?)
    }

    async fn record_delivered(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
    ) -> Result<()> {
        in_tx!(self, tx => ledger::remember(&tx, sync, delivered, records).await?)
    }

    async fn ledger_page(
        &self,
        sync: SyncId,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        on_conn!(self, c => ledger::page(c, sync, after, limit).await?)
    }

    async fn cached_property_names(
        &self,
        object: &ObjectType,
        max_age: Duration,
    ) -> Result<Option<Vec<String>>> {
        let portal = self.portal()?;
        on_conn!(self, c => syncs::cached_property_names(c, portal, object, max_age).await?)
    }

    async fn cache_property_names(&self, object: &ObjectType, names: &[String]) -> Result<()> {
        let portal = self.portal()?;
        in_tx!(self, tx => syncs::cache_property_names(&tx, portal, object, names).await?)
    }

    async fn portal(&self, account: &str) -> Result<Option<u64>> {
        on_conn!(self, c => syncs::portal(c, account).await?)
    }

    async fn remember_portal(&self, account: &str, portal: u64) -> Result<()> {
        in_tx!(self, tx => syncs::remember_portal(&tx, account, portal).await?)
    }

    async fn bind_portal(&self, _target: &str, portal: u64) -> Result<u64> {
        // Every row is keyed by its portal: a target can hold many.
        Ok(portal)
    }

    async fn status(&self) -> Result<Vec<SyncStatus>> {
        let portal = self.scope();
        on_conn!(self, c => windows::status(c, portal).await?)
    }

    async fn sample_records(&self, object: &ObjectType, n: usize) -> Result<Vec<String>> {
        let portal = self.scope();
        on_conn!(self, c => ledger::sample_records(c, portal, object, n).await?)
    }

    async fn enqueue(&self, events: &[Event], now: Millis) -> Result<usize> {
        in_tx!(self, tx => queue::enqueue(&tx, events, now).await?)
    }

    async fn due_events(&self, _now: Millis, limit: usize, skip: &[String]) -> Result<Vec<Queued>> {
        // Due by the server's clock, which every worker shares.
        let portal = self.portal()?;
        in_tx!(self, tx => queue::claim(&tx, portal, limit, skip).await?)
    }

    async fn bind_queue(&self, destination: &str) -> Result<String> {
        let portal = self.portal()?;
        in_tx!(self, tx => queue::bind(&tx, portal, destination).await?)
    }

    async fn release_events(&self, keys: &[String]) -> Result<()> {
        in_tx!(self, tx => queue::release(&tx, keys).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<Queued>> {
        let portal = self.scope();
        on_conn!(self, c => queue::dead(c, portal).await?)
    }

    async fn commit_events(
        &self,
        sync: SyncId,
        delivered: &[&Record],
        records: RecordsTable,
        keys: &[String],
    ) -> Result<()> {
        in_tx!(self, tx => {
            fence::fence(&tx, sync).await?;
            ledger::remember(&tx, sync, delivered, records).await?;
            queue::mark_done(&tx, keys).await?
        })
    }

    async fn events_failed(
        &self,
        keys: &[String],
        error: &str,
        retry_at: Millis,
        max_attempts: u32,
    ) -> Result<()> {
        in_tx!(self, tx => queue::failed(&tx, keys, error, retry_at, max_attempts).await?)
    }

    async fn prune_done_events(&self, before: Millis) -> Result<usize> {
        in_tx!(self, tx => queue::prune_done(&tx, before).await?)
    }

    async fn retry_dead(&self) -> Result<usize> {
        let portal = self.scope();
        in_tx!(self, tx => queue::retry_dead(&tx, portal).await?)
    }

    async fn queue_depth(&self) -> Result<QueueDepth> {
        let portal = self.scope();
        on_conn!(self, c => queue::depth(c, portal).await?)
    }

    async fn check_writable(&self) -> Result<()> {
        in_tx!(self, tx => queue::heartbeat(&tx).await?)
    }
}

/// Records a confirmed page in `tx`: the fence, the versions delivered and the slice's
/// checkpoint. `tx` may be another connection's to the same database: the postgres
/// sink's, so that a page's rows and their checkpoint commit as one.
///
/// # Errors
/// [`LockLost`], or on database errors; then nothing of the page is written.
pub async fn record_page(
    tx: &tokio_postgres::Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    checkpoint: Checkpoint,
    delivered: &[&Record],
    records: RecordsTable,
) -> Result<()> {
    fence::fence(tx, sync).await?;
    ledger::remember(tx, sync, delivered, records).await?;
    windows::checkpoint(tx, sync, pass, checkpoint).await
}

/// Record ids as Postgres stores them (HubSpot's are far below 2^63).
fn to_sql(id: RecordId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn to_id(v: i64) -> RecordId {
    RecordId(u64::try_from(v).unwrap_or(0))
}

/// A count as Postgres stores it.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uncount(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
