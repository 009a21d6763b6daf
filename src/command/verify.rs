//! `verify OBJECT [--repair]`: prove a destination's copy matches HubSpot, or say how it
//! drifted, and with `--repair` fix it through the same sink and ledger as the poll.
//! HubSpot's side comes from the list endpoint (100 ids a request, the general budget),
//! which sees what a lagging search index hides; extras are confirmed by batch read
//! before they count, so a record created while the list was read is not one.

use std::io::Write;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use serde::Serialize;

use super::pick_destination;
use crate::config::{UsageError, VerifyConfig};
use crate::hubspot::Client;
use crate::hubspot::hydrate::Unaccounted;
use crate::hubspot::list::Listing;
use crate::ledger;
use crate::progress::ProgressMode;
use crate::record::{Record, RecordId};
use crate::shutdown::Shutdown;
use crate::state::Unassigned;
use crate::state::{Location, Sync};
use crate::sync::{Engine, Loose};
use crate::timestamp::Millis;
use crate::verify::{Comparison, Drift, DriftSummary};

/// Ledger entries read at a time.
const LEDGER_PAGE: usize = 10_000;

/// Drift found and not repaired. Exits 3.
#[derive(Debug, thiserror::Error)]
#[error(
    "{object} -> {destination} does not match HubSpot: {missing} missing, {stale} stale, {extra} extra \
     (run `martech-sync verify {object}{flag} --repair` to fix it)"
)]
pub struct DriftFound {
    object: String,
    destination: String,
    flag: String,
    missing: u64,
    stale: u64,
    extra: u64,
}

/// The report `--json` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    object: String,
    destination: String,
    /// `match`, `drift` or `repaired`.
    outcome: &'static str,
    /// Changes up to this instant are checked; later ones are `pending`.
    checked_until: Option<String>,
    #[serde(flatten)]
    drift: DriftSummary,
    repaired: Option<Repaired>,
    requests: u64,
    duration_ms: u64,
}

#[derive(Clone, Copy, Default, Serialize)]
struct Repaired {
    delivered: u64,
    tombstones: u64,
}

