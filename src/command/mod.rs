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

use anyhow::Result;

use crate::config::UsageError;
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::sink::SinkSpec;
use crate::state::{self, Location, State};

/// The sink a command delivers to, with its destination: the one given, or the one a
/// destination named without `--sink` was last given (the default `sqlite` for a name
/// never used), so that a run that forgets `--sink` never sends a named destination's
/// records somewhere else.
///
/// # Errors
/// When the state file cannot be read.
pub(crate) async fn resolve_sink(
    state: &State,
    destination: &Destination,
    given: Option<&SinkSpec>,
) -> Result<(SinkSpec, Destination)> {
    if let Some(spec) = given {
        return Ok((spec.clone(), destination.clone()));
    }
    let mut spec = SinkSpec::Sqlite;
    let known = state.syncs(None).await?;
    if let Some(known) = known
        .iter()
        .find(|s| s.destination.key() == destination.key())
    {
        // Never another sink than the destination's: one that cannot be read back
        // (say a postgres:// URL PGSSLMODE now makes invalid) is an error.
        spec = known.destination.sink_spec().ok_or_else(|| {
            UsageError::new(format!(
                "the sink of destination {} cannot be rebuilt from the state (check \
                 the PG* variables); give it with --sink",
                destination.key()
            ))
        })?;
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

/// The state at `db` for a command without a token (`status`, `cursor`,
/// `dead-letters`), with the portal it is narrowed to: in a Postgres state that keeps several portals, narrowed to
/// `portal` (`--portal`) or to the only one it keeps. With `one`, a state of several
/// portals and no `--portal` is refused; without, it is read whole.
///
/// # Errors
/// When the state cannot be opened, or a usage error naming the portals.
pub(crate) async fn state_of_portal(
    db: &Location,
    portal: Option<u64>,
    read_only: bool,
    one: bool,
) -> Result<(State, Option<u64>)> {
    let state = if read_only {
        state::open_read_only(db).await?
    } else {
        state::open(db).await?
    };
    if portal.is_some() || matches!(db, Location::File(_)) {
        return Ok((state::for_portal(state, portal), portal));
    }
    match state.portals().await?.as_slice() {
        [only] => Ok((state::for_portal(state, Some(*only)), Some(*only))),
        many if one && many.len() > 1 => Err(UsageError::new(format!(
            "{} keeps the syncs of {} HubSpot portals ({}); say which with --portal",
            state.describe(),
            many.len(),
            many.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
        _ => Ok((state, None)),
    }
}
