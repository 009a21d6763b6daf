//! The ledger's decisions, pure: which versions, tombstones and merge tombstones are
//! news to a destination, given what it holds (the state's ledger: per record the
//! newest version or tombstone it confirmed). The engine, the webhook worker, the
//! deletion sweep and `verify --repair` all decide here, so a version reaches a
//! destination once whichever path saw it first.
//!
//! Versions are ordered by (modified time, archived): a tombstone wins a tie with the
//! live version of the same millisecond, and a restored record comes back with a newer
//! modified time than its tombstone.

use std::collections::{HashMap, HashSet};

use crate::record::{Record, RecordId};
use crate::state::Held;
use crate::timestamp::Millis;

/// Whether `record` is newer than what the destination holds.
pub fn is_news(held: Option<Held>, record: &Record) -> bool {
    held.is_none_or(|h| (record.modified, record.archived) > (h.modified, h.archived))
}

/// The records of a page the destination does not have yet, each id once, in order.
pub fn fresh<'r>(held: &HashMap<RecordId, Held>, records: &'r [Record]) -> Vec<&'r Record> {
    let mut seen = HashSet::with_capacity(records.len());
    records
        .iter()
        // The same record twice in one page (merged records in a batch read).
        .filter(|r| seen.insert(r.id))
        .filter(|r| is_news(held.get(&r.id).copied(), r))
        .collect()
}

/// Live versions HubSpot says are current now (`verify --repair`): news unless the
/// destination holds this version or a newer live one. Over a tombstone they win (the
/// record is live again), lifted above it so the ledger moves forward.
pub fn current(held: &HashMap<RecordId, Held>, records: Vec<Record>) -> Vec<Record> {
    records
        .into_iter()
        .filter_map(|mut r| match held.get(&r.id) {
            None => Some(r),
            Some(h) if h.archived => {
                r.modified = r.modified.max(Millis(h.modified.0 + 1));
                Some(r)
            }
            Some(h) => (r.modified > h.modified).then_some(r),
        })
        .collect()
}

/// Tombstones for records HubSpot says are gone now (the archived listing, `verify`'s
/// extras): news unless the destination already holds a tombstone at least as new. A
/// tombstone older than the live version held (clocks disagree) is moved up to it, so
/// that it wins and the ledger never goes back.
pub fn gone(held: &HashMap<RecordId, Held>, tombstones: Vec<Record>) -> Vec<Record> {
    tombstones
        .into_iter()
        .filter_map(|mut t| match held.get(&t.id) {
            None => Some(t),
            Some(h) if !h.archived => {
                t.modified = t.modified.max(h.modified);
                Some(t)
            }
            Some(h) => (t.modified > h.modified).then_some(t),
        })
        .collect()
}

/// The ids `winners` list in `hs_merged_object_ids` (records merged into them), with
/// the winner, each once.
pub fn merged_ids<'r>(winners: &[&'r Record]) -> Vec<(RecordId, &'r Record)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for winner in winners {
        let Some(list) = winner
            .properties
            .get("hs_merged_object_ids")
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        for id in list.split(';').filter_map(|s| s.trim().parse::<u64>().ok()) {
            let id = RecordId(id);
            if id != winner.id && seen.insert(id) {
                out.push((id, *winner));
            }
        }
    }
    out
}

/// Tombstones for the merged-away records the destination holds live, each pointing at
/// its winner and timed at the winner's version (the merge).
pub fn merge_tombstones(
    held: &HashMap<RecordId, Held>,
    merged: &[(RecordId, &Record)],
) -> Vec<Record> {
    merged
        .iter()
        .filter_map(|(id, winner)| {
            let h = held.get(id)?;
            (!h.archived)
                .then(|| Record::tombstone(*id, winner.modified.max(h.modified), Some(winner.id)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    fn live(id: u64, modified: i64) -> Record {
        Record {
            id: RecordId(id),
            modified: Millis(modified),
            properties: Map::new(),
            created_at: String::new(),
            updated_at: String::new(),
            archived: false,
            archived_at: None,
            merged_into: None,
        }
    }

    fn held(entries: &[(u64, i64, bool)]) -> HashMap<RecordId, Held> {
        entries
            .iter()
            .map(|&(id, m, archived)| {
                (
                    RecordId(id),
                    Held {
                        modified: Millis(m),
                        archived,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn versions_are_news_when_newer_and_tombstones_win_ties() {
        let h = held(&[(1, 10, false), (2, 10, false), (3, 10, true), (4, 10, true)]);
        let page = [
            live(1, 10),                                      // same version: not news
            live(2, 11),                                      // newer: news
            live(3, 10), // live at the tombstone's ms: not news
            live(4, 12), // restored: news
            live(5, 1),  // never held: news
            live(5, 1),  // twice in a page: once
            Record::tombstone(RecordId(1), Millis(10), None), // deleted at the same ms: news
        ];
        let ids: Vec<(u64, bool)> = fresh(&h, &page)
            .iter()
            .map(|r| (r.id.0, r.archived))
            .collect();
        assert_eq!(ids, [(2, false), (4, false), (5, false)]);
        let tie = [Record::tombstone(RecordId(2), Millis(10), None)];
        assert_eq!(fresh(&h, &tie).len(), 1, "a tombstone wins a tie");
    }

    #[test]
    fn gone_records_override_live_versions_whatever_the_clock() {
        let h = held(&[(1, 50, false), (2, 10, true), (3, 10, true)]);
        let tombstones = vec![
            Record::tombstone(RecordId(1), Millis(40), None), // older than the live version
            Record::tombstone(RecordId(2), Millis(10), None), // already told
            Record::tombstone(RecordId(3), Millis(20), None), // deleted again after a restore
            Record::tombstone(RecordId(4), Millis(5), None),  // never held
        ];
        let got: Vec<(u64, i64)> = gone(&h, tombstones)
            .iter()
            .map(|t| (t.id.0, t.modified.0))
            .collect();
        assert_eq!(got, [(1, 50), (3, 20), (4, 5)]);
    }

    #[test]
    fn current_versions_win_over_tombstones_and_lose_to_newer_versions() {
        let h = held(&[(1, 10, true), (2, 10, false), (3, 10, false)]);
        let got: Vec<(u64, i64)> =
            current(&h, vec![live(1, 5), live(2, 10), live(3, 11), live(4, 1)])
                .iter()
                .map(|r| (r.id.0, r.modified.0))
                .collect();
        assert_eq!(got, [(1, 11), (3, 11), (4, 1)]);
    }

    #[test]
    fn merged_away_records_held_live_get_tombstones_pointing_at_the_winner() {
        let mut winner = live(9, 100);
        winner
            .properties
            .insert("hs_merged_object_ids".into(), Value::from("3;4;5;9"));
        let winners = [&winner];
        let merged = merged_ids(&winners);
        assert_eq!(
            merged.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let h = held(&[(3, 50, false), (4, 50, true)]);
        let tombstones = merge_tombstones(&h, &merged);
        assert_eq!(tombstones.len(), 1, "only the one held live");
        assert_eq!(tombstones[0].id, RecordId(3));
        assert_eq!(tombstones[0].merged_into, Some(RecordId(9)));
        assert_eq!(tombstones[0].modified, Millis(100));
    }
}
