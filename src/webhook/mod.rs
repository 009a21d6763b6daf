//! HubSpot webhooks for `serve`: signatures (`signature`), event parsing (`event`), the
//! queue in the state file (`queue`), the HTTP receiver (`receiver`) and the worker that
//! delivers queued events through the sink (`worker`).

pub mod event;
pub mod queue;
pub mod receiver;
pub mod signature;
pub mod worker;
