//! `mock-hubspot`: the fake HubSpot the tests use, as a command, so users can develop
//! their `exec:` handler and try their crontab without an account (like stripe-mock).
//! Prints the base URL on stdout, logs to stderr, serves until SIGINT/SIGTERM.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;
use tokio::net::TcpListener;

use crate::config::MockConfig;
use crate::mock::{MockHubspot, RandomFaults, Store, seed};
use crate::object::ObjectType;
use crate::shutdown::Shutdown;
use crate::timestamp::Millis;

/// The next tick of `ticker`, or never.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Serves the fake until a signal.
///
/// # Errors
/// When the seed file is unreadable or the port cannot be bound.
pub async fn run(config: &MockConfig) -> Result<()> {
    let object: ObjectType = "contacts".parse().expect("contacts is an object");
    let mut store = Store::default();
    if let Some(path) = &config.seed {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading seed file {}", path.display()))?;
        let records = seed::parse_records(&object, &text)
            .with_context(|| format!("seed file {}", path.display()))?;
        store.extend(object.as_str(), records);
    }
    let now = Millis::now();
    let n = config.records;
    // Generated contacts, one every 1.3 s up to now, with ids after any seed's.
    let first = store
        .records(object.as_str())
        .map(|r| r.id)
        .max()
        .unwrap_or(0)
        + 1;
    store.extend(
        object.as_str(),
        seed::synthetic(first..first + n, |id| {
            now.minus(Duration::from_millis((first + n - id) * 1_297))
        }),
    );
    // Every other object the tool syncs, with data, and the custom object `pets`.
    let others = crate::object::STANDARD
        .iter()
        .filter(|s| s.name != "contacts")
        .map(|s| s.name)
        .chain([crate::mock::knobs::PETS]);
    for name in others {
        let other: ObjectType = name.parse().expect("a standard object or a type id");
        store.extend(
            other.as_str(),
            seed::synthetic_for(&other, 1..=n, |id| {
                now.minus(Duration::from_millis((1 + n - id) * 1_297))
            }),
        );
    }
    let listener = TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
    let mock = MockHubspot::serve(listener, store, config.token.clone())?;
    {
        let mut knobs = mock.knobs();
        knobs.latency = config.latency;
        knobs.portal_id = config.portal_id;
        knobs.rate_limit = config.rate_limit;
        knobs.lag = config.lag;
        knobs.unreadable.clone_from(&config.unreadable);
        knobs.random = RandomFaults {
            server_error: config.error_rate,
            ..RandomFaults::default()
        };
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.base_url())?;
    out.flush()?;
    drop(out);
    tracing::info!(url = %mock.base_url(), records_per_object = n,
        "fake HubSpot serving every standard object and the custom object `pets`");

    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    // What users do in HubSpot meanwhile: modify, delete, merge contacts.
    let ticker = |every: Option<Duration>| {
        every.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        })
    };
    let mut modify = ticker(config.modify.map(|(every, _)| every));
    let mut delete = ticker(config.delete_every);
    let mut merge = ticker(config.merge_every);
    let count = config.modify.map_or(0, |(_, n)| n);
    let live = |n: u64| -> Vec<u64> {
        let store = mock.store();
        let all: Vec<u64> = store.live(object.as_str()).map(|r| r.id).collect();
        let mut rng = rand::rng();
        (0..n.min(all.len() as u64))
            .map(|_| all[rng.random_range(0..all.len())])
            .collect()
    };
    loop {
        tokio::select! {
            _ = tick(&mut modify) => {
                let ids = live(count);
                tracing::debug!(modified = ids.len(), "modified contacts");
                mock.modify(object.as_str(), ids);
            }
            _ = tick(&mut delete) => {
                let ids = live(1);
                tracing::info!(?ids, "deleted a contact");
                mock.archive(object.as_str(), ids);
            }
            _ = tick(&mut merge) => {
                let ids = live(2);
                if let [a, b] = ids[..] && a != b {
                    let new = mock.merge(object.as_str(), a, &[b]);
                    tracing::info!(a, b, ?new, "merged two contacts");
                }
            }
            () = shutdown.wait() => break,
        }
    }
    mock.stop().await;
    Ok(())
}
