//! The one integration-test binary: the real `martech-sync` binary against the fake
//! HubSpot on loopback.

mod support;

mod attack;

mod cli;
mod contained;
mod copy;
mod engine;
mod faults;
mod house;
mod objects;
mod postgres;
mod readme;
mod shared_state;
mod snapshots;
mod terminal;
mod webhooks;
