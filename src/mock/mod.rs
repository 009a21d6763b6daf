//! The local fake HubSpot: a real HTTP server on loopback that filters, sorts, pages,
//! caps at 10,000, authenticates and fails the way HubSpot does, so the tests, `demo`
//! and (later) `mock-hubspot` exercise the real binary over real HTTP.
//!
//! Search semantics live in `store.rs`, seed data in `seed.rs`; this file is the server
//! and the knobs a test turns: unstable order among equal sort values, records modified
//! after the k-th search request, faults on chosen requests or at random rates, a
//! per-second rate limit answered with 429s, latency, search-index lag, and a hold that
//! keeps requests waiting until the test releases them.

pub mod seed;
pub mod store;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::object::ObjectType;
use crate::timestamp::Millis;
pub use store::{FakeRecord, Store, TieOrder};

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
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    knobs: Mutex<Knobs>,
    token: Option<String>,
    /// Search requests that arrived, whether or not they were answered yet.
    arrived: watch::Sender<u64>,
    /// Whether held requests may go on.
    released: watch::Sender<bool>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Calls of the other endpoints, by path kind.
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// When the searches of the last second were let through, for the rate limit.
    recent: Mutex<VecDeque<Instant>>,
    rng: Mutex<StdRng>,
}

/// A running fake HubSpot; dropping it stops the server.
pub struct MockHubspot {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockHubspot {
    /// Starts the fake on an ephemeral loopback port. With `token`, only that Bearer
    /// token is accepted; without, any.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(store: Store, token: Option<String>) -> Result<MockHubspot> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the fake HubSpot to 127.0.0.1")?;
        Self::serve(listener, store, token)
    }

