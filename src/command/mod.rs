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

/// What a command without a token needs of a state that keeps many portals.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Portals {
    /// Every portal, unless `--portal` names one (`status`, `dead-letters list`).
    All,
    /// One portal that has syncs (`cursor`, `dead-letters retry`).
    One,
}

/// `state` (at `db`) for a command without a token (`status`, `cursor`,
/// `dead-letters`), with the portal it is narrowed to: in a Postgres state, to `portal`
/// (`--portal`) or to the only portal it keeps. A state of several portals and no
/// `--portal` is read whole or refused, as `want` says; so is a `--portal` without syncs.
///
/// # Errors
/// A usage error naming the portals there are, or when they cannot be read.
pub(crate) async fn narrow(
    state: State,
    db: &Location,
    portal: Option<u64>,
    want: Portals,
) -> Result<(State, Option<u64>)> {
    if matches!(db, Location::File(_)) {
        if let Some(portal) = portal {
            tracing::warn!(
                "--portal {portal} is ignored: a state file keeps one portal's syncs (--portal is for a postgres:// --db)"
            );
        }
        return Ok((state, None));
    }
    let portals = state.portals().await?;
    let known = || {
        if portals.is_empty() {
            "none yet".to_owned()
        } else {
            portals
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(portal) = portal {
        if !portals.contains(&portal) {
            return Err(UsageError::new(format!(
                "--portal {portal}: {} has no syncs of that portal (it has: {}); a run with the portal's token makes them",
                state.describe(),
                known()
            ))
            .into());
        }
        return Ok((state::for_portal(state, Some(portal)), Some(portal)));
    }
    match portals.as_slice() {
        [only] => Ok((state::for_portal(state, Some(*only)), Some(*only))),
        many if want != Portals::All && many.len() > 1 => Err(UsageError::new(format!(
            "{} keeps the syncs of {} HubSpot portals ({}); say which with --portal",
            state.describe(),
            many.len(),
            known()
        ))
        .into()),
        _ => Ok((state, None)),
    }
}
