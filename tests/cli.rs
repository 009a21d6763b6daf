//! What a user sees at the command line: exit codes, error lines, `status`, the token
//! kept out of every output.

use crate::support::{Env, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_fails_with_hubspots_message_and_never_shows_the_token() {
    let env = Env::contacts(10).await;
    let bad = "pat-na1-WRONG-a9f2e1d7c3b5";
    for verbosity in [None, Some("-vvv")] {
        let mut args = vec!["poll", "contacts"];
        args.extend(verbosity);
        let out = env.cmd(&args).env("HUBSPOT_TOKEN", bad).run().await.code(1);
        assert!(out.stderr.contains("401 Unauthorized"), "{}", out.stderr);
        assert!(
            out.stderr.contains("Authentication credentials not found"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("[INVALID_AUTHENTICATION] (correlation id "),
            "{}",
            out.stderr
        );
        for output in [&out.stdout, &out.stderr] {
            assert!(
                !output.contains(bad),
                "token leaked with {verbosity:?}:\n{output}"
            );
            assert!(
                !output.contains("WRONG"),
                "token leaked with {verbosity:?}:\n{output}"
            );
        }
        if verbosity.is_none() {
            out.error_line();
        }
    }
    assert!(env.object_status("contacts").await["cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_token_never_shows_either() {
    let env = Env::contacts(500).await;
    let out = env.poll(&["-vvv", "--json"]).run().await.success();
    assert!(!out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN));
    assert!(out.stderr.contains("page checkpointed"), "-vvv logs pages");
    let help = env.cmd(&["poll", "--help"]).run().await.success();
    assert!(!help.stdout.contains(TOKEN), "--help shows the env value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_fields() {
    let env = Env::contacts(500).await;
    let out = env
        .poll(&["-vv", "--log-format", "json"])
        .run()
        .await
        .success();
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let committed = events
        .iter()
        .find(|e| e["message"] == "window committed")
        .expect("a window committed event");
    assert_eq!(committed["level"], "INFO");
    assert_eq!(committed["delivered"], 500);
    assert_eq!(committed["object"], "contacts");
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "page checkpointed" && e["level"] == "DEBUG")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_cursor_window_and_last_run() {
    let env = Env::contacts(450).await;
    let before = env.status().await;
    assert_eq!(before["objects"], serde_json::json!([]));

    let summary = env
        .poll(&["--json", "--page-size", "200"])
        .run()
        .await
        .success()
        .summary();

    let s = env.object_status("contacts").await;
    assert_eq!(s["cursor"], summary["window"]["hi"]);
    assert_eq!(s["cursorMs"], summary["window"]["hiMs"]);
    assert!(s["openWindow"].is_null());
    let run = &s["lastRun"];
    assert_eq!(run["outcome"], "committed");
    assert_eq!(run["delivered"], 450);
    assert_eq!(run["pages"], 3);
    // Three pages and the first deletion sweep: the whole run, as its summary said.
    assert_eq!(run["requests"], 4);
    assert_eq!(run["deletes"]["requests"], 1);
    assert_eq!(run["window"]["lo"], "1970-01-01T00:00:01.000Z");
    assert!(run["startedAt"].is_string() && run["endedAt"].is_string());
    assert!(run["error"].is_null());

    let table = env.cmd(&["status"]).run().await.success();
    assert!(table.stdout.contains("contacts"), "{}", table.stdout);
    assert!(table.stdout.contains("committed"), "{}", table.stdout);
    let one = env
        .cmd(&["status", "deals", "--json"])
        .run()
        .await
        .success();
    assert!(one.stdout.contains("\"objects\": []"), "{}", one.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_without_touching_anything() {
    let env = Env::contacts(10).await;
    let cases: [&[&str]; 6] = [
        &["poll", "no such object"],
        &["poll", "contacts", "--page-size", "500"],
        &["poll", "contacts", "--since", "last week"],
        &["poll", "contacts", "--sink", "kafka:topic"],
        &["poll", "contacts", "--overlap", "5 parsecs"],
        &["frobnicate"],
    ];
    for args in cases {
        env.cmd(args).run().await.code(2);
    }
    let out = env
        .cmd(&["poll", "contacts"])
        .env_remove("HUBSPOT_TOKEN")
        .run()
        .await
        .code(2);
    assert!(out.error_line().contains("HUBSPOT_TOKEN"));
    assert_eq!(env.mock.searches(), 0);
    assert!(!env.db().exists(), "a usage error created the state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_the_same_object_exits_75_and_names_the_holder() {
    let env = Env::contacts(600).await;
    env.mock.hold_from(1);
    let first = env.poll(&[]).spawn();
    let pid = first.id().expect("pid");
    env.mock.wait_for_searches(1).await;

    let out = env.poll(&[]).run().await.code(75);
    let line = out.error_line();
    assert!(line.contains(&format!("pid {pid}")), "{line}");
    assert_eq!(env.mock.searches(), 1, "the second run searched");
    env.mock.release();
    let first = first.wait_with_output().await.expect("first run ends");
    assert_eq!(first.status.code(), Some(0));
    let counts = crate::support::id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 600);
    assert!(counts.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_without_an_account() {
    let env = Env::contacts(1).await;
    let out = env
        .cmd(&["demo", "--records", "500"])
        .env_remove("HUBSPOT_TOKEN")
        .env_remove("HUBSPOT_BASE_URL")
        .run()
        .await
        .success();
    assert!(out.stdout.contains("with 500 contacts"), "{}", out.stdout);
    assert!(out.stdout.contains("500 delivered"), "{}", out.stdout);
    assert!(out.stdout.contains("0 delivered"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_hubspot_serves_a_poll_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let env = Env::contacts(1).await;
    let mut mock = env
        .cmd(&[
            "mock-hubspot",
            "--records",
            "300",
            "--accept-token",
            "local-token",
        ])
        .spawn();
    let stdout = mock.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = lines.next_line().await.unwrap().expect("the base URL line");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let out = env
        .poll(&["--json"])
        .env("HUBSPOT_BASE_URL", &url)
        .env("HUBSPOT_TOKEN", "local-token")
        .run()
        .await
        .success();
    assert_eq!(out.summary()["delivered"], 300);
    let refused = env
        .poll(&[])
        .env("HUBSPOT_BASE_URL", &url)
        .env("HUBSPOT_TOKEN", "other")
        .run()
        .await
        .code(1);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    crate::support::sigterm(&mock).await;
    assert_eq!(mock.wait().await.unwrap().code(), Some(0));

    // Without --accept-token it wants the global --token, the one polls send.
    let mut mock = env
        .cmd(&["mock-hubspot", "--records", "10", "--token", "shared-token"])
        .spawn();
    let stdout = mock.stdout.take().expect("stdout is piped");
    let url = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap()
        .expect("the base URL line");
    let poll = |token: &'static str| {
        env.poll(&[])
            .env("HUBSPOT_BASE_URL", &url)
            .env("HUBSPOT_TOKEN", token)
            .run()
    };
    poll("shared-token").await.success();
    poll("another-token").await.code(1);
    mock.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_show_set_and_reset() {
    let env = Env::contacts(100).await;
    let none = env
        .cmd(&["cursor", "show", "contacts"])
        .run()
        .await
        .success();
    assert_eq!(none.stdout.trim(), "none");
    assert!(!env.db().exists(), "show created the state file");

    env.poll(&[]).run().await.success();
    let shown = env
        .cmd(&["cursor", "show", "contacts"])
        .run()
        .await
        .success();
    let status = env.object_status("contacts").await;
    assert_eq!(shown.stdout.trim(), status["cursor"].as_str().unwrap());

    let set = env
        .cmd(&["cursor", "set", "contacts", "2024-01-01T00:00:50Z"])
        .run()
        .await
        .success();
    assert!(
        set.stdout.contains("-> 2024-01-01T00:00:50.000Z"),
        "{}",
        set.stdout
    );
    // The next run starts at the new cursor minus the overlap: records 51.. (one a
    // second from 00:00:01) are read again but were delivered already.
    let rerun = env
        .poll(&["--json", "--overlap", "0s"])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(rerun["window"]["lo"], "2024-01-01T00:00:50.000Z");
    assert_eq!(rerun["seen"], 51);
    assert_eq!(rerun["delivered"], 0);

    // A backfill that starts after the cursor leaves a gap: the cursor stays put.
    env.cmd(&["cursor", "set", "contacts", "2024-01-01T00:00:10Z"])
        .run()
        .await
        .success();
    env.poll(&["--since", "2024-01-01T00:01:00Z"])
        .run()
        .await
        .success();
    let kept = env
        .cmd(&["cursor", "show", "contacts"])
        .run()
        .await
        .success();
    assert_eq!(kept.stdout.trim(), "2024-01-01T00:00:10.000Z");

    // Without a terminal, reset wants --yes.
    env.cmd(&["cursor", "reset", "contacts"])
        .run()
        .await
        .code(2);
    env.cmd(&["cursor", "reset", "contacts", "--yes", "--redeliver"])
        .run()
        .await
        .success();
    assert!(env.object_status("contacts").await["cursor"].is_null());
    let again = env.poll(&["--json"]).run().await.success().summary();
    assert_eq!(
        again["delivered"], 100,
        "--redeliver hands everything over again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stale_after_exits_1_for_monitoring() {
    let env = Env::contacts(10).await;
    let empty = env
        .cmd(&["status", "--stale-after", "1h"])
        .run()
        .await
        .code(1);
    assert!(
        empty.stderr.contains("stale: no cursor"),
        "{}",
        empty.stderr
    );
    env.poll(&[]).run().await.success();
    env.cmd(&["status", "contacts", "--stale-after", "1h"])
        .run()
        .await
        .success();
    env.cmd(&["cursor", "set", "contacts", "3h"])
        .run()
        .await
        .success();
    let old = env
        .cmd(&["status", "--stale-after", "1h"])
        .run()
        .await
        .code(1);
    assert!(
        old.stderr
            .contains("stale (--stale-after 1h): contacts -> jsonl:")
            && old.stderr.contains("(3h old)"),
        "{}",
        old.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_page_come_from_the_cli() {
    let env = Env::contacts(1).await;
    for shell in ["bash", "zsh", "fish"] {
        let out = env.cmd(&["completions", shell]).run().await.success();
        assert!(out.stdout.contains("--stale-after"), "{shell}");
        assert!(out.stdout.contains("mock-hubspot"), "{shell}");
    }
    let man = env.cmd(&["man"]).run().await.success();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH"),
        "{}",
        &man.stdout[..80]
    );
    assert!(man.stdout.contains("martech"));
    // One page per subcommand, each with its own options.
    let dir = env.path("man");
    let dir_arg = dir.display().to_string();
    env.cmd(&["man", "--dir", &dir_arg]).run().await.success();
    for (page, option) in [
        ("martech-sync.1", "--db"),
        ("martech-sync-poll.1", "--since"),
        ("martech-sync-serve.1", "--public-url"),
        ("martech-sync-cursor-set.1", "WHEN"),
        ("martech-sync-verify.1", "--repair"),
    ] {
        let text = std::fs::read_to_string(dir.join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"))
            .replace("\\-", "-");
        assert!(text.contains(option), "{page} lacks {option}");
    }
}

#[test]
fn every_argument_has_help() {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if arg.get_help().is_none() && !arg.is_hide_set() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(
        &martech_sync::cli::Cli::command(),
        "martech-sync",
        &mut missing,
    );
    assert!(missing.is_empty(), "arguments without help: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_gets_no_progress_output() {
    let env = Env::contacts(2_000).await;
    let out = env.poll(&[]).run().await.success();
    assert_eq!(out.stderr, "", "cron and pipes get silence on success");
    assert_eq!(out.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_an_object_name_creates_no_sync() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    for args in [
        &["cursor", "reset", "contact", "--yes"][..],
        &["cursor", "set", "contact", "2024-01-01"][..],
    ] {
        let out = env.cmd(args).run().await.code(2);
        assert!(
            out.error_line().contains("did you mean contacts?"),
            "{}",
            out.stderr
        );
    }
    let status = env.status().await;
    assert_eq!(status["objects"].as_array().unwrap().len(), 1, "{status}");
}
