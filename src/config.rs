//! Validated configuration: the CLI and environment turned into what the commands run
//! on. Every usage error (exit 2) is raised here, before anything touches the state file
//! or the network.

use std::path::PathBuf;

use std::io::IsTerminal;

use crate::cli::{
    Cli, Command, CursorCommand, DeadLettersCommand, GlobalArgs, LogFormat, PollArgs,
};
use crate::destination::Destination;
use crate::hubspot::{ClientConfig, RetryPolicy};
use crate::object::{ObjectType, STANDARD};
use crate::progress::ProgressMode;
use crate::sink::{HandlerOptions, SinkSpec};
use crate::state::{Location, Pass};
use crate::sync::{PollJob, Wanted};
use crate::timestamp::Millis;
use crate::token::Token;
use crate::window::{Ask, Bounds, Margins};

/// A usage error: the command line or environment is wrong. Exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

impl UsageError {
    /// A usage error found after validation (it needed the state to tell).
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }
}

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct Config {
    pub db: Location,
    /// `--portal`: the portal commands without a token act on in a Postgres state.
    pub portal: Option<u64>,
    pub log: LogConfig,
    pub command: CommandConfig,
    /// Said at WARN once logging is up (a secret on the command line, say).
    pub warnings: Vec<String>,
}

/// How to log.
#[derive(Clone, Copy, Debug)]
pub struct LogConfig {
    pub verbose: u8,
    pub quiet: bool,
    pub format: LogFormat,
}

/// The command, validated.
#[derive(Debug)]
pub enum CommandConfig {
    Poll(PollConfig),
    Status(StatusConfig),
    Demo(DemoConfig),
    Mock(MockConfig),
    Cursor(CursorConfig),
    Completions(clap_complete::Shell),
    /// Where to write one page per subcommand; `None`: the main page to stdout.
    Man(Option<PathBuf>),
    Serve(ServeConfig),
    DeadLetters(DeadLettersConfig),
    Verify(VerifyConfig),
}

/// `serve`.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    /// The client secret; a `Token` so that `Debug` never prints it.
    pub secret: Token,
    pub public_url: Option<String>,
    /// `None`: the sink the named destination was last given.
    pub sink: Option<SinkSpec>,
    pub destination: Destination,
    /// Reconciliation windows, one job per object.
    pub polls: Vec<PollJob>,
    pub interval: std::time::Duration,
    pub accept: crate::webhook::receiver::Accept,
    pub client: ClientConfig,
    pub dead_after: u32,
    pub handlers: HandlerOptions,
    pub max_connections: usize,
    pub health_stall: std::time::Duration,
}

/// `dead-letters ...`.
#[derive(Debug)]
pub enum DeadLettersConfig {
    List { json: bool },
    Retry,
}

/// `cursor ...`: the object, which of its destinations (`None`: the only one there
/// is), and what to do.
#[derive(Debug)]
pub struct CursorConfig {
    pub object: ObjectType,
    pub target: Option<Destination>,
    pub op: CursorOp,
}

/// What a cursor command does.
#[derive(Debug)]
pub enum CursorOp {
    Show,
    Set(Millis),
    Reset {
        /// Ask on the terminal first.
        confirm: bool,
        redeliver: bool,
    },
}

/// `mock-hubspot`.
#[derive(Debug)]
pub struct MockConfig {
    pub port: u16,
    pub records: u64,
    pub seed: Option<PathBuf>,
    pub token: Option<String>,
    pub latency: std::time::Duration,
    pub portal_id: u64,
    pub rate_limit: Option<u32>,
    pub lag: std::time::Duration,
    pub error_rate: f64,
    pub modify: Option<(std::time::Duration, u64)>,
    pub delete_every: Option<std::time::Duration>,
    pub merge_every: Option<std::time::Duration>,
    pub unreadable: Vec<String>,
}

