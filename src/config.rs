//! Validated configuration: the CLI and environment turned into what the commands run
//! on. Every usage error (exit 2) is raised here, before anything touches the state file
//! or the network.

use std::path::PathBuf;

use std::io::IsTerminal;

use crate::cli::{Cli, Command, CursorCommand, DeadLettersCommand, GlobalArgs, LogFormat};
use crate::hubspot::{ClientConfig, RetryPolicy};
use crate::object::ObjectType;
use crate::progress::ProgressMode;
use crate::sink::SinkSpec;
use crate::sync::PollJob;
use crate::timestamp::Millis;
use crate::token::Token;
use crate::window::{Bounds, Margins};

/// A usage error: the command line or environment is wrong. Exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct Config {
    pub db: PathBuf,
    pub log: LogConfig,
    pub command: CommandConfig,
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
    Man,
    Serve(ServeConfig),
    DeadLetters(DeadLettersConfig),
}

/// `serve`.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    /// The client secret; a `Token` so that `Debug` never prints it.
    pub secret: Token,
    pub public_url: Option<String>,
    pub sink: SinkSpec,
    /// Reconciliation windows, one job per object.
    pub polls: Vec<PollJob>,
    pub interval: std::time::Duration,
    pub accept: crate::webhook::receiver::Accept,
    pub client: ClientConfig,
    pub dead_after: u32,
}

/// `dead-letters ...`.
#[derive(Debug)]
pub enum DeadLettersConfig {
    List { json: bool },
    Retry,
}

