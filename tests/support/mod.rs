//! Test support: a temporary directory, a fake HubSpot on loopback, and a builder that
//! runs the real `martech-sync` binary against them.

#![allow(dead_code)]

pub mod postgres;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use martech_sync::mock::{MockHubspot, Store, seed};
use martech_sync::timestamp::Millis;
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The token the fake accepts.
pub const TOKEN: &str = "pat-test-7f3a9c1e-secret";

/// 2024-01-01T00:00:00Z: seed records are modified from here on, far in the past.
pub const BASE: Millis = Millis(1_704_067_200_000);

/// A fake HubSpot holding `store` and a fresh state directory.
#[must_use]
pub struct Env {
    pub dir: TempDir,
    pub mock: MockHubspot,
}

impl Env {
    pub async fn new(store: Store) -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            mock: MockHubspot::start(store, Some(TOKEN.to_owned()))
                .await
                .expect("fake HubSpot starts"),
        }
    }

    /// A fake with `n` contacts, ids 1..=n, modified one second apart from [`BASE`].
    pub async fn contacts(n: u64) -> Env {
        Env::new(store_of(seed::synthetic(1..=n, |id| {
            BASE.plus(std::time::Duration::from_secs(id))
        })))
        .await
    }

    /// A fake with `n` records of every standard object and of the custom object `pets`
    /// (type id 2-9001), ids 1..=n, modified one second apart from [`BASE`].
    pub async fn every_object(n: u64) -> Env {
        let mut store = Store::default();
        let names = martech_sync::object::STANDARD
            .iter()
            .map(|s| s.name)
            .chain([martech_sync::mock::knobs::PETS]);
        for name in names {
            let object: martech_sync::object::ObjectType = name.parse().unwrap();
            store.extend(
                object.as_str(),
                seed::synthetic_for(&object, 1..=n, |id| {
                    BASE.plus(std::time::Duration::from_secs(id))
                }),
            );
        }
        Env::new(store).await
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with the state file, fake and token set in its environment.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        self.command(Command::new(env!("CARGO_BIN_EXE_martech-sync")), args)
    }

    /// `sh -c script` with the environment of [`Env::cmd`] (to start the binary under
    /// a `ulimit`, say).
    pub fn shell(&self, script: &str) -> Cmd {
        self.command(Command::new("sh"), &["-c", script])
    }

    fn command(&self, mut command: Command, args: &[&str]) -> Cmd {
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("MARTECH_SYNC_DB", self.db())
            .env("HUBSPOT_TOKEN", TOKEN)
            .env("HUBSPOT_BASE_URL", self.mock.base_url())
            // Pacing has its own tests; elsewhere it would only slow the suite down.
            .env("HUBSPOT_RATE_LIMIT", "10000")
            .env("HUBSPOT_GENERAL_RATE_LIMIT", "10000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Cmd { command }
    }

    /// `poll contacts` into `jsonl:out.jsonl` with no settle time, plus `extra` args.
    pub fn poll(&self, extra: &[&str]) -> Cmd {
        let sink = format!("jsonl:{}", self.path("out.jsonl").display());
        let mut args = vec!["poll", "contacts", "--settle", "0s", "--sink", &sink];
        args.extend_from_slice(extra);
        self.cmd(&args)
    }

    /// `status --json`, parsed.
    pub async fn status(&self) -> Value {
        let out = self.cmd(&["status", "--json"]).run().await.success();
        serde_json::from_str(&out.stdout).expect("status --json is JSON")
    }

    /// The status of one object.
    pub async fn object_status(&self, object: &str) -> Value {
        let status = self.status().await;
        status["objects"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["object"] == object).cloned())
            .unwrap_or(Value::Null)
    }

    /// Every line of the jsonl sink file `name`.
    pub fn lines(&self, name: &str) -> Vec<Value> {
        read_jsonl(&self.path(name))
    }
}

pub fn store_of(records: Vec<martech_sync::mock::FakeRecord>) -> Store {
    let mut store = Store::default();
    store.extend("contacts", records);
    store
}

/// The complete lines of a jsonl file (a last line without its newline is a write that
/// a kill cut short; the sink cuts it on its next open).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad jsonl line {l:?}: {e}")))
        .collect()
}

/// The id of a delivered record.
#[track_caller]
pub fn id_of(line: &Value) -> u64 {
    line["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no numeric id in {line}"))
}

/// How many times each id was delivered.
pub fn id_counts(lines: &[Value]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let id: u64 = line["id"]
            .as_str()
            .expect("id is a string")
            .parse()
            .expect("numeric id");
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Sends SIGTERM to `child` (with kill(1): the tests forbid unsafe code).
pub async fn sigterm(child: &Child) {
    let pid = child.id().expect("the child is running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid}");
}

/// A command ready to run.
#[must_use]
pub struct Cmd {
    command: Command,
}

impl Cmd {
    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Cmd {
        self.command.env_remove(key);
        self
    }

    pub async fn run(mut self) -> Output {
        let out = self.command.output().await.expect("binary runs");
        Output::from(out)
    }

    pub fn spawn(mut self) -> Child {
        self.command.spawn().expect("binary starts")
    }
}

/// What a run printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Self {
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    #[track_caller]
    pub fn code(self, want: i32) -> Output {
        assert_eq!(
            self.code,
            Some(want),
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn success(self) -> Output {
        self.code(0)
    }

    /// The run summary `poll --json` printed.
    #[track_caller]
    pub fn summary(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("summary {:?}: {e}", self.stdout))
    }

    /// The one error line, asserting there is exactly one line on stderr.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "want one error line, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        lines[0]
    }
}
