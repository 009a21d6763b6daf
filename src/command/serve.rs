//! `serve`: webhooks for latency, poll windows for completeness, in one process with
//! one state file, one sink and one dedupe table. The receiver only queues (so it
//! answers fast); this loop owns the engine and alternates between draining the queue
//! and, every `--interval`, a reconciliation window per polled object. SIGTERM stops
//! accepting, answers requests in flight, lets the worker finish the batch in hand and
//! exits 0; queued events wait in the state file for the next start.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::config::ServeConfig;
use crate::destination::Destination;
use crate::hubspot::error::{is_auth_failure, is_daily_limit};
use crate::lock::ObjectLock;
use crate::progress::ProgressMode;
use crate::shutdown::Shutdown;
use crate::state::Sqlite;
use crate::sync::Engine;
use crate::timestamp::Millis;
use crate::webhook::receiver::{Receiver, router};
use crate::webhook::worker;

/// How long the worker drains before the loop looks at the reconciliation tick again.
const DRAIN_BUDGET: Duration = Duration::from_secs(5);
/// Done events are kept this long to recognise HubSpot's redeliveries (it retries for a
/// day), then pruned.
const KEEP_DONE: Duration = Duration::from_secs(3 * 86_400);
/// How long the worker waits after HubSpot's daily limit ran out before it tries again
/// (the limit resets at midnight in the account's time zone; retrying sooner only takes
/// from the portal's other apps).
const DAILY_PAUSE: Duration = Duration::from_secs(900);

/// Delivers due events, a batch at a time, for at most [`DRAIN_BUDGET`]; a signal stops
/// it between batches. State file errors are logged and retried on the next turn.
///
/// # Errors
/// A refused token.
async fn drain(
    engine: &mut Engine,
    destination: &Destination,
    retry: worker::Retry,
    shutdown: &Shutdown,
    paused_until: &mut Option<Instant>,
) -> Result<()> {
    if paused_until.is_some_and(|until| Instant::now() < until) {
        return Ok(());
    }
    let started = Instant::now();
    while !shutdown.requested() && started.elapsed() < DRAIN_BUDGET {
        match worker::drain_once(engine, destination, retry).await {
            Ok(pass) if pass.events == 0 || pass.failed == pass.events => break,
            Ok(_) => {}
            Err(error) if is_auth_failure(&error) => return Err(error),
            Err(error) if is_daily_limit(&error) => {
                tracing::error!(error = %format!("{error:#}"),
                    "webhook worker paused for {}: queued events wait", humantime::format_duration(DAILY_PAUSE));
                *paused_until = Some(Instant::now() + DAILY_PAUSE);
                break;
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "webhook worker failed; retrying");
                break;
            }
        }
    }
    if let Err(error) = engine
        .state
        .prune_done_events(Millis::now().minus(KEEP_DONE))
        .await
    {
        tracing::warn!(error = %format!("{error:#}"), "could not prune old webhook events");
    }
    Ok(())
}

/// Runs the receiver and the worker until a signal.
///
/// # Errors
/// A lock held, the address taken, the state file unusable, or a refused token.
pub async fn run(db: &Path, config: &ServeConfig) -> Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let _locks = config
        .polls
        .iter()
        .map(|job| ObjectLock::acquire(db, &job.object, &job.destination))
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
    let receiver_state = Sqlite::open(db)?;
    // Better a quick 503 (HubSpot retries) than an answer after its 5-second timeout.
    receiver_state.set_busy_timeout(Duration::from_secs(2))?;
    let receiver = Arc::new(Receiver {
        state: Arc::new(receiver_state),
        secret: config.secret.expose().as_bytes().to_vec(),
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
    let mut paused_until = None;
    let retry = worker::Retry {
        base: config.client.retry.base,
        dead_after: config.dead_after,
    };
    loop {
        tokio::select! {
            () = queued.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = reconcile.tick(), if polling => {
                for job in &config.polls {
                    match engine.poll(job, Millis::now(), &shutdown).await {
                        Ok(finished) => match finished.error {
                            Some(error) if is_auth_failure(&error) => return Err(error),
                            Some(error) if is_daily_limit(&error) => tracing::error!(object = %job.object,
                                error = %format!("{error:#}"), "reconciliation window stopped; the next tick tries again"),
                            Some(error) => tracing::error!(object = %job.object, error = %format!("{error:#}"),
                                "reconciliation window failed; the next tick retries it"),
                            None => {}
                        },
                        Err(error) => tracing::error!(object = %job.object, error = %format!("{error:#}"),
                            "reconciliation window could not run; the next tick retries it"),
                    }
                }
            }
            () = shutdown.wait() => break,
        }
        drain(
            &mut engine,
            &config.destination,
            retry,
            &shutdown,
            &mut paused_until,
        )
        .await?;
    }
    server
        .await
        .context("the webhook server task")?
        .context("serving webhooks")?;
    tracing::info!("stopped; queued events wait in the state file");
    Ok(())
}
