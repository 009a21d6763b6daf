//! The jsonl sink: one record a line to a file (appended) or stdout. A page is confirmed
//! once its lines are written, flushed and, for a file, fsynced.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};

use anyhow::{Context, Result};

use super::{JsonlTarget, ndjson};
use crate::object::ObjectType;
use crate::record::Record;

/// An open jsonl destination.
pub struct JsonlSink {
    out: Out,
    name: String,
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl JsonlSink {
    /// Opens `target`, creating a file if needed and appending to it.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(target: &JsonlTarget) -> Result<JsonlSink> {
        Ok(match target {
            JsonlTarget::Stdout => JsonlSink {
                out: Out::Stdout(io::stdout()),
                name: "stdout".into(),
            },
            JsonlTarget::File(path) => JsonlSink {
                out: Out::File(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| {
                            format!("opening {} for the jsonl sink", path.display())
                        })?,
                ),
                name: path.display().to_string(),
            },
        })
    }

    /// Writes the page and makes it durable.
    ///
    /// # Errors
    /// When writing, flushing or syncing fails.
    pub fn deliver(&mut self, object: &ObjectType, records: &[&Record]) -> Result<()> {
        let bytes = ndjson(object, records);
        let name = &self.name;
        match &mut self.out {
            Out::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(&bytes)
                    .and_then(|()| lock.flush())
                    .with_context(|| format!("writing records to {name}"))?;
            }
            Out::File(file) => {
                file.write_all(&bytes)
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("writing records to {name}"))?;
            }
        }
        Ok(())
    }
}
