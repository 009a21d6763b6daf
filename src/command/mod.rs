//! One module per subcommand: each takes its validated config and does the effects.

pub mod cursor;
pub mod dead_letters;
pub mod demo;
pub mod generate;
pub mod mock;
pub mod poll;
pub mod serve;
pub mod status;
pub mod verify;
