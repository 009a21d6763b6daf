//! `poll OBJECT`: take the object's lock, run one window (or one per `--interval` tick),
//! print the summary. `poll a,b,c` and `--all-objects` run every object at once in one
//! process: one client (so one pacing per HubSpot budget for all of them), and per
//! object its own lock, engine, window and commit.

use std::io::Write;

use anyhow::{Context, Result};

use super::resolve_sink;
use crate::config::PollConfig;
use crate::hubspot::Client;
use crate::lock::ObjectLock;
use crate::progress::{ProgressMode, summary_line};
use crate::report::{Outcome, RunReport};
use crate::shutdown::Shutdown;
use crate::state::Location;
use crate::sync::{Engine, Finished, PollJob};
use crate::timestamp::Millis;
use crate::watch;

mod several;

/// A one-shot run stopped by a signal before its window was complete. Exits 1.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal before the window was complete; the next run resumes it")]
pub struct Interrupted;

/// Runs `config` against the state file `db`.
///
/// # Errors
/// Lock held, state file unusable, or the run's own failure (cursor unchanged).
pub async fn run(db: &Location, config: &PollConfig) -> Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    if !config.objects.is_empty() {
        return several::run(db, config, &shutdown).await;
    }
    let (_lock, mut engine, job) = open(db, config, &shutdown).await?;
    if let Some(interval) = config.interval {
        return watch::run(&mut engine, &job, interval, &shutdown, |report| {
            print_summary(config.json, config.progress, report)
        })
        .await;
    }
    let finished = engine.poll(&job, Millis::now(), &shutdown).await?;
    print_summary(config.json, config.progress, &finished.report)?;
    if finished.report.outcome == Outcome::Interrupted {
        return Err(Interrupted.into());
    }
    finished.into_result().map(drop)
}

/// Takes the lock and runs one window, returning the report whatever the outcome.
///
/// # Errors
/// When the run could not start: lock held, state file or client unusable.
pub async fn execute(db: &Location, config: &PollConfig) -> Result<Finished> {
    let shutdown = Shutdown::default();
    let (_lock, mut engine, job) = open(db, config, &shutdown).await?;
    engine.poll(&job, Millis::now(), &shutdown).await
}

/// The object's lock, its engine and its job, with the destination's sink resolved.
///
/// # Errors
/// Lock held, state file, client or sink unusable.
async fn open(
    db: &Location,
    config: &PollConfig,
    shutdown: &Shutdown,
) -> Result<(ObjectLock, Engine, PollJob)> {
    let client = Client::new(&config.client)?;
    let (state, portal) = crate::sync::open_state(db, &client).await?;
    let lock = crate::lock::lock(
        db,
        portal,
        &config.job.object,
        &config.job.destination,
        Some(shutdown),
    )
    .await?;
    let (sink, destination) =
        resolve_sink(&state, &config.job.destination, config.sink.as_ref()).await?;
    let job = PollJob {
        destination,
        ..config.job.clone()
    };
    let sink = crate::sync::open_sink(
        &sink,
        &job.destination,
        &config.handlers,
        shutdown,
        &client,
        &state,
    )
    .await?;
    let engine = Engine::new(state, client, sink, config.progress);
    Ok((lock, engine, job))
}

/// After a window: the summary line on a terminal, the JSON summary with `--json`.
pub(crate) fn print_summary(json: bool, progress: ProgressMode, report: &RunReport) -> Result<()> {
    if progress == ProgressMode::Bar && report.outcome != crate::report::Outcome::Failed {
        let _ = writeln!(std::io::stderr(), "{}", summary_line(report));
    }
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, report)?;
        writeln!(out).context("writing the run summary to stdout")?;
        out.flush()?;
    }
    Ok(())
}
