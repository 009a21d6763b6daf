//! `cursor show|set|reset OBJECT`: read or move where the next run of one sync starts.
//! An object synced to several destinations needs `--sink` or `--destination`: the
//! command refuses to guess. Setting and resetting take the sync's lock, so they never
//! race a running sync.

use std::io::{BufRead, Write};

use anyhow::{Result, bail};

use super::pick_destination;
use crate::config::{CursorConfig, CursorOp, UsageError};
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::state::{self, Location, Pass, Unassigned};

/// Runs a cursor command on the state file `db`.
///
/// # Errors
/// Lock held, an unreadable state file, an ambiguous destination, or a declined
/// confirmation.
pub async fn run(db: &Location, portal: Option<u64>, config: &CursorConfig) -> Result<()> {
    let object = &config.object;
    let mut out = std::io::stdout().lock();
    if let CursorOp::Show = config.op {
        let cursor = if let Some(state) = state::open_existing(db).await? {
            let (state, _) = super::narrow(state, db, portal, super::Portals::One).await?;
            let destination = pick_destination(&state, object, config.target.as_ref()).await?;
            let syncs = state.syncs(Some(object)).await?;
            syncs
                .into_iter()
                .find(|s| {
                    destination
                        .as_ref()
                        .is_some_and(|d| d.key() == s.destination.key())
                })
                .and_then(|s| s.cursor)
        } else {
            None
        };
        match cursor {
            Some(c) => writeln!(out, "{c}")?,
            None => writeln!(out, "none")?,
        }
        return Ok(());
    }
    let (state, portal) =
        super::narrow(state::open(db).await?, db, portal, super::Portals::One).await?;
    if matches!(db, Location::Postgres(_)) && portal.is_none() {
        return Err(UsageError::new(format!(
            "{} keeps no syncs of any portal yet: run a poll with the portal's token first",
            state.describe()
        ))
        .into());
    }
    refuse_unknown(&state, object).await?;
    let destination = pick_destination(&state, object, config.target.as_ref())
        .await?
        .unwrap_or_else(|| Destination::named("sqlite", "sqlite"));
    let _lock = crate::lock::lock(db, portal, object, &destination, None).await?;
    let sync = state.sync(object, &destination, Unassigned::Leave).await?;
    // A refresh half done told the destination it has the new list: closing its window
    // would leave the rest of history without it.
    let refreshing = state
        .open_window(sync.id, Pass::Main)
        .await?
        .is_some_and(|open| open.refresh);
    let starts_over = matches!(
        config.op,
        CursorOp::Reset {
            redeliver: true,
            ..
        }
    );
    if refreshing && !starts_over {
        return Err(UsageError::new(format!(
            "a --refresh of {object} -> {destination} is half done; finish it with \
             `martech-sync poll {object}{}` first (or start over with `cursor reset --redeliver`)",
            destination.flag()
        ))
        .into());
    }
    match config.op {
        CursorOp::Show => {}
        CursorOp::Set(at) => {
            state.set_cursor(sync.id, at).await?;
            let before = sync
                .cursor
                .map_or_else(|| "none".to_owned(), |c| c.to_string());
            writeln!(out, "{object} -> {destination}: cursor {before} -> {at}")?;
        }
        CursorOp::Reset { confirm, redeliver } => {
            if confirm {
                let what = if redeliver {
                    "re-reads all history and hands every record to the sink again"
                } else {
                    "re-reads all history (versions already delivered are skipped)"
                };
                eprint!(
                    "Reset the cursor of {object} -> {destination}? The next run {what}. [y/N] "
                );
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!("cursor of {object} -> {destination} left as it was");
                }
            }
            state.reset(sync.id, redeliver).await?;
            writeln!(
                out,
                "{object} -> {destination}: cursor reset; the next run covers all history"
            )?;
        }
    }
    Ok(())
}

/// Refuses to create the cursor of an object that is not a standard object and was never
/// synced here: a typo (`contact`) would otherwise become a sync of its own, stale for
/// ever in `status`.
async fn refuse_unknown(state: &state::State, object: &ObjectType) -> Result<()> {
    if object.standard().is_some()
        || object.as_str().starts_with("2-")
        || !state.syncs(Some(object)).await?.is_empty()
    {
        return Ok(());
    }
    let name = object.as_str();
    let guess = crate::object::STANDARD
        .iter()
        .map(|s| s.name)
        .find(|s| s.starts_with(name) || name.starts_with(s) || s.trim_end_matches('s') == name);
    Err(UsageError::new(format!(
        "`{name}` is not a standard object and has never been synced in {}{}",
        state.describe(),
        guess.map_or_else(String::new, |g| format!("; did you mean {g}?"))
    ))
    .into())
}
