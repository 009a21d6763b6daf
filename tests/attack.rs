//! `serve` under the floods of the open internet, on loopback and bounded in count and
//! time: clients that trickle their headers, clients that send a mebibyte unsigned and
//! stall, forged requests that stall after their headers past the cap of connections,
//! idle connections past a 1,024-descriptor limit, and a SIGTERM with all of them still
//! open. Under each, a valid signed POST must get its 200 within a second,
//! `/healthz` must answer, the receiver's peak memory must stay under 100 MiB, and every
//! accepted event must be delivered.
//!
//! Ignored by `cargo test` (it opens thousands of sockets for about a minute); `.ci/run`
//! runs it with `cargo test -- --ignored attack`. It prints its figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use martech_sync::timestamp::Millis;
use martech_sync::webhook::signature::sign_v3;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::support::{Env, sigterm};

const SECRET: &str = "attack-secret-3b7d";

/// A running `serve` under a 1,024-descriptor limit.
struct Target {
    child: Child,
    addr: String,
    pid: u32,
}

impl Target {
    async fn start(env: &Env) -> Target {
        let bin = env!("CARGO_BIN_EXE_martech-sync");
        let sink = format!("jsonl:{}", env.path("out.jsonl").display());
        // The common default limit: the receiver must live within it.
        let script = format!(
            "ulimit -n 1024 && exec '{bin}' serve --listen 127.0.0.1:0 --sink '{sink}' --retry-base 10ms"
        );
        let mut child = env
            .shell(&script)
            .env("HUBSPOT_CLIENT_SECRET", SECRET)
            .spawn();
        let pid = child.id().unwrap();
        let stdout = child.stdout.take().unwrap();
        let hook = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .unwrap()
            .expect("serve prints its URL");
        let addr = hook
            .trim_start_matches("http://")
            .trim_end_matches("/webhooks/hubspot")
            .to_owned();
        Target { child, addr, pid }
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }

    /// A valid signed POST of one event for record `id`: its status and how long it took.
    async fn post(&self, id: u64) -> (u16, Duration) {
        let url = format!("http://{}/webhooks/hubspot", self.addr);
        let body = json!([{
            "eventId": id, "subscriptionId": 1, "portalId": 1, "occurredAt": Millis::now().0,
            "subscriptionType": "contact.creation", "objectId": id,
        }])
        .to_string();
        let ts = Millis::now().0.to_string();
        let signature = sign_v3(SECRET.as_bytes(), "POST", &url, body.as_bytes(), &ts);
        let started = Instant::now();
        let status = reqwest::Client::new()
            .post(&url)
            .header("X-HubSpot-Signature-v3", signature)
            .header("X-HubSpot-Request-Timestamp", ts)
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        (status, started.elapsed())
    }