/// `poll`.
#[derive(Debug)]
pub struct PollConfig {
    /// The job of the first object; the others (`objects`) run the same job.
    pub job: PollJob,
    /// Every object of the run when there are several (`poll a,b,c`, `--all-objects`);
    /// empty for one.
    pub objects: Vec<ObjectType>,
    /// `--all-objects`: objects the token cannot read are skipped without a word of
    /// failure.
    pub all_objects: bool,
    /// Whether the properties are each object's defaults (so another object gets its
    /// own).
    pub default_properties: bool,
    /// `None`: the sink the named destination was last given.
    pub sink: Option<SinkSpec>,
    pub handlers: HandlerOptions,
    pub client: ClientConfig,
    pub json: bool,
    /// Continuous mode: a window every this long.
    pub interval: Option<std::time::Duration>,
    pub progress: ProgressMode,
}

/// `verify`: the destination named (`None`: the object's only one).
#[derive(Debug)]
pub struct VerifyConfig {
    pub object: ObjectType,
    pub sink: Option<SinkSpec>,
    pub handlers: HandlerOptions,
    pub target: Option<Destination>,
    pub repair: bool,
    pub json: bool,
    pub client: ClientConfig,
}

/// `status`.
#[derive(Debug)]
pub struct StatusConfig {
    pub object: Option<ObjectType>,
    pub json: bool,
    pub stale_after: Option<std::time::Duration>,
}

/// `demo`.
#[derive(Debug)]
pub struct DemoConfig {
    pub records: u64,
    pub client: ClientConfig,
}

