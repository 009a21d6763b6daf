//! The webhook worker: takes queued events in `occurredAt` order, fetches the current
//! versions of the records they name by batch read (search would lag), and hands what
//! the destination does not have to the sink through the same ledger as the poll,
//! marking the events done in the same transaction. For each record the latest event
//! decides: a deletion, or a change whose record is gone, becomes a tombstone; a record
//! merged away becomes a tombstone with `mergedInto` (when the destination holds it). A
//! failing batch is retried with backoff (×4 an attempt, at most an hour); after
//! `dead_after` attempts its events are parked as dead letters.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Result;

use super::event::EventKind;
use crate::destination::Destination;
use crate::hubspot::error::{is_auth_failure, is_daily_limit};
use crate::hubspot::hydrate::Unaccounted;
use crate::ledger;
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::state::{Queued, Sync};
use crate::sync::Engine;
use crate::timestamp::Millis;

/// Events taken at a time (HubSpot's batch read takes 100 ids).
const BATCH: usize = 100;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

/// How the worker retries.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// The first wait; four times longer each attempt.
    pub base: Duration,
    /// Attempts before events are parked as dead.
    pub dead_after: u32,
}

impl Retry {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 4u32.saturating_pow(attempt.saturating_sub(1).min(15));
        self.base.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    pub events: usize,
    pub delivered: usize,
    pub failed: usize,
}

/// Delivers the events due now to `destination`, one batch per object; returns what it
/// did. A failed object's events are retried later; the others go on.
///
/// # Errors
/// When the state cannot be read or written, HubSpot refuses the token, or the
/// account's daily limit is used up (then nothing is counted against the events: the
/// caller waits).
pub async fn drain_once(
    engine: &mut Engine,
    destination: &Destination,
    retry: Retry,
) -> Result<Pass> {
    let due = engine.state.due_events(Millis::now(), BATCH).await?;
    let mut pass = Pass {
        events: due.len(),
        ..Pass::default()
    };
    let mut by_object: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
    for event in due {
        by_object
            .entry(event.object.clone())
            .or_default()
            .push(event);
    }
    for (name, events) in by_object {
        let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
        let Ok(object) = name.parse::<ObjectType>() else {
            engine
                .state
                .events_failed(&keys, "unknown object type", Millis::now(), 1)
                .await?;
            continue;
        };
        let sync = engine.state.sync(&object, destination).await?;
        match deliver(engine, &sync, &events).await {
            Ok(n) => pass.delivered += n,
            // A refused token or a used-up day fails every batch alike: stop rather
            // than bury the queue in dead letters.
            Err(e) if is_auth_failure(&e) || is_daily_limit(&e) => return Err(e),
            Err(e) => {
                let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(0) + 1;
                let wait = retry.backoff(attempts);
                let error = format!("{e:#}");
                tracing::warn!(%object, events = keys.len(), attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %error, "webhook delivery failed; retrying later");
                engine
                    .state
                    .events_failed(&keys, &error, Millis::now().plus(wait), retry.dead_after)
                    .await?;
                pass.failed += keys.len();
            }
        }
    }
    Ok(pass)
}

/// Fetches, delivers and marks done one object's events.
async fn deliver(engine: &mut Engine, sync: &Sync, events: &[Queued]) -> Result<usize> {
    let object = &sync.object;
    // The latest event of each record decides (events come oldest first).
    let mut latest: BTreeMap<RecordId, (EventKind, Millis, Option<u64>)> = BTreeMap::new();
    for e in events {
        latest.insert(
            RecordId(e.id),
            (e.event_kind(), Millis(e.occurred_ms), e.merged_into),
        );
    }
    let changed: Vec<RecordId> = latest
        .iter()
        .filter(|(_, (kind, _, _))| *kind == EventKind::Change)
        .map(|(id, _)| *id)
        .collect();
    let fetched = if changed.is_empty() {
        Default::default()
    } else {
        let properties = engine.stored_properties(sync).await?;
        engine
            .client
            .batch_read(object, &changed, &properties, Unaccounted::Gone)
            .await?
    };
    // Records merged into a fetched winner get their tombstone from its
    // `hs_merged_object_ids`, not a plain one.
    let winners: Vec<&Record> = fetched.values().collect();
    let absorbed: HashSet<RecordId> = ledger::merged_ids(&winners)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut versions: Vec<Record> = Vec::new();
    let mut merged_away: Vec<Record> = Vec::new();
    for (id, (kind, at, into)) in latest {
        match kind {
            EventKind::Change if fetched.contains_key(&id) => {}
            EventKind::Change if absorbed.contains(&id) => {}
            EventKind::Change | EventKind::Deletion => {
                versions.push(Record::tombstone(id, at, None));
            }
            EventKind::Merged => {
                merged_away.push(Record::tombstone(id, at, into.map(RecordId)));
            }
        }
    }
    versions.extend(fetched.into_values());
    // A merged-away record is news only to a destination that holds it live.
    if !merged_away.is_empty() {
        let ids: Vec<_> = merged_away.iter().map(|r| r.id).collect();
        let held = engine.state.held(sync.id, &ids).await?;
        merged_away.retain(|r| held.get(&r.id).is_some_and(|h| !h.archived));
    }
    let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
    let delivered = engine
        .deliver_loose(sync, &versions, merged_away, Some(&keys))
        .await?;
    tracing::debug!(%object, events = events.len(), delivered, "webhook events delivered");
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_to_an_hour() {
        let retry = Retry {
            base: Duration::from_secs(1),
            dead_after: 10,
        };
        let secs: Vec<u64> = (1..=8).map(|a| retry.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 4, 16, 64, 256, 1024, 3600, 3600]);
    }
}
