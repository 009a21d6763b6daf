//! `ledger` and `records`: what each destination holds of each record (its newest
//! version or tombstone), and the default sink's rows, written in the same transaction.
//! A page is one statement per table (column arrays through `unnest`).

use std::collections::HashMap;

use anyhow::Result;
use tokio_postgres::{Client, Transaction};

use super::{to_id, to_sql};
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::state::{Held, LedgerEntry, RecordsTable, SyncId};
use crate::timestamp::Millis;

pub async fn held(c: &Client, sync: SyncId, ids: &[RecordId]) -> Result<HashMap<RecordId, Held>> {
    let ids: Vec<i64> = ids.iter().copied().map(to_sql).collect();
    let rows = c
        .query(
            "SELECT id, modified_ms, archived FROM martech_sync.ledger
             WHERE sync = $1 AND id = ANY($2)",
            &[&sync.0, &ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                to_id(r.get(0)),
                Held {
                    modified: Millis(r.get(1)),
                    archived: r.get(2),
                },
            )
        })
        .collect())
}

/// Each record once, its newest version (a tombstone wins a tie): one statement may
/// not update a row twice.
fn newest<'a>(delivered: &[&'a Record]) -> Vec<&'a Record> {
    let mut by_id: HashMap<RecordId, &Record> = HashMap::with_capacity(delivered.len());
    for r in delivered {
        let entry = by_id.entry(r.id).or_insert(r);
        if (r.modified, r.archived) > (entry.modified, entry.archived) {
            *entry = r;
        }
    }
    let mut out: Vec<&Record> = by_id.into_values().collect();
    out.sort_by_key(|r| r.id);
    out
}

/// Records `delivered` in the ledger (never going back to an older version; a
/// tombstone wins a tie) and, for the default sink, in `records`.
pub async fn remember(
    tx: &Transaction<'_>,
    sync: SyncId,
    delivered: &[&Record],
    records: RecordsTable,
) -> Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    let delivered = newest(delivered);
    let ids: Vec<i64> = delivered.iter().map(|r| to_sql(r.id)).collect();
    let modified: Vec<i64> = delivered.iter().map(|r| r.modified.0).collect();
    let archived: Vec<bool> = delivered.iter().map(|r| r.archived).collect();
    tx.execute(
        "INSERT INTO martech_sync.ledger (sync, id, modified_ms, archived)
         SELECT $1, u.id, u.modified_ms, u.archived
         FROM unnest($2::BIGINT[], $3::BIGINT[], $4::BOOLEAN[]) AS u(id, modified_ms, archived)
         ON CONFLICT (sync, id) DO UPDATE SET modified_ms = excluded.modified_ms,
                                              archived = excluded.archived
         WHERE (excluded.modified_ms, excluded.archived) > (ledger.modified_ms, ledger.archived)",
        &[&sync.0, &ids, &modified, &archived],
    )
    .await?;
    if records == RecordsTable::Write {
        upsert_records(tx, sync, &delivered).await?;
    }
    Ok(())
}

async fn upsert_records(tx: &Transaction<'_>, sync: SyncId, delivered: &[&Record]) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT portal_id, object FROM martech_sync.syncs WHERE id = $1",
            &[&sync.0],
        )
        .await?;
    let (portal, object): (i64, String) = (row.get(0), row.get(1));
    let (gone, live): (Vec<&Record>, Vec<&Record>) = delivered.iter().partition(|r| r.archived);
    if !live.is_empty() {
        // Never replace a newer version with an older one; an equal version is written
        // again (a refresh brings the same version with more properties).
        let properties = live
            .iter()
            .map(|r| serde_json::to_string(&r.properties))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute(
            "INSERT INTO martech_sync.records (portal_id, object, id, modified_ms, created_at,
                                               updated_at, archived, properties)
             SELECT $1, $2, u.id, u.m, u.c, u.up, FALSE, u.p
             FROM unnest($3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::TEXT[])
                  AS u(id, m, c, up, p)
             ON CONFLICT (portal_id, object, id) DO UPDATE SET
                 modified_ms = excluded.modified_ms, created_at = excluded.created_at,
                 updated_at = excluded.updated_at, archived = FALSE,
                 properties = excluded.properties, archived_at = NULL, merged_into = NULL
             WHERE (excluded.modified_ms, FALSE) >= (records.modified_ms, records.archived)",
            &[
                &portal,
                &object,
                &live.iter().map(|r| to_sql(r.id)).collect::<Vec<_>>(),
                &live.iter().map(|r| r.modified.0).collect::<Vec<_>>(),
                &live
                    .iter()
                    .map(|r| r.created_at.as_str())
                    .collect::<Vec<_>>(),
                &live
                    .iter()
                    .map(|r| r.updated_at.as_str())
                    .collect::<Vec<_>>(),
                &properties,
            ],
        )
        .await?;
    }
    if !gone.is_empty() {
        // A tombstone keeps the row and its last properties, marked archived.
        tx.execute(
            "INSERT INTO martech_sync.records (portal_id, object, id, modified_ms, created_at,
                                               updated_at, archived, properties, archived_at,
                                               merged_into)
             SELECT $1, $2, u.id, u.m, '', u.up, TRUE, '{}', u.aa, u.mi
             FROM unnest($3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[])
                  AS u(id, m, up, aa, mi)
             ON CONFLICT (portal_id, object, id) DO UPDATE SET
                 modified_ms = excluded.modified_ms, updated_at = excluded.updated_at,
                 archived = TRUE, archived_at = excluded.archived_at,
                 merged_into = excluded.merged_into
             WHERE (excluded.modified_ms, TRUE) >= (records.modified_ms, records.archived)",
            &[
                &portal,
                &object,
                &gone.iter().map(|r| to_sql(r.id)).collect::<Vec<_>>(),
                &gone.iter().map(|r| r.modified.0).collect::<Vec<_>>(),
                &gone
                    .iter()
                    .map(|r| r.updated_at.as_str())
                    .collect::<Vec<_>>(),
                &gone
                    .iter()
                    .map(|r| r.archived_at.as_deref().unwrap_or(&r.updated_at))
                    .collect::<Vec<_>>(),
                &gone
                    .iter()
                    .map(|r| r.merged_into.map(to_sql))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    Ok(())
}

pub async fn page(
    c: &Client,
    sync: SyncId,
    after: Option<RecordId>,
    limit: usize,
) -> Result<Vec<LedgerEntry>> {
    let rows = c
        .query(
            "SELECT id, modified_ms, archived FROM martech_sync.ledger
             WHERE sync = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[
                &sync.0,
                &after.map_or(-1, to_sql),
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LedgerEntry {
            id: to_id(r.get(0)),
            held: Held {
                modified: Millis(r.get(1)),
                archived: r.get(2),
            },
        })
        .collect())
}

pub async fn sample_records(
    c: &Client,
    portal: Option<i64>,
    object: &ObjectType,
    n: usize,
) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT json_build_object('id', id::TEXT, 'updatedAt', updated_at,
                                      'properties', properties::JSON)::TEXT
             FROM martech_sync.records
             WHERE ($1::BIGINT IS NULL OR portal_id = $1) AND object = $2 AND NOT archived
             ORDER BY id LIMIT $3",
            &[
                &portal,
                &object.as_str(),
                &i64::try_from(n).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
