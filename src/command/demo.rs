//! `demo`: the whole job on an embedded default, no account needed. Starts the fake
//! HubSpot on loopback with the fixture contacts plus synthetic ones, polls them into a
//! temporary state file through the same code path as `poll`, changes a few records,
//! polls again, and prints what happened at each step.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{DemoConfig, PollConfig};
use crate::destination::Destination;
use crate::mock::{MockHubspot, Store, seed};
use crate::object::ObjectType;
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
    let fixture = seed::parse_records(&object, seed::CONTACTS_FIXTURE)?;
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
    let db = dir.path().join("demo.db");

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Started a local fake HubSpot at {} with {} contacts.",
        mock.base_url(),
        mock.store().len(object.as_str())
    )?;
    writeln!(
        out,
        "State file: {} (removed when the demo ends)\n",
        db.display()
    )?;

    let mut client = config.client.clone();
    client.base_url = mock.base_url();
    client.token = crate::token::Token::new(token);
    let poll = PollConfig {
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
            "2. {} contacts changed in HubSpot, poll again",
            changed.len()
        ),
        &second,
    )?;
    let third = super::poll::execute(&db, &poll).await?.into_result()?;
    step(&mut out, "3. Nothing changed, poll again", &third)?;

    let state = crate::state::open(&db)?;
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
        "\nAgainst your own account: HUBSPOT_TOKEN=pat-... martech-sync poll contacts"
    )?;
    mock.stop().await;
    Ok(())
}

fn step(out: &mut impl Write, title: &str, r: &RunReport) -> Result<()> {
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "   window {} .. {}\n   {} pages, {} requests, {} records seen, {} delivered, {} skipped as already delivered, {} ms\n",
        r.window.lo,
        r.window.hi,
        r.pages,
        r.requests,
        r.seen,
        r.delivered,
        r.skipped,
        r.duration_ms.unwrap_or(0)
    )?;
    Ok(())
}
