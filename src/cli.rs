//! The command line as clap sees it: types only, no logic. `config.rs` validates these
//! into a `Config`; nothing else reads them.
//!
//! Flag names, environment variables and defaults here are a public contract: crontabs
//! and scripts depend on them. Add, never rename.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Move HubSpot CRM records into your own system from cron, without losing one.
#[derive(Debug, Parser)]
#[command(
    name = "martech-sync",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after its name.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The state (cursors, checkpoints, delivered versions, runs, the webhook queue): a
    /// SQLite file, or postgres://USER@HOST/DB to keep it in Postgres, shared by many
    /// processes, machines and portals (the password from PGPASSWORD).
    #[arg(
        long,
        env = "MARTECH_SYNC_DB",
        default_value = "martech-sync.db",
        global = true
    )]
    pub db: PathBuf,

    /// In a postgres:// --db that keeps several HubSpot portals: the portal (account id)
    /// that status, cursor and dead-letters act on. poll, serve and verify act on their
    /// token's portal; given, --portal must be that one (else exit 78).
    #[arg(long, value_name = "ID", env = "MARTECH_SYNC_PORTAL", global = true)]
    pub portal: Option<u64>,

    /// The schema a postgres:// sink's tables go in (created if missing).
    #[arg(
        long,
        value_name = "NAME",
        env = "MARTECH_SYNC_PG_SCHEMA",
        default_value = "hubspot",
        global = true
    )]
    pub pg_schema: String,

    /// HubSpot private-app access token (sent as Bearer). Prefer the environment
    /// variable or --token-file: command lines are visible to other users in `ps`.
    #[arg(long, env = "HUBSPOT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Read the token from this file (one line; keep it 0600). It wins over
    /// HUBSPOT_TOKEN.
    #[arg(long, value_name = "PATH", env = "HUBSPOT_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Kill an exec: handler that runs longer than this on one page, and fail the page
    /// (it is retried like any failure).
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = positive, global = true)]
    pub handler_timeout: Duration,

    /// HubSpot API base URL.
    #[arg(
        long,
        env = "HUBSPOT_BASE_URL",
        default_value = "https://api.hubapi.com",
        global = true
    )]
    pub base_url: String,

    /// Search requests per second for this process (HubSpot allows about 5 per account).
    #[arg(long, env = "HUBSPOT_RATE_LIMIT", default_value_t = 4.0, global = true)]
    pub rate_limit: f64,

    /// Other requests (list, batch read, properties) per second for this process:
    /// HubSpot's general budget is 100 to 250 per 10 s per app, so the default leaves
    /// room for the portal's other apps. Lowered after a 429 and when HubSpot's
    /// rate-limit headers say the budget runs low.
    #[arg(
        long,
        env = "HUBSPOT_GENERAL_RATE_LIMIT",
        default_value_t = 8.0,
        global = true
    )]
    pub general_rate_limit: f64,

    /// Requests a day (UTC) this tool may make, counted in the state file across runs:
    /// a run that reaches it stops cleanly (exit 0, outcome budget-exhausted) with its
    /// window left open for the next run to resume.
    #[arg(
        long,
        value_name = "N",
        env = "MARTECH_SYNC_DAILY_BUDGET",
        global = true
    )]
    pub daily_budget: Option<u64>,

    /// A request without a complete answer within this time is retried (then given up on
    /// after --max-attempts or --retry-budget).
    #[arg(long, default_value = "30s", value_parser = duration, global = true)]
    pub timeout: Duration,

    /// Attempts per request, the first included, on 429, 5xx, timeouts and resets.
    #[arg(long, default_value_t = 8, global = true)]
    pub max_attempts: u32,

    /// First retry wait; doubles each attempt (with jitter). Also the least wait after a 429.
    #[arg(long, default_value = "1s", value_parser = duration, global = true)]
    pub retry_base: Duration,

    /// Most time one request may spend retrying.
    #[arg(long, default_value = "10m", value_parser = duration, global = true)]
    pub retry_budget: Duration,

    /// More log output (-v, -vv, -vvv). Without it, logs stay quiet unless something
    /// needs attention when stderr is not a terminal.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync one window of records modified since the stored cursor (or --since).
    Poll(PollArgs),
    /// Show where every cursor stands.
    Status(StatusArgs),
    /// Run a poll against a built-in local fake HubSpot: no account needed.
    Demo(DemoArgs),
    /// Receive HubSpot webhooks (v3 signatures) and hand the records they name to the sink;
    /// with --poll, also run reconciliation windows in the same process.
    Serve(ServeArgs),
    /// Run one reconciliation window by hand: poll OBJECT over the last --lookback
    /// (moves no cursor).
    Reconcile(ReconcileArgs),
    /// Prove the copy matches HubSpot: compare HubSpot's live records (read through the
    /// list endpoint, not search) with what the destination was given. Exit 0: it
    /// matches; 3: drift found (and not repaired); 1: the check failed.
    Verify(VerifyArgs),
    /// Webhook events given up on after repeated failures: list them or queue them again.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Show, set or reset an object's cursor.
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout: `martech-sync man > martech-sync.1`; with
    /// --dir, write one page per subcommand there.
    Man(ManArgs),
    /// Serve the local fake HubSpot (CRM search, properties, batch read) for developing and testing handlers
    /// without an account. Prints its base URL on stdout, then serves until SIGINT/SIGTERM.
    MockHubspot(MockArgs),
}

