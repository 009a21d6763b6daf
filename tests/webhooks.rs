//! `serve`: signed webhooks in, records out through the sink, once; the poll behind them
//! for completeness; crash safety of the queue.

use std::time::{Duration, Instant};

use martech_sync::timestamp::Millis;
use martech_sync::webhook::signature::sign_v3;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::support::{Env, id_counts};

pub(crate) const SECRET: &str = "app-client-secret-5c1e";

/// A running `serve` and where to reach it.
pub(crate) struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Serve {
    async fn start(env: &Env, extra: &[&str]) -> Serve {
        Serve::start_on(env, extra, |cmd| cmd).await
    }

    /// As [`Serve::start`], with `then` applied to the command.
    pub(crate) async fn start_on(
        env: &Env,
        extra: &[&str],
        then: impl FnOnce(crate::support::Cmd) -> crate::support::Cmd,
    ) -> Serve {
        let sink = format!("jsonl:{}", env.path("out.jsonl").display());
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--retry-base", "10ms"];
        if !extra.contains(&"--sink") {
            args.extend(["--sink", &sink]);
        }
        args.extend_from_slice(extra);
        let mut child = then(env.cmd(&args).env("HUBSPOT_CLIENT_SECRET", SECRET)).spawn();
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .unwrap();
        let Some(hook) = line else {
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "serve exited {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let base = hook
            .strip_suffix("/webhooks/hubspot")
            .unwrap_or_else(|| panic!("serve printed {hook:?}, not its webhook URL"))
            .to_owned();
        Serve { child, base }
    }

    fn hook(&self) -> String {
        format!("{}/webhooks/hubspot", self.base)
    }

    /// POSTs `body` signed for `signed_url` with `secret` at `ts`; returns the status and
    /// how long the answer took.
    async fn post(&self, body: &str, secret: &str, signed_url: &str, ts: i64) -> (u16, Duration) {
        let ts = ts.to_string();
        let signature = sign_v3(secret.as_bytes(), "POST", signed_url, body.as_bytes(), &ts);
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(self.hook())
            .header("content-type", "application/json")
            .header("X-HubSpot-Signature-v3", signature)
            .header("X-HubSpot-Request-Timestamp", ts)
            .body(body.to_owned())
            .send()
            .await
            .expect("serve answers");
        (response.status().as_u16(), started.elapsed())
    }

    pub(crate) async fn send(&self, body: &str) -> (u16, Duration) {
        self.post(body, SECRET, &self.hook(), Millis::now().0).await
    }

    /// How it exited, which it must within `limit`.
    pub(crate) async fn exited(self, limit: Duration) -> std::process::Output {
        tokio::time::timeout(limit, self.child.wait_with_output())
            .await
            .expect("serve exits in time")
            .unwrap()
    }

    /// SIGTERM, then checks the exit code and that no secret was printed.
    pub(crate) async fn stop(self) {
        crate::support::sigterm(&self.child).await;
        let out = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .expect("serve stops within 10 s of SIGTERM")
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!printed.contains(SECRET), "the client secret was printed");
        assert!(
            !printed.contains("lost the lock"),
            "a healthy serve said it lost a lock: {printed}"
        );
        assert!(
            !printed.contains(crate::support::TOKEN),
            "the token was printed"
        );
    }
}

pub(crate) fn event(id: u64, kind: &str, occurred: i64, event_id: u64) -> Value {
    json!({
        "eventId": event_id, "subscriptionId": 7, "portalId": 62515, "appId": 1,
        "occurredAt": occurred, "subscriptionType": format!("contact.{kind}"),
        "attemptNumber": 0, "objectId": id, "changeSource": "CRM",
    })
}

