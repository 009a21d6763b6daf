//! HubSpot webhooks for `serve`: signatures (`signature`), event parsing (`event`), the
//! HTTP server with its limits (`server`), the receiver that queues events in the state
//! (`receiver`), what `/healthz` reports (`health`) and the worker that delivers queued
//! events through the sink (`worker`).

pub mod event;
pub mod health;
pub mod receiver;
pub mod server;
pub mod signature;
pub mod worker;
