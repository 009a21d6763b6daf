//! Talking to HubSpot: the HTTP client with pacing and retries (`client`), the typed
//! error the retry loop branches on (`error`), the backoff schedule (`retry`) and keyed
//! CRM search (`search`).

pub mod client;
pub mod error;
pub mod retry;
pub mod search;

pub use client::{Client, ClientConfig};
pub use error::ApiError;
pub use retry::RetryPolicy;
