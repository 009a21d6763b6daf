//! Exit codes, a public contract: 0 window committed; 1 failed, cursor unchanged (a rerun
//! may fix it); 2 usage error; 3 `verify` found drift it did not repair; 75 another run of
//! the same sync holds the lock (EX_TEMPFAIL, so cron wrappers can tell "busy" from
//! "broken"); 78 configuration error no rerun fixes (EX_CONFIG: a missing state
//! directory, a file that is not a state file, a newer schema, a sink that cannot be
//! opened, a state file with hard links, a lock directory others control, a token of
//! another portal than a shared sink's); 130 a second stop signal (see `shutdown.rs`).

use std::io::ErrorKind;
use std::io::Write;
use std::process::ExitCode;

use crate::command::verify::DriftFound;
use crate::config::UsageError;
use crate::lock::{LockHeld, NoStateDir, ServeHeld, UntrustedLockDir};
use crate::sink::SinkUnusable;
use crate::state::postgres::{LockLost, NoPortal, StateUnusable};
use crate::state::sqlite::{HardLinked, NewerSchema, NotAStateFile};
use crate::sync::{NeedsRefresh, OtherPortal, WrongPortal};
use crate::window::PlanError;

/// The run failed; the cursor did not move.
pub const FAILED: u8 = 1;
/// The command line or environment is wrong.
pub const USAGE: u8 = 2;
/// `verify` found drift and did not repair it.
pub const DRIFT: u8 = 3;
/// Another run holds the sync's lock.
pub const LOCKED: u8 = 75;
/// The configuration is wrong in a way no rerun fixes.
pub const CONFIG: u8 = 78;

/// Prints `err` once, as one line with its whole chain, and returns its exit code. A
/// closed stdout (`| head`) prints nothing.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let broken_pipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    });
    if !broken_pipe {
        // Never a panic for a stderr that is gone (a closed pipe): the exit code says it.
        let _ = writeln!(std::io::stderr(), "error: {err:#}");
    }
    ExitCode::from(code(err))
}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> u8 {
    let any = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| err.chain().any(f);
    if any(&|e| e.is::<UsageError>() || e.is::<NeedsRefresh>() || e.is::<PlanError>()) {
        USAGE
    } else if any(&|e| e.is::<LockHeld>() || e.is::<ServeHeld>() || e.is::<LockLost>()) {
        LOCKED
    } else if any(&|e| e.is::<DriftFound>()) {
        DRIFT
    } else if any(&|e| {
        e.is::<NotAStateFile>()
            || e.is::<HardLinked>()
            || e.is::<UntrustedLockDir>()
            || e.is::<NewerSchema>()
            || e.is::<NoStateDir>()
            || e.is::<SinkUnusable>()
            || e.is::<OtherPortal>()
            || e.is::<StateUnusable>()
            || e.is::<crate::command::serve::QueueBound>()
            || e.is::<NoPortal>()
            || e.is::<WrongPortal>()
    }) {
        CONFIG
    } else {
        FAILED
    }
}
