//! The webhook worker: takes queued events in `occurredAt` order, fetches the current
//! versions of the records they name by batch read (search would lag), hands new
//! versions to the sink through the same delivered-versions table as the poll, and marks
//! the events done in the same transaction. For each record the latest event decides:
//! a deletion, or a change whose record is gone, becomes a tombstone. A failing batch is
//! retried with backoff (×4 an attempt, at most an hour); after `dead_after` attempts its
//! events are parked as dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::event::EventKind;
use super::queue::{Queued, tombstone};
use crate::hubspot::error::is_auth_failure;
use crate::hubspot::hydrate::Unaccounted;
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
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

/// Delivers the events due now, one batch per object; returns what it did. A failed
/// object's events are retried later; the others go on.
///
/// # Errors
/// When the state file cannot be read or written, or HubSpot refuses the token.
pub async fn drain_once(
    engine: &mut Engine,
    properties: &dyn Fn(&ObjectType) -> Vec<String>,
    retry: Retry,
) -> Result<Pass> {
    let due = engine.state.due_events(Millis::now(), BATCH)?;
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
                .events_failed(&keys, "unknown object type", Millis::now(), 1)?;
            continue;
        };
        match deliver(engine, &object, &events, &properties(&object)).await {
            Ok(n) => pass.delivered += n,
            // A refused token fails every batch alike: stop rather than bury the queue
            // in dead letters.
            Err(e) if is_auth_failure(&e) => return Err(e),
            Err(e) => {
                let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(0) + 1;
                let wait = retry.backoff(attempts);
                let error = format!("{e:#}");
                tracing::warn!(%object, events = keys.len(), attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %error, "webhook delivery failed; retrying later");
                engine.state.events_failed(
                    &keys,
                    &error,
                    Millis::now().plus(wait),
                    retry.dead_after,
                )?;
                pass.failed += keys.len();
            }
        }
    }
    Ok(pass)
}

/// Fetches, delivers and marks done one object's events.
async fn deliver(
    engine: &mut Engine,
    object: &ObjectType,
    events: &[Queued],
    properties: &[String],
) -> Result<usize> {
    // The latest event of each record decides (events come oldest first).
    let mut latest: BTreeMap<RecordId, (EventKind, Millis)> = BTreeMap::new();
    for e in events {
        latest.insert(RecordId(e.id), (e.event_kind(), Millis(e.occurred_ms)));
    }
    let changed: Vec<RecordId> = latest
        .iter()
        .filter(|(_, (kind, _))| *kind == EventKind::Change)
        .map(|(id, _)| *id)
        .collect();
    let mut fetched = if changed.is_empty() {
        Default::default()
    } else {
        engine
            .client
            .batch_read(object, &changed, properties, Unaccounted::Gone)
            .await?
    };
    let records: Vec<Record> = latest
        .into_iter()
        .map(|(id, (kind, at))| match kind {
            EventKind::Change => fetched.remove(&id).unwrap_or_else(|| tombstone(id, at)),
            EventKind::Deletion => tombstone(id, at),
        })
        .collect();
    let fresh = engine.state.undelivered(object, &records)?;
    engine.sink.deliver(object, &fresh).await?;
    let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
    engine
        .state
        .commit_events(object, &fresh, engine.sink.records_table(), &keys)?;
    tracing::debug!(%object, events = events.len(), delivered = fresh.len(), "webhook events delivered");
    Ok(fresh.len())
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
