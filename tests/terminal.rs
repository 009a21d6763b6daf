//! What a person meets at the terminal: continuous mode started with a backfill, the
//! progress of a resumed window, `status` within 100 columns, and exit codes that say
//! whether a rerun can help.

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::support::{Env, sigterm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_starts_at_since_then_follows_the_cursor() {
    let env = Env::contacts(300).await;
    let mut child = env
        .poll(&[
            "--since",
            "2024-01-01T00:02:00Z",
            "--interval",
            "1",
            "--json",
            "--overlap",
            "5m",
        ])
        .spawn();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(first["window"]["lo"], "2024-01-01T00:02:00.000Z");
    assert_eq!(
        first["delivered"], 181,
        "records from --since on (ids 120 to 300)"
    );
    let cursor = first["window"]["hiMs"].as_i64().unwrap();
    assert_eq!(
        second["window"]["loMs"].as_i64().unwrap(),
        cursor - 300_000,
        "the second window starts at the cursor minus the overlap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_window_knows_its_progress_and_the_resumed_run_starts_there() {
    let env = Env::contacts(2_000).await;
    env.mock.hold_from(4);
    let mut child = env.poll(&["--concurrency", "1"]).spawn();
    env.mock.wait_for_searches(4).await;
    child.kill().await.unwrap();
    env.mock.knobs().hold_from = None;
    env.mock.release();
    let open = &env.object_status("contacts").await["openWindow"];
    assert_eq!(open["total"], 2_000, "{open:#}");
    let seen = open["seen"].as_u64().unwrap();
    assert!([200, 400, 600].contains(&seen), "{open:#}");
    assert_eq!(open["pages"].as_u64().unwrap() * 200, seen);

    let summary = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(summary["resumed"], true);
    assert_eq!(summary["seen"].as_u64().unwrap() + seen, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fits_100_columns_with_long_destinations_and_errors() {
    let env = Env::contacts(50).await;
    env.poll(&[]).run().await.success();
    let deep = env.path("a-directory-with-a-rather-long-name/and/another/level");
    std::fs::create_dir_all(&deep).unwrap();
    let sink = format!("jsonl:{}/out.jsonl", deep.display());
    env.cmd(&["poll", "contacts", "--settle", "0s", "--sink", &sink, "-q"])
        .run()
        .await
        .success();
    let failing = "exec:echo 'the warehouse refused this page because of a very long reason' >&2; \
                   echo 'and a second line' >&2; echo 'and a third' >&2; exit 3";
    env.cmd(&[
        "poll", "contacts", "--settle", "0s", "--sink", failing, "-q",
    ])
    .run()
    .await
    .code(1);
    // On a terminal (a pty, through `script`), within 100 columns; piped, whole.
    let bin = env!("CARGO_BIN_EXE_martech-sync");
    let table = env
        .shell(&format!("script -qec '{bin} status' /dev/null"))
        .run()
        .await
        .success()
        .stdout
        .replace('\r', "");
    let piped = env.cmd(&["status"]).run().await.success().stdout;
    assert!(
        piped.contains(&format!("{}/out.jsonl", deep.display())),
        "piped, destinations are whole: {piped}"
    );
    // The table, up to the blank line before the totals.
    let lines: Vec<&str> = table.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and one line per destination:\n{table}"
    );
    for line in &lines {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    assert!(table.contains("failed"), "{table}");
    // The whole error in the detail.
    let detail = env
        .cmd(&["status", "contacts"])
        .run()
        .await
        .success()
        .stdout;
    assert!(detail.contains("and a third"), "{detail}");
    let never = env.cmd(&["status", "deals"]).run().await.success().stdout;
    assert!(never.starts_with("deals has never been synced"), "{never}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_whether_a_rerun_can_help() {
    let env = Env::contacts(10).await;
    // 78: configuration no rerun fixes.
    let sink = format!("jsonl:{}/missing/out.jsonl", env.dir.path().display());
    let out = env
        .cmd(&["poll", "contacts", "--sink", &sink])
        .run()
        .await
        .code(78);
    assert!(
        out.error_line().contains("missing/out.jsonl"),
        "{}",
        out.stderr
    );
    env.poll(&[]).run().await.success();
    rusqlite::Connection::open(env.db())
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let newer = env.poll(&[]).run().await.code(78);
    let line = newer.error_line();
    assert!(
        line.contains("newer than this martech-sync") && line.contains("state.db"),
        "{line}"
    );
    // 1 with the URL: HubSpot cannot be reached (a minute at most, here the budget).
    let unreachable = env
        .poll(&["--retry-base", "10ms", "--max-attempts", "3"])
        .env("MARTECH_SYNC_DB", env.path("other.db").to_str().unwrap())
        .env("HUBSPOT_BASE_URL", "http://127.0.0.1:9")
        .run()
        .await
        .code(1);
    let line = unreachable.error_line();
    assert!(
        line.contains("http://127.0.0.1:9/crm/v3/objects/contacts/search"),
        "{line}"
    );
    assert!(line.contains("could not connect"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_and_times_say_how_to_write_them() {
    let env = Env::contacts(10).await;
    let overlap = env.poll(&["--overlap", "abc"]).run().await.code(2);
    assert!(overlap.stderr.contains("--overlap"), "{}", overlap.stderr);
    assert!(
        overlap.stderr.contains("5m"),
        "an example: {}",
        overlap.stderr
    );
    let since = env.poll(&["--since", "-5d"]).run().await;
    assert_eq!(
        since.code,
        Some(0),
        "a leading minus is an age: {}",
        since.stderr
    );
    let bad = env.poll(&["--since", "soonish"]).run().await.code(2);
    assert!(
        bad.error_line().contains("7d"),
        "an example: {}",
        bad.stderr
    );
}
