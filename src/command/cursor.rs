//! `cursor show|set|reset OBJECT`: read or move where the next run starts. Setting and
//! resetting take the object's lock, so they never race a running sync.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Result, bail};

use crate::config::CursorConfig;
use crate::lock::ObjectLock;
use crate::state::State;

/// Runs a cursor command on the state file `db`.
///
/// # Errors
/// Lock held, an unreadable state file, or a declined confirmation.
pub fn run(db: &Path, config: &CursorConfig) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match config {
        CursorConfig::Show(object) => {
            let cursor = if db.exists() {
                State::open(db)?.cursor(object)?
            } else {
                None
            };
            match cursor {
                Some(c) => writeln!(out, "{c}")?,
                None => writeln!(out, "none")?,
            }
        }
        CursorConfig::Set(object, at) => {
            let _lock = ObjectLock::acquire(db, object)?;
            let mut state = State::open(db)?;
            let before = state.cursor(object)?;
            state.set_cursor(object, *at)?;
            let before = before.map_or_else(|| "none".to_owned(), |c| c.to_string());
            writeln!(out, "{object}: cursor {before} -> {at}")?;
        }
        CursorConfig::Reset {
            object,
            confirm,
            redeliver,
        } => {
            let _lock = ObjectLock::acquire(db, object)?;
            if *confirm {
                let what = if *redeliver {
                    "re-reads all history and hands every record to the sink again"
                } else {
                    "re-reads all history (versions already delivered are skipped)"
                };
                eprint!("Reset the cursor of {object}? The next run {what}. [y/N] ");
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!("cursor of {object} left as it was");
                }
            }
            let mut state = State::open(db)?;
            state.reset_cursor(object, *redeliver)?;
            writeln!(
                out,
                "{object}: cursor reset; the next run covers all history"
            )?;
        }
    }
    Ok(())
}
