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
    let listener = TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
    let mock = MockHubspot::serve(listener, store, config.token.clone())?;
    {
        let mut knobs = mock.knobs();
        knobs.latency = config.latency;
        knobs.rate_limit = config.rate_limit;
        knobs.lag = config.lag;
        knobs.random = RandomFaults {
            server_error: config.error_rate,
            ..RandomFaults::default()
        };
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.base_url())?;
    out.flush()?;
    drop(out);
    tracing::info!(url = %mock.base_url(), contacts = mock.store().len(object.as_str()),
        "fake HubSpot serving POST /crm/v3/objects/contacts/search");

    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    if let Some((every, count)) = config.modify {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.wait() => break,
            }
            let ids: Vec<u64> = {
                let store = mock.store();
                let all: Vec<u64> = store.records(object.as_str()).map(|r| r.id).collect();
                let mut rng = rand::rng();
                (0..count.min(all.len() as u64))
                    .map(|_| all[rng.random_range(0..all.len())])
                    .collect()
            };
            tracing::debug!(modified = ids.len(), "modified contacts");
            mock.modify(object.as_str(), ids);
        }
    } else {
        shutdown.wait().await;
    }
    mock.stop().await;
    Ok(())
}
