//! The engine: a run of one sync (object, destination). Its main window goes page by
//! keyed page, each page through the sink and then checkpointed, the cursor committed
//! only after the last page (docs/ARCHITECTURE.md, "The window engine"). Then, on a
//! poll, the trailing window of `--recheck` (for a late search index) and, when due, the
//! sweep of archived records that turns deletions into tombstones. Planning is in
//! `window.rs`, the ledger's decisions in `ledger.rs`, storage in `state/`, HTTP in
//! `hubspot/`.
//!
//! Data flow of a scan: fetcher tasks (`fetch.rs`) page ahead of delivery and send pages
//! down a bounded channel; the one consumer here hands each page's news to the sink and
//! checkpoints it. A fresh large window is split into id slices after its first page,
//! which tells how big it is: `concurrency` search workers take slices from the top and,
//! in a backfill, the list part takes them from the bottom, all under the client's
//! pacing, so a slow API still reaches the rate limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::destination::Destination;
use crate::fetch::{self, Claims, Fetched, Fetcher, hydrated};
use crate::hubspot::Client;
use crate::hubspot::client::is_budget_exhausted;
use crate::hubspot::list::Listing;
use crate::hubspot::search::{Page, SearchBody};
use crate::ledger;
use crate::object::ObjectType;
use crate::progress::{Progress, ProgressMode};
use crate::properties::PropertySet;
use crate::record::{Record, RecordId};
use crate::report::{Outcome, PassReport, RunReport, SweepReport};
use crate::shutdown::Shutdown;
use crate::sink::{HandlerOptions, Sink, SinkSpec};
use crate::state::{Checkpoint, Held, Pass, RunId, State, Sync, SyncId, Unassigned};
use crate::timestamp::Millis;
use crate::window::{self, Ask, Margins, Plan, Slice, Window};

/// Which properties a run asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// These names (the engine adds the ones it needs).
    Named(Vec<String>),
    /// Every property of the object (`--all-properties`): search returns ids, batch read
    /// the values.
    All,
    /// What the destination was last given, else the object's defaults (`reconcile`,
    /// `serve`: they have no property flags of their own).
    Stored,
}

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct PollJob {
    pub object: ObjectType,
    pub destination: Destination,
    /// [`Pass::Main`] for `poll`, [`Pass::Side`] for `reconcile` (no cursor moves).
    pub pass: Pass,
    pub ask: Ask,
    pub margins: Margins,
    pub wanted: Wanted,
    pub page_size: u32,
    /// Search requests in flight at once; a large window is split into twice as many
    /// slices. 1 scans sequentially.
    pub concurrency: u32,
    /// How far behind now the trailing window ends; zero turns it off.
    pub recheck: Duration,
    /// How often the archived records are swept for deletions; zero: every run;
    /// `None`: never.
    pub deletes_every: Option<Duration>,
}

/// A run with this many retries or 429s (and at least a tenth of its requests) says so
/// at WARN; fewer are routine, on an account shared with other apps above all.
const RETRIES_WARN: u64 = 10;

/// Where the schemas of custom objects are cached (beside the property lists).
const SCHEMAS_KEY: &str = "#schemas";

/// How long the property list of `--all-properties` is reused.
const PROPERTY_LIST_AGE: Duration = Duration::from_secs(86_400);

/// A stored cursor this far ahead of the clock means the clock jumped (or a hand set
/// it): the run fails rather than skip what lies between.
const FUTURE_SLACK: Duration = Duration::from_secs(60);

/// A run asks for properties the destination never got. Exits 2: the user must choose
/// `--refresh` (re-deliver everything) or the old list.
#[derive(Debug, thiserror::Error)]
#[error(
    "{object} -> {destination}: this run asks for properties the destination was never given ({added}); \
     versions it already has would not be sent again, so they would never carry them. \
     Run `martech-sync poll {object}{flag} --refresh` once (with your other flags) to re-deliver \
     its whole history with the new list, or go back to the old list"
)]
pub struct NeedsRefresh {
    object: ObjectType,
    destination: Destination,
    /// How to name the destination on a command line.
    flag: String,
    added: String,
}

/// The stored cursor is in the future: the clock jumped back, or it was set by hand.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cursor of {object} -> {destination} is {cursor}, {ahead} ahead of this machine's clock \
     ({now}): did the clock jump? Nothing later than now can be synced from it. Fix the clock, \
     or move the cursor back with `martech-sync cursor set {object} <WHEN>{flag}` (or `cursor reset`)"
)]
pub struct FutureCursor {
    object: ObjectType,
    destination: Destination,
    flag: String,
    cursor: Millis,
    now: Millis,
    ahead: String,
}

/// How far a scan got.
enum Scanned {
    Complete,
    /// A shutdown was requested; the window stays open.
    Interrupted,
}

/// How a run ended: its report, and the error when it did not commit.
pub struct Finished {
    pub report: RunReport,
    pub error: Option<anyhow::Error>,
    /// The window's row in the runs, when it got one.
    run: Option<RunId>,
}

impl Finished {
    /// The run's error, if any, for the exit code.
    ///
    /// # Errors
    /// When the run did not commit.
    pub fn into_result(self) -> Result<RunReport> {
        match self.error {
            None => Ok(self.report),
            Some(e) => Err(e),
        }
    }
}

/// The engine with what it works on: a client, the state and the sink.
pub struct Engine {
    pub(crate) client: Client,
    pub(crate) state: State,
    pub(crate) sink: Sink,
    progress: ProgressMode,
}

