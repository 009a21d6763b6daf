//! What `/healthz` tells: whether the queue can be written (a real write to the state, so
//! a full disk or a lock held past the timeout shows), whether the worker keeps up (due
//! events that waited longer than `--health-stall` with no progress mean a hung handler
//! or a dead HubSpot), the queue's depth, the dead letters, and the last reconciliation.
//!
//! A background task checks the state every couple of seconds on a connection of its
//! own; the endpoint only reads the last verdict, so probes never wait on SQLite and
//! never delay a webhook.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::shutdown::Shutdown;
use crate::state::{QueueDepth, State};
use crate::timestamp::Millis;

/// How often the background task checks the state.
const EVERY: Duration = Duration::from_secs(2);

/// The last reconciliation window.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciliation {
    pub object: String,
    pub at: String,
    pub outcome: String,
    /// Logged, not shown: `/healthz` answers anyone.
    #[serde(skip)]
    pub error: Option<String>,
}

/// What the checks and the worker last reported.
#[derive(Debug, Default)]
struct Seen {
    /// The last write test's error, if it failed.
    unwritable: Option<String>,
    /// The last enqueue's error, if it failed (cleared by the next success, or the next
    /// write test that goes through).
    enqueue_failed: Option<String>,
    depth: QueueDepth,
    checked: Option<Millis>,
    /// When the worker last got through the events it could take.
    progress: Option<Millis>,
    reconciliation: Option<Reconciliation>,
    /// The object whose reconciliation window is running.
    reconciling: Option<String>,
    /// Objects whose events wait for a poll that holds their lock.
    waiting: Vec<String>,
}

/// The receiver's health, shared by the checker, the worker, the receiver and the
/// endpoint.
pub struct Health {
    seen: Mutex<Seen>,
    stall: Duration,
}

/// The endpoint's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub status: &'static str,
    /// What makes the receiver unhealthy (503).
    pub problems: Vec<String>,
    /// What an operator should look at, though webhooks are still received (200):
    /// dead letters, a failed reconciliation window.
    pub warnings: Vec<String>,
    pub queued: u64,
    pub dead: u64,
    pub oldest_due_seconds: Option<u64>,
    pub worker_idle_seconds: Option<u64>,
    pub last_reconciliation: Option<Reconciliation>,
    /// The object whose reconciliation window is running now.
    pub reconciling: Option<String>,
    pub checked_at: Option<String>,
}

impl Health {
    /// Health that turns red after `stall` without worker progress on due events.
    pub fn new(stall: Duration) -> Health {
        Health {
            seen: Mutex::new(Seen {
                progress: Some(Millis::now()),
                ..Seen::default()
            }),
            stall,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker drained: `settled` events moved on (`None`: it could not take any),
    /// and the events of `waiting` wait for a poll.
    pub fn drained(&self, settled: Option<usize>, waiting: &[String]) {
        let mut seen = self.seen();
        if settled.is_some() {
            seen.progress = Some(Millis::now());
        }
        waiting.clone_into(&mut seen.waiting);
    }

    /// A reconciliation window started (`Some`) or paused or ended (`None`).
    pub fn reconciling(&self, object: Option<String>) {
        self.seen().reconciling = object;
    }

    /// An enqueue failed (`Some`) or succeeded (`None`).
    pub fn enqueued(&self, error: Option<String>) {
        self.seen().enqueue_failed = error;
    }

    /// A reconciliation window ended.
    pub fn reconciled(&self, reconciliation: Reconciliation) {
        self.seen().reconciliation = Some(reconciliation);
    }

    /// Checks the state every couple of seconds until `shutdown`.
    pub async fn watch(&self, state: State, shutdown: Shutdown) {
        loop {
            let writable = state.check_writable().await;
            let depth = state.queue_depth().await;
            {
                let mut seen = self.seen();
                // A write that went through since: the queue takes writes again.
                if writable.is_ok() {
                    seen.enqueue_failed = None;
                }
                let unwritable = writable.err().map(|e| format!("{e:#}"));
                if let Some(e) = unwritable.as_ref().filter(|_| seen.unwritable.is_none()) {
                    tracing::error!(error = %e, "the webhook queue cannot be written");
                }
                seen.unwritable = unwritable;
                match depth {
                    Ok(depth) => seen.depth = depth,
                    Err(e) => seen.unwritable = Some(format!("{e:#}")),
                }
                seen.checked = Some(Millis::now());
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = shutdown.wait() => return,
            }
        }
    }

    /// The verdict now.
    pub fn report(&self, now: Millis) -> Report {
        let seen = self.seen();
        let secs = |ms: i64| u64::try_from(ms.max(0) / 1000).unwrap_or(0);
        let oldest_due = seen.depth.oldest_due_ms.map(|t| now.0 - t);
        let idle = seen.progress.map(|p| now.0 - p.0);
        let stall_ms = i64::try_from(self.stall.as_millis()).unwrap_or(i64::MAX);
        let mut problems = Vec::new();
        // Without the error text: `/healthz` answers anyone; the log has it.
        if seen.unwritable.is_some() {
            problems.push("the queue cannot be written (see the log)".to_owned());
        }
        if seen.enqueue_failed.is_some() {
            problems.push("the last webhook could not be queued (see the log)".to_owned());
        }
        if oldest_due.is_some_and(|age| age > stall_ms) && idle.is_some_and(|i| i > stall_ms) {
            problems.push(format!(
                "due webhook events have waited over {} with no progress from the worker",
                humantime::format_duration(self.stall)
            ));
        }
        let mut warnings = Vec::new();
        if seen.depth.dead > 0 {
            warnings.push(format!(
                "{} dead letters (see `martech-sync dead-letters list`)",
                seen.depth.dead
            ));
        }
        if let Some(r) = seen.reconciliation.as_ref().filter(|r| r.error.is_some()) {
            warnings.push(format!(
                "the last reconciliation window of {} failed at {} (see the log)",
                r.object, r.at
            ));
        }
        for object in &seen.waiting {
            warnings.push(format!(
                "webhook events of {object} wait for a poll that holds its lock"
            ));
        }
        Report {
            status: if problems.is_empty() {
                "ok"
            } else {
                "unhealthy"
            },
            problems,
            warnings,
            queued: seen.depth.queued,
            dead: seen.depth.dead,
            oldest_due_seconds: oldest_due.map(secs),
            worker_idle_seconds: idle.map(secs),
            last_reconciliation: seen.reconciliation.clone(),
            reconciling: seen.reconciling.clone(),
            checked_at: seen.checked.map(Millis::to_rfc3339),
        }
    }
}
