//! `syncs`: one row per (object, destination) with its cursors, the last deletion sweep
//! and the properties the destination was given; and the `--all-properties` name cache.

use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::windows;
use crate::destination::{Destination, UNASSIGNED};
use crate::object::ObjectType;
use crate::properties::PropertySet;
use crate::state::{Pass, Sync, SyncId, Unassigned};
use crate::timestamp::Millis;

const COLUMNS: &str = "id, object, destination, sink, cursor_ms, recheck_ms, swept_ms, properties";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Sync> {
    let object: String = r.get(1)?;
    let properties: Option<String> = r.get(7)?;
    Ok(Sync {
        id: SyncId(r.get(0)?),
        // Names were checked on the way in; an unknown one reads as itself.
        object: object
            .parse()
            .unwrap_or_else(|_| ObjectType::unchecked(&object)),
        destination: Destination::named(r.get::<_, String>(2)?, r.get::<_, String>(3)?),
        cursor: r.get::<_, Option<i64>>(4)?.map(Millis),
        recheck: r.get::<_, Option<i64>>(5)?.map(Millis),
        swept: r.get::<_, Option<i64>>(6)?.map(Millis),
        properties: properties.as_deref().and_then(PropertySet::from_stored),
        portal: None,
    })
}

fn find(conn: &Connection, object: &ObjectType, key: &str) -> Result<Option<Sync>> {
    let sql = format!("SELECT {COLUMNS} FROM syncs WHERE object = ?1 AND destination = ?2");
    Ok(conn
        .query_row(&sql, params![object.as_str(), key], from_row)
        .optional()?)
}

/// The sync of `object` to `destination`, created (or adopted from `(unassigned)`).
pub fn sync(
    tx: &Transaction<'_>,
    object: &ObjectType,
    destination: &Destination,
    unassigned: Unassigned,
) -> Result<Sync> {
    if let Some(found) = find(tx, object, destination.key())? {
        if !destination.sink().is_empty() && found.destination.sink() != destination.sink() {
            tracing::info!(%object, %destination, was = found.destination.sink(), now = destination.sink(),
                "the destination now delivers to another sink");
            tx.execute(
                "UPDATE syncs SET sink = ?2 WHERE id = ?1",
                params![found.id.0, destination.sink()],
            )?;
        }
        return Ok(found);
    }
    let adopted = match unassigned {
        Unassigned::Claim => tx.execute(
            "UPDATE syncs SET destination = ?3, sink = ?4 WHERE object = ?1 AND destination = ?2",
            params![
                object.as_str(),
                UNASSIGNED,
                destination.key(),
                destination.sink()
            ],
        )?,
        Unassigned::Leave => 0,
    };
    if adopted > 0 {
        tracing::info!(%object, %destination,
            "this state file predates destinations: its state of {object} now belongs to {destination}");
    } else {
        tx.execute(
            "INSERT INTO syncs (object, destination, sink, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                object.as_str(),
                destination.key(),
                destination.sink(),
                Millis::now().0
            ],
        )?;
    }
    find(tx, object, destination.key())?.context("the sync row just written is gone")
}

/// Every sync (of `object`), by object and destination.
pub fn all(conn: &Connection, object: Option<&ObjectType>) -> Result<Vec<Sync>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM syncs WHERE ?1 IS NULL OR object = ?1 ORDER BY object, destination"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([object.map(ObjectType::as_str)], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_properties(tx: &Transaction<'_>, sync: SyncId, properties: &PropertySet) -> Result<()> {
    tx.execute(
        "UPDATE syncs SET properties = ?2 WHERE id = ?1",
        params![sync.0, properties.to_stored()],
    )?;
    Ok(())
}

pub fn set_cursor(tx: &Transaction<'_>, sync: SyncId, cursor: Millis) -> Result<()> {
    // The trailing cursor never runs ahead of the main one, and a sweep time in the
    // future (a clock that jumped) would hold the next sweep back: both follow.
    tx.execute(
        "UPDATE syncs SET cursor_ms = ?2, recheck_ms = MIN(recheck_ms, ?2),
                          swept_ms = CASE WHEN swept_ms > ?3 THEN NULL ELSE swept_ms END
         WHERE id = ?1",
        params![sync.0, cursor.0, Millis::now().0],
    )?;
    windows::close(tx, sync, Pass::Main)
}

pub fn reset(tx: &Transaction<'_>, sync: SyncId, forget_delivered: bool) -> Result<()> {
    tx.execute(
        "UPDATE syncs SET cursor_ms = NULL, recheck_ms = NULL WHERE id = ?1",
        [sync.0],
    )?;
    for pass in [Pass::Main, Pass::Recheck, Pass::Side] {
        windows::close(tx, sync, pass)?;
    }
    if forget_delivered {
        tx.execute("DELETE FROM ledger WHERE sync = ?1", [sync.0])?;
        tx.execute("UPDATE syncs SET properties = NULL WHERE id = ?1", [sync.0])?;
    }
    Ok(())
}

pub fn set_swept(tx: &Transaction<'_>, sync: SyncId, at: Millis) -> Result<()> {
    tx.execute(
        "UPDATE syncs SET swept_ms = ?2 WHERE id = ?1",
        params![sync.0, at.0],
    )?;
    Ok(())
}

pub fn cached_property_names(
    conn: &Connection,
    object: &ObjectType,
    max_age: Duration,
) -> Result<Option<Vec<String>>> {
    let since = Millis::now().minus(max_age).0;
    let names: Option<String> = conn
        .query_row(
            "SELECT names FROM property_names WHERE object = ?1 AND fetched_ms >= ?2",
            params![object.as_str(), since],
            |r| r.get(0),
        )
        .optional()?;
    names
        .map(|n| serde_json::from_str(&n).context("reading cached property names"))
        .transpose()
}

pub fn cache_property_names(
    tx: &Transaction<'_>,
    object: &ObjectType,
    names: &[String],
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO property_names (object, fetched_ms, names) VALUES (?1, ?2, ?3)",
        params![
            object.as_str(),
            Millis::now().0,
            serde_json::to_string(names)?
        ],
    )?;
    Ok(())
}

/// The portal id cached for `account` (see `Client::account`), in `meta`.
pub fn portal(conn: &Connection, account: &str) -> Result<Option<u64>> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [format!("portal:{account}")],
            |r| r.get(0),
        )
        .optional()?;
    value
        .map(|v| v.parse().context("reading the cached portal id"))
        .transpose()
}

pub fn bind_portal(tx: &Transaction<'_>, target: &str, portal: u64) -> Result<u64> {
    let key = format!("portal-of:{target}");
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        params![key, portal.to_string()],
    )?;
    let bound: String =
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?;
    bound
        .parse()
        .context("reading the portal a sink is bound to")
}

pub fn remember_portal(tx: &Transaction<'_>, account: &str, portal: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![format!("portal:{account}"), portal.to_string()],
    )?;
    Ok(())
}
