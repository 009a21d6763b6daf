//! `webhook_events`: the queue every receiver of every machine writes (a redelivery is
//! ignored by its key) and every worker claims from. A worker claims a batch of its
//! portal's due events with `FOR UPDATE SKIP LOCKED` and a lease (`claimed_until`), so
//! two workers never take one event at once; the claim ends when the batch is marked
//! done (in the transaction that records its versions), failed or released, or when
//! the lease runs out (a worker that died).

use anyhow::Result;
use tokio_postgres::{Client, Row, Transaction};

use super::to_sql;
use crate::state::{QueueDepth, Queued};
use crate::timestamp::Millis;
use crate::webhook::event::Event;

/// How long a claim holds when its worker neither finishes nor releases it (it died).
/// A worker that outlives it still delivers under the object's lock, and the ledger
/// keeps a version from being handed over twice.
const LEASE_MS: i64 = 60_000;

/// The server's clock in epoch ms: the queue's times (retries, leases, received) are
/// all by it, so that workers on machines whose clocks disagree agree on what is due.
const SERVER_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

const COLUMNS: &str =
    "key, object, object_id, kind, occurred_ms, attempts, last_error, merged_into";

fn queued(r: &Row) -> Queued {
    Queued {
        key: r.get(0),
        object: r.get(1),
        id: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        kind: r.get(3),
        occurred_ms: r.get(4),
        attempts: u32::try_from(r.get::<_, i32>(5)).unwrap_or(0),
        last_error: r.get(6),
        merged_into: r
            .get::<_, Option<i64>>(7)
            .and_then(|v| u64::try_from(v).ok()),
    }
}

pub async fn enqueue(tx: &Transaction<'_>, events: &[Event], _now: Millis) -> Result<usize> {
    // HubSpot always says whose an event is; one that does not cannot be told apart in a
    // state of many portals (a batch read in the wrong portal would tombstone it).
    let (events, anonymous): (Vec<&Event>, Vec<&Event>) = events
        .iter()
        .partition(|e| e.portal.is_some_and(|p| i64::try_from(p).is_ok()));
    if !anonymous.is_empty() {
        tracing::warn!(
            events = anonymous.len(),
            "webhook events without a portalId were dropped: a state of many portals cannot tell whose they are"
        );
    }
    if events.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO martech_sync.webhook_events
             (key, portal_id, object, object_id, kind, occurred_ms, received_ms, merged_into)
         SELECT u.key, u.portal, u.object, u.id, u.kind, u.occurred, {SERVER_NOW}, u.merged
         FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[],
                     $6::BIGINT[], $7::BIGINT[])
              AS u(key, portal, object, id, kind, occurred, merged)
         ON CONFLICT (key) DO NOTHING"
    );
    let new = tx
        .execute(
            &sql,
            &[
                &events.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
                &events
                    .iter()
                    .map(|e| e.portal.and_then(|p| i64::try_from(p).ok()))
                    .collect::<Vec<_>>(),
                &events.iter().map(|e| e.object.as_str()).collect::<Vec<_>>(),
                &events.iter().map(|e| to_sql(e.id)).collect::<Vec<_>>(),
                &events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
                &events.iter().map(|e| e.occurred.0).collect::<Vec<_>>(),
                &events
                    .iter()
                    .map(|e| e.merged_into.map(to_sql))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    Ok(usize::try_from(new).unwrap_or(usize::MAX))
}

/// Claims up to `limit` of `portal`'s events due now by the server's clock, oldest
/// `occurredAt` first, leaving out the object types in `skip` and events another worker
/// holds.
pub async fn claim(
    tx: &Transaction<'_>,
    portal: i64,
    limit: usize,
    skip: &[String],
) -> Result<Vec<Queued>> {
    let sql = format!(
        "WITH server AS (SELECT {SERVER_NOW} AS now)
         UPDATE martech_sync.webhook_events SET claimed_until = (SELECT now FROM server) + {LEASE_MS}
         WHERE key IN (
             SELECT key FROM martech_sync.webhook_events
             WHERE state = 'queued' AND next_attempt_ms <= (SELECT now FROM server)
               AND claimed_until <= (SELECT now FROM server)
               AND portal_id = $1 AND NOT (object = ANY($2))
             ORDER BY occurred_ms, key LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    );
    let rows = tx
        .query(
            &sql,
            &[&portal, &skip, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?;
    let mut out: Vec<Queued> = rows.iter().map(queued).collect();
    out.sort_by(|a, b| (a.occurred_ms, &a.key).cmp(&(b.occurred_ms, &b.key)));
    Ok(out)
}

/// Binds `portal`'s queue to `destination` on first use; returns the one it is bound to.
pub async fn bind(tx: &Transaction<'_>, portal: i64, destination: &str) -> Result<String> {
    let key = format!("queue-of:{portal}");
    tx.execute(
        "INSERT INTO martech_sync.meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        &[&key, &destination],
    )
    .await?;
    Ok(tx
        .query_one(
            "SELECT value FROM martech_sync.meta WHERE key = $1",
            &[&key],
        )
        .await?
        .get(0))
}

/// Ends the claim on `keys` without counting an attempt.
pub async fn release(tx: &Transaction<'_>, keys: &[String]) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.webhook_events SET claimed_until = 0 WHERE key = ANY($1)",
        &[&keys],
    )
    .await?;
    Ok(())
}

pub async fn dead(c: &Client, portal: Option<i64>) -> Result<Vec<Queued>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM martech_sync.webhook_events
         WHERE state = 'dead' AND ($1::BIGINT IS NULL OR portal_id = $1)
         ORDER BY occurred_ms, key"
    );
    Ok(c.query(&sql, &[&portal])
        .await?
        .iter()
        .map(queued)
        .collect())
}

pub async fn mark_done(tx: &Transaction<'_>, keys: &[String]) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.webhook_events SET state = 'done', claimed_until = 0
         WHERE key = ANY($1)",
        &[&keys],
    )
    .await?;
    Ok(())
}

