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

/// Where a window's progress starts: for a resumed window, what its checkpoints say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Start {
    /// Records the window holds, as its first page said (search's `total`).
    pub total: Option<u64>,
    /// Records already scanned by earlier runs of this window.
    pub seen: u64,
}

/// A bar shows only once a window has run this long: short runs print just their
/// summary line.
const SHOW_AFTER: Duration = Duration::from_secs(2);

/// The progress of one window. It keeps its counts whether or not a bar is drawn.
pub struct Progress {
    bar: ProgressBar,
    mode: ProgressMode,
    shown: bool,
    started: Instant,
    /// Records scanned before this run (a resumed window).
    before: u64,
}

impl Progress {
    /// Starts the progress of a window of `object` from `start` (a bar on a terminal once
    /// it has run a couple of seconds; nothing otherwise).
    pub fn start(mode: ProgressMode, object: &str, start: Start) -> Progress {
        let bar = ProgressBar::with_draw_target(start.total, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {wide_bar} {pos}/{len} records, ETA {eta}  {msg}",
            )
            .expect("the template is valid"),
        );
        bar.set_prefix(object.to_owned());
        bar.set_position(start.seen);
        // A resumed window starts at its checkpoints: the ETA counts from here, not from
        // a jump of thousands of records in no time.
        bar.reset_eta();
        Progress {
            bar,
            mode,
            shown: false,
            started: Instant::now(),
            before: start.seen,
        }
    }

    /// Sets how many records the window holds, once known.
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// The records scanned so far in this window, earlier runs included.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// The records the window holds, when known.
    pub fn length(&self) -> Option<u64> {
        self.bar.length()
    }

    /// Shows where the run stands; `retries` is the number of retries so far.
    pub fn update(&mut self, report: &RunReport, requests: u64, retries: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        #[allow(clippy::cast_precision_loss)]
        let rate = requests as f64 / secs;
        self.bar.set_position(self.before + report.seen);
        let pages = plural(report.pages, "page", "pages");
        self.bar.set_message(format!(
            "{} delivered, {pages}, {rate:.1} req/s, {}",
            report.delivered,
            plural(retries, "retry", "retries")
        ));
        if !self.shown && self.mode == ProgressMode::Bar && self.started.elapsed() >= SHOW_AFTER {
            self.shown = true;
            self.bar
                .set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            self.bar.enable_steady_tick(Duration::from_millis(250));
            *BAR.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.bar.clone());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            self.bar.finish_and_clear();
            *BAR.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// `1 page`, `2 pages`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The one line a run on a terminal ends with: what it moved, how fast, which window.
pub fn summary_line(report: &RunReport) -> String {
    #[allow(clippy::cast_precision_loss)]
    let secs = report.duration_ms.unwrap_or(0).max(1) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let rate = report.seen as f64 / secs;
    let mut line = format!(
        "{} -> {}: {} {}, {} delivered, {} skipped, {} in {secs:.1} s ({rate:.0} records/s); window {} .. {}",
        report.object,
        report.destination,
        report.outcome.as_str(),
        plural(report.seen, "record", "records"),
        report.delivered,
        report.skipped,
        plural(report.pages, "page", "pages"),
        report.window.lo,
        report.window.hi,
    );
    // The side passes only when they delivered something: a healthy run stays short.
    if let Some(recheck) = report.recheck.as_ref().filter(|r| r.delivered > 0) {
        line.push_str(&format!(
            "; recheck {} delivered",
            plural(recheck.delivered, "record", "records")
        ));
    }
    if let Some(deletes) = report.deletes.as_ref().filter(|d| d.tombstones > 0) {
        line.push_str(&format!(
            "; {} from deletions",
            plural(deletes.tombstones, "tombstone", "tombstones")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Millis;
    use crate::window::Window;

    #[test]
    fn a_resumed_window_starts_where_its_checkpoints_are() {
        let start = Start {
            total: Some(42_500),
            seen: 3_200,
        };
        let mut progress = Progress::start(ProgressMode::Hidden, "contacts", start);
        assert_eq!(
            (progress.position(), progress.length()),
            (3_200, Some(42_500))
        );
        let window = Window {
            lo: Millis(0),
            hi: Millis(1),
        };
        let mut report = RunReport::start(&"contacts".parse().unwrap(), "sqlite", window, true);
        report.seen = 200;
        report.pages = 1;
        progress.update(&report, 1, 0);
        assert_eq!(
            progress.position(),
            3_400,
            "this run's records on top of the earlier ones"
        );
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "page", "pages"), "1 page");
        assert_eq!(plural(0, "page", "pages"), "0 pages");
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
