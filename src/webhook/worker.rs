//! The webhook worker: takes queued events in `occurredAt` order, fetches the current
//! versions of the records they name by batch read (search would lag), and hands what
//! the destination does not have to the sink through the same ledger as the poll,
//! marking the events done in the same transaction. For each record the latest event
//! decides: a deletion, or a change whose record is gone, becomes a tombstone; a record
//! merged away becomes a tombstone with `mergedInto` (when the destination holds it).
//!
//! A batch that fails (the fetch or the sink) is retried with backoff (×4 an attempt, at
//! most an hour, counted per event): once whole, then in batches of ten records, then one
//! record at a time, so a short outage costs one retry per batch and a record that fails
//! on its own is soon alone; after `dead_after` attempts its events are parked as dead
//! letters, and the rest go through.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;

use super::event::EventKind;
use crate::destination::Destination;
use crate::hubspot::error::{is_auth_failure, is_daily_limit};
use crate::hubspot::hydrate::Unaccounted;
use crate::ledger;
use crate::lock::{LockHeld, ObjectLock};
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::shutdown::Shutdown;
use crate::state::{Location, Unassigned};
use crate::state::{Queued, Sync};
use crate::sync::{Engine, Loose};
use crate::timestamp::Millis;

/// Events taken at a time (HubSpot's batch read takes 100 ids).
const BATCH: usize = 100;
/// Records a batch of events that failed twice holds.
const NARROW: usize = 10;
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
    /// Events left for later because a poll holds their sync's lock.
    pub waiting: usize,
}

/// The locks the worker delivers under: one per (object, destination), so a cron poll
/// of the same sync never races it. The locks of `serve --poll` objects are held for the
/// whole run; the others are taken for each batch and skipped (the events wait) while
/// a poll holds them.
pub struct Locks {
    db: Location,
    portal: Option<u64>,
    destination: Destination,
    held: HashMap<ObjectType, ObjectLock>,
}

impl Locks {
    /// Locks for `destination` in the state file `db`, with the ones already `held`.
    pub fn new(
        db: &Location,
        portal: Option<u64>,
        destination: &Destination,
        held: HashMap<ObjectType, ObjectLock>,
    ) -> Locks {
        Locks {
            db: db.clone(),
            portal,
            destination: destination.clone(),
            held,
        }
    }