/// The properties of one run, resolved against what the destination was given.
struct Properties {
    /// Whether the main window re-delivers the destination's history (`--refresh`, and
    /// the list grew).
    refresh: bool,
    /// What to record as the destination's list once its window is open.
    remember: Option<PropertySet>,
    /// In the search body.
    search: Vec<String>,
    /// With `--all-properties`: what batch read fetches for each page.
    hydrate: Option<Arc<[String]>>,
}

impl Engine {
    /// The engine over what is already open.
    pub fn new(state: State, client: Client, sink: Sink, progress: ProgressMode) -> Engine {
        Engine {
            client,
            state,
            sink,
            progress,
        }
    }

    /// Runs `job` once: its window (plans it, scans it, commits it), then for a poll the
    /// trailing recheck window and, when due, the deletion sweep. A `shutdown` stops it
    /// between pages with the window left open (outcome `interrupted`).
    ///
    /// # Errors
    /// [`NeedsRefresh`], or when the state cannot even record the run; every other
    /// failure is in [`Finished::error`], with the cursor unchanged.
    pub async fn poll(
        &mut self,
        job: &PollJob,
        now: Millis,
        shutdown: &Shutdown,
    ) -> Result<Finished> {
        // Requests are counted by UTC day in the state, for `--daily-budget` and `status`.
        let day = now.to_rfc3339()[..10].to_owned();
        if self.client.daily_budget().is_some() {
            let used = self.state.requests_on(&day).await?;
            self.client.start_day(&day, used);
        }
        let before = self.client.counters().requests.load(Ordering::Relaxed);
        let finished = self.poll_once(job, now, shutdown).await;
        let made = self.client.counters().requests.load(Ordering::Relaxed) - before;
        if made > 0
            && let Err(e) = self.state.add_requests(&day, made).await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not count today's requests");
        }
        finished
    }

    async fn poll_once(
        &mut self,
        job: &PollJob,
        now: Millis,
        shutdown: &Shutdown,
    ) -> Result<Finished> {
        let object = self.resolve(&job.object).await?;
        let job = &PollJob {
            object,
            ..job.clone()
        };
        let before = self.state.syncs(Some(&job.object)).await?;
        let claim = if job.pass == Pass::Main {
            Unassigned::Claim
        } else {
            Unassigned::Leave
        };
        let sync = self
            .state
            .sync(&job.object, &job.destination, claim)
            .await?;
        let others: Vec<&str> = before
            .iter()
            .map(|s| s.destination.key())
            .filter(|k| *k != job.destination.key())
            .collect();
        if !before.iter().any(|s| s.id == sync.id) && !others.is_empty() && job.pass == Pass::Main {
            tracing::warn!(object = %job.object, destination = %job.destination,
                "a new destination for {}: this first run delivers all history to it; {} also syncs to {} \
                 (a changed --sink is a new destination; name one with --destination to keep its state)",
                job.object, job.object, others.join(", "));
        }
        let open = self.state.open_window(sync.id, job.pass).await?;
        let properties = self.properties(job, &sync, open.as_ref()).await?;
        if job.pass == Pass::Main
            && let Some(cursor) = sync.cursor
            && cursor > now.plus(FUTURE_SLACK)
        {
            let window = Window {
                lo: cursor,
                hi: now,
            };
            let mut report = RunReport::start(&job.object, job.destination.key(), window, false);
            let error = FutureCursor {
                object: job.object.clone(),
                flag: job.destination.flag(),
                destination: job.destination.clone(),
                cursor,
                now,
                ahead: humantime::format_duration(Duration::from_secs(
                    u64::try_from((cursor.0 - now.0) / 1000).unwrap_or(0),
                ))
                .to_string(),
            };
            report.finish(Outcome::Failed, Some(error.to_string()));
            return Ok(Finished {
                report,
                error: Some(error.into()),
                run: None,
            });
        }
        let plan = window::plan(sync.cursor, open, job.ask, now, job.margins)?;
        if let (Some(since), Some(c)) = (job.ask.bounds.since, sync.cursor)
            && since > c
            && job.pass == Pass::Main
        {
            tracing::warn!(object = %job.object, since = %since, cursor = %c,
                "--since is after the stored cursor: the cursor stays put, so the next run still covers the gap");
        }
        let mut finished = self
            .window(job, &sync, job.pass, plan, &properties, shutdown)
            .await?;
        let main_done = finished.error.is_none() && finished.report.outcome == Outcome::Committed;
        if job.pass != Pass::Main || !main_done || shutdown.requested() {
            return Ok(finished);
        }
        let counters = self.client.counters();
        let before = (
            counters.requests.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
            counters.rate_limited.load(Ordering::Relaxed),
        );
        let trailing = self
            .trailing_passes(job, &sync, now, &properties, shutdown, &mut finished.report)
            .await;
        // The summary counts the requests of the whole run.
        let counters = self.client.counters();
        let report = &mut finished.report;
        report.requests += counters.requests.load(Ordering::Relaxed) - before.0;
        report.retries += counters.retries.load(Ordering::Relaxed) - before.1;
        report.rate_limited += counters.rate_limited.load(Ordering::Relaxed) - before.2;
        if let Err(error) = trailing.as_ref()
            && is_budget_exhausted(error)
        {
            tracing::warn!(object = %job.object, "{error:#}: the recheck and deletion passes wait for the next run");
        } else if let Err(error) = trailing {
            let error = error.context(format!(
                "the window of {} -> {} committed, but",
                job.object, job.destination
            ));
            finished.report.error = Some(format!("{error:#}"));
            finished.error = Some(error);
        }
        let report = &finished.report;
        if report.rate_limited >= RETRIES_WARN && report.rate_limited * 10 >= report.requests {
            tracing::warn!(object = %job.object, rate_limited = report.rate_limited,
                requests = report.requests,
                "{} of {} requests were rate-limited (429): other apps may share the account's \
                 search limit; lower --rate-limit", report.rate_limited, report.requests);
        } else if report.retries >= RETRIES_WARN && report.retries * 10 >= report.requests {
            tracing::warn!(object = %job.object, retries = report.retries,
                requests = report.requests,
                "{} of {} requests needed a retry: HubSpot or the network is struggling (-v shows each)",
                report.retries, report.requests);
        }
        // The main window's row keeps the whole run's summary, for `status`.
        if let Some(run) = finished.run {
            self.state.finish_run(run, &finished.report).await?;
        }
        Ok(finished)
    }

    /// The trailing recheck window, then the deletion sweep when due.
    async fn trailing_passes(
        &mut self,
        job: &PollJob,
        sync: &Sync,
        now: Millis,
        properties: &Properties,
        shutdown: &Shutdown,
        report: &mut RunReport,
    ) -> Result<()> {
        let open = self.state.open_window(sync.id, Pass::Recheck).await?;
        let plan = window::plan_recheck(
            sync.recheck,
            sync.cursor,
            open,
            now,
            job.recheck,
            job.margins.overlap,
        );
        if let Some(plan) = plan {
            let recheck = self
                .window(job, sync, Pass::Recheck, plan, properties, shutdown)
                .await?;
            report.recheck = Some(PassReport::from(&recheck.report));
            if let Some(error) = recheck.error {
                return Err(error.context("the recheck window failed"));
            }
            if shutdown.requested() {
                return Ok(());
            }
        }
        // A sweep time in the future (a clock that jumped back) is due now.
        let due = job.deletes_every.is_some_and(|every| {
            sync.swept.is_none_or(|at| {
                at > now || now.0 - at.0 >= i64::try_from(every.as_millis()).unwrap_or(i64::MAX)
            })
        });

        if due {
            let mut sweep = SweepReport::default();
            let result = self.sweep(job, sync, now, shutdown, &mut sweep).await;
            report.deletes = Some(sweep);
            result.map_err(|e| e.context("the deletion sweep failed"))?;
        }
        Ok(())
    }

    /// Resolves the run's properties against what the destination was given, and
    /// records the new list: a first run's, a shrunk one, or a refresh's.
    async fn properties(
        &mut self,
        job: &PollJob,
        sync: &Sync,
        open: Option<&window::OpenWindow>,
    ) -> Result<Properties> {
        let object = &job.object;
        let set = match &job.wanted {
            Wanted::All => PropertySet::All,
            Wanted::Named(names) => PropertySet::named(&with_needed(object, names.clone())),
            Wanted::Stored => sync
                .properties
                .clone()
                .unwrap_or_else(|| PropertySet::named(&with_needed(object, defaults(object)))),
        };
        let open_refresh = open.is_some_and(|o| o.refresh);
        let first = match self.sink.ledger_page(object, None, 1).await? {
            Some(page) => page,
            None => self.state.ledger_page(sync.id, None, 1).await?,
        };
        let holds_records = !first.is_empty();
        // A destination that holds records but no list (filled by `reconcile` or the
        // webhook worker before any poll) was given the defaults.
        let given = sync.properties.clone().or_else(|| {
            holds_records.then(|| PropertySet::named(&with_needed(object, defaults(object))))
        });
        let grows = given.as_ref().is_some_and(|g| !g.covers(&set));
        if let Some(given) = &given
            && grows
            && holds_records
            && !job.ask.refresh
            && !open_refresh
            && job.pass == Pass::Main
        {
            let missing = given.missing(&set);
            let added = match missing.as_slice() {
                [] => "every property (--all-properties)".to_owned(),
                few if few.len() <= 5 => few.join(", "),
                many => format!("{} and {} more", many[..5].join(", "), many.len() - 5),
            };
            return Err(NeedsRefresh {
                object: object.clone(),
                flag: job.destination.flag(),
                destination: job.destination.clone(),
                added,
            }
            .into());
        }
        // A refresh re-delivers history only when the list grew; a --refresh left in a
        // crontab must not re-deliver everything every run.
        let refresh = open_refresh || (job.ask.refresh && grows);
        if job.ask.refresh && !refresh && job.pass == Pass::Main {
            tracing::info!(object = %object, destination = %job.destination,
                "nothing to refresh: the destination already has these properties (to hand every record over again, use `cursor reset --redeliver`)");
        }
        // What the destination is remembered to have: the list of its first run or last
        // refresh, and any list since that did not grow it (a smaller list narrows
        // nothing: going back to the old one needs no refresh).
        let remembered = match &given {
            Some(given) if !refresh && given.covers(&set) => given.clone(),
            _ => set.clone(),
        };
        // Recorded once the window is open (see `window`), so that a run that fails
        // before (a refresh that cannot reach HubSpot) leaves the old list.
        let remember = (sync.properties.as_ref() != Some(&remembered)).then_some(remembered);
        let (search, hydrate) = match &set {
            PropertySet::All => {
                let names = match self
                    .state
                    .cached_property_names(object, PROPERTY_LIST_AGE)
                    .await?
                {
                    Some(names) => names,
                    None => {
                        let names = self.client.property_names(object).await?;
                        self.state.cache_property_names(object, &names).await?;
                        names
                    }
                };
                (lean(object), Some(with_needed(object, names).into()))
            }
            PropertySet::Named(names) => (names.iter().cloned().collect(), None),
        };
        Ok(Properties {
            search,
            hydrate,
            refresh,
            remember,
        })
    }

    /// Plans, scans and commits one window of `pass`.
    async fn window(
        &mut self,
        job: &PollJob,
        sync: &Sync,
        pass: Pass,
        plan: Plan,
        properties: &Properties,
        shutdown: &Shutdown,
    ) -> Result<Finished> {
        let object = &job.object;
        let mut start = crate::progress::Start::default();
        let (window, slices, resumed, refresh) = match plan {
            Plan::Fresh(w) => (
                w,
                vec![Slice::WHOLE],
                false,
                properties.refresh && pass == Pass::Main,
            ),
            Plan::Resume(o) => {
                start = crate::progress::Start {
                    total: o.total,
                    seen: o.seen,
                };
                (o.window, o.slices, true, o.refresh)
            }
            Plan::Empty(w) => {
                let mut report = RunReport::start(object, job.destination.key(), w, false);
                report.finish(Outcome::Empty, None);
                tracing::info!(%object, pass = pass.as_str(), lo = %w.lo, hi = %w.hi,
                    "nothing to scan yet: the window is empty");
                return Ok(Finished {
                    report,
                    error: None,
                    run: None,
                });
            }
        };
        if resumed {
            tracing::info!(%object, pass = pass.as_str(), lo = %window.lo, hi = %window.hi,
                slices_left = slices.iter().filter(|s| !s.done).count(), "resuming an interrupted window");
        }
        let mut report = RunReport::start(object, job.destination.key(), window, resumed);
        report.refresh = refresh;
        let run = self.state.start_run(sync.id, pass, &report).await?;
        // The list is the destination's once a window delivers with it; for a refresh,
        // after its window is open (marked as a refresh), so that a failure in between
        // leaves a refresh the next run resumes rather than a list nobody delivered.
        if let Some(list) = &properties.remember
            && pass != Pass::Recheck
        {
            self.state.set_properties(sync.id, list).await?;
        }
        let counters = self.client.counters();
        let requests_before = counters.requests.load(Ordering::Relaxed);
        let retries_before = counters.retries.load(Ordering::Relaxed);
        let limited_before = counters.rate_limited.load(Ordering::Relaxed);

        let mut progress = Progress::start(self.progress, object.as_str(), start);
        let scan = Scan {
            client: &self.client,
            state: &self.state,
            sink: &mut self.sink,
            job,
            sync: sync.id,
            pass,
            refresh,
            window,
            shutdown,
            progress: &mut progress,
            search: &properties.search,
            hydrate: properties.hydrate.clone(),
            listing: false,
        };
        let scanned = scan.run(slices, &mut report).await;
        drop(progress);

        report.requests = counters.requests.load(Ordering::Relaxed) - requests_before;
        report.retries = counters.retries.load(Ordering::Relaxed) - retries_before;
        report.rate_limited = counters.rate_limited.load(Ordering::Relaxed) - limited_before;
        match scanned {
            Ok(Scanned::Interrupted) => {
                report.finish(Outcome::Interrupted, None);
                self.state.finish_run(run, &report).await?;
                tracing::info!(%object, pass = pass.as_str(), pages = report.pages, delivered = report.delivered,
                    "stopped; the window stays open and the next run resumes it");
                Ok(Finished {
                    report,
                    error: None,
                    run: Some(run),
                })
            }
            Ok(Scanned::Complete) => {
                report.finish(Outcome::Committed, None);
                let to = match pass {
                    Pass::Main => Some(window::next_cursor(sync.cursor, window)),
                    Pass::Recheck => Some(sync.recheck.map_or(window.hi, |c| c.max(window.hi))),
                    Pass::Side => None,
                };
                match self
                    .state
                    .commit_window(sync.id, pass, to, run, &report)
                    .await
                {
                    Ok(()) => {
                        let cursor = to.map_or_else(|| "-".to_owned(), |c| c.to_string());
                        tracing::info!(%object, destination = %job.destination, pass = pass.as_str(),
                            %cursor, pages = report.pages, delivered = report.delivered,
                            skipped = report.skipped, "window committed");
                        Ok(Finished {
                            report,
                            error: None,
                            run: Some(run),
                        })
                    }
                    // A refused commit (a slice not done) is a failed run like any other.
                    Err(error) => Ok(self.failed(run, report, error).await),
                }
            }
            // The daily budget ran out: the window stays open, like a stop.
            Err(error) if is_budget_exhausted(&error) => {
                report.finish(Outcome::BudgetExhausted, None);
                self.state.finish_run(run, &report).await?;
                tracing::warn!(%object, destination = %job.destination, pages = report.pages,
                    "{error:#}: the window stays open and the next run resumes it");
                Ok(Finished {
                    report,
                    error: None,
                    run: Some(run),
                })
            }
            Err(error) => Ok(self.failed(run, report, error).await),
        }
    }

    /// Records `run` as failed with `error`; the cursor stays where it was.
    async fn failed(&self, run: RunId, mut report: RunReport, error: anyhow::Error) -> Finished {
        report.finish(Outcome::Failed, Some(format!("{error:#}")));
        if let Err(e) = self.state.finish_run(run, &report).await {
            tracing::warn!(error = %format!("{e:#}"), "could not record the failed run");
        }
        Finished {
            report,
            error: Some(error),
            run: Some(run),
        }
    }

    /// Reads the archived records (the recycle bin) and hands the destination a
    /// tombstone for each it has not been told of.
    async fn sweep(
        &mut self,
        job: &PollJob,
        sync: &Sync,
        started: Millis,
        shutdown: &Shutdown,
        report: &mut SweepReport,
    ) -> Result<()> {
        let object = &job.object;
        let counters = self.client.counters();
        let requests_before = counters.requests.load(Ordering::Relaxed);
        let mut after: Option<String> = None;
        let outcome = async {
            loop {
                let page = tokio::select! {
                    page = self.client.list_page(object, Listing::Archived, after.as_deref()) => page?,
                    () = shutdown.wait() => return Ok(false),
                };
                report.archived += page.records.len() as u64;
                let tombstones: Vec<Record> = page
                    .records
                    .iter()
                    .map(|l| {
                        let at = l.archived_at.or(l.modified).unwrap_or(started);
                        Record::tombstone(l.id, at, None)
                    })
                    .collect();
                let ids: Vec<_> = tombstones.iter().map(|t| t.id).collect();
                let held = held(&self.state, &mut self.sink, sync.id, object, &ids).await?;
                let news = ledger::gone(&held, tombstones);
                let refs: Vec<&Record> = news.iter().collect();
                self.sink.deliver(object, &refs).await?;
                let (state, table) = (&self.state, self.sink.records_table());
                record_after_delivery(object, || state.record_delivered(sync.id, &refs, table))
                    .await?;
                report.tombstones += news.len() as u64;
                match page.next {
                    Some(next) => after = Some(next),
                    None => return Ok::<bool, anyhow::Error>(true),
                }
            }
        }
        .await;
        report.requests = counters.requests.load(Ordering::Relaxed) - requests_before;
        if outcome? {
            self.state.set_swept(sync.id, started).await?;
            tracing::info!(%object, archived = report.archived, tombstones = report.tombstones,
                "archived records swept for deletions");
        }
        Ok(())
    }

    /// Hands what the destination may not have to the sink, with the merge tombstones of
    /// the winners among it, and records it in the ledger (with `events`, marking those
    /// webhook events done in the same transaction): the one path of every delivery that
    /// is not a window page (webhook batches, `verify --repair`). Returns how many went.
    ///
    /// # Errors
    /// When the sink or the state fails.
    pub(crate) async fn deliver_loose(
        &mut self,
        sync: &Sync,
        loose: Loose,
        events: Option<&[String]>,
    ) -> Result<usize> {
        let object = &sync.object;
        let ids: Vec<_> = loose
            .versions
            .iter()
            .chain(&loose.current)
            .chain(&loose.gone)
            .map(|r| r.id)
            .collect();
        let held = held(&self.state, &mut self.sink, sync.id, object, &ids).await?;
        let current = ledger::current(&held, loose.current);
        let mut fresh = ledger::fresh(&held, &loose.versions);
        fresh.extend(current.iter());
        let merged = merge_tombstones(&self.state, &mut self.sink, sync.id, object, &fresh).await?;
        // A record a winner lists is tombstoned once, as merged.
        let gone: Vec<Record> = ledger::gone(&held, loose.gone)
            .into_iter()
            .filter(|g| !merged.iter().any(|m| m.id == g.id))
            .collect();
        let all: Vec<&Record> = fresh.into_iter().chain(&merged).chain(&gone).collect();
        self.sink.deliver(object, &all).await?;
        let (state, table) = (&self.state, self.sink.records_table());
        record_after_delivery(object, || async {
            match events {
                Some(keys) => state.commit_events(sync.id, &all, table, keys).await,
                None => state.record_delivered(sync.id, &all, table).await,
            }
        })
        .await?;
        Ok(all.len())
    }

    /// `object` ready for requests (see [`resolve`]).
    ///
    /// # Errors
    /// As [`resolve`].
    pub async fn resolve(&self, object: &ObjectType) -> Result<ObjectType> {
        resolve(&self.client, &self.state, object).await
    }

    /// The property names a delivery outside a window fetches for `sync`: what the
    /// destination was last given (every property, by name, for `--all-properties`),
    /// else the object's defaults.
    ///
    /// # Errors
    /// When the property list cannot be read.
    pub(crate) async fn stored_properties(&mut self, sync: &Sync) -> Result<Vec<String>> {
        let job = PollJob {
            object: self.resolve(&sync.object).await?,
            destination: sync.destination.clone(),
            pass: Pass::Side,
            ask: Ask::default(),
            margins: Margins {
                overlap: Duration::ZERO,
                settle: Duration::ZERO,
            },
            wanted: Wanted::Stored,
            page_size: 1,
            concurrency: 1,
            recheck: Duration::ZERO,
            deletes_every: None,
        };
        let resolved = self.properties(&job, sync, None).await?;
        Ok(match resolved.hydrate {
            Some(all) => all.to_vec(),
            None => resolved.search,
        })
    }
}

