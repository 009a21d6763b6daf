//! `cargo bench`: how fast and how lean. Starts the fake HubSpot in this process with a
//! given record count, latency and rate limit, runs the release binary against it, and
//! prints one Markdown table: records/s, requests per 1,000 records, wall time against
//! the ideal under a rate limit, the binary's peak RSS (its own `VmHWM`, from the run
//! summary), and the wall time of a no-op cron run. Under rate limits, the ideal is the
//! time the budgets allow: a backfill reads search pages of 200 and list pages of 100 at
//! once, so `records ÷ (search_rate × 200 + general_rate × 100)`; a search-only window,
//! its searches ÷ the search rate. A second table gives requests by endpoint and 429s.
//!
//! The fake shares the machine (2 cores here) with the binary, and for the postgres sink
//! the tests' throwaway Postgres cluster too (started as the tests start it, with fsync
//! off); figures are for comparing commits on one machine, not absolute.

use std::process::Command;
use std::time::{Duration, Instant};

use martech_sync::mock::{MockHubspot, Store, seed};
use martech_sync::object::ObjectType;
use martech_sync::timestamp::Millis;
use serde_json::Value;

/// The throwaway Postgres cluster of the tests, for the postgres sink.
#[path = "support/postgres.rs"]
mod pg;

const BIN: &str = env!("CARGO_BIN_EXE_martech-sync");

struct Scenario {
    name: &'static str,
    /// Records of each object.
    records: u64,
    /// The objects, all in one run.
    objects: &'static [&'static str],
    latency: Duration,
    /// The fake's search limit, requests a second.
    fake_limit: Option<u32>,
    /// `HUBSPOT_RATE_LIMIT`; `None` for the default.
    rate_limit: Option<&'static str>,
    /// The fake's general budget a second (enforced over 10 s, with HubSpot's headers),
    /// and `--general-rate-limit` set to it.
    general: Option<u32>,
    /// `--since`: a window that is not a backfill reads through search alone.
    since: Option<&'static str>,
    sink: &'static str,
    /// The state in the sink's Postgres database (`--db postgres://…`), not a file.
    pg_state: bool,
}

impl Scenario {
    const fn fast(name: &'static str, records: u64, sink: &'static str) -> Scenario {
        Scenario {
            name,
            records,
            objects: &["contacts"],
            latency: Duration::ZERO,
            fake_limit: None,
            rate_limit: Some("100000"),
            general: None,
            since: None,
            sink,
            pg_state: false,
        }
    }
}

struct Row {
    name: &'static str,
    wall: Duration,
    summary: Value,
    ideal: Option<Duration>,
    searches: u64,
    lists: u64,
    limited: u64,
}

const SIX: &[&str] = &[
    "contacts",
    "companies",
    "deals",
    "tickets",
    "products",
    "line_items",
];

