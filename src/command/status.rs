//! `status [OBJECT]`: where every sync (object, destination) stands, as a table or JSON.
//! Reads the state file and never creates one.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::json;

use crate::config::StatusConfig;
use crate::state::{self, QueueDepth, SyncStatus};
use crate::timestamp::Millis;

/// A cursor further ahead of the clock than this is a clock that jumped: stale.
const FUTURE_SLACK_MS: i64 = 60_000;

/// Prints the status of every sync (or one object's) in the state file `db`.
///
/// # Errors
/// When the state file cannot be read or stdout written.
pub async fn run(db: &Path, config: &StatusConfig) -> Result<()> {
    let (objects, webhooks): (Vec<SyncStatus>, QueueDepth) = if db.exists() {
        let state = state::open_read_only(db)?;
        let objects = state
            .status()
            .await?
            .into_iter()
            .filter(|s| {
                config
                    .object
                    .as_ref()
                    .is_none_or(|o| o.as_str() == s.object)
            })
            .collect();
        (objects, state.queue_depth().await?)
    } else {
        (Vec::new(), QueueDepth::default())
    };
    let now = Millis::now();
    print(db, config, &objects, webhooks, now)?;
    if let Some(limit) = config.stale_after {
        let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        let name = |o: &SyncStatus| format!("{} -> {}", o.object, o.destination);
        let never: Vec<String> = objects
            .iter()
            .filter(|o| o.cursor_ms.is_none())
            .map(name)
            .collect();
        let old: Vec<String> = objects
            .iter()
            .filter(|o| o.cursor_ms.is_some_and(|c| now.0 - c > limit_ms))
            .map(|o| {
                format!(
                    "{} ({} old)",
                    name(o),
                    age(now.0 - o.cursor_ms.unwrap_or(0))
                )
            })
            .collect();
        let future: Vec<String> = objects
            .iter()
            .filter(|o| o.cursor_ms.is_some_and(|c| c - now.0 > FUTURE_SLACK_MS))
            .map(|o| {
                format!(
                    "{} (cursor {} in the future: did the clock jump?)",
                    name(o),
                    age(o.cursor_ms.unwrap_or(0) - now.0)
                )
            })
            .collect();
        let wanted = config.object.as_ref().map_or("any object", |o| o.as_str());
        if objects.is_empty() {
            bail!("stale: no cursor for {wanted} in {}", db.display());
        }
        if !never.is_empty() || !old.is_empty() || !future.is_empty() {
            let mut parts = old;
            parts.extend(future);
            parts.extend(never.into_iter().map(|o| format!("{o} (never committed)")));
            bail!(
                "stale (--stale-after {}): {}",
                humantime::format_duration(limit),
                parts.join(", ")
            );
        }
    }
    Ok(())
}

fn print(
    db: &Path,
    config: &StatusConfig,
    objects: &[SyncStatus],
    webhooks: QueueDepth,
    now: Millis,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if config.json {
        let doc = json!({ "stateFile": db.display().to_string(), "objects": objects, "webhooks": webhooks });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    if objects.is_empty() {
        writeln!(out, "No syncs yet in {}.", db.display())?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<24} {:<25} {:>9}  {:<34} LAST RUN",
        "OBJECT", "DESTINATION", "CURSOR", "AGE", "OPEN WINDOW"
    )?;
    for s in objects {
        let (cursor, age) = match s.cursor_ms {
            Some(ms) => (local(Millis(ms)), age(now.0 - ms)),
            None => ("never committed".to_owned(), "-".to_owned()),
        };
        let open = s.open_window.as_ref().map_or_else(
            || "-".to_owned(),
            |w| match &w.last_id {
                Some(id) => format!("{} pages, after id {id}", w.pages),
                None => format!(
                    "{} pages, {}/{} slices done",
                    w.pages,
                    w.slices.iter().filter(|s| s.done).count(),
                    w.slices.len()
                ),
            },
        );
        let last = s.last_run.as_ref().map_or_else(
            || "-".to_owned(),
            |r| {
                let mut line = format!(
                    "{} {} ({} delivered, {} pages, {})",
                    r.outcome.as_str(),
                    r.ended_at
                        .as_deref()
                        .or(Some(&r.started_at))
                        .and_then(Millis::parse_hubspot)
                        .map_or_else(|| "-".to_owned(), local),
                    r.delivered,
                    r.pages,
                    r.duration_ms.map_or_else(
                        || "running".to_owned(),
                        |ms| format!("{:.1} s", ms as f64 / 1000.0)
                    )
                );
                if let Some(e) = &r.error {
                    line.push_str(": ");
                    line.push_str(e);
                }
                line
            },
        );
        writeln!(
            out,
            "{:<12} {:<24} {cursor:<25} {age:>9}  {open:<34} {last}",
            s.object, s.destination
        )?;
    }
    if webhooks.queued + webhooks.dead > 0 {
        writeln!(
            out,
            "\nWebhook events: {} queued, {} dead (see `martech-sync dead-letters list`)",
            webhooks.queued, webhooks.dead
        )?;
    }
    Ok(())
}

/// An instant in the machine's local time, as people read the table.
fn local(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t.0).map_or_else(
        || t.to_string(),
        |utc| {
            utc.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%:z")
                .to_string()
        },
    )
}

/// A short age: `42s`, `5m`, `3h`, `2d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}