impl Config {
    /// Validates `cli` at `now` (relative `--since 7d` is measured from it).
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad value.
    pub fn new(cli: Cli, now: Millis) -> Result<Config, UsageError> {
        let global = &cli.global;
        let log = LogConfig {
            verbose: global.verbose,
            quiet: global.quiet,
            format: global.log_format,
        };
        for (flag, rate) in [
            ("--rate-limit", global.rate_limit),
            ("--general-rate-limit", global.general_rate_limit),
        ] {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(usage(format!(
                    "{flag} must be a positive number of requests per second, not {rate}"
                )));
            }
        }
        if global.max_attempts == 0 {
            return Err(usage("--max-attempts must be at least 1"));
        }
        let mut warnings = Vec::new();
        let db = location(&global.db, &mut warnings)?;
        let command = match &cli.command {
            Command::Poll(args) => CommandConfig::Poll(poll(args, global, now, &mut warnings)?),
            Command::Status(args) => CommandConfig::Status(StatusConfig {
                object: args.object.as_deref().map(parse_object).transpose()?,
                json: args.json,
                stale_after: args.stale_after,
            }),
            Command::Cursor(command) => CommandConfig::Cursor(cursor(command, global, now)?),
            Command::Serve(args) => {
                let secret = secret(
                    "client secret",
                    args.client_secret.as_deref(),
                    args.client_secret_file.as_deref(),
                    "HUBSPOT_CLIENT_SECRET",
                    "--client-secret-file",
                    &mut warnings,
                )?;
                let client = client_config(global, &mut warnings)?;
                let (sink, destination) = sink(
                    args.sink.as_deref(),
                    args.destination.as_deref(),
                    &global.pg_schema,
                )?;
                let polls = args
                    .poll
                    .iter()
                    .map(|o| {
                        let mut job = default_job(parse_object(o.trim())?, &destination);
                        job.recheck = args.passes.recheck;
                        job.deletes_every = args.passes.deletes_every.0;
                        Ok(job)
                    })
                    .collect::<Result<Vec<_>, UsageError>>()?;
                if let Some(url) = &args.public_url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err(usage(format!(
                        "--public-url `{url}` must start with http:// or https://"
                    )));
                }
                CommandConfig::Serve(ServeConfig {
                    listen: args.listen,
                    handlers: handlers(global, &[&client.token, &secret]),
                    secret,
                    public_url: args.public_url.clone(),
                    sink,
                    destination,
                    polls,
                    interval: args.interval,
                    accept: if args.allow_legacy_signatures {
                        crate::webhook::receiver::Accept::Legacy
                    } else {
                        crate::webhook::receiver::Accept::V3
                    },
                    client,
                    dead_after: args.dead_after,
                    max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
                    health_stall: args.health_stall,
                })
            }
            Command::Reconcile(args) => {
                let object = parse_object(&args.object)?;
                let (sink, destination) = sink(
                    args.sink.as_deref(),
                    args.destination.as_deref(),
                    &global.pg_schema,
                )?;
                if args.json && sink.as_ref().is_some_and(SinkSpec::uses_stdout) {
                    return Err(usage(
                        "--json and --sink jsonl:- both write to stdout; write records to a file",
                    ));
                }
                let mut job = default_job(object, &destination);
                // A side window: it moves no cursor and has no passes behind it.
                job.pass = Pass::Side;
                job.ask.bounds.since = Some(now.minus(args.lookback));
                job.recheck = std::time::Duration::ZERO;
                let client = client_config(global, &mut warnings)?;
                CommandConfig::Poll(PollConfig {
                    job,
                    objects: Vec::new(),
                    all_objects: false,
                    default_properties: false,
                    sink,
                    handlers: handlers(global, &[&client.token]),
                    client,
                    json: args.json,
                    interval: None,
                    progress: ProgressMode::detect(global.quiet),
                })
            }
            Command::Verify(args) => {
                let (sink, target) = target(
                    args.sink.as_deref(),
                    args.destination.as_deref(),
                    &global.pg_schema,
                )?;
                if args.json && sink.as_ref().is_some_and(SinkSpec::uses_stdout) {
                    return Err(usage(
                        "--json and --sink jsonl:- both write to stdout; write records to a file",
                    ));
                }
                let client = client_config(global, &mut warnings)?;
                CommandConfig::Verify(VerifyConfig {
                    object: parse_object(&args.object)?,
                    sink,
                    handlers: handlers(global, &[&client.token]),
                    target,
                    repair: args.repair,
                    json: args.json,
                    client,
                })
            }
            Command::DeadLetters(DeadLettersCommand::List { json }) => {
                CommandConfig::DeadLetters(DeadLettersConfig::List { json: *json })
            }
            Command::DeadLetters(DeadLettersCommand::Retry) => {
                CommandConfig::DeadLetters(DeadLettersConfig::Retry)
            }
            Command::Completions(args) => CommandConfig::Completions(args.shell),
            Command::Man(args) => CommandConfig::Man(args.dir.clone()),
            Command::Demo(args) => CommandConfig::Demo(DemoConfig {
                records: args.records,
                client: ClientConfig {
                    base_url: String::new(),
                    token: Token::new("demo"),
                    rate_limit: 1_000.0,
                    general_rate_limit: 1_000.0,
                    daily_budget: None,
                    timeout: global.timeout,
                    retry: retry_policy(global),
                    portal: None,
                },
            }),
            Command::MockHubspot(args) => {
                if !(0.0..=1.0).contains(&args.error_rate) {
                    return Err(usage("--error-rate must be between 0 and 1"));
                }
                if args.limit == Some(0) {
                    return Err(usage("--limit must be at least 1 search a second"));
                }
                CommandConfig::Mock(MockConfig {
                    port: args.port,
                    records: args.records,
                    seed: args.seed.clone(),
                    token: args
                        .accept_token
                        .clone()
                        .or_else(|| global.token.clone())
                        .or_else(|| {
                            let file = global.token_file.as_deref()?;
                            std::fs::read_to_string(file).ok()
                        })
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty()),
                    latency: args.latency,
                    portal_id: args.portal_id,
                    rate_limit: args.limit,
                    lag: args.lag,
                    error_rate: args.error_rate,
                    modify: args.modify_every.map(|every| (every, args.modify_count)),
                    delete_every: args.delete_every,
                    merge_every: args.merge_every,
                    unreadable: args
                        .unreadable
                        .iter()
                        .map(|s| s.trim().to_owned())
                        .collect(),
                })
            }
        };
        Ok(Config {
            db,
            portal: global.portal,
            log,
            command,
            warnings,
        })
    }
}

