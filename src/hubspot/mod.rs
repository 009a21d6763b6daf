//! Talking to HubSpot: the HTTP client with pacing and retries (`client`), the typed
//! error the retry loop branches on (`error`), the backoff schedule (`retry`), keyed
//! CRM search (`search`) and `--all-properties` hydration by batch read (`hydrate`).

pub mod client;
pub mod error;
pub mod hydrate;
pub mod retry;
pub mod search;

pub use client::{Client, ClientConfig};
pub use error::ApiError;
pub use retry::RetryPolicy;
