//! Exit codes, a public contract: 0 window committed; 1 failed, cursor unchanged; 2 usage
//! error; 75 another run of the same object holds the lock (EX_TEMPFAIL, so cron
//! wrappers can tell "busy" from "broken").

use std::io::ErrorKind;
use std::process::ExitCode;

use crate::config::UsageError;
use crate::lock::LockHeld;

/// The run failed; the cursor did not move.
pub const FAILED: u8 = 1;
/// The command line or environment is wrong.
pub const USAGE: u8 = 2;
/// Another run holds the object's lock.
pub const LOCKED: u8 = 75;

/// Prints `err` once, as one line with its whole chain, and returns its exit code. A
/// closed stdout (`| head`) prints nothing.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let broken_pipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    });
    if !broken_pipe {
        eprintln!("error: {err:#}");
    }
    ExitCode::from(code(err))
}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        USAGE
    } else if err.chain().any(|e| e.is::<LockHeld>()) {
        LOCKED
    } else {
        FAILED
    }
}
