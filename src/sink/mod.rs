//! Sinks: where confirmed records go. A closed set, so an enum rather than trait objects:
//!
//! - `sqlite` (default): the `records` table of the state file, written in the same
//!   transaction as the page's checkpoint (see `state.rs`), so delivery is exactly once;
//! - `jsonl:PATH` (`-` for stdout): one JSON object a line, flushed and fsynced before
//!   the checkpoint (`jsonl.rs`);
//! - `exec:COMMAND`: each page as NDJSON on the stdin of `sh -c COMMAND`; exit 0 confirms
//!   the page (`exec.rs`);
//! - `postgres://…`: one table per object in the user's own database, the rows and the
//!   versions they hold written in one Postgres transaction (`postgres.rs`). It keeps its
//!   own ledger: [`Sink::held`] answers from its tables.
//!
//! The engine calls [`Sink::deliver`] and checkpoints only after it returned `Ok`.

mod exec;
mod jsonl;
pub mod postgres;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

use crate::object::ObjectType;
use crate::postgres::PgUrl;
use crate::record::Record;
use crate::record::RecordId;
use crate::shutdown::Shutdown;
use crate::state::{Held, LedgerEntry, RecordsTable};

pub use exec::{ExecSink, HandlerKilled, HandlerOptions, kill_running_handler};
pub use jsonl::JsonlSink;
pub use postgres::{PgTarget, PostgresSink};

/// A parsed `--sink` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    Sqlite,
    Jsonl(JsonlTarget),
    Exec(Handler),
    Postgres(Box<PgTarget>),
}

/// An `exec:` handler: the command, and the directory it runs in when it names files
/// relative to it (`./load.sh`): the same words in another directory are another
/// handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handler {
    pub command: String,
    pub dir: Option<PathBuf>,
}

impl Handler {
    /// A handler run as given, wherever the process is.
    pub fn new(command: impl Into<String>) -> Handler {
        Handler {
            command: command.into(),
            dir: None,
        }
    }

    /// Whether the command names a path relative to its directory.
    fn is_relative(&self) -> bool {
        self.command
            .split_whitespace()
            .any(|word| word.starts_with("./") || word.starts_with("../"))
    }
}

/// Where a jsonl sink writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlTarget {
    Stdout,
    File(PathBuf),
}

/// A sink that cannot be opened at all (a jsonl file in a missing or read-only
/// directory): exits 78, since no rerun fixes it.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the sink {sink}: {why}")]
pub struct SinkUnusable {
    pub sink: String,
    pub why: String,
}

/// A `--sink` value that is none of the forms.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown sink `{0}`: use sqlite, jsonl:PATH (jsonl:- for stdout), exec:COMMAND or postgres://URL"
)]
pub struct UnknownSink(String);

impl FromStr for SinkSpec {
    type Err = UnknownSink;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if PgUrl::is_postgres(s) {
            return match s.parse::<PgUrl>() {
                Ok(url) => Ok(SinkSpec::Postgres(Box::new(PgTarget {
                    url,
                    schema: PgTarget::DEFAULT_SCHEMA.to_owned(),
                }))),
                Err(e) => Err(UnknownSink(e.to_string())),
            };
        }
        match s.split_once(':') {
            None if s == "sqlite" => Ok(SinkSpec::Sqlite),
            Some(("jsonl", "-")) => Ok(SinkSpec::Jsonl(JsonlTarget::Stdout)),
            Some(("jsonl", path)) if !path.is_empty() => {
                Ok(SinkSpec::Jsonl(JsonlTarget::File(path.into())))
            }
            // Trimmed: a stray space in a crontab must not make a new destination.
            Some(("exec", command)) if !command.trim().is_empty() => {
                Ok(SinkSpec::Exec(Handler::new(command.trim())))
            }
            _ => Err(UnknownSink(crate::postgres::redact_text(s))),
        }
    }
}

impl SinkSpec {
    /// Whether opening the sink needs the HubSpot portal id (Postgres keys rows by it).
    pub fn needs_portal(&self) -> bool {
        matches!(self, SinkSpec::Postgres(_))
    }

