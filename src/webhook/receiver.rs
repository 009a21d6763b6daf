//! The HTTP side of `serve`: `POST /webhooks/hubspot` verifies the signature over the
//! raw body, parses the events, writes them to the queue in one transaction and answers
//! 200, in milliseconds, whatever the sink is doing (the worker delivers later).
//! `GET /healthz` says whether the state file takes writes.
//!
//! Answers: 401 for a bad or missing signature (logged at WARN, without the body), 413
//! for a body over 1 MiB, 400 for a body that is not a JSON array of events, 503 when
//! the queue cannot be written (HubSpot retries), 200 otherwise, duplicates included.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use tokio::sync::Notify;

use super::event::parse_batch;
use super::signature::{Signed, Version, verify};
use crate::state::State;
use crate::timestamp::Millis;

/// HubSpot sends at most 100 events; anything near a mebibyte is not HubSpot.
pub const MAX_BODY: usize = 1 << 20;

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
}

/// The receiver's routes.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/webhooks/hubspot", post(receive))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(receiver)
}

async fn receive(
    Shared(r): Shared<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
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
            _ => return refuse("no signature header"),
        },
        (None, Accept::V3) => return refuse("no X-HubSpot-Signature-v3 header"),
    };
    let signed = Signed {
        method: "POST",
        url: &r.public_url,
        body: &body,
        timestamp: header("x-hubspot-request-timestamp"),
        signature,
    };
    if let Err(why) = verify(&r.secret, version, &signed, now) {
        return refuse(&why.to_string());
    }
    let events = match parse_batch(&body) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, bytes = body.len(), "webhook refused");
            return (StatusCode::BAD_REQUEST, "not a JSON array of events\n");
        }
    };
    let count = events.len();
    match r.state.enqueue(&events, now).await {
        Ok(new) => {
            tracing::debug!(events = count, new, "webhook accepted");
            if new > 0 {
                r.queued.notify_one();
            }
            (StatusCode::OK, "ok\n")
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "could not queue webhook events; HubSpot will retry");
            (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n")
        }
    }
}

fn refuse(why: &str) -> (StatusCode, &'static str) {
    tracing::warn!(reason = why, "webhook refused: signature");
    (StatusCode::UNAUTHORIZED, "invalid signature\n")
}

async fn health(Shared(r): Shared<Arc<Receiver>>) -> (StatusCode, &'static str) {
    match r.state.check_writable().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "state file not writable");
            (StatusCode::SERVICE_UNAVAILABLE, "state file not writable\n")
        }
    }
}
