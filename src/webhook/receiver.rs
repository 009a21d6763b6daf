//! The HTTP side of `serve`: `POST /webhooks/hubspot` verifies the signature over the
//! raw body, parses the events, writes them to the queue in one transaction and answers
//! 200, in milliseconds, whatever the sink is doing (the worker delivers later).
//! `GET /healthz` answers from the last health check (see `health.rs`).
//!
//! Answers: 401 for a missing, stale or wrong signature (logged at WARN, without the
//! body), decided from the headers before any body is read when it can be; 411 for a
//! body without `Content-Length` (HubSpot always sends one); 413 for a body over 1 MiB
//! (from `Content-Length`, before reading it); 408 for a body not in within five
//! seconds or a request not complete within the request timeout; 400 for a body that
//! is not a JSON array of events; 503 when the queue cannot be written or too many
//! bodies are being read at once (HubSpot retries); 200 otherwise, duplicates included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::event::parse_batch;
use super::health::Health;
use super::server::{LimitLog, Verified};
use super::signature::{MAX_SKEW_MS, Signed, Version, precheck, verify};
use crate::state::State;
use crate::timestamp::Millis;

/// HubSpot sends at most 100 events; anything near a mebibyte is not HubSpot.
pub const MAX_BODY: usize = 1 << 20;
/// Body bytes read at once across all requests: bounds memory whatever arrives.
const BODY_BUDGET: usize = 48 << 20;
/// What a body's buffer starts at (HubSpot's batches are a few kilobytes).
const INITIAL_BUFFER: usize = 64 << 10;
/// How long a request waits for room in the body budget before a 503.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// How long a body may take to arrive once its headers did: HubSpot's are a few
/// kilobytes, sent at once; a body that trickles holds the budget and a connection.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which signature versions are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// v3 only: the only one with a timestamp, so the only one that resists replay.
    V3,
    /// v3, and v1/v2 when a request carries no v3 header.
    Legacy,
}

/// What the handlers share.
pub struct Receiver {
    /// The receiver's own handle on the state (for SQLite its own connection: WAL lets
    /// it write while the worker reads).
    pub state: State,
    pub secret: Vec<u8>,
    /// The URL HubSpot signs: the public one, not the listen address behind a proxy.
    pub public_url: String,
    pub accept: Accept,
    /// Wakes the worker when events were queued.
    pub queued: Arc<Notify>,
    pub health: Arc<Health>,
    pub log: Arc<LimitLog>,
    /// Bytes of bodies being read.
    pub budget: Arc<Semaphore>,
    /// One enqueue at a time: a flood of valid requests waits here, asynchronously,
    /// rather than each taking a blocking thread to wait on the state's lock.
    pub writer: tokio::sync::Mutex<()>,
    /// The signatures of requests queued in the last five minutes: a replay of one (a
    /// captured request sent again) is answered from here without touching the state.
    pub seen: std::sync::Mutex<HashMap<String, Millis>>,
}

/// Signatures remembered at most, so a flood of distinct ones cannot grow the map.
const SEEN_MAX: usize = 50_000;

impl Receiver {
    /// The budget of body bytes read at once.
    pub fn body_budget() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(BODY_BUDGET))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Millis>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request with this (verified) signature was queued less than five minutes
    /// ago.
    fn replayed(&self, signature: &str, now: Millis) -> bool {
        self.seen()
            .get(signature.trim())
            .is_some_and(|at| now.0 - at.0 <= MAX_SKEW_MS)
    }

    /// Remembers that a request with this signature was queued.
    fn remember(&self, signature: &str, now: Millis) {
        let mut seen = self.seen();
        if seen.len() >= SEEN_MAX {
            seen.retain(|_, at| now.0 - at.0 <= MAX_SKEW_MS);
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
        }
        seen.insert(signature.trim().to_owned(), now);
    }
}

/// The receiver's routes, with the request timeout and the early body cap.
pub fn router(receiver: Arc<Receiver>, request_timeout: Duration) -> Router {
    let log = Arc::clone(&receiver.log);
    Router::new()
        .route("/webhooks/hubspot", post(receive))
        .route("/healthz", get(health))
        .with_state(receiver)
        // The body is read (and capped) by `receive`; axum's own limit would buffer.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let log = Arc::clone(&log);
            async move {
                let response = next.run(request).await;
                match response.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        log.note("body-size", "refused a body over 1 MiB (413)");
                    }
                    StatusCode::REQUEST_TIMEOUT => {
                        log.note(
                            "request-timeout",
                            "a request did not complete in time (408)",
                        );
                    }
                    _ => {}
                }
                response
            }
        }))
}

