//! `completions SHELL` and `man`: generated from the clap definitions, so they never
//! drift from the real flags. (The one place outside cli/config that touches clap: it
//! needs the command tree itself.)

use std::io::Write;
use std::path::Path;

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

/// Prints the main man page (roff), or with `dir` writes it and one page per
/// subcommand (`martech-sync-poll.1`, `martech-sync-cursor-set.1`, ...) there.
///
/// # Errors
/// When stdout or a page cannot be written.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(command)
            .render(&mut out)
            .context("writing the man page to stdout")?;
        return out.flush().context("writing the man page to stdout");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = write_pages(&command.bin_name("martech-sync"), "martech-sync", dir)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// Writes the page of `command`, named `name`, and those of its subcommands; returns how
/// many were written.
fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    // clap names are &'static str (without its `string` feature); a one-shot command
    // can leak a few short names.
    let full: &'static str = Box::leak(name.to_owned().into_boxed_str());
    clap_mangen::Man::new(command.clone().name(full))
        .render(&mut page)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}
