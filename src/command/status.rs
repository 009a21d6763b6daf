//! `status [OBJECT]`: where every sync (object, destination) stands, as a table or JSON.
//! Reads the state file and never creates one.

use std::io::{IsTerminal, Write};

use anyhow::{Result, bail};
use serde_json::json;

use crate::config::StatusConfig;
use crate::progress::plural;
use crate::report::Outcome;
use crate::state::{Location, OpenWindowStatus, QueueDepth, SyncStatus};
use crate::timestamp::Millis;

/// A cursor further ahead of the clock than this is a clock that jumped: stale.
const FUTURE_SLACK_MS: i64 = 60_000;

/// Prints the status of every sync (or one object's) in the state file `db`.
///
/// # Errors
/// When the state file cannot be read or stdout written.
pub async fn run(db: &Location, portal: Option<u64>, config: &StatusConfig) -> Result<()> {
    let now = Millis::now();
    let today = now.to_rfc3339()[..10].to_owned();
    let (objects, webhooks, requests): (Vec<SyncStatus>, QueueDepth, u64) =
        if let Some(state) = crate::state::open_existing(db).await? {
            let state = super::narrow(state, db, portal, super::Portals::All)
                .await?
                .0;
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
            (
                objects,
                state.queue_depth().await?,
                state.requests_on(&today).await?,
            )
        } else {
            (Vec::new(), QueueDepth::default(), 0)
        };
    print(db, config, &objects, (webhooks, requests), now)?;
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
                    ago(now.0 - o.cursor_ms.unwrap_or(0))
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
                    ago(o.cursor_ms.unwrap_or(0) - now.0)
                )
            })
            .collect();
        let wanted = config.object.as_ref().map_or("any object", |o| o.as_str());
        if objects.is_empty() {
            bail!("stale: no cursor for {wanted} in {db}");
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
    db: &Location,
    config: &StatusConfig,
    objects: &[SyncStatus],
    (webhooks, requests): (QueueDepth, u64),
    now: Millis,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if config.json {
        let doc = json!({
            "stateFile": db.to_string(),
            "objects": objects,
            "webhooks": webhooks,
            "requestsToday": requests,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    match (&config.object, objects.is_empty()) {
        (Some(object), true) => {
            writeln!(out, "{object} has never been synced in {db}.")?;
            return Ok(());
        }
        (None, true) => {
            writeln!(out, "No syncs yet in {db}.")?;
            return Ok(());
        }
        (Some(_), false) => {
            for (i, s) in objects.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                detail(&mut out, s, now)?;
            }
        }
        (None, false) => {
            // A Postgres state keeps many portals: one table each.
            let fit = std::io::stdout().is_terminal();
            let mut portals: Vec<Option<u64>> = objects.iter().map(|o| o.portal).collect();
            portals.dedup();
            if let [None] = portals.as_slice() {
                table(&mut out, objects, now, fit)?;
            }
            for (i, portal) in portals.iter().enumerate().filter(|(_, p)| p.is_some()) {
                if i > 0 {
                    writeln!(out)?;
                }
                writeln!(out, "Portal {}", portal.unwrap_or_default())?;
                let group: Vec<SyncStatus> = objects
                    .iter()
                    .filter(|o| o.portal == *portal)
                    .cloned()
                    .collect();
                table(&mut out, &group, now, fit)?;
            }
        }
    }
    let mut portals: Vec<u64> = objects.iter().filter_map(|o| o.portal).collect();
    portals.sort_unstable();
    portals.dedup();
    let all = if portals.len() > 1 {
        ", all portals"
    } else {
        ""
    };
    if requests > 0 {
        writeln!(out, "\nHubSpot requests today (UTC){all}: {requests}")?;
    }
    if webhooks.queued + webhooks.dead > 0 {
        writeln!(
            out,
            "\nWebhook events{all}: {} queued, {} dead (see `martech-sync dead-letters list`)",
            webhooks.queued, webhooks.dead
        )?;
    }
    Ok(())
}

/// The width the table keeps within.
pub const WIDTH: usize = 100;

/// One line per (object, destination). On a terminal (`fit`) within [`WIDTH`] columns,
/// long values cut (a destination keeps its end, where file names differ); elsewhere
/// whole, each column as wide as its longest value.
fn table(out: &mut impl Write, objects: &[SyncStatus], now: Millis, fit: bool) -> Result<()> {
    const CURSOR: usize = 20;
    const AGE: usize = 5;
    let longest = |f: fn(&SyncStatus) -> usize, header: &str| {
        objects.iter().map(f).max().unwrap_or(0).max(header.len())
    };
    let mut object = longest(|s| s.object.chars().count(), "OBJECT");
    let mut destination = longest(|s| s.destination.chars().count(), "DESTINATION");
    if fit {
        object = object.min(14);
        destination = destination
            .min(WIDTH - object - CURSOR - AGE - 5 - 30)
            .max(11);
    }
    let last = WIDTH.saturating_sub(object + destination + CURSOR + AGE + 5);
    writeln!(
        out,
        "{:<object$} {:<destination$} {:<CURSOR$} {:>AGE$}  LAST RUN",
        "OBJECT", "DESTINATION", "CURSOR", "AGE"
    )?;
    for s in objects {
        let (cursor, age) = match s.cursor_ms {
            Some(ms) => (instant(Millis(ms)), ago(now.0 - ms)),
            None => ("never committed".to_owned(), "-".to_owned()),
        };
        let run = last_run(s, now);
        writeln!(
            out,
            "{:<object$} {:<destination$} {cursor:<CURSOR$} {age:>AGE$}  {}",
            cut(&s.object, object),
            cut_middle(&s.destination, destination),
            if fit { cut(&run, last) } else { run },
        )?;
    }
    Ok(())
}

/// Everything about one sync, errors whole.
fn detail(out: &mut impl Write, s: &SyncStatus, now: Millis) -> Result<()> {
    let when = |ms: Option<i64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{} ({} ago)", instant(Millis(ms)), ago(now.0 - ms)),
        )
    };
    writeln!(out, "{} -> {}", s.object, s.destination)?;
    if let Some(portal) = s.portal {
        writeln!(out, "  portal          {portal}")?;
    }
    if s.sink != s.destination && !s.sink.is_empty() {
        writeln!(out, "  sink            {}", s.sink)?;
    }
    let cursor = match s.cursor_ms {
        Some(_) => when(s.cursor_ms),
        None => "never committed".to_owned(),
    };
    writeln!(out, "  cursor          {cursor}")?;
    writeln!(out, "  recheck cursor  {}", when(s.recheck_cursor_ms))?;
    let swept = s
        .deletes_checked_at
        .as_deref()
        .and_then(Millis::parse_hubspot)
        .map(|t| t.0);
    let swept = match swept {
        Some(_) => format!("swept {}", when(swept)),
        None => "never swept".to_owned(),
    };
    writeln!(out, "  deletions       {swept}")?;
    if let Some(w) = &s.open_window {
        writeln!(out, "  open window     {}", open_window(w))?;
    }
    if let Some(r) = &s.last_run {
        let ended = r
            .ended_at
            .as_deref()
            .and_then(Millis::parse_hubspot)
            .map_or_else(|| "running".to_owned(), |t| when(Some(t.0)));
        writeln!(
            out,
            "  last run        {} {ended}: {} delivered, {} skipped, {}",
            r.outcome.as_str(),
            r.delivered,
            r.skipped,
            plural(r.pages, "page", "pages")
        )?;
        writeln!(
            out,
            "                  window {} .. {}",
            instant(Millis(r.window.lo_ms)),
            instant(Millis(r.window.hi_ms)),
        )?;
        writeln!(
            out,
            "                  {}, {}, {} rate-limited",
            plural(r.requests, "request", "requests"),
            plural(r.retries, "retry", "retries"),
            r.rate_limited
        )?;
        if let Some(error) = &r.error {
            writeln!(out, "  error           {error}")?;
        }
    }
    Ok(())
}