/// What a delivery outside a window hands the sink (see [`Engine::deliver_loose`]).
#[derive(Debug, Default)]
pub(crate) struct Loose {
    /// Versions and timestamped tombstones (webhook events): news when newer than what
    /// the destination holds.
    pub versions: Vec<Record>,
    /// Live versions HubSpot says are current (a repair): news over a tombstone too.
    pub current: Vec<Record>,
    /// Records HubSpot says no longer exist: news unless already tombstoned.
    pub gone: Vec<Record>,
}

/// `object` ready for requests: a custom object named by its name gets its type id
/// from the schemas API (cached in the state for a day).
///
/// # Errors
/// A usage error when the portal has no such custom object; a failed request.
pub async fn resolve(client: &Client, state: &State, object: &ObjectType) -> Result<ObjectType> {
    if !object.needs_resolving() {
        return Ok(object.clone());
    }
    let key = ObjectType::unchecked(SCHEMAS_KEY);
    let schemas: Vec<(String, String)> =
        match state.cached_property_names(&key, PROPERTY_LIST_AGE).await? {
            Some(cached) => cached
                .iter()
                .filter_map(|e| e.split_once('\t'))
                .map(|(n, id)| (n.to_owned(), id.to_owned()))
                .collect(),
            None => {
                let fetched: Vec<(String, String)> = client
                    .schemas()
                    .await?
                    .into_iter()
                    .flat_map(|s| {
                        [
                            (s.name, s.type_id.clone()),
                            (s.fully_qualified_name, s.type_id),
                        ]
                    })
                    .filter(|(n, _)| !n.is_empty())
                    .collect();
                let flat: Vec<String> =
                    fetched.iter().map(|(n, id)| format!("{n}\t{id}")).collect();
                state.cache_property_names(&key, &flat).await?;
                fetched
            }
        };
    match schemas.iter().find(|(n, _)| n == object.as_str()) {
        Some((_, id)) => Ok(object.resolved(id)),
        None => {
            let mut known: Vec<&str> = schemas.iter().map(|(n, _)| n.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            Err(crate::config::UsageError::new(format!(
                "`{object}` is neither a standard object ({}) nor a custom object of this portal{}",
                crate::object::standard_names(),
                if known.is_empty() {
                    " (it has none)".to_owned()
                } else {
                    format!(" ({})", known.join(", "))
                }
            ))
            .into())
        }
    }
}

/// What the destination holds of `ids`: the sink's own rows when it keeps them
/// (Postgres, where they are written in the same transaction as the records), else the
/// state's ledger.
///
/// # Errors
/// When either cannot be read.
pub(crate) async fn held(
    state: &State,
    sink: &mut Sink,
    sync: SyncId,
    object: &ObjectType,
    ids: &[RecordId],
) -> Result<HashMap<RecordId, Held>> {
    match sink.held(object, ids).await? {
        Some(held) => Ok(held),
        None => state.held(sync, ids).await,
    }
}

/// Opens the sink `spec` names, with the portal id a Postgres sink keys its rows by:
/// cached in the state per (HubSpot, token), else asked of HubSpot once.
///
/// # Errors
/// When the sink cannot be opened or the portal id cannot be read.
pub async fn open_sink(
    spec: &SinkSpec,
    destination: &Destination,
    handlers: &HandlerOptions,
    shutdown: &Shutdown,
    client: &Client,
    state: &State,
) -> Result<Sink> {
    let portal = if spec.needs_portal() {
        let portal = portal(client, state).await?;
        // Bound by destination, as cursors are: another portal's token for this
        // destination, whatever the spelling of its URL, would start from its cursors.
        let target = destination.key().to_owned();
        let bound = state.bind_portal(&target, portal).await?;
        if bound != portal {
            return Err(OtherPortal {
                target,
                bound,
                portal,
            }
            .into());
        }
        Some(portal)
    } else {
        None
    };
    Sink::open(spec, handlers, shutdown, portal).await
}

/// A token of another portal than the one a state file already syncs into a shared
/// sink: its cursors would skip that portal's records. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error(
    "this state file syncs HubSpot portal {bound} into {target}, and this token belongs to portal \
     {portal}: give each portal its own state file (--db or MARTECH_SYNC_DB); they can share the database"
)]
pub struct OtherPortal {
    target: String,
    bound: u64,
    portal: u64,
}

