//! One runner per (state, object, destination).
//!
//! For a state file: an OS file lock in a directory beside it (`state.db.locks/`, so lock
//! files stay out of the user's way). The kernel releases it when the process dies,
//! `kill -9` included, so a crashed run never leaves a stale lock behind. The holder
//! writes its pid into the file for the message a second run prints. Files and
//! directory are private to the user.
//!
//! For a Postgres state: a session advisory lock (`pg_try_advisory_lock`) on a
//! connection of its own, keyed by (portal, object, destination), so that processes on
//! different machines exclude each other. The server frees it when the session ends: at
//! once when the holder's process dies (its socket closes), and within about 10 s when
//! its machine does (the session's TCP keepalives, see `state::postgres::connect`).
//! A holder whose session ends under it (the server restarted, an administrator ended
//! it) has lost the lock: it says so and stops its run at the next page boundary.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::destination::Destination;
use crate::object::ObjectType;
use crate::postgres::PgUrl;
use crate::shutdown::Shutdown;
use crate::state::Location;

/// A session holding an advisory lock, and the task that ends with its connection.
type Session = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

/// Another process holds the lock; the run exits 75 (`EX_TEMPFAIL`).
#[derive(Debug, thiserror::Error)]
#[error(
    "another martech-sync run ({holder}) is syncing {object} to {destination} with {path}; exiting"
)]
pub struct LockHeld {
    object: String,
    destination: String,
    holder: String,
    path: String,
}

/// Another `serve` delivers webhooks from this state file; exits 75. One worker per
/// state file, or two would hand the same events to the sink twice.
#[derive(Debug, thiserror::Error)]
#[error("another martech-sync serve ({holder}) is delivering webhooks from {path}; exiting")]
pub struct ServeHeld {
    holder: String,
    path: String,
}

/// The directory beside the state file `db` that holds its locks cannot be made: the
/// state file's own directory is missing or not writable. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the state file {path}: {why}")]
pub struct NoStateDir {
    pub path: String,
    pub why: String,
}

/// A held lock of one sync; dropping it releases it.
pub struct ObjectLock {
    _held: Held,
}

/// What holds a lock: the open lock file, or the Postgres session holding the
/// advisory lock (dropping the client ends the session), with the flag that tells its
/// watcher the end is ours.
#[expect(dead_code, reason = "held only to be dropped")]
enum Held {
    File(File),
    // Fields drop in order: the flag is set before the client ends the session.
    Session(Released, tokio_postgres::Client),
}

/// Set when a session lock is let go on purpose; the session's backend pid leaves
/// [`own_sessions`] with it.
struct Released(Arc<AtomicBool>, i32);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        let mut own = OWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = own.iter().position(|pid| *pid == self.1) {
            own.swap_remove(at);
        }
    }
}

/// The backend pids of this process's lock sessions.
static OWN: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// The advisory lock ids whose session ended while this process held them.
static LOST: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

/// Whether this process lost the lock `id` (its session ended under it) and has not
/// taken it again since.
pub fn lost(id: i64) -> bool {
    LOST.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&id)
}

/// Whether this process lost any lock: it then exits non-zero, whatever its command
/// made of the stop (see `lib.rs`).
pub fn lost_any() -> bool {
    !LOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

/// This process lost the lock of a sync (its Postgres session ended under it) and
/// stopped. Exits 1: the next run resumes.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped: the lock of a sync was lost (its Postgres session ended: a server restart, or an \
     administrator); the next run resumes where this one stopped"
)]
pub struct LockSessionEnded;

/// The server's backend pids of the sessions holding this process's advisory locks: a
/// lock held by any other session is another process's (see `state::postgres::fence`).
pub fn own_sessions() -> Vec<i32> {
    OWN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl std::fmt::Debug for ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectLock")
    }
}

/// The lock of the one `serve` of a state file; none for a Postgres state, whose queue
/// many receivers and workers share.
#[derive(Debug)]
pub struct ServeLock {
    _file: Option<File>,
}

