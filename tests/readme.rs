//! The README's examples, run as written, so that they cannot rot.
//!
//! Every ```` ```sh ```` block after the first (the two commands of a fresh clone) runs, in
//! README order, as one bash script with `set -euo pipefail`, in an empty directory, with
//! the built `martech-sync` first on `PATH` and `HOME` inside that directory. The README
//! itself starts the fake HubSpot ("Try it without an account") and points the rest at it;
//! its port is swapped for a free one here. A block fenced as ```` ```sh norun ```` is only
//! shown (it needs a real server, runs for ever, or writes outside the directory); a block
//! fenced as ```` ```sh file=NAME ```` or ```` ```python file=NAME ```` is written to `NAME`
//! (executable) before the script runs. Everything the script starts is killed at the end.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The port the README's examples give the fake HubSpot.
const README_PORT: &str = "8091";

/// One fenced block of the README.
struct Block {
    /// The README line of the opening fence.
    line: usize,
    info: String,
    body: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    line: i + 1,
                    info: info.trim().to_owned(),
                    body: String::new(),
                });
            }
            (Some(_), Some("")) => blocks.extend(open.take()),
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "the README ends inside a fenced block");
    blocks
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run_as_written() {
    for tool in ["jq", "sqlite3", "python3"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the README's examples use {tool}: install it (tests/run does, on Debian)"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut script = String::from("set -euo pipefail\n");
    let mut ran = 0;
    for block in blocks(&readme)
        .into_iter()
        .skip_while(|b| b.info != "sh")
        .skip(1)
    {
        let mut words = block.info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let option = words.next();
        match (lang, option) {
            ("sh", None) => {
                script.push_str(&format!("echo '>>> README.md line {}' >&2\n", block.line));
                script.push_str(&block.body.replace(README_PORT, &port));
                ran += 1;
            }
            ("sh" | "python", Some(file)) if file.starts_with("file=") => {
                use std::os::unix::fs::PermissionsExt;
                let path = dir.path().join(&file["file=".len()..]);
                std::fs::write(&path, &block.body).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            ("sh", Some("norun")) => {}
            ("sh", Some(other)) => panic!("README.md line {}: unknown fence `{other}`", block.line),
            _ => {}
        }
    }
    assert!(ran >= 5, "only {ran} runnable examples found");

    let bin = Path::new(env!("CARGO_BIN_EXE_martech-sync"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let group =
        rustix::process::Pid::from_raw(i32::try_from(child.id().expect("running")).unwrap())
            .unwrap();
    // Read the output while the script runs: the fake HubSpot it leaves in the background
    // holds the pipes open until it is killed.
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
    // The fake HubSpot and anything else the examples left running.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let status = status
        .expect("the README's examples finish within three minutes")
        .unwrap();
    let _ = stdout.await.unwrap();
    let out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.await.unwrap(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with(">>> README.md line"))
        .unwrap_or(">>> before the first example");
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "a README example failed ({}), in the block at {}:\n{}",
        out.status,
        last.trim_start_matches(">>> "),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// Reads `pipe` to its end in the background.
fn read_all(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut bytes).await;
        bytes
    })
}
