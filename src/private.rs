//! Files that hold customers' records (the state file, a jsonl sink) are created 0600.
//! One that already exists is used as it is, but a mode that lets others read it is
//! said once, with the command that fixes it: changing a user's file unasked could
//! break whoever reads it on purpose.

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// The files already warned about in this process.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Warns (once per process and file) when the file at `path`, of metadata `meta`, can
/// be read or written by users other than its owner.
pub fn warn_if_shared(meta: &Metadata, path: &Path) {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    let name = path.display().to_string();
    if WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.clone())
    {
        tracing::warn!(
            "{name} holds HubSpot records and has mode {mode:o}, so other users can read it; \
             `chmod 600 {name}` makes it private"
        );
    }
}