/// `poll`, validated.
fn poll(
    args: &PollArgs,
    global: &GlobalArgs,
    now: Millis,
    warnings: &mut Vec<String>,
) -> Result<PollConfig, UsageError> {
    let objects = poll_objects(args)?;
    let object = objects[0].clone();
    if objects.len() > 1 && !args.properties.is_empty() {
        return Err(usage(
            "--properties names one object's properties; with several objects, poll them one \
             at a time (or use --all-properties)",
        ));
    }
    let bounds = Bounds {
        since: when("--since", args.since.as_deref(), now)?,
        until: when("--until", args.until.as_deref(), now)?,
    };
    if let (Some(since), Some(until)) = (bounds.since, bounds.until)
        && since > until
    {
        return Err(usage(format!("--since {since} is after --until {until}")));
    }
    let settled = now.minus(args.settle);
    if let Some(since) = bounds.since
        && since > settled
    {
        return Err(usage(format!(
            "--since {since} is later than now minus --settle ({settled}): there is nothing to sync \
             after it yet; did you mean an age such as 7d?"
        )));
    }
    let (sink, destination) = sink(
        args.sink.as_deref(),
        args.destination.as_deref(),
        &global.pg_schema,
    )?;
    if args.interval.is_some() && bounds.until.is_some() {
        return Err(usage(
            "--interval runs windows up to now; it does not combine with --until \
             (--since starts its first window)",
        ));
    }
    if args.json && sink.as_ref().is_some_and(SinkSpec::uses_stdout) {
        return Err(usage(
            "--json and --sink jsonl:- both write to stdout; write records to a file",
        ));
    }
    let wanted = if args.all_properties {
        Wanted::All
    } else if args.properties.is_empty() {
        Wanted::Named(defaults(&object))
    } else {
        Wanted::Named(
            args.properties
                .iter()
                .map(|s| s.trim().to_owned())
                .collect(),
        )
    };
    let client = client_config(global, warnings)?;
    Ok(PollConfig {
        handlers: handlers(global, &[&client.token]),
        default_properties: !args.all_properties && args.properties.is_empty(),
        objects: if objects.len() > 1 {
            objects
        } else {
            Vec::new()
        },
        all_objects: args.all_objects,
        job: PollJob {
            object,
            destination,
            pass: Pass::Main,
            ask: Ask {
                bounds,
                refresh: args.refresh,
            },
            margins: Margins {
                overlap: args.overlap,
                settle: args.settle,
            },
            wanted,
            page_size: args.page_size,
            concurrency: args.concurrency,
            recheck: args.passes.recheck,
            deletes_every: args.passes.deletes_every.0,
        },
        sink,
        client,
        json: args.json,
        interval: args.interval,
        // On a terminal: a bar for any window that runs a couple of seconds (continuous
        // mode's first backfill included), and a summary line after each.
        progress: ProgressMode::detect(global.quiet),
    })
}

/// The objects of `poll`: one, a comma-separated list (duplicates dropped), or every
/// standard object.
fn poll_objects(args: &PollArgs) -> Result<Vec<ObjectType>, UsageError> {
    if args.all_objects {
        return STANDARD.iter().map(|s| parse_object(s.name)).collect();
    }
    let list = args.object.as_deref().unwrap_or_default();
    let mut objects: Vec<ObjectType> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(usage(format!(
                "`{list}`: an empty object name; separate objects with single commas"
            )));
        }
        let object = parse_object(name)?;
        if !objects.contains(&object) {
            objects.push(object);
        }
    }
    Ok(objects)
}

impl PollConfig {
    /// The job of `object` in this run: the run's job, with the object's own default
    /// properties when the run asked for defaults.
    pub fn job_for(&self, object: &ObjectType) -> PollJob {
        let mut job = PollJob {
            object: object.clone(),
            ..self.job.clone()
        };
        if self.default_properties {
            job.wanted = Wanted::Named(defaults(object));
        }
        job
    }
}

