//! The guarantee (DESIGN.md): every record modified inside a committed window reaches
//! the handler, and an unchanged version is not handed over twice, whatever the scan
//! meets.

use std::time::Duration;

use martech_sync::mock::{Fault, Mutation, TieOrder, seed};

use crate::support::{BASE, Env, id_counts, store_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_thousand_matches_are_all_delivered() {
    // Ids with gaps, and timestamps shared by many records: neither may matter.
    let ids = (0..25_000u64).map(|i| 1_000 + i * 7);
    let env = Env::new(store_of(seed::synthetic(ids.clone(), |id| {
        BASE.plus(Duration::from_secs(id % 500))
    })))
    .await;

    let out = env.poll(&["--json"]).run().await.success();

    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        ids.collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "an id was delivered twice"
    );
    assert_eq!(env.mock.answered(400), 0, "the fake refused a request");
    let summary = out.summary();
    assert_eq!(summary["delivered"], 25_000);
    // A backfill: search pages of 200 and list pages of 100 together read each record
    // about once. Besides: the probe for the largest id, a partial last page per slice,
    // the list's first two pages (the window's first page had them) and its last (past
    // where it met search).
    let (searches, lists) = (env.mock.searches(), env.mock.calls("list"));
    assert!(lists > 0, "the list part took no part");
    let read = searches * 200 + lists * 100;
    assert!(
        (25_000..=25_000 + 20 * 200).contains(&read),
        "{searches} searches and {lists} list pages for 25,000 records"
    );
    // And one request to the properties API.
    assert_eq!(summary["requests"].as_u64().unwrap(), searches + lists + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_sharing_one_millisecond_with_unstable_order() {
    let same = seed::synthetic(1..=3_000, |_| BASE);
    let others = seed::synthetic(3_001..=3_500, |id| BASE.plus(Duration::from_millis(id)));
    let env = Env::new(store_of(same.into_iter().chain(others).collect())).await;
    env.mock.knobs().ties = TieOrder::Unstable;

    env.poll(&[]).run().await.success();

    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 3_500);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=3_500).collect::<Vec<_>>()
    );
    assert!(counts.values().all(|&n| n == 1));
}

