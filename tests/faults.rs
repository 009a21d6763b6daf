//! The real world: rate limits, 5xx, timeouts, dropped connections, index lag, kill -9
//! at an arbitrary instant, continuous mode and its signals.

use std::time::Duration;

use martech_sync::mock::{Fault, RandomFaults};

use crate::support::{Env, id_counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_fake_gets_every_record_and_pacing_avoids_429s() {
    let env = Env::contacts(10_000).await;
    env.mock.knobs().rate_limit = Some(10);

    // Five times too fast: 429s without Retry-After, retried with backoff. Search
    // alone: `--since` keeps the list part of a backfill out of it.
    let fast = env
        .poll(&["--json", "--since", "2000-01-01", "--retry-base", "100ms"])
        .env("HUBSPOT_RATE_LIMIT", "50")
        .run()
        .await
        .success();
    let too_many = env.mock.answered(429);
    assert!(too_many > 0, "the fake never limited");
    assert_eq!(fast.summary()["delivered"], 10_000);
    assert!(fast.summary()["retries"].as_u64().unwrap() >= too_many);

    // At the limit: the token bucket keeps (almost) every request inside it.
    let paced = env
        .poll(&[
            "--json",
            "--since",
            "2000-01-01",
            "--retry-base",
            "100ms",
            "--concurrency",
            "1",
        ])
        .env("HUBSPOT_RATE_LIMIT", "10")
        .run()
        .await
        .success();
    let paced_429 = env.mock.answered(429) - too_many;
    // Pacing exactly at the limit, arrival jitter (2 busy cores running the whole suite)
    // still squeezes 11 requests into one sliding second now and then, so the claim is
    // relative: the share of 429s falls to under a third of what it is at 5x the limit
    // (measured: about 8 % against about 50 %).
    let paced_requests = paced.summary()["requests"].as_u64().unwrap();
    let fast_requests = fast.summary()["requests"].as_u64().unwrap();
    assert!(
        paced_429 * fast_requests * 3 <= too_many * paced_requests,
        "{paced_429} 429s in {paced_requests} requests at the limit, {too_many} in {fast_requests} at 5x"
    );
    eprintln!(
        "429s: {too_many} in {fast_requests} requests at 5x, {paced_429} in {paced_requests} at the limit"
    );
    assert_eq!(paced.summary()["seen"], 10_000);
    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 10_000);
    assert!(counts.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let env = Env::contacts(2_000).await;
    {
        let mut knobs = env.mock.knobs();
        knobs.rate_limit = Some(4);
        knobs.retry_after = Some(1);
    }
    // Far too fast, with a tiny backoff of our own: only Retry-After keeps 429s rare.
    let out = env
        .poll(&["--json", "--concurrency", "1", "--retry-base", "1ms", "-v"])
        .env("HUBSPOT_RATE_LIMIT", "1000")
        .run()
        .await
        .success();
    let summary = out.summary();
    assert_eq!(summary["delivered"], 2_000);
    let limited = env.mock.answered(429);
    assert!(limited >= 1, "the fake never limited");
    // Each 429 costs a 1 s wait that lets the fake's second roll over: 10 pages at
    // 4/s can hit the limit at most about 3 times.
    assert!(limited <= 4, "{limited} 429s: Retry-After was not honoured");
    // A 429 a retry absorbed is INFO (-v), not a WARN for cron to mail.
    assert!(out.stderr.contains("wait_ms=1000"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_timeouts_and_dropped_connections_are_retried() {
    let env = Env::contacts(5_000).await;
    // One search answer in five fails, well above the one in ten that makes the run warn.
    // The fake fails searches only, so the window is search-only (`--since`, not a
    // backfill, whose list pages never fail and would dilute the share by chance).
    env.mock.knobs().random = RandomFaults {
        server_error: 0.10,
        slow: 0.05,
        slow_by: Duration::from_millis(1_500),
        drop: 0.05,
    };

    let out = env
        .poll(&[
            "--json",
            "--page-size",
            "50",
            "--timeout",
            "500ms",
            "--retry-base",
            "10ms",
            "--since",
            "2000-01-01",
        ])
        .run()
        .await
        .success();

    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 5_000);
    assert!(counts.values().all(|&n| n == 1));
    let errors: u64 = [500, 502, 503, 504]
        .iter()
        .map(|s| env.mock.answered(*s))
        .sum();
    assert!(errors > 0, "no 5xx was injected");
    assert!(
        out.summary()["retries"].as_u64().unwrap() > errors,
        "timeouts and drops were retried too: {errors} 5xx, {}",
        out.summary()
    );
    // Each retry is INFO; a run where many were needed says so once, at WARN.
    assert!(
        !out.stderr.contains("retrying HubSpot request"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("needed a retry"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_every_time_fails_after_the_last_attempt() {
    let env = Env::contacts(300).await;
    for n in 1..=3 {
        env.mock.knobs().faults.insert(n, Fault::Drop);
    }
    let out = env
        .poll(&["--max-attempts", "3", "--retry-base", "10ms", "-q"])
        .run()
        .await
        .code(1);
    let line = out.error_line();
    assert!(line.contains("after 3 attempts"), "{line}");
    assert!(
        line.contains("body cut short") || line.contains("connection failed"),
        "{line}"
    );
    assert!(env.object_status("contacts").await["cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_not_retried() {
    let env = Env::contacts(300).await;
    env.mock.knobs().faults.insert(1, Fault::Status(403));
    let out = env.poll(&[]).run().await.code(1);
    assert!(out.error_line().contains("403 Forbidden"));
    assert_eq!(env.mock.searches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_an_arbitrary_instant_repeats_at_most_one_page() {
    let env = Env::contacts(20_000).await;
    env.mock.knobs().latency = Duration::from_millis(50);
    let mut child = env.poll(&[]).spawn();
    // About 40 % of the 100 pages; the run is fetching or delivering, we don't know which.
    env.mock.wait_for_searches(40).await;
    child.kill().await.expect("SIGKILL");
    let before = env.lines("out.jsonl").len();
    env.mock.knobs().latency = Duration::ZERO;

    env.poll(&[]).run().await.success();

    let lines = env.lines("out.jsonl");
    let counts = id_counts(&lines);
    assert_eq!(counts.len(), 20_000, "every id delivered");
    let repeated = lines.len() - 20_000;
    assert!(
        repeated <= 200,
        "{repeated} records delivered twice (more than one page)"
    );
    assert!(
        before > 0 && before < 20_000,
        "not killed mid-window: {before} delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_index_shows_late_are_caught_by_the_overlap() {
    let env = Env::contacts(1_000).await;
    env.poll(&[]).run().await.success();
    env.mock.knobs().lag = Duration::from_secs(10);
    let changed: Vec<u64> = (1..=1_000).step_by(10).collect();
    env.mock.modify("contacts", changed.iter().copied());

    // At once: the index still shows the old versions, which were delivered already.
    let early = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(early["delivered"], 0);
    // Past the lag, the next window re-reads the overlap and finds them.
    env.mock.catch_up_index();
    let late = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(late["delivered"], 100);

    let lines = env.lines("out.jsonl");
    assert_eq!(
        lines.len(),
        1_100,
        "only the new versions were delivered again"
    );
    let store = env.mock.store();
    for id in changed {
        let newest = store.get("contacts", id).unwrap().modified.to_rfc3339();
        assert!(lines.iter().any(
            |l| l["id"].as_str() == Some(&*id.to_string()) && l["updatedAt"] == newest.as_str()
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_follows_changes_and_stops_cleanly_on_sigterm() {
    let env = Env::contacts(500).await;
    let child = env.poll(&["--interval", "1", "--json"]).spawn();
    // Modify a few records every 300 ms while the process runs windows.
    let mut ticker = tokio::time::interval(Duration::from_millis(300));
    for round in 0..10u64 {
        ticker.tick().await;
        env.mock.modify("contacts", (1..=5).map(|i| round * 40 + i));
    }
    env.mock.wait_for_searches(4).await;
    crate::support::sigterm(&child).await;
    let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("exits within 5 s of SIGTERM")
        .expect("waits");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let summaries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(summaries.len() >= 2, "one summary per window");
    // Every version modified before the last committed window's hi was delivered.
    let status = env.object_status("contacts").await;
    let cursor = status["cursorMs"].as_i64().expect("a window committed");
    let lines = env.lines("out.jsonl");
    let store = env.mock.store();
    for record in store.records("contacts") {
        if record.modified.0 <= cursor {
            let version = record.modified.to_rfc3339();
            assert!(
                lines
                    .iter()
                    .any(|l| l["id"].as_str() == Some(&*record.id.to_string())
                        && l["updatedAt"] == version.as_str()),
                "record {} at {version} (before the cursor) missing",
                record.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_exits_1_on_a_refused_token() {
    let env = Env::contacts(10).await;
    let out = env
        .poll(&["--interval", "1"])
        .env("HUBSPOT_TOKEN", "revoked")
        .run()
        .await
        .code(1);
    assert!(out.stderr.contains("401 Unauthorized"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_ends_a_request_that_keeps_failing() {
    let env = Env::contacts(300).await;
    for n in 1..=8 {
        env.mock.knobs().faults.insert(n, Fault::Status(503));
    }
    let out = env
        .poll(&["--retry-base", "200ms", "--retry-budget", "300ms", "-q"])
        .run()
        .await
        .code(1);
    let line = out.error_line();
    assert!(
        line.contains("the retry budget of 300ms would run out"),
        "{line}"
    );
    assert!(line.contains("503 Service Unavailable"), "{line}");
    // The second wait (200–400 ms after ~150 ms) no longer fits in 300 ms.
    assert_eq!(env.mock.searches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_general_budget_is_paced_by_hubspots_headers_and_429s() {
    let env = Env::contacts(4_000).await;
    env.poll(&[]).run().await.success();
    // A general budget of 20 requests a second, with its headers; verify reads 40 pages
    // of the list endpoint, asking for five times the budget.
    env.mock.knobs().general_limit = Some((20, Duration::from_secs(1)));
    let before = env.mock.answered(429);
    let out = env
        .cmd(&[
            "verify",
            "contacts",
            "--json",
            "--general-rate-limit",
            "100",
        ])
        .run()
        .await
        .success();
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "match", "{report}");
    assert!(env.mock.calls("list") >= 40);
    let limited = env.mock.answered(429) - before;
    assert!(
        limited <= 1,
        "{limited} 429s: the headers said the budget ran low before it ran out"
    );

    // Without headers to go by, a 429 halves the pace: few 429s, not one a request.
    env.mock.knobs().general_limit = None;
    env.mock.knobs().rate_limit = Some(5);
    let before = env.mock.answered(429);
    let searches = env.mock.searches();
    env.poll(&[
        "--since",
        "2000-01-01",
        "--retry-base",
        "100ms",
        "--concurrency",
        "1",
    ])
    .env("HUBSPOT_RATE_LIMIT", "20")
    .run()
    .await
    .success();
    let limited = env.mock.answered(429) - before;
    let searched = env.mock.searches() - searches;
    assert!(
        limited * 4 <= searched,
        "{limited} 429s in {searched} searches at four times the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_stops_the_run_cleanly_and_the_next_run_resumes() {
    let env = Env::contacts(2_000).await;
    // 20 pages of 100: a budget of 6 requests today stops the window part way.
    let stopped = env
        .poll(&["--json", "--page-size", "100", "--concurrency", "1"])
        .env("MARTECH_SYNC_DAILY_BUDGET", "6")
        .run()
        .await
        .success();
    let summary = stopped.summary();
    assert_eq!(summary["outcome"], "budget-exhausted", "{summary}");
    let warned: Vec<&str> = stopped.stderr.lines().collect();
    assert!(
        warned.len() == 1 && warned[0].contains("daily budget of 6 requests"),
        "{}",
        stopped.stderr
    );
    let status = env.status().await;
    assert_eq!(status["requestsToday"], 6, "{status}");
    assert!(status["objects"][0]["openWindow"].is_object(), "{status}");
    assert!(status["objects"][0]["cursor"].is_null());
    let delivered = summary["delivered"].as_u64().unwrap();
    assert!(delivered > 0 && delivered < 2_000);

    // Today's count is in the state: the same budget lets nothing more through.
    let again = env
        .poll(&["--json", "--page-size", "100", "--concurrency", "1"])
        .env("MARTECH_SYNC_DAILY_BUDGET", "6")
        .run()
        .await
        .success();
    assert_eq!(again.summary()["outcome"], "budget-exhausted");
    assert_eq!(env.status().await["requestsToday"], 6);

    // A larger budget resumes the window where it stopped and commits it.
    let resumed = env
        .poll(&["--json", "--page-size", "100", "--concurrency", "1"])
        .env("MARTECH_SYNC_DAILY_BUDGET", "100")
        .run()
        .await
        .success();
    assert_eq!(resumed.summary()["outcome"], "committed");
    assert_eq!(resumed.summary()["resumed"], true);
    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 2_000);
    assert!(counts.values().all(|&n| n == 1));
}
