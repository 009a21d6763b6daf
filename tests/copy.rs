//! The copy matches HubSpot: deletions, restores and merges reach the destination, every
//! destination has its own state, property lists that grow are not a silent no-op, a
//! late index is caught by the recheck pass, time is sane, the daily limit stops a run,
//! and `verify` proves (or repairs) the copy.

use std::time::Duration;

use martech_sync::timestamp::Millis;
use serde_json::Value;

use crate::support::{BASE, Env, id_counts};

/// The `records` rows of the default sink: id → (archived, archived_at).
fn sqlite_records(env: &Env) -> std::collections::BTreeMap<u64, (bool, Option<String>)> {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, archived, archived_at FROM records WHERE object = 'contacts'")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            u64::try_from(r.get::<_, i64>(0)?).unwrap(),
            (r.get(1)?, r.get(2)?),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn tombstones(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["archived"] == true).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_reach_every_destination_and_a_restore_comes_back_live() {
    let env = Env::contacts(500).await;
    let both = |extra: &'static [&'static str]| {
        let jsonl = env.poll(&[&["--deletes-every", "0"], extra].concat());
        let sqlite = env.cmd(
            &[
                &["poll", "contacts", "--settle", "0s", "--deletes-every", "0"][..],
                extra,
            ]
            .concat(),
        );
        (jsonl, sqlite)
    };
    for cmd in <[_; 2]>::from(both(&[])) {
        cmd.run().await.success();
    }
    assert_eq!(env.lines("out.jsonl").len(), 500);

    let deleted: Vec<u64> = (1..=500).step_by(10).collect();
    assert_eq!(deleted.len(), 50);
    env.mock.archive("contacts", deleted.clone());
    let (jsonl, sqlite) = both(&["--json"]);
    let summary = jsonl.run().await.success().summary();
    sqlite.run().await.success();

    assert_eq!(summary["deletes"]["archived"], 50);
    assert_eq!(summary["deletes"]["tombstones"], 50);
    let lines = env.lines("out.jsonl");
    let gone = tombstones(&lines);
    let mut ids: Vec<u64> = gone
        .iter()
        .map(|l| l["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, deleted, "one tombstone per deleted record");
    for t in &gone {
        assert!(t["archivedAt"].is_string(), "{t}");
        assert_eq!(t["updatedAt"], t["archivedAt"], "{t}");
        assert_eq!(t["properties"], serde_json::json!({}));
    }
    let rows = sqlite_records(&env);
    assert_eq!(rows.len(), 500, "the sqlite sink keeps deleted rows");
    let archived: Vec<u64> = rows
        .iter()
        .filter(|(_, (a, at))| *a && at.is_some())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(archived, deleted, "50 rows marked archived, with the time");

    // One comes back; nothing else moves, and the sweep does not repeat itself.
    env.mock.restore("contacts", [11]);
    let (jsonl, sqlite) = both(&["--json"]);
    let summary = jsonl.run().await.success().summary();
    sqlite.run().await.success();
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert_eq!(summary["deletes"]["tombstones"], 0);
    let lines = env.lines("out.jsonl");
    assert_eq!(lines.len(), 551);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["id"].as_str(), &last["archived"]),
        (Some("11"), &Value::Bool(false))
    );
    assert_eq!(sqlite_records(&env)[&11], (false, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_records_are_tombstoned_into_their_winner() {
    let env = Env::contacts(300).await;
    env.poll(&[]).run().await.success();
    // Ten merges: record 2k into 2k-1. HubSpot makes a new record with a new id.
    let winners: Vec<(u64, u64, u64)> = (1..=10u64)
        .map(|k| {
            let (primary, other) = (2 * k - 1, 2 * k);
            let new = env.mock.merge("contacts", primary, &[other]).unwrap();
            (primary, other, new)
        })
        .collect();

    let summary = env.poll(&["--json"]).run().await.success().summary();

    let lines = env.lines("out.jsonl");
    let new_lines = &lines[300..];
    assert_eq!(summary["delivered"], 30, "10 winners and 20 tombstones");
    for (primary, other, new) in winners {
        let winner: Vec<&Value> = new_lines
            .iter()
            .filter(|l| crate::support::id_of(l) == new)
            .collect();
        assert_eq!(winner.len(), 1, "winner {new} delivered once");
        assert_eq!(winner[0]["archived"], false);
        let ids = winner[0]["properties"]["hs_merged_object_ids"]
            .as_str()
            .unwrap();
        assert_eq!(ids, format!("{primary};{other}"));
        for loser in [primary, other] {
            let t: Vec<&Value> = new_lines
                .iter()
                .filter(|l| crate::support::id_of(l) == loser)
                .collect();
            assert_eq!(t.len(), 1, "loser {loser} tombstoned once");
            assert_eq!(t[0]["archived"], true);
            assert_eq!(t[0]["mergedInto"], new.to_string());
        }
    }
    // A merged record that the destination never held gets nothing.
    env.poll(&[]).run().await.success();
    assert_eq!(env.lines("out.jsonl").len(), 330);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_destination_gets_everything_and_a_growing_property_list_needs_refresh() {
    let env = Env::contacts(400).await;
    env.mock.knobs().extra_properties = 20;
    env.cmd(&["poll", "contacts", "--settle", "0s"])
        .run()
        .await
        .success();
    let new = format!("jsonl:{}", env.path("new.jsonl").display());
    let poll_new = |extra: &[&str]| {
        let mut args = vec!["poll", "contacts", "--settle", "0s", "--sink", &new];
        args.extend_from_slice(extra);
        env.cmd(&args)
    };

    let first = poll_new(&["--json"]).run().await.success();
    assert!(
        first.stderr.contains("a new destination for contacts") && first.stderr.contains("sqlite"),
        "a second destination of an object is said aloud: {}",
        first.stderr
    );
    let first = first.summary();
    assert_eq!(first["delivered"], 400, "a new destination is a first run");
    assert_eq!(env.lines("new.jsonl").len(), 400);

    let refused = poll_new(&["--all-properties"]).run().await.code(2);
    let line = refused.error_line();
    assert!(line.contains("--refresh"), "{line}");
    assert!(line.contains("never given"), "{line}");
    assert_eq!(env.lines("new.jsonl").len(), 400, "nothing delivered");

    let refreshed = poll_new(&["--all-properties", "--refresh", "--json"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(refreshed["delivered"], 400);
    assert_eq!(refreshed["refresh"], true);
    let lines = env.lines("new.jsonl");
    assert_eq!(lines.len(), 800);
    for line in &lines[400..] {
        assert!(
            line["properties"]
                .as_object()
                .unwrap()
                .contains_key("custom_property_020"),
            "{line}"
        );
    }
    // Now it has every property: the same run is routine, a smaller list just runs, and
    // going back to every property needs no refresh (it was given them).
    poll_new(&["--all-properties"]).run().await.success();
    poll_new(&["--properties", "email"]).run().await.success();
    poll_new(&["--all-properties"]).run().await.success();
    // A --refresh left in a crontab does nothing once the list did not grow.
    let again = poll_new(&["--all-properties", "--refresh", "--json"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(
        (&again["delivered"], &again["refresh"]),
        (&Value::from(0), &Value::Null)
    );
    assert_eq!(env.lines("new.jsonl").len(), 800);

    // Every (object, destination) in status.
    let status = env.status().await;
    let destinations: Vec<&str> = status["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["destination"].as_str().unwrap())
        .collect();
    assert_eq!(destinations.len(), 2, "{status:#}");
    assert!(destinations.contains(&"sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_commands_refuse_to_guess_between_destinations() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    // One destination: no need to say which.
    let shown = env
        .cmd(&["cursor", "show", "contacts"])
        .run()
        .await
        .success();
    assert_ne!(shown.stdout.trim(), "none");
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--destination",
        "warehouse",
    ])
    .run()
    .await
    .success();
    for args in [
        &["cursor", "show", "contacts"][..],
        &["cursor", "set", "contacts", "2024-01-01"],
        &["cursor", "reset", "contacts", "--yes"],
    ] {
        let out = env.cmd(args).run().await.code(2);
        assert!(
            out.error_line().contains("2 destinations") && out.stderr.contains("warehouse"),
            "{}",
            out.stderr
        );
    }
    env.cmd(&[
        "cursor",
        "set",
        "contacts",
        "2024-01-01",
        "--destination",
        "warehouse",
    ])
    .run()
    .await
    .success();
    let shown = env
        .cmd(&["cursor", "show", "contacts", "--destination", "warehouse"])
        .run()
        .await
        .success();
    assert_eq!(shown.stdout.trim(), "2024-01-01T00:00:00.000Z");
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    let other = env
        .cmd(&["cursor", "show", "contacts", "--sink", &sink])
        .run()
        .await
        .success();
    assert_ne!(other.stdout.trim(), "2024-01-01T00:00:00.000Z");
    // A typo names no destination: refused, not created.
    let typo = env
        .cmd(&[
            "cursor",
            "set",
            "contacts",
            "2024-01-01",
            "--destination",
            "warehous",
        ])
        .run()
        .await
        .code(2);
    assert!(
        typo.error_line().contains("no destination `warehous`"),
        "{}",
        typo.stderr
    );
    assert_eq!(env.status().await["objects"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_with_two_names_is_refused_with_78() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    std::fs::hard_link(env.db(), env.path("copy.db")).unwrap();
    let out = env.poll(&[]).run().await.code(78);
    assert!(out.error_line().contains("2 hard links"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_not_a_state_file_is_refused_with_78() {
    let env = Env::contacts(10).await;
    {
        let conn = rusqlite::Connection::open(env.db()).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    let out = env.poll(&[]).run().await.code(78);
    assert!(
        out.error_line().contains("not a martech-sync state file"),
        "{}",
        out.stderr
    );
    std::fs::write(env.db(), b"just some text, not SQLite at all").unwrap();
    let out = env.cmd(&["status"]).run().await.code(78);
    assert!(
        out.error_line().contains("not a martech-sync state file"),
        "{}",
        out.stderr
    );
    let out = env
        .cmd(&["--db", "/nonexistent-dir/state.db", "poll", "contacts"])
        .run()
        .await
        .code(78);
    assert!(
        out.error_line().contains("/nonexistent-dir/state.db")
            && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_later_than_now_are_refused_and_a_clock_jump_goes_red() {
    let env = Env::contacts(100).await;
    env.cmd(&["cursor", "set", "contacts", "2030-01-01"])
        .run()
        .await
        .code(2);
    let since = env.poll(&["--since", "2030-01-01"]).run().await.code(2);
    assert!(
        since.error_line().contains("later than now"),
        "{}",
        since.stderr
    );
    assert!(!env.db().exists(), "a usage error touched the state file");

    env.poll(&[]).run().await.success();
    // The clock jumped back a day after the last run.
    let ahead = Millis::now().plus(Duration::from_secs(86_400)).0;
    rusqlite::Connection::open(env.db())
        .unwrap()
        .execute("UPDATE syncs SET cursor_ms = ?1", [ahead])
        .unwrap();
    let failed = env.poll(&[]).run().await.code(1);
    let line = failed.error_line();
    assert!(line.contains("ahead of this machine's clock"), "{line}");
    assert!(line.contains("cursor set contacts"), "{line}");
    let stale = env
        .cmd(&["status", "--stale-after", "1h"])
        .run()
        .await
        .code(1);
    assert!(stale.stderr.contains("in the future"), "{}", stale.stderr);

    // After a reset, the next poll reads all history whatever ran in between.
    env.cmd(&["cursor", "reset", "contacts", "--yes"])
        .run()
        .await
        .success();
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    env.cmd(&["reconcile", "contacts", "--lookback", "6h", "--sink", &sink])
        .run()
        .await
        .success();
    assert!(env.object_status("contacts").await["cursor"].is_null());
    let poll = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(poll["window"]["lo"], "1970-01-01T00:00:01.000Z");
    assert_eq!(poll["seen"], 100, "all history read again");
    assert_eq!(
        poll["delivered"], 0,
        "versions already delivered are skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_pass_catches_what_a_late_index_hid_from_the_window() {
    let env = Env::contacts(1_000).await;
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    let poll = |recheck: &str| {
        env.cmd(&[
            "poll",
            "contacts",
            "--sink",
            &sink,
            "--settle",
            "1s",
            "--overlap",
            "2s",
            "--recheck",
            recheck,
            "--json",
        ])
    };
    poll("1h").run().await.success();
    // 100 records changed 26 s ago; the index showed them only 20 s later, so every
    // window that ran in between saw their old versions, and the windows since start
    // after them: the plain window has passed them for good.
    let changed: Vec<u64> = (1..=1_000).step_by(10).collect();
    let at = Millis::now().minus(Duration::from_secs(26));
    {
        let mut store = env.mock.store();
        for id in &changed {
            store.touch_at("contacts", *id, at, at.plus(Duration::from_secs(20)));
        }
    }
    let plain = poll("0").run().await.success().summary();
    assert_eq!(plain["delivered"], 0, "the plain window misses them");

    let rechecked = poll("25s").run().await.success().summary();
    assert_eq!(rechecked["delivered"], 0);
    assert_eq!(rechecked["recheck"]["delivered"], 100, "{rechecked}");
    let again = poll("25s").run().await.success().summary();
    assert_eq!(again["recheck"]["delivered"], 0);

    let counts = id_counts(&env.lines("out.jsonl"));
    for id in changed {
        assert_eq!(
            counts[&id], 2,
            "record {id}: the first version and the late one, once each"
        );
    }
    let status = env.object_status("contacts").await;
    assert!(status["recheckCursor"].is_string(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_and_repair_fixes_it() {
    let env = Env::contacts(2_000).await;
    let hidden: Vec<u64> = (1..=2_000).step_by(5).take(300).collect();
    {
        let mut store = env.mock.store();
        for id in &hidden {
            store.hide_from_search("contacts", *id);
        }
    }
    // Not a backfill (whose list part reads past the index): search alone misses them.
    env.poll(&["--since", "2000-01-01"]).run().await.success();
    assert_eq!(env.lines("out.jsonl").len(), 1_700);
    let deleted: Vec<u64> = (2..=2_000).step_by(50).take(20).collect();
    {
        let mut store = env.mock.store();
        for id in &deleted {
            assert!(store.delete_for_good("contacts", *id));
        }
    }
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    let verify = |repair: bool| {
        // The object's only destination needs no --sink.
        let mut args = vec!["verify", "contacts", "--json"];
        if repair {
            args.push("--repair");
        }
        env.cmd(&args)
    };

    let drift = verify(false).run().await.code(3);
    let report: Value = serde_json::from_str(drift.stdout.trim()).unwrap();
    assert_eq!(report["outcome"], "drift");
    assert_eq!(
        (
            &report["checked"],
            &report["missing"],
            &report["stale"],
            &report["extra"]
        ),
        (
            &Value::from(1_980),
            &Value::from(300),
            &Value::from(0),
            &Value::from(20)
        ),
        "{report:#}"
    );
    assert_eq!(report["examples"]["missing"][0], hidden[0].to_string());
    let line = drift.error_line();
    assert!(line.contains("300 missing"), "{line}");
    assert!(
        line.contains(&format!("--sink '{sink}' --repair")),
        "the hint names the destination: {line}"
    );
    let lists = env.mock.calls("list");
    assert_eq!(lists, 20, "2,000 ids at 100 a page");

    let repaired = verify(true).run().await.success();
    let report: Value = serde_json::from_str(repaired.stdout.trim()).unwrap();
    assert_eq!(report["outcome"], "repaired");
    assert_eq!(report["repaired"]["delivered"], 300);
    assert_eq!(report["repaired"]["tombstones"], 20);
    let lines = env.lines("out.jsonl");
    assert_eq!(lines.len(), 2_020);
    let gone: Vec<u64> = tombstones(&lines)
        .iter()
        .map(|l| l["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(gone, deleted);

    let clean = verify(false).run().await.success();
    let report: Value = serde_json::from_str(clean.stdout.trim()).unwrap();
    assert_eq!(report["outcome"], "match", "{report:#}");
    // The next poll has nothing to add: the repair went through the same ledger.
    let poll = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(poll["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_stops_a_run_at_once() {
    let env = Env::contacts(300).await;
    env.poll(&[]).run().await.success();
    let cursor = env.object_status("contacts").await["cursor"].clone();
    let searches = env.mock.calls("search");
    env.mock.knobs().daily_limit_reached = true;

    let started = std::time::Instant::now();
    let out = env.poll(&["--since", "2000-01-01"]).run().await.code(1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let line = out.error_line();
    assert!(line.contains("daily API limit"), "{line}");
    assert!(
        line.contains("You have reached your daily limit."),
        "{line}"
    );
    assert_eq!(env.mock.calls("search"), searches + 1, "no retry");
    env.mock.knobs().daily_limit_reached = false;
    assert_eq!(env.object_status("contacts").await["cursor"], cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_from_before_destinations_is_claimed_by_its_next_run() {
    let env = Env::contacts(600).await;
    // A version-2 state file: 500 records delivered, the cursor a minute after them.
    {
        let conn = rusqlite::Connection::open(env.db()).unwrap();
        use martech_sync::state::sqlite::schema::MIGRATIONS;
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        let cursor = BASE.plus(Duration::from_secs(500)).0;
        conn.execute(
            "INSERT INTO cursors (object, cursor_ms, updated_ms) VALUES ('contacts', ?1, ?1)",
            [cursor],
        )
        .unwrap();
        for id in 1..=500i64 {
            conn.execute(
                "INSERT INTO delivered (object, id, modified_ms) VALUES ('contacts', ?1, ?2)",
                [
                    id,
                    BASE.plus(Duration::from_secs(u64::try_from(id).unwrap())).0,
                ],
            )
            .unwrap();
        }
    }
    let before = env.status().await;
    assert_eq!(before["objects"][0]["destination"], "(unassigned)");

    let summary = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(
        summary["delivered"], 100,
        "only what the old file did not have"
    );
    let status = env.status().await;
    assert_eq!(status["objects"].as_array().unwrap().len(), 1);
    assert!(
        status["objects"][0]["destination"]
            .as_str()
            .unwrap()
            .starts_with("jsonl:"),
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_destination_keeps_its_sink_and_a_relative_handler_its_directory() {
    let env = Env::contacts(300).await;
    for team in ["team-a", "team-b"] {
        let dir = env.path(team);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("load.sh"), "#!/bin/sh\ncat >> out.jsonl\n").unwrap();
        std::fs::set_permissions(
            dir.join("load.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    // The same words in two directories are two handlers: each gets every record.
    for team in ["team-a", "team-b"] {
        let mut cmd = env.cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--sink",
            "exec:./load.sh",
        ]);
        cmd = cmd.current_dir(&env.path(team));
        cmd.run().await.success();
        let lines = crate::support::read_jsonl(&env.path(team).join("out.jsonl"));
        assert_eq!(lines.len(), 300, "{team}");
    }
    // A named destination given no --sink keeps the sink it was last given.
    let warehouse = format!("jsonl:{}", env.path("warehouse.jsonl").display());
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--sink",
        &warehouse,
        "--destination",
        "warehouse",
    ])
    .run()
    .await
    .success();
    env.mock.modify("contacts", [5, 6, 7]);
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--destination",
        "warehouse",
    ])
    .run()
    .await
    .success();
    assert_eq!(
        env.lines("warehouse.jsonl").len(),
        303,
        "the forgetful run went to the warehouse"
    );
    let rows: i64 = rusqlite::Connection::open(env.db())
        .unwrap()
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "nothing went to the sqlite sink");
    // A file by a roundabout name is known by its real path.
    std::fs::create_dir(env.path("sub")).unwrap();
    let roundabout = format!("jsonl:{}/sub/../other.jsonl", env.dir.path().display());
    let again = env
        .cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--sink",
            &roundabout,
            "--json",
        ])
        .run()
        .await
        .success();
    let real = std::fs::canonicalize(env.dir.path())
        .unwrap()
        .join("other.jsonl");
    assert_eq!(
        again.summary()["destination"],
        format!("jsonl:{}", real.display()),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_cannot_start_or_finish_is_not_lost() {
    let env = Env::contacts(400).await;
    env.poll(&[]).run().await.success();
    // HubSpot unreachable: the refresh never starts, so the list is not taken as given.
    let down = env
        .poll(&["--all-properties", "--refresh", "--max-attempts", "1"])
        .env("HUBSPOT_BASE_URL", "http://127.0.0.1:9")
        .run()
        .await
        .code(1);
    assert!(
        down.error_line().contains("could not connect"),
        "{}",
        down.stderr
    );
    env.poll(&["--all-properties"]).run().await.code(2);

    // A refresh that fails half way is resumed, and cursor commands do not abandon it.
    env.mock.knobs().faults.insert(
        env.mock.searches() + 2,
        martech_sync::mock::Fault::Status(400),
    );
    env.poll(&["--all-properties", "--refresh", "--concurrency", "1"])
        .run()
        .await
        .code(1);
    let set = env
        .cmd(&["cursor", "set", "contacts", "1h"])
        .run()
        .await
        .code(2);
    assert!(set.error_line().contains("half done"), "{}", set.stderr);
    let finished = env
        .poll(&["--all-properties", "--json"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(finished["resumed"], true);
    assert_eq!(finished["refresh"], true);
    let lines = env.lines("out.jsonl");
    assert_eq!(
        lines.len(),
        800,
        "every record once more, with every property"
    );

    // A destination filled by reconcile before any poll was given the defaults.
    let other = format!("jsonl:{}", env.path("other.jsonl").display());
    env.cmd(&[
        "reconcile",
        "contacts",
        "--lookback",
        "4000d",
        "--sink",
        &other,
    ])
    .run()
    .await
    .success();
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--sink",
        &other,
        "--all-properties",
    ])
    .run()
    .await
    .code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_of_one_state_file_share_its_locks() {
    let env = Env::contacts(600).await;
    std::fs::create_dir(env.path("alias")).unwrap();
    std::os::unix::fs::symlink(env.db(), env.path("alias/state.db")).unwrap();
    env.poll(&[]).run().await.success();
    env.mock.hold_from(env.mock.searches() + 1);
    let first = env.poll(&["--since", "2000-01-01"]).spawn();
    env.mock.wait_for_searches(env.mock.searches() + 1).await;
    let alias = env.path("alias/state.db");
    let second = env
        .poll(&["--since", "2000-01-01"])
        .env("MARTECH_SYNC_DB", alias.to_str().unwrap())
        .run()
        .await
        .code(75);
    assert!(
        second.error_line().contains("another martech-sync run"),
        "{}",
        second.stderr
    );
    env.mock.release();
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_over_a_stale_tombstone_converges() {
    let env = Env::contacts(50).await;
    env.poll(&[]).run().await.success();
    // The destination was told record 5 was deleted after its last change, yet HubSpot
    // has it live (restored without a new version, or a clock ahead).
    let later = Millis::now().plus(Duration::from_secs(120)).0;
    rusqlite::Connection::open(env.db())
        .unwrap()
        .execute(
            "UPDATE ledger SET archived = 1, modified_ms = ?1 WHERE id = 5",
            [later],
        )
        .unwrap();
    let drift = env
        .cmd(&["verify", "contacts", "--json"])
        .run()
        .await
        .code(3);
    let report: Value = serde_json::from_str(drift.stdout.trim()).unwrap();
    assert_eq!(report["stale"], 1);
    let repaired = env
        .cmd(&["verify", "contacts", "--json", "--repair"])
        .run()
        .await
        .success();
    let report: Value = serde_json::from_str(repaired.stdout.trim()).unwrap();
    assert_eq!(report["repaired"]["delivered"], 1);
    env.cmd(&["verify", "contacts"]).run().await.success();
    let last = env.lines("out.jsonl").pop().unwrap();
    assert_eq!(
        (last["id"].as_str(), &last["archived"]),
        (Some("5"), &Value::Bool(false))
    );

    // With a refused token every endpoint answers HubSpot's 401, verify's list included.
    let refused = env
        .cmd(&["verify", "contacts"])
        .env("HUBSPOT_TOKEN", "pat-na1-wrong")
        .run()
        .await
        .code(1);
    assert!(
        refused.error_line().contains("401 Unauthorized"),
        "{}",
        refused.stderr
    );
}
