//! Continuous mode (`poll --interval`): one window per tick, missed ticks skipped rather
//! than queued; the first window may start at `--since`, the rest start from the cursor. A failed window is logged and retried on the next tick with the cursor
//! where it was; a refused token ends the process (exit 1), since no tick can fix it.
//! SIGINT/SIGTERM stop after the page in hand and exit 0.

use std::time::Duration;

use anyhow::Result;
use tokio::time::MissedTickBehavior;

use crate::hubspot::error::is_auth_failure;
use crate::report::{Outcome, RunReport};
use crate::shutdown::Shutdown;
use crate::sync::{Engine, PollJob};
use crate::timestamp::Millis;
use crate::window::Ask;

/// Runs a window of `job` every `interval` until `shutdown`, calling `summary` after each.
///
/// # Errors
/// A refused token, a state file that cannot record runs, or an error from `summary`.
pub async fn run(
    engine: &mut Engine,
    job: &PollJob,
    interval: Duration,
    shutdown: &Shutdown,
    mut summary: impl FnMut(&RunReport) -> Result<()>,
) -> Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tracing::info!(object = %job.object, interval_s = interval.as_secs_f64(), "continuous mode");
    // `--since` (and `--refresh`) shape the first window only; once it went through, the
    // windows start from the cursor.
    let mut job = job.clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.wait() => return Ok(()),
        }
        let finished = engine.poll(&job, Millis::now(), shutdown).await?;
        summary(&finished.report)?;
        if finished.error.is_none() && finished.report.outcome != Outcome::Interrupted {
            job.ask = Ask::default();
        }
        if let Some(error) = finished.error {
            if is_auth_failure(&error) {
                return Err(error);
            }
            tracing::error!(object = %job.object, error = %format!("{error:#}"),
                "window failed; the next tick retries it");
        }
        if shutdown.requested() {
            return Ok(());
        }
    }
}
