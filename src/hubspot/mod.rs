//! Talking to HubSpot: the HTTP client with pacing and retries (`client`), the typed
//! error the retry loop branches on (`error`), the backoff schedule (`retry`), keyed
//! CRM search (`search`), `--all-properties` hydration by batch read (`hydrate`) and the
//! list endpoint for deletions and `verify` (`list`).

pub mod account;
pub mod client;
pub mod error;
pub mod hydrate;
pub mod list;
pub mod pacer;
pub mod retry;
pub mod schemas;
pub mod search;

pub use client::{Client, ClientConfig};
pub use error::ApiError;
pub use retry::RetryPolicy;