/// Runs `verify`.
///
/// # Errors
/// [`DriftFound`] (exit 3), a destination never synced (exit 2), or the check failing.
pub async fn run(db: &Location, config: &VerifyConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let object = &config.object;
    let client = Client::new(&config.client)?;
    let (state, portal) = crate::sync::open_state(db, &client).await?;
    let Some(destination) = pick_destination(&state, object, config.target.as_ref()).await? else {
        return Err(UsageError::new(format!(
            "{object} has never been synced in {}: nothing to verify",
            state.describe()
        ))
        .into());
    };
    let _lock = if config.repair {
        Some(crate::lock::lock(db, portal, object, &destination, None).await?)
    } else {
        None
    };
    let mut sync = state.sync(object, &destination, Unassigned::Leave).await?;
    let destination = &sync.destination;
    sync.object = crate::sync::resolve(&client, &state, object).await?;

    let spec = match &config.sink {
        Some(spec) => Some(spec.clone()),
        None => destination.sink_spec(),
    };
    // A sink that keeps its own ledger (Postgres) is read for what it holds; it is
    // opened now, and used for the repair.
    let shutdown = Shutdown::on_signals()?;
    let mut own = match &spec {
        Some(spec) if spec.needs_portal() => Some(
            crate::sync::open_sink(
                spec,
                destination,
                &config.handlers,
                &shutdown,
                &client,
                &state,
            )
            .await?,
        ),
        _ => None,
    };

    let hubspot = live_records(&client, &sync.object).await?;
    let mut comparison = Comparison::new(hubspot, horizon(&sync));
    let mut after = None;
    loop {
        let page = match &mut own {
            Some(sink) => sink.ledger_page(&sync.object, after, LEDGER_PAGE).await?,
            None => None,
        };
        let page = match page {
            Some(page) => page,
            None => state.ledger_page(sync.id, after, LEDGER_PAGE).await?,
        };
        comparison.ledger(&page);
        match page.last() {
            Some(last) if page.len() == LEDGER_PAGE => after = Some(last.id),
            _ => break,
        }
    }
    let mut drift = comparison.finish();
    let merged_into = confirm_extras(&client, &sync, &mut drift).await?;

    let mut repaired = None;
    if config.repair && !drift.is_empty() {
        let spec = spec.ok_or_else(|| {
            UsageError::new(format!(
                "cannot tell the sink of {destination} from the state; give it with --sink"
            ))
        })?;
        let sink = match own {
            Some(sink) => sink,
            None => {
                crate::sync::open_sink(
                    &spec,
                    destination,
                    &config.handlers,
                    &shutdown,
                    &client,
                    &state,
                )
                .await?
            }
        };
        let mut engine = Engine::new(state.clone(), client.clone(), sink, ProgressMode::Hidden);
        repaired = Some(repair(&mut engine, &sync, &drift, &merged_into).await?);
    }
    let outcome = match (drift.is_empty(), repaired.is_some()) {
        (true, _) => "match",
        (false, true) => "repaired",
        (false, false) => "drift",
    };
    let report = Report {
        object: object.to_string(),
        destination: destination.to_string(),
        outcome,
        checked_until: horizon(&sync).map(Millis::to_rfc3339),
        drift: drift.summary(),
        repaired,
        requests: client.counters().requests.load(Ordering::Relaxed),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    print(config.json, &report)?;
    if outcome == "drift" {
        return Err(DriftFound {
            object: report.object,
            flag: destination.flag(),
            destination: report.destination,
            missing: report.drift.missing,
            stale: report.drift.stale,
            extra: report.drift.extra,
        }
        .into());
    }
    Ok(())
}

/// Up to when the destination must have every version: the recheck cursor, when the
/// trailing pass runs (a record the index showed late is its business until then, not
/// drift), else the cursor minus the default overlap (what the next run re-reads).
fn horizon(sync: &Sync) -> Option<Millis> {
    const OVERLAP: std::time::Duration = std::time::Duration::from_secs(300);
    const RECHECK_KEPT_UP: std::time::Duration = std::time::Duration::from_secs(2 * 3_600);
    let cursor = sync.cursor?;
    Some(match sync.recheck {
        // A recheck cursor far behind the cursor is one that stopped: rechecking is off.
        Some(r) if r >= cursor.minus(RECHECK_KEPT_UP) => r.min(cursor),
        _ => cursor.minus(OVERLAP),
    })
}

/// Every live record of `object`, with its modified time, from the list endpoint.
async fn live_records(
    client: &Client,
    object: &crate::object::ObjectType,
) -> Result<Vec<(RecordId, Millis)>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list_page(object, Listing::Live, after.as_deref())
            .await
            .with_context(|| format!("listing the live {object}"))?;
        for listed in page.records {
            let modified = listed.modified.with_context(|| {
                format!(
                    "HubSpot listed {object} {} without its modified time",
                    listed.id.0
                )
            })?;
            out.push((listed.id, modified));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Drops from the extras what batch read still finds (created or restored while the
/// list was read); returns the winner of each extra that was merged away.
async fn confirm_extras(
    client: &Client,
    sync: &Sync,
    drift: &mut Drift,
) -> Result<Vec<(RecordId, RecordId)>> {
    if drift.extra.is_empty() {
        return Ok(Vec::new());
    }
    let properties = ["hs_object_id".to_owned(), "hs_merged_object_ids".to_owned()];
    let properties = crate::sync::with_needed(&sync.object, properties.to_vec());
    let found = client
        .batch_read(&sync.object, &drift.extra, &properties, Unaccounted::Gone)
        .await?;
    drift.extra.retain(|id| !found.contains_key(id));
    let winners: Vec<&Record> = found.values().collect();
    Ok(ledger::merged_ids(&winners)
        .into_iter()
        .filter(|(id, _)| drift.extra.contains(id))
        .map(|(id, winner)| (id, winner.id))
        .collect())
}

/// Delivers the missing and stale records' current versions and tombstones the extras,
/// a batch read (100 records) and a delivery at a time, so a large repair moves forward
/// in steps and a failure keeps what went before.
async fn repair(
    engine: &mut Engine,
    sync: &Sync,
    drift: &Drift,
    merged_into: &[(RecordId, RecordId)],
) -> Result<Repaired> {
    let wanted: Vec<RecordId> = drift.missing.iter().chain(&drift.stale).copied().collect();
    let properties = engine.stored_properties(sync).await?;
    let mut repaired = Repaired::default();
    for chunk in wanted.chunks(100) {
        let fetched = engine
            .client
            .batch_read(&sync.object, chunk, &properties, Unaccounted::Gone)
            .await?;
        let loose = Loose {
            current: fetched.into_values().collect(),
            ..Loose::default()
        };
        repaired.delivered += engine.deliver_loose(sync, loose, None).await? as u64;
    }
    let now = Millis::now();
    for chunk in drift.extra.chunks(100) {
        let gone = chunk
            .iter()
            .map(|id| {
                let winner = merged_into.iter().find(|(m, _)| m == id).map(|(_, w)| *w);
                Record::tombstone(*id, now, winner)
            })
            .collect();
        let loose = Loose {
            gone,
            ..Loose::default()
        };
        repaired.tombstones += engine.deliver_loose(sync, loose, None).await? as u64;
    }
    tracing::info!(object = %sync.object, delivered = repaired.delivered,
        tombstones = repaired.tombstones, "repaired");
    Ok(repaired)
}

fn print(json: bool, report: &Report) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    let d = &report.drift;
    writeln!(
        out,
        "{} -> {}: {} live records in HubSpot checked against what the destination was given \
         (changes up to {})",
        report.object,
        report.destination,
        d.checked,
        report.checked_until.as_deref().unwrap_or("now")
    )?;
    let kind = |name: &str, n: u64, examples: &[String]| {
        if n == 0 || examples.is_empty() {
            format!("{name} {n}")
        } else {
            format!("{name} {n} (e.g. {})", examples.join(", "))
        }
    };
    writeln!(
        out,
        "  {}, {}, {}; {} changed later (the next runs' business)",
        kind("missing", d.missing, &d.examples.missing),
        kind("stale", d.stale, &d.examples.stale),
        kind("extra", d.extra, &d.examples.extra),
        d.pending
    )?;
    match (report.outcome, report.repaired) {
        ("match", _) => writeln!(out, "  the copy matches HubSpot")?,
        ("repaired", Some(r)) => writeln!(
            out,
            "  repaired: {} records delivered, {} tombstones",
            r.delivered, r.tombstones
        )?,
        _ => {}
    }
    writeln!(
        out,
        "  {} requests, {} ms",
        report.requests, report.duration_ms
    )?;
    Ok(())
}
