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
    "lost the lock of {object} to {destination}: another martech-sync run ({holder}) holds it \
     now; this run's last page is not recorded, and that run goes on from the checkpoint"
)]
pub struct LockLost {
    object: String,
    destination: String,
    holder: String,
}

/// Fails with [`LockLost`] when a session of another process holds the lock of `sync`.
pub async fn fence(tx: &Transaction<'_>, sync: SyncId) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT portal_id, object, destination FROM martech_sync.syncs WHERE id = $1",
            &[&sync.0],
        )
        .await?;
    let (portal, object, destination): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    let id = crate::lock::advisory_id(u64::try_from(portal).ok(), &object, &destination);
    let (high, low) = crate::lock::lock_bits(id);
    let holder: Option<String> = tx
        .query_opt(
            "SELECT COALESCE(a.application_name, 'holder unknown')
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid = $1 AND l.objid = $2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND a.application_name IS DISTINCT FROM $3
             LIMIT 1",
            &[&high, &low, &crate::lock::session_name()],
        )
        .await?
        .map(|r| r.get(0));
    match holder {
        Some(holder) => Err(LockLost {
            object,
            destination,
            holder: holder.trim_start_matches("martech-sync ").to_owned(),
        }
        .into()),
        None => Ok(()),
    }
}