/// `poll OBJECT`.
#[derive(Debug, Args)]
pub struct PollArgs {
    /// The CRM object: contacts, companies, deals, tickets, products, line_items, quotes,
    /// calls, emails, meetings, notes, tasks, communications, postal_mail, leads, or a
    /// custom object by its name or type id (2-1234567). Several, comma-separated
    /// (contacts,companies,deals), run at once in one process under one pacing.
    #[arg(
        value_name = "OBJECT[,OBJECT...]",
        required_unless_present = "all_objects"
    )]
    pub object: Option<String>,

    /// Every standard CRM object the token can read: an object whose scope the token
    /// lacks is skipped with one line naming the scope.
    #[arg(long, conflicts_with = "object")]
    pub all_objects: bool,

    /// Start the window here instead of at the cursor: RFC 3339, a date (2024-01-01),
    /// epoch milliseconds, or an age (7d, 36h, 90m; -7d alike).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub since: Option<String>,

    /// End the window here instead of at now minus --settle (same forms as --since).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub until: Option<String>,

    /// Where records go: sqlite (the state file's records table), jsonl:PATH (jsonl:- for
    /// stdout), exec:COMMAND (each page as NDJSON on the command's stdin), or
    /// postgres://USER@HOST/DB (a table per object in --pg-schema; the password from
    /// PGPASSWORD is best) [default: sqlite, or the sink --destination was last given].
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<String>,

    /// Name the destination instead of deriving it from --sink (its state, cursor and
    /// delivered versions are kept under this name).
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// Properties to fetch, comma-separated (default: HubSpot's default set for the
    /// object). The modified-time property and hs_object_id are always fetched.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    pub properties: Vec<String>,

    /// Fetch every property of the object: search returns ids, batch read the values
    /// (the property list is cached in the state file for a day).
    #[arg(long, conflicts_with = "properties")]
    pub all_properties: bool,

    /// Records per search request (HubSpot allows 1 to 200).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub page_size: u32,

    /// Search requests in flight at once. A window of more than a few pages is split into
    /// id ranges that this many search workers scan concurrently under the one
    /// --rate-limit, so a slow API still reaches the limit (a backfill also reads the list
    /// endpoint, under --general-rate-limit). 1 scans sequentially.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub concurrency: u32,

    /// Re-read this much before the cursor, for records the search index showed late.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub overlap: Duration,

    /// End the window this much before now, so the search index has caught up.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub settle: Duration,

    /// Print one JSON run summary on stdout at the end (one line per window with
    /// --interval).
    #[arg(long)]
    pub json: bool,

    /// Keep running: one window every SECS seconds (also `5m`), missed ticks skipped; with
    /// --since the first window starts there, later ones from the cursor. SIGINT/SIGTERM
    /// stop after the page in hand, exit 0.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub interval: Option<Duration>,

    /// Re-deliver the destination's whole history with this run's properties (needed
    /// when they grow, e.g. --all-properties added to a filled destination).
    #[arg(long, conflicts_with_all = ["since", "until"])]
    pub refresh: bool,

    #[command(flatten)]
    pub passes: PassArgs,
}

