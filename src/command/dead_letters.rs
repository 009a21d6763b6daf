//! `dead-letters list|retry`: webhook events the worker gave up on.

use std::io::Write;

use anyhow::Result;

use crate::config::DeadLettersConfig;
use crate::state::Location;

/// Lists or re-queues dead events in the state file `db`.
///
/// # Errors
/// When the state file cannot be read or written.
pub async fn run(db: &Location, portal: Option<u64>, config: &DeadLettersConfig) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let Some(state) = crate::state::open_existing(db).await? else {
        writeln!(out, "No state at {db}.")?;
        return Ok(());
    };
    let want = match config {
        DeadLettersConfig::Retry => super::Portals::One,
        DeadLettersConfig::List { .. } => super::Portals::All,
    };
    let (state, _) = super::narrow(state, db, portal, want).await?;
    match config {
        DeadLettersConfig::List { json: true } => {
            serde_json::to_writer_pretty(&mut out, &state.dead_letters().await?)?;
            writeln!(out)?;
        }
        DeadLettersConfig::List { json: false } => {
            let dead = state.dead_letters().await?;
            if dead.is_empty() {
                writeln!(out, "No dead letters.")?;
            }
            for e in dead {
                writeln!(
                    out,
                    "{} {} {} at {} after {} attempts: {}",
                    e.object,
                    e.id,
                    e.kind,
                    crate::timestamp::Millis(e.occurred_ms),
                    e.attempts,
                    e.last_error.as_deref().unwrap_or("-")
                )?;
            }
        }
        DeadLettersConfig::Retry => {
            let n = state.retry_dead().await?;
            writeln!(
                out,
                "{n} dead events queued again; a running serve delivers them"
            )?;
        }
    }
    Ok(())
}