    /// Whether `object` may be delivered now, with the lock to keep while it is.
    async fn take(&self, object: &ObjectType) -> Result<Option<Option<ObjectLock>>> {
        if self.held.contains_key(object) {
            return Ok(Some(None));
        }
        match crate::lock::lock(&self.db, self.portal, object, &self.destination, None).await {
            Ok(lock) => Ok(Some(Some(lock))),
            Err(e) if e.is::<LockHeld>() => {
                tracing::debug!(%object, "a poll holds the lock; its webhook events wait");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Delivers the events due now to `destination`, one batch per object; returns what it
/// did. Objects whose lock a poll holds are added to `waiting` and left out of the
/// caller's next passes, so their events never crowd out the others.
///
/// Events go in batches that narrow as they keep failing (see [`batches`]), so a record
/// that fails (a handler that hangs on it, a record HubSpot cannot return) ends up
/// holding back only its own events, while a short outage costs one retry of each batch.
///
/// # Errors
/// When the state cannot be read or written, HubSpot refuses the token, or the
/// account's daily limit is used up (then nothing is counted against the events: the
/// caller waits).
pub async fn drain_once(
    engine: &mut Engine,
    locks: &Locks,
    retry: Retry,
    shutdown: &Shutdown,
    waiting: &mut Vec<String>,
) -> Result<Pass> {
    let due = engine
        .state
        .due_events(Millis::now(), BATCH, waiting)
        .await?;
    let mut pass = Pass {
        events: due.len(),
        ..Pass::default()
    };
    // Where events are claimed (Postgres), what this pass did not settle (its lock was
    // held, a stop came) goes back to the queue now rather than when the claim runs out.
    let keys: Vec<String> = due.iter().map(|e| e.key.clone()).collect();
    let delivered = deliver_due(engine, locks, retry, shutdown, waiting, due, &mut pass).await;
    let released = engine.state.release_events(&keys).await;
    delivered?;
    released?;
    Ok(pass)
}

/// [`drain_once`] on the events it took.
async fn deliver_due(
    engine: &mut Engine,
    locks: &Locks,
    retry: Retry,
    shutdown: &Shutdown,
    waiting: &mut Vec<String>,
    due: Vec<Queued>,
    pass: &mut Pass,
) -> Result<()> {
    let mut by_object: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
    for event in due {
        by_object
            .entry(event.object.clone())
            .or_default()
            .push(event);
    }
    for (name, events) in by_object {
        let Ok(object) = name.parse::<ObjectType>() else {
            let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
            engine
                .state
                .events_failed(&keys, "unknown object type", Millis::now(), 1)
                .await?;
            continue;
        };
        let Some(_lock) = locks.take(&object).await? else {
            pass.waiting += events.len();
            waiting.push(name);
            continue;
        };
        let mut sync = engine
            .state
            .sync(&object, &locks.destination, Unassigned::Leave)
            .await?;
        match engine.resolve(&object).await {
            Ok(resolved) => sync.object = resolved,
            Err(e) if is_auth_failure(&e) || is_daily_limit(&e) => return Err(e),
            Err(_) if shutdown.requested() => continue,
            Err(e) => {
                failed(engine, &object, &events, &e, retry).await?;
                pass.failed += events.len();
                continue;
            }
        }
        for batch in batches(events) {
            if shutdown.requested() {
                break;
            }
            match deliver(engine, &sync, &batch).await {
                Ok(()) => pass.delivered += batch.len(),
                // A refused token or a used-up day fails every batch alike: stop rather
                // than bury the queue in dead letters.
                Err(e) if is_auth_failure(&e) || is_daily_limit(&e) => return Err(e),
                // Work cut short by a stop is no attempt: the events wait as they were.
                Err(_) if shutdown.requested() => {}
                Err(e) => {
                    failed(engine, &object, &batch, &e, retry).await?;
                    pass.failed += batch.len();
                }
            }
        }
    }
    Ok(())
}

/// One object's due events as batches, by how often they failed: a first attempt and
/// the first retry go in batches of [`BATCH`] (so a sink that was down for a moment
/// catches up at full speed), the next retry in batches of [`NARROW`], and later ones
/// one record at a time (so a record the handler fails or hangs on ends up alone and
/// holds back only its own events). A record's events always share a batch.
fn batches(events: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut by_size: BTreeMap<usize, BTreeMap<u64, Vec<Queued>>> = BTreeMap::new();
    for event in events {
        let size = match event.attempts {
            0 | 1 => BATCH,
            2 => NARROW,
            _ => 1,
        };
        by_size
            .entry(size)
            .or_default()
            .entry(event.id)
            .or_default()
            .push(event);
    }
    let mut batches = Vec::new();
    // Larger batches (fresher events) first.
    for (size, records) in by_size.into_iter().rev() {
        let mut batch: Vec<Queued> = Vec::new();
        let mut in_batch = 0;
        for record in records.into_values() {
            if in_batch == size {
                batches.push(std::mem::take(&mut batch));
                in_batch = 0;
            }
            batch.extend(record);
            in_batch += 1;
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    batches
}

/// Fetches and delivers one batch, marking its events done in the same transaction.
async fn deliver(engine: &mut Engine, sync: &Sync, events: &[Queued]) -> Result<()> {
    let units = fetch(engine, sync, events).await?;
    let loose = Loose {
        versions: units.iter().flat_map(|u| u.versions.clone()).collect(),
        gone: units.iter().flat_map(|u| u.gone.clone()).collect(),
        current: Vec::new(),
    };
    let keys: Vec<String> = units.iter().flat_map(|u| u.keys.clone()).collect();
    let delivered = engine.deliver_loose(sync, loose, Some(&keys)).await?;
    tracing::debug!(object = %sync.object, events = keys.len(), delivered,
        "webhook events delivered");
    Ok(())
}

/// Counts a failed attempt on each of `events`: retried after its own backoff, or dead.
async fn failed(
    engine: &Engine,
    object: &ObjectType,
    events: &[Queued],
    error: &anyhow::Error,
    retry: Retry,
) -> Result<()> {
    let error = format!("{error:#}");
    let mut by_attempt: BTreeMap<u32, Vec<&Queued>> = BTreeMap::new();
    for event in events {
        by_attempt
            .entry(event.attempts.saturating_add(1))
            .or_default()
            .push(event);
    }
    for (attempts, events) in by_attempt {
        let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        let wait = retry.backoff(attempts);
        tracing::warn!(%object, events = keys.len(), ids = ?ids, attempts,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %error, "webhook delivery failed; retrying later");
        engine
            .state
            .events_failed(&keys, &error, Millis::now().plus(wait), retry.dead_after)
            .await?;
        if attempts >= retry.dead_after {
            tracing::error!(%object, events = keys.len(), ids = ?ids, attempts,
                "webhook events parked as dead letters after {attempts} attempts \
                 (see `martech-sync dead-letters list`; the next reconciliation window still \
                 brings their records' changes)");
        }
    }
    Ok(())
}

/// What one record of a batch hands the sink, and the events it settles.
struct Unit {
    /// Versions and timestamped tombstones (deletion events).
    versions: Vec<Record>,
    /// Tombstones of records HubSpot says are gone now: a changed record batch read
    /// no longer finds, or one merged away (when held live).
    gone: Vec<Record>,
    keys: Vec<String>,
}

/// Fetches the current versions of the records `events` name (one batch read) and
/// groups what to deliver by record. For each record the latest event decides.
async fn fetch(engine: &mut Engine, sync: &Sync, events: &[Queued]) -> Result<Vec<Unit>> {
    let object = &sync.object;
    // The latest event of each record decides (events come oldest first).
    let mut latest: BTreeMap<RecordId, (EventKind, Millis, Option<u64>)> = BTreeMap::new();
    let mut units: BTreeMap<RecordId, Unit> = BTreeMap::new();
    for e in events {
        let id = RecordId(e.id);
        latest.insert(id, (e.event_kind(), Millis(e.occurred_ms), e.merged_into));
        units
            .entry(id)
            .or_insert_with(|| Unit {
                versions: Vec::new(),
                gone: Vec::new(),
                keys: Vec::new(),
            })
            .keys
            .push(e.key.clone());
    }
    let changed: Vec<RecordId> = latest
        .iter()
        .filter(|(_, (kind, _, _))| *kind == EventKind::Change)
        .map(|(id, _)| *id)
        .collect();
    let mut fetched = if changed.is_empty() {
        Default::default()
    } else {
        let properties = engine.stored_properties(sync).await?;
        engine
            .client
            .batch_read(object, &changed, &properties, Unaccounted::Gone)
            .await?
    };
    // A merged-away id comes back as its winner, under the winner's id: the winner goes
    // with the unit of an id it absorbed, and that id gets its tombstone from the
    // winner's `hs_merged_object_ids`, not a plain one.
    let mut absorbed: HashMap<RecordId, RecordId> = HashMap::new();
    {
        let winners: Vec<&Record> = fetched.values().collect();
        for (id, winner) in ledger::merged_ids(&winners) {
            absorbed.entry(id).or_insert(winner.id);
        }
    }
    let strangers: Vec<RecordId> = fetched
        .keys()
        .filter(|id| !units.contains_key(id))
        .copied()
        .collect();
    for winner in strangers {
        let home = absorbed
            .iter()
            .find(|(id, w)| **w == winner && units.contains_key(id))
            .map(|(id, _)| *id);
        if let (Some(home), Some(record)) = (home, fetched.remove(&winner))
            && let Some(unit) = units.get_mut(&home)
        {
            unit.versions.push(record);
        }
    }
    let mut merged_ids = Vec::new();
    for (id, (kind, at, into)) in latest {
        let Some(unit) = units.get_mut(&id) else {
            continue;
        };
        match kind {
            EventKind::Change => match fetched.remove(&id) {
                Some(record) => unit.versions.push(record),
                None if absorbed.contains_key(&id) => {}
                // Batch read says it is gone now, whatever the event's time.
                None => unit.gone.push(Record::tombstone(id, at, None)),
            },
            EventKind::Deletion => unit.versions.push(Record::tombstone(id, at, None)),
            EventKind::Merged => {
                merged_ids.push(id);
                unit.gone
                    .push(Record::tombstone(id, at, into.map(RecordId)));
            }
        }
    }
    // A merged-away record is news only to a destination that holds it live.
    if !merged_ids.is_empty() {
        let held = crate::sync::held(
            &engine.state,
            &mut engine.sink,
            sync.id,
            &sync.object,
            &merged_ids,
        )
        .await?;
        for unit in units.values_mut() {
            unit.gone.retain(|r| {
                r.merged_into.is_none() || held.get(&r.id).is_some_and(|h| !h.archived)
            });
        }
    }
    Ok(units.into_values().collect())
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

    fn queued(id: u64, attempts: u32) -> Queued {
        Queued {
            key: format!("{id}-{attempts}"),
            object: "contacts".to_owned(),
            id,
            kind: "contact.creation".to_owned(),
            occurred_ms: 0,
            attempts,
            last_error: None,
            merged_into: None,
        }
    }

    #[test]
    fn batches_narrow_as_events_keep_failing() {
        let mut events: Vec<Queued> = (1..=150).map(|id| queued(id, 0)).collect();
        events.extend((151..=250).map(|id| queued(id, 1)));
        events.extend((251..=275).map(|id| queued(id, 2)));
        events.extend((276..=278).map(|id| queued(id, 5)));
        // Two events of one record stay together.
        events.push(queued(260, 2));
        let sizes: Vec<usize> = batches(events).iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50, 11, 10, 5, 1, 1, 1]);
    }
}
