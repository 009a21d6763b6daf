//! `dead-letters list|retry`: webhook events the worker gave up on.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::config::DeadLettersConfig;
use crate::state;

/// Lists or re-queues dead events in the state file `db`.
///
/// # Errors
/// When the state file cannot be read or written.
pub async fn run(db: &Path, config: &DeadLettersConfig) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !db.exists() {
        writeln!(out, "No state file at {}.", db.display())?;
        return Ok(());
    }
    match config {
        DeadLettersConfig::List { json: true } => {
            let state = state::open_read_only(db)?;
            serde_json::to_writer_pretty(&mut out, &state.dead_letters().await?)?;
            writeln!(out)?;
        }
        DeadLettersConfig::List { json: false } => {
            let state = state::open_read_only(db)?;
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
            let n = state::open(db)?.retry_dead().await?;
            writeln!(
                out,
                "{n} dead events queued again; a running serve delivers them"
            )?;
        }
    }
    Ok(())
}
