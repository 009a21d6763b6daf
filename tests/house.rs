//! The house rules of docs/ARCHITECTURE.md ("Code map"), checked against the source: each
//! room imports only what the map allows, so the map cannot drift from the code and a pure
//! room cannot quietly grow an effect.

use std::collections::BTreeSet;
use std::path::Path;

/// Each room (a file, or a directory of files) and the crate modules it may import.
const MAP: &[(&str, &[&str])] = &[
    ("cli.rs", &[]),
    (
        "config.rs",
        &[
            "cli",
            "destination",
            "hubspot",
            "object",
            "postgres",
            "properties",
            "sink",
            "state",
            "sync",
            "timestamp",
            "token",
            "webhook",
            "window",
            "progress",
            "mock",
        ],
    ),
    (
        "sync.rs",
        &[
            "config",
            "destination",
            "fetch",
            "hubspot",
            "ledger",
            "object",
            "progress",
            "properties",
            "record",
            "report",
            "shutdown",
            "sink",
            "state",
            "timestamp",
            "window",
        ],
    ),
    ("window.rs", &["record", "timestamp"]),
    ("fetch.rs", &["hubspot", "object", "record", "window"]),
    ("ledger.rs", &["record", "state", "timestamp"]),
    ("verify.rs", &["record", "state", "timestamp"]),
    (
        "hubspot",
        &["object", "record", "timestamp", "token", "window"],
    ),
    (
        "sink",
        &[
            "object",
            "postgres",
            "private",
            "record",
            "shutdown",
            "state",
            "timestamp",
            "token",
        ],
    ),
    (
        "state",
        &[
            "destination",
            "lock",
            "object",
            "postgres",
            "private",
            "properties",
            "record",
            "report",
            "state",
            "timestamp",
            "webhook",
            "window",
        ],
    ),
    (
        "webhook",
        &[
            "destination",
            "hubspot",
            "ledger",
            "lock",
            "object",
            "record",
            "shutdown",
            "state",
            "sync",
            "timestamp",
        ],
    ),
    ("mock", &["object", "timestamp"]),
    (
        "watch.rs",
        &[
            "hubspot",
            "report",
            "shutdown",
            "sync",
            "timestamp",
            "window",
        ],
    ),
    (
        "exit.rs",
        &[
            "command", "config", "lock", "sink", "state", "sync", "window",
        ],
    ),
    ("logging.rs", &["cli", "config", "progress"]),
    ("destination.rs", &["sink"]),
    (
        "lock.rs",
        &["destination", "object", "postgres", "shutdown", "state"],
    ),
    ("report.rs", &["object", "timestamp", "window"]),
    ("progress.rs", &["report", "timestamp", "window"]),
    ("shutdown.rs", &["sink"]),
    ("record.rs", &["object", "timestamp"]),
    ("object.rs", &[]),
    ("timestamp.rs", &[]),
    ("token.rs", &[]),
    ("properties.rs", &[]),
    ("private.rs", &[]),
    ("postgres.rs", &[]),
];

/// The crate modules `text` names: `crate::NAME`, and each name of a group
/// `crate::{NAME, NAME::...}`.
fn imports(text: &str) -> BTreeSet<String> {
    let name = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                // Top-level names of the group: the first segment of each item.
                let mut depth = 0;
                let mut item_start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.insert(name(&group[item_start..i]));
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
                names.insert(name(&group[item_start..]));
            }
            None => {
                names.insert(name(rest));
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn grouped_imports_are_read_too() {
    let names = imports("use crate::{sink, state::State};\nuse crate::lock::Lock;");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["lock", "sink", "state"]
    );
}

fn sources(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(sources(&entry.unwrap().path()));
    }
    files
}

#[test]
fn every_room_imports_only_what_the_code_map_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (room, allowed) in MAP {
        let path = src.join(room);
        assert!(path.exists(), "{room} is in the map but not in src/");
        for file in sources(&path) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in imports(&text) {
                if !allowed.contains(&name.as_str()) {
                    broken.push(format!(
                        "{} imports crate::{name}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports the code map (docs/ARCHITECTURE.md) does not allow: {broken:#?}"
    );
}

#[test]
fn every_room_is_on_the_map() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mapped: BTreeSet<&str> = MAP.iter().map(|(room, _)| *room).collect();
    // Rooms that may import anything: the command layer and the crate root.
    let free = ["command", "lib.rs", "main.rs"];
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            mapped.contains(name.as_str()) || free.contains(&name.as_str()),
            "src/{name} is not on the code map of docs/ARCHITECTURE.md"
        );
    }
}