/// The passes behind a poll window: a late search index and deletions.
#[derive(Debug, Args)]
pub struct PassArgs {
    /// Also scan a trailing window that ends this long before now, for records the search
    /// index showed later than --settle + --overlap allow (0 turns it off).
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = duration)]
    pub recheck: Duration,

    /// Read HubSpot's archived records this often and send a tombstone for each deletion
    /// the destination was not told of (0: every run; off: never).
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = every)]
    pub deletes_every: Every,
}

/// `status [OBJECT]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this object (as for poll), with every detail of each of its destinations.
    pub object: Option<String>,

    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Exit 1 when a cursor shown is older than this (or was never committed), for
    /// monitoring checks: `status contacts --stale-after 1h`.
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub stale_after: Option<Duration>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the URL printed on stdout says which).
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// The app's client secret, which HubSpot signs webhooks with. Prefer the environment
    /// variable or --client-secret-file: command lines are visible in `ps`.
    #[arg(long, env = "HUBSPOT_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,

    /// Read the client secret from this file (one line; keep it 0600). It wins over
    /// HUBSPOT_CLIENT_SECRET. One of the two is required.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// Most connections open at once; at the cap, idle ones (no request in flight) are
    /// closed oldest first so that a real sender still gets in.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_connections: u32,

    /// /healthz answers 503 when due webhook events have waited this long without the
    /// worker making progress (a hung handler, say).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = positive)]
    pub health_stall: Duration,

    /// The URL HubSpot calls (and signs), when a proxy sits in front
    /// [default: http://ADDR/webhooks/hubspot].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Where records go (as for poll) [default: sqlite, or the sink --destination was
    /// last given].
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<String>,

    /// Name the destination instead of deriving it from --sink.
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    #[command(flatten)]
    pub passes: PassArgs,

    /// Objects to reconcile with poll windows, comma-separated.
    #[arg(long, value_name = "OBJECT,...", value_delimiter = ',')]
    pub poll: Vec<String>,

    /// Seconds between reconciliation windows (also `5m`).
    #[arg(long, value_name = "SECS", value_parser = seconds, default_value = "300")]
    pub interval: Duration,

    /// Also accept v1/v2 signatures (no timestamp, so no replay protection).
    #[arg(long)]
    pub allow_legacy_signatures: bool,

    /// Delivery attempts before webhook events are parked as dead letters; the wait
    /// starts at --retry-base and grows fourfold, to at most an hour.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub dead_after: u32,
}

/// `reconcile OBJECT`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The object, as for poll.
    pub object: String,

    /// How far back the window reaches.
    #[arg(long, value_name = "DUR", default_value = "6h", value_parser = duration)]
    pub lookback: Duration,

    /// Where records go (as for poll) [default: sqlite, or the sink --destination was
    /// last given].
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<String>,

    /// Name the destination instead of deriving it from --sink.
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// Print one JSON run summary on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

/// `verify OBJECT`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The object, as for poll.
    pub object: String,

    /// The destination to check, by its sink (as for poll) [default: the object's only
    /// destination].
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<String>,

    /// The destination to check, by name.
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// Deliver what is missing or stale (by batch read) and tombstone what HubSpot no
    /// longer has, through the sink; exit 0 once the copy matches.
    #[arg(long)]
    pub repair: bool,

    /// One JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which destination a cursor command acts on, when an object has several.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The destination, by its sink (as for poll).
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<String>,

    /// The destination, by name.
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

/// `dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List the webhook events given up on, with their last error.
    List {
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Queue every dead event again.
    Retry,
}

