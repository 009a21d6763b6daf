//! `serve`: webhooks for latency, poll windows for completeness, in one process with
//! one state, one sink and one ledger. The receiver only queues (so it answers fast,
//! under the limits of `webhook/server.rs`); this loop owns the engine and alternates
//! between draining the queue and, every `--interval`, a reconciliation window per
//! polled object. One `serve` per state file (a second exits 75).
//!
//! Shutdown is bounded: SIGTERM stops accepting, lets requests in flight finish for a
//! few seconds, gives the worker's handler a few seconds to confirm its page (then kills
//! its process group), and exits 0 within ten seconds; queued events wait in the state
//! for the next start.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::resolve_sink;
use crate::config::ServeConfig;
use crate::hubspot::Client;
use crate::hubspot::error::{is_auth_failure, is_daily_limit};
use crate::progress::ProgressMode;
use crate::report::Outcome;
use crate::shutdown::Shutdown;
use crate::state::{Location, Sqlite, State};
use crate::sync::{Engine, PollJob};
use crate::timestamp::Millis;
use crate::webhook::health::{Health, Reconciliation};
use crate::webhook::receiver::{Receiver, router};
use crate::webhook::server::{self, LimitLog, Limits};
use crate::webhook::worker::{self, Locks};

/// How long the worker drains before the loop looks at the reconciliation tick again.
const DRAIN_BUDGET: Duration = Duration::from_secs(5);
/// How long reconciliation windows run before the worker gets its turn.
const RECONCILE_TURN: Duration = Duration::from_secs(20);
/// Done events are kept this long to recognise HubSpot's redeliveries (it retries for a
/// day), then pruned.
const KEEP_DONE: Duration = Duration::from_secs(3 * 86_400);
/// How long the worker waits after HubSpot's daily limit ran out before it tries again
/// (the limit resets at midnight in the account's time zone; retrying sooner only takes
/// from the portal's other apps).
const DAILY_PAUSE: Duration = Duration::from_secs(900);
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request must be complete within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a stop: how long requests in flight may finish.
const REQUEST_GRACE: Duration = Duration::from_secs(4);
/// After a stop: how long the worker's batch in hand may finish.
const WORKER_GRACE: Duration = Duration::from_secs(5);
/// Descriptors kept for the state, the sink and HubSpot when capping connections.
const FD_RESERVE: u64 = 64;

