//! The state's invariants, written once against [`Storage`] and run against every
//! backend (`backends()`).

use std::collections::BTreeMap;

use serde_json::Map;

use super::*;
use crate::report::Outcome;
use crate::window::Window;

#[path = "../../tests/support/postgres.rs"]
mod cluster;

/// The portal the Postgres state's handles are narrowed to.
const PORTAL: u64 = 62515;

/// A fresh state of each backend (a SQLite file, and a Postgres database of the
/// throwaway cluster the tests start), with what keeps it alive.
async fn backends() -> Vec<(tempfile::TempDir, State)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&Location::File(dir.path().join("s.db")))
        .await
        .unwrap();
    vec![
        (dir, sqlite),
        (tempfile::tempdir().unwrap(), postgres().await),
    ]
}

/// A Postgres state in a database of its own, narrowed to [`PORTAL`].
async fn postgres() -> State {
    let state = open(&pg_location().await).await.unwrap();
    for_portal(state, Some(PORTAL))
}

async fn pg_location() -> Location {
    pg_database().await.0
}

/// A database of its own: where the state goes, and its URL with the password.
async fn pg_database() -> (Location, String) {
    let db = cluster::server().database().await;
    (
        Location::Postgres(Box::new(db.url.parse().unwrap())),
        db.url,
    )
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
    for (_dir, state) in backends().await {
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
    for (_dir, state) in backends().await {
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
    for (_dir, state) in backends().await {
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
    for (_dir, state) in backends().await {
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

fn event(id: u64, occurred: i64, portal: u64) -> Event {
    let body = format!(
        r#"[{{"eventId":{id},"subscriptionId":1,"portalId":{portal},"occurredAt":{occurred},"subscriptionType":"contact.propertyChange","objectId":{id},"propertyName":"email"}}]"#
    );
    crate::webhook::event::parse_batch(body.as_bytes())
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_ignores_redeliveries_retries_and_gives_up() {
    for (_dir, state) in backends().await {
        let events = [event(1, 10, PORTAL), event(2, 5, PORTAL)];
        assert_eq!(state.enqueue(&events, Millis(100)).await.unwrap(), 2);
        assert_eq!(state.enqueue(&events, Millis(101)).await.unwrap(), 0);
        let due = state.due_events(Millis(200), 10, &[]).await.unwrap();
        let ids: Vec<u64> = due.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 1], "oldest occurredAt first");
        // Event 2 fails for good after two attempts; event 1 is delivered.
        let two = [due[0].key.clone()];
        state
            .events_failed(&two, "boom", Millis(0), 2)
            .await
            .unwrap();
        state.release_events(&two).await.unwrap();
        state
            .events_failed(&two, "boom", Millis(0), 2)
            .await
            .unwrap();
        let (sync, _, _) = started(&state).await;
        let delivered = record(1, 10);
        state
            .commit_events(
                sync.id,
                &[&delivered],
                RecordsTable::Skip,
                &[due[1].key.clone()],
            )
            .await
            .unwrap();
        assert!(
            state
                .due_events(Millis(300), 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
        let dead = state.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].id, dead[0].attempts), (2, 2));
        assert_eq!(dead[0].last_error.as_deref(), Some("boom"));
        assert_eq!(state.retry_dead().await.unwrap(), 1);
        let depth = state.queue_depth().await.unwrap();
        assert_eq!((depth.queued, depth.dead), (1, 0));
        assert_eq!(state.held(sync.id, &[RecordId(1)]).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_event_goes_to_one_worker_until_released() {
    let (db, url) = pg_database().await;
    let one = for_portal(open(&db).await.unwrap(), Some(PORTAL));
    let two = for_portal(open(&db).await.unwrap(), Some(PORTAL));
    let other = for_portal(open(&db).await.unwrap(), Some(PORTAL + 1));
    let events: Vec<Event> = (1..=10)
        .map(|i| event(i, i64::try_from(i).unwrap(), PORTAL))
        .collect();
    one.enqueue(&events, Millis(1)).await.unwrap();
    let first = one.due_events(Millis(100), 6, &[]).await.unwrap();
    let second = two.due_events(Millis(100), 6, &[]).await.unwrap();
    assert_eq!((first.len(), second.len()), (6, 4));
    assert!(first.iter().all(|a| second.iter().all(|b| a.key != b.key)));
    assert!(
        other
            .due_events(Millis(100), 10, &[])
            .await
            .unwrap()
            .is_empty(),
        "another portal's worker takes none"
    );
    let keys: Vec<String> = first.iter().map(|e| e.key.clone()).collect();
    one.release_events(&keys).await.unwrap();
    assert_eq!(two.due_events(Millis(100), 10, &[]).await.unwrap().len(), 6);
    // A claim whose worker died runs out (by the server's clock: aged here).
    let admin = cluster::connect(&url).await;
    admin
        .execute(
            "UPDATE martech_sync.webhook_events SET claimed_until = claimed_until - 61000",
            &[],
        )
        .await
        .unwrap();
    let all = one.due_events(Millis(100), 10, &[]).await.unwrap();
    assert_eq!(all.len(), 10);
    // A retry an hour out (by the server's clock) is not due; the others are again.
    let keys: Vec<String> = all.iter().map(|e| e.key.clone()).collect();
    one.release_events(&keys).await.unwrap();
    let hour = Millis(Millis::now().0 + 3_600_000);
    one.events_failed(&keys[..1], "later", hour, 5)
        .await
        .unwrap();
    assert_eq!(two.due_events(Millis(100), 10, &[]).await.unwrap().len(), 9);
    // An event that does not say its portal cannot be told apart: dropped.
    let mut anonymous = event(11, 11, PORTAL);
    anonymous.portal = None;
    assert_eq!(one.enqueue(&[anonymous], Millis(1)).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_not_recorded_while_another_process_holds_the_lock() {
    let (db, url) = pg_database().await;
    let state = for_portal(open(&db).await.unwrap(), Some(PORTAL));
    let (sync, _, _) = started(&state).await;
    let page = [record(1, 10)];
    let refs: Vec<&Record> = page.iter().collect();
    let checkpoint = Checkpoint {
        slice: 0,
        last_id: Some(RecordId(1)),
        done: false,
        records: 1,
        total: None,
    };
    // Another process (another application name) takes the sync's lock.
    let other = cluster::connect(&url).await;
    let id = crate::lock::advisory_id(Some(PORTAL), "contacts", "sqlite");
    other
        .batch_execute("SET application_name = 'martech-sync pid 1 on elsewhere'")
        .await
        .unwrap();
    other
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .await
        .unwrap();
    let err = state
        .commit_page(sync.id, Pass::Main, checkpoint, &refs, RecordsTable::Skip)
        .await
        .unwrap_err();
    assert!(err.is::<postgres::LockLost>(), "{err:#}");
    assert!(format!("{err:#}").contains("pid 1 on elsewhere"), "{err:#}");
    assert!(
        state
            .held(sync.id, &[RecordId(1)])
            .await
            .unwrap()
            .is_empty()
    );
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&id])
        .await
        .unwrap();
    state
        .commit_page(sync.id, Pass::Main, checkpoint, &refs, RecordsTable::Skip)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_in_one_postgres_state_keep_their_own_syncs() {
    let db = pg_location().await;
    let whole = open(&db).await.unwrap();
    let a = for_portal(Arc::clone(&whole), Some(1));
    let b = for_portal(Arc::clone(&whole), Some(2));
    let sa = a
        .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
        .await
        .unwrap();
    let sb = b
        .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
        .await
        .unwrap();
    assert_ne!(sa.id, sb.id);
    a.set_cursor(sa.id, Millis(5)).await.unwrap();
    assert_eq!(b.syncs(None).await.unwrap()[0].cursor, None);
    assert_eq!(a.syncs(None).await.unwrap()[0].cursor, Some(Millis(5)));
    a.add_requests("2026-12-06", 3).await.unwrap();
    assert_eq!(b.requests_on("2026-12-06").await.unwrap(), 0);
    assert_eq!(whole.portals().await.unwrap(), [1, 2]);
    let status = whole.status().await.unwrap();
    let portals: Vec<Option<u64>> = status.iter().map(|s| s.portal).collect();
    assert_eq!(portals, [Some(1), Some(2)]);
    assert!(
        whole
            .sync(&contacts(), &sqlite_sink(), Unassigned::Claim)
            .await
            .unwrap_err()
            .is::<postgres::NoPortal>(),
        "an unnarrowed handle writes no portal's sync"
    );
}