    async fn healthz(&self) -> u16 {
        reqwest::Client::new()
            .get(format!("http://{}/healthz", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}

/// What one scenario measured.
struct Figures {
    name: &'static str,
    worst_post: Duration,
    healthz: u16,
    peak_mib: f64,
}

/// Three signed POSTs and a health probe while a flood is on.
async fn measure(target: &Target, name: &'static str, first_id: u64) -> Figures {
    let mut worst = Duration::ZERO;
    for id in first_id..first_id + 3 {
        let (mut status, mut took) = target.post(id).await;
        if status == 0 {
            // Refused: at the cap, with every open connection in its first second (the
            // grace period that keeps a flood of reconnecting sockets from cutting a real
            // sender halfway, server.rs), a new connection is closed. A flood made in
            // under a second does that to a POST right behind it; HubSpot's sender retries
            // later, and so does this one, once, after the grace period.
            eprintln!("{name}: a signed POST was refused; retrying after the grace period");
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let (again, more) = target.post(id).await;
            (status, took) = (again, more); // the answered attempt's time
        }
        assert_eq!(status, 200, "{name}: a signed POST got {status}");
        worst = worst.max(took);
    }
    Figures {
        name,
        worst_post: worst,
        healthz: target.healthz().await,
        peak_mib: target.peak_rss_mib(),
    }
}

/// Raises this process's descriptor limit so that it can open the floods.
fn enough_descriptors(wanted: u64) -> bool {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile)
        .current
        .is_none_or(|n| n >= wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens thousands of sockets for about a minute; .ci/run runs it"]
async fn attack_serve_survives_the_floods_of_the_open_internet() {
    assert!(
        enough_descriptors(4_000),
        "this test needs 4,000 descriptors (ulimit -Hn)"
    );
    let env = Env::contacts(100).await;
    let target = Target::start(&env).await;
    let mut figures = vec![measure(&target, "quiet", 1).await];
    let mut held: Vec<TcpStream> = Vec::new();

    // 500 clients that send one header byte a second.
    let trickle = Arc::new(tokio::sync::Notify::new());
    let mut tricklers = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let addr = target.addr.clone();
        let stop = Arc::clone(&trickle);
        tricklers.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(&addr).await else {
                return false;
            };
            let request = b"POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\nX-Slow: 1";
            for byte in request.iter().cycle() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.notified() => return false,
                }
                if stream.write_all(&[*byte]).await.is_err() {
                    return true; // dropped by the server
                }
            }
            false
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    figures.push(measure(&target, "500 slow-header clients", 10).await);
    // The header timeout (10 s) drops them all.
    let started = Instant::now();
    let mut dropped = 0;
    while let Some(result) = tokio::time::timeout(Duration::from_secs(20), tricklers.join_next())
        .await
        .ok()
        .flatten()
    {
        dropped += usize::from(result.unwrap_or(false));
    }
    trickle.notify_waiters();
    assert_eq!(dropped, 500, "slow-header clients dropped by the server");
    assert!(started.elapsed() < Duration::from_secs(20));

    // 1,500 clients that each send a mebibyte unsigned and stall.
    let mebibyte: Arc<[u8]> = vec![b'['; 1 << 20].into();
    let mut stallers = tokio::task::JoinSet::new();
    for _ in 0..1_500 {
        let addr = target.addr.clone();
        let body = Arc::clone(&mebibyte);
        stallers.spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.ok()?;
            let head = format!(
                "POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                (1 << 20) + 10
            );
            stream.write_all(head.as_bytes()).await.ok()?;
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&body)).await;
            Some(stream)
        });
    }
    let mut stalled = Vec::new();
    while let Some(stream) = stallers.join_next().await {
        stalled.extend(stream.ok().flatten());
    }
    figures.push(measure(&target, "1,500 stalled 1 MiB bodies", 20).await);
    drop(stalled);

    // 1,100 requests whose headers pass the pre-body checks (a fresh timestamp, a
    // signature of the right shape) and whose body never comes, more than the cap of
    // connections: the oldest unverified one makes room, so signed POSTs get in.
    let mut busy = Vec::new();
    for _ in 0..1_100 {
        let head = format!(
            "POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\
             X-HubSpot-Signature-v3: {}=\r\nX-HubSpot-Request-Timestamp: {}\r\n\r\n",
            "A".repeat(43),
            Millis::now().0
        );
        if let Ok(mut stream) = TcpStream::connect(&target.addr).await
            && stream.write_all(head.as_bytes()).await.is_ok()
        {
            busy.push(stream);
        }
    }
    figures.push(measure(&target, "1,100 forged requests stalled", 40).await);
    drop(busy);

    // 1,100 idle connections against a 1,024-descriptor limit.
    for _ in 0..1_100 {
        if let Ok(stream) = TcpStream::connect(&target.addr).await {
            held.push(stream);
        }
    }
    figures.push(measure(&target, "1,100 idle connections", 30).await);

    // Every accepted event is delivered, none dead.
    let started = Instant::now();
    while crate::support::id_counts(&env.lines("out.jsonl")).len() < 15 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "events not delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM with the idle clients still connected: out within ten seconds.
    let started = Instant::now();
    sigterm(&target.child).await;
    let mut child = target.child;
    let _ = child.stdout.take();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops within 10 s of SIGTERM")
        .unwrap();
    let stopped = started.elapsed();
    assert_eq!(status.code(), Some(0));
    drop(held);

    eprintln!("\n| scenario | worst signed POST | /healthz | peak RSS MiB |");
    eprintln!("| --- | ---: | ---: | ---: |");
    for f in &figures {
        eprintln!(
            "| {} | {} ms | {} | {:.1} |",
            f.name,
            f.worst_post.as_millis(),
            f.healthz,
            f.peak_mib
        );
    }
    eprintln!(
        "SIGTERM with 1,100 clients connected: exited 0 after {} ms",
        stopped.as_millis()
    );
    for f in &figures {
        assert!(
            f.worst_post < Duration::from_secs(1),
            "{}: {:?}",
            f.name,
            f.worst_post
        );
        assert_eq!(f.healthz, 200, "{}", f.name);
        assert!(f.peak_mib < 100.0, "{}: {:.1} MiB", f.name, f.peak_mib);
    }
}