/// Opens the state at `db` for the client's token: a Postgres state, which keeps many
/// portals, narrowed to the token's portal (returned too; `None` for a state file).
///
/// # Errors
/// When the state cannot be opened, or HubSpot cannot say the portal.
pub async fn open_state(
    db: &crate::state::Location,
    client: &Client,
) -> Result<(State, Option<u64>)> {
    let state = crate::state::open(db).await?;
    if db.file().is_some() {
        if let Some(portal) = client.expected_portal() {
            tracing::warn!(
                "--portal {portal} is not checked: a state file keeps one portal's syncs (--portal is for a postgres:// --db)"
            );
        }
        return Ok((state, None));
    }
    let portal = portal(client, &state).await?;
    Ok((crate::state::for_portal(state, Some(portal)), Some(portal)))
}

/// The portal the client's token belongs to, cached in the state.
///
/// # Errors
/// When HubSpot cannot say, or the state cannot be read or written.
pub async fn portal(client: &Client, state: &State) -> Result<u64> {
    let portal = match state.portal(client.account()).await? {
        Some(portal) => portal,
        None => {
            let portal = client.portal_id().await?;
            state.remember_portal(client.account(), portal).await?;
            portal
        }
    };
    match client.expected_portal() {
        Some(expected) if expected != portal => Err(WrongPortal { expected, portal }.into()),
        _ => Ok(portal),
    }
}

