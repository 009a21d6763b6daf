//! `ledger` and `records`: what each destination holds of each record (its newest
//! version or tombstone), and the default sink's rows, written in the same transaction.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{to_id, to_sql};
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::state::{Held, LedgerEntry, RecordsTable, SyncId};
use crate::timestamp::Millis;

pub fn held(conn: &Connection, sync: SyncId, ids: &[RecordId]) -> Result<HashMap<RecordId, Held>> {
    let mut stmt = conn
        .prepare_cached("SELECT modified_ms, archived FROM ledger WHERE sync = ?1 AND id = ?2")?;
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        let held = stmt
            .query_row(params![sync.0, to_sql(*id)], |r| {
                Ok(Held {
                    modified: Millis(r.get(0)?),
                    archived: r.get(1)?,
                })
            })
            .optional()?;
        if let Some(held) = held {
            out.insert(*id, held);
        }
    }
    Ok(out)
}

/// Records `delivered` in the ledger (never going back to an older version; a
/// tombstone wins a tie) and, for the default sink, in `records`.
pub fn remember(
    tx: &Transaction<'_>,
    sync: SyncId,
    delivered: &[&Record],
    records: RecordsTable,
) -> Result<()> {
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO ledger (sync, id, modified_ms, archived) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sync, id) DO UPDATE SET modified_ms = excluded.modified_ms,
                                                  archived = excluded.archived
             WHERE (excluded.modified_ms, excluded.archived) > (ledger.modified_ms, ledger.archived)",
        )?;
        for r in delivered {
            stmt.execute(params![sync.0, to_sql(r.id), r.modified.0, r.archived])?;
        }
    }
    if records == RecordsTable::Write && !delivered.is_empty() {
        let object: String =
            tx.query_row("SELECT object FROM syncs WHERE id = ?1", [sync.0], |r| {
                r.get(0)
            })?;
        upsert_records(tx, &object, delivered)?;
    }
    Ok(())
}

fn upsert_records(tx: &Transaction<'_>, object: &str, delivered: &[&Record]) -> Result<()> {
    // Never replace a newer version with an older one: a resumed window or a webhook may
    // bring an older version after a newer one. An equal version is written again: a
    // refresh brings the same version with more properties.
    let mut live = tx.prepare_cached(
        "INSERT INTO records (object, id, modified_ms, created_at, updated_at, archived, properties,
                              archived_at, merged_into)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, NULL, NULL)
         ON CONFLICT (object, id) DO UPDATE SET
             modified_ms = excluded.modified_ms, created_at = excluded.created_at,
             updated_at = excluded.updated_at, archived = 0, properties = excluded.properties,
             archived_at = NULL, merged_into = NULL
         WHERE (excluded.modified_ms, 0) >= (records.modified_ms, records.archived)",
    )?;
    // A tombstone keeps the row and its last properties, marked archived with the time.
    let mut gone = tx.prepare_cached(
        "INSERT INTO records (object, id, modified_ms, created_at, updated_at, archived, properties,
                              archived_at, merged_into)
         VALUES (?1, ?2, ?3, '', ?4, 1, '{}', ?5, ?6)
         ON CONFLICT (object, id) DO UPDATE SET
             modified_ms = excluded.modified_ms, updated_at = excluded.updated_at, archived = 1,
             archived_at = excluded.archived_at, merged_into = excluded.merged_into
         WHERE (excluded.modified_ms, 1) >= (records.modified_ms, records.archived)",
    )?;
    for r in delivered {
        if r.archived {
            gone.execute(params![
                object,
                to_sql(r.id),
                r.modified.0,
                r.updated_at,
                r.archived_at.as_deref().unwrap_or(&r.updated_at),
                r.merged_into.map(to_sql)
            ])?;
        } else {
            let properties = serde_json::to_string(&r.properties)?;
            live.execute(params![
                object,
                to_sql(r.id),
                r.modified.0,
                r.created_at,
                r.updated_at,
                properties
            ])?;
        }
    }
    Ok(())
}

pub fn page(
    conn: &Connection,
    sync: SyncId,
    after: Option<RecordId>,
    limit: usize,
) -> Result<Vec<LedgerEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, modified_ms, archived FROM ledger WHERE sync = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![sync.0, after.map_or(-1, to_sql), i64::try_from(limit)?],
        |r| {
            Ok(LedgerEntry {
                id: to_id(r.get(0)?),
                held: Held {
                    modified: Millis(r.get(1)?),
                    archived: r.get(2)?,
                },
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn sample_records(conn: &Connection, object: &ObjectType, n: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT json_object('id', CAST(id AS TEXT), 'updatedAt', updated_at,
                            'properties', json(properties))
         FROM records WHERE object = ?1 AND archived = 0 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![object.as_str(), i64::try_from(n)?], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
