//! The engine: one window, page by keyed page, each page through the sink and then
//! checkpointed, the cursor committed only after the last page (DESIGN.md, "The window
//! engine"). Planning is in `window.rs`, storage in `state.rs`, HTTP in `hubspot/`.
//!
//! Data flow of a scan: one fetcher task per slice pages through its id range (keyed
//! paging needs only the previous page's last id, so fetching runs ahead of delivery)
//! and sends pages down a bounded channel; the one consumer here hands each page to the
//! sink and checkpoints it. At most `concurrency` requests are in flight, all under the
//! client's one token bucket, so a slow API still reaches the rate limit. A fresh large
//! window is split into slices after its first page, which tells how big it is.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::hubspot::search::{Page, SearchBody};
use crate::hubspot::{Client, ClientConfig};
use crate::object::ObjectType;
use crate::progress::{Progress, ProgressMode};
use crate::report::{Outcome, RunReport};
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkSpec};
use crate::state::{Checkpoint, RunId, State};
use crate::timestamp::Millis;
use crate::window::{self, Bounds, Margins, Plan, Slice, Window};

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct PollJob {
    pub object: ObjectType,
    pub bounds: Bounds,
    pub margins: Margins,
    /// Properties to request; always includes the modified property and `hs_object_id`.
    pub properties: Vec<String>,
    pub page_size: u32,
    /// Search requests in flight at once; a large window is split into twice as many
    /// slices. 1 scans sequentially.
    pub concurrency: u32,
    /// Fetch every property by batch read after each search page.
    pub all_properties: bool,
}

/// How long the property list of `--all-properties` is reused.
const PROPERTY_LIST_AGE: std::time::Duration = std::time::Duration::from_secs(86_400);

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

/// The engine with what it works on: a client, the state file and the sink.
pub struct Engine {
    pub(crate) client: Client,
    pub(crate) state: State,
    pub(crate) sink: Sink,
    progress: ProgressMode,
}

impl Engine {
    /// Opens the state file `db`, the client and the sink. The caller holds the object's
    /// lock.
    ///
    /// # Errors
    /// When any of them cannot be opened.
    pub fn open(
        db: &Path,
        client: &ClientConfig,
        sink: &SinkSpec,
        progress: ProgressMode,
    ) -> Result<Engine> {
        Ok(Engine {
            state: State::open(db)?,
            client: Client::new(client)?,
            sink: Sink::open(sink)?,
            progress,
        })
    }

