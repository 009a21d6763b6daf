//! `demo`: the whole job on an embedded default, no account needed. Starts the fake
//! HubSpot on loopback with the fixture contacts plus synthetic ones, polls them into a
//! temporary state file through the same code path as `poll`, changes a few records,
//! deletes one and merges two, polls again after each, proves the copy matches with
//! `verify`, and prints what happened at each step.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{DemoConfig, PollConfig, VerifyConfig};
use crate::destination::Destination;
use crate::mock::{MockHubspot, Store, seed};
use crate::object::ObjectType;
use crate::progress::plural;
use crate::report::RunReport;
use crate::sink::SinkSpec;
use crate::state::Pass;
use crate::sync::{PollJob, Wanted};
use crate::timestamp::Millis;
use crate::window::{Ask, Margins};

/// Runs the demo.
///
/// # Errors
/// When the fake cannot start or a poll fails.
pub async fn run(config: &DemoConfig) -> Result<()> {
    let object: ObjectType = "contacts".parse().expect("contacts is an object");
    let mut store = Store::default();
    let mut fixture = seed::parse_records(&object, seed::CONTACTS_FIXTURE)?;
    fixture.truncate(usize::try_from(config.records).unwrap_or(usize::MAX));
    let fixture_count = fixture.len() as u64;
    store.extend(object.as_str(), fixture);
    let synthetic = config.records.saturating_sub(fixture_count);
    let now = Millis::now();
    // Spread the synthetic contacts over the last 30 days, newest last.
    store.extend(
        object.as_str(),
        seed::synthetic(10_001..10_001 + synthetic, |id| {
            now.minus(Duration::from_millis((10_001 + synthetic - id) * 1_297))
        }),
    );
    let token = "demo-token";
    let mock = MockHubspot::start(store, Some(token.to_owned())).await?;
    let dir = tempfile::tempdir().context("creating a temporary directory for the demo")?;
    let db = crate::state::Location::File(dir.path().join("demo.db"));

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Started a local fake HubSpot at {} with {}.",
        mock.base_url(),
        plural(
            mock.store().len(object.as_str()) as u64,
            "contact",
            "contacts"
        )
    )?;
    writeln!(out, "State file: {} (removed when the demo ends)\n", &db)?;

    let mut client = config.client.clone();
    client.base_url = mock.base_url();
    client.token = crate::token::Token::new(token);
    let poll = PollConfig {
        objects: Vec::new(),
        all_objects: false,
        default_properties: false,
        job: PollJob {
            wanted: Wanted::Named(vec!["firstname".into(), "lastname".into(), "email".into()]),
            object: object.clone(),
            destination: Destination::named("sqlite", "sqlite"),
            pass: Pass::Main,
            ask: Ask::default(),
            // The fake has no index lag, so the demo needs no settle time.
            margins: Margins {
                overlap: Duration::from_secs(300),
                settle: Duration::ZERO,
            },
            page_size: 200,
            concurrency: 4,
            recheck: Duration::from_secs(3_600),
            deletes_every: Some(Duration::ZERO),
        },
        sink: Some(SinkSpec::Sqlite),
        handlers: crate::sink::HandlerOptions::default(),
        client,
        json: false,
        interval: None,
        progress: crate::progress::ProgressMode::Hidden,
    };

    let first = super::poll::execute(&db, &poll).await?.into_result()?;
    step(
        &mut out,
        "1. First poll (no cursor yet: all history)",
        &first,
    )?;

    let changed: Vec<u64> = mock
        .store()
        .records(object.as_str())
        .step_by(80)
        .map(|r| r.id)
        .collect();
    {
        let mut store = mock.store();
        let at = Millis::now();
        for id in &changed {
            store.touch(object.as_str(), *id, at, Duration::ZERO);
        }
    }
    let second = super::poll::execute(&db, &poll).await?.into_result()?;
    step(
        &mut out,
        &format!(
            "2. {} changed in HubSpot, poll again",
            plural(changed.len() as u64, "contact", "contacts")
        ),
        &second,
    )?;

    // One contact deleted, two merged into a new record, as a person in HubSpot would.
    let ids: Vec<u64> = mock
        .store()
        .live(object.as_str())
        .map(|r| r.id)
        .take(3)
        .collect();
    let mut next = 3;
    if let [deleted, primary, other] = ids[..] {
        let merged = {
            let at = Millis::now();
            let mut store = mock.store();
            store.archive(object.as_str(), deleted, at);
            store.merge(object.as_str(), primary, &[other], at)
        };
        let third = super::poll::execute(&db, &poll).await?.into_result()?;
        step(
            &mut out,
            &format!(
                "3. Contact {deleted} deleted, {primary} and {other} merged into {} in HubSpot, \
                 poll again (tombstones: \"archived\": true, and \"mergedInto\")",
                merged.map_or_else(|| "a new one".to_owned(), |id| id.to_string())
            ),
            &third,
        )?;
        next = 4;
    }
    let quiet = super::poll::execute(&db, &poll).await?.into_result()?;
    step(
        &mut out,
        &format!("{next}. Nothing changed, poll again"),
        &quiet,
    )?;

    writeln!(
        out,
        "{}. verify: HubSpot's live contacts (read without the search index) against the copy",
        next + 1
    )?;
    out.flush()?;
    super::verify::run(
        &db,
        &VerifyConfig {
            object: object.clone(),
            sink: None,
            handlers: crate::sink::HandlerOptions::default(),
            target: None,
            repair: false,
            json: false,
            client: poll.client.clone(),
        },
    )
    .await?;
    writeln!(out)?;

    let state = crate::state::open(&db).await?;
    let status = state.status().await?;
    if let Some(s) = status.first() {
        writeln!(
            out,
            "Cursor for contacts: {}",
            s.cursor.as_deref().unwrap_or("none")
        )?;
    }
    writeln!(
        out,
        "\nThree of the records now in the state file's `records` table:"
    )?;
    for line in state.sample_records(&object, 3).await? {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "\nAgainst your own account: keep the token in a private file, then\n  \
         HUBSPOT_TOKEN_FILE=~/.hubspot-token martech-sync poll contacts"
    )?;
    mock.stop().await;
    Ok(())
}

fn step(out: &mut impl Write, title: &str, r: &RunReport) -> Result<()> {
    writeln!(out, "{title}")?;
    let tombstones = r.deletes.as_ref().map_or(0, |d| d.tombstones);
    writeln!(
        out,
        "   window {} .. {}\n   {}, {}, {} seen, {} delivered{}, {} skipped as already delivered, {} ms\n",
        r.window.lo,
        r.window.hi,
        plural(r.pages, "page", "pages"),
        plural(r.requests, "request", "requests"),
        plural(r.seen, "record", "records"),
        r.delivered,
        if tombstones > 0 {
            format!(" (+{} from the deletion sweep)", tombstones)
        } else {
            String::new()
        },
        r.skipped,
        r.duration_ms.unwrap_or(0)
    )?;
    Ok(())
}