    /// Serves the fake on `listener`.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn serve(
        listener: TcpListener,
        store: Store,
        token: Option<String>,
    ) -> Result<MockHubspot> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            knobs: Mutex::default(),
            token,
            arrived: watch::Sender::new(0),
            released: watch::Sender::new(false),
            statuses: Mutex::default(),
            calls: Mutex::default(),
            recent: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(0x5eed)),
        });
        let app = Router::new()
            .route("/crm/v3/objects/{object}/search", post(search))
            .route("/crm/v3/objects/{object}/batch/read", post(batch_read))
            .route("/crm/v3/properties/{object}", get(properties))
            .with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(MockHubspot {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The base URL to pass as `--base-url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The knobs, to turn while the fake runs.
    pub fn knobs(&self) -> MutexGuard<'_, Knobs> {
        lock(&self.shared.knobs)
    }

    /// The records, to read or change while the fake runs.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }

    /// How many search requests arrived so far.
    pub fn searches(&self) -> u64 {
        *self.shared.arrived.borrow()
    }

    /// How many answers had `status`.
    pub fn answered(&self, status: u16) -> u64 {
        lock(&self.shared.statuses)
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// How many calls `kind` (`batch_read`, `properties`) got.
    pub fn calls(&self, kind: &str) -> u64 {
        lock(&self.shared.calls).get(kind).copied().unwrap_or(0)
    }

    /// Waits until at least `n` search requests have arrived.
    pub async fn wait_for_searches(&self, n: u64) {
        let mut rx = self.shared.arrived.subscribe();
        let _ = rx.wait_for(|seen| *seen >= n).await;
    }

    /// Holds every batch read until [`Self::release`].
    pub fn hold_batch_reads(&self) {
        self.shared.released.send_replace(false);
        self.knobs().hold_batch_reads = true;
    }

    /// Holds every search request from number `n` on (1-based) until [`Self::release`].
    pub fn hold_from(&self, n: u64) {
        self.shared.released.send_replace(false);
        self.knobs().hold_from = Some(n);
    }

    /// Lets the search index catch up with every modification (as if the lag passed).
    pub fn catch_up_index(&self) {
        self.store().catch_up_index();
    }

    /// Modifies records of `object` now, as a user in HubSpot would; search shows the
    /// new versions after the lag knob.
    pub fn modify(&self, object: &str, ids: impl IntoIterator<Item = u64>) {
        let lag = self.knobs().lag;
        let now = Millis::now();
        let mut store = self.store();
        for id in ids {
            store.touch(object, id, now, lag);
        }
    }

    /// Lets held requests go on.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockHubspot {
    fn drop(&mut self) {
        self.shared.released.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn search(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // HubSpot counts a request against the limit when it arrives.
    let limited = over_rate_limit(&shared);
    let mut n = 0;
    shared.arrived.send_modify(|c| {
        *c += 1;
        n = *c;
    });
    let held = lock(&shared.knobs).hold_from.is_some_and(|from| n >= from);
    if held {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }

    let correlation_id = correlation_id(&shared);
    let (latency, fault) = {
        let mut knobs = lock(&shared.knobs);
        (knobs.latency, knobs.faults.remove(&n))
    };
    let fault = fault.or_else(|| random_fault(&shared));
    let delay = match fault {
        Some(Fault::Slow(by)) => latency + by,
        _ => latency,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = if limited {
        let (status, mut response) = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITS",
            "You have reached your secondly limit.",
            &correlation_id,
        );
        if let Some(secs) = lock(&shared.knobs).retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        (status, response)
    } else {
        // Searching is CPU work; off the async workers, so arrivals are timed truly.
        let shared = Arc::clone(&shared);
        let correlation_id = correlation_id.clone();
        tokio::task::spawn_blocking(move || {
            answer_search(&shared, fault, &object, &headers, &body, &correlation_id)
        })
        .await
        .unwrap_or_else(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "search panicked",
                "",
            )
        })
    };
    *lock(&shared.statuses).entry(answer.0.as_u16()).or_default() += 1;
    apply_mutations(&shared, n);
    let mut response = (answer.0, answer.1).into_response();
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert("x-hubspot-correlation-id", v);
    }
    response
}

type Answer = (StatusCode, Response);

fn answer_search(
    shared: &Shared,
    fault: Option<Fault>,
    object: &str,
    headers: &HeaderMap,
    body: &[u8],
    correlation_id: &str,
) -> Answer {
    if !authorized(shared, headers) {
        return unauthorized(correlation_id);
    }
    // HubSpot refuses search bodies over 3,000 characters (hubspot-api.md §1).
    if body.len() > 3_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!(
                "The request body is {} characters; at most 3000 are allowed",
                body.len()
            ),
            correlation_id,
        );
    }
    match fault {
        Some(Fault::Drop) => {
            // Headers and half a body, then the connection breaks.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(br#"{"total":1000,"results":[{"id":"#)),
                Err(std::io::Error::other("connection dropped by the fake")),
            ];
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            return (StatusCode::OK, body.into_response());
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // HubSpot's own bodies for these statuses (hubspot-api.md §9).
            let (category, message) = match code {
                400 => ("VALIDATION_ERROR", "There was a problem with the request."),
                403 => (
                    "MISSING_SCOPES",
                    "This app hasn't been granted all required scopes to make this call.",
                ),
                404 => ("OBJECT_NOT_FOUND", "Object not found."),
                429 => ("RATE_LIMITS", "You have reached your secondly limit."),
                _ => ("INTERNAL_ERROR", "Internal error"),
            };
            return error(status, category, message, correlation_id);
        }
        Some(Fault::ProxyHtml(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let html = format!(
                "<html><head><title>{code}</title></head><body><h1>{status}</h1>cloudflare</body></html>"
            );
            return (
                status,
                ([(header::CONTENT_TYPE, "text/html")], html).into_response(),
            );
        }
        Some(Fault::HtmlOk) => {
            let html = "<!doctype html><html><body><h1>Please sign in to the guest Wi-Fi</h1></body></html>";
            return (
                StatusCode::OK,
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
            );
        }
        Some(Fault::MalformedJson) => {
            let text = r#"{"total":3,"results":[{"id":"1","properties":{"#;
            return (
                StatusCode::OK,
                ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
            );
        }
        _ => {}
    }
    let Ok(object) = object.parse::<ObjectType>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("Unable to infer object type from: {object}"),
            correlation_id,
        );
    };
    let request: store::SearchRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Invalid input JSON: {e}"),
                correlation_id,
            );
        }
    };
    let ties = lock(&shared.knobs).ties;
    let mut store = lock(&shared.store);
    let result = {
        let mut rng = lock(&shared.rng);
        store.search(&object, &request, Millis::now(), ties, &mut *rng)
    };
    drop(store);
    let result = match result {
        Ok(r) => r,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &invalid.to_string(),
                correlation_id,
            );
        }
    };
    let mut results: Vec<Value> = result
        .results
        .iter()
        .map(|r| Store::to_json(&object, r, &request.properties))
        .collect();
    if let Some(first) = results.first_mut() {
        let property = object.modified_property();
        match fault {
            Some(Fault::MissingModified) => {
                first["properties"][property] = Value::Null;
            }
            Some(Fault::BadTimestamp) => {
                first["properties"][property] = Value::from("last tuesday");
            }
            Some(Fault::MissingId) => {
                if let Some(o) = first.as_object_mut() {
                    o.remove("id");
                }
            }
            _ => {}
        }
    }
    let mut body = json!({ "total": result.total, "results": results });
    if let Some(after) = result.next_after {
        body["paging"] = json!({ "next": { "after": after.to_string() } });
    }
    (StatusCode::OK, axum::Json(body).into_response())
}

/// Whether the request carries the token the fake wants.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    sent == Some(token.as_str())
}

fn unauthorized(correlation_id: &str) -> Answer {
    error(
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        correlation_id,
    )
}

/// `GET /crm/v3/properties/{object}`: every property name the object's records use,
/// the system ones, and the extra custom ones of the knob.
async fn properties(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Response {
    *lock(&shared.calls).entry("properties").or_default() += 1;
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    let Ok(object) = object.parse::<ObjectType>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Unknown object type",
            &correlation_id,
        )
        .1;
    };
    let mut names: std::collections::BTreeSet<String> = [
        "hs_object_id",
        object.modified_property(),
        object.created_property(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    names.extend(object.default_properties().iter().map(|s| (*s).to_owned()));
    for r in lock(&shared.store).records(object.as_str()) {
        names.extend(r.properties.keys().cloned());
    }
    let extra = lock(&shared.knobs).extra_properties;
    names.extend((1..=extra).map(|i| format!("custom_property_{i:03}")));
    let results: Vec<Value> = names
        .into_iter()
        .map(|name| json!({ "name": name, "label": name, "type": "string", "fieldType": "text" }))
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

/// `POST /crm/v3/objects/{object}/batch/read`: the current versions (batch read reads
/// the records, not the lagging search index), at most 100 ids a call.
async fn batch_read(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *lock(&shared.calls).entry("batch_read").or_default() += 1;
    if lock(&shared.knobs).hold_batch_reads {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    #[derive(serde::Deserialize)]
    struct Input {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        #[serde(default)]
        properties: Vec<String>,
        inputs: Vec<Input>,
    }
    let bad = |message: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            message,
            &correlation_id,
        )
        .1
    };
    let Ok(object) = object.parse::<ObjectType>() else {
        return bad("Unknown object type");
    };
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("Invalid input JSON: {e}")),
    };
    if request.inputs.len() > 100 {
        return bad("Batch read takes at most 100 inputs");
    }
    let store = lock(&shared.store);
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &request.inputs {
        match input
            .id
            .parse::<u64>()
            .ok()
            .and_then(|id| store.get(object.as_str(), id))
        {
            Some(r) => results.push(Store::to_json(&object, r, &request.properties)),
            None => missing.push(input.id.clone()),
        }
    }
    drop(store);
    let mut body = json!({ "status": "COMPLETE", "results": results });
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        body["errors"] = json!([{ "status": "error", "category": "OBJECT_NOT_FOUND",
            "message": "Could not get some records", "context": { "ids": missing } }]);
        StatusCode::MULTI_STATUS
    };
    (status, axum::Json(body)).into_response()
}

fn apply_mutations(shared: &Shared, n: u64) {
    let due: Vec<Mutation> = {
        let mut knobs = lock(&shared.knobs);
        let (due, later) = knobs
            .mutations
            .drain(..)
            .partition(|m| m.after_request <= n);
        knobs.mutations = later;
        due
    };
    if due.is_empty() {
        return;
    }
    let lag = lock(&shared.knobs).lag;
    let mut store = lock(&shared.store);
    let now = Millis::now();
    for m in due {
        for id in m.ids {
            store.touch(&m.object, id, now, lag);
        }
    }
}

/// Whether this request is one too many for the last second; counts it if not.
fn over_rate_limit(shared: &Shared) -> bool {
    let Some(limit) = lock(&shared.knobs).rate_limit else {
        return false;
    };
    let now = Instant::now();
    let mut recent = lock(&shared.recent);
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= limit as usize {
        return true;
    }
    recent.push_back(now);
    false
}

fn random_fault(shared: &Shared) -> Option<Fault> {
    let random = lock(&shared.knobs).random;
    let mut rng = lock(&shared.rng);
    let roll: f64 = rng.random();
    if roll < random.server_error {
        let codes = [500, 502, 503, 504];
        return Some(Fault::Status(codes[rng.random_range(0..codes.len())]));
    }
    if roll < random.server_error + random.slow {
        return Some(Fault::Slow(random.slow_by));
    }
    if roll < random.server_error + random.slow + random.drop {
        return Some(Fault::Drop);
    }
    None
}

fn error(status: StatusCode, category: &str, message: &str, correlation_id: &str) -> Answer {
    let body = json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id,
        "category": category,
    });
    (status, axum::Json(body).into_response())
}

fn correlation_id(shared: &Shared) -> String {
    let x: u128 = lock(&shared.rng).random();
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
