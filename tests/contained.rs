//! Handlers, secrets and files contained: an `exec:` handler never sees the token or the
//! client secret, cannot hang a run or outlive it, and a child it leaves behind cannot
//! stall pages; secrets come from files; what the process creates is private; the state
//! file holds up under contention and read-only use.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Env, TOKEN, sigterm};

/// Waits until `done` holds, checking every 20 ms, for at most `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !done() {
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tick.tick().await;
    }
}

/// Whether process `pid` (read from `file`) is still running (a zombie waiting for its
/// reaper is not).
fn alive(file: &Path) -> bool {
    let pid = std::fs::read_to_string(file).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    matches!(state, Some(Some(s)) if s != 'Z' && s != 'X')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_no_secret_in_its_environment() {
    let env = Env::contacts(10).await;
    env.cmd(&[
        "poll",
        "contacts",
        "--settle",
        "0s",
        "--sink",
        "exec:env > env.txt; cat > /dev/null",
    ])
    .env("COPY_OF_THE_TOKEN", &format!("Bearer {TOKEN}"))
    .env("HUBSPOT_CLIENT_SECRET", "client-secret-9e1f")
    .env("HARMLESS", "kept")
    .run()
    .await
    .success();
    let seen = std::fs::read_to_string(env.path("env.txt")).unwrap();
    assert!(
        !seen.contains(TOKEN),
        "the token reached the handler:\n{seen}"
    );
    assert!(!seen.contains("HUBSPOT_TOKEN") && !seen.contains("COPY_OF_THE_TOKEN"));
    assert!(!seen.contains("client-secret-9e1f") && !seen.contains("HUBSPOT_CLIENT_SECRET"));
    assert!(
        seen.contains("HARMLESS=kept"),
        "the rest of the environment stays"
    );
    assert!(seen.contains("MARTECH_SYNC_OBJECT=contacts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_is_killed_at_the_timeout_and_the_page_fails() {
    let env = Env::contacts(10).await;
    let started = Instant::now();
    let out = env
        .cmd(&[
            "poll",
            "contacts",
            "--settle",
            "0s",
            "--handler-timeout",
            "1s",
            "--sink",
            "exec:echo $$ > handler.pid; sleep 30",
        ])
        .run()
        .await
        .code(1);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let line = out.error_line();
    assert!(
        line.contains("ran longer than --handler-timeout 1s"),
        "{line}"
    );
    assert!(
        !alive(&env.path("handler.pid")),
        "the handler outlived its page"
    );
    assert!(env.object_status("contacts").await["cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_handler_and_a_second_one_exits_130() {
    for second in [false, true] {
        let env = Env::contacts(10).await;
        let child = env
            .cmd(&[
                "poll",
                "contacts",
                "--settle",
                "0s",
                "--sink",
                "exec:echo $$ > handler.pid; sleep 30",
            ])
            .spawn();
        let pid_file = env.path("handler.pid");
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
        })
        .await;
        let started = Instant::now();
        let mut child = child;
        sigterm(&child).await;
        if second {
            // Signals sent back to back can merge into one: the second goes once the
            // first was seen.
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("stopping after the page in hand") {
                    break;
                }
            }
            sigterm(&child).await;
        }
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("poll stops within 10 s of SIGTERM")
            .unwrap();
        let want = if second { 130 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "second signal: {second}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // SIGKILL to the handler's group is sent before the exit, but its delivery is
        // the kernel's: the handler is gone moments later, not always at the exit.
        eventually(Duration::from_secs(2), || !alive(&pid_file)).await;
        assert!(env.object_status("contacts").await["cursor"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_left_holding_the_pipes_delays_a_page_by_a_second_at_most() {
    let env = Env::contacts(1_100).await;
    let started = Instant::now();
    // Eleven pages; each handler leaves a sleeper behind holding its stderr.
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
        "exec:cat >> out.jsonl; (sleep 30 &); exit 0",
    ])
    .run()
    .await
    .success();
    // Without the cut-off each page would wait the sleeper's 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?} for 11 pages",
        started.elapsed()
    );
    assert_eq!(env.lines("out.jsonl").len(), 1_100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_process_creates_is_private() {
    let env = Env::contacts(10).await;
    // A writer keeps the WAL and its index alive while the modes are read.
    let child = env
        .cmd(&["poll", "contacts", "--settle", "0s", "--interval", "1"])
        .spawn();
    let wal = env.path("state.db-wal");
    eventually(Duration::from_secs(10), || {
        wal.exists() && env.path("state.db-shm").exists()
    })
    .await;
    env.poll(&[]).run().await.success();
    let mut checked = vec![
        env.db(),
        wal,
        env.path("state.db-shm"),
        env.path("out.jsonl"),
    ];
    for entry in std::fs::read_dir(env.path("state.db.locks")).unwrap() {
        checked.push(entry.unwrap().path());
    }
    assert!(checked.len() >= 6, "{checked:?}");
    for path in checked {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
    }
    let dir = std::fs::metadata(env.path("state.db.locks")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    sigterm(&child).await;
    child.wait_with_output().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_the_command_line_is_warned_about() {
    let env = Env::contacts(10).await;
    let token_file = env.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let readable = env
        .poll(&["--token-file", token_file.to_str().unwrap()])
        .env_remove("HUBSPOT_TOKEN")
        .run()
        .await
        .success();
    assert!(readable.stderr.contains("chmod 600"), "{}", readable.stderr);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The file wins over the environment (a wrong token there is not used).
    let from_file = env
        .poll(&["--token-file", token_file.to_str().unwrap()])
        .env("HUBSPOT_TOKEN", "pat-na1-stale")
        .run()
        .await
        .success();
    assert!(from_file.stderr.is_empty(), "{}", from_file.stderr);
    let env_file = env.path("env-file");
    std::fs::write(&env_file, format!("HUBSPOT_TOKEN={TOKEN}\n")).unwrap();
    let wrong_shape = env
        .poll(&["--token-file", env_file.to_str().unwrap()])
        .run()
        .await
        .code(2);
    assert!(
        wrong_shape.error_line().contains("on one line"),
        "{}",
        wrong_shape.stderr
    );
    assert!(!wrong_shape.stderr.contains(TOKEN));

    let inline = env
        .poll(&["--token", TOKEN])
        .env_remove("HUBSPOT_TOKEN")
        .run()
        .await
        .success();
    assert!(inline.stderr.contains("`ps`"), "{}", inline.stderr);
    assert!(!inline.stderr.contains(TOKEN));

    let missing = env
        .poll(&["--token-file", "/nonexistent/token"])
        .env_remove("HUBSPOT_TOKEN")
        .run()
        .await
        .code(2);
    assert!(
        missing
            .error_line()
            .contains("--token-file /nonexistent/token")
    );

    // The client secret alike, for serve.
    let secret_file = env.path("secret");
    std::fs::write(&secret_file, "client-secret-9e1f\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = env
        .cmd(&["serve", "--listen", "127.0.0.1:0"])
        .env_remove("HUBSPOT_CLIENT_SECRET")
        .run()
        .await
        .code(2);
    assert!(
        missing
            .error_line()
            .contains("no client secret: set HUBSPOT_CLIENT_SECRET or pass --client-secret-file"),
        "{}",
        missing.stderr
    );
    let serve = env
        .cmd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--client-secret",
            "client-secret-9e1f",
        ])
        .spawn();
    sigterm_after_url(serve, |stderr| {
        assert!(stderr.contains("`ps`"), "{stderr}");
        assert!(!stderr.contains("client-secret-9e1f"), "{stderr}");
    })
    .await;
    let serve = env
        .cmd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--client-secret-file",
            secret_file.to_str().unwrap(),
        ])
        .spawn();
    sigterm_after_url(serve, |stderr| {
        assert!(!stderr.contains("`ps`"), "{stderr}")
    })
    .await;
}

/// Waits for `serve` to print its URL, stops it, and checks its stderr.
async fn sigterm_after_url(mut child: tokio::process::Child, check: impl FnOnce(&str)) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().unwrap();
    let url = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap();
    assert!(url.is_some_and(|u| u.ends_with("/webhooks/hubspot")));
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    check(&String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_values_never_reach_the_logs() {
    let env = Env::contacts(300).await;
    let out = env.poll(&["-vvv"]).run().await.success();
    assert!(out.stderr.contains("page checkpointed"), "-vvv logs pages");
    assert!(
        !out.stderr.contains("@example.com"),
        "an email address reached the logs:\n{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_first_runs_at_once_on_a_new_state_file_all_succeed() {
    let env = Env::contacts(50).await;
    let names: Vec<String> = (1..=20).map(|i| format!("d{i}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            env.cmd(&["poll", "contacts", "--settle", "0s", "--destination", name])
                .spawn()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = env.status().await;
    assert_eq!(status["objects"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_state_file_is_named_in_the_error() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = env
        .cmd(&["cursor", "set", "contacts", "2024-01-01"])
        .run()
        .await
        .code(1);
    let line = out.error_line();
    assert!(line.contains(env.db().to_str().unwrap()), "{line}");
    assert!(line.contains("locked by another process"), "{line}");
    conn.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_work_on_a_state_file_that_cannot_be_written() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    // Readable by all, writable by no one but its owner; the reader is another user
    // (as root, `nobody`), in a directory it may not write.
    std::fs::set_permissions(env.db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_reader = |args: &[&str]| {
        let bin = env!("CARGO_BIN_EXE_martech-sync");
        let mut cmd = std::process::Command::new(if is_root() { "setpriv" } else { bin });
        if is_root() {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        } else {
            std::fs::set_permissions(env.db(), std::fs::Permissions::from_mode(0o444)).unwrap();
            std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o555))
                .unwrap();
        }
        cmd.args(args)
            .env("MARTECH_SYNC_DB", env.db())
            .env_remove("HUBSPOT_TOKEN");
        cmd.output().unwrap()
    };
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["cursor", "show", "contacts"],
        &["dead-letters", "list"],
    ] {
        let out = as_reader(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty());
    }
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