    /// Runs one window of `job`: plans it, scans it and commits it. A `shutdown` stops
    /// it between pages with the window left open (outcome `interrupted`).
    ///
    /// # Errors
    /// Only when the state file cannot even record the run; every other failure is in
    /// [`Finished::error`], with the cursor unchanged.
    pub async fn poll(
        &mut self,
        job: &PollJob,
        now: Millis,
        shutdown: &Shutdown,
    ) -> Result<Finished> {
        let object = &job.object;
        let state = &mut self.state;
        let cursor = state.cursor(object)?;
        let open = state.open_window(object)?;
        let plan = window::plan(cursor, open, job.bounds, now, job.margins)?;
        let (window, slices, resumed) = match plan {
            Plan::Fresh(w) => (w, vec![Slice::WHOLE], false),
            Plan::Resume(o) => (o.window, o.slices, true),
            Plan::Empty(w) => {
                let mut report = RunReport::start(object, w, false);
                report.finish(Outcome::Empty, None);
                tracing::info!(%object, lo = %w.lo, hi = %w.hi, "nothing to scan yet: the window is empty");
                return Ok(Finished {
                    report,
                    error: None,
                });
            }
        };
        if let (Some(since), Some(c)) = (job.bounds.since, cursor)
            && since > c
        {
            tracing::warn!(%object, since = %since, cursor = %c,
                "--since is after the stored cursor: the cursor stays put, so the next run still covers the gap");
        }
        if resumed {
            tracing::info!(%object, lo = %window.lo, hi = %window.hi,
                slices_left = slices.iter().filter(|s| !s.done).count(), "resuming an interrupted window");
        }
        let mut report = RunReport::start(object, window, resumed);
        let run = state.start_run(object, &report)?;
        let counters = self.client.counters();
        let requests_before = counters.requests.load(Ordering::Relaxed);
        let retries_before = counters.retries.load(Ordering::Relaxed);
        let limited_before = counters.rate_limited.load(Ordering::Relaxed);

        let progress = Progress::start(self.progress, object.as_str());
        let scanned = match hydrate_list(&self.client, state, job).await {
            Ok(hydrate) => {
                let scan = Scan {
                    client: &self.client,
                    sink: &mut self.sink,
                    job,
                    window,
                    shutdown,
                    progress: &progress,
                    hydrate,
                };
                scan.run(state, slices, &mut report).await
            }
            Err(e) => Err(e),
        };
        drop(progress);

        report.requests = counters.requests.load(Ordering::Relaxed) - requests_before;
        report.retries = counters.retries.load(Ordering::Relaxed) - retries_before;
        report.rate_limited = counters.rate_limited.load(Ordering::Relaxed) - limited_before;
        match scanned {
            Ok(Scanned::Interrupted) => {
                report.finish(Outcome::Interrupted, None);
                state.finish_run(run, &report)?;
                tracing::info!(%object, pages = report.pages, delivered = report.delivered,
                    "stopped; the window stays open and the next run resumes it");
                Ok(Finished {
                    report,
                    error: None,
                })
            }
            Ok(Scanned::Complete) => {
                report.finish(Outcome::Committed, None);
                let next = window::next_cursor(cursor, window);
                match state.commit_window(object, next, run, &report) {
                    Ok(()) => {
                        tracing::info!(%object, cursor = %next, pages = report.pages,
                            delivered = report.delivered, skipped = report.skipped, "window committed");
                        Ok(Finished {
                            report,
                            error: None,
                        })
                    }
                    // A refused commit (a slice not done) is a failed run like any other.
                    Err(error) => Ok(failed(state, run, report, error)),
                }
            }
            Err(error) => Ok(failed(state, run, report, error)),
        }
    }
}

/// Records `run` as failed with `error`; the cursor stays where it was.
fn failed(state: &mut State, run: RunId, mut report: RunReport, error: anyhow::Error) -> Finished {
    report.finish(Outcome::Failed, Some(format!("{error:#}")));
    if let Err(e) = state.finish_run(run, &report) {
        tracing::warn!(error = %format!("{e:#}"), "could not record the failed run");
    }
    Finished {
        report,
        error: Some(error),
    }
}

/// One window's scan.
struct Scan<'a> {
    client: &'a Client,
    sink: &'a mut Sink,
    job: &'a PollJob,
    window: Window,
    shutdown: &'a Shutdown,
    progress: &'a Progress,
    /// With `--all-properties`, the properties batch read fetches for each page.
    hydrate: Option<Arc<[String]>>,
}

/// The full property list for `--all-properties` (cached for a day), or `None`.
async fn hydrate_list(
    client: &Client,
    state: &mut State,
    job: &PollJob,
) -> Result<Option<Arc<[String]>>> {
    if !job.all_properties {
        return Ok(None);
    }
    let object = &job.object;
    let mut names = match state.cached_property_names(object, PROPERTY_LIST_AGE)? {
        Some(names) => names,
        None => {
            let names = client.property_names(object).await?;
            state.cache_property_names(object, &names)?;
            names
        }
    };
    for needed in [object.modified_property(), "hs_object_id"] {
        if !names.iter().any(|n| n == needed) {
            names.push(needed.to_owned());
        }
    }
    Ok(Some(names.into()))
}

/// A search page with every property, when `hydrate` names them.
async fn hydrated(
    client: &Client,
    object: &ObjectType,
    mut page: Page,
    hydrate: Option<&[String]>,
) -> Result<Page> {
    if let Some(properties) = hydrate {
        page.records = client.hydrate(object, page.records, properties).await?;
    }
    Ok(page)
}

/// A window is split only when its first page says it holds more than this many pages.
const SPLIT_ABOVE_PAGES: u64 = 4;