    /// Whether this sink writes records to stdout.
    pub fn uses_stdout(&self) -> bool {
        matches!(self, SinkSpec::Jsonl(JsonlTarget::Stdout))
    }

    /// The same sink pinned to where it is: a jsonl path made absolute, through the real
    /// directory it is in (so `a/../out.jsonl` or a symlinked directory is the same
    /// file), and a handler that names relative paths given the current directory. A
    /// destination is known by this, whatever directory cron starts in.
    ///
    /// # Errors
    /// When the current directory cannot be read.
    pub fn absolute(self) -> std::io::Result<SinkSpec> {
        Ok(match self {
            SinkSpec::Jsonl(JsonlTarget::File(path)) => {
                let path = std::path::absolute(path)?;
                let real = match (path.parent(), path.file_name()) {
                    (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                        .map(|dir| dir.join(name))
                        .unwrap_or(path),
                    _ => path,
                };
                SinkSpec::Jsonl(JsonlTarget::File(real))
            }
            SinkSpec::Exec(handler) if handler.is_relative() && handler.dir.is_none() => {
                SinkSpec::Exec(Handler {
                    dir: Some(std::env::current_dir()?),
                    ..handler
                })
            }
            SinkSpec::Postgres(target) => SinkSpec::Postgres(Box::new(PgTarget {
                url: target
                    .url
                    .from_environment()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
                ..*target
            })),
            other => other,
        })
    }

    /// The state's description of this sink: what the destination key is derived from,
    /// and what [`SinkSpec::from_stored`] reads back.
    pub fn stored(&self) -> String {
        match self {
            SinkSpec::Exec(Handler {
                command,
                dir: Some(dir),
            }) => format!("exec:{command} (in {})", dir.display()),
            other => other.to_string(),
        }
    }

    /// The inverse of [`SinkSpec::stored`] (a Postgres password comes from
    /// `PGPASSWORD`: the state never holds it).
    pub fn from_stored(s: &str) -> Option<SinkSpec> {
        if let Some((url, schema)) = s.strip_suffix(')').and_then(|r| r.rsplit_once(" (schema "))
            && PgUrl::is_postgres(url)
        {
            return Some(SinkSpec::Postgres(Box::new(PgTarget {
                url: url.parse::<PgUrl>().ok()?.from_environment().ok()?,
                schema: schema.to_owned(),
            })));
        }
        if let Some(rest) = s.strip_prefix("exec:")
            && let Some((command, dir)) =
                rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (in /"))
        {
            return Some(SinkSpec::Exec(Handler {
                command: command.to_owned(),
                dir: Some(PathBuf::from(format!("/{dir}"))),
            }));
        }
        s.parse().ok()
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Sqlite => f.write_str("sqlite"),
            SinkSpec::Jsonl(JsonlTarget::Stdout) => f.write_str("jsonl:-"),
            SinkSpec::Jsonl(JsonlTarget::File(path)) => write!(f, "jsonl:{}", path.display()),
            SinkSpec::Exec(handler) => write!(f, "exec:{}", handler.command),
            SinkSpec::Postgres(target) => write!(f, "{} (schema {})", target.url, target.schema),
        }
    }
}

/// An open sink.
pub enum Sink {
    Sqlite,
    Jsonl(JsonlSink),
    Exec(ExecSink),
    Postgres(Box<PostgresSink>),
}

impl Sink {
    /// Opens the sink `spec` names; an `exec:` handler runs under `handlers` and is
    /// stopped by `shutdown`; Postgres rows are keyed by `portal` (see
    /// [`SinkSpec::needs_portal`]).
    ///
    /// # Errors
    /// When a jsonl file cannot be opened for appending, or Postgres cannot be reached.
    pub async fn open(
        spec: &SinkSpec,
        handlers: &HandlerOptions,
        shutdown: &Shutdown,
        portal: Option<u64>,
    ) -> Result<Sink> {
        Ok(match spec {
            SinkSpec::Postgres(target) => {
                let portal =
                    portal.ok_or_else(|| anyhow::anyhow!("a postgres sink needs the portal id"))?;
                Sink::Postgres(Box::new(PostgresSink::open(target, portal).await?))
            }
            SinkSpec::Sqlite => Sink::Sqlite,
            SinkSpec::Jsonl(target) => Sink::Jsonl(JsonlSink::open(target)?),
            SinkSpec::Exec(handler) => Sink::Exec(ExecSink::new(
                handler.clone(),
                handlers.clone(),
                shutdown.clone(),
            )),
        })
    }

