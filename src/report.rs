//! `RunReport`: what one run did. The engine fills it in, the state file keeps it in
//! `runs`, `poll --json` prints it and `status` shows the last one per object.

use serde::{Deserialize, Serialize};

use crate::object::ObjectType;
use crate::timestamp::Millis;
use crate::window::Window;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still going (or killed: the next run of the object marks it `interrupted`).
    Running,
    /// The window was scanned and the cursor moved to its `hi`.
    Committed,
    /// Nothing to scan yet: the window was empty; the cursor did not move.
    Empty,
    /// An error stopped the run; the cursor did not move.
    Failed,
    /// The process died while running; found by the next run.
    Interrupted,
    /// `--daily-budget` ran out: the window stays open and the next run resumes it.
    #[serde(rename = "budget-exhausted")]
    BudgetExhausted,
}

impl Outcome {
    /// The name stored in the state file and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Committed => "committed",
            Outcome::Empty => "empty",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::BudgetExhausted => "budget-exhausted",
        }
    }

    /// The inverse of [`Outcome::as_str`]; unknown names read as `Failed`.
    pub fn parse(s: &str) -> Outcome {
        match s {
            "running" => Outcome::Running,
            "committed" => Outcome::Committed,
            "empty" => Outcome::Empty,
            "interrupted" => Outcome::Interrupted,
            "budget-exhausted" => Outcome::BudgetExhausted,
            _ => Outcome::Failed,
        }
    }
}

/// Counters and bounds of one run: its main window (or its side window for `reconcile`)
/// at the top, the trailing recheck window and the deletion sweep beside.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub object: String,
    /// The destination's key (see `destination.rs`).
    pub destination: String,
    pub outcome: Outcome,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub window: WindowReport,
    /// Whether this run continued a window an earlier run left open.
    pub resumed: bool,
    /// Whether the window re-delivers the destination's whole history (`--refresh`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh: bool,
    pub pages: u64,
    /// Records search returned.
    pub seen: u64,
    /// Records handed to the sink.
    pub delivered: u64,
    /// Records skipped because the sink already has that version.
    pub skipped: u64,
    pub requests: u64,
    pub retries: u64,
    /// 429 answers among the requests.
    pub rate_limited: u64,
    pub error: Option<String>,
    /// The trailing window for a late search index (`--recheck`), when one ran.
    pub recheck: Option<PassReport>,
    /// The sweep of archived records for deletions (`--deletes-every`), when one ran.
    pub deletes: Option<SweepReport>,
    /// The process's peak resident memory so far, in KiB (Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

/// A window as printed: RFC 3339 and epoch milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowReport {
    pub lo: String,
    pub hi: String,
    pub lo_ms: i64,
    pub hi_ms: i64,
}

impl From<Window> for WindowReport {
    fn from(w: Window) -> Self {
        WindowReport {
            lo: w.lo.to_rfc3339(),
            hi: w.hi.to_rfc3339(),
            lo_ms: w.lo.0,
            hi_ms: w.hi.0,
        }
    }
}

/// The trailing (recheck) window of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassReport {
    pub outcome: Outcome,
    pub window: WindowReport,
    pub resumed: bool,
    pub pages: u64,
    pub seen: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub requests: u64,
}

impl From<&RunReport> for PassReport {
    fn from(r: &RunReport) -> Self {
        PassReport {
            outcome: r.outcome,
            window: r.window.clone(),
            resumed: r.resumed,
            pages: r.pages,
            seen: r.seen,
            delivered: r.delivered,
            skipped: r.skipped,
            requests: r.requests,
        }
    }
}

/// The deletion sweep of a run: archived records listed, tombstones delivered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub archived: u64,
    pub tombstones: u64,
    pub requests: u64,
}

impl RunReport {
    /// A report for a run of `object` to `destination` that starts now.
    pub fn start(
        object: &ObjectType,
        destination: &str,
        window: Window,
        resumed: bool,
    ) -> RunReport {
        let mut report = RunReport::blank(object.to_string(), destination, window);
        report.resumed = resumed;
        report
    }

    /// A report with nothing counted yet, started now.
    pub fn blank(object: String, destination: &str, window: Window) -> RunReport {
        RunReport {
            object,
            destination: destination.to_owned(),
            outcome: Outcome::Running,
            started_at: Millis::now().to_rfc3339(),
            ended_at: None,
            duration_ms: None,
            window: window.into(),
            resumed: false,
            refresh: false,
            pages: 0,
            seen: 0,
            delivered: 0,
            skipped: 0,
            requests: 0,
            retries: 0,
            rate_limited: 0,
            error: None,
            recheck: None,
            deletes: None,
            peak_rss_kb: None,
        }
    }

    /// Stamps the end of the run.
    pub fn finish(&mut self, outcome: Outcome, error: Option<String>) {
        let end = Millis::now();
        self.outcome = outcome;
        self.ended_at = Some(end.to_rfc3339());
        self.duration_ms = Millis::parse_hubspot(&self.started_at).map(|s| end.0 - s.0);
        self.error = error;
        self.peak_rss_kb = peak_rss_kb();
    }
}

/// `VmHWM` of `/proc/self/status`: the peak resident set size, in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
