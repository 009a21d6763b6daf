//! One module per subcommand: each takes its validated config and does the effects.

pub mod cursor;
pub mod demo;
pub mod generate;
pub mod mock;
pub mod poll;
pub mod status;