/// Runs the receiver and the worker until a signal.
///
/// # Errors
/// Another `serve` on the state file, a lock held, the address taken, the state
/// unusable, or a refused token.
pub async fn run(db: &Location, config: &ServeConfig) -> Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let _serve = crate::lock::serve_lock(db)?;
    let client = Client::new(&config.client)?;
    // A Postgres state keeps many portals' queues: this serve's worker takes its
    // token's portal's events (its receiver queues every portal's).
    let portal = match db {
        Location::File(_) => None,
        Location::Postgres(_) => crate::sync::open_state(db, &client).await?.1,
    };
    let mut polled = HashMap::new();
    for job in &config.polls {
        let lock =
            crate::lock::lock(db, portal, &job.object, &job.destination, Some(&shutdown)).await?;
        polled.insert(job.object.clone(), lock);
    }
    let engine_state = short_waits(db, portal).await?;
    let (sink, destination) =
        resolve_sink(&engine_state, &config.destination, config.sink.as_ref()).await?;
    let bound = engine_state.bind_queue(destination.key()).await?;
    if bound != destination.key() {
        return Err(QueueBound {
            portal: portal.unwrap_or_default(),
            state: engine_state.describe(),
            bound,
            destination: destination.key().to_owned(),
        }
        .into());
    }
    let polls: Vec<PollJob> = config
        .polls
        .iter()
        .map(|job| PollJob {
            destination: destination.clone(),
            ..job.clone()
        })
        .collect();
    let locks = Locks::new(db, portal, &destination, polled);
    let sink = crate::sync::open_sink(
        &sink,
        &destination,
        &config.handlers,
        &shutdown,
        &client,
        &engine_state,
    )
    .await?;
    let mut engine = Engine::new(engine_state, client, sink, ProgressMode::Hidden);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let hook = format!("http://{addr}/webhooks/hubspot");
    let public_url = config.public_url.clone().unwrap_or_else(|| hook.clone());

    let receiver_state = short_waits(db, portal).await?;
    let health = Arc::new(Health::new(config.health_stall));
    let health_state = short_waits(db, portal).await?;
    {
        let health = Arc::clone(&health);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { health.watch(health_state, shutdown).await });
    }
    let queued = Arc::new(Notify::new());
    let log = Arc::new(LimitLog::default());
    let receiver = Arc::new(Receiver {
        state: receiver_state,
        secret: config.secret.expose().as_bytes().to_vec(),
        public_url: public_url.clone(),
        accept: config.accept,
        queued: Arc::clone(&queued),
        health: Arc::clone(&health),
        log: Arc::clone(&log),
        budget: Receiver::body_budget(),
        writer: tokio::sync::Mutex::new(()),
        seen: std::sync::Mutex::default(),
    });
    let limits = Limits {
        max_connections: connection_cap(config.max_connections),
        header_timeout: HEADER_TIMEOUT,
        shutdown_grace: REQUEST_GRACE,
    };
    let server = tokio::spawn(server::serve(
        listener,
        router(receiver, REQUEST_TIMEOUT),
        limits,
        shutdown.clone(),
        log,
    ));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{hook}")?;
        out.flush()?;
    }
    tracing::info!(%public_url, polls = config.polls.len(), max_connections = limits.max_connections,
        "receiving webhooks");

    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let polling = !config.polls.is_empty();
    let retry = worker::Retry {
        base: config.client.retry.base,
        dead_after: config.dead_after,
    };
    let mut paused_until: Option<Instant> = None;
    // Work in hand when a stop comes gets WORKER_GRACE, then it is dropped (the state
    // is crash-safe: what was not committed is delivered again later).
    let deadline = async {
        shutdown.wait().await;
        tokio::time::sleep(WORKER_GRACE).await;
    };
    tokio::pin!(deadline);
    // The polled objects whose reconciliation window is due or paused, in turn.
    let mut windows: VecDeque<usize> = VecDeque::new();
    let outcome: Result<()> = loop {
        if windows.is_empty() {
            let tick = tokio::select! {
                () = queued.notified() => false,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = ticks.tick(), if polling => true,
                () = shutdown.wait() => break Ok(()),
            };
            if tick {
                windows.extend(0..polls.len());
            }
        } else if shutdown.requested() {
            break Ok(());
        }
        let work = async {
            reconcile(&mut engine, &polls, &mut windows, &health, &shutdown).await?;
            let drained = drain(&mut engine, &locks, retry, &shutdown, &mut paused_until).await?;
            health.drained(drained.settled, &drained.waiting);
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            result = work => if let Err(e) = result { break Err(e) },
            () = &mut deadline => break Ok(()),
        }
    };
    crate::sink::kill_running_handler();
    // A refused token ends the worker: the receiver stops with it (HubSpot retries
    // what it sends meanwhile), rather than queue events no worker will deliver.
    shutdown.request();
    server
        .await
        .context("the webhook server task")?
        .context("serving webhooks")?;
    outcome?;
    tracing::info!("stopped; queued events wait in the state file");
    Ok(())
}

/// The shared queue of a Postgres state feeds another destination than this serve's:
/// each event is marked done once, so two destinations would split the events between
/// them. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error(
    "the webhook queue of {state} feeds destination {bound}, and this serve delivers to \
     {destination}: every serve of a portal delivers to one destination (give that one with \
     --sink or --destination; to move the queue, stop every serve of the portal and run \
     DELETE FROM martech_sync.meta WHERE key = 'queue-of:{portal}')"
)]
pub struct QueueBound {
    portal: u64,
    state: String,
    bound: String,
    destination: String,
}

/// A handle on the state of its own (each part of serve writes at once), narrowed to
/// `portal`: for a state file with a 2-second busy timeout, so that a stop never waits
/// behind another process's lock and the receiver answers a quick 503 (HubSpot
/// retries) rather than after HubSpot's 5-second timeout.
async fn short_waits(db: &Location, portal: Option<u64>) -> Result<State> {
    Ok(match db {
        Location::File(path) => {
            let state = Sqlite::open(path)?;
            state.set_busy_timeout(Duration::from_secs(2))?;
            Arc::new(state)
        }
        Location::Postgres(_) => crate::state::for_portal(crate::state::open(db).await?, portal),
    })
}

