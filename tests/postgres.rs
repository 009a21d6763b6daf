//! `--sink postgres://`: the real binary into a real Postgres, started by the tests
//! (`support/postgres.rs`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::support::postgres::{Database, server};
use crate::support::{Env, TOKEN};

/// `poll contacts` into `db`.
fn poll(env: &Env, db: &Database, extra: &[&str]) -> crate::support::Cmd {
    let mut args = vec!["poll", "contacts", "--settle", "0s", "--sink", &db.url];
    args.extend_from_slice(extra);
    env.cmd(&args)
}

/// Where the kill tests keep the state.
#[derive(Clone, Copy)]
enum StateIn {
    File,
    /// The database the rows go to.
    Postgres,
}

impl StateIn {
    /// `cmd` with the state there.
    fn on(self, cmd: crate::support::Cmd, db: &Database) -> crate::support::Cmd {
        match self {
            StateIn::File => cmd,
            StateIn::Postgres => {
                let (url, password) = db.split_url();
                cmd.env("MARTECH_SYNC_DB", &url)
                    .env("PGPASSWORD", &password)
            }
        }
    }
}

/// The rows of `hubspot.contacts`: id → (updated_at in ms, archived, merged_into).
async fn rows(db: &Database) -> BTreeMap<u64, (i64, bool, Option<i64>)> {
    let client = db.client().await;
    client
        .query(
            "SELECT id, (extract(epoch FROM updated_at) * 1000)::int8, archived, merged_into
             FROM hubspot.contacts",
            &[],
        )
        .await
        .expect("reading hubspot.contacts")
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (id as u64, (r.get(1), r.get(2), r.get(3)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_in_a_table_per_object_with_tombstones_and_the_password_never_shows() {
    let env = Env::contacts(300).await;
    let db = server().database().await;
    let first = poll(&env, &db, &["--json", "--deletes-every", "0"])
        .run()
        .await
        .success();
    assert_eq!(first.summary()["delivered"], 300);

    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT portal_id, properties->>'email', created_at IS NOT NULL, archived, synced_at IS NOT NULL
             FROM hubspot.contacts WHERE id = 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 62515, "the fake's portal id");
    assert!(
        row.get::<_, Option<String>>(1)
            .is_some_and(|e| e.contains('@'))
    );
    assert!(row.get::<_, bool>(2));
    assert!(!row.get::<_, bool>(3));
    assert!(row.get::<_, bool>(4));
    let versions: i32 = client
        .query_one("SELECT max(version) FROM hubspot._martech_sync_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
    assert_eq!(env.mock.calls("account_info"), 1);

    // Deletions and merges become tombstones; nothing else is written again.
    env.mock.archive("contacts", [3, 4]);
    let winner = env.mock.merge("contacts", 11, &[12]).unwrap();
    let second = poll(&env, &db, &["--json", "--deletes-every", "0"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(
        second["delivered"], 3,
        "the winner and two merge tombstones: {second}"
    );
    assert_eq!(second["deletes"]["tombstones"], 2, "{second}");
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 301, "300 and the merge's new record");
    for id in [3, 4, 11, 12] {
        assert!(rows[&id].1, "{id} archived");
    }
    assert_eq!(rows[&11].2, Some(winner as i64));
    assert_eq!(rows[&12].2, Some(winner as i64));
    assert!(!rows[&winner].1);
    let archived_props: Value = client
        .query_one("SELECT properties FROM hubspot.contacts WHERE id = 3", &[])
        .await
        .unwrap()
        .get::<_, Value>(0);
    assert!(
        archived_props.get("email").is_some(),
        "a tombstone keeps the last properties: {archived_props}"
    );
    assert_eq!(env.mock.calls("account_info"), 1, "the portal id is cached");

    // verify reads what the table holds; the state never shows the password.
    let verify = env
        .cmd(&["verify", "contacts", "--sink", &db.url, "--json"])
        .run()
        .await
        .success();
    let report: Value = serde_json::from_str(verify.stdout.trim()).unwrap();
    assert_eq!(report["outcome"], "match", "{report:#}");
    let status = env.cmd(&["status", "--json"]).run().await.success();
    let password = server().password();
    for out in [&first.stdout, &first.stderr, &verify.stderr, &status.stdout] {
        assert!(!out.contains(&password), "the password shows: {out}");
        assert!(!out.contains(TOKEN));
    }
    assert!(
        status.stdout.contains("(schema hubspot)"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_line_and_moves_no_cursor() {
    let env = Env::contacts(50).await;
    let db = server().database().await;
    let password = server().password();
    let wrong = db.url.replace(&password, "not-the-password");
    // The URL's password wins over PGPASSWORD.
    poll(&env, &db, &[])
        .env("PGPASSWORD", "unused")
        .run()
        .await
        .success();
    let before = env.object_status("contacts").await["cursorMs"].clone();
    env.mock.modify("contacts", [5]);
    let failed = env
        .cmd(&["poll", "contacts", "--settle", "0s", "--sink", &wrong])
        .run()
        .await;
    assert_eq!(
        failed.code,
        Some(78),
        "no rerun fixes a wrong password: {failed:?}"
    );
    let line = failed.error_line();
    assert!(line.contains("password authentication failed"), "{line}");
    assert!(
        !failed.stderr.contains("not-the-password"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        env.object_status("contacts").await["cursorMs"],
        before,
        "the same destination (the password is no part of its name), its cursor unmoved"
    );

    // A schema name that needs quoting is refused before anything runs.
    let bad = env
        .cmd(&[
            "poll",
            "contacts",
            "--sink",
            &db.url,
            "--pg-schema",
            "Robert'); DROP",
        ])
        .run()
        .await
        .code(2);
    assert!(bad.error_line().contains("--pg-schema"), "{}", bad.stderr);
}

/// An empty `hubspot.contacts` with the audit trigger, and a state that has forgotten
/// it: one record first, so that the table exists for the trigger, then a cursor reset.
async fn audited_from_nothing(env: &Env, db: &Database, state: StateIn) {
    state
        .on(poll(env, db, &["--until", "2024-01-01T00:00:01Z"]), db)
        .run()
        .await
        .success();
    db.audit_writes().await;
    let reset = env.cmd(&["cursor", "reset", "contacts", "--sink", &db.url, "--yes"]);
    state.on(reset, db).run().await.success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_12_times_while_records_change_lands_every_version_once() {
    killed_12_times(StateIn::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_12_times_with_the_state_in_postgres_too() {
    killed_12_times(StateIn::Postgres).await;
}

/// A 20k backfill into Postgres killed at 12 random instants while records change,
/// then run to the end: every id once at its latest version, no version written twice.
async fn killed_12_times(state: StateIn) {
    const N: u64 = 20_000;
    let env = Env::contacts(N).await;
    let db = server().database().await;
    audited_from_nothing(&env, &db, state).await;

    env.mock.knobs().latency = Duration::from_millis(15);
    let mut changed = Vec::new();
    let mut searches = env.mock.searches();
    for kill in 0..12u64 {
        let mut child = state
            .on(poll(&env, &db, &["--deletes-every", "0"]), &db)
            .spawn();
        // A random instant: a few searches in, plus a random part of one.
        searches += 2 + rand::random_range(0..6);
        env.mock.wait_for_searches(searches).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..15))).await;
        child.kill().await.expect("SIGKILL");
        let _ = child.wait().await;
        searches = env.mock.searches();
        // Records change between the runs, some the window already passed.
        let ids: Vec<u64> = (0..20).map(|i| 1 + (kill * 997 + i * 89) % N).collect();
        env.mock.modify("contacts", ids.iter().copied());
        changed.extend(ids);
    }
    env.mock.knobs().latency = Duration::ZERO;
    // The window the kills left open, then the one after it (the changes made since).
    for _ in 0..2 {
        state
            .on(poll(&env, &db, &["--deletes-every", "0"]), &db)
            .run()
            .await
            .success();
    }

    let rows = rows(&db).await;
    assert_eq!(rows.len() as u64, N, "every id once");
    {
        let store = env.mock.store();
        for (id, (updated, archived, _)) in &rows {
            let newest = store.get("contacts", *id).unwrap().modified.0;
            assert_eq!(*updated, newest, "id {id} holds its latest version");
            assert!(!archived);
        }
    }
    let client = db.client().await;
    let twice = db.written_twice().await;
    assert!(twice.is_empty(), "versions written twice: {twice:?}");
    let writes: i64 = client
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0);
    if let StateIn::Postgres = state {
        assert!(!env.db().exists(), "the state went to a file");
    }
    let distinct: HashMap<u64, ()> = changed.iter().map(|id| (*id, ())).collect();
    assert!(
        writes as u64 >= N && writes as u64 <= N + changed.len() as u64,
        "{writes} writes for {N} records and {} changes ({} ids)",
        changed.len(),
        distinct.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_postgres_committed_but_the_state_did_not_is_not_written_again() {
    const N: u64 = 3_000;
    let env = Env::contacts(N).await;
    let db = server().database().await;
    audited_from_nothing(&env, &db, StateIn::File).await;

    // Pages slow enough to take the state file's write lock between two of them.
    env.mock.knobs().latency = Duration::from_millis(50);
    let child = poll(&env, &db, &["--json", "--deletes-every", "0"]).spawn();
    let client = db.client().await;
    let written = || async {
        client
            .query_one("SELECT count(*) FROM audit", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let started = std::time::Instant::now();
    while written().await < 400 {
        assert!(started.elapsed() < Duration::from_secs(60), "no rows came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A backup or a sqlite3 shell holds the state's write lock past its busy timeout
    // (10 s): the next page reaches Postgres, its checkpoint cannot, and the run says so
    // and retries; killed then, it leaves a page Postgres holds and the state does not.
    let state = rusqlite::Connection::open(env.db()).unwrap();
    state.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut child = child;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the run warns first");
        if line.contains("the sink has the records but the state could not record them") {
            break;
        }
    }
    child.kill().await.expect("SIGKILL");
    let _ = child.wait().await;
    state.execute_batch("ROLLBACK").unwrap();
    drop(state);
    let before = written().await;

    env.mock.knobs().latency = Duration::ZERO;
    let rerun = poll(&env, &db, &["--json", "--deletes-every", "0"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(rerun["resumed"], true, "{rerun}");
    assert!(
        rerun["skipped"].as_u64().unwrap() > 0,
        "the page Postgres holds but the state never checkpointed is read again and skipped: {rerun}"
    );
    assert_eq!(
        before as u64 + rerun["delivered"].as_u64().unwrap(),
        N,
        "{rerun}"
    );
    assert_eq!(written().await as u64, N, "a version written twice");
    assert_eq!(rows(&db).await.len() as u64, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portals_share_one_database_with_a_state_file_each() {
    let a = Env::contacts(100).await;
    let b = Env::contacts(150).await;
    b.mock.knobs().portal_id = 777;
    let db = server().database().await;
    poll(&a, &db, &[]).run().await.success();
    poll(&b, &db, &[]).run().await.success();
    let client = db.client().await;
    let by_portal = || async {
        client
            .query(
                "SELECT portal_id, count(*) FROM hubspot.contacts GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    assert_eq!(by_portal().await, [(777, 150), (62515, 100)]);

    // A change in one portal reaches its rows only.
    b.mock.modify("contacts", [7]);
    let summary = poll(&b, &db, &["--json"]).run().await.success().summary();
    assert_eq!(summary["delivered"], 1, "{summary}");
    let summary = poll(&a, &db, &["--json"]).run().await.success().summary();
    assert_eq!(summary["delivered"], 0, "{summary}");
    let newest = |portal: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT (extract(epoch FROM updated_at) * 1000)::int8 FROM hubspot.contacts
                     WHERE portal_id = $1 AND id = 7",
                    &[&portal],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        newest(777).await,
        b.mock.store().get("contacts", 7).unwrap().modified.0
    );
    assert_eq!(
        newest(62515).await,
        a.mock.store().get("contacts", 7).unwrap().modified.0
    );

    // One state file cannot hold two portals' cursors for one sink: the second portal's
    // run would start from the first one's cursor.
    let before = a.object_status("contacts").await["cursorMs"].clone();
    let mixed = poll(&b, &db, &[])
        .env("MARTECH_SYNC_DB", a.db().to_str().unwrap())
        .run()
        .await
        .code(78);
    let line = mixed.error_line();
    assert!(
        line.contains("portal 62515") && line.contains("portal 777") && line.contains("--db"),
        "{line}"
    );
    assert_eq!(a.object_status("contacts").await["cursorMs"], before);
    assert_eq!(by_portal().await, [(777, 150), (62515, 100)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_only_usage_select_insert_and_update_loads_tables_an_admin_made() {
    let env = Env::contacts(120).await;
    let db = server().database().await;
    // The administrator (the cluster's superuser) makes the schema and table.
    poll(&env, &db, &["--until", "2024-01-01T00:00:01Z"])
        .run()
        .await
        .success();
    let role = format!("{}_sync", db.name);
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'limited-pw';
             GRANT USAGE ON SCHEMA hubspot TO {role};
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA hubspot TO {role};"
        ))
        .await
        .unwrap();
    let (_, host) = db.url.split_once('@').unwrap();
    let limited = format!("postgres://{role}:limited-pw@{host}");
    let summary = env
        .cmd(&[
            "poll", "contacts", "--settle", "0s", "--sink", &limited, "--json",
        ])
        .env("MARTECH_SYNC_DB", env.path("limited.db").to_str().unwrap())
        .run()
        .await
        .success()
        .summary();
    assert_eq!(summary["delivered"], 119, "{summary}");
    assert_eq!(rows(&db).await.len(), 120);

    // A table it may not write is one line and exit 78, not a retry for ever.
    db.client()
        .await
        .batch_execute(&format!(
            "REVOKE INSERT, UPDATE ON ALL TABLES IN SCHEMA hubspot FROM {role}"
        ))
        .await
        .unwrap();
    env.mock.modify("contacts", [3]);
    let refused = env
        .cmd(&["poll", "contacts", "--settle", "0s", "--sink", &limited])
        .env("MARTECH_SYNC_DB", env.path("limited.db").to_str().unwrap())
        .run()
        .await
        .code(78);
    let line = refused.error_line();
    assert!(line.contains("permission denied"), "{line}");
    assert!(!line.contains("limited-pw"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_and_odd_names_survive_the_state_and_a_nul_character_lands() {
    use martech_sync::mock::FakeRecord;
    let env = Env::contacts(50).await;
    let db = server().database().await;
    // The fake's HubSpot gives a property with a NUL character.
    {
        let mut store = env.mock.store();
        let mut properties = std::collections::BTreeMap::new();
        properties.insert("firstname".to_owned(), "nul\u{0}byte".to_owned());
        let at = crate::support::BASE.plus(Duration::from_secs(60));
        store.insert("contacts", FakeRecord::new(51, at, at, properties));
    }
    // sslmode=disable: the test cluster has no TLS, so a destination rebuilt from the
    // state without it would try TLS first (prefer) and still connect; with
    // sslmode=require it would fail. Read back, the mode must be the one given.
    let url = format!("{}?sslmode=disable", db.url);
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--sink",
        &url,
        "--destination",
        "warehouse",
    ])
    .run()
    .await
    .success();
    let status = env.cmd(&["status", "--json"]).run().await.success();
    assert!(
        status.stdout.contains("sslmode=disable"),
        "{}",
        status.stdout
    );
    let client = db.client().await;
    let nul: String = client
        .query_one(
            "SELECT properties->>'firstname' FROM hubspot.contacts WHERE id = 51",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nul, "nul\u{fffd}byte");

    // The destination by name alone: the sink comes back from the state, TLS setting
    // and all, with the password from PGPASSWORD.
    env.mock.modify("contacts", [5]);
    let summary = env
        .cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--destination",
            "warehouse",
            "--json",
        ])
        .env("PGPASSWORD", &server().password())
        .run()
        .await
        .success()
        .summary();
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert!(
        summary["destination"]
            .as_str()
            .is_some_and(|d| d == "warehouse"),
        "{summary}"
    );
    // Another portal's token for the same destination, under another spelling of the
    // URL, is still refused.
    env.mock.knobs().portal_id = 4242;
    let other_spelling = url.replace("127.0.0.1", "localhost");
    let state = rusqlite::Connection::open(env.db()).unwrap();
    state
        .execute("DELETE FROM meta WHERE key LIKE 'portal:%'", [])
        .unwrap();
    drop(state);
    let mixed = env
        .cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--sink",
            &other_spelling,
            "--destination",
            "warehouse",
        ])
        .run()
        .await
        .code(78);
    assert!(
        mixed.error_line().contains("portal 4242"),
        "{}",
        mixed.stderr
    );
}
