//! `syncs`: one row per (portal, object, destination) with its cursors, the last
//! deletion sweep and the properties the destination was given; the `--all-properties`
//! name cache of each portal; and the portal ids cached by token digest (`meta`).

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::{Client, Row, Transaction};

use super::windows;
use crate::destination::Destination;
use crate::object::ObjectType;
use crate::properties::PropertySet;
use crate::state::{Pass, Sync, SyncId};
use crate::timestamp::Millis;

const COLUMNS: &str =
    "id, object, destination, sink, cursor_ms, recheck_ms, swept_ms, properties, portal_id";

fn from_row(r: &Row) -> Sync {
    let object: String = r.get(1);
    let properties: Option<String> = r.get(7);
    Sync {
        id: SyncId(r.get(0)),
        object: object
            .parse()
            .unwrap_or_else(|_| ObjectType::unchecked(&object)),
        destination: Destination::named(r.get::<_, String>(2), r.get::<_, String>(3)),
        cursor: r.get::<_, Option<i64>>(4).map(Millis),
        recheck: r.get::<_, Option<i64>>(5).map(Millis),
        swept: r.get::<_, Option<i64>>(6).map(Millis),
        properties: properties.as_deref().and_then(PropertySet::from_stored),
        portal: u64::try_from(r.get::<_, i64>(8)).ok(),
    }
}

/// The sync of `object` to `destination` in `portal`, created if new.
pub async fn sync(
    tx: &Transaction<'_>,
    portal: i64,
    object: &ObjectType,
    destination: &Destination,
) -> Result<Sync> {
    tx.execute(
        "INSERT INTO martech_sync.syncs (portal_id, object, destination, sink, created_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (portal_id, object, destination) DO NOTHING",
        &[
            &portal,
            &object.as_str(),
            &destination.key(),
            &destination.sink(),
            &Millis::now().0,
        ],
    )
    .await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM martech_sync.syncs
         WHERE portal_id = $1 AND object = $2 AND destination = $3"
    );
    let found = tx
        .query_opt(&sql, &[&portal, &object.as_str(), &destination.key()])
        .await?
        .map(|r| from_row(&r))
        .context("the sync row just written is gone")?;
    if !destination.sink().is_empty() && found.destination.sink() != destination.sink() {
        tracing::info!(%object, %destination, was = found.destination.sink(), now = destination.sink(),
            "the destination now delivers to another sink");
        tx.execute(
            "UPDATE martech_sync.syncs SET sink = $2 WHERE id = $1",
            &[&found.id.0, &destination.sink()],
        )
        .await?;
    }
    Ok(found)
}

/// Every sync (of `object`) of `portal` (of every portal for `None`), by object and
/// destination.
pub async fn all(
    c: &Client,
    portal: Option<i64>,
    object: Option<&ObjectType>,
) -> Result<Vec<Sync>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM martech_sync.syncs
         WHERE ($1::BIGINT IS NULL OR portal_id = $1) AND ($2::TEXT IS NULL OR object = $2)
         ORDER BY portal_id, object, destination"
    );
    let rows = c
        .query(&sql, &[&portal, &object.map(ObjectType::as_str)])
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// The portals that have syncs.
pub async fn portals(c: &Client) -> Result<Vec<u64>> {
    let rows = c
        .query(
            "SELECT DISTINCT portal_id FROM martech_sync.syncs ORDER BY portal_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| u64::try_from(r.get::<_, i64>(0)).ok())
        .collect())
}

pub async fn set_properties(
    tx: &Transaction<'_>,
    sync: SyncId,
    properties: &PropertySet,
) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.syncs SET properties = $2 WHERE id = $1",
        &[&sync.0, &properties.to_stored()],
    )
    .await?;
    Ok(())
}

pub async fn set_cursor(tx: &Transaction<'_>, sync: SyncId, cursor: Millis) -> Result<()> {
    // As in SQLite: the trailing cursor never runs ahead of the main one (and stays
    // unset when unset), and a sweep time in the future is forgotten.
    tx.execute(
        "UPDATE martech_sync.syncs
         SET cursor_ms = $2,
             recheck_ms = CASE WHEN recheck_ms IS NULL THEN NULL ELSE LEAST(recheck_ms, $2) END,
             swept_ms = CASE WHEN swept_ms > $3 THEN NULL ELSE swept_ms END
         WHERE id = $1",
        &[&sync.0, &cursor.0, &Millis::now().0],
    )
    .await?;
    windows::close(tx, sync, Pass::Main).await
}

pub async fn reset(tx: &Transaction<'_>, sync: SyncId, forget_delivered: bool) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.syncs SET cursor_ms = NULL, recheck_ms = NULL WHERE id = $1",
        &[&sync.0],
    )
    .await?;
    for pass in [Pass::Main, Pass::Recheck, Pass::Side] {
        windows::close(tx, sync, pass).await?;
    }
    if forget_delivered {
        tx.execute(
            "DELETE FROM martech_sync.ledger WHERE sync = $1",
            &[&sync.0],
        )
        .await?;
        tx.execute(
            "UPDATE martech_sync.syncs SET properties = NULL WHERE id = $1",
            &[&sync.0],
        )
        .await?;
    }
    Ok(())
}

pub async fn set_swept(tx: &Transaction<'_>, sync: SyncId, at: Millis) -> Result<()> {
    tx.execute(
        "UPDATE martech_sync.syncs SET swept_ms = $2 WHERE id = $1",
        &[&sync.0, &at.0],
    )
    .await?;
    Ok(())
}

pub async fn cached_property_names(
    c: &Client,
    portal: i64,
    object: &ObjectType,
    max_age: Duration,
) -> Result<Option<Vec<String>>> {
    let since = Millis::now().minus(max_age).0;
    let names: Option<String> = c
        .query_opt(
            "SELECT names FROM martech_sync.property_names
             WHERE portal_id = $1 AND object = $2 AND fetched_ms >= $3",
            &[&portal, &object.as_str(), &since],
        )
        .await?
        .map(|r| r.get(0));
    names
        .map(|n| serde_json::from_str(&n).context("reading cached property names"))
        .transpose()
}

pub async fn cache_property_names(
    tx: &Transaction<'_>,
    portal: i64,
    object: &ObjectType,
    names: &[String],
) -> Result<()> {
    tx.execute(
        "INSERT INTO martech_sync.property_names (portal_id, object, fetched_ms, names)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (portal_id, object) DO UPDATE
         SET fetched_ms = excluded.fetched_ms, names = excluded.names",
        &[
            &portal,
            &object.as_str(),
            &Millis::now().0,
            &serde_json::to_string(names)?,
        ],
    )
    .await?;
    Ok(())
}

/// The portal id cached for `account` (see `Client::account`).
pub async fn portal(c: &Client, account: &str) -> Result<Option<u64>> {
    let value: Option<String> = c
        .query_opt(
            "SELECT value FROM martech_sync.meta WHERE key = $1",
            &[&format!("portal:{account}")],
        )
        .await?
        .map(|r| r.get(0));
    value
        .map(|v| v.parse().context("reading the cached portal id"))
        .transpose()
}

pub async fn remember_portal(tx: &Transaction<'_>, account: &str, portal: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO martech_sync.meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&format!("portal:{account}"), &portal.to_string()],
    )
    .await?;
    Ok(())
}
