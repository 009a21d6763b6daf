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
use crate::state::State;

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
