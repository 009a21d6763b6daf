//! One module per subcommand: each takes its validated config and does the effects.
//! Shared here: how a command that acts on one sync picks its destination.

pub mod cursor;
pub mod dead_letters;
pub mod demo;
pub mod generate;
pub mod mock;
pub mod poll;
pub mod serve;
pub mod status;
pub mod verify;

use std::path::Path;

use anyhow::Result;

use crate::config::UsageError;
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::sink::SinkSpec;
use crate::state::{self, State};

/// The sink a command delivers to, with its destination: the one given, or the one a
/// destination named without `--sink` was last given (the default `sqlite` for a name
/// never used), so that a run that forgets `--sink` never sends a named destination's
/// records somewhere else.
///
/// # Errors
/// When the state file cannot be read.
pub(crate) async fn resolve_sink(
    db: &Path,
    destination: &Destination,
    given: Option<&SinkSpec>,
) -> Result<(SinkSpec, Destination)> {
    if let Some(spec) = given {
        return Ok((spec.clone(), destination.clone()));
    }
    let mut spec = SinkSpec::Sqlite;
    if db.exists() {
        let known = state::open_read_only(db)?.syncs(None).await?;
        if let Some(known) = known
            .iter()
            .find(|s| s.destination.key() == destination.key())
        {
            // Never another sink than the destination's: one that cannot be read back
            // (say a postgres:// URL PGSSLMODE now makes invalid) is an error.
            spec = known.destination.sink_spec().ok_or_else(|| {
                UsageError::new(format!(
                    "the sink of destination {} cannot be rebuilt from the state file (check \
                     the PG* variables); give it with --sink",
                    destination.key()
                ))
            })?;
        }
    }
    let destination = Destination::named(destination.key(), spec.stored());
    Ok((spec, destination))
}

/// The destination a command acts on: the one named (`--sink`/`--destination`), which
/// must exist when `object` already has destinations, or else the only one `object`
/// has; `None` when it has none. Refuses to guess between several.
///
/// # Errors
/// A usage error (exit 2) naming the destinations there are.
pub(crate) async fn pick_destination(
    state: &State,
    object: &ObjectType,
    named: Option<&Destination>,
) -> Result<Option<Destination>> {
    let syncs = state.syncs(Some(object)).await?;
    let known: Vec<String> = syncs
        .iter()
        .map(|s| format!("`{}`", s.destination.key()))
        .collect();
    match (named, syncs.as_slice()) {
        (Some(named), []) => Ok(Some(named.clone())),
        (Some(named), _) => {
            if syncs.iter().any(|s| s.destination.key() == named.key()) {
                Ok(Some(named.clone()))
            } else {
                Err(UsageError::new(format!(
                    "{object} has no destination `{named}` in {}; it syncs to {} \
                     (`martech-sync status` lists them)",
                    state.describe(),
                    known.join(", ")
                ))
                .into())
            }
        }
        (None, []) => Ok(None),
        (None, [one]) => Ok(Some(one.destination.clone())),
        (None, many) => Err(UsageError::new(format!(
            "{object} is synced to {} destinations ({}); say which with --sink or --destination",
            many.len(),
            known.join(", ")
        ))
        .into()),
    }
}
