//! The doorway: parse, run, print the error chain once, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = martech_sync::cli::Cli::parse();
    match martech_sync::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => martech_sync::exit::report(&err),
    }
}
