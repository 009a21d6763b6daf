//! What users see, snapshotted (insta): `status`, `status --json`, `poll --json` and the
//! error lines of the common failures, with times, ports, ids and paths redacted.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

use martech_sync::mock::Fault;

use crate::support::Env;

/// Redactions for everything that differs between runs.
fn settings(env: &Env) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    let dir = env.dir.path().display().to_string();
    s.add_filter(&regex_escape(&dir), "[DIR]");
    s.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z", "[TIME]");
    s.add_filter(r"\b\d+[smhd] ago", "[AGO]");
    s.add_filter(r"\b1[0-9]{12}\b", "[MS]");
    s.add_filter(
        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}",
        "[LOCAL TIME]",
    );
    s.add_filter(r"\d+\.\d s\)", "[SECONDS] s)");
    s.add_filter(r#""durationMs": ?\d+"#, r#""durationMs": "[DURATION]""#);
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    s.add_filter(r#""peakRssKb": ?\d+"#, r#""peakRssKb": "[RSS]""#);
    s.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[CORRELATION-ID]",
    );
    s.add_filter(r" +\d+[smhd]  ", " [AGE]  ");
    s.add_filter(r"\(pid \d+\)", "(pid [PID])");
    s
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_run_summary() {
    let env = Env::contacts(450).await;
    let first = env.poll(&["--json"]).run().await.success();
    let second = env.poll(&["--json"]).run().await.success();
    let table = env.cmd(&["status"]).run().await.success();
    let json = env.cmd(&["status", "--json"]).run().await.success();
    settings(&env).bind(|| {
        insta::assert_snapshot!("poll_json_first", first.stdout);
        insta::assert_snapshot!("poll_json_second", second.stdout);
        insta::assert_snapshot!("status_table", table.stdout);
        insta::assert_snapshot!("status_json", json.stdout);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_lines() {
    let env = Env::contacts(300).await;
    let bad_token = env
        .poll(&[])
        .env("HUBSPOT_TOKEN", "pat-na1-wrong")
        .run()
        .await
        .code(1);

    env.mock.knobs().faults.insert(2, Fault::Status(403));
    let forbidden = env.poll(&[]).run().await.code(1);

    for n in 3..=4 {
        env.mock.knobs().faults.insert(n, Fault::Status(429));
    }
    let limited = env
        .poll(&["--max-attempts", "2", "--retry-base", "1ms", "-q"])
        .run()
        .await
        .code(1);

    env.mock.knobs().faults.insert(5, Fault::MalformedJson);
    let malformed = env.poll(&[]).run().await.code(1);

    let handler = env
        .cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--sink",
            "exec:echo 'warehouse is read-only' >&2; exit 4",
            // A second destination of contacts is said at WARN; the error line is the point.
            "-q",
        ])
        .run()
        .await
        .code(1);

    let usage = env
        .cmd(&["poll", "contacts", "--since", "soonish"])
        .run()
        .await
        .code(2);

    settings(&env).bind(|| {
        insta::assert_snapshot!("error_401", bad_token.error_line());
        insta::assert_snapshot!("error_403", forbidden.error_line());
        insta::assert_snapshot!("error_429_exhausted", limited.error_line());
        insta::assert_snapshot!("error_malformed_page", malformed.error_line());
        insta::assert_snapshot!("error_failing_handler", handler.error_line());
        insta::assert_snapshot!("error_usage", usage.error_line());
    });
}
