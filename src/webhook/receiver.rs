//! The HTTP side of `serve`: `POST /webhooks/hubspot` verifies the signature over the
//! raw body, parses the events, writes them to the queue in one transaction and answers
//! 200, in milliseconds, whatever the sink is doing (the worker delivers later).
//! `GET /healthz` answers from the last health check (see `health.rs`).
//!
//! Answers: 401 for a missing, stale or wrong signature (logged at WARN, without the
//! body), decided from the headers before any body is read when it can be; 413 for a
//! body over 1 MiB (from `Content-Length`, before reading it); 408 for a request not
//! complete within the request timeout; 400 for a body that is not a JSON array of
//! events; 503 when the queue cannot be written or too many bodies are being read at
//! once (HubSpot retries); 200 otherwise, duplicates included.

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
use tokio::sync::{Notify, Semaphore};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::event::parse_batch;
use super::health::Health;
use super::server::LimitLog;
use super::signature::{Signed, Version, precheck, verify};
use crate::state::State;
use crate::timestamp::Millis;

/// HubSpot sends at most 100 events; anything near a mebibyte is not HubSpot.
pub const MAX_BODY: usize = 1 << 20;
/// Body bytes read at once across all requests: bounds memory whatever arrives.
const BODY_BUDGET: usize = 48 << 20;
/// How long a request waits for room in the body budget before a 503.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// How long a body may take to arrive once its headers did: HubSpot's are a few
/// kilobytes, sent at once; a body that trickles holds the budget.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Receiver {
    /// The budget of body bytes read at once.
    pub fn body_budget() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(BODY_BUDGET))
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

async fn receive(Shared(r): Shared<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
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
    let events = match parse_batch(&body) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, bytes = body.len(), "webhook refused");
            return (StatusCode::BAD_REQUEST, "not a JSON array of events\n").into_response();
        }
    };
    let count = events.len();
    match r.state.enqueue(&events, now).await {
        Ok(new) => {
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

/// Reads the body within the byte budget shared by all requests.
async fn read_body(r: &Receiver, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_BODY)
        .min(MAX_BODY);
    let permits = u32::try_from(declared.max(1)).unwrap_or(u32::MAX);
    let Ok(Ok(_reserved)) = tokio::time::timeout(
        BUDGET_WAIT,
        Arc::clone(&r.budget).acquire_many_owned(permits),
    )
    .await
    else {
        r.log.note(
            "body-budget",
            "too many webhook bodies being read at once: answered 503 (HubSpot retries)",
        );
        return Err((StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response());
    };
    let read = http_body_util::Limited::new(body, declared).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response())
        }
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "body cut short\n").into_response()),
        Err(_) => {
            r.log.note(
                "body-timeout",
                "a webhook body did not arrive in time (408)",
            );
            Err((StatusCode::REQUEST_TIMEOUT, "body too slow\n").into_response())
        }
    }
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
