//! `--db postgres://`: the state in a real Postgres, shared by processes that have no
//! disk in common: two "machines" (separate working directories) exclude each other on
//! one sync, two portals keep their own cursors in one database, and three `serve`
//! processes drain one queue, each change delivered once.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::postgres::{Database, server};
use crate::support::{Env, TOKEN};
use crate::webhooks::{Serve, event};

/// `cmd` with its state in `db`, run from a directory of its own.
fn on(cmd: crate::support::Cmd, db: &Database, dir: &std::path::Path) -> crate::support::Cmd {
    let (url, password) = db.split_url();
    cmd.env("MARTECH_SYNC_DB", &url)
        .env("PGPASSWORD", &password)
        .current_dir(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_exclude_each_other_and_a_killed_holders_lock_frees_itself() {
    let env = Env::contacts(3_000).await;
    let db = server().database().await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["poll", "contacts", "--settle", "0s", "--sink", &db.url];

    // The first machine's run goes slowly: HubSpot takes 200 ms a page.
    env.mock.knobs().latency = Duration::from_millis(200);
    let mut holder = on(env.cmd(&args), &db, one.path()).spawn();
    env.mock.wait_for_searches(1).await;
    let refused = on(env.cmd(&args), &db, two.path()).run().await.code(75);
    let line = refused.error_line();
    let pid = holder.id().unwrap();
    assert!(
        line.contains(&format!("pid {pid}")) && line.contains("portal 62515"),
        "{line}"
    );
    assert!(!refused.stderr.contains(&db.split_url().1), "the password");

    // Killed, its lock is free again within 10 s; the second machine resumes the
    // window the first one left.
    holder.kill().await.expect("SIGKILL");
    let _ = holder.wait().await;
    env.mock.knobs().latency = Duration::ZERO;
    let killed = Instant::now();
    let summary = loop {
        let mut json = args.to_vec();
        json.push("--json");
        let out = on(env.cmd(&json), &db, two.path()).run().await;
        if out.code == Some(75) {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "the lock is still held 10 s after its holder died"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break out.success().summary();
    };
    assert_eq!(summary["resumed"], true, "{summary}");
    for dir in [one.path(), two.path()] {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "no state file or lock beside {}",
            dir.display()
        );
    }
    let rows: i64 = db.number("SELECT count(*) FROM hubspot.contacts").await;
    assert_eq!(rows, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portals_in_one_database_keep_their_own_cursors_and_status_shows_both() {
    let a = Env::contacts(100).await;
    let b = Env::contacts(150).await;
    b.mock.knobs().portal_id = 777;
    let db = server().database().await;
    let dir = tempfile::tempdir().unwrap();
    // Reading a database that holds no state yet creates nothing.
    let empty = on(a.cmd(&["status"]), &db, dir.path())
        .run()
        .await
        .success();
    assert!(empty.stdout.contains("No syncs yet"), "{}", empty.stdout);
    let schemas: i64 = db
        .number("SELECT count(*) FROM pg_namespace WHERE nspname = 'martech_sync'")
        .await;
    assert_eq!(schemas, 0, "status created the state");
    let poll = |env: &Env| {
        on(
            env.cmd(&[
                "poll", "contacts", "--settle", "0s", "--sink", &db.url, "--json",
            ]),
            &db,
            dir.path(),
        )
    };
    assert_eq!(poll(&a).run().await.success().summary()["delivered"], 100);
    assert_eq!(poll(&b).run().await.success().summary()["delivered"], 150);

    // `status` needs no token: every portal, grouped.
    let status = |extra: &[&str]| {
        let mut args = vec!["status"];
        args.extend_from_slice(extra);
        on(a.cmd(&args), &db, dir.path()).env_remove("HUBSPOT_TOKEN")
    };
    let json: Value =
        serde_json::from_str(&status(&["--json"]).run().await.success().stdout).unwrap();
    let portals: Vec<&Value> = json["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["portal"])
        .collect();
    assert_eq!(portals, [&Value::from(777), &Value::from(62515)], "{json}");
    let table = status(&[]).run().await.success().stdout;
    assert!(
        table.contains("Portal 777") && table.contains("Portal 62515"),
        "{table}"
    );
    assert!(
        table.contains("HubSpot requests today (UTC), all portals:"),
        "{table}"
    );
    assert!(!table.contains(TOKEN));
    let cursor_of = |json: &Value, portal: u64| {
        json["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["portal"] == portal)
            .unwrap()["cursorMs"]
            .clone()
    };
    let a_cursor = cursor_of(&json, 62515);

    // A change in one portal moves its cursor only.
    b.mock.modify("contacts", [7]);
    assert_eq!(poll(&b).run().await.success().summary()["delivered"], 1);
    let after: Value =
        serde_json::from_str(&status(&["--json"]).run().await.success().stdout).unwrap();
    assert_eq!(cursor_of(&after, 62515), a_cursor);
    assert_ne!(cursor_of(&after, 777), cursor_of(&json, 777));
    assert_eq!(poll(&a).run().await.success().summary()["delivered"], 0);

    // A command for one sync needs to know which portal.
    let ambiguous = on(a.cmd(&["cursor", "show", "contacts"]), &db, dir.path())
        .run()
        .await
        .code(2);
    assert!(
        ambiguous.error_line().contains("--portal"),
        "{}",
        ambiguous.stderr
    );
    let shown = on(
        a.cmd(&["cursor", "show", "contacts", "--portal", "777"]),
        &db,
        dir.path(),
    )
    .run()
    .await
    .success();
    assert_ne!(shown.stdout.trim(), "none");
    let typo = on(
        a.cmd(&["cursor", "show", "contacts", "--portal", "778"]),
        &db,
        dir.path(),
    )
    .run()
    .await
    .code(2);
    assert!(
        typo.error_line().contains("(it has: 777, 62515)"),
        "{}",
        typo.stderr
    );
    // A token of one portal with --portal of another is a mistake, not a new sync.
    let wrong = poll(&a)
        .env("MARTECH_SYNC_PORTAL", "777")
        .run()
        .await
        .code(78);
    assert!(
        wrong.error_line().contains("portal 62515"),
        "{}",
        wrong.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_receivers_on_one_queue_deliver_each_change_once() {
    const RECORDS: u64 = 1_000;
    let env = Env::contacts(RECORDS).await;
    let db = server().database().await;
    // Each row written is audited: a change delivered twice shows as two writes of one
    // (id, version).
    let dir = tempfile::tempdir().unwrap();
    on(
        env.cmd(&[
            "poll",
            "contacts",
            "--sink",
            &db.url,
            "--until",
            "2024-01-01T00:00:01Z",
        ]),
        &db,
        dir.path(),
    )
    .run()
    .await
    .success();
    db.audit_writes().await;

    let mut serves = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let serve =
            Serve::start_on(&env, &["--sink", &db.url], |cmd| on(cmd, &db, dir.path())).await;
        serves.push((serve, dir));
    }
    // 2,000 events, two per record, spread over the three receivers; a tenth of the
    // batches is sent again to another receiver (HubSpot's retries).
    let base = martech_sync::timestamp::Millis::now().0 - 60_000;
    let events: Vec<Value> = (1..=RECORDS)
        .flat_map(|id| {
            let at = base + i64::try_from(id).unwrap();
            [
                event(id, "creation", at, id),
                event(id, "propertyChange", at + 5, 10_000 + id),
            ]
        })
        .collect();
    let batches: Vec<String> = events
        .chunks(50)
        .map(|c| Value::from(c.to_vec()).to_string())
        .collect();
    for (i, body) in batches.iter().enumerate() {
        assert_eq!(serves[i % 3].0.send(body).await.0, 200);
        if i % 10 == 0 {
            assert_eq!(serves[(i + 1) % 3].0.send(body).await.0, 200);
        }
    }
    let started = Instant::now();
    loop {
        let rows: i64 = db.number("SELECT count(*) FROM hubspot.contacts").await;
        let queued: i64 = db
            .number("SELECT count(*) FROM martech_sync.webhook_events WHERE state <> 'done'")
            .await;
        if rows as u64 == RECORDS && queued == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{rows} rows, {queued} events not done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = db.written_twice().await;
    assert!(twice.is_empty(), "changes delivered twice: {twice:?}");
    let writes: i64 = db.number("SELECT count(*) FROM audit").await;
    assert_eq!(writes as u64, RECORDS, "each record's one change, once");
    let events: i64 = db
        .number("SELECT count(*) FROM martech_sync.webhook_events")
        .await;
    assert_eq!(events, 2_000, "redeliveries are one event");
    // A serve to another destination would split the queue's events: refused.
    let sink = format!("jsonl:{}", env.path("other.jsonl").display());
    let other = on(
        env.cmd(&["serve", "--listen", "127.0.0.1:0", "--sink", &sink])
            .env("HUBSPOT_CLIENT_SECRET", crate::webhooks::SECRET),
        &db,
        dir.path(),
    )
    .run()
    .await
    .code(78);
    assert!(
        other.error_line().contains("feeds destination"),
        "{}",
        other.stderr
    );
    for (serve, _) in serves {
        serve.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_session_ends_stops_and_the_next_one_resumes() {
    let env = Env::contacts(3_000).await;
    let db = server().database().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "poll", "contacts", "--settle", "0s", "--sink", &db.url, "--json",
    ];
    env.mock.knobs().latency = Duration::from_millis(200);
    let child = on(env.cmd(&args), &db, dir.path()).spawn();
    env.mock.wait_for_searches(2).await;
    // An administrator ends the lock's session (as a server restart would).
    let ended: i64 = db
        .number(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name LIKE 'martech-sync pid %' AND datname = current_database()",
        )
        .await;
    assert_eq!(ended, 1);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the run stops")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lost the lock of contacts"), "{stderr}");
    env.mock.knobs().latency = Duration::ZERO;
    let rerun = on(env.cmd(&args), &db, dir.path())
        .run()
        .await
        .success()
        .summary();
    assert_eq!(rerun["resumed"], true, "{rerun}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_whose_poll_lock_session_ends_exits_non_zero() {
    let env = Env::contacts(200).await;
    let db = server().database().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_on(&env, &["--sink", &db.url, "--poll", "contacts"], |cmd| {
        on(cmd, &db, dir.path())
    })
    .await;
    // A server restart or an administrator ends the lock's session.
    let started = Instant::now();
    loop {
        let ended: i64 = db
            .number(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name LIKE 'martech-sync pid %' AND datname = current_database()",
            )
            .await;
        if ended == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no lock session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = serve.exited(Duration::from_secs(15)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the lock of a sync was lost"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_their_checkpoint_commit_together_in_one_database() {
    let env = Env::contacts(3_000).await;
    let db = server().database().await;
    let dir = tempfile::tempdir().unwrap();
    let poll = |extra: &[&str]| {
        let mut args = vec!["poll", "contacts", "--settle", "0s", "--sink", &db.url];
        args.extend_from_slice(extra);
        on(env.cmd(&args), &db, dir.path())
    };
    poll(&["--until", "2024-01-01T00:00:01Z"])
        .run()
        .await
        .success();
    on(
        env.cmd(&["cursor", "reset", "contacts", "--sink", &db.url, "--yes"]),
        &db,
        dir.path(),
    )
    .run()
    .await
    .success();
    // The state refuses the checkpoint of the page past id 1,000: the rows of that
    // page must not stay behind without it.
    let client = db.client().await;
    client
        .batch_execute(
            "TRUNCATE hubspot.contacts;
             CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'checkpoint refused'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON martech_sync.slices
                 FOR EACH ROW WHEN (NEW.last_id > 1000) EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let failed = poll(&["--json"]).run().await;
    assert_ne!(failed.code, Some(0), "{}", failed.stderr);
    let rows: i64 = db.number("SELECT count(*) FROM hubspot.contacts").await;
    let seen: i64 = db
        .number("SELECT seen FROM martech_sync.windows WHERE pass = 'main'")
        .await;
    assert!(rows > 0 && rows == seen, "{rows} rows, {seen} checkpointed");
    // Without the obstacle the run goes on from there and writes every row once.
    client
        .batch_execute("DROP TRIGGER refuse ON martech_sync.slices")
        .await
        .unwrap();
    let summary = poll(&["--json"]).run().await.success().summary();
    assert_eq!(summary["resumed"], true, "{summary}");
    let rows: i64 = db.number("SELECT count(*) FROM hubspot.contacts").await;
    assert_eq!(rows, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_db_url_warns_and_never_shows() {
    let env = Env::contacts(10).await;
    let db = server().database().await;
    let (_, password) = db.split_url();
    let out = env
        .cmd(&["status"])
        .env("MARTECH_SYNC_DB", &db.url)
        .run()
        .await
        .success();
    assert!(
        out.stderr.contains("--db holds a password") && out.stderr.contains("PGPASSWORD"),
        "{}",
        out.stderr
    );
    assert!(!format!("{}{}", out.stdout, out.stderr).contains(&password));
    // --portal means nothing to a state file: said, not silently dropped.
    env.poll(&[]).run().await.success();
    let file = env.cmd(&["status", "--portal", "5"]).run().await.success();
    assert!(
        file.stderr.contains("--portal 5 is ignored"),
        "{}",
        file.stderr
    );
}