/// Takes the lock of `object` to `destination` in the state `db` (of `portal`, for a
/// state that keeps many), without waiting. A Postgres lock whose session ends while
/// it is held requests `stop` (when given): the run no longer excludes others.
///
/// # Errors
/// [`LockHeld`] when another process has it; as [`ObjectLock::acquire`] otherwise, or
/// when Postgres cannot be reached.
pub async fn lock(
    db: &Location,
    portal: Option<u64>,
    object: &ObjectType,
    destination: &Destination,
    stop: Option<&Shutdown>,
) -> Result<ObjectLock> {
    match db {
        Location::File(path) => ObjectLock::acquire(path, object, destination),
        Location::Postgres(url) => {
            let id = advisory_id(portal, object.as_str(), destination.key());
            match advisory(url, id).await? {
                Ok((session, ended)) => {
                    LOST.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .retain(|lost| *lost != id);
                    let backend: i32 = session
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await?
                        .get(0);
                    OWN.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(backend);
                    let released = Arc::new(AtomicBool::new(false));
                    let watch = Arc::clone(&released);
                    let stop = stop.cloned();
                    let what = format!("{object} to {destination}");
                    tokio::spawn(async move {
                        let _ = ended.await;
                        if !watch.load(Ordering::SeqCst) {
                            LOST.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(id);
                            tracing::error!(
                                "lost the lock of {what}: its Postgres session ended (the server \
                                 restarted, or the session was ended); stopping at the next page"
                            );
                            if let Some(stop) = stop {
                                stop.request();
                            }
                        }
                    });
                    Ok(ObjectLock {
                        _held: Held::Session(Released(released, backend), session),
                    })
                }
                Err(holder) => Err(LockHeld {
                    object: object.to_string(),
                    destination: destination.to_string(),
                    holder,
                    path: match portal {
                        Some(portal) => format!("portal {portal} in {url}"),
                        None => url.to_string(),
                    },
                }
                .into()),
            }
        }
    }
}

/// Takes the serve lock of the state `db`: one `serve` per state file; any number on a
/// Postgres state.
///
/// # Errors
/// As [`ServeLock::acquire`].
pub fn serve_lock(db: &Location) -> Result<ServeLock> {
    match db {
        Location::File(path) => ServeLock::acquire(path),
        Location::Postgres(_) => Ok(ServeLock { _file: None }),
    }
}

/// The advisory lock id of the sync of `object` to `destination` (its key) in `portal`.
pub fn advisory_id(portal: Option<u64>, object: &str, destination: &str) -> i64 {
    let key = format!(
        "martech-sync lock|{}|{object}|{destination}",
        portal.unwrap_or(0)
    );
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(id)
}

/// The application name of this process's lock sessions: how a second run names the
/// holder, and how a commit tells a lock of its own process from another's.
pub fn session_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("martech-sync pid {} on {}", std::process::id(), host.trim())
}

/// `pg_locks` shows a bigint advisory key as its high and low 32 bits (objsubid 1).
pub fn lock_bits(id: i64) -> (u32, u32) {
    let bits = id.cast_unsigned();
    (
        u32::try_from(bits >> 32).unwrap_or(0),
        u32::try_from(bits & 0xffff_ffff).unwrap_or(0),
    )
}

/// Takes the session advisory lock `id` on a connection of its own: the session
/// holding it, or who holds it.
async fn advisory(url: &PgUrl, id: i64) -> Result<Result<Session, String>> {
    let (client, ended) = url
        .connect_watched()
        .await
        .with_context(|| format!("connecting to {url} for a lock"))?;
    let me = session_name();
    // Keepalives as the state's sessions have them: a dead machine's lock frees itself
    // within about 10 s. The application name tells a second run who holds it.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 4; SET tcp_keepalives_interval = 2; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
    client
        .execute("SELECT set_config('application_name', $1, false)", &[&me])
        .await?;
    let taken: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&id])
        .await?
        .get(0);
    if taken {
        return Ok(Ok((client, ended)));
    }
    let (high, low) = lock_bits(id);
    let holder: Option<String> = client
        .query_opt(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid = $1 AND l.objid = $2 AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&high, &low],
        )
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .filter(|name| name.starts_with("martech-sync pid "));
    Ok(Err(holder.map_or_else(
        || "holder unknown".to_owned(),
        |name| name.trim_start_matches("martech-sync ").to_owned(),
    )))
}

/// The directory beside the state file `db` that holds its locks.
fn locks_dir(db: &Path) -> PathBuf {
    let mut dir = db.file_name().unwrap_or_default().to_os_string();
    dir.push(".locks");
    db.with_file_name(dir)
}

