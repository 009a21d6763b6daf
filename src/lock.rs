//! One runner per (state file, object): an OS file lock next to the state file. The
//! kernel releases it when the process dies, `kill -9` included, so a crashed run never
//! leaves a stale lock behind. The holder writes its pid into the file for the message
//! a second run prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::object::ObjectType;

/// Another process holds the lock; the run exits 75 (`EX_TEMPFAIL`).
#[derive(Debug, thiserror::Error)]
#[error("another martech-sync run ({holder}) is syncing {object} with {path}; exiting")]
pub struct LockHeld {
    object: String,
    holder: String,
    path: String,
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct ObjectLock {
    _file: File,
}

/// The lock file of `object` beside the state file `db`.
pub fn lock_path(db: &Path, object: &ObjectType) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{object}.lock"));
    db.with_file_name(name)
}

impl ObjectLock {
    /// Takes the lock of `object` for the state file `db`, without waiting.
    ///
    /// # Errors
    /// [`LockHeld`] when another process has it; I/O errors otherwise.
    pub fn acquire(db: &Path, object: &ObjectType) -> Result<ObjectLock> {
        let path = lock_path(db, object);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockHeld {
                    object: object.to_string(),
                    holder,
                    path: db.display().to_string(),
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(ObjectLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let object: ObjectType = "deals".parse().unwrap();
        let held = ObjectLock::acquire(&db, &object).unwrap();
        let err = ObjectLock::acquire(&db, &object).unwrap_err();
        let held_err = err.downcast_ref::<LockHeld>().expect("LockHeld");
        assert!(
            held_err
                .to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
        let other: ObjectType = "contacts".parse().unwrap();
        ObjectLock::acquire(&db, &other).expect("other objects are independent");
        drop(held);
        ObjectLock::acquire(&db, &object).expect("released on drop");
    }
}
