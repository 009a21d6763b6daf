//! Window planning: which closed interval `[lo, hi]` of last-modified times a run scans,
//! and whether it resumes an interrupted window. Pure: the state it needs is passed in
//! and the decision comes back, so every rule has a table test below.
//!
//! The rules (docs/ARCHITECTURE.md, "The window engine"):
//! - `lo = cursor − overlap`, or `--since`, or the beginning of time on a first run;
//! - `hi = now − settle`, or `--until`, frozen for the whole run: records modified while
//!   we page belong to the next window;
//! - an open window (a run that did not finish) is resumed from its checkpoint unless the
//!   user names a different window with `--since`/`--until`;
//! - committing moves the cursor to `hi`, never backwards;
//! - a large window is split into disjoint id ranges (slices) scanned concurrently, each
//!   with its own checkpoint; a record's id never changes, so a record modified mid-scan
//!   cannot move from one slice to another.

use std::time::Duration;

use crate::record::RecordId;
use crate::timestamp::Millis;

/// A closed interval of last-modified times, frozen when the window opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub lo: Millis,
    pub hi: Millis,
}

/// A window that was opened and not yet committed, with how far each slice got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenWindow {
    pub window: Window,
    pub slices: Vec<Slice>,
    /// Whether it re-delivers the destination's whole history (`--refresh`).
    pub refresh: bool,
    /// Records scanned so far, and how many its first page said it holds: where a
    /// resumed run's progress starts.
    pub seen: u64,
    pub total: Option<u64>,
}

/// An id range of a window, `after < id ≤ upto`, scanned by keyed pages on its own. Every
/// record of the window in the range with an id up to `last_id` has been confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub index: u32,
    /// Exclusive lower bound; `None` from the first id.
    pub after: Option<RecordId>,
    /// Inclusive upper bound; `None` to the last id.
    pub upto: Option<RecordId>,
    /// The checkpoint: the last id confirmed by the sink.
    pub last_id: Option<RecordId>,
    pub done: bool,
}

impl Slice {
    /// The whole id range, as a fresh window starts.
    pub const WHOLE: Slice = Slice {
        index: 0,
        after: None,
        upto: None,
        last_id: None,
        done: false,
    };

    /// Where the next page of this slice starts (exclusive).
    pub fn resume_after(&self) -> Option<RecordId> {
        self.last_id.or(self.after)
    }
}

/// Splits the ids after `after` into `count` slices numbered from `first_index`, evenly
/// up to `max` (the largest id search showed); the last slice is open-ended, so a record
/// that search shows only later is not left out.
pub fn split(after: RecordId, max: RecordId, count: u32, first_index: u32) -> Vec<Slice> {
    let count = count.max(1);
    let span = max.0.saturating_sub(after.0);
    let step = span.div_ceil(u64::from(count)).max(1);
    let mut slices = Vec::new();
    let mut lower = after.0;
    for i in 0..count {
        let last = i + 1 == count;
        let upto = (!last).then(|| lower.saturating_add(step).min(max.0));
        slices.push(Slice {
            index: first_index + i,
            after: Some(RecordId(lower)),
            upto: upto.map(RecordId),
            last_id: None,
            done: false,
        });
        match upto {
            Some(u) if u < max.0 => lower = u,
            // Ids ran out before the slices did: the rest would be empty.
            _ => {
                if let Some(s) = slices.last_mut() {
                    s.upto = None;
                }
                break;
            }
        }
    }
    slices
}

/// How far behind "now" the window stops and how far before the cursor it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Margins {
    /// Re-read this much before the cursor, to catch records the search index showed late.
    pub overlap: Duration,
    /// Stop this much before now, so the index has caught up with what the window covers.
    pub settle: Duration,
}

/// Explicit bounds from `--since`/`--until`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

/// What a run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Start a new window from its first record.
    Fresh(Window),
    /// Continue an interrupted window after its checkpoint.
    Resume(OpenWindow),
    /// `lo` is not before `hi`: there is nothing to scan yet (runs closer together than
    /// the settle time).
    Empty(Window),
}