/// Runs the reconciliation windows in `windows`, in turn, for at most
/// [`RECONCILE_TURN`]: a window still going then is paused between pages (its
/// checkpoints kept) and resumed after the worker has delivered the webhooks that came
/// in meanwhile, so a backfill of hours never holds back the push path.
///
/// # Errors
/// A refused token: no later tick can fix it.
async fn reconcile(
    engine: &mut Engine,
    polls: &[PollJob],
    windows: &mut VecDeque<usize>,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<()> {
    if windows.is_empty() {
        return Ok(());
    }
    let pause = Shutdown::default();
    let timer = {
        let pause = pause.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(RECONCILE_TURN) => {}
                () = shutdown.wait() => {}
            }
            pause.request();
        })
    };
    let result = reconcile_turn(engine, polls, windows, health, &pause).await;
    timer.abort();
    result
}

async fn reconcile_turn(
    engine: &mut Engine,
    polls: &[PollJob],
    windows: &mut VecDeque<usize>,
    health: &Health,
    pause: &Shutdown,
) -> Result<()> {
    while let Some(&index) = windows.front() {
        if pause.requested() {
            break;
        }
        let job = &polls[index];
        health.reconciling(Some(job.object.to_string()));
        let polled = engine.poll(job, Millis::now(), pause).await;
        health.reconciling(None);
        if let Ok(finished) = &polled
            && finished.report.outcome == Outcome::Interrupted
        {
            // Paused (or stopped): the window stays open and goes on next turn.
            break;
        }
        windows.pop_front();
        let (outcome, error) = match polled {
            Ok(finished) => {
                let outcome = finished.report.outcome.as_str().to_owned();
                match finished.error {
                    Some(error) if is_auth_failure(&error) => return Err(error),
                    Some(error) => {
                        let text = format!("{error:#}");
                        tracing::error!(object = %job.object, error = %text,
                            "reconciliation window failed; the next tick retries it");
                        (outcome, Some(text))
                    }
                    None => (outcome, None),
                }
            }
            Err(error) => {
                let text = format!("{error:#}");
                tracing::error!(object = %job.object, error = %text,
                    "reconciliation window could not run; the next tick retries it");
                ("failed".to_owned(), Some(text))
            }
        };
        health.reconciled(Reconciliation {
            object: job.object.to_string(),
            at: Millis::now().to_rfc3339(),
            outcome,
            error,
        });
    }
    Ok(())
}

/// What a [`drain`] got through.
#[derive(Debug, Default)]
struct Drained {
    /// Events delivered or given a failed attempt; `None` when the worker could not
    /// take any (paused, or the state failed).
    settled: Option<usize>,
    /// Objects whose events wait for a poll holding their lock.
    waiting: Vec<String>,
}

/// Delivers due events, a batch at a time, for at most [`DRAIN_BUDGET`]; a signal stops
/// it between batches. State errors are logged and retried on the next turn.
///
/// # Errors
/// A refused token.
async fn drain(
    engine: &mut Engine,
    locks: &Locks,
    retry: worker::Retry,
    shutdown: &Shutdown,
    paused_until: &mut Option<Instant>,
) -> Result<Drained> {
    let mut drained = Drained::default();
    if paused_until.is_some_and(|until| Instant::now() < until) {
        return Ok(drained);
    }
    let started = Instant::now();
    let mut settled = 0;
    let mut ok = true;
    while !shutdown.requested() && started.elapsed() < DRAIN_BUDGET {
        match worker::drain_once(engine, locks, retry, shutdown, &mut drained.waiting).await {
            Ok(pass) if pass.events == 0 => break,
            // Each pass moves its events on (done, retried later, or left out as
            // waiting), so the next one takes others.
            Ok(pass) => settled += pass.delivered + pass.failed,
            Err(error) if is_auth_failure(&error) => return Err(error),
            Err(error) if is_daily_limit(&error) => {
                tracing::error!(error = %format!("{error:#}"),
                    "webhook worker paused for {}: queued events wait", humantime::format_duration(DAILY_PAUSE));
                *paused_until = Some(Instant::now() + DAILY_PAUSE);
                ok = false;
                break;
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "webhook worker failed; retrying");
                ok = false;
                break;
            }
        }
    }
    drained.settled = ok.then_some(settled);
    if let Err(error) = engine
        .state
        .prune_done_events(Millis::now().minus(KEEP_DONE))
        .await
    {
        tracing::warn!(error = %format!("{error:#}"), "could not prune old webhook events");
    }
    Ok(drained)
}

/// Raises the descriptor soft limit to the hard limit, and returns how many connections
/// fit under it with room left for the state, the sink and HubSpot.
fn connection_cap(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-files limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let room = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            limit = soft,
            max_connections = room,
            "the open-files limit caps connections below --max-connections"
        );
    }
    wanted.min(room).max(1)
}
