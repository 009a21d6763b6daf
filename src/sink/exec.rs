//! The exec sink: each page as NDJSON on the stdin of `sh -c COMMAND`. Exit 0 confirms
//! the page; anything else fails the run with the end of the command's stderr in the
//! one error line. The command's stdout goes to our stderr (our stdout is for data and
//! `--json`); its stderr of a confirmed page is logged at INFO.
//!
//! The handler is contained: it runs in its own process group with an environment
//! scrubbed of the HubSpot token and the app's client secret (and of any variable that
//! holds either value); `--handler-timeout` kills its group and fails the page; a
//! shutdown gives it a few seconds to finish the page, then kills the group; and a child
//! it left behind holding its pipes delays the page by at most a second.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::ndjson;
use crate::object::ObjectType;
use crate::record::Record;
use crate::shutdown::Shutdown;
use crate::token::Token;

/// How much of the handler's stderr an error quotes.
const TAIL_BYTES: usize = 400;
/// How long a handler may go on after a stop was asked for.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the pipes may stay open after the handler exited (a child it left behind).
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// The process groups of the handlers running now (one per object of a run), for the
/// second signal to kill.
static RUNNING: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Kills the process groups of the handlers running now, if any: the process is about
/// to exit and must not leave them behind to overlap the next run.
pub fn kill_running_handler() {
    let groups = RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for group in groups {
        kill_group(group);
    }
}

fn kill_group(group: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(group) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// How handlers run.
#[derive(Clone, Debug)]
pub struct HandlerOptions {
    /// Kill the handler and fail the page after this long.
    pub timeout: Duration,
    /// Values no handler may see in its environment (the token, the client secret).
    pub secrets: Vec<Token>,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            timeout: Duration::from_secs(600),
            secrets: Vec::new(),
        }
    }
}

/// A handler command.
pub struct ExecSink {
    command: String,
    /// Where it runs, when it names paths relative to a directory.
    dir: Option<std::path::PathBuf>,
    options: HandlerOptions,
    shutdown: Shutdown,
}

/// How the handler's run ended, when not by exiting.
enum Cut {
    TimedOut,
    Stopped,
}

/// The handler was killed, not failed: it ran past `--handler-timeout`, or a stop came.
/// Splitting its page would only run it again on each half, so the webhook worker
/// fails the whole batch instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerKilled(String);

impl ExecSink {
    /// A sink that runs `handler` through `sh -c` once per page.
    pub fn new(handler: super::Handler, options: HandlerOptions, shutdown: Shutdown) -> ExecSink {
        ExecSink {
            command: handler.command,
            dir: handler.dir,
            options,
            shutdown,
        }
    }

    /// The environment the handler gets: ours without the variables that hold a secret.
    fn environment(&self) -> Vec<(String, String)> {
        const NAMED: [&str; 3] = ["HUBSPOT_TOKEN", "HUBSPOT_CLIENT_SECRET", "PGPASSWORD"];
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, v)| {
                !NAMED.contains(&k.as_str())
                    && !self
                        .options
                        .secrets
                        .iter()
                        .any(|s| !s.expose().is_empty() && v.contains(s.expose()))
            })
            .collect()
    }

    /// Runs the handler on one page and waits for it.
    ///
    /// # Errors
    /// When the handler cannot start, exits with anything but 0, runs past the timeout,
    /// or is stopped by a shutdown.
    pub async fn deliver(&mut self, object: &ObjectType, records: &[&Record]) -> Result<()> {
        let input = ndjson(object, records);
        let mut command = Command::new("sh");
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let mut child = command
            .arg("-c")
            .arg(&self.command)
            .env_clear()
            .envs(self.environment())
            .env("MARTECH_SYNC_OBJECT", object.as_str())
            .env("MARTECH_SYNC_RECORDS", records.len().to_string())
            .stdin(Stdio::piped())
            .stdout(std::io::stderr())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C on the terminal stops us after this page
            // instead of killing the handler halfway through it, and the whole group
            // can be killed at once.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting handler `{}`", self.command))?;
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        let running = || {
            RUNNING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(group) = group {
            running().insert(group);
        }
        let outcome = self.supervise(&mut child, input).await;
        if let Some(group) = group {
            running().remove(&group);
        }
        // Whatever happened, nothing of the group outlives the page.
        if let Some(group) = group {
            kill_group(group);
        }
        let (status, tail) = outcome?;
        let status = match status {
            Ok(status) => status,
            Err(Cut::TimedOut) => {
                return Err(HandlerKilled(format!(
                    "handler `{}` ran longer than --handler-timeout {} on a page of {} records and was killed{}",
                    self.command,
                    humantime::format_duration(self.options.timeout),
                    records.len(),
                    tail_line(&tail)
                ))
                .into());
            }
            Err(Cut::Stopped) => {
                return Err(HandlerKilled(format!(
                    "handler `{}` was killed: stopping on a signal before it confirmed the page",
                    self.command
                ))
                .into());
            }
        };
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

    /// Feeds the page, drains stderr and waits for the exit, the timeout or a stop.
    async fn supervise(
        &self,
        child: &mut tokio::process::Child,
        input: Vec<u8>,
    ) -> Result<(Result<std::process::ExitStatus, Cut>, Vec<u8>)> {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let mut tail = Vec::new();
        let status = {
            // Feed stdin while draining stderr, so a chatty handler cannot deadlock us.
            let feed = async move {
                // A handler may exit without reading everything; its exit status decides.
                let _ = stdin.write_all(&input).await;
                drop(stdin);
            };
            let run = async {
                let ((), status) = tokio::join!(feed, child.wait());
                status
            };
            let drain = async {
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
            };
            // The exit decides; the pipes get at most ORPHAN_GRACE more, in case a child
            // the handler left behind holds them open.
            let finished = async {
                tokio::pin!(run, drain);
                let mut status = None;
                loop {
                    tokio::select! {
                        s = &mut run, if status.is_none() => status = Some(s),
                        () = &mut drain => break,
                        () = tokio::time::sleep(ORPHAN_GRACE), if status.is_some() => break,
                    }
                }
                match status {
                    Some(s) => s,
                    None => run.await,
                }
            };
            let stopped = async {
                self.shutdown.wait().await;
                tokio::time::sleep(STOP_GRACE).await;
            };
            tokio::select! {
                status = finished => Ok(status.with_context(|| format!("waiting for handler `{}`", self.command))?),
                () = tokio::time::sleep(self.options.timeout) => Err(Cut::TimedOut),
                () = stopped => Err(Cut::Stopped),
            }
        };
        Ok((status, tail))
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