/// Every id delivered, every id's newest version delivered, and no version twice.
#[track_caller]
fn assert_every_version_once(env: &crate::support::Env, ids: u64) -> Vec<serde_json::Value> {
    let lines = env.lines("out.jsonl");
    assert_eq!(id_counts(&lines).len() as u64, ids, "every id delivered");
    let mut versions = std::collections::BTreeSet::new();
    for l in &lines {
        let version = (
            l["id"].as_str().unwrap().to_owned(),
            l["updatedAt"].as_str().unwrap().to_owned(),
        );
        assert!(
            versions.insert(version.clone()),
            "version {version:?} delivered twice"
        );
    }
    let store = env.mock.store();
    for record in store.records("contacts") {
        let newest = (record.id.to_string(), record.modified.to_rfc3339());
        assert!(
            versions.contains(&newest),
            "newest version of {} not delivered",
            record.id
        );
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_modified_while_slices_are_scanned_reach_the_next_window() {
    let env = Env::contacts(20_000).await;
    env.mock.knobs().mutations.push(Mutation {
        after_request: 12,
        object: "contacts".into(),
        ids: (1..=20_000).step_by(97).collect(),
    });

    env.poll(&[]).run().await.success();
    env.poll(&[]).run().await.success();

    assert_every_version_once(&env, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_modified_while_paging_reach_the_next_window() {
    let env = Env::contacts(5_000).await;
    // Three pages of 200 are out when the fake modifies 50 records already returned
    // and 50 not yet returned: the latter leave the frozen window mid-scan.
    let returned: Vec<u64> = (1..=600).step_by(12).collect();
    let pending: Vec<u64> = (1_000..=5_000).step_by(80).take(50).collect();
    assert_eq!((returned.len(), pending.len()), (50, 50));
    env.mock.knobs().mutations.push(Mutation {
        after_request: 3,
        object: "contacts".into(),
        ids: returned.iter().chain(&pending).copied().collect(),
    });

    // Sequential, so "already returned" is exact.
    env.poll(&["--concurrency", "1"]).run().await.success();
    env.poll(&["--concurrency", "1"]).run().await.success();

    let lines = assert_every_version_once(&env, 5_000);
    // Old and new versions of the 50 already returned; nothing else twice.
    assert_eq!(lines.len(), 5_050);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_list_and_search_at_once_and_delivers_every_version_once() {
    let env = Env::contacts(20_000).await;
    // Records change while both parts scan, in the list's ids and in search's: a
    // version listed or searched before the change is delivered, the newer one by the
    // next window; one listed after it is newer than the window and left to the next.
    env.mock.knobs().mutations.push(Mutation {
        after_request: 8,
        object: "contacts".into(),
        ids: (1..=20_000).step_by(101).collect(),
    });

    let first = env.poll(&["--json"]).run().await.success().summary();
    let (searches, lists) = (env.mock.searches(), env.mock.calls("list"));
    assert!(
        lists >= 10 && searches >= 10,
        "both parts read: {searches} searches, {lists} list pages"
    );
    assert_eq!(first["requests"].as_u64().unwrap(), searches + lists + 1);
    env.poll(&[]).run().await.success();

    assert_every_version_once(&env, 20_000);
    // The second run is an ordinary window: search alone.
    assert_eq!(env.mock.calls("list"), lists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backfill_then_rerun_resumes_through_search() {
    let env = Env::contacts(20_000).await;
    // Search is held from its 12th request: the list part runs on until the kill.
    env.mock.hold_from(12);
    let mut child = env.poll(&[]).spawn();
    env.mock.wait_for_searches(12).await;
    let listed = env.mock.calls("list");
    assert!(listed > 0, "the list part had not started");
    child.kill().await.expect("SIGKILL");
    env.mock.knobs().hold_from = None;
    env.mock.release();
    let before = env.lines("out.jsonl").len();

    let out = env.poll(&["--json"]).run().await.success();

    assert_eq!(out.summary()["resumed"], true);
    let lines = env.lines("out.jsonl");
    let counts = id_counts(&lines);
    assert_eq!(
        counts.len(),
        20_000,
        "every id ({listed} list pages before the kill)"
    );
    // The kill may land between a page reaching the sink and its checkpoint: pages
    // in hand (a search page of 200, a list page of 100, one per part) repeat, no more.
    assert!(
        lines.len() <= 20_000 + 4 * 200 + 100,
        "{} delivered ({before} before the kill)",
        lines.len()
    );
    assert_eq!(
        env.mock.calls("list"),
        listed,
        "a resumed window continues through search alone"
    );
    let status = env.object_status("contacts").await;
    assert!(status["openWindow"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_delivers_nothing() {
    let env = Env::contacts(1_000).await;
    env.poll(&[]).run().await.success();
    let first = env.lines("out.jsonl").len();

    let out = env
        .poll(&["--json", "--overlap", "4000d"])
        .run()
        .await
        .success();

    assert_eq!(first, 1_000);
    assert_eq!(env.lines("out.jsonl").len(), 1_000);
    let summary = out.summary();
    assert_eq!(summary["outcome"], "committed");
    assert_eq!(summary["seen"], 1_000, "the overlap re-read everything");
    assert_eq!(summary["delivered"], 0);
    assert_eq!(summary["skipped"], 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_leaves_the_cursor_and_a_rerun_delivers_the_window() {
    let env = Env::contacts(1_000).await;
    let failing = "exec:input=$(cat); \
        if printf '%s' \"$input\" | grep -q '\"id\":\"555\"'; then echo 'cannot load record 555' >&2; exit 3; fi; \
        printf '%s\\n' \"$input\" >> delivered.jsonl";
    let good = "exec:cat >> delivered.jsonl";
    // Sequential pages of 100, so the failing page is exactly the sixth. The fixed
    // handler is another command: naming the destination keeps its state.
    let poll = |sink: &str| {
        env.cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--page-size",
            "100",
            "--concurrency",
            "1",
            "--sink",
            sink,
            "--destination",
            "loader",
        ])
    };

    let out = poll(failing).run().await.code(1);

    let line = out.error_line();
    assert!(line.contains("exited with status 3"), "{line}");
    assert!(line.contains("cannot load record 555"), "{line}");
    let status = env.object_status("contacts").await;
    assert!(status["cursor"].is_null(), "cursor moved: {status}");
    assert_eq!(status["openWindow"]["lastId"], "500", "{status:#}");
    assert_eq!(status["lastRun"]["outcome"], "failed");
    assert_eq!(env.lines("delivered.jsonl").len(), 500);

    poll(good).run().await.success();

    let counts = id_counts(&env.lines("delivered.jsonl"));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=1_000).collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "the rerun repeated confirmed pages"
    );
    assert!(!env.object_status("contacts").await["cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_page_fails_cleanly() {
    let env = Env::contacts(1_000).await;
    env.mock.knobs().faults.insert(2, Fault::MalformedJson);

    let out = env.poll(&[]).run().await.code(1);

    let line = out.error_line();
    assert!(line.contains("cannot be read (application/json)"), "{line}");
    assert!(line.contains("EOF while parsing"), "{line}");
    assert!(line.contains("correlation id"), "{line}");
    assert!(env.object_status("contacts").await["cursor"].is_null());
    assert_eq!(
        env.lines("out.jsonl").len(),
        200,
        "only the confirmed first page"
    );

    env.poll(&[]).run().await.success();
    assert_eq!(id_counts(&env.lines("out.jsonl")).len(), 1_000);
    assert_eq!(env.lines("out.jsonl").len(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_records_fail_with_a_clear_line() {
    let cases = [
        (Fault::MissingModified, "has no `lastmodifieddate`"),
        (Fault::BadTimestamp, "which is not a timestamp"),
        (Fault::ProxyHtml(403), "non-HubSpot body"),
        (Fault::MissingId, "missing field `id`"),
        (Fault::HtmlOk, "cannot be read (text/html; charset=utf-8)"),
    ];
    for (fault, want) in cases {
        let env = Env::contacts(300).await;
        env.mock.knobs().faults.insert(1, fault);
        let out = env.poll(&[]).run().await.code(1);
        let line = out.error_line();
        assert!(line.contains(want), "{fault:?}: {line}");
        assert!(env.object_status("contacts").await["cursor"].is_null());
        assert!(env.lines("out.jsonl").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_window_then_rerun_delivers_the_rest_once() {
    let env = Env::contacts(2_000).await;
    // Pages 1..=3 are answered; the 4th request is held while we kill the run.
    env.mock.hold_from(4);
    let mut child = env.poll(&["--concurrency", "1"]).spawn();
    env.mock.wait_for_searches(4).await;
    child.kill().await.expect("SIGKILL");
    // Fetching runs a page ahead of delivery, so pages 2 or 3 may still be in hand (and
    // on a loaded machine none may have reached the sink yet).
    let before = env.lines("out.jsonl").len();
    assert!(
        [0, 200, 400, 600].contains(&before),
        "{before} records before the kill"
    );
    env.mock.knobs().hold_from = None;
    env.mock.release();

    let out = env.poll(&["--json"]).run().await.success();

    let summary = out.summary();
    assert_eq!(summary["resumed"], true);
    let lines = env.lines("out.jsonl");
    assert_eq!(id_counts(&lines).len(), 2_000);
    // The kill may land between a page's fsync and its checkpoint: that page repeats.
    assert!(
        lines.len() <= 2_200,
        "{} delivered: more than one page repeated",
        lines.len()
    );
    let status = env.object_status("contacts").await;
    assert!(status["openWindow"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_until_bound_a_backfill() {
    // One record on the first of every month of 2024.
    let months: Vec<_> = (1..=12u32)
        .map(|m| {
            let t = chrono::NaiveDate::from_ymd_opt(2024, m, 1)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap();
            martech_sync::timestamp::Millis(t.and_utc().timestamp_millis())
        })
        .collect();
    let env = Env::new(store_of(seed::synthetic(1..=12, |id| {
        months[usize::try_from(id - 1).unwrap()]
    })))
    .await;

    let out = env
        .poll(&["--since", "2024-06-01", "--until", "2024-09-01", "--json"])
        .run()
        .await
        .success();

    let ids: Vec<u64> = id_counts(&env.lines("out.jsonl")).into_keys().collect();
    assert_eq!(ids, [6, 7, 8]);
    assert_eq!(out.summary()["window"]["lo"], "2024-06-01T00:00:00.000Z");
    let status = env.object_status("contacts").await;
    assert_eq!(status["cursor"], "2024-09-01T00:00:00.000Z");

    // The next cron run continues from the cursor (minus the overlap) to now.
    env.poll(&[]).run().await.success();
    let ids: Vec<u64> = id_counts(&env.lines("out.jsonl")).into_keys().collect();
    assert_eq!(ids, [6, 7, 8, 9, 10, 11, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_properties_come_from_batch_read_not_the_search_body() {
    let env = Env::contacts(1_000).await;
    env.mock.knobs().extra_properties = 300;

    // Three hundred names in the search body: HubSpot refuses bodies over 3,000 characters.
    let names: Vec<String> = (1..=300)
        .map(|i| format!("custom_property_{i:03}"))
        .collect();
    let refused = env
        .poll(&["--properties", &names.join(",")])
        .run()
        .await
        .code(1);
    assert!(
        refused.error_line().contains("at most 3000"),
        "{}",
        refused.stderr
    );

    let out = env
        .poll(&["--all-properties", "--json"])
        .run()
        .await
        .success();
    assert_eq!(out.summary()["delivered"], 1_000);
    let lines = env.lines("out.jsonl");
    assert_eq!(id_counts(&lines).len(), 1_000);
    for line in &lines {
        let properties = line["properties"].as_object().unwrap();
        assert!(properties.len() > 300, "{} properties", properties.len());
        assert!(
            properties["email"]
                .as_str()
                .unwrap()
                .ends_with("@example.com")
        );
        assert!(properties.contains_key("custom_property_300"));
    }
    assert_eq!(env.mock.calls("properties"), 1);
    assert_eq!(env.mock.calls("batch_read"), 10, "100 ids a call");

    // The property list is cached in the state file.
    env.poll(&["--all-properties", "--since", "2000-01-01"])
        .run()
        .await
        .success();
    assert_eq!(env.mock.calls("properties"), 1);
}