/// The lock file of `object` to `destination` for the state file `db`.
pub fn lock_path(db: &Path, object: &ObjectType, destination: &Destination) -> PathBuf {
    let digest = Sha256::digest(destination.key().as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    locks_dir(db).join(format!("{object}-{tag}.lock"))
}

impl ObjectLock {
    /// Takes the lock of `object` to `destination` for the state file `db`, without
    /// waiting.
    ///
    /// # Errors
    /// [`LockHeld`] when another process has it; [`NoStateDir`] when the state file's
    /// directory does not exist; I/O errors otherwise.
    pub fn acquire(
        db: &Path,
        object: &ObjectType,
        destination: &Destination,
    ) -> Result<ObjectLock> {
        match take(db, &lock_path(db, object, destination))? {
            Ok(file) => Ok(ObjectLock {
                _held: Held::File(file),
            }),
            Err(holder) => Err(LockHeld {
                object: object.to_string(),
                destination: destination.to_string(),
                holder,
                path: db.display().to_string(),
            }
            .into()),
        }
    }
}

impl ServeLock {
    /// Takes the serve lock of the state file `db`, without waiting.
    ///
    /// # Errors
    /// [`ServeHeld`] when another process has it; as [`ObjectLock::acquire`] otherwise.
    pub fn acquire(db: &Path) -> Result<ServeLock> {
        match take(db, &locks_dir(db).join("serve.lock"))? {
            Ok(file) => Ok(ServeLock { _file: Some(file) }),
            Err(holder) => Err(ServeHeld {
                holder,
                path: db.display().to_string(),
            }
            .into()),
        }
    }
}

/// Takes the lock file `path` without waiting: the open file, or who holds it.
fn take(db: &Path, path: &Path) -> Result<Result<File, String>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        let parent = db.parent().filter(|p| !p.as_os_str().is_empty());
        let why = match parent {
            Some(p) if !p.exists() => format!("its directory {} does not exist", p.display()),
            _ => format!("cannot create {}: {e}", dir.display()),
        };
        return Err(NoStateDir {
            path: db.display().to_string(),
            why,
        }
        .into());
    }
    trusted_dir(dir)?;
    // Never through a symlink: whoever could plant one would have us overwrite its
    // target with a pid.
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Ok(Err(match pid.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            }));
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(Ok(file))
}

/// Refuses a lock directory that someone else could swap files in: one that is a
/// symlink, is not owned by this user, or others may write to.
fn trusted_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading lock directory {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    let mode = meta.permissions().mode();
    let why = if !meta.is_dir() {
        Some("it is not a directory".to_owned())
    } else if meta.uid() != me {
        Some(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "others may write to it (mode {:o}); `chmod 700 {}` fixes that",
            mode & 0o777,
            dir.display()
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(UntrustedLockDir {
            dir: dir.display().to_string(),
            why,
        }
        .into()),
        None => Ok(()),
    }
}

/// A lock directory someone else could swap files in. Exits 78.
#[derive(Debug, thiserror::Error)]
#[error("refusing the lock directory {dir}: {why}")]
pub struct UntrustedLockDir {
    pub dir: String,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let object: ObjectType = "deals".parse().unwrap();
        let sqlite = Destination::named("sqlite", "sqlite");
        let held = ObjectLock::acquire(&db, &object, &sqlite).unwrap();
        let err = ObjectLock::acquire(&db, &object, &sqlite).unwrap_err();
        let held_err = err.downcast_ref::<LockHeld>().expect("LockHeld");
        assert!(
            held_err
                .to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
        let other: ObjectType = "contacts".parse().unwrap();
        ObjectLock::acquire(&db, &other, &sqlite).expect("other objects are independent");
        let jsonl = Destination::named("jsonl:/x", "jsonl:/x");
        ObjectLock::acquire(&db, &object, &jsonl).expect("other destinations are independent");
        drop(held);
        ObjectLock::acquire(&db, &object, &sqlite).expect("released on drop");
        let mode = std::fs::metadata(lock_path(&db, &object, &sqlite))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_lock_directory_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let locks = locks_dir(&db);
        std::fs::create_dir(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ServeLock::acquire(&db).unwrap_err();
        let refused = err.downcast_ref::<UntrustedLockDir>().expect("refused");
        assert!(refused.why.contains("others may write"), "{refused}");
    }

    #[test]
    fn a_lock_file_planted_as_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let victim = dir.path().join("victim.conf");
        std::fs::write(&victim, "keep me").unwrap();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(locks_dir(&db))
            .unwrap();
        std::os::unix::fs::symlink(&victim, locks_dir(&db).join("serve.lock")).unwrap();
        assert!(ServeLock::acquire(&db).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }
}