/// `cursor ...`, validated.
fn cursor(
    command: &CursorCommand,
    global: &GlobalArgs,
    now: Millis,
) -> Result<CursorConfig, UsageError> {
    let (object, target, op) = match command {
        CursorCommand::Show { object, target } => (object, target, CursorOp::Show),
        CursorCommand::Set {
            object,
            when: at,
            target,
        } => {
            let at = when("WHEN", Some(at), now)?.expect("a value was given");
            if at > now {
                return Err(usage(format!(
                    "cursor set {object} {at}: that is later than now ({now}); the next run would \
                     skip everything modified until then"
                )));
            }
            (object, target, CursorOp::Set(at))
        }
        CursorCommand::Reset {
            object,
            target,
            yes,
            redeliver,
        } => {
            let terminal = std::io::stdin().is_terminal();
            if !yes && !terminal {
                return Err(usage(
                    "cursor reset asks for confirmation; pass --yes when stdin is not a terminal",
                ));
            }
            (
                object,
                target,
                CursorOp::Reset {
                    confirm: !yes,
                    redeliver: *redeliver,
                },
            )
        }
    };
    let (_, target) = self::target(
        target.sink.as_deref(),
        target.destination.as_deref(),
        &global.pg_schema,
    )?;
    Ok(CursorConfig {
        object: parse_object(object)?,
        target,
        op,
    })
}

/// A `--since`/`--until`/WHEN value.
fn when(flag: &str, value: Option<&str>, now: Millis) -> Result<Option<Millis>, UsageError> {
    value
        .map(|s| {
            Millis::parse_user(s, now).ok_or_else(|| {
                usage(format!(
                    "{flag} `{s}` is not a time: use RFC 3339, a date (2024-01-01), \
                     epoch milliseconds or an age (7d, 36h, 90m)"
                ))
            })
        })
        .transpose()
}

/// The destination `--sink`/`--destination` name, if they do (`None`: the object's only
/// one), and the sink when given.
fn target(
    spec: Option<&str>,
    name: Option<&str>,
    schema: &str,
) -> Result<(Option<SinkSpec>, Option<Destination>), UsageError> {
    Ok(match (spec, name) {
        (None, None) => (None, None),
        (None, Some(name)) => (None, Some(Destination::named(name, String::new()))),
        (Some(spec), name) => {
            let (sink, destination) = sink_spec(spec, name, schema)?;
            (Some(sink), Some(destination))
        }
    })
}

/// The sink (`None`: the one a named destination was last given, read from the state
/// when the command runs) and the destination of a command that delivers.
fn sink(
    spec: Option<&str>,
    name: Option<&str>,
    schema: &str,
) -> Result<(Option<SinkSpec>, Destination), UsageError> {
    match (spec, name) {
        (Some(spec), name) => sink_spec(spec, name, schema).map(|(s, d)| (Some(s), d)),
        (None, None) => sink_spec("sqlite", None, schema).map(|(s, d)| (Some(s), d)),
        (None, Some(name)) => {
            // The shape of the name is checked as for any sink.
            Destination::of(&SinkSpec::Sqlite, Some(name)).map_err(|e| usage(e.to_string()))?;
            Ok((None, Destination::named(name, String::new())))
        }
    }
}

/// A `--sink` value and the destination it names (or `--destination` does); a Postgres
/// sink's tables go in `schema` (`--pg-schema`).
fn sink_spec(
    spec: &str,
    name: Option<&str>,
    schema: &str,
) -> Result<(SinkSpec, Destination), UsageError> {
    let mut sink: SinkSpec = spec.parse().map_err(|e| usage(format!("--sink: {e}")))?;
    if let SinkSpec::Postgres(target) = &mut sink {
        crate::sink::postgres::check_schema(schema).map_err(|e| usage(e.to_string()))?;
        schema.clone_into(&mut target.schema);
    }
    let sink = sink.absolute().map_err(|e| {
        usage(format!(
            "--sink {}: {e}",
            crate::postgres::redact_text(spec)
        ))
    })?;
    let destination = Destination::of(&sink, name).map_err(|e| usage(e.to_string()))?;
    Ok((sink, destination))
}

