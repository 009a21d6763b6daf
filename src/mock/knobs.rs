//! What a test (or `mock-hubspot`) can turn while the fake runs: unstable order among
//! equal sort values, records modified after the k-th search request, faults on chosen
//! requests or at random rates, a per-second rate limit answered with 429s, latency,
//! search-index lag, holds that keep requests waiting until released, and the
//! account's daily limit used up.

use std::collections::BTreeMap;
use std::time::Duration;

use super::search::TieOrder;

/// The type id of the fake's custom object, `pets`.
pub const PETS: &str = "2-9001";

/// Records of `object` modified by the fake once search request `after_request`
/// (1-based, counted over all objects) has been answered.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub after_request: u64,
    pub object: String,
    pub ids: Vec<u64>,
}

/// A fault injected into one search answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// This status with HubSpot's error body.
    Status(u16),
    /// This status with an HTML page, as a proxy in front of HubSpot sends.
    ProxyHtml(u16),
    /// The first result lacks the modified property.
    MissingModified,
    /// The first result's modified property is not a timestamp.
    BadTimestamp,
    /// The first result has no `id`.
    MissingId,
    /// 200 with an HTML page instead of JSON, as a captive proxy sends.
    HtmlOk,
    /// The connection drops halfway through the body.
    Drop,
    /// The answer comes only after this long (past the client's timeout, say).
    Slow(Duration),
}

/// Faults drawn at random for every search request, each with its probability.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomFaults {
    /// 500, 502, 503 or 504.
    pub server_error: f64,
    /// Answered only after `slow_by`.
    pub slow: f64,
    pub slow_by: Duration,
    /// The connection drops mid-body.
    pub drop: f64,
}

/// What a test can change while the fake runs.
#[derive(Debug)]
pub struct Knobs {
    pub ties: TieOrder,
    pub mutations: Vec<Mutation>,
    /// Faults by search request number (1-based).
    pub faults: BTreeMap<u64, Fault>,
    /// Search requests from this number on wait until [`MockHubspot::release`].
    pub hold_from: Option<u64>,
    /// Search requests per second answered; more in any one second get 429 without
    /// `Retry-After`, as HubSpot's search limit does.
    pub rate_limit: Option<u32>,
    /// Send this `Retry-After` (seconds) with rate-limit 429s.
    pub retry_after: Option<u64>,
    /// Added to every search answer.
    pub latency: Duration,
    pub random: RandomFaults,
    /// How long a modification made through the fake stays invisible to search.
    pub lag: Duration,
    /// Batch reads wait until [`MockHubspot::release`].
    pub hold_batch_reads: bool,
    /// Extra (empty) custom properties the properties API lists, as real portals have
    /// hundreds.
    pub extra_properties: usize,
    /// The account's daily limit is used up: every request gets HubSpot's `DAILY` 429.
    pub daily_limit_reached: bool,
    /// The portal (account) id `GET /account-info/v3/details` answers.
    pub portal_id: u64,
    /// The custom objects `GET /crm/v3/schemas` lists: name and type id.
    pub schemas: Vec<(String, String)>,
    /// The general budget: at most this many non-search requests per interval, with
    /// HubSpot's rate-limit headers on every answer.
    pub general_limit: Option<(u32, Duration)>,
    /// Objects (as named in the path) the token has no scope for: their search, list and
    /// batch read get HubSpot's 403 `MISSING_SCOPES`.
    pub unreadable: Vec<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            ties: TieOrder::ById,
            mutations: Vec::new(),
            faults: BTreeMap::new(),
            hold_from: None,
            rate_limit: None,
            retry_after: None,
            latency: Duration::ZERO,
            random: RandomFaults::default(),
            lag: Duration::ZERO,
            extra_properties: 0,
            hold_batch_reads: false,
            daily_limit_reached: false,
            portal_id: 62_515,
            schemas: vec![("pets".to_owned(), PETS.to_owned())],
            general_limit: None,
            unreadable: Vec::new(),
        }
    }
}