/// `--portal` names another portal than the token's. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error(
    "--portal (or MARTECH_SYNC_PORTAL) {expected}: the token belongs to HubSpot portal {portal}"
)]
pub struct WrongPortal {
    expected: u64,
    portal: u64,
}

/// Tombstones for the records `fresh` winners absorbed that the destination holds live.
async fn merge_tombstones(
    state: &State,
    sink: &mut Sink,
    sync: SyncId,
    object: &ObjectType,
    fresh: &[&Record],
) -> Result<Vec<Record>> {
    if !object.merges() {
        return Ok(Vec::new());
    }
    let merged = ledger::merged_ids(fresh);
    if merged.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<_> = merged.iter().map(|(id, _)| *id).collect();
    let held = held(state, sink, sync, object, &ids).await?;
    Ok(ledger::merge_tombstones(&held, &merged))
}

/// One window's scan.
struct Scan<'a> {
    client: &'a Client,
    state: &'a State,
    sink: &'a mut Sink,
    job: &'a PollJob,
    sync: SyncId,
    pass: Pass,
    /// Deliver every record, whatever the destination holds (`--refresh`).
    refresh: bool,
    window: Window,
    shutdown: &'a Shutdown,
    progress: &'a mut Progress,
    search: &'a [String],
    /// With `--all-properties`, the properties batch read fetches for each page.
    hydrate: Option<Arc<[String]>>,
    /// Whether the list part reads the bottom of the window (a backfill).
    listing: bool,
}