async fn receive(Shared(r): Shared<Arc<Receiver>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = Millis::now();
    let (version, signature) = match (header("x-hubspot-signature-v3"), r.accept) {
        (Some(sig), _) => (Version::V3, sig),
        (None, Accept::Legacy) => match (
            header("x-hubspot-signature"),
            header("x-hubspot-signature-version"),
        ) {
            (Some(sig), Some("v1")) => (Version::V1, sig),
            (Some(sig), Some("v2")) => (Version::V2, sig),
            _ => return refuse(&r, "no signature header"),
        },
        (None, Accept::V3) => return refuse(&r, "no X-HubSpot-Signature-v3 header"),
    };
    let timestamp = header("x-hubspot-request-timestamp");
    if let Err(why) = precheck(version, timestamp, signature, now) {
        return refuse(&r, &why.to_string());
    }
    let body = match read_body(&r, &headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let signed = Signed {
        method: "POST",
        url: &r.public_url,
        body: &body,
        timestamp,
        signature,
    };
    if let Err(why) = verify(&r.secret, version, &signed, now) {
        let hint = format!(
            "{why} for {} (check --public-url, which must be the exact URL HubSpot calls, \
             query included, and the client secret)",
            r.public_url
        );
        return refuse(&r, &hint);
    }
    // From here on the connection is HubSpot's: never closed to make room.
    let _verified = parts.extensions.get::<Verified>().map(Verified::hold);
    let events = match parse_batch(&body) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, bytes = body.len(), "webhook refused");
            return (StatusCode::BAD_REQUEST, "not a JSON array of events\n").into_response();
        }
    };
    if r.replayed(signature, now) {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let count = events.len();
    let queued = {
        let _one = r.writer.lock().await;
        r.state.enqueue(&events, now).await
    };
    match queued {
        Ok(new) => {
            r.remember(signature, now);
            r.health.enqueued(None);
            tracing::debug!(events = count, new, "webhook accepted");
            if new > 0 {
                r.queued.notify_one();
            }
            (StatusCode::OK, "ok\n").into_response()
        }
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(error = %error, "could not queue webhook events; HubSpot will retry");
            r.health.enqueued(Some(error));
            (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n").into_response()
        }
    }
}

/// Reads the body within the byte budget shared by all requests. The budget is taken as
/// bytes arrive, not for what a request declares, so idle senders hold none of it; each
/// frame is copied into one growing buffer and dropped at once, so the memory held is the
/// bytes received, whatever the framing or the declared length.
async fn read_body(r: &Receiver, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    // HubSpot sends `Content-Length`; a chunked body would let the framing, not the
    // bytes, decide what a request costs.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        r.log.note(
            "body-length",
            "refused a webhook without Content-Length (411)",
        );
        return Err((StatusCode::LENGTH_REQUIRED, "Content-Length required\n").into_response());
    }
    let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        r.log.note(
            "body-length",
            "refused a webhook without Content-Length (411)",
        );
        return Err((StatusCode::LENGTH_REQUIRED, "Content-Length required\n").into_response());
    };
    if declared > MAX_BODY {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response());
    }
    match tokio::time::timeout(BODY_TIMEOUT, collect(r, body, declared)).await {
        Ok(result) => result,
        Err(_) => {
            r.log.note(
                "body-timeout",
                "a webhook body did not arrive in time (408)",
            );
            Err((StatusCode::REQUEST_TIMEOUT, "body too slow\n").into_response())
        }
    }
}

/// Collects `declared` bytes of `body`, taking budget for each frame before keeping it.
async fn collect(r: &Receiver, mut body: Body, declared: usize) -> Result<Vec<u8>, Response> {
    let busy = || {
        r.log.note(
            "body-budget",
            "too many webhook bodies being read at once: answered 503 (HubSpot retries)",
        );
        (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response()
    };
    // Grown as bytes arrive: a declared length costs nothing until it is sent.
    let mut bytes = Vec::with_capacity(declared.min(INITIAL_BUFFER));
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err((StatusCode::BAD_REQUEST, "body cut short\n").into_response());
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if bytes.len() + data.len() > declared {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response());
        }
        let permits = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if permits > 0 {
            let budget = Arc::clone(&r.budget);
            let permit = match budget.clone().try_acquire_many_owned(permits) {
                Ok(permit) => permit,
                Err(_) => {
                    match tokio::time::timeout(BUDGET_WAIT, budget.acquire_many_owned(permits))
                        .await
                    {
                        Ok(Ok(permit)) => permit,
                        _ => return Err(busy()),
                    }
                }
            };
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        bytes.extend_from_slice(&data);
    }
    if bytes.len() < declared {
        return Err((StatusCode::BAD_REQUEST, "body cut short\n").into_response());
    }
    Ok(bytes)
}

fn refuse(r: &Receiver, why: &str) -> Response {
    r.log
        .note("signature", &format!("webhook refused (401): {why}"));
    (StatusCode::UNAUTHORIZED, "invalid signature\n").into_response()
}

async fn health(Shared(r): Shared<Arc<Receiver>>) -> Response {
    let report = r.health.report(Millis::now());
    let status = if report.problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}
