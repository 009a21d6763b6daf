//! Logs: tracing to stderr, text or JSON. The default level is WARN, so a healthy cron
//! job mails nothing; on a terminal a run ends with one summary line instead (see
//! `progress.rs`). `-v` steps up, `-q` keeps only errors. Data never goes to stderr, and
//! the token never to either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::config::LogConfig;
use crate::progress::LogWriter;

/// Installs the global subscriber.
pub fn init(config: LogConfig) {
    let interactive = std::io::stderr().is_terminal();
    let filter = match (config.quiet, config.verbose, interactive) {
        (true, _, _) => "error",
        (false, 0, _) => "warn",
        (false, 1, _) => "martech_sync=info,warn",
        (false, 2, _) => "martech_sync=debug,info",
        (false, 3, _) => "martech_sync=trace,info",
        (false, _, _) => "trace",
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(LogWriter)
        .with_target(false);
    // A second init (the demo, tests) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.with_ansi(interactive).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