/// The object's default properties.
fn defaults(object: &ObjectType) -> Vec<String> {
    object
        .default_properties()
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// `names` plus the properties the engine needs: the modified time, the id and, for
/// objects that merge, the ids merged into a record.
pub fn with_needed(object: &ObjectType, mut names: Vec<String>) -> Vec<String> {
    names.retain(|n| !n.trim().is_empty());
    let merged = object.merges().then_some("hs_merged_object_ids");
    for needed in [
        Some(object.modified_property()),
        Some("hs_object_id"),
        merged,
    ]
    .into_iter()
    .flatten()
    {
        if !names.iter().any(|p| p == needed) {
            names.push(needed.to_owned());
        }
    }
    names
}

/// The search body's properties under `--all-properties`: what the engine needs.
fn lean(object: &ObjectType) -> Vec<String> {
    with_needed(object, Vec::new())
}

/// A window is split only when its first page says it holds more than this many pages.
const SPLIT_ABOVE_PAGES: u64 = 4;

impl Scan<'_> {
    /// Scans the slices not yet done, delivering and checkpointing page by page.
    async fn run(mut self, mut slices: Vec<Slice>, report: &mut RunReport) -> Result<Scanned> {
        if let [whole] = slices.as_slice()
            && *whole == Slice::WHOLE
        {
            match self.first_page(report).await? {
                Some(rest) => slices = rest,
                None => return Ok(Scanned::Interrupted),
            }
        }
        let pending: Vec<Slice> = slices.into_iter().filter(|s| !s.done).collect();
        if pending.is_empty() {
            return Ok(Scanned::Complete);
        }
        let capacity = usize::try_from(self.job.concurrency.max(1)).unwrap_or(1);
        let (tx, mut rx) = mpsc::channel(capacity);
        let mut fetchers = JoinSet::new();
        let fetcher = Arc::new(Fetcher {
            client: self.client.clone(),
            object: self.job.object.clone(),
            window: self.window,
            search: self.search.into(),
            page_size: self.job.page_size,
            hydrate: self.hydrate.clone(),
        });
        let workers = capacity.min(pending.len());
        let claims = Arc::new(Claims::new(pending));
        if self.listing {
            fetchers.spawn(fetch::list_part(
                Arc::clone(&fetcher),
                Arc::clone(&claims),
                tx.clone(),
            ));
        }
        for _ in 0..workers {
            fetchers.spawn(fetch::search_worker(
                Arc::clone(&fetcher),
                Arc::clone(&claims),
                tx.clone(),
            ));
        }
        drop(tx);
        // Dropping `fetchers` on any return below aborts the fetches still running.
        loop {
            if self.shutdown.requested() {
                return Ok(Scanned::Interrupted);
            }
            let fetched = tokio::select! {
                fetched = rx.recv() => fetched,
                () = self.shutdown.wait() => return Ok(Scanned::Interrupted),
            };
            match fetched {
                None => {
                    // Every sender is gone. A fetcher that panicked sent no `Failed`:
                    // its slice is not done, so the window must not commit.
                    while let Some(joined) = fetchers.join_next().await {
                        joined.map_err(|e| anyhow::anyhow!("a page fetcher died: {e}"))?;
                    }
                    return Ok(Scanned::Complete);
                }
                Some(Fetched::Failed(error)) => return Err(error),
                Some(Fetched::Page { slice, page }) => self.confirm(slice, &page, report).await?,
            }
        }
    }

    /// Scans the first page of a fresh window and, when the window is large, splits
    /// the rest of it into slices. Returns the slices left, or `None` on shutdown.
    async fn first_page(&mut self, report: &mut RunReport) -> Result<Option<Vec<Slice>>> {
        let object = &self.job.object;
        let whole = Slice::WHOLE;
        let body = SearchBody::keyed(
            object,
            self.window,
            &whole,
            None,
            self.search,
            self.job.page_size,
        );
        let fetch = async {
            let page = self.client.search(object, &body, None).await?;
            hydrated(self.client, object, page, self.hydrate.as_deref()).await
        };
        let page = tokio::select! {
            page = fetch => page?,
            () = self.shutdown.wait() => return Ok(None),
        };
        if let Some(total) = page.total {
            self.progress.set_total(total);
        }
        self.confirm(whole.index, &page, report).await?;
        let Some(last) = page.last_id.filter(|_| page.more) else {
            return Ok(Some(Vec::new()));
        };
        let rest = Slice {
            last_id: Some(last),
            ..whole
        };
        let pages_left = page.total.unwrap_or(0) / u64::from(self.job.page_size.max(1));
        if self.job.concurrency <= 1 || pages_left <= SPLIT_ABOVE_PAGES {
            return Ok(Some(vec![rest]));
        }
        let probe = SearchBody::largest_id(object, self.window, last);
        let largest = tokio::select! {
            largest = self.client.largest_id(object, &probe) => largest?,
            () = self.shutdown.wait() => return Ok(None),
        };
        let Some(largest) = largest else {
            return Ok(Some(vec![rest]));
        };
        // A backfill (a window over all history, `lo` at the beginning) reads the list
        // endpoint from the bottom while search takes the top, each at its own budget;
        // finer slices let the two meet evenly (a slice of at least eight pages).
        self.listing = self.pass == Pass::Main && self.window.lo <= Millis::BEGINNING;
        let count = if self.listing {
            let fine = u32::try_from((pages_left / 8).min(64)).unwrap_or(64);
            fine.max(self.job.concurrency * 2)
        } else {
            self.job.concurrency * 2
        };
        let parts = window::split(last, largest, count, 1);
        self.state
            .split(self.sync, self.pass, &rest, &parts)
            .await?;
        tracing::debug!(%object, slices = parts.len(), largest_id = largest.0, "window split into slices");
        Ok(Some(parts))
    }

    /// Hands a fetched page's news (and the tombstones of records its winners merged)
    /// to the sink, then checkpoints it.
    async fn confirm(&mut self, slice: u32, page: &Page, report: &mut RunReport) -> Result<()> {
        let object = &self.job.object;
        let fresh: Vec<&Record> = if self.refresh {
            ledger::fresh(&Default::default(), &page.records)
        } else {
            let ids: Vec<_> = page.records.iter().map(|r| r.id).collect();
            let held = held(self.state, self.sink, self.sync, object, &ids).await?;
            ledger::fresh(&held, &page.records)
        };
        let merged = merge_tombstones(self.state, self.sink, self.sync, object, &fresh).await?;
        let skipped = page.records.len() - fresh.len();
        let delivered: Vec<&Record> = fresh.into_iter().chain(&merged).collect();
        let first = report.pages == 0 && !report.resumed;
        let checkpoint = Checkpoint {
            slice,
            last_id: page.last_id,
            done: !page.more,
            records: page.records.len() as u64,
            total: page.total.filter(|_| first),
        };
        match (&mut *self.sink, self.state.postgres()) {
            // Rows and checkpoint in one database: one transaction.
            (Sink::Postgres(sink), Some(state)) if sink.shares(state) => {
                sink.deliver_and_checkpoint(object, &delivered, self.sync, self.pass, checkpoint)
                    .await?;
            }
            _ => {
                self.sink.deliver(object, &delivered).await?;
                let (state, table) = (self.state, self.sink.records_table());
                record_after_delivery(object, || {
                    state.commit_page(self.sync, self.pass, checkpoint, &delivered, table)
                })
                .await?;
            }
        }
        report.pages += 1;
        report.seen += page.records.len() as u64;
        report.delivered += delivered.len() as u64;
        report.skipped += skipped as u64;
        let counters = self.client.counters();
        self.progress.update(
            report,
            counters.requests.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
        );
        tracing::debug!(%object, pass = self.pass.as_str(), slice, page = report.pages,
            records = page.records.len(), delivered = delivered.len(), merged = merged.len(),
            last_id = ?checkpoint.last_id.map(|i| i.0), total = ?page.total, "page checkpointed");
        Ok(())
    }
}