/// A window that cannot be planned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--since {since} is after --until {until}")]
    InvertedBounds { since: Millis, until: Millis },
    #[error(
        "a --refresh of this destination is not finished; run without --since/--until to complete it first"
    )]
    RefreshOpen,
}

/// What the user asked of the main window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub bounds: Bounds,
    /// Re-deliver the whole history (`--refresh`).
    pub refresh: bool,
}

/// Decides the main window of this run.
///
/// # Errors
/// When `--since` is after `--until`, or names another window while a refresh is open.
pub fn plan(
    cursor: Option<Millis>,
    open: Option<OpenWindow>,
    ask: Ask,
    now: Millis,
    margins: Margins,
) -> Result<Plan, PlanError> {
    let bounds = ask.bounds;
    if let (Some(since), Some(until)) = (bounds.since, bounds.until)
        && since > until
    {
        return Err(PlanError::InvertedBounds { since, until });
    }
    if let Some(open) = open {
        let same_lo = bounds.since.is_none_or(|s| s == open.window.lo);
        let same_hi = bounds.until.is_none_or(|u| u == open.window.hi);
        // A refresh half done must finish: the destination was told it has the new list.
        if open.refresh && !(same_lo && same_hi) {
            return Err(PlanError::RefreshOpen);
        }
        if open.refresh || (same_lo && same_hi && !ask.refresh) {
            return Ok(Plan::Resume(open));
        }
    }
    let lo = match (ask.refresh, bounds.since, cursor) {
        (true, _, _) | (false, None, None) => Millis::BEGINNING,
        (false, Some(since), _) => since,
        (false, None, Some(c)) => c.minus(margins.overlap).max(Millis::BEGINNING),
    };
    // Never past now − settle: a cursor in the future would skip what is modified
    // between now and then.
    let settled = now.minus(margins.settle);
    let hi = bounds.until.map_or(settled, |u| u.min(settled));
    let window = Window { lo, hi };
    if lo > hi {
        Ok(Plan::Empty(window))
    } else {
        Ok(Plan::Fresh(window))
    }
}

/// Decides the trailing window of a run (`--recheck DUR`): from where the previous
/// trailing window ended (minus `overlap`) to `recheck` before now. It starts, the first
/// time, `recheck` before the main cursor as the run found it; on a first run (no
/// cursor) there is nothing behind to recheck. `None` when rechecking is off or has
/// nothing to start from.
pub fn plan_recheck(
    recheck_cursor: Option<Millis>,
    main_cursor: Option<Millis>,
    open: Option<OpenWindow>,
    now: Millis,
    recheck: Duration,
    overlap: Duration,
) -> Option<Plan> {
    if recheck.is_zero() {
        return None;
    }
    if let Some(open) = open {
        return Some(Plan::Resume(open));
    }
    // Never ahead of the main cursor (a clock that jumped, a cursor set back).
    let from = match (recheck_cursor, main_cursor) {
        (Some(r), Some(c)) => r.min(c),
        (Some(r), None) => r,
        (None, c) => c?.minus(recheck),
    };
    let window = Window {
        lo: from.minus(overlap).max(Millis::BEGINNING),
        hi: now.minus(recheck),
    };
    Some(if window.lo > window.hi {
        Plan::Empty(window)
    } else {
        Plan::Fresh(window)
    })
}

