//! HubSpot webhooks. So far the signature check (`signature`), with HubSpot's test
//! vectors; the receiver (`serve`) builds on it.

pub mod signature;