/// The last run in a few words, live counts for one still running.
fn last_run(s: &SyncStatus, now: Millis) -> String {
    let Some(r) = &s.last_run else {
        return match &s.open_window {
            Some(w) => open_window(w),
            None => "-".to_owned(),
        };
    };
    let ended = r
        .ended_at
        .as_deref()
        .or(Some(&r.started_at))
        .and_then(Millis::parse_hubspot)
        .map_or_else(|| "-".to_owned(), |t| format!("{} ago", ago(now.0 - t.0)));
    if r.outcome == Outcome::Running {
        let counts = s
            .open_window
            .as_ref()
            .map_or_else(String::new, |w| format!(": {}", open_window(w)));
        let started = Millis::parse_hubspot(&r.started_at)
            .map_or_else(|| "-".to_owned(), |t| ago(now.0 - t.0));
        return format!("running for {started}{counts}");
    }
    let mut line = format!(
        "{} {ended}: {} delivered, {}",
        r.outcome.as_str(),
        r.delivered,
        plural(r.pages, "page", "pages")
    );
    if let Some(error) = &r.error {
        // One line: the whole error is in `status OBJECT` and `--json`.
        let first = error.lines().next().unwrap_or_default();
        line = format!("{} {ended}: {first}", r.outcome.as_str());
    } else if let Some(w) = &s.open_window {
        line.push_str(&format!("; open: {}", open_window(w)));
    }
    line
}

/// An open window's progress.
fn open_window(w: &OpenWindowStatus) -> String {
    let of = w.total.map_or_else(String::new, |t| format!(" of {t}"));
    format!(
        "{} {}, {}{of} records ({})",
        w.pass,
        plural(w.pages, "page", "pages"),
        w.seen,
        if w.refresh { "refresh" } else { "resumes" }
    )
}

/// `s` within `width` characters: its kind (`jsonl:`, `exec:`) and its end, the middle
/// cut with `…`.
fn cut_middle(s: &str, width: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width {
        return s.to_owned();
    }
    let head = s.find(':').map_or(0, |i| i + 1).min(width / 3);
    let tail = width.saturating_sub(head + 1);
    let mut kept: String = chars[..head].iter().collect();
    kept.push('…');
    kept.extend(&chars[chars.len() - tail..]);
    kept
}

/// `s` within `width` characters, cut with `…`.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut kept: String = s.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// An instant as RFC 3339, to the second.
fn instant(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t.0).map_or_else(
        || t.to_string(),
        |utc| utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// A short age: `42s`, `5m`, `3h`, `2d`.
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cuts_to_the_width_on_char_boundaries() {
        assert_eq!(cut("contacts", 10), "contacts");
        assert_eq!(cut("jsonl:/tmp/é/very/long", 8), "jsonl:/…");
        assert_eq!(cut("jsonl:/tmp/é/very/long", 8).chars().count(), 8);
    }
}
