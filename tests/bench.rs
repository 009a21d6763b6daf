//! `cargo bench`: how fast and how lean. Starts the fake HubSpot in this process with a
//! given record count, latency and rate limit, runs the release binary against it, and
//! prints one Markdown table: records/s, requests per 1,000 records, wall time against
//! the ideal under a rate limit, the binary's peak RSS (its own `VmHWM`, from the run
//! summary), and the wall time of a no-op cron run.
//!
//! The fake shares the machine (2 cores here) with the binary; figures are for
//! comparing commits on one machine, not absolute.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use martech_sync::mock::{MockHubspot, Store, seed};
use martech_sync::timestamp::Millis;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_martech-sync");

struct Scenario {
    name: &'static str,
    records: u64,
    latency: Duration,
    fake_limit: Option<u32>,
    rate_limit: &'static str,
    sink: &'static str,
}

struct Row {
    name: &'static str,
    records: u64,
    wall: Duration,
    summary: Value,
    ideal: Option<Duration>,
}

fn main() {
    // `cargo bench -- <filter>` runs the scenarios whose name contains the filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scenarios = [
        Scenario {
            name: "fast, sqlite sink",
            records: 200_000,
            latency: Duration::ZERO,
            fake_limit: None,
            rate_limit: "100000",
            sink: "sqlite",
        },
        Scenario {
            name: "fast, jsonl sink",
            records: 200_000,
            latency: Duration::ZERO,
            fake_limit: None,
            rate_limit: "100000",
            sink: "jsonl",
        },
        Scenario {
            name: "memory, 50k",
            records: 50_000,
            latency: Duration::ZERO,
            fake_limit: None,
            rate_limit: "100000",
            sink: "sqlite",
        },
        Scenario {
            name: "memory, 500k",
            records: 500_000,
            latency: Duration::ZERO,
            fake_limit: None,
            rate_limit: "100000",
            sink: "sqlite",
        },
        Scenario {
            name: "slow API: 300 ms, 5/s",
            records: 20_000,
            latency: Duration::from_millis(300),
            fake_limit: Some(5),
            rate_limit: "5",
            sink: "sqlite",
        },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    let mut noop = None;
    for s in scenarios
        .iter()
        .filter(|s| filter.as_deref().is_none_or(|f| s.name.contains(f)))
    {
        eprintln!("bench: {} ...", s.name);
        let (row, idle) = runtime.block_on(run(s));
        rows.push(row);
        noop = noop.or(idle);
    }
    println!(
        "| scenario | records | wall s | records/s | requests / 1,000 records | wall / ideal | peak RSS MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let delivered = r.summary["delivered"].as_u64().unwrap_or(0);
        let requests = r.summary["requests"].as_u64().unwrap_or(0);
        let secs = r.wall.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let (rate, per_k) = (
            delivered as f64 / secs,
            requests as f64 * 1000.0 / delivered.max(1) as f64,
        );
        let ideal = r
            .ideal
            .map_or("-".to_owned(), |i| format!("{:.2}", secs / i.as_secs_f64()));
        #[allow(clippy::cast_precision_loss)]
        let rss = r.summary["peakRssKb"]
            .as_u64()
            .map_or("-".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0));
        println!(
            "| {} | {} | {secs:.2} | {rate:.0} | {per_k:.2} | {ideal} | {rss} |",
            r.name, r.records
        );
    }
    if let Some(idle) = noop {
        println!(
            "\nNo-op cron run (cursor up to date, nothing modified), median of 5: {:.1} ms",
            idle.as_secs_f64() * 1000.0
        );
    }
}

/// Runs one scenario; for the first fast one, also the median no-op run after it.
async fn run(s: &Scenario) -> (Row, Option<Duration>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Millis::now();
    let n = s.records;
    let mut store = Store::default();
    // Spread over the last days, so a window covers them all.
    store.extend(
        "contacts",
        seed::synthetic(1..=n, |id| {
            now.minus(Duration::from_millis((n - id + 60) * 100))
        }),
    );
    let mock = MockHubspot::start(store, None).await.expect("fake starts");
    {
        let mut knobs = mock.knobs();
        knobs.latency = s.latency;
        knobs.rate_limit = s.fake_limit;
    }
    let sink = match s.sink {
        "jsonl" => format!("jsonl:{}", dir.path().join("out.jsonl").display()),
        other => other.to_owned(),
    };
    let db = dir.path().join("state.db");
    let started = Instant::now();
    let summary = poll(&mock, &db, s.rate_limit, &sink).await;
    let wall = started.elapsed();
    let ideal = s.fake_limit.map(|limit| {
        let pages = summary["requests"].as_u64().unwrap_or(0);
        Duration::from_secs_f64(pages as f64 / f64::from(limit))
    });
    let idle = if s.name.starts_with("fast, sqlite") {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let again = poll(&mock, &db, s.rate_limit, &sink).await;
            assert_eq!(again["delivered"], 0);
            times.push(t.elapsed());
        }
        times.sort();
        Some(times[2])
    } else {
        None
    };
    mock.stop().await;
    (
        Row {
            name: s.name,
            records: n,
            wall,
            summary,
            ideal,
        },
        idle,
    )
}

async fn poll(mock: &MockHubspot, db: &Path, rate_limit: &str, sink: &str) -> Value {
    let out = tokio::process::Command::from({
        let mut c = Command::new(BIN);
        c.args([
            "poll",
            "contacts",
            "--json",
            "--settle",
            "0s",
            "--overlap",
            "0s",
            "--sink",
            sink,
        ])
        .env("MARTECH_SYNC_DB", db)
        .env("HUBSPOT_TOKEN", "bench")
        .env("HUBSPOT_BASE_URL", mock.base_url())
        .env("HUBSPOT_RATE_LIMIT", rate_limit);
        c
    })
    .output()
    .await
    .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("run summary")
}
