//! The fence: a Postgres state refuses to record a sync's progress while another
//! process holds the sync's lock. A run whose lock session ended (a server restart, an
//! administrator) stops at its next page (`lock.rs`); should another run take the lock
//! before then, the page in hand cannot be recorded over that run's work.

use anyhow::Result;
use tokio_postgres::Transaction;

use crate::state::SyncId;

/// Another process holds the lock of the sync this run is recording. Exits 75.
#[derive(Debug, thiserror::Error)]
#[error(
    "lost the lock of {object} to {destination} (holder now: {holder}); this run's last page \
     is not recorded, and the next run goes on from the checkpoint"
)]
pub struct LockLost {
    object: String,
    destination: String,
    holder: String,
}

/// Fails with [`LockLost`] when this process lost the lock of `sync` (its session
/// ended) or a session of another process holds it.
/// One look at `pg_locks` for the sync's key, leaving out this process's own lock
/// sessions (a fraction of a millisecond; who the other holder is is asked only then).
pub async fn fence(tx: &Transaction<'_>, sync: SyncId) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT portal_id, object, destination FROM martech_sync.syncs WHERE id = $1",
            &[&sync.0],
        )
        .await?;
    let (portal, object, destination): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    let id = crate::lock::advisory_id(u64::try_from(portal).ok(), &object, &destination);
    if crate::lock::lost(id) {
        return Err(LockLost {
            object,
            destination,
            holder: "none: this run's lock session ended".to_owned(),
        }
        .into());
    }
    let (high, low) = crate::lock::lock_bits(id);
    let other: Option<i32> = tx
        .query_opt(
            "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND classid = $1 AND objid = $2 AND NOT (pid = ANY($3))
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             LIMIT 1",
            &[&high, &low, &crate::lock::own_sessions()],
        )
        .await?
        .map(|r| r.get(0));
    let Some(other) = other else {
        return Ok(());
    };
    let holder: Option<String> = tx
        .query_opt(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&other],
        )
        .await?
        .and_then(|r| r.get(0));
    Err(LockLost {
        object,
        destination,
        holder: holder.map_or_else(
            || "holder unknown".to_owned(),
            |name| name.trim_start_matches("martech-sync ").to_owned(),
        ),
    }
    .into())
}
