//! martech-sync moves HubSpot CRM records into your own system, from cron, as a one-off
//! backfill or continuously, and never loses one: every record whose last-modified time
//! falls in a committed window reaches the handler at least once, and an unchanged
//! version already handed over is not handed over again; deletions, merges and a late
//! search index reach it too, and `verify` proves the copy matches
//! (docs/ARCHITECTURE.md).
//!
//! # Layout
//! - `cli`: clap types, no logic; `config`: validated `Config`, every usage error.
//! - `command/`: one module per subcommand (`poll` (also `reconcile`), `serve`, `status`,
//!   `cursor`, `verify`, `dead_letters`, `demo`, `mock`, and `generate` for completions
//!   and man).
//! - `window`: pure window planning (lo, hi, overlap, settle, resume, recheck).
//! - `sync`: the engine: keyed page → sink → checkpoint → commit; recheck; deletions.
//! - `ledger`: pure decisions on what is news to a destination (versions, tombstones,
//!   merges); `verify`: the pure comparison behind `verify`.
//! - `watch`: continuous mode (`--interval`); `shutdown`: SIGINT/SIGTERM handling.
//! - `state/`: the storage interface and its SQLite backend (syncs, windows, ledger,
//!   runs, records, webhook queue, status).
//! - `destination`, `properties`: what a sync delivers to and with which properties.
//! - `hubspot/`: HTTP client (auth, pacing, retries, typed errors), keyed search.
//! - `sink/`: sqlite, jsonl, exec; an enum.
//! - `lock`: one runner per (state file, object).
//! - `mock/`: the local fake HubSpot used by the tests, `demo` and `mock-hubspot`.
//! - `webhook/`: the `serve` receiver: signatures, events, the queue, the worker.
//! - `object`, `record`, `timestamp`, `token`, `report`: the domain nouns.
//! - `private`: the warning for a file of records others can read.
//! - `logging`: tracing setup; `progress`: the terminal progress bar; `exit`: error →
//!   exit code.

pub mod cli;
pub mod command;
pub mod config;
pub mod destination;
pub mod exit;
pub mod fetch;
pub mod hubspot;
pub mod ledger;
pub mod lock;
pub mod logging;
pub mod mock;
pub mod object;
pub mod postgres;
pub mod private;
pub mod progress;
pub mod properties;
pub mod record;
pub mod report;
pub mod shutdown;
pub mod sink;
pub mod state;
pub mod sync;
pub mod timestamp;
pub mod token;
pub mod verify;
pub mod watch;
pub mod webhook;
pub mod window;

use anyhow::{Context, Result};

use crate::cli::Cli;
use crate::config::{CommandConfig, Config};
use crate::timestamp::Millis;

/// Validates `cli`, sets up logging and runs the command.
///
/// # Errors
/// Whatever the command failed with; [`exit::code`] maps it to the exit code.
pub fn run(cli: Cli) -> Result<()> {
    let config = Config::new(cli, Millis::now())?;
    logging::init(config.log);
    // Other processes of the same user, a handler among them, cannot read this one's
    // memory or /proc/PID/environ, where the token and the client secret are (prctl(2),
    // PR_SET_DUMPABLE; a handler's own exec makes it dumpable again).
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::debug!(error = %e, "could not make the process undumpable");
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        match &config.command {
            CommandConfig::Poll(poll) => command::poll::run(&config.db, poll).await,
            CommandConfig::Status(status) => {
                command::status::run(&config.db, config.portal, status).await
            }
            CommandConfig::Demo(demo) => command::demo::run(demo).await,
            CommandConfig::Mock(mock) => command::mock::run(mock).await,
            CommandConfig::Cursor(cursor) => {
                command::cursor::run(&config.db, config.portal, cursor).await
            }
            CommandConfig::Completions(shell) => command::generate::completions(*shell),
            CommandConfig::Man(dir) => command::generate::man(dir.as_deref()),
            CommandConfig::Serve(serve) => command::serve::run(&config.db, serve).await,
            CommandConfig::DeadLetters(dead) => {
                command::dead_letters::run(&config.db, config.portal, dead).await
            }
            CommandConfig::Verify(verify) => command::verify::run(&config.db, verify).await,
        }
    });
    // A lock lost under a run stops it as a signal would; it must not exit 0 (a
    // `serve` or `--interval` run would otherwise end "cleanly", and not be restarted).
    let stopped = match &result {
        Ok(()) => true,
        Err(e) => e.is::<command::poll::Interrupted>(),
    };
    if stopped && lock::lost_any() {
        return Err(lock::LockSessionEnded.into());
    }
    result
}
