//! `windows`, `slices` and `runs`: the open window of each pass of a sync, its id
//! ranges with their checkpoints, and one row per pass a run made.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{to_id, to_sql};
use crate::report::RunReport;
use crate::state::{Checkpoint, Pass, RunId, SyncId};
use crate::timestamp::Millis;
use crate::window::{OpenWindow, Slice, Window};

pub fn open_window(conn: &Connection, sync: SyncId, pass: Pass) -> Result<Option<OpenWindow>> {
    let window = conn
        .query_row(
            "SELECT lo_ms, hi_ms, refresh, seen, total FROM windows WHERE sync = ?1 AND pass = ?2",
            params![sync.0, pass.as_str()],
            |r| {
                Ok((
                    Window {
                        lo: Millis(r.get(0)?),
                        hi: Millis(r.get(1)?),
                    },
                    r.get::<_, bool>(2)?,
                    r.get::<_, u64>(3)?,
                    r.get::<_, Option<u64>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((window, refresh, seen, total)) = window else {
        return Ok(None);
    };
    Ok(Some(OpenWindow {
        window,
        slices: slices(conn, sync, pass)?,
        refresh,
        seen,
        total,
    }))
}

/// The pages checkpointed so far in the open window of `pass`.
pub fn pages(conn: &Connection, sync: SyncId, pass: Pass) -> Result<Option<u64>> {
    Ok(conn
        .query_row(
            "SELECT pages FROM windows WHERE sync = ?1 AND pass = ?2",
            params![sync.0, pass.as_str()],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn slices(conn: &Connection, sync: SyncId, pass: Pass) -> Result<Vec<Slice>> {
    let mut stmt = conn.prepare_cached(
        "SELECT slice, after_id, upto_id, last_id, done FROM slices
         WHERE sync = ?1 AND pass = ?2 ORDER BY slice",
    )?;
    let id = |v: Option<i64>| v.map(to_id);
    let rows = stmt.query_map(params![sync.0, pass.as_str()], |r| {
        Ok(Slice {
            index: r.get(0)?,
            after: id(r.get(1)?),
            upto: id(r.get(2)?),
            last_id: id(r.get(3)?),
            done: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn start_run(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    report: &RunReport,
) -> Result<RunId> {
    tx.execute(
        "UPDATE runs SET outcome = 'interrupted' WHERE sync = ?1 AND outcome = 'running'",
        [sync.0],
    )?;
    if !report.resumed {
        tx.execute(
            "INSERT OR REPLACE INTO windows (sync, pass, lo_ms, hi_ms, pages, opened_ms, refresh)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
            params![
                sync.0,
                pass.as_str(),
                report.window.lo_ms,
                report.window.hi_ms,
                Millis::now().0,
                report.refresh
            ],
        )?;
        tx.execute(
            "DELETE FROM slices WHERE sync = ?1 AND pass = ?2",
            params![sync.0, pass.as_str()],
        )?;
        insert_slices(tx, sync, pass, &[Slice::WHOLE])?;
    }
    tx.execute(
        "INSERT INTO runs (object, sync, pass, outcome, started_at, lo_ms, hi_ms, resumed, pages,
                           seen, delivered, skipped, requests, retries)
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, 0, 0, 0, 0, 0, 0)",
        params![
            report.object,
            sync.0,
            pass.as_str(),
            report.started_at,
            report.window.lo_ms,
            report.window.hi_ms,
            report.resumed
        ],
    )?;
    Ok(RunId(tx.last_insert_rowid()))
}

pub fn split(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    whole: &Slice,
    parts: &[Slice],
) -> Result<()> {
    tx.execute(
        "UPDATE slices SET upto_id = last_id, done = 1 WHERE sync = ?1 AND pass = ?2 AND slice = ?3",
        params![sync.0, pass.as_str(), whole.index],
    )?;
    insert_slices(tx, sync, pass, parts)
}

pub fn checkpoint(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    checkpoint: Checkpoint,
) -> Result<()> {
    tx.execute(
        "UPDATE slices SET last_id = COALESCE(?4, last_id), done = ?5
         WHERE sync = ?1 AND pass = ?2 AND slice = ?3",
        params![
            sync.0,
            pass.as_str(),
            checkpoint.slice,
            checkpoint.last_id.map(to_sql),
            checkpoint.done
        ],
    )?;
    tx.execute(
        "UPDATE windows SET pages = pages + 1, seen = seen + ?3, total = COALESCE(total, ?4)
         WHERE sync = ?1 AND pass = ?2",
        params![sync.0, pass.as_str(), checkpoint.records, checkpoint.total],
    )?;
    Ok(())
}

pub fn commit(
    tx: &Transaction<'_>,
    sync: SyncId,
    pass: Pass,
    to: Option<Millis>,
    run: RunId,
    report: &RunReport,
) -> Result<()> {
    // The last line of defence for the guarantee: never move a cursor past a slice that
    // is not done.
    let (slices, open): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE done = 0) FROM slices WHERE sync = ?1 AND pass = ?2",
        params![sync.0, pass.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    crate::state::all_slices_done(pass, &report.object, slices, open)?;
    let column = pass.cursor_column();
    if let (Some(column), Some(to)) = (column, to) {
        tx.execute(
            &format!("UPDATE syncs SET {column} = ?2 WHERE id = ?1"),
            params![sync.0, to.0],
        )?;
    }
    close(tx, sync, pass)?;
    finish_run(tx, run, report)
}

pub fn close(tx: &Transaction<'_>, sync: SyncId, pass: Pass) -> Result<()> {
    for table in ["windows", "slices"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE sync = ?1 AND pass = ?2"),
            params![sync.0, pass.as_str()],
        )?;
    }
    Ok(())
}

pub fn finish_run(tx: &Transaction<'_>, run: RunId, report: &RunReport) -> Result<()> {
    tx.execute(
        "UPDATE runs SET outcome = ?2, ended_at = ?3, duration_ms = ?4, pages = ?5, seen = ?6,
                         delivered = ?7, skipped = ?8, requests = ?9, retries = ?10, error = ?11,
                         rate_limited = ?12, summary = ?13
         WHERE id = ?1",
        params![
            run.0,
            report.outcome.as_str(),
            report.ended_at,
            report.duration_ms,
            report.pages,
            report.seen,
            report.delivered,
            report.skipped,
            report.requests,
            report.retries,
            report.error,
            report.rate_limited,
            serde_json::to_string(report)?
        ],
    )?;
    Ok(())
}

fn insert_slices(tx: &Transaction<'_>, sync: SyncId, pass: Pass, slices: &[Slice]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO slices (sync, pass, slice, after_id, upto_id, last_id, done)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for s in slices {
        stmt.execute(params![
            sync.0,
            pass.as_str(),
            s.index,
            s.after.map(to_sql),
            s.upto.map(to_sql),
            s.last_id.map(to_sql),
            s.done
        ])?;
    }
    Ok(())
}
