//! `windows`, `slices` and `runs`: the open window of each pass of a sync, its id
//! ranges with their checkpoints, one row per pass a run made; and what `status` reads.

use anyhow::Result;
use tokio_postgres::{Client, Transaction};

use super::{count, to_id, to_sql, uncount};
use crate::report::{Outcome, RunReport};
use crate::state::{Checkpoint, Pass, RunId, SyncId, SyncStatus};
use crate::timestamp::Millis;
use crate::window::{OpenWindow, Slice, Window};

pub async fn open_window(c: &Client, sync: SyncId, pass: Pass) -> Result<Option<OpenWindow>> {
    Ok(open_with_pages(c, sync, pass).await?.map(|(open, _)| open))
}

/// The open window of `pass` with the pages checkpointed in it so far.
async fn open_with_pages(
    c: &Client,
    sync: SyncId,
    pass: Pass,
) -> Result<Option<(OpenWindow, u64)>> {
    let Some(row) = c
        .query_opt(
            "SELECT lo_ms, hi_ms, refresh, seen, total, pages FROM martech_sync.windows
             WHERE sync = $1 AND pass = $2",
            &[&sync.0, &pass.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let slices = c
        .query(
            "SELECT slice, after_id, upto_id, last_id, done FROM martech_sync.slices
             WHERE sync = $1 AND pass = $2 ORDER BY slice",
            &[&sync.0, &pass.as_str()],
        )
        .await?
        .iter()
        .map(|r| Slice {
            index: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
            after: r.get::<_, Option<i64>>(1).map(to_id),
            upto: r.get::<_, Option<i64>>(2).map(to_id),
            last_id: r.get::<_, Option<i64>>(3).map(to_id),
            done: r.get(4),
        })
        .collect();
    let open = OpenWindow {
        window: Window {
            lo: Millis(row.get(0)),
            hi: Millis(row.get(1)),
        },
        slices,
        refresh: row.get(2),
        seen: uncount(row.get(3)),
        total: row.get::<_, Option<i64>>(4).map(uncount),
    };
    Ok(Some((open, uncount(row.get(5)))))
}

pub async fn start_run(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    report: &RunReport,
) -> Result<RunId> {
    tx.execute(
        "UPDATE martech_sync.runs SET outcome = 'interrupted' WHERE sync = $1 AND outcome = 'running'",
        &[&sync.0],
    )
    .await?;
    if !report.resumed {
        tx.execute(
            "INSERT INTO martech_sync.windows (sync, pass, lo_ms, hi_ms, pages, opened_ms, refresh)
             VALUES ($1, $2, $3, $4, 0, $5, $6)
             ON CONFLICT (sync, pass) DO UPDATE SET lo_ms = excluded.lo_ms, hi_ms = excluded.hi_ms,
                 pages = 0, opened_ms = excluded.opened_ms, refresh = excluded.refresh, seen = 0,
                 total = NULL",
            &[
                &sync.0,
                &pass.as_str(),
                &report.window.lo_ms,
                &report.window.hi_ms,
                &Millis::now().0,
                &report.refresh,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM martech_sync.slices WHERE sync = $1 AND pass = $2",
            &[&sync.0, &pass.as_str()],
        )
        .await?;
        insert_slices(tx, sync, pass, &[Slice::WHOLE]).await?;
    }
    // The report as it starts is the summary until the run finishes, so that `status`
    // reads one shape; the outcome column says when a later run found it interrupted.
    let row = tx
        .query_one(
            "INSERT INTO martech_sync.runs (sync, pass, object, outcome, started_at, lo_ms, hi_ms,
                                            resumed, summary)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8) RETURNING id",
            &[
                &sync.0,
                &pass.as_str(),
                &report.object,
                &report.started_at,
                &report.window.lo_ms,
                &report.window.hi_ms,
                &report.resumed,
                &serde_json::to_string(report)?,
            ],
        )
        .await?;
    Ok(RunId(row.get(0)))
}

pub async fn split(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    whole: &Slice,
    parts: &[Slice],
) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.slices SET upto_id = last_id, done = TRUE
         WHERE sync = $1 AND pass = $2 AND slice = $3",
        &[&sync.0, &pass.as_str(), &slice_index(whole.index)],
    )
    .await?;
    insert_slices(tx, sync, pass, parts).await
}

