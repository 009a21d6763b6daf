//! `dead-letters list|retry`: webhook events the worker gave up on.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::config::DeadLettersConfig;
use crate::state::State;

/// Lists or re-queues dead events in the state file `db`.
///
/// # Errors
/// When the state file cannot be read or written.
pub fn run(db: &Path, config: &DeadLettersConfig) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !db.exists() {
        writeln!(out, "No state file at {}.", db.display())?;
        return Ok(());
    }
    let mut state = State::open(db)?;
    match config {
        DeadLettersConfig::List { json: true } => {
            serde_json::to_writer_pretty(&mut out, &state.dead_letters()?)?;
            writeln!(out)?;
        }
        DeadLettersConfig::List { json: false } => {
            let dead = state.dead_letters()?;
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
            let n = state.retry_dead()?;
            writeln!(
                out,
                "{n} dead events queued again; a running serve delivers them"
            )?;
        }
    }
    Ok(())
}
