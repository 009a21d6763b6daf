//! The local fake HubSpot: a real HTTP server on loopback that filters, sorts, pages,
//! caps at 10,000, authenticates and fails the way HubSpot does, so the tests, `demo`
//! and (later) `mock-hubspot` exercise the real binary over real HTTP.
//!
//! Search semantics live in `store.rs`, seed data in `seed.rs`; this file is the server
//! and the knobs a test turns: unstable order among equal sort values, records modified
//! after the k-th search request, faults on chosen requests, and a gate that holds
//! requests until the test opens it.

pub mod seed;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
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
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            ties: TieOrder::ById,
            mutations: Vec::new(),
            faults: BTreeMap::new(),
            hold_from: None,
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
            rng: Mutex::new(StdRng::seed_from_u64(0x5eed)),
        });
        let app = Router::new()
            .route("/crm/v3/objects/{object}/search", post(search))
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

    /// Waits until at least `n` search requests have arrived.
    pub async fn wait_for_searches(&self, n: u64) {
        let mut rx = self.shared.arrived.subscribe();
        let _ = rx.wait_for(|seen| *seen >= n).await;
    }

    /// Holds every search request from number `n` on (1-based) until [`Self::release`].
    pub fn hold_from(&self, n: u64) {
        self.shared.released.send_replace(false);
        self.knobs().hold_from = Some(n);
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
    let answer = answer_search(&shared, n, &object, &headers, &body, &correlation_id);
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
    n: u64,
    object: &str,
    headers: &HeaderMap,
    body: &[u8],
    correlation_id: &str,
) -> Answer {
    if let Some(token) = &shared.token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(token.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                correlation_id,
            );
        }
    }
    let fault = lock(&shared.knobs).faults.remove(&n);
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let category = if code == 429 {
                "RATE_LIMITS"
            } else {
                "INTERNAL_ERROR"
            };
            let message = if code == 429 {
                "You have reached your secondly limit."
            } else {
                "internal error"
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
    let store = lock(&shared.store);
    let result = {
        let mut rng = lock(&shared.rng);
        store.search(&object, &request, ties, &mut *rng)
    };
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
        .map(|id| store.to_json(&object, *id, &request.properties))
        .collect();
    drop(store);
    if let Some(first) = results.first_mut() {
        let property = object.modified_property();
        match fault {
            Some(Fault::MissingModified) => {
                first["properties"][property] = Value::Null;
            }
            Some(Fault::BadTimestamp) => {
                first["properties"][property] = Value::from("last tuesday");
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
    let mut store = lock(&shared.store);
    let now = Millis::now();
    for m in due {
        for id in m.ids {
            store.touch(&m.object, id, now);
        }
    }
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