/// Times a write of what the sink already confirmed is tried before giving up.
const RECORD_TRIES: u32 = 6;

/// Runs `write`, which records what the sink has just confirmed, retrying it a few
/// times (a state file held by a backup or a `sqlite3` shell clears in seconds): giving
/// up would hand the same versions over again.
///
/// # Errors
/// The last write's error, saying that the records will be handed over again.
async fn record_after_delivery<F, Fut>(object: &ObjectType, mut write: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    /// Says so when the retries are cut short (a stop that could not wait for them).
    struct Unrecorded<'a>(Option<&'a ObjectType>);
    impl Drop for Unrecorded<'_> {
        fn drop(&mut self) {
            if let Some(object) = self.0 {
                tracing::error!(%object, "stopped before the state recorded what the sink \
                    confirmed: those records will be handed over again");
            }
        }
    }
    let mut pending = Unrecorded(Some(object));
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match write().await {
            Ok(()) => {
                pending.0 = None;
                return Ok(());
            }
            // A lost lock does not come back by waiting: another run goes on from the
            // checkpoint.
            Err(e) if attempt < RECORD_TRIES && !e.is::<crate::state::postgres::LockLost>() => {
                tracing::warn!(%object, attempt, error = %format!("{e:#}"),
                    "the sink has the records but the state could not record them; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => {
                pending.0 = None;
                return Err(e.context(
                    "the sink has the records but the state could not record them, so they \
                     will be handed over again",
                ));
            }
        }
    }
}