/// What a fetcher sends the consumer.
enum Fetched {
    Page { slice: u32, page: Page },
    Failed(anyhow::Error),
}

impl Scan<'_> {
    /// Scans the slices not yet done, delivering and checkpointing page by page.
    async fn run(
        mut self,
        state: &mut State,
        mut slices: Vec<Slice>,
        report: &mut RunReport,
    ) -> Result<Scanned> {
        if let [whole] = slices.as_slice()
            && *whole == Slice::WHOLE
        {
            match self.first_page(state, report).await? {
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
        let permits = Arc::new(Semaphore::new(capacity));
        let mut fetchers = JoinSet::new();
        for slice in pending {
            fetchers.spawn(fetch_slice(
                self.client.clone(),
                self.job.clone(),
                self.window,
                slice,
                self.hydrate.clone(),
                tx.clone(),
                Arc::clone(&permits),
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
                Some(Fetched::Page { slice, page }) => {
                    self.confirm(state, slice, &page, report).await?
                }
            }
        }
    }

    /// Scans the first page of a fresh window and, when the window is large, splits
    /// the rest of it into slices. Returns the slices left, or `None` on shutdown.
    async fn first_page(
        &mut self,
        state: &mut State,
        report: &mut RunReport,
    ) -> Result<Option<Vec<Slice>>> {
        let object = &self.job.object;
        let whole = Slice::WHOLE;
        let body = SearchBody::keyed(
            object,
            self.window,
            &whole,
            None,
            &self.job.properties,
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
        self.confirm(state, whole.index, &page, report).await?;
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
        let parts = window::split(last, largest, self.job.concurrency * 2, 1);
        state.split(object, &rest, &parts)?;
        tracing::debug!(%object, slices = parts.len(), largest_id = largest.0, "window split into slices");
        Ok(Some(parts))
    }

    /// Hands a fetched page's undelivered records to the sink, then checkpoints it.
    async fn confirm(
        &mut self,
        state: &mut State,
        slice: u32,
        page: &Page,
        report: &mut RunReport,
    ) -> Result<()> {
        let object = &self.job.object;
        let fresh = state.undelivered(object, &page.records)?;
        self.sink.deliver(object, &fresh).await?;
        let checkpoint = Checkpoint {
            slice,
            last_id: page.last_id,
            done: !page.more,
        };
        state.commit_page(object, checkpoint, &fresh, self.sink.records_table())?;
        report.pages += 1;
        report.seen += page.records.len() as u64;
        report.delivered += fresh.len() as u64;
        report.skipped += (page.records.len() - fresh.len()) as u64;
        let counters = self.client.counters();
        self.progress.update(
            report,
            counters.requests.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
        );
        tracing::debug!(%object, slice, page = report.pages, records = page.records.len(),
            delivered = fresh.len(), last_id = ?checkpoint.last_id.map(|i| i.0), total = ?page.total,
            "page checkpointed");
        Ok(())
    }
}

/// Pages through one slice, sending each page to the consumer, until the slice ends, a
/// request fails for good, or the consumer hangs up.
async fn fetch_slice(
    client: Client,
    job: PollJob,
    window: Window,
    slice: Slice,
    hydrate: Option<Arc<[String]>>,
    tx: mpsc::Sender<Fetched>,
    permits: Arc<Semaphore>,
) {
    let object = &job.object;
    let mut after = slice.resume_after();
    loop {
        let body = SearchBody::keyed(
            object,
            window,
            &slice,
            after,
            &job.properties,
            job.page_size,
        );
        let page = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            match client.search(object, &body, after).await {
                Ok(page) => hydrated(&client, object, page, hydrate.as_deref()).await,
                Err(e) => Err(e),
            }
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                let _ = tx.send(Fetched::Failed(error)).await;
                return;
            }
        };
        let last = page.last_id;
        let more = page.more;
        if tx
            .send(Fetched::Page {
                slice: slice.index,
                page,
            })
            .await
            .is_err()
            || !more
        {
            return;
        }
        after = last;
    }
}
