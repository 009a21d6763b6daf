//! The local fake HubSpot: a real HTTP server on loopback that filters, sorts, pages,
//! caps at 10,000, lists, archives, merges, authenticates and fails the way HubSpot does,
//! so the tests, `demo` and `mock-hubspot` exercise the real binary over real HTTP. It is
//! HubSpot, not us: it knows nothing of cursors or windows.
//!
//! Rooms: `store` (the records and what happens to them), `search` (search semantics
//! over what the index shows), `routes` (the HTTP endpoints and HubSpot's error bodies),
//! `knobs` (what a test turns), `seed` (fixture and synthetic records). This file is the
//! server's handle: start, stop, counters, and the changes a test makes.

pub mod knobs;
mod routes;
pub mod search;
pub mod seed;
pub mod store;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::timestamp::Millis;
pub use knobs::{Fault, Knobs, Mutation, RandomFaults};
pub use search::TieOrder;
pub use store::{FakeRecord, Store};

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
    /// When the general-budget requests of the current window were let through.
    general_window: Mutex<VecDeque<Instant>>,
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
            general_window: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(0x5eed)),
        });
        let app = routes::router(Arc::clone(&shared));
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

    /// How many calls `kind` (`batch_read`, `properties`, `list`, `list_archived`,
    /// `account_info`) got.
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

    /// Deletes (archives) records of `object` now, as a user in HubSpot would.
    pub fn archive(&self, object: &str, ids: impl IntoIterator<Item = u64>) {
        let now = Millis::now();
        let mut store = self.store();
        for id in ids {
            store.archive(object, id, now);
        }
    }

    /// Restores archived records of `object` now.
    pub fn restore(&self, object: &str, ids: impl IntoIterator<Item = u64>) {
        let now = Millis::now();
        let mut store = self.store();
        for id in ids {
            store.restore(object, id, now);
        }
    }

    /// Merges `others` into `primary` now; returns the new record's id.
    pub fn merge(&self, object: &str, primary: u64, others: &[u64]) -> Option<u64> {
        self.store().merge(object, primary, others, Millis::now())
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
