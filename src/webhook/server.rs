//! The HTTP server of `serve`, which anyone on the internet can reach. Every limit is set
//! in hyper or tower before our handlers run: a header read timeout (a client that
//! trickles its headers is dropped), a whole-request timeout, header and buffer caps, and
//! a cap on open connections. At the cap the oldest connection without a verified
//! request in flight is closed, so a real sender still gets in: idle connections and
//! requests whose signature is not checked yet are what a flood is made of, while a
//! request that proved it comes from HubSpot is never cut, nor a connection in its first
//! second (a flood of reconnecting sockets cannot cut a sender mid-request). Shutdown is bounded: in-flight
//! requests get a grace period, then every connection is dropped. When a limit bites,
//! one log line says so, at most every ten seconds per kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// The limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this (also closes idle keep-alives).
    pub header_timeout: Duration,
    /// How long requests in flight may finish after a stop was asked for.
    pub shutdown_grace: Duration,
}

/// Header bytes a request may have (431 above); HubSpot's are about one kilobyte.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// hyper's read buffer per connection (hyper's least is 8 KiB): with the header cap it
/// bounds what an unfinished request costs to a few tens of kilobytes.
const MAX_BUFFER: usize = 16 * 1024;

/// One log line per kind of limit, at most every ten seconds, with how many were
/// suppressed in between.
#[derive(Default)]
pub struct LimitLog {
    last: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl LimitLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Notes that the limit `kind` bit, logging when the last line is old enough.
    pub fn note(&self, kind: &'static str, detail: &str) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < Self::EVERY => *suppressed += 1,
            entry => {
                let suppressed = entry.map_or(0, |(_, n)| *n);
                tracing::warn!(limit = kind, suppressed, "{detail}");
                last.insert(kind, (now, 0));
            }
        }
    }
}

/// A connection's count of verified requests in flight, in each request's extensions:
/// the receiver marks a request once its signature checks out, and a connection with a
/// marked request is never closed to make room.
#[derive(Clone, Default)]
pub struct Verified(Arc<AtomicUsize>);

impl Verified {
    /// Marks one request verified until the guard is dropped.
    pub fn hold(&self) -> VerifiedGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        VerifiedGuard(Arc::clone(&self.0))
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// Keeps a request counted as verified while alive.
pub struct VerifiedGuard(Arc<AtomicUsize>);

impl Drop for VerifiedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open connection: when it was accepted, its mark, and how to close it.
struct Open {
    accepted: Instant,
    verified: Verified,
    handle: AbortHandle,
}

/// The open connections, in the order they were accepted.
#[derive(Default)]
struct Registry {
    next: AtomicUsize,
    open: Mutex<BTreeMap<usize, Open>>,
}

/// How long a new connection is safe from being closed to make room: a real sender
/// sends its request within milliseconds, so a flood of reconnecting sockets cannot cut
/// it halfway.
const GRACE: Duration = Duration::from_secs(1);

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for one more connection under `cap`: when full, closes the oldest
    /// connection past its grace period without a verified request in flight. Returns
    /// whether there is room.
    fn make_room(&self, cap: usize, log: &LimitLog) -> bool {
        let mut open = self.lock();
        open.retain(|_, o| !o.handle.is_finished());
        if open.len() < cap {
            return true;
        }
        let oldest = open
            .iter()
            .find(|(_, o)| !o.verified.any() && o.accepted.elapsed() >= GRACE)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                if let Some(o) = open.remove(&id) {
                    o.handle.abort();
                }
                log.note(
                    "connections",
                    &format!(
                        "{cap} connections open: closed the oldest one without a verified \
                         request to let a new one in"
                    ),
                );
                true
            }
            None => {
                log.note(
                    "connections",
                    &format!(
                        "{cap} connections open, all new or with a verified request in \
                         flight: refused a new one"
                    ),
                );
                false
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish for
/// the grace period and drops every connection.
///
/// # Errors
/// None so far: accept errors (out of descriptors, say) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: Shutdown,
    log: Arc<LimitLog>,
) -> Result<()> {
    let registry = Registry::default();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait a moment rather than spin.
                log.note("accept", &format!("cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !registry.make_room(limits.max_connections, &log) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let verified = Verified::default();
        let id = registry.next.fetch_add(1, Ordering::Relaxed);
        let handle = connections.spawn(connection(
            stream,
            app.clone(),
            verified.clone(),
            limits,
            shutdown.clone(),
            Arc::clone(&log),
        ));
        registry.lock().insert(
            id,
            Open {
                accepted: Instant::now(),
                verified,
                handle,
            },
        );
    }
    drop(listener);
    // Requests in flight get the grace period (each connection shuts down gracefully on
    // the same signal); whatever is left after it is dropped.
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            left = connections.len(),
            "closing the connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    verified: Verified,
    limits: Limits,
    shutdown: Shutdown,
    log: Arc<LimitLog>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(verified.clone());
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUFFER)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            log.note(
                "header-timeout",
                &format!(
                    "closed a connection whose headers did not arrive within {}",
                    humantime::format_duration(limits.header_timeout)
                ),
            );
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