/// `cursor ...`.
#[derive(Debug)]
pub enum CursorConfig {
    Show(ObjectType),
    Set(ObjectType, Millis),
    Reset {
        object: ObjectType,
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
    pub rate_limit: Option<u32>,
    pub lag: std::time::Duration,
    pub error_rate: f64,
    pub modify: Option<(std::time::Duration, u64)>,
}

/// `poll`.
#[derive(Debug)]
pub struct PollConfig {
    pub job: PollJob,
    pub sink: SinkSpec,
    pub client: ClientConfig,
    pub json: bool,
    /// Continuous mode: a window every this long.
    pub interval: Option<std::time::Duration>,
    pub progress: ProgressMode,
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
        if !(global.rate_limit > 0.0 && global.rate_limit.is_finite()) {
            return Err(usage(format!(
                "--rate-limit must be a positive number of requests per second, not {}",
                global.rate_limit
            )));
        }
        if global.max_attempts == 0 {
            return Err(usage("--max-attempts must be at least 1"));
        }
        let command = match &cli.command {
            Command::Poll(args) => {
                let object = parse_object(&args.object)?;
                let when = |flag: &str, v: &Option<String>| {
                    v.as_deref()
                        .map(|s| {
                            Millis::parse_user(s, now).ok_or_else(|| {
                                usage(format!(
                                    "{flag} `{s}` is not a time: use RFC 3339, a date (2024-01-01), \
                                     epoch milliseconds or an age (7d, 36h, 90m)"
                                ))
                            })
                        })
                        .transpose()
                };
                let bounds = Bounds {
                    since: when("--since", &args.since)?,
                    until: when("--until", &args.until)?,
                };
                if let (Some(since), Some(until)) = (bounds.since, bounds.until)
                    && since > until
                {
                    return Err(usage(format!("--since {since} is after --until {until}")));
                }
                let sink: SinkSpec = args
                    .sink
                    .parse()
                    .map_err(|e| usage(format!("--sink: {e}")))?;
                if args.interval.is_some() && (bounds.since.is_some() || bounds.until.is_some()) {
                    return Err(usage(
                        "--interval runs windows from the cursor; it does not combine with --since or --until",
                    ));
                }
                if args.json && sink.uses_stdout() {
                    return Err(usage(
                        "--json and --sink jsonl:- both write to stdout; write records to a file",
                    ));
                }
                let properties = if args.all_properties {
                    crate::hubspot::hydrate::lean(&object)
                } else {
                    properties(&object, &args.properties)
                };
                CommandConfig::Poll(PollConfig {
                    job: PollJob {
                        object,
                        bounds,
                        margins: Margins {
                            overlap: args.overlap,
                            settle: args.settle,
                        },
                        properties,
                        page_size: args.page_size,
                        concurrency: args.concurrency,
                        all_properties: args.all_properties,
                    },
                    sink,
                    client: client_config(global)?,
                    json: args.json,
                    interval: args.interval,
                    // A bar redrawn for hours in continuous mode is noise, not progress.
                    progress: if args.interval.is_some() {
                        ProgressMode::Hidden
                    } else {
                        ProgressMode::detect(global.quiet)
                    },
                })
            }
            Command::Status(args) => CommandConfig::Status(StatusConfig {
                object: args.object.as_deref().map(parse_object).transpose()?,
                json: args.json,
                stale_after: args.stale_after,
            }),
            Command::Cursor(CursorCommand::Show { object }) => {
                CommandConfig::Cursor(CursorConfig::Show(parse_object(object)?))
            }
            Command::Cursor(CursorCommand::Set { object, when }) => {
                let at = Millis::parse_user(when, now).ok_or_else(|| {
                    usage(format!(
                        "`{when}` is not a time: use RFC 3339, a date (2024-01-01), epoch milliseconds or an age (7d)"
                    ))
                })?;
                CommandConfig::Cursor(CursorConfig::Set(parse_object(object)?, at))
            }
            Command::Cursor(CursorCommand::Reset {
                object,
                yes,
                redeliver,
            }) => {
                let object = parse_object(object)?;
                let terminal = std::io::stdin().is_terminal();
                if !yes && !terminal {
                    return Err(usage(
                        "cursor reset asks for confirmation; pass --yes when stdin is not a terminal",
                    ));
                }
                CommandConfig::Cursor(CursorConfig::Reset {
                    object,
                    confirm: !yes,
                    redeliver: *redeliver,
                })
            }
            Command::Serve(args) => {
                if args.client_secret.trim().is_empty() {
                    return Err(usage(
                        "no client secret: set HUBSPOT_CLIENT_SECRET (or pass --client-secret)",
                    ));
                }
                let sink: SinkSpec = args
                    .sink
                    .parse()
                    .map_err(|e| usage(format!("--sink: {e}")))?;
                let polls = args
                    .poll
                    .iter()
                    .map(|o| {
                        parse_object(o.trim()).map(|object| default_job(object, Bounds::default()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(url) = &args.public_url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err(usage(format!(
                        "--public-url `{url}` must start with http:// or https://"
                    )));
                }
                CommandConfig::Serve(ServeConfig {
                    listen: args.listen,
                    secret: Token::new(args.client_secret.clone()),
                    public_url: args.public_url.clone(),
                    sink,
                    polls,
                    interval: args.interval,
                    accept: if args.allow_legacy_signatures {
                        crate::webhook::receiver::Accept::Legacy
                    } else {
                        crate::webhook::receiver::Accept::V3
                    },
                    client: client_config(global)?,
                    dead_after: args.dead_after,
                })
            }
            Command::Reconcile(args) => {
                let object = parse_object(&args.object)?;
                let bounds = Bounds {
                    since: Some(now.minus(args.lookback)),
                    until: None,
                };
                let sink: SinkSpec = args
                    .sink
                    .parse()
                    .map_err(|e| usage(format!("--sink: {e}")))?;
                if args.json && sink.uses_stdout() {
                    return Err(usage(
                        "--json and --sink jsonl:- both write to stdout; write records to a file",
                    ));
                }
                CommandConfig::Poll(PollConfig {
                    job: default_job(object, bounds),
                    sink,
                    client: client_config(global)?,
                    json: args.json,
                    interval: None,
                    progress: ProgressMode::detect(global.quiet),
                })
            }
            Command::DeadLetters(DeadLettersCommand::List { json }) => {
                CommandConfig::DeadLetters(DeadLettersConfig::List { json: *json })
            }
            Command::DeadLetters(DeadLettersCommand::Retry) => {
                CommandConfig::DeadLetters(DeadLettersConfig::Retry)
            }
            Command::Completions(args) => CommandConfig::Completions(args.shell),
            Command::Man => CommandConfig::Man,
            Command::Demo(args) => CommandConfig::Demo(DemoConfig {
                records: args.records,
                client: ClientConfig {
                    base_url: String::new(),
                    token: Token::new("demo"),
                    rate_limit: 1_000.0,
                    timeout: global.timeout,
                    retry: retry_policy(global),
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
                        .filter(|t| !t.trim().is_empty()),
                    latency: args.latency,
                    rate_limit: args.limit,
                    lag: args.lag,
                    error_rate: args.error_rate,
                    modify: args.modify_every.map(|every| (every, args.modify_count)),
                })
            }
        };
        Ok(Config {
            db: global.db.clone(),
            log,
            command,
        })
    }
}

/// A poll job with the documented defaults, for `serve --poll` and `reconcile`.
fn default_job(object: ObjectType, bounds: Bounds) -> PollJob {
    PollJob {
        properties: properties(&object, &[]),
        object,
        bounds,
        margins: Margins {
            overlap: std::time::Duration::from_secs(300),
            settle: std::time::Duration::from_secs(30),
        },
        page_size: 200,
        concurrency: 4,
        all_properties: false,
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

fn client_config(global: &GlobalArgs) -> Result<ClientConfig, UsageError> {
    let token = match global.token.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(usage(
                "no HubSpot token: set HUBSPOT_TOKEN (or pass --token) to a private-app access token",
            ));
        }
        Some(t) => Token::new(t),
    };
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
        timeout: global.timeout,
        retry: retry_policy(global),
    })
}

/// The requested properties plus the two the engine needs, without duplicates.
fn properties(object: &ObjectType, requested: &[String]) -> Vec<String> {
    let mut out: Vec<String> = if requested.is_empty() {
        object
            .default_properties()
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        requested
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for needed in [object.modified_property(), "hs_object_id"] {
        if !out.iter().any(|p| p == needed) {
            out.push(needed.to_owned());
        }
    }
    out
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
                &["--token", "t", "poll", "leads"],
                "unknown object type `leads`",
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
    fn properties_always_hold_the_key_and_the_cursor() {
        let object: ObjectType = "deals".parse().unwrap();
        assert_eq!(
            properties(&object, &["amount".into(), "hs_object_id".into()]),
            ["amount", "hs_object_id", "hs_lastmodifieddate"]
        );
        assert!(properties(&object, &[]).contains(&"dealname".to_owned()));
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let before = config(&["--token", "t", "--db", "x.db", "poll", "deals"]).unwrap();
        let after = config(&["poll", "deals", "--token", "t", "--db", "x.db"]).unwrap();
        assert_eq!(before.db, after.db);
    }
}