fn main() {
    // `cargo bench -- <filter>` runs the scenarios whose name contains the filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scenarios = [
        Scenario::fast("fast, sqlite sink", 200_000, "sqlite"),
        Scenario::fast("fast, jsonl sink", 200_000, "jsonl"),
        Scenario::fast("fast, postgres sink", 200_000, "postgres"),
        Scenario {
            name: "fast, postgres sink and state",
            pg_state: true,
            ..Scenario::fast("", 200_000, "postgres")
        },
        Scenario::fast("memory, 50k", 50_000, "sqlite"),
        Scenario::fast("memory, 500k", 500_000, "sqlite"),
        Scenario {
            name: "slow API: 300 ms, search 5/s, search only",
            latency: Duration::from_millis(300),
            fake_limit: Some(5),
            rate_limit: Some("5"),
            since: Some("2000-01-01"),
            ..Scenario::fast("", 20_000, "sqlite")
        },
        Scenario {
            name: "backfill: search 20/s + general 40/s",
            fake_limit: Some(20),
            rate_limit: Some("20"),
            general: Some(40),
            ..Scenario::fast("", 100_000, "sqlite")
        },
        Scenario {
            name: "six objects, one search limit of 5/s",
            objects: SIX,
            fake_limit: Some(5),
            rate_limit: None,
            general: Some(10),
            ..Scenario::fast("", 5_000, "sqlite")
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
            r.name, delivered
        );
    }
    println!("\n| scenario | searches | list pages | 429s |");
    println!("| --- | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.name, r.searches, r.lists, r.limited
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
    for name in s.objects {
        let object: ObjectType = name.parse().expect("a standard object");
        store.extend(
            name,
            seed::synthetic_for(&object, 1..=n, |id| {
                now.minus(Duration::from_millis((n - id + 60) * 100))
            }),
        );
    }
    let mock = MockHubspot::start(store, None).await.expect("fake starts");
    {
        let mut knobs = mock.knobs();
        knobs.latency = s.latency;
        knobs.rate_limit = s.fake_limit;
        knobs.general_limit = s.general.map(|g| (g * 10, Duration::from_secs(10)));
    }
    let sink = match s.sink {
        "jsonl" => format!("jsonl:{}", dir.path().join("out.jsonl").display()),
        "postgres" => pg::server().database().await.url,
        other => other.to_owned(),
    };
    let db = if s.pg_state {
        sink.clone()
    } else {
        dir.path().join("state.db").display().to_string()
    };
    let started = Instant::now();
    let summary = poll(&mock, &db, s, &sink).await;
    let wall = started.elapsed();
    let searches = mock.searches();
    #[allow(clippy::cast_precision_loss)]
    // Against the fake's limits, when the client paces at them (six objects pace at the
    // default 4/s under a limit of 5: that row is about 429s).
    let ideal = match (
        s.fake_limit.filter(|_| s.rate_limit.is_some()),
        s.general,
        s.since,
    ) {
        (Some(search), Some(general), None) => Some(Duration::from_secs_f64(
            (n * s.objects.len() as u64) as f64 / f64::from(search * 200 + general * 100),
        )),
        (Some(search), _, _) => Some(Duration::from_secs_f64(searches as f64 / f64::from(search))),
        _ => None,
    };
    let idle = if s.name.starts_with("fast, sqlite") {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let again = poll(&mock, &db, s, &sink).await;
            assert_eq!(again["delivered"], 0);
            times.push(t.elapsed());
        }
        times.sort();
        Some(times[2])
    } else {
        None
    };
    let (lists, limited) = (mock.calls("list"), mock.answered(429));
    mock.stop().await;
    (
        Row {
            name: s.name,
            wall,
            summary,
            ideal,
            searches,
            lists,
            limited,
        },
        idle,
    )
}

/// One run; for several objects, their summaries summed into one.
async fn poll(mock: &MockHubspot, db: &str, s: &Scenario, sink: &str) -> Value {
    let objects = s.objects.join(",");
    let out = tokio::process::Command::from({
        let mut c = Command::new(BIN);
        c.args([
            "poll",
            &objects,
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
        .env("HUBSPOT_BASE_URL", mock.base_url());
        if let Some(since) = s.since {
            c.args(["--since", since]);
        }
        if let Some(rate) = s.rate_limit {
            c.env("HUBSPOT_RATE_LIMIT", rate);
        }
        if let Some(general) = s.general {
            c.env("HUBSPOT_GENERAL_RATE_LIMIT", general.to_string());
        }
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
    let summary: Value = serde_json::from_slice(&out.stdout).expect("run summary");
    let Some(objects) = summary["objects"].as_array() else {
        return summary;
    };
    let sum = |key: &str| objects.iter().filter_map(|o| o[key].as_u64()).sum::<u64>();
    let peak = objects.iter().filter_map(|o| o["peakRssKb"].as_u64()).max();
    serde_json::json!({
        "delivered": sum("delivered"),
        "requests": sum("requests"),
        "peakRssKb": peak,
    })
}
