//! The webhook queue in the state file: accepted events are written here before the
//! 200, so a crash after answering loses nothing; the worker takes them in `occurredAt`
//! order and marks them done in the same transaction as the versions it delivered.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::event::{Event, EventKind};
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::state::{RecordsTable, State, remember_delivered, upsert_records};
use crate::timestamp::Millis;

/// A queued event as the worker and `dead-letters` see it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub key: String,
    pub object: String,
    pub id: u64,
    pub kind: String,
    pub occurred_ms: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl Queued {
    /// The event's kind.
    pub fn event_kind(&self) -> EventKind {
        EventKind::parse(&self.kind)
    }
}

/// How many events wait, and how many were given up on.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct QueueDepth {
    pub queued: u64,
    pub dead: u64,
}

impl State {
    /// Queues `events` in one transaction; an event already queued (a redelivery) is
    /// ignored. Returns how many were new.
    ///
    /// # Errors
    /// On SQLite errors; then nothing was queued.
    pub fn enqueue(&mut self, events: &[Event], now: Millis) -> Result<usize> {
        let tx = self.write()?;
        let mut new = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO webhook_events (key, object, object_id, kind, occurred_ms, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in events {
                new += stmt.execute(params![
                    e.key,
                    e.object.as_str(),
                    i64::try_from(e.id.0)?,
                    e.kind.as_str(),
                    e.occurred.0,
                    now.0
                ])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// Up to `limit` queued events due at `now`, oldest `occurredAt` first.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn due_events(&self, now: Millis, limit: usize) -> Result<Vec<Queued>> {
        self.queued_where("state = 'queued' AND next_attempt_ms <= ?1", now.0, limit)
    }

    /// The events given up on.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn dead_letters(&self) -> Result<Vec<Queued>> {
        self.queued_where("state = 'dead' AND ?1 = ?1", 0, usize::MAX >> 1)
    }

    fn queued_where(&self, filter: &str, arg: i64, limit: usize) -> Result<Vec<Queued>> {
        let sql = format!(
            "SELECT key, object, object_id, kind, occurred_ms, attempts, last_error FROM webhook_events
             WHERE {filter} ORDER BY occurred_ms, key LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![arg, i64::try_from(limit)?], |r| {
            Ok(Queued {
                key: r.get(0)?,
                object: r.get(1)?,
                id: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                kind: r.get(3)?,
                occurred_ms: r.get(4)?,
                attempts: r.get(5)?,
                last_error: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Delivers a batch's versions and marks its events done, in one transaction (the
    /// sink has confirmed `delivered` already, or writes them here for sqlite).
    ///
    /// # Errors
    /// On SQLite errors; then nothing is marked.
    pub fn commit_events(
        &mut self,
        object: &ObjectType,
        delivered: &[&Record],
        records_table: RecordsTable,
        keys: &[String],
    ) -> Result<()> {
        let tx = self.write()?;
        remember_delivered(&tx, object, delivered)?;
        if records_table == RecordsTable::Write {
            upsert_records(&tx, object, delivered)?;
        }
        {
            let mut stmt =
                tx.prepare_cached("UPDATE webhook_events SET state = 'done' WHERE key = ?1")?;
            for key in keys {
                stmt.execute([key])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Counts a failed attempt on `keys`: retried after `backoff`, or dead after
    /// `max_attempts`.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn events_failed(
        &mut self,
        keys: &[String],
        error: &str,
        retry_at: Millis,
        max_attempts: u32,
    ) -> Result<()> {
        let tx = self.write()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3,
                        state = CASE WHEN attempts + 1 >= ?4 THEN 'dead' ELSE 'queued' END
                 WHERE key = ?1",
            )?;
            for key in keys {
                stmt.execute(params![key, error, retry_at.0, max_attempts])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets done events received before `before`.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn prune_done_events(&mut self, before: Millis) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM webhook_events WHERE state = 'done' AND received_ms < ?1",
            [before.0],
        )?)
    }

    /// Queues every dead event again; returns how many.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn retry_dead(&mut self) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE webhook_events SET state = 'queued', attempts = 0, next_attempt_ms = 0 WHERE state = 'dead'",
            [],
        )?)
    }

    /// How many events wait and how many are dead.
    ///
    /// # Errors
    /// On SQLite errors.
    pub fn queue_depth(&self) -> Result<QueueDepth> {
        let depth = self
            .conn
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 'queued'), COUNT(*) FILTER (WHERE state = 'dead')
                 FROM webhook_events",
                [],
                |r| Ok(QueueDepth { queued: r.get(0)?, dead: r.get(1)? }),
            )
            .optional()?;
        Ok(depth.unwrap_or_default())
    }

    /// Whether the state file takes writes (for `/healthz`).
    ///
    /// # Errors
    /// When it does not.
    pub fn check_writable(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.rollback()?;
        Ok(())
    }
}

/// A tombstone for a deleted record: `archived: true`, modified at the deletion.
pub fn tombstone(id: RecordId, at: Millis) -> Record {
    Record {
        id,
        modified: at,
        properties: serde_json::Map::new(),
        created_at: String::new(),
        updated_at: at.to_rfc3339(),
        archived: true,
    }
}
