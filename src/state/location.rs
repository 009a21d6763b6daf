//! Where the state lives (`--db`): a SQLite file (the default, zero setup) or a Postgres
//! database that many processes on many machines share.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::postgres::PgUrl;

/// A `--db` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Postgres(Box<PgUrl>),
}

impl Location {
    /// The state file, for a SQLite state.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}
