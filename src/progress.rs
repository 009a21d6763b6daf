//! Progress on an interactive terminal: records delivered, pages, requests per second,
//! retries, and an ETA from search's `total`. Nothing on a pipe, in cron or with `-q`.
//! Log lines are written around the bar ([`LogWriter`]) so the two never garble.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::RunReport;

/// The bar being drawn, if any; the log writer draws around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether to draw progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// stderr is a terminal and the user did not ask for quiet.
    Bar,
    Hidden,
}

impl ProgressMode {
    /// A bar on a terminal unless `quiet`.
    pub fn detect(quiet: bool) -> ProgressMode {
        if !quiet && std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Hidden
        }
    }
}

/// The progress of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    /// Starts showing progress for `object` (or nothing, when hidden).
    pub fn start(mode: ProgressMode, object: &str) -> Progress {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {wide_bar} {pos}/{len} records, ETA {eta}  {msg}",
                )
                .expect("the template is valid"),
            );
            bar.set_prefix(object.to_owned());
            bar.enable_steady_tick(Duration::from_millis(250));
            *BAR.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// Sets how many records the window holds, once known.
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Shows where the run stands; `retrying` is the number of retries so far.
    pub fn update(&self, report: &RunReport, requests: u64, retries: u64) {
        let Some(bar) = &self.bar else {
            return;
        };
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        #[allow(clippy::cast_precision_loss)]
        let rate = requests as f64 / secs;
        bar.set_position(report.seen);
        bar.set_message(format!(
            "{} delivered, {} pages, {rate:.1} req/s, {retries} retries",
            report.delivered, report.pages
        ));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *BAR.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// A tracing writer that prints each log line above the progress bar.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// One log line, written when dropped.
pub struct LogLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::with_capacity(256))
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        let bar = BAR.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
