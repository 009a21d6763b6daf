//! Several objects in one run (`poll contacts,companies,deals`, `--all-objects`). Every
//! object gets its own lock, engine (state connection and sink) and window, all sharing
//! one HubSpot client, so its pacers pace the objects together as HubSpot meters
//! them: per account. The objects run at once; each commits or fails on its own.
//!
//! Outcomes: an object whose lock another run holds is `locked`; one the token cannot read
//! (403 `MISSING_SCOPES`) is `skipped` with one line naming the scopes HubSpot asks for.
//! Exit 0 when every object committed or was skipped, 1 when any failed (the others still
//! commit), 75 when any was locked and none failed. `--json` prints one document with an
//! entry per object.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::print_summary;
use crate::command::resolve_sink;
use crate::config::PollConfig;
use crate::hubspot::Client;
use crate::hubspot::error::{is_auth_failure, is_daily_limit, missing_scopes};
use crate::lock::{LockHeld, ObjectLock};
use crate::object::ObjectType;
use crate::progress::{ProgressMode, summary_line};
use crate::report::Outcome;
use crate::shutdown::Shutdown;
use crate::state::Location;
use crate::sync::{Engine, PollJob};
use crate::timestamp::Millis;
use crate::watch;

/// Some objects of a run failed; the others committed. Exits 1.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {total} objects failed ({names}); the cursors of the others moved as they committed"
)]
pub struct SomeFailed {
    pub failed: usize,
    pub total: usize,
    pub names: String,
}

/// How one object of the run ended.
enum Ended {
    Ran(Box<crate::sync::Finished>),
    /// The window could not even start (an unknown custom object, say).
    NotRun(anyhow::Error),
    Locked(anyhow::Error),
    Skipped(Vec<String>),
}

/// An object ready to run: its lock (held until the run ends), engine and job.
struct Ready {
    _lock: ObjectLock,
    engine: Engine,
    job: PollJob,
}

