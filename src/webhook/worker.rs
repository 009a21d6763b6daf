//! The webhook worker: takes queued events in `occurredAt` order, fetches the current
//! versions of the records they name by batch read (search would lag), hands new
//! versions to the sink through the same delivered-versions table as the poll, and marks
//! the events done in the same transaction. Deletions become tombstones. A failing batch
//! is retried with backoff; after `MAX_ATTEMPTS` its events are parked as dead.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::event::EventKind;
use super::queue::{Queued, tombstone};
use crate::hubspot::error::is_auth_failure;
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::sync::Engine;
use crate::timestamp::Millis;

/// Attempts before an event is parked as dead.
pub const MAX_ATTEMPTS: u32 = 5;
/// Events taken at a time (HubSpot's batch read takes 100 ids).
const BATCH: usize = 100;

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
    base: Duration,
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
                let wait = base.saturating_mul(1 << attempts.min(10));
                let error = format!("{e:#}");
                tracing::warn!(%object, events = keys.len(), attempts, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %error, "webhook delivery failed; retrying later");
                engine.state.events_failed(
                    &keys,
                    &error,
                    Millis::now().plus(wait),
                    MAX_ATTEMPTS,
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
    let mut changed: Vec<RecordId> = Vec::new();
    let mut deleted: BTreeMap<RecordId, Millis> = BTreeMap::new();
    for e in events {
        let id = RecordId(e.id);
        match e.event_kind() {
            EventKind::Change => changed.push(id),
            EventKind::Deletion => {
                let at = Millis(e.occurred_ms);
                deleted
                    .entry(id)
                    .and_modify(|t| *t = (*t).max(at))
                    .or_insert(at);
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed.retain(|id| !deleted.contains_key(id));
    let mut fetched = if changed.is_empty() {
        Default::default()
    } else {
        engine
            .client
            .batch_read(object, &changed, properties)
            .await?
    };
    let mut records: Vec<Record> = changed.iter().filter_map(|id| fetched.remove(id)).collect();
    records.extend(deleted.into_iter().map(|(id, at)| tombstone(id, at)));
    let fresh = engine.state.undelivered(object, &records)?;
    engine.sink.deliver(object, &fresh).await?;
    let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
    engine
        .state
        .commit_events(object, &fresh, engine.sink.records_table(), &keys)?;
    tracing::debug!(%object, events = events.len(), delivered = fresh.len(), "webhook events delivered");
    Ok(fresh.len())
}