/// A `--db` value: a postgres:// URL (completed from the PG* variables), else a state
/// file.
fn location(db: &std::path::Path, warnings: &mut Vec<String>) -> Result<Location, UsageError> {
    match db.to_str() {
        Some(text) if crate::postgres::PgUrl::is_postgres(text) => {
            let bad = |e: &dyn std::fmt::Display| {
                usage(format!("--db {}: {e}", crate::postgres::redact_text(text)))
            };
            let url: crate::postgres::PgUrl = text.parse().map_err(|e| bad(&e))?;
            if url.has_password() {
                warnings.push(
                    "--db holds a password, which other users see in `ps`; give it in PGPASSWORD"
                        .to_owned(),
                );
            }
            let url = url.from_environment().map_err(|e| bad(&e))?;
            Ok(Location::Postgres(Box::new(url)))
        }
        _ => Ok(Location::File(real_path(db))),
    }
}

/// `path` through the real directory it is in: locks live beside the state file, so two
/// names of one file (a symlink, `a/../b`) must lock alike.
fn real_path(path: &std::path::Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => {
            let file = std::fs::canonicalize(&absolute);
            file.or_else(|_| std::fs::canonicalize(dir).map(|dir| dir.join(name)))
                .unwrap_or(absolute)
        }
        _ => absolute,
    }
}

/// A poll job with the documented defaults, for `serve --poll` and `reconcile`: the
/// properties the destination was last given.
fn default_job(object: ObjectType, destination: &Destination) -> PollJob {
    PollJob {
        object,
        destination: destination.clone(),
        pass: Pass::Main,
        ask: Ask::default(),
        margins: Margins {
            overlap: std::time::Duration::from_secs(300),
            settle: std::time::Duration::from_secs(30),
        },
        wanted: Wanted::Stored,
        page_size: 200,
        concurrency: 4,
        recheck: std::time::Duration::from_secs(3_600),
        deletes_every: Some(std::time::Duration::from_secs(3_600)),
    }
}

fn parse_object(s: &str) -> Result<ObjectType, UsageError> {
    s.parse().map_err(|e| usage(format!("{e}")))
}

fn retry_policy(global: &GlobalArgs) -> RetryPolicy {
    RetryPolicy {
        max_attempts: global.max_attempts,
        base: global.retry_base,
        budget: global.retry_budget,
    }
}

fn client_config(
    global: &GlobalArgs,
    warnings: &mut Vec<String>,
) -> Result<ClientConfig, UsageError> {
    let token = secret(
        "HubSpot token",
        global.token.as_deref(),
        global.token_file.as_deref(),
        "HUBSPOT_TOKEN",
        "--token-file",
        warnings,
    )
    .map_err(|e| {
        if global.token.is_none() && global.token_file.is_none() {
            usage(
                "no HubSpot token: set HUBSPOT_TOKEN_FILE (or HUBSPOT_TOKEN) or pass --token-file PATH (a private-app access token)",
            )
        } else {
            e
        }
    })?;
    if !(global.base_url.starts_with("http://") || global.base_url.starts_with("https://")) {
        return Err(usage(format!(
            "--base-url `{}` must start with http:// or https://",
            global.base_url
        )));
    }
    Ok(ClientConfig {
        base_url: global.base_url.clone(),
        token,
        rate_limit: global.rate_limit,
        general_rate_limit: global.general_rate_limit,
        daily_budget: global.daily_budget,
        timeout: global.timeout,
        retry: retry_policy(global),
        portal: global.portal,
    })
}

/// A secret from its file (which wins), its environment variable or (with a warning)
/// the command line.
fn secret(
    what: &str,
    given: Option<&str>,
    file: Option<&std::path::Path>,
    env: &str,
    file_flag: &str,
    warnings: &mut Vec<String>,
) -> Result<Token, UsageError> {
    let value = match (given, file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("{file_flag} {}: {e}", path.display())))?;
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            match lines.as_slice() {
                [one] if !is_assignment(one) => {}
                [] => {
                    return Err(usage(format!(
                        "{file_flag} {}: the file is empty",
                        path.display()
                    )));
                }
                _ => {
                    return Err(usage(format!(
                        "{file_flag} {}: the file must hold the {what} alone, on one line \
                         (not VAR=value lines: that is an environment file)",
                        path.display()
                    )));
                }
            }
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    warnings.push(format!(
                        "{file_flag} {} can be read by other users of this machine: chmod 600 it",
                        path.display()
                    ));
                }
            }
            lines[0].to_owned()
        }
        (Some(value), None) => {
            if std::env::var(env).ok().as_deref() != Some(value) {
                warnings.push(format!(
                    "the {what} is on the command line, where `ps` shows it to every user of \
                     this machine; use {env} or {file_flag} instead"
                ));
            }
            value.to_owned()
        }
        (None, None) => String::new(),
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(usage(format!(
            "no {what}: set {env} or pass {file_flag} PATH"
        )));
    }
    Ok(Token::new(value))
}