/// Runs every object of `config`.
///
/// # Errors
/// [`SomeFailed`] (exit 1), a held lock (exit 75), or a state file or sink that cannot
/// be opened.
pub async fn run(db: &Location, config: &PollConfig, shutdown: &Shutdown) -> Result<()> {
    let client = Client::new(&config.client)?;
    // A name that is no object of the portal is a typo: refused before anything runs.
    let (state, portal) = crate::sync::open_state(db, &client).await?;
    {
        for object in &config.objects {
            if let Err(e) = crate::sync::resolve(&client, &state, object).await
                && e.is::<crate::config::UsageError>()
            {
                return Err(e);
            }
        }
    }
    let mut ended: Vec<(ObjectType, Option<Ended>)> = Vec::new();
    let mut ready = Vec::new();
    // Everything is opened before anything runs: a jsonl file shared by the objects is
    // checked for a cut last line before any of them writes.
    for object in &config.objects {
        let job = config.job_for(object);
        let lock =
            match crate::lock::lock(db, portal, object, &job.destination, Some(shutdown)).await {
                Ok(lock) => lock,
                Err(e) if e.is::<LockHeld>() => {
                    ended.push((object.clone(), Some(Ended::Locked(e))));
                    continue;
                }
                Err(e) => return Err(e),
            };
        let (sink, destination) =
            resolve_sink(&state, &job.destination, config.sink.as_ref()).await?;
        // Each object its own connection (or file handle): their runs go on at once.
        let state = crate::state::for_portal(crate::state::open(db).await?, portal);
        let client = client.with_own_counters();
        let sink = crate::sync::open_sink(
            &sink,
            &destination,
            &config.handlers,
            shutdown,
            &client,
            &state,
        )
        .await?;
        let engine = Engine::new(state, client, sink, ProgressMode::Hidden);
        ended.push((object.clone(), None));
        ready.push(Ready {
            _lock: lock,
            engine,
            job: PollJob { destination, ..job },
        });
    }
    if let Some(interval) = config.interval {
        return continuous(config, ready, interval, shutdown).await;
    }
    let mut running = JoinSet::new();
    for (index, mut one) in ready.into_iter().enumerate() {
        let shutdown = shutdown.clone();
        running.spawn(async move {
            let finished = one.engine.poll(&one.job, Millis::now(), &shutdown).await;
            drop(one);
            (index, finished)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = running.join_next().await {
        results.push(joined.context("an object's run")?);
    }
    results.sort_by_key(|(index, _)| *index);
    let mut results = results.into_iter().map(|(_, finished)| finished);
    for (object, slot) in &mut ended {
        if slot.is_some() {
            continue;
        }
        let finished = match results.next().context("every object ran")? {
            Ok(finished) => finished,
            Err(e) => {
                *slot = Some(match missing_scopes(&e) {
                    Some(scopes) => skip(object, scopes),
                    None => Ended::NotRun(e),
                });
                continue;
            }
        };
        *slot = Some(match finished.error.as_ref().and_then(missing_scopes) {
            Some(scopes) => skip(object, scopes),
            None => Ended::Ran(Box::new(finished)),
        });
    }
    report(config, ended)
}

/// Says that `object` is skipped for want of `scopes`.
fn skip(object: &ObjectType, scopes: Vec<String>) -> Ended {
    tracing::warn!(%object, "skipped: the token cannot read {object}; add {} to the private app",
        scopes_text(&scopes));
    Ended::Skipped(scopes)
}

fn scopes_text(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "the object's read scope".to_owned()
    } else {
        scopes.join(" or ")
    }
}

/// Prints the run's summaries and decides the exit.
fn report(config: &PollConfig, ended: Vec<(ObjectType, Option<Ended>)>) -> Result<()> {
    let total = ended.len();
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    let mut locked = None;
    // A refused token (or a used-up day) fails every object alike: one line says it.
    let shared_failure = ended.iter().find_map(|(_, outcome)| match outcome {
        Some(Ended::Ran(finished)) => finished
            .error
            .as_ref()
            .filter(|e| is_auth_failure(e) || is_daily_limit(e))
            .map(|e| format!("{e:#}")),
        _ => None,
    });
    let mut interrupted = false;
    for (object, outcome) in ended {
        let destination = config.job_for(&object).destination.to_string();
        match outcome {
            Some(Ended::Ran(finished)) => {
                interrupted |= finished.report.outcome == Outcome::Interrupted;
                if config.progress == ProgressMode::Bar
                    && finished.report.outcome != Outcome::Failed
                {
                    let _ = writeln!(std::io::stderr(), "{}", summary_line(&finished.report));
                }
                entries.push(serde_json::to_value(&finished.report)?);
                if let Some(error) = &finished.error {
                    if shared_failure.is_none() {
                        tracing::error!(%object, error = %format!("{error:#}"),
                            "the window failed; the cursor did not move");
                    }
                    failed.push(object.to_string());
                }
            }
            Some(Ended::NotRun(error)) => {
                let error = format!("{error:#}");
                tracing::error!(%object, error = %error, "the window could not start");
                entries.push(json!({
                    "object": object.to_string(),
                    "destination": destination,
                    "outcome": "failed",
                    "error": error,
                }));
                failed.push(object.to_string());
            }
            Some(Ended::Skipped(scopes)) => entries.push(json!({
                "object": object.to_string(),
                "destination": destination,
                "outcome": "skipped",
                "error": format!("the token cannot read {object}: missing {}", scopes_text(&scopes)),
            })),
            Some(Ended::Locked(error)) => {
                entries.push(json!({
                    "object": object.to_string(),
                    "destination": destination,
                    "outcome": "locked",
                    "error": format!("{error:#}"),
                }));
                locked.get_or_insert(error);
            }
            None => {}
        }
    }
    if config.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &json!({ "objects": Value::from(entries) }))?;
        writeln!(out).context("writing the run summary to stdout")?;
        out.flush()?;
    }
    if let Some(error) = shared_failure {
        anyhow::bail!("{error}");
    }
    if !failed.is_empty() {
        return Err(SomeFailed {
            failed: failed.len(),
            total,
            names: failed.join(", "),
        }
        .into());
    }
    if interrupted {
        return Err(super::Interrupted.into());
    }
    match locked {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// `--interval` with several objects: each object runs its own continuous loop, all
/// under the one client. An object the token cannot read stops its loop with one line;
/// a refused token or a state that cannot record runs stops them all.
async fn continuous(
    config: &PollConfig,
    ready: Vec<Ready>,
    interval: std::time::Duration,
    shutdown: &Shutdown,
) -> Result<()> {
    let mut loops = JoinSet::new();
    for mut one in ready {
        let shutdown = shutdown.clone();
        let (json, progress) = (config.json, config.progress);
        loops.spawn(async move {
            let object = one.job.object.clone();
            let result = watch::run(&mut one.engine, &one.job, interval, &shutdown, |report| {
                print_summary(json, progress, report)
            })
            .await;
            (object, result)
        });
    }
    let mut outcome = Ok(());
    while let Some(joined) = loops.join_next().await {
        let (object, result) = joined.context("an object's loop")?;
        match result {
            Ok(()) => {}
            Err(e) if missing_scopes(&e).is_some() => {
                skip(&object, missing_scopes(&e).unwrap_or_default());
            }
            Err(e) => {
                shutdown.request();
                if outcome.is_ok() {
                    outcome = Err(e.context(format!("{object}")));
                }
            }
        }
    }
    outcome
}