pub async fn checkpoint(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    checkpoint: Checkpoint,
) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.slices SET last_id = COALESCE($4, last_id), done = $5
         WHERE sync = $1 AND pass = $2 AND slice = $3",
        &[
            &sync.0,
            &pass.as_str(),
            &slice_index(checkpoint.slice),
            &checkpoint.last_id.map(to_sql),
            &checkpoint.done,
        ],
    )
    .await?;
    tx.execute(
        "UPDATE martech_sync.windows
         SET pages = pages + 1, seen = seen + $3, total = COALESCE(total, $4)
         WHERE sync = $1 AND pass = $2",
        &[
            &sync.0,
            &pass.as_str(),
            &count(checkpoint.records),
            &checkpoint.total.map(count),
        ],
    )
    .await?;
    Ok(())
}

pub async fn commit(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    to: Option<Millis>,
    run: RunId,
    report: &RunReport,
) -> Result<()> {
    // The last line of defence for the guarantee: never move a cursor past a slice that
    // is not done.
    let row = tx
        .query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT done) FROM martech_sync.slices
             WHERE sync = $1 AND pass = $2",
            &[&sync.0, &pass.as_str()],
        )
        .await?;
    let (slices, open): (i64, i64) = (row.get(0), row.get(1));
    crate::state::all_slices_done(pass, &report.object, slices, open)?;
    let column = pass.cursor_column();
    if let (Some(column), Some(to)) = (column, to) {
        tx.execute(
            &format!("UPDATE martech_sync.syncs SET {column} = $2 WHERE id = $1"),
            &[&sync.0, &to.0],
        )
        .await?;
    }
    close(tx, sync, pass).await?;
    finish_run(tx, run, report).await
}

pub async fn close(tx: &Transaction<'_>, sync: SyncId, pass: Pass) -> Result<()> {
    for table in ["windows", "slices"] {
        tx.execute(
            &format!("DELETE FROM martech_sync.{table} WHERE sync = $1 AND pass = $2"),
            &[&sync.0, &pass.as_str()],
        )
        .await?;
    }
    Ok(())
}

pub async fn finish_run(tx: &Transaction<'_>, run: RunId, report: &RunReport) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.runs SET outcome = $2, ended_at = $3, duration_ms = $4, pages = $5,
                seen = $6, delivered = $7, skipped = $8, requests = $9, retries = $10, error = $11,
                rate_limited = $12, summary = $13
         WHERE id = $1",
        &[
            &run.0,
            &report.outcome.as_str(),
            &report.ended_at,
            &report.duration_ms,
            &count(report.pages),
            &count(report.seen),
            &count(report.delivered),
            &count(report.skipped),
            &count(report.requests),
            &count(report.retries),
            &report.error,
            &count(report.rate_limited),
            &serde_json::to_string(report)?,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_slices(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    slices: &[Slice],
) -> Result<()> {
    let stmt = tx
        .prepare(
            "INSERT INTO martech_sync.slices (sync, pass, slice, after_id, upto_id, last_id, done)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    for s in slices {
        tx.execute(
            &stmt,
            &[
                &sync.0,
                &pass.as_str(),
                &slice_index(s.index),
                &s.after.map(to_sql),
                &s.upto.map(to_sql),
                &s.last_id.map(to_sql),
                &s.done,
            ],
        )
        .await?;
    }
    Ok(())
}

fn slice_index(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// Where every sync of `portal` (of every portal for `None`) stands.
pub async fn status(c: &Client, portal: Option<i64>) -> Result<Vec<SyncStatus>> {
    let syncs = super::syncs::all(c, portal, None).await?;
    let mut out = Vec::with_capacity(syncs.len());
    for sync in syncs {
        let mut open = None;
        for pass in [Pass::Main, Pass::Side, Pass::Recheck] {
            if let Some((window, pages)) = open_with_pages(c, sync.id, pass).await? {
                open = Some((pass, window, pages));
                break;
            }
        }
        let last_run = c
            .query_opt(
                "SELECT outcome, summary FROM martech_sync.runs
                 WHERE sync = $1 AND pass != 'recheck' ORDER BY id DESC LIMIT 1",
                &[&sync.id.0],
            )
            .await?
            .and_then(|r| {
                let summary: Option<String> = r.get(1);
                let mut report: RunReport = serde_json::from_str(&summary?).ok()?;
                report.outcome = Outcome::parse(r.get(0));
                Some(report)
            });
        out.push(crate::state::sync_status(&sync, open, last_run));
    }
    Ok(out)
}