/// Whether `line` reads `NAME=value`, a line of an environment file.
fn is_assignment(line: &str) -> bool {
    line.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// How exec: handlers run: the global timeout, and the secrets they must not see.
fn handlers(global: &GlobalArgs, secrets: &[&Token]) -> HandlerOptions {
    HandlerOptions {
        timeout: global.handler_timeout,
        secrets: secrets.iter().map(|t| (*t).clone()).collect(),
    }
}

/// The object's default properties (HubSpot's default search set).
fn defaults(object: &ObjectType) -> Vec<String> {
    object
        .default_properties()
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, UsageError> {
        let cli = Cli::try_parse_from(std::iter::once("martech-sync").chain(args.iter().copied()))
            .unwrap();
        Config::new(cli, Millis(1_700_000_000_000))
    }

    #[test]
    fn usage_errors() {
        let cases = [
            (&["poll", "contacts"][..], "no HubSpot token"),
            (
                &["--token", "t", "poll", "Leads"],
                "unknown object type `Leads`",
            ),
            (
                &["--token", "t", "poll", "contacts", "--since", "soon"],
                "--since `soon` is not a time",
            ),
            (
                &[
                    "--token",
                    "t",
                    "poll",
                    "contacts",
                    "--since",
                    "2024-02-01",
                    "--until",
                    "2024-01-01",
                ],
                "is after --until",
            ),
            (
                &["--token", "t", "poll", "contacts", "--sink", "kafka"],
                "--sink: unknown sink",
            ),
            (
                &[
                    "--token", "t", "poll", "contacts", "--sink", "jsonl:-", "--json",
                ],
                "both write to stdout",
            ),
            (
                &["--token", "t", "--rate-limit", "0", "poll", "contacts"],
                "--rate-limit must be",
            ),
            (
                &[
                    "--token",
                    "t",
                    "--base-url",
                    "api.hubapi.com",
                    "poll",
                    "contacts",
                ],
                "must start with http",
            ),
        ];
        for (args, want) in cases {
            let err = config(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn properties_always_hold_the_key_the_cursor_and_merges() {
        let object: ObjectType = "deals".parse().unwrap();
        assert_eq!(
            crate::sync::with_needed(&object, vec!["amount".into(), "hs_object_id".into()]),
            [
                "amount",
                "hs_object_id",
                "hs_lastmodifieddate",
                "hs_merged_object_ids"
            ]
        );
    }

    #[test]
    fn times_later_than_now_are_refused() {
        let cases = [
            (
                &["--token", "t", "poll", "contacts", "--since", "2030-01-01"][..],
                "is later than now minus --settle",
            ),
            (
                &["--token", "t", "poll", "contacts", "--since", "10s"],
                "is later than now minus --settle",
            ),
            (
                &["cursor", "set", "contacts", "2030-01-01"],
                "later than now",
            ),
            (
                &["--token", "t", "poll", "contacts", "--destination", "a b"],
                "--destination `a b`",
            ),
            (
                &[
                    "--token",
                    "t",
                    "poll",
                    "contacts",
                    "--sink",
                    "jsonl:x",
                    "--destination",
                    "sqlite",
                ],
                "default sink",
            ),
        ];
        for (args, want) in cases {
            let err = config(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        assert!(config(&["--token", "t", "poll", "contacts", "--since", "31s"]).is_ok());
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let before = config(&["--token", "t", "--db", "x.db", "poll", "deals"]).unwrap();
        let after = config(&["poll", "deals", "--token", "t", "--db", "x.db"]).unwrap();
        assert_eq!(before.db, after.db);
    }
}