/// Waits until `done` holds, checking every 50 ms, for at most `limit`.
pub(crate) async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !done() {
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_bodies_and_health_are_checked() {
    let env = Env::contacts(10).await;
    let serve = Serve::start(&env, &[]).await;
    let body = json!([event(1, "creation", Millis::now().0, 1)]).to_string();
    let now = Millis::now().0;

    assert_eq!(serve.send(&body).await.0, 200);
    let tampered = body.replace("creation", "deletion");
    let signature_for = |b: &str| {
        sign_v3(
            SECRET.as_bytes(),
            "POST",
            &serve.hook(),
            b.as_bytes(),
            &now.to_string(),
        )
    };
    let client = reqwest::Client::new();
    let with = |b: String, sig: String| {
        client
            .post(serve.hook())
            .header("X-HubSpot-Signature-v3", sig)
            .header("X-HubSpot-Request-Timestamp", now.to_string())
            .body(b)
            .send()
    };
    assert_eq!(
        with(tampered, signature_for(&body)).await.unwrap().status(),
        401,
        "tampered body"
    );
    assert_eq!(
        serve
            .post(&body, "wrong-secret", &serve.hook(), now)
            .await
            .0,
        401,
        "wrong secret"
    );
    assert_eq!(
        serve
            .post(
                &body,
                SECRET,
                "https://elsewhere.example/webhooks/hubspot",
                now
            )
            .await
            .0,
        401,
        "wrong URL"
    );
    assert_eq!(
        serve
            .post(&body, SECRET, &serve.hook(), now - 301_000)
            .await
            .0,
        401,
        "stale"
    );
    assert_eq!(
        serve
            .post(&body, SECRET, &serve.hook(), now + 301_000)
            .await
            .0,
        401,
        "future"
    );
    let unsigned = client
        .post(serve.hook())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401, "missing header");
    let big = format!("[{}]", " ".repeat(1 << 20));
    assert_eq!(serve.send(&big).await.0, 413, "over 1 MiB");
    assert_eq!(serve.send(r#"{"not":"an array"}"#).await.0, 400);
    let health = client
        .get(format!("{}/healthz", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signatures_only_with_the_flag() {
    use sha2::{Digest, Sha256};

    let env = Env::contacts(10).await;
    let body = json!([event(1, "creation", Millis::now().0, 1)]).to_string();
    let v1: String = Sha256::digest(format!("{SECRET}{body}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let send_v1 = |serve: &Serve| {
        reqwest::Client::new()
            .post(serve.hook())
            .header("X-HubSpot-Signature", v1.clone())
            .header("X-HubSpot-Signature-Version", "v1")
            .body(body.clone())
            .send()
    };

    let strict = Serve::start(&env, &[]).await;
    assert_eq!(
        send_v1(&strict).await.unwrap().status(),
        401,
        "v1 without the flag"
    );
    strict.stop().await;

    let legacy = Serve::start(&env, &["--allow-legacy-signatures"]).await;
    assert_eq!(send_v1(&legacy).await.unwrap().status(), 200);
    let mut forged = v1.clone();
    forged.replace_range(..1, if forged.starts_with('0') { "1" } else { "0" });
    let refused = reqwest::Client::new()
        .post(legacy.hook())
        .header("X-HubSpot-Signature", forged)
        .header("X-HubSpot-Signature-Version", "v1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a wrong v1 signature");
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 1
    })
    .await;
    legacy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_duplicates_and_disorder_is_delivered_once_and_fast() {
    let env = Env::contacts(1_000).await;
    // A slow sink: the receiver must answer fast all the same.
    let slow = format!(
        "exec:sleep 0.05; cat >> {}",
        env.path("out.jsonl").display()
    );
    let serve = Serve::start(&env, &["--sink", &slow]).await;
    let base = Millis::now().0 - 60_000;
    let mut events: Vec<Value> = (1..=1_000u64)
        .flat_map(|id| {
            let at = base + i64::try_from(id).unwrap();
            [
                event(id, "creation", at, id),
                event(id, "propertyChange", at + 5, 10_000 + id),
            ]
        })
        .collect();
    events.reverse(); // newest first: out of order
    let batches: Vec<String> = events
        .chunks(100)
        .map(|c| Value::from(c.to_vec()).to_string())
        .collect();
    assert_eq!(batches.len(), 20);
    let mut slowest = Duration::ZERO;
    // Every batch, then five of them again (HubSpot's retries).
    for body in batches.iter().chain(batches.iter().step_by(4)) {
        let (status, took) = serve.send(body).await;
        assert_eq!(status, 200);
        slowest = slowest.max(took);
    }
    assert!(
        slowest <= Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );

    eventually(Duration::from_secs(60), || {
        id_counts(&env.lines("out.jsonl")).len() == 1_000
    })
    .await;
    let lines = env.lines("out.jsonl");
    assert_eq!(lines.len(), 1_000, "a record delivered twice");
    let status = env.status().await;
    assert_eq!(status["webhooks"]["queued"], 0);
    assert_eq!(status["webhooks"]["dead"], 0);

    // The poll behind the webhooks finds nothing new.
    let window = env
        .cmd(&[
            "reconcile",
            "contacts",
            "--lookback",
            "4000d",
            "--json",
            "--sink",
            &slow,
        ])
        .run()
        .await
        .success()
        .summary();
    assert_eq!(window["seen"], 1_000);
    assert_eq!(window["delivered"], 0);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_become_tombstones_and_the_latest_event_decides() {
    let env = Env::contacts(5).await;
    let serve = Serve::start(&env, &[]).await;
    let at = Millis::now().0;
    let body = json!([
        event(3, "deletion", at, 1),
        event(4, "propertyChange", at, 2),
        // Deleted, then restored: the record is alive.
        event(5, "deletion", at, 3),
        event(5, "restore", at + 1, 4),
        // A change HubSpot has no record for any more: gone, so a tombstone.
        event(999, "propertyChange", at, 5),
    ])
    .to_string();
    assert_eq!(serve.send(&body).await.0, 200);
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 4
    })
    .await;
    let lines = env.lines("out.jsonl");
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("record {id}"))
            .clone()
    };
    assert_eq!(line("3")["archived"], true);
    assert_eq!(line("3")["updatedAt"], Millis(at).to_rfc3339());
    assert_eq!(line("4")["archived"], false);
    assert!(
        line("4")["properties"]["email"]
            .as_str()
            .unwrap()
            .contains("@example.com")
    );
    assert_eq!(
        line("5")["archived"],
        false,
        "the restore came after the deletion"
    );
    assert_eq!(line("999")["archived"], true);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_200_loses_no_event() {
    let env = Env::contacts(100).await;
    env.mock.hold_batch_reads();
    let mut serve = Serve::start(&env, &[]).await;
    let at = Millis::now().0;
    let events: Vec<Value> = (1..=50)
        .map(|id| event(id, "propertyChange", at, id))
        .collect();
    assert_eq!(serve.send(&Value::from(events).to_string()).await.0, 200);
    // The worker is fetching the records: the batch is answered, not delivered.
    eventually(Duration::from_secs(30), || {
        env.mock.calls("batch_read") >= 1
    })
    .await;
    serve.child.kill().await.expect("SIGKILL");
    assert!(env.lines("out.jsonl").is_empty());
    env.mock.knobs().hold_batch_reads = false;
    env.mock.release();

    let serve = Serve::start(&env, &[]).await;
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 50
    })
    .await;
    assert_eq!(id_counts(&env.lines("out.jsonl")).len(), 50);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_webhook_arrives_with_the_next_reconciliation_window() {
    let env = Env::contacts(200).await;
    let serve = Serve::start(&env, &["--poll", "contacts", "--interval", "1"]).await;
    // The first window delivers everything there is.
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 200
    })
    .await;
    // A change HubSpot never sent a webhook for.
    env.mock.modify("contacts", [42]);
    let newest = env
        .mock
        .store()
        .get("contacts", 42)
        .unwrap()
        .modified
        .to_rfc3339();
    eventually(Duration::from_secs(60), || {
        env.lines("out.jsonl")
            .iter()
            .any(|l| l["id"] == "42" && l["updatedAt"] == newest.as_str())
    })
    .await;
    assert_eq!(env.lines("out.jsonl").len(), 201);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_parks_events_as_dead_letters() {
    let env = Env::contacts(20).await;
    let serve = Serve::start(
        &env,
        &[
            "--sink",
            "exec:echo 'warehouse down' >&2; exit 1",
            "--dead-after",
            "5",
        ],
    )
    .await;
    let at = Millis::now().0;
    let body = json!([event(1, "creation", at, 1), event(2, "creation", at, 2)]).to_string();
    assert_eq!(serve.send(&body).await.0, 200);
    let dead = || async { env.status().await["webhooks"]["dead"].as_u64().unwrap_or(0) };
    let started = Instant::now();
    while dead().await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "events never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.stop().await;
    let list = env.cmd(&["dead-letters", "list"]).run().await.success();
    assert!(list.stdout.contains("after 5 attempts"), "{}", list.stdout);
    assert!(list.stdout.contains("warehouse down"), "{}", list.stdout);
    let retry = env.cmd(&["dead-letters", "retry"]).run().await.success();
    assert!(
        retry.stdout.starts_with("2 dead events queued again"),
        "{}",
        retry.stdout
    );
    assert_eq!(env.status().await["webhooks"]["queued"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_event_tombstones_the_merged_records_and_fetches_the_new_one() {
    let env = Env::contacts(20).await;
    let serve = Serve::start(&env, &[]).await;
    let at = Millis::now().0;
    let creations: Vec<Value> = (1..=20).map(|id| event(id, "creation", at, id)).collect();
    assert_eq!(serve.send(&Value::from(creations).to_string()).await.0, 200);
    eventually(Duration::from_secs(20), || {
        env.lines("out.jsonl").len() == 20
    })
    .await;

    let new = env.mock.merge("contacts", 3, &[4, 5]).unwrap();
    let merge = json!([{
        "eventId": 99, "subscriptionId": 8, "portalId": 62515, "appId": 1,
        "occurredAt": Millis::now().0, "subscriptionType": "contact.merge",
        "attemptNumber": 0, "objectId": 3, "primaryObjectId": 3,
        "mergedObjectIds": [4, 5], "newObjectId": new, "numberOfPropertiesMoved": 2,
    }]);
    assert_eq!(serve.send(&merge.to_string()).await.0, 200);
    eventually(Duration::from_secs(20), || {
        env.lines("out.jsonl").len() == 24
    })
    .await;

    let lines = env.lines("out.jsonl");
    let added = &lines[20..];
    let winner: Vec<&Value> = added
        .iter()
        .filter(|l| crate::support::id_of(l) == new)
        .collect();
    assert_eq!(winner.len(), 1, "{added:#?}");
    assert_eq!(winner[0]["archived"], false);
    for loser in [3, 4, 5] {
        let t: Vec<&Value> = added
            .iter()
            .filter(|l| crate::support::id_of(l) == loser)
            .collect();
        assert_eq!(t.len(), 1, "{loser} tombstoned once: {added:#?}");
        assert_eq!(t[0]["archived"], true);
        assert_eq!(t[0]["mergedInto"], new.to_string());
    }
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_record_gone_for_good_tombstones_it_whatever_its_time() {
    let env = Env::contacts(10).await;
    env.poll(&[]).run().await.success();
    let modified = env.mock.store().get("contacts", 4).unwrap().modified;
    env.mock.store().delete_for_good("contacts", 4);
    let serve = Serve::start(&env, &[]).await;
    // HubSpot's event time is a little before the version the poll delivered.
    let body = json!([event(4, "propertyChange", modified.0 - 3, 1)]).to_string();
    assert_eq!(serve.send(&body).await.0, 200);
    eventually(Duration::from_secs(20), || {
        env.lines("out.jsonl").len() == 11
    })
    .await;
    let last = env.lines("out.jsonl").pop().unwrap();
    assert_eq!(
        (last["id"].as_str(), &last["archived"]),
        (Some("4"), &Value::Bool(true))
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_record_does_not_hold_back_its_batch() {
    let env = Env::contacts(20).await;
    let loader = "exec:input=$(cat); \
        if printf '%s' \"$input\" | grep -q '\"id\":\"7\"'; then echo 'cannot load 7' >&2; exit 3; fi; \
        printf '%s\\n' \"$input\" >> out.jsonl";
    let serve = Serve::start(&env, &["--sink", loader, "--dead-after", "4"]).await;
    let at = Millis::now().0;
    let deletions: Vec<Value> = (1..=20).map(|id| event(id, "deletion", at, id)).collect();
    assert_eq!(serve.send(&Value::from(deletions).to_string()).await.0, 200);
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 19
    })
    .await;
    let dead = || async { env.status().await["webhooks"]["dead"].as_u64().unwrap_or(0) };
    let started = Instant::now();
    while dead().await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "7 never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<u64> = env
        .lines("out.jsonl")
        .iter()
        .map(crate::support::id_of)
        .collect();
    assert!(!ids.contains(&7) && ids.len() == 19, "{ids:?}");
    serve.stop().await;
    let list = env
        .cmd(&["dead-letters", "list", "--json"])
        .run()
        .await
        .success();
    let dead: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(
        dead.as_array().unwrap().len(),
        1,
        "only 7's event: {dead:#}"
    );
    assert_eq!(dead[0]["id"], 7);
    assert!(
        dead[0]["lastError"]
            .as_str()
            .unwrap()
            .contains("cannot load 7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_state_file_exits_75() {
    let env = Env::contacts(10).await;
    let first = Serve::start(&env, &[]).await;
    let second = env
        .cmd(&["serve", "--listen", "127.0.0.1:0"])
        .env("HUBSPOT_CLIENT_SECRET", SECRET)
        .run()
        .await
        .code(75);
    assert!(
        second.error_line().contains("another martech-sync serve"),
        "{}",
        second.stderr
    );
    first.stop().await;
}

/// `/healthz`: the status and the JSON report.
async fn health(serve: &Serve) -> (u16, Value) {
    let response = reqwest::get(format!("{}/healthz", serve.base))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_goes_red_on_a_stalled_worker_and_a_locked_queue() {
    let env = Env::contacts(10).await;
    let serve = Serve::start(
        &env,
        &[
            "--sink",
            "exec:sleep 60",
            "--health-stall",
            "2s",
            "--handler-timeout",
            "5m",
        ],
    )
    .await;
    let (status, report) = health(&serve).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["status"], "ok");
    let body = json!([event(1, "creation", Millis::now().0, 1)]).to_string();
    assert_eq!(serve.send(&body).await.0, 200);
    // The handler hangs: the event waits, and after the stall time the check says so.
    let started = Instant::now();
    loop {
        let (status, report) = health(&serve).await;
        if status == 503 {
            assert!(
                report["problems"][0]
                    .as_str()
                    .unwrap()
                    .contains("no progress"),
                "{report:#}"
            );
            assert_eq!(report["queued"], 1);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never red: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM with the handler hung: out within ten seconds, the event still queued.
    let started = Instant::now();
    serve.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(env.status().await["webhooks"]["queued"], 1);

    // A lock held past the busy timeout: the queue cannot be written.
    let serve = Serve::start(&env, &[]).await;
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    loop {
        let (status, report) = health(&serve).await;
        if status == 503 {
            assert!(
                report["problems"][0]
                    .as_str()
                    .unwrap()
                    .contains("cannot be written"),
                "{report:#}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never red: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        serve.send(&body).await.0,
        503,
        "no 200 for what cannot be queued"
    );
    conn.execute_batch("ROLLBACK").unwrap();
    let started = Instant::now();
    while health(&serve).await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never green again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_hangs_on_one_record_holds_back_only_that_record() {
    let env = Env::contacts(20).await;
    let loader = "exec:input=$(cat); \
        if printf '%s' \"$input\" | grep -q '\"id\":\"7\"'; then sleep 30; fi; \
        printf '%s\\n' \"$input\" >> out.jsonl";
    let serve = Serve::start(
        &env,
        &[
            "--sink",
            loader,
            "--handler-timeout",
            "1s",
            "--dead-after",
            "4",
        ],
    )
    .await;
    let at = Millis::now().0;
    let deletions: Vec<Value> = (1..=20).map(|id| event(id, "deletion", at, id)).collect();
    assert_eq!(serve.send(&Value::from(deletions).to_string()).await.0, 200);
    // The batch times out twice, a batch of ten once; then each record goes alone and
    // only 7 hangs again.
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 19
    })
    .await;
    let started = Instant::now();
    while env.status().await["webhooks"]["dead"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "7 never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.stop().await;
    let counts = id_counts(&env.lines("out.jsonl"));
    assert!(
        !counts.contains_key(&7) && counts.len() == 19 && counts.values().all(|n| *n == 1),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_busy_after_the_sink_confirmed_does_not_hand_records_over_again() {
    let env = Env::contacts(20).await;
    // A handler slow enough for the test to take the state file's write lock first.
    let loader = "exec:sleep 1; cat >> out.jsonl";
    let serve = Serve::start(&env, &["--sink", loader]).await;
    let at = Millis::now().0;
    let deletions: Vec<Value> = (1..=5).map(|id| event(id, "deletion", at, id)).collect();
    assert_eq!(serve.send(&Value::from(deletions).to_string()).await.0, 200);
    // A backup or a sqlite3 shell holds the write lock past any busy timeout (10 s)
    // while the handler confirms the page.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    conn.execute_batch("ROLLBACK").unwrap();
    let started = Instant::now();
    while env.status().await["webhooks"]["queued"] != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "events never done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.stop().await;
    let counts = id_counts(&env.lines("out.jsonl"));
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "handed over again: {counts:?}"
    );
}

/// Headers that pass every check made before the body (a fresh timestamp, a signature
/// of the right shape) without being signed.
fn forged_head(content_length: Option<usize>, chunked: bool) -> String {
    let mut head = format!(
        "POST /webhooks/hubspot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-HubSpot-Signature-v3: {}=\r\nX-HubSpot-Request-Timestamp: {}\r\n",
        "A".repeat(43),
        Millis::now().0
    );
    if let Some(n) = content_length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Opens a connection and sends `head`.
async fn open_with(addr: &str, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bodies_cannot_take_the_budget_or_the_connections_of_real_senders() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::contacts(20).await;
    let serve = Serve::start(&env, &["--max-connections", "16"]).await;
    let addr = serve.base.trim_start_matches("http://").to_owned();

    // A chunked body: refused before a byte of it is kept.
    let mut chunked = open_with(&addr, &forged_head(None, true)).await;
    chunked.write_all(b"1\r\n[\r\n").await.unwrap();
    let mut answer = vec![0; 12];
    chunked.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 411",
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Senders that declare a mebibyte and send nothing hold no budget, and 40 of them
    // against a cap of 16 connections, each with a request in flight, do not lock out
    // a real sender or the probe: the oldest unverified connection makes room.
    let mut forged = Vec::new();
    for _ in 0..40 {
        forged.push(open_with(&addr, &forged_head(Some(1 << 20), false)).await);
    }
    // A connection is safe from eviction for its first second: the flood has been on
    // that long when the real sender comes.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let at = Millis::now().0;
    for id in 1..=3 {
        let body = json!([event(id, "creation", at, id)]).to_string();
        let (status, took) = serve.send(&body).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    assert_eq!(health(&serve).await.0, 200);
    drop(forged);
    eventually(Duration::from_secs(20), || {
        env.lines("out.jsonl").len() == 3
    })
    .await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_for_a_moment_catches_up_in_batches() {
    let env = Env::contacts(300).await;
    std::fs::write(env.path("down"), "").unwrap();
    let loader = "exec:test -e down && exit 1; cat >> out.jsonl; echo run >> runs.log";
    let serve = Serve::start(&env, &["--sink", loader]).await;
    let at = Millis::now().0;
    let creations: Vec<Value> = (1..=300).map(|id| event(id, "creation", at, id)).collect();
    assert_eq!(serve.send(&Value::from(creations).to_string()).await.0, 200);
    // Every batch failed once; then the sink comes back.
    let started = Instant::now();
    while env.mock.calls("batch_read") < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "no attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(env.path("down")).unwrap();
    eventually(Duration::from_secs(30), || {
        env.lines("out.jsonl").len() == 300
    })
    .await;
    serve.stop().await;
    let runs = std::fs::read_to_string(env.path("runs.log")).unwrap();
    // Batches of 100, or of 10 for those that failed twice before the sink came back;
    // one record at a time would take 300 runs.
    assert!(
        runs.lines().count() <= 30,
        "{} handler runs for 300 records: the retry went record by record",
        runs.lines().count()
    );
    assert!(id_counts(&env.lines("out.jsonl")).values().all(|n| *n == 1));
}
