//! The jsonl sink: one record a line to a file (appended) or stdout. A page is confirmed
//! once its lines are written, flushed and, for a file, fsynced. A write cut short (a
//! full disk, `kill -9` mid-write) never leaves half a line for the next page to glue
//! onto: a failed write is truncated away, and opening cuts a partial last line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};

use super::{JsonlTarget, ndjson};
use crate::object::ObjectType;
use crate::record::Record;

/// Held while a page is written to a file, so pages of objects that share a file never
/// interleave.
static WRITING: Mutex<()> = Mutex::new(());

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
            JsonlTarget::File(path) => {
                // Records hold customers' personal data: private to the user.
                let mut file = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| super::SinkUnusable {
                        sink: format!("jsonl:{}", path.display()),
                        why: e.to_string(),
                    })?;
                if let Ok(meta) = file.metadata() {
                    crate::private::warn_if_shared(&meta, path);
                }
                let cut = cut_partial_line(&mut file)
                    .with_context(|| format!("repairing the end of {}", path.display()))?;
                if cut > 0 {
                    tracing::warn!(file = %path.display(), bytes = cut,
                        "cut a partial last line left by an interrupted write; that page is delivered again");
                }
                JsonlSink {
                    out: Out::File(file),
                    name: path.display().to_string(),
                }
            }
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
                // The objects of one run may share a file: one page at a time, whole.
                let _one = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
                let before = file.metadata()?.len();
                let written = file.write_all(&bytes).and_then(|()| file.sync_data());
                if let Err(e) = written {
                    // Best effort: the next open cuts a partial line anyway.
                    let _ = file.set_len(before);
                    return Err(e).with_context(|| format!("writing records to {name}"));
                }
            }
        }
        Ok(())
    }
}

/// Truncates `file` after its last newline; returns how many bytes were cut.
fn cut_partial_line(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &[u8]); 4] = [
            (b"", b""),
            (b"{\"id\":\"1\"}\n", b"{\"id\":\"1\"}\n"),
            (b"{\"id\":\"1\"}\n{\"id\":\"2", b"{\"id\":\"1\"}\n"),
            (b"{\"id\":", b""),
        ];
        for (before, after) in cases {
            let path = dir.path().join("out.jsonl");
            std::fs::write(&path, before).unwrap();
            drop(JsonlSink::open(&JsonlTarget::File(path.clone())).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), after);
        }
    }
}
