//! The engine: one window, page by keyed page, each page through the sink and then
//! checkpointed, the cursor committed only after the last page (DESIGN.md, "The window
//! engine"). Planning is in `window.rs`, storage in `state.rs`, HTTP in `hubspot/`.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::hubspot::search::SearchBody;
use crate::hubspot::{Client, ClientConfig};
use crate::object::ObjectType;
use crate::record::RecordId;
use crate::report::{Outcome, RunReport};
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkSpec};
use crate::state::State;
use crate::timestamp::Millis;
use crate::window::{self, Bounds, Margins, Plan, Window};

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct PollJob {
    pub object: ObjectType,
    pub bounds: Bounds,
    pub margins: Margins,
    /// Properties to request; always includes the modified property and `hs_object_id`.
    pub properties: Vec<String>,
    pub page_size: u32,
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
    client: Client,
    state: State,
    sink: Sink,
}

impl Engine {
    /// Opens the state file `db`, the client and the sink. The caller holds the object's
    /// lock.
    ///
    /// # Errors
    /// When any of them cannot be opened.
    pub fn open(db: &Path, client: &ClientConfig, sink: &SinkSpec) -> Result<Engine> {
        Ok(Engine {
            state: State::open(db)?,
            client: Client::new(client)?,
            sink: Sink::open(sink)?,
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
        poll(
            &self.client,
            &mut self.state,
            &mut self.sink,
            job,
            now,
            shutdown,
        )
        .await
    }
}

async fn poll(
    client: &Client,
    state: &mut State,
    sink: &mut Sink,
    job: &PollJob,
    now: Millis,
    shutdown: &Shutdown,
) -> Result<Finished> {
    let object = &job.object;
    let cursor = state.cursor(object)?;
    let open = state.open_window(object)?;
    let plan = window::plan(cursor, open, job.bounds, now, job.margins)?;
    let (window, resume_after, resumed) = match plan {
        Plan::Fresh(w) => (w, None, false),
        Plan::Resume(o) => (o.window, o.last_id, true),
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
            "--since is after the stored cursor: records modified in between are not scanned");
    }
    if resumed {
        tracing::info!(%object, lo = %window.lo, hi = %window.hi, after = ?resume_after.map(|i| i.0),
            "resuming an interrupted window");
    }
    let mut report = RunReport::start(object, window, resumed);
    let run = state.start_run(object, &report)?;
    let requests_before = client.counters().requests.load(Ordering::Relaxed);
    let retries_before = client.counters().retries.load(Ordering::Relaxed);

    let scan = Scan {
        client,
        sink,
        job,
        window,
        shutdown,
    };
    let scanned = scan.run(state, resume_after, &mut report).await;

    report.requests = client.counters().requests.load(Ordering::Relaxed) - requests_before;
    report.retries = client.counters().retries.load(Ordering::Relaxed) - retries_before;
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
            state.commit_window(object, next, run, &report)?;
            tracing::info!(%object, cursor = %next, pages = report.pages, delivered = report.delivered,
                skipped = report.skipped, "window committed");
            Ok(Finished {
                report,
                error: None,
            })
        }
        Err(error) => {
            report.finish(Outcome::Failed, Some(format!("{error:#}")));
            if let Err(e) = state.finish_run(run, &report) {
                tracing::warn!(error = %format!("{e:#}"), "could not record the failed run");
            }
            Ok(Finished {
                report,
                error: Some(error),
            })
        }
    }
}

/// One window's scan.
struct Scan<'a> {
    client: &'a Client,
    sink: &'a mut Sink,
    job: &'a PollJob,
    window: Window,
    shutdown: &'a Shutdown,
}

impl Scan<'_> {
    /// Pages through the window after `after`, delivering and checkpointing page by page.
    async fn run(
        self,
        state: &mut State,
        mut after: Option<RecordId>,
        report: &mut RunReport,
    ) -> Result<Scanned> {
        let object = &self.job.object;
        loop {
            if self.shutdown.requested() {
                return Ok(Scanned::Interrupted);
            }
            let body = SearchBody::keyed(
                object,
                self.window,
                after,
                &self.job.properties,
                self.job.page_size,
            );
            // A page still being fetched is abandoned on shutdown: none of it was delivered.
            let page = tokio::select! {
                page = self.client.search(object, &body, after) => page?,
                () = self.shutdown.wait() => return Ok(Scanned::Interrupted),
            };
            report.pages += 1;
            report.seen += page.records.len() as u64;
            let Some(last) = page.records.last().map(|r| r.id) else {
                break;
            };
            let fresh = state.undelivered(object, &page.records)?;
            self.sink.deliver(object, &fresh).await?;
            state.commit_page(object, last, &fresh, self.sink.records_table())?;
            report.delivered += fresh.len() as u64;
            report.skipped += (page.records.len() - fresh.len()) as u64;
            tracing::debug!(%object, page = report.pages, records = page.records.len(),
                delivered = fresh.len(), last_id = last.0, total = ?page.total, "page checkpointed");
            after = Some(last);
            if !page.more {
                break;
            }
        }
        Ok(Scanned::Complete)
    }
}
