//! `verify`'s comparison, pure: HubSpot's live records (id and modified time, from the
//! list endpoint, which does not depend on the search index) against a destination's
//! ledger (what it was given), both in id order, walked side by side so the ledger can
//! stream in pages.
//!
//! - missing: live in HubSpot, modified by the cursor, never delivered;
//! - stale: delivered, but an older version (or a tombstone) than HubSpot's, modified by
//!   the cursor;
//! - extra: delivered live, gone from HubSpot (hard-deleted, GDPR-deleted, merged away);
//! - pending: changed after the cursor: the next run's business, not drift.

use serde::Serialize;

use crate::record::RecordId;
use crate::state::LedgerEntry;
use crate::timestamp::Millis;

/// How many example ids a report shows per kind.
pub const EXAMPLES: usize = 5;

/// What a comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub checked: u64,
    pub missing: Vec<RecordId>,
    pub stale: Vec<RecordId>,
    pub extra: Vec<RecordId>,
    pub pending: u64,
}

impl Drift {
    /// Whether the copy matches.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty() && self.extra.is_empty()
    }

    /// The counts and a few example ids of each kind, as reports show them.
    pub fn summary(&self) -> DriftSummary {
        let examples = |ids: &[RecordId]| {
            ids.iter()
                .take(EXAMPLES)
                .map(|id| id.0.to_string())
                .collect()
        };
        DriftSummary {
            checked: self.checked,
            missing: self.missing.len() as u64,
            stale: self.stale.len() as u64,
            extra: self.extra.len() as u64,
            pending: self.pending,
            examples: Examples {
                missing: examples(&self.missing),
                stale: examples(&self.stale),
                extra: examples(&self.extra),
            },
        }
    }
}

/// Counts and examples.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftSummary {
    pub checked: u64,
    pub missing: u64,
    pub stale: u64,
    pub extra: u64,
    pub pending: u64,
    pub examples: Examples,
}

/// A few ids of each kind.
#[derive(Clone, Debug, Serialize)]
pub struct Examples {
    pub missing: Vec<String>,
    pub stale: Vec<String>,
    pub extra: Vec<String>,
}

/// A comparison in progress: HubSpot's side held, the ledger fed in id order.
pub struct Comparison {
    hubspot: Vec<(RecordId, Millis)>,
    next: usize,
    cursor: Option<Millis>,
    drift: Drift,
}

impl Comparison {
    /// Starts a comparison of HubSpot's live records (any order) with a destination
    /// whose cursor is `cursor` (everything is due when it has none).
    pub fn new(mut hubspot: Vec<(RecordId, Millis)>, cursor: Option<Millis>) -> Comparison {
        hubspot.sort_unstable_by_key(|(id, _)| *id);
        hubspot.dedup_by_key(|(id, _)| *id);
        let drift = Drift {
            checked: hubspot.len() as u64,
            ..Drift::default()
        };
        Comparison {
            hubspot,
            next: 0,
            cursor,
            drift,
        }
    }

    fn due(&self, modified: Millis) -> bool {
        self.cursor.is_none_or(|c| modified <= c)
    }

    /// Walks HubSpot's records before `id`: none of them was ever delivered.
    fn unmatched_before(&mut self, id: Option<RecordId>) {
        while let Some(&(have, modified)) = self.hubspot.get(self.next) {
            if id.is_some_and(|id| have >= id) {
                break;
            }
            if self.due(modified) {
                self.drift.missing.push(have);
            } else {
                self.drift.pending += 1;
            }
            self.next += 1;
        }
    }

    /// Feeds the next ledger entries, in ascending id order (continuing the last call).
    pub fn ledger(&mut self, entries: &[LedgerEntry]) {
        for entry in entries {
            self.unmatched_before(Some(entry.id));
            match self.hubspot.get(self.next) {
                Some(&(id, modified)) if id == entry.id => {
                    self.next += 1;
                    let behind = entry.held.archived || entry.held.modified < modified;
                    if behind && self.due(modified) {
                        self.drift.stale.push(id);
                    } else if behind {
                        self.drift.pending += 1;
                    }
                }
                _ if !entry.held.archived => self.drift.extra.push(entry.id),
                _ => {}
            }
        }
    }

    /// Ends the comparison: HubSpot's records after the ledger's last were never
    /// delivered.
    pub fn finish(mut self) -> Drift {
        self.unmatched_before(None);
        self.drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Held;

    fn entry(id: u64, modified: i64, archived: bool) -> LedgerEntry {
        LedgerEntry {
            id: RecordId(id),
            held: Held {
                modified: Millis(modified),
                archived,
            },
        }
    }

    #[test]
    fn finds_missing_stale_extra_and_pending() {
        let hubspot = vec![
            (RecordId(5), Millis(10)),  // same version: fine
            (RecordId(1), Millis(10)),  // never delivered: missing
            (RecordId(7), Millis(20)),  // older delivered: stale
            (RecordId(8), Millis(90)),  // older delivered but changed after the cursor
            (RecordId(9), Millis(10)),  // tombstone held, live in HubSpot: stale (restored)
            (RecordId(12), Millis(95)), // never delivered, after the cursor: pending
            (RecordId(15), Millis(10)), // never delivered, after the last ledger id
        ];
        let mut c = Comparison::new(hubspot, Some(Millis(50)));
        c.ledger(&[entry(3, 10, false), entry(4, 10, true), entry(5, 10, false)]);
        c.ledger(&[
            entry(7, 15, false),
            entry(8, 15, false),
            entry(9, 10, true),
            entry(11, 10, false),
        ]);
        let drift = c.finish();
        let ids = |v: &[RecordId]| v.iter().map(|i| i.0).collect::<Vec<_>>();
        assert_eq!(drift.checked, 7);
        assert_eq!(ids(&drift.missing), [1, 15]);
        assert_eq!(ids(&drift.stale), [7, 9]);
        assert_eq!(ids(&drift.extra), [3, 11], "4 is a tombstone: not extra");
        assert_eq!(drift.pending, 2);
        assert!(!drift.is_empty());
        assert_eq!(drift.summary().examples.missing, ["1", "15"]);
    }

    #[test]
    fn an_exact_copy_matches() {
        let mut c = Comparison::new(
            vec![(RecordId(2), Millis(5)), (RecordId(1), Millis(5))],
            None,
        );
        c.ledger(&[entry(1, 5, false), entry(2, 6, false)]);
        assert!(c.finish().is_empty());
    }
}
