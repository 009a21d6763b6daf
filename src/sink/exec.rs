//! The exec sink: each page as NDJSON on the stdin of `sh -c COMMAND`. Exit 0 confirms
//! the page; anything else fails the run with the end of the command's stderr in the
//! one error line. The command's stdout goes to our stderr (our stdout is for data and
//! `--json`); its stderr of a confirmed page is logged at INFO.

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::ndjson;
use crate::object::ObjectType;
use crate::record::Record;

/// How much of the handler's stderr an error quotes.
const TAIL_BYTES: usize = 400;

/// A handler command.
pub struct ExecSink {
    command: String,
}

impl ExecSink {
    /// A sink that runs `command` through `sh -c` once per page.
    pub fn new(command: String) -> ExecSink {
        ExecSink { command }
    }

    /// Runs the handler on one page and waits for it.
    ///
    /// # Errors
    /// When the handler cannot start or exits with anything but 0.
    pub async fn deliver(&mut self, object: &ObjectType, records: &[&Record]) -> Result<()> {
        let input = ndjson(object, records);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("MARTECH_SYNC_OBJECT", object.as_str())
            .env("MARTECH_SYNC_RECORDS", records.len().to_string())
            .stdin(Stdio::piped())
            .stdout(std::io::stderr())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C on the terminal stops us after this page
            // instead of killing the handler halfway through it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting handler `{}`", self.command))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Feed stdin while draining stderr, so a chatty handler cannot deadlock us.
        let feed = async move {
            // A handler may exit without reading everything; its exit status decides.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let drain = async move {
            let mut tail = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > 4 * TAIL_BYTES {
                            tail.drain(..tail.len() - TAIL_BYTES);
                        }
                    }
                }
            }
            tail
        };
        let ((), tail, status) = tokio::join!(feed, drain, child.wait());
        let status = status.with_context(|| format!("waiting for handler `{}`", self.command))?;
        if !status.success() {
            let why = status.code().map_or_else(
                || "was killed by a signal".to_owned(),
                |c| format!("exited with status {c}"),
            );
            bail!(
                "handler `{}` {why} on a page of {} records{}",
                self.command,
                records.len(),
                tail_line(&tail)
            );
        }
        let said = tail_line(&tail);
        if !said.is_empty() {
            tracing::info!(handler = %self.command, "handler said{said}");
        }
        Ok(())
    }
}

/// The end of the handler's stderr folded into one line: `: last | lines`.
fn tail_line(tail: &[u8]) -> String {
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let joined = lines[lines.len().saturating_sub(3)..].join(" | ");
    let start = joined.len().saturating_sub(TAIL_BYTES);
    let start = (start..joined.len())
        .find(|&i| joined.is_char_boundary(i))
        .unwrap_or(0);
    format!(": {}", &joined[start..])
}

#[cfg(test)]
mod tests {
    use super::tail_line;

    #[test]
    fn folds_the_stderr_tail() {
        assert_eq!(tail_line(b""), "");
        assert_eq!(tail_line(b"a\n\nb\nc\nd\n"), ": b | c | d");
    }
}
