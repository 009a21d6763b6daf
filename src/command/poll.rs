//! `poll OBJECT`: take the object's lock, run one window, print the summary.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::PollConfig;
use crate::hubspot::Client;
use crate::lock::ObjectLock;
use crate::sink::Sink;
use crate::state::State;
use crate::sync::{self, Finished};
use crate::timestamp::Millis;

/// Runs one window of `config` against the state file `db`.
///
/// # Errors
/// Lock held, state file unusable, or the run's own failure (cursor unchanged).
pub async fn run(db: &Path, config: &PollConfig) -> Result<()> {
    let finished = execute(db, config).await?;
    if config.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &finished.report)?;
        writeln!(out).context("writing the run summary to stdout")?;
    }
    finished.into_result().map(drop)
}

/// Takes the lock and runs the window, returning the report whatever the outcome.
///
/// # Errors
/// When the run could not start: lock held, state file or client unusable.
pub async fn execute(db: &Path, config: &PollConfig) -> Result<Finished> {
    let _lock = ObjectLock::acquire(db, &config.job.object)?;
    let mut state = State::open(db)?;
    let client = Client::new(&config.client)?;
    let mut sink = Sink::open(&config.sink)?;
    sync::poll(&client, &mut state, &mut sink, &config.job, Millis::now()).await
}
