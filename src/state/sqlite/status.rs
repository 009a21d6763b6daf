//! What `status` reads: every sync with its cursors, its open window and its last run.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension};

use super::{syncs, windows};
use crate::report::{Outcome, RunReport};
use crate::state::{Pass, SyncStatus};
use crate::timestamp::Millis;
use crate::window::Window;

pub fn all(conn: &Connection) -> Result<Vec<SyncStatus>> {
    syncs::all(conn, None)?
        .into_iter()
        .map(|sync| {
            let mut open = None;
            for pass in [Pass::Main, Pass::Side, Pass::Recheck] {
                if let Some(window) = windows::open_window(conn, sync.id, pass)? {
                    let pages = windows::pages(conn, sync.id, pass)?.unwrap_or(0);
                    open = Some((pass, window, pages));
                    break;
                }
            }
            let last_run = last_run(conn, sync.id.0, sync.destination.key())?;
            Ok(crate::state::sync_status(&sync, open, last_run))
        })
        .collect()
}

fn last_run(conn: &Connection, sync: i64, destination: &str) -> Result<Option<RunReport>> {
    Ok(conn
        .query_row(
            "SELECT object, outcome, started_at, ended_at, duration_ms, lo_ms, hi_ms, resumed,
                    pages, seen, delivered, skipped, requests, retries, error, rate_limited, summary
             FROM runs WHERE sync = ?1 AND pass != 'recheck' ORDER BY id DESC LIMIT 1",
            [sync],
            |r| {
                // The whole summary of the run, recheck and sweep included, when stored.
                let summary: Option<String> = r.get(16)?;
                if let Some(report) =
                    summary.and_then(|s| serde_json::from_str::<RunReport>(&s).ok())
                {
                    return Ok(report);
                }
                let window = Window {
                    lo: Millis(r.get(5)?),
                    hi: Millis(r.get(6)?),
                };
                let mut report = RunReport::blank(r.get::<_, String>(0)?, destination, window);
                report.outcome = Outcome::parse(&r.get::<_, String>(1)?);
                report.started_at = r.get(2)?;
                report.ended_at = r.get(3)?;
                report.duration_ms = r.get(4)?;
                report.resumed = r.get(7)?;
                report.pages = r.get(8)?;
                report.seen = r.get(9)?;
                report.delivered = r.get(10)?;
                report.skipped = r.get(11)?;
                report.requests = r.get(12)?;
                report.retries = r.get(13)?;
                report.error = r.get(14)?;
                report.rate_limited = r.get(15)?;
                Ok(report)
            },
        )
        .optional()?)
}
