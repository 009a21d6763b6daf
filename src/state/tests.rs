//! The state's invariants, written once against [`Storage`] and run against every
//! backend (`backends()`).

use std::collections::BTreeMap;

use serde_json::Map;

use super::*;
use crate::report::Outcome;
use crate::window::Window;

/// A fresh state of each backend, with what keeps it alive.
fn backends() -> Vec<(tempfile::TempDir, State)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&dir.path().join("s.db")).unwrap();
    vec![(dir, sqlite)]
}

fn record(id: u64, modified: i64) -> Record {
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

fn contacts() -> ObjectType {
    "contacts".parse().unwrap()
}

fn sqlite_sink() -> Destination {
    Destination::named("sqlite", "sqlite")
}

/// A sync with a fresh main window open, and its run.
async fn started(state: &State) -> (Sync, RunId, RunReport) {
    let sync = state
        .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
        .await
        .unwrap();
    let window = Window {
        lo: Millis(0),
        hi: Millis(100),
    };
    let report = RunReport::start(&contacts(), "sqlite", window, false);
    let run = state.start_run(sync.id, Pass::Main, &report).await.unwrap();
    (sync, run, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_keeps_the_newest_version_and_tombstones_win_ties() {
    for (_dir, state) in backends() {
        let (sync, _, _) = started(&state).await;
        let first = [record(1, 10), record(2, 10)];
        let refs: Vec<&Record> = first.iter().collect();
        let checkpoint = Checkpoint {
            slice: 0,
            last_id: Some(RecordId(2)),
            done: false,
            records: 2,
            total: Some(2),
        };
        state
            .commit_page(sync.id, Pass::Main, checkpoint, &refs, RecordsTable::Write)
            .await
            .unwrap();
        let older = record(1, 5);
        let tombstone = Record::tombstone(RecordId(2), Millis(10), None);
        state
            .record_delivered(sync.id, &[&older, &tombstone], RecordsTable::Write)
            .await
            .unwrap();
        let held = state
            .held(sync.id, &[RecordId(1), RecordId(2), RecordId(3)])
            .await
            .unwrap();
        let got: BTreeMap<u64, (i64, bool)> = held
            .iter()
            .map(|(id, h)| (id.0, (h.modified.0, h.archived)))
            .collect();
        assert_eq!(got, BTreeMap::from([(1, (10, false)), (2, (10, true))]));
        let open = state
            .open_window(sync.id, Pass::Main)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(open.slices[0].last_id, Some(RecordId(2)));
        let page = state.ledger_page(sync.id, None, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.id.0).collect::<Vec<_>>(), [1, 2]);
        let rest = state
            .ledger_page(sync.id, Some(RecordId(1)), 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_with_an_unfinished_slice_does_not_commit() {
    for (_dir, state) in backends() {
        let (sync, run, mut report) = started(&state).await;
        report.finish(Outcome::Committed, None);
        let err = state
            .commit_window(sync.id, Pass::Main, Some(Millis(100)), run, &report)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("1 of 1 slices are not done"),
            "{err:#}"
        );
        let last = Checkpoint {
            slice: 0,
            last_id: None,
            done: true,
            records: 0,
            total: None,
        };
        state
            .commit_page(sync.id, Pass::Main, last, &[], RecordsTable::Write)
            .await
            .unwrap();
        state
            .commit_window(sync.id, Pass::Main, Some(Millis(100)), run, &report)
            .await
            .unwrap();
        let after = state.syncs(Some(&contacts())).await.unwrap();
        assert_eq!(after[0].cursor, Some(Millis(100)));
        assert!(
            state
                .open_window(sync.id, Pass::Main)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_have_their_own_cursors_windows_and_ledgers() {
    for (_dir, state) in backends() {
        let (sqlite, run, mut report) = started(&state).await;
        let jsonl = Destination::named("jsonl:/tmp/out.jsonl", "jsonl:/tmp/out.jsonl");
        let other = state
            .sync(&contacts(), &jsonl, Unassigned::Claim)
            .await
            .unwrap();
        assert_ne!(sqlite.id, other.id);
        let one = record(1, 10);
        let done = Checkpoint {
            slice: 0,
            last_id: Some(RecordId(1)),
            done: true,
            records: 1,
            total: None,
        };
        state
            .commit_page(sqlite.id, Pass::Main, done, &[&one], RecordsTable::Write)
            .await
            .unwrap();
        report.finish(Outcome::Committed, None);
        state
            .commit_window(sqlite.id, Pass::Main, Some(Millis(100)), run, &report)
            .await
            .unwrap();
        assert!(
            state
                .held(other.id, &[RecordId(1)])
                .await
                .unwrap()
                .is_empty()
        );
        let syncs = state.syncs(Some(&contacts())).await.unwrap();
        let cursors: Vec<(&str, Option<Millis>)> = syncs
            .iter()
            .map(|s| (s.destination.key(), s.cursor))
            .collect();
        assert_eq!(
            cursors,
            [
                ("jsonl:/tmp/out.jsonl", None),
                ("sqlite", Some(Millis(100)))
            ]
        );
        let status = state.status().await.unwrap();
        assert_eq!(status.len(), 2);
        // A recheck cursor moves with its own pass only.
        let window = Window {
            lo: Millis(0),
            hi: Millis(40),
        };
        let mut recheck = RunReport::start(&contacts(), "sqlite", window, false);
        let run = state
            .start_run(sqlite.id, Pass::Recheck, &recheck)
            .await
            .unwrap();
        state
            .commit_page(sqlite.id, Pass::Recheck, done, &[], RecordsTable::Write)
            .await
            .unwrap();
        recheck.finish(Outcome::Committed, None);
        state
            .commit_window(sqlite.id, Pass::Recheck, Some(Millis(40)), run, &recheck)
            .await
            .unwrap();
        let synced = state
            .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
            .await
            .unwrap();
        assert_eq!(
            (synced.cursor, synced.recheck),
            (Some(Millis(100)), Some(Millis(40)))
        );
        state.reset(synced.id, false).await.unwrap();
        let reset = state
            .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
            .await
            .unwrap();
        assert_eq!((reset.cursor, reset.recheck), (None, None));
        assert_eq!(state.held(reset.id, &[RecordId(1)]).await.unwrap().len(), 1);
        state.reset(reset.id, true).await.unwrap();
        assert!(
            state
                .held(reset.id, &[RecordId(1)])
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_sweeps_are_remembered_per_destination() {
    for (_dir, state) in backends() {
        let sync = state
            .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
            .await
            .unwrap();
        assert_eq!(sync.properties, None);
        let set = PropertySet::named(&["email", "lastmodifieddate"]);
        state.set_properties(sync.id, &set).await.unwrap();
        state.set_swept(sync.id, Millis(77)).await.unwrap();
        let again = state
            .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
            .await
            .unwrap();
        assert_eq!(again.properties, Some(set));
        assert_eq!(again.swept, Some(Millis(77)));
    }
}