    /// Hands `records` to the sink and returns once it has confirmed them. The sqlite
    /// sink confirms in the checkpoint transaction instead (see [`Sink::records_table`]).
    ///
    /// # Errors
    /// When the sink did not confirm: the page must not be checkpointed.
    pub async fn deliver(&mut self, object: &ObjectType, records: &[&Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Sqlite => Ok(()),
            Sink::Jsonl(sink) => sink.deliver(object, records),
            Sink::Exec(sink) => sink.deliver(object, records).await,
            Sink::Postgres(sink) => sink.deliver(object, records).await,
        }
    }

    /// What the destination holds of `ids`, when the sink keeps its own ledger
    /// (Postgres: its rows); `None` when the state's ledger says.
    ///
    /// # Errors
    /// When the sink cannot be read.
    pub async fn held(
        &mut self,
        object: &ObjectType,
        ids: &[RecordId],
    ) -> Result<Option<HashMap<RecordId, Held>>> {
        match self {
            Sink::Postgres(sink) => sink.held(object, ids).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Up to `limit` entries of the sink's own ledger after `after`, by id; `None` when
    /// the state's ledger is the one.
    ///
    /// # Errors
    /// When the sink cannot be read.
    pub async fn ledger_page(
        &mut self,
        object: &ObjectType,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Option<Vec<LedgerEntry>>> {
        match self {
            Sink::Postgres(sink) => sink.ledger_page(object, after, limit).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the checkpoint transaction also writes the records.
    pub fn records_table(&self) -> RecordsTable {
        match self {
            Sink::Sqlite => RecordsTable::Write,
            Sink::Jsonl(_) | Sink::Exec(_) | Sink::Postgres(_) => RecordsTable::Skip,
        }
    }
}

/// The page as NDJSON, the bytes jsonl and exec sinks write.
fn ndjson(object: &ObjectType, records: &[&Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 512);
    for record in records {
        record.write_json_line(object, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let cases = [
            ("sqlite", Some(SinkSpec::Sqlite)),
            ("jsonl:-", Some(SinkSpec::Jsonl(JsonlTarget::Stdout))),
            (
                "jsonl:out.jsonl",
                Some(SinkSpec::Jsonl(JsonlTarget::File("out.jsonl".into()))),
            ),
            (
                "exec: ./load.sh --fast ",
                Some(SinkSpec::Exec(Handler::new("./load.sh --fast"))),
            ),
            ("exec: ", None),
            ("jsonl:", None),
            ("postgres", None),
            (
                "postgres://",
                Some(SinkSpec::Postgres(Box::new(PgTarget {
                    url: "postgres://".parse().unwrap(),
                    schema: "hubspot".into(),
                }))),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<SinkSpec>().ok(), want, "{input}");
        }
    }

    #[test]
    fn a_relative_handler_is_pinned_to_its_directory() {
        let relative = "exec:./load.sh"
            .parse::<SinkSpec>()
            .unwrap()
            .absolute()
            .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            relative.stored(),
            format!("exec:./load.sh (in {})", here.display())
        );
        assert_eq!(
            SinkSpec::from_stored(&relative.stored()),
            Some(relative.clone())
        );
        assert_eq!(relative.to_string(), "exec:./load.sh");
        let anywhere = "exec:/usr/local/bin/load --fast"
            .parse::<SinkSpec>()
            .unwrap();
        assert_eq!(anywhere.clone().absolute().unwrap(), anywhere);
        assert_eq!(SinkSpec::from_stored(&anywhere.stored()), Some(anywhere));
    }
}