/// The cursor after `window` commits: its `hi`, but never earlier than the stored one
/// (a backfill of an old range must not make the next cron run re-read months), and
/// unchanged when the window starts after the stored cursor (a `--since` later than the
/// cursor leaves a gap the next run must still cover).
pub fn next_cursor(stored: Option<Millis>, window: Window) -> Millis {
    match stored {
        None => window.hi,
        Some(c) if window.lo > c => c,
        Some(c) => c.max(window.hi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn margins() -> Margins {
        Margins {
            overlap: Duration::from_secs(300),
            settle: Duration::from_secs(30),
        }
    }

    fn w(lo: i64, hi: i64) -> Window {
        Window {
            lo: Millis(lo),
            hi: Millis(hi),
        }
    }

    #[test]
    fn plans() {
        let now = 1_000 * MIN;
        let open = OpenWindow {
            window: w(100 * MIN, 900 * MIN),
            slices: vec![Slice {
                last_id: Some(RecordId(77)),
                ..Slice::WHOLE
            }],
            refresh: false,
            seen: 0,
            total: None,
        };
        let refreshing = OpenWindow {
            refresh: true,
            ..open.clone()
        };
        let none = Ask::default();
        let since = |s: i64| Ask {
            bounds: Bounds {
                since: Some(Millis(s)),
                until: None,
            },
            refresh: false,
        };
        let refresh = Ask {
            refresh: true,
            ..Ask::default()
        };
        type Case = (&'static str, Option<i64>, Option<OpenWindow>, Ask, Plan);
        let cases: Vec<Case> = vec![
            (
                "first run covers all history",
                None,
                None,
                none,
                Plan::Fresh(w(1_000, now - 30_000)),
            ),
            (
                "cron run starts overlap before the cursor",
                Some(990 * MIN),
                None,
                none,
                Plan::Fresh(w(985 * MIN, now - 30_000)),
            ),
            (
                "--since replaces the cursor",
                Some(990 * MIN),
                None,
                since(10 * MIN),
                Plan::Fresh(w(10 * MIN, now - 30_000)),
            ),
            (
                "--until bounds the window",
                None,
                None,
                Ask {
                    bounds: Bounds {
                        since: Some(Millis(10 * MIN)),
                        until: Some(Millis(20 * MIN)),
                    },
                    refresh: false,
                },
                Plan::Fresh(w(10 * MIN, 20 * MIN)),
            ),
            (
                "--refresh covers all history whatever the cursor",
                Some(990 * MIN),
                None,
                refresh,
                Plan::Fresh(w(1_000, now - 30_000)),
            ),
            (
                "--refresh abandons an ordinary open window",
                Some(990 * MIN),
                Some(open.clone()),
                refresh,
                Plan::Fresh(w(1_000, now - 30_000)),
            ),
            (
                "a refresh window resumes even without --refresh",
                Some(990 * MIN),
                Some(refreshing.clone()),
                none,
                Plan::Resume(refreshing.clone()),
            ),
            (
                "an open window resumes with its frozen hi",
                Some(100 * MIN + 300_000),
                Some(open.clone()),
                none,
                Plan::Resume(open.clone()),
            ),
            (
                "an open window resumes when --since names its lo",
                None,
                Some(open.clone()),
                since(100 * MIN),
                Plan::Resume(open.clone()),
            ),
            (
                "a different --since abandons the open window",
                None,
                Some(open.clone()),
                since(5 * MIN),
                Plan::Fresh(w(5 * MIN, now - 30_000)),
            ),
            (
                "runs closer than settle have nothing to scan",
                Some(now + MIN),
                None,
                none,
                Plan::Fresh(w(now - 4 * MIN, now - 30_000)),
            ),
            (
                "a cursor in the future gives an empty window",
                Some(now + 10 * MIN),
                None,
                none,
                Plan::Empty(w(now + 5 * MIN, now - 30_000)),
            ),
        ];
        for (name, cursor, open, bounds, want) in cases {
            let got = plan(cursor.map(Millis), open, bounds, Millis(now), margins()).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn inverted_bounds_and_abandoned_refreshes_are_refused() {
        let ask = Ask {
            bounds: Bounds {
                since: Some(Millis(2)),
                until: Some(Millis(1)),
            },
            refresh: false,
        };
        assert!(plan(None, None, ask, Millis(10), margins()).is_err());
        let open = OpenWindow {
            window: w(1_000, 5_000),
            slices: vec![Slice::WHOLE],
            refresh: true,
            seen: 0,
            total: None,
        };
        let since = Ask {
            bounds: Bounds {
                since: Some(Millis(2_000)),
                until: None,
            },
            refresh: false,
        };
        assert_eq!(
            plan(None, Some(open), since, Millis(10_000), margins()),
            Err(PlanError::RefreshOpen)
        );
    }

    #[test]
    fn recheck_windows_trail_by_the_recheck_time() {
        let hour = Duration::from_secs(3_600);
        let overlap = Duration::from_secs(300);
        let now = 1_000 * MIN;
        let open = OpenWindow {
            window: w(1, 2),
            slices: vec![Slice::WHOLE],
            refresh: false,
            seen: 0,
            total: None,
        };
        type Case = (
            &'static str,
            Option<i64>,
            Option<i64>,
            Option<OpenWindow>,
            Duration,
            Option<Plan>,
        );
        let cases: Vec<Case> = vec![
            (
                "off",
                Some(900 * MIN),
                Some(990 * MIN),
                None,
                Duration::ZERO,
                None,
            ),
            (
                "a first run has nothing behind it",
                None,
                None,
                None,
                hour,
                None,
            ),
            (
                "the first trailing window starts an hour before the main cursor",
                None,
                Some(995 * MIN),
                None,
                hour,
                Some(Plan::Fresh(w(930 * MIN, 940 * MIN))),
            ),
            (
                "later ones start where the last ended, minus the overlap",
                Some(935 * MIN),
                Some(995 * MIN),
                None,
                hour,
                Some(Plan::Fresh(w(930 * MIN, 940 * MIN))),
            ),
            (
                "nothing new behind yet",
                Some(941 * MIN),
                Some(995 * MIN),
                None,
                Duration::from_secs(3_600 + 600),
                Some(Plan::Empty(w(936 * MIN, 930 * MIN))),
            ),
            (
                "an open trailing window resumes",
                Some(935 * MIN),
                Some(995 * MIN),
                Some(open.clone()),
                hour,
                Some(Plan::Resume(open.clone())),
            ),
        ];
        for (name, recheck, main, open, every, want) in cases {
            let got = plan_recheck(
                recheck.map(Millis),
                main.map(Millis),
                open,
                Millis(now),
                every,
                overlap,
            );
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn splits_ids_evenly_with_an_open_end() {
        let bounds = |slices: Vec<Slice>| -> Vec<(u32, Option<u64>, Option<u64>)> {
            slices
                .iter()
                .map(|s| (s.index, s.after.map(|i| i.0), s.upto.map(|i| i.0)))
                .collect()
        };
        let cases = [
            (
                200,
                1_000,
                4,
                vec![
                    (1, Some(200), Some(400)),
                    (2, Some(400), Some(600)),
                    (3, Some(600), Some(800)),
                    (4, Some(800), None),
                ],
            ),
            (
                200,
                203,
                8,
                vec![
                    (1, Some(200), Some(201)),
                    (2, Some(201), Some(202)),
                    (3, Some(202), None),
                ],
            ),
            (200, 200, 4, vec![(1, Some(200), None)]),
            (0, 10, 1, vec![(1, Some(0), None)]),
        ];
        for (after, max, count, want) in cases {
            assert_eq!(
                bounds(split(RecordId(after), RecordId(max), count, 1)),
                want,
                "{after} {max} {count}"
            );
        }
    }

    #[test]
    fn cursor_never_moves_back_nor_over_a_gap() {
        assert_eq!(next_cursor(None, w(1, 5)), Millis(5));
        assert_eq!(next_cursor(Some(Millis(3)), w(1, 5)), Millis(5));
        assert_eq!(next_cursor(Some(Millis(9)), w(1, 5)), Millis(9));
        assert_eq!(
            next_cursor(Some(Millis(3)), w(4, 9)),
            Millis(3),
            "gap between 3 and 4"
        );
    }

    #[test]
    fn until_is_clamped_to_now_minus_settle() {
        let ask = Ask {
            bounds: Bounds {
                since: Some(Millis(0)),
                until: Some(Millis(10 * MIN)),
            },
            refresh: false,
        };
        let got = plan(None, None, ask, Millis(MIN), margins()).unwrap();
        assert_eq!(got, Plan::Fresh(w(0, MIN - 30_000)));
    }
}
