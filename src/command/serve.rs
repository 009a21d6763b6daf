//! `serve`: webhooks for latency, poll windows for completeness, in one process with
//! one state file, one sink and one dedupe table. The receiver only queues (so it
//! answers fast); this loop owns the engine and alternates between draining the queue
//! and, every `--interval`, a reconciliation window per polled object. SIGTERM stops
//! accepting, answers requests in flight, lets the worker finish the batch in hand and
//! exits 0; queued events wait in the state file for the next start.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::config::ServeConfig;
use crate::hubspot::error::is_auth_failure;
use crate::lock::ObjectLock;
use crate::object::ObjectType;
use crate::progress::ProgressMode;
use crate::shutdown::Shutdown;
use crate::state::State;
use crate::sync::Engine;
use crate::timestamp::Millis;
use crate::webhook::receiver::{Receiver, router};
use crate::webhook::worker;

/// Runs the receiver and the worker until a signal.
///
/// # Errors
/// A lock held, the address taken, the state file unusable, or a refused token.
pub async fn run(db: &Path, config: &ServeConfig) -> Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let _locks = config
        .polls
        .iter()
        .map(|job| ObjectLock::acquire(db, &job.object))
        .collect::<Result<Vec<_>>>()?;
    let mut engine = Engine::open(db, &config.client, &config.sink, ProgressMode::Hidden)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/webhooks/hubspot"));
    let queued = Arc::new(Notify::new());
    let receiver = Arc::new(Receiver {
        state: Mutex::new(State::open(db)?),
        secret: config.secret.as_bytes().to_vec(),
        public_url: public_url.clone(),
        accept: config.accept,
        queued: Arc::clone(&queued),
    });
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router(receiver))
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await
        })
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%public_url, polls = config.polls.len(), "receiving webhooks");

    let mut reconcile = tokio::time::interval(config.interval);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let polling = !config.polls.is_empty();
    let properties = |object: &ObjectType| -> Vec<String> {
        object
            .default_properties()
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    loop {
        tokio::select! {
            () = queued.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = reconcile.tick(), if polling => {
                for job in &config.polls {
                    let finished = engine.poll(job, Millis::now(), &shutdown).await?;
                    if let Some(error) = finished.error {
                        if is_auth_failure(&error) {
                            return Err(error);
                        }
                        tracing::error!(object = %job.object, error = %format!("{error:#}"),
                            "reconciliation window failed; the next tick retries it");
                    }
                }
            }
            () = shutdown.wait() => break,
        }
        // Drain what is due, a batch at a time; a signal stops between batches.
        while !shutdown.requested() {
            // The first backoff step after a failed delivery is --retry-base (doubling).
            let pass =
                worker::drain_once(&mut engine, &properties, config.client.retry.base).await?;
            if pass.events == 0 || pass.failed == pass.events {
                break;
            }
        }
    }
    server
        .await
        .context("the webhook server task")?
        .context("serving webhooks")?;
    tracing::info!("stopped; queued events wait in the state file");
    Ok(())
}