pub async fn failed(
    tx: &Transaction<'_>,
    keys: &[String],
    error: &str,
    retry_at: Millis,
    max_attempts: u32,
) -> Result<()> {
    // The backoff, not the worker's instant, goes to the server's clock.
    let delay = retry_at.0.saturating_sub(Millis::now().0).max(0);
    let sql = format!(
        "UPDATE martech_sync.webhook_events
         SET attempts = attempts + 1, last_error = $2, next_attempt_ms = {SERVER_NOW} + $3,
             claimed_until = 0,
             state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'queued' END
         WHERE key = ANY($1) AND state = 'queued'"
    );
    tx.execute(
        &sql,
        &[
            &keys,
            &error,
            &delay,
            &i32::try_from(max_attempts).unwrap_or(i32::MAX),
        ],
    )
    .await?;
    Ok(())
}

pub async fn prune_done(tx: &Transaction<'_>, before: Millis) -> Result<usize> {
    let n = tx
        .execute(
            "DELETE FROM martech_sync.webhook_events WHERE state = 'done' AND received_ms < $1",
            &[&before.0],
        )
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub async fn retry_dead(tx: &Transaction<'_>, portal: Option<i64>) -> Result<usize> {
    let n = tx
        .execute(
            "UPDATE martech_sync.webhook_events
             SET state = 'queued', attempts = 0, next_attempt_ms = 0, claimed_until = 0
             WHERE state = 'dead' AND ($1::BIGINT IS NULL OR portal_id = $1)",
            &[&portal],
        )
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub async fn depth(c: &Client, portal: Option<i64>) -> Result<QueueDepth> {
    let sql = format!(
        "SELECT COUNT(*) FILTER (WHERE state = 'queued'),
                COUNT(*) FILTER (WHERE state = 'dead'),
                MIN(GREATEST(received_ms, next_attempt_ms))
                    FILTER (WHERE state = 'queued' AND next_attempt_ms <= {SERVER_NOW})
         FROM martech_sync.webhook_events
         WHERE $1::BIGINT IS NULL OR portal_id = $1"
    );
    let row = c.query_one(&sql, &[&portal]).await?;
    Ok(QueueDepth {
        queued: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        dead: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        oldest_due_ms: row.get(2),
    })
}

/// A real write: the heartbeat row.
pub async fn heartbeat(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO martech_sync.meta (key, value) VALUES ('heartbeat', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&Millis::now().to_rfc3339()],
    )
    .await?;
    Ok(())
}