/// `cursor ...`.
#[derive(Debug, Subcommand)]
pub enum CursorCommand {
    /// Print the cursor of OBJECT (RFC 3339), or `none`.
    Show {
        /// The object, as for poll.
        object: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Move the cursor of OBJECT to WHEN (RFC 3339, a date, epoch ms or an age such as 7d);
    /// an open window is closed. The next run starts at WHEN minus --overlap.
    Set {
        /// The object, as for poll.
        object: String,
        /// The new cursor: RFC 3339, a date (2024-01-01), epoch milliseconds, or an age
        /// (7d, 36h; -7d alike). Not later than now.
        #[arg(value_name = "WHEN", allow_hyphen_values = true)]
        when: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Forget the cursors and open windows of OBJECT: the next run covers all history.
    Reset {
        /// The object, as for poll.
        object: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Also forget which versions were delivered, so the next run hands every record
        /// to the sink again.
        #[arg(long)]
        redeliver: bool,
    },
}

/// `completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write martech-sync.1 and a page per subcommand (martech-sync-poll.1, ...) into
    /// this directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many contacts the fake HubSpot holds.
    #[arg(long, default_value_t = 2_000)]
    pub records: u64,
}

/// `mock-hubspot`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the URL printed says which).
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// How many generated records of every object to serve (contacts besides --seed's).
    #[arg(long, default_value_t = 1_000)]
    pub records: u64,

    /// Contacts to serve, as a JSON array of records in HubSpot's answer shape (see
    /// fixtures/contacts.json).
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,

    /// Accept only this Bearer token [default: the global --token / HUBSPOT_TOKEN if set,
    /// so the fake wants the token your polls send; else any].
    #[arg(long = "accept-token", value_name = "TOKEN")]
    pub accept_token: Option<String>,

    /// Delay every search answer by this much.
    #[arg(long, default_value = "0", value_parser = duration)]
    pub latency: Duration,

    /// The portal id GET /account-info/v3/details answers (a second fake with another
    /// one plays a second HubSpot account).
    #[arg(long = "portal-id", value_name = "ID", default_value_t = 62_515)]
    pub portal_id: u64,

    /// Answer at most this many searches a second; more get 429 as HubSpot's do.
    #[arg(long = "limit", value_name = "PER_SECOND")]
    pub limit: Option<u32>,

    /// A modification stays invisible to search for this long (index lag).
    #[arg(long, default_value = "0", value_parser = duration)]
    pub lag: Duration,

    /// Share of searches answered with a 5xx (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,

    /// Every this long, modify --modify-count random contacts.
    #[arg(long, value_parser = duration)]
    pub modify_every: Option<Duration>,

    /// How many contacts each --modify-every tick modifies.
    #[arg(long, default_value_t = 10)]
    pub modify_count: u64,

    /// Every this long, delete (archive) a random contact, as a user in HubSpot would.
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub delete_every: Option<Duration>,

    /// Every this long, merge two random contacts into a new one.
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub merge_every: Option<Duration>,

    /// Objects the token has no scope for: their requests get HubSpot's 403
    /// MISSING_SCOPES (to try how a multi-object run skips them).
    #[arg(long, value_name = "OBJECT,...", value_delimiter = ',')]
    pub unreadable: Vec<String>,
}

/// Parses `--interval`: whole seconds, or a duration such as `5m`.
fn seconds(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => duration(s)?,
    };
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

/// How often something runs: a duration (`0`: every time), or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Every(pub Option<Duration>);

/// Parses `--deletes-every`: a duration, or `off`.
fn every(s: &str) -> Result<Every, String> {
    match s.trim() {
        "off" | "never" => Ok(Every(None)),
        other => duration(other)
            .map(|d| Every(Some(d)))
            .map_err(|e| e.to_string()),
    }
}

/// Parses a duration longer than zero.
fn positive(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than zero (30s, 5m, 2h)".to_owned()),
        d => Ok(d),
    }
}

/// Parses a duration such as `30s`, `5m`, `1h 30m` or `0`.
fn duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("`{s}` is not a duration: write it with a unit, like 30s, 5m, 2h or 1h 30m")
    })
}
