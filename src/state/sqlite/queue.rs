//! `webhook_events`: accepted webhook events are written here before the 200, so a crash
//! after answering loses nothing; the worker takes them in `occurredAt` order and marks
//! them done in the same transaction as the versions it delivered.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::to_sql;
use crate::state::{QueueDepth, Queued};
use crate::timestamp::Millis;
use crate::webhook::event::Event;

pub fn enqueue(tx: &Transaction<'_>, events: &[Event], now: Millis) -> Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO webhook_events
             (key, object, object_id, kind, occurred_ms, received_ms, merged_into)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut new = 0;
    for e in events {
        new += stmt.execute(params![
            e.key,
            e.object.as_str(),
            to_sql(e.id),
            e.kind.as_str(),
            e.occurred.0,
            now.0,
            e.merged_into.map(to_sql)
        ])?;
    }
    Ok(new)
}

pub fn due(conn: &Connection, now: Millis, limit: usize, skip: &[String]) -> Result<Vec<Queued>> {
    queued_where(
        conn,
        "state = 'queued' AND next_attempt_ms <= ?1
         AND object NOT IN (SELECT value FROM json_each(?3))",
        (now.0, &serde_json::to_string(skip)?),
        limit,
    )
}

pub fn dead(conn: &Connection) -> Result<Vec<Queued>> {
    queued_where(
        conn,
        "state = 'dead' AND ?1 = ?1 AND ?3 = ?3",
        (0, "[]"),
        usize::MAX >> 1,
    )
}

/// The events matching `filter`, which takes `args` as `?1` and `?3` (`?2` is `limit`).
fn queued_where(
    conn: &Connection,
    filter: &str,
    args: (i64, &str),
    limit: usize,
) -> Result<Vec<Queued>> {
    let sql = format!(
        "SELECT key, object, object_id, kind, occurred_ms, attempts, last_error, merged_into
         FROM webhook_events WHERE {filter} ORDER BY occurred_ms, key LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![args.0, i64::try_from(limit)?, args.1], |r| {
        Ok(Queued {
            key: r.get(0)?,
            object: r.get(1)?,
            id: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            kind: r.get(3)?,
            occurred_ms: r.get(4)?,
            attempts: r.get(5)?,
            last_error: r.get(6)?,
            merged_into: r
                .get::<_, Option<i64>>(7)?
                .and_then(|v| u64::try_from(v).ok()),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn mark_done(tx: &Transaction<'_>, keys: &[String]) -> Result<()> {
    let mut stmt = tx.prepare_cached("UPDATE webhook_events SET state = 'done' WHERE key = ?1")?;
    for key in keys {
        stmt.execute([key])?;
    }
    Ok(())
}

pub fn failed(
    tx: &Transaction<'_>,
    keys: &[String],
    error: &str,
    retry_at: Millis,
    max_attempts: u32,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3,
                state = CASE WHEN attempts + 1 >= ?4 THEN 'dead' ELSE 'queued' END
         WHERE key = ?1",
    )?;
    for key in keys {
        stmt.execute(params![key, error, retry_at.0, max_attempts])?;
    }
    Ok(())
}

pub fn prune_done(tx: &Transaction<'_>, before: Millis) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM webhook_events WHERE state = 'done' AND received_ms < ?1",
        [before.0],
    )?)
}

pub fn retry_dead(tx: &Transaction<'_>) -> Result<usize> {
    Ok(tx.execute(
        "UPDATE webhook_events SET state = 'queued', attempts = 0, next_attempt_ms = 0 WHERE state = 'dead'",
        [],
    )?)
}

pub fn depth(conn: &Connection) -> Result<QueueDepth> {
    let now = Millis::now().0;
    let depth = conn
        .query_row(
            "SELECT COUNT(*) FILTER (WHERE state = 'queued'), COUNT(*) FILTER (WHERE state = 'dead'),
                    MIN(MAX(received_ms, next_attempt_ms))
                        FILTER (WHERE state = 'queued' AND next_attempt_ms <= ?1)
             FROM webhook_events",
            [now],
            |r| {
                Ok(QueueDepth {
                    queued: r.get(0)?,
                    dead: r.get(1)?,
                    oldest_due_ms: r.get(2)?,
                })
            },
        )
        .optional()?;
    Ok(depth.unwrap_or_default())
}

/// A real write: the heartbeat row.
pub fn heartbeat(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('heartbeat', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [Millis::now().to_rfc3339()],
    )?;
    Ok(())
}
