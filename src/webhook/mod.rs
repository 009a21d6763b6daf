//! HubSpot webhooks for `serve`: signatures (`signature`), event parsing (`event`), the
//! HTTP receiver that queues them in the state (`receiver`) and the worker that
//! delivers queued events through the sink (`worker`).

pub mod event;
pub mod receiver;
pub mod signature;
pub mod worker;
