//! `completions SHELL` and `man`: generated from the clap definitions, so they never
//! drift from the real flags. (The one place outside cli/config that touches clap: it
//! needs the command tree itself.)

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
///
/// # Errors
/// When stdout cannot be written.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "martech-sync", &mut out);
    out.flush().context("writing completions to stdout")
}

/// Prints the man page (roff).
///
/// # Errors
/// When stdout cannot be written.
pub fn man() -> Result<()> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("writing the man page to stdout")?;
    out.flush().context("writing the man page to stdout")
}
