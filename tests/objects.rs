//! Every CRM object HubSpot can search, each with its own modified property, and custom
//! objects by type id and by name.

use serde_json::Value;

use crate::support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_standard_object_and_a_custom_one_by_name_poll_end_to_end() {
    let env = Env::every_object(250).await;
    let objects = martech_sync::object::STANDARD
        .iter()
        .map(|s| s.name)
        .chain(["pets", "2-9001"]);
    for object in objects {
        let file = format!("{object}.jsonl");
        let sink = format!("jsonl:{}", env.path(&file).display());
        let out = env
            .cmd(&["poll", object, "--settle", "0s", "--sink", &sink, "--json"])
            .run()
            .await
            .success();
        assert_eq!(out.summary()["delivered"], 250, "{object}: {}", out.stdout);
        let lines = env.lines(&file);
        let parsed: martech_sync::object::ObjectType = object.parse().unwrap();
        let modified = parsed.modified_property();
        for line in &lines {
            assert_eq!(line["objectType"], object);
            assert!(
                line["properties"][modified].is_string(),
                "{object}: no {modified} in {line}"
            );
        }
        // The object's default properties came along.
        for name in parsed.default_properties() {
            assert!(
                !lines[0]["properties"][*name].is_null(),
                "{object}: {name} missing"
            );
        }
    }
    // A name the portal does not have is refused, naming the ones it has.
    let unknown = env
        .cmd(&["poll", "planets", "--settle", "0s"])
        .run()
        .await
        .code(2);
    let line = unknown.error_line();
    assert!(
        line.contains("custom object of this portal") && line.contains("pets"),
        "{line}"
    );
    assert_eq!(
        env.mock.calls("schemas"),
        1,
        "the schemas are cached in the state"
    );
    let status = env.status().await;
    let objects: Vec<&Value> = status["objects"].as_array().unwrap().iter().collect();
    assert_eq!(objects.len(), 17, "15 standard, pets by name and by id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_objects_run_at_once_with_one_summary_and_one_exit_code() {
    let env = Env::every_object(300).await;
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    let run = |objects: &str| {
        env.cmd(&["poll", objects, "--settle", "0s", "--sink", &sink, "--json"])
            .run()
    };
    let out = run("contacts,companies,deals").await.success();
    let summary: Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let entries = summary["objects"].as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["object"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["contacts", "companies", "deals"]);
    for entry in entries {
        assert_eq!(entry["outcome"], "committed", "{entry}");
        assert_eq!(entry["delivered"], 300, "{entry}");
    }
    // One file, three objects, whole lines: every record once.
    let lines = env.lines("out.jsonl");
    assert_eq!(lines.len(), 900);
    for object in ["contacts", "companies", "deals"] {
        let ids: std::collections::BTreeSet<u64> = lines
            .iter()
            .filter(|l| l["objectType"] == object)
            .map(crate::support::id_of)
            .collect();
        assert_eq!(ids.len(), 300, "{object}");
    }

    // An object the token cannot read is skipped with one line naming the scope; the
    // others commit and the run exits 0.
    env.mock.knobs().unreadable = vec!["tickets".to_owned()];
    let out = run("tickets,products").await.success();
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["objects"][0]["outcome"], "skipped");
    assert_eq!(summary["objects"][1]["outcome"], "committed");
    let warned: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("crm.objects.tickets.read"))
        .collect();
    assert_eq!(warned.len(), 1, "{}", out.stderr);

    // --all-objects: every standard object, the unreadable one skipped.
    let out = env
        .cmd(&[
            "poll",
            "--all-objects",
            "--settle",
            "0s",
            "--sink",
            &sink,
            "--json",
        ])
        .run()
        .await
        .success();
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    let entries = summary["objects"].as_array().unwrap();
    assert_eq!(entries.len(), martech_sync::object::STANDARD.len());
    let skipped: Vec<&Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["object"], "tickets");

    // A name that is no object of the portal is a typo: exit 2 before anything runs.
    env.mock.knobs().unreadable.clear();
    let searches = env.mock.searches();
    let out = run("planets,tickets").await.code(2);
    assert!(out.error_line().contains("`planets`"), "{}", out.stderr);
    assert_eq!(env.mock.searches(), searches, "nothing ran");

    // A failing object fails the run (exit 1) and the others still commit.
    let fails_on_deals = "exec:cat > /dev/null; test \"$MARTECH_SYNC_OBJECT\" != deals || { echo 'no room for deals' >&2; exit 1; }";
    let out = env
        .cmd(&[
            "poll",
            "deals,tickets",
            "--settle",
            "0s",
            "--sink",
            fails_on_deals,
            "--json",
        ])
        .run()
        .await
        .code(1);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["objects"][0]["outcome"], "failed");
    assert_eq!(summary["objects"][1]["outcome"], "committed");
    // One ERROR line for each failed object with its reason, then the run's own line.
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.contains("WARN")).collect();
    assert!(
        lines.len() == 2
            && lines[0].contains("ERROR")
            && lines[0].contains("object=deals")
            && lines[0].contains("no room for deals")
            && lines[1].starts_with("error: 1 of 2 objects failed (deals)"),
        "{}",
        out.stderr
    );
    // Each object counts its own requests, though they share one client.
    let tickets_requests = summary["objects"][1]["requests"].as_u64().unwrap();
    assert!(tickets_requests <= 4, "{}", summary["objects"][1]);

    // An object whose lock another run holds: exit 75, the others commit.
    let sink_spec: martech_sync::sink::SinkSpec = sink.parse().unwrap();
    let destination = martech_sync::destination::Destination::of(&sink_spec, None).unwrap();
    let held =
        martech_sync::lock::ObjectLock::acquire(&env.db(), &"deals".parse().unwrap(), &destination)
            .unwrap();
    let out = run("deals,quotes").await.code(75);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["objects"][0]["outcome"], "locked");
    assert_eq!(summary["objects"][1]["outcome"], "committed");
    drop(held);

    // Six objects at once under HubSpot's per-account search limit: one pacing for all,
    // so not one 429.
    env.mock.knobs().rate_limit = Some(5);
    let before = env.mock.answered(429);
    let searches = env.mock.searches();
    env.cmd(&[
        "poll",
        "calls,emails,meetings,notes,tasks,communications",
        "--settle",
        "0s",
        "--sink",
        &sink,
        "--rate-limit",
        "4",
    ])
    .run()
    .await
    .success();
    assert!(
        env.mock.searches() - searches >= 12,
        "the six objects searched"
    );
    assert_eq!(
        env.mock.answered(429) - before,
        0,
        "429s under one shared pacing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_objects_in_continuous_mode_each_keep_their_own_windows() {
    let env = Env::every_object(200).await;
    let sink = format!("jsonl:{}", env.path("out.jsonl").display());
    let child = env
        .cmd(&[
            "poll",
            "contacts,deals",
            "--settle",
            "0s",
            "--sink",
            &sink,
            "--interval",
            "1",
            "--json",
        ])
        .spawn();
    // Two windows of each object at least: a first window and one after a tick.
    env.mock.wait_for_searches(6).await;
    crate::support::sigterm(&child).await;
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("exits within 5 s of SIGTERM")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summaries: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for object in ["contacts", "deals"] {
        assert!(
            summaries.iter().any(|s| s["object"] == object),
            "{object} ran: {summaries:?}"
        );
        let status = env.object_status(object).await;
        assert!(status["cursorMs"].is_i64(), "{object} committed: {status}");
    }
    let lines = env.lines("out.jsonl");
    assert_eq!(lines.len(), 400, "each record once");
}
