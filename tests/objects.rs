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
