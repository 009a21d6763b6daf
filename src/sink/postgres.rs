//! The Postgres sink (`--sink postgres://…`): one table per object in a schema of its
//! own (`--pg-schema`, default `hubspot`), keyed by `(portal_id, id)`.
//!
//! The table is also the destination's ledger: a row holds the newest version (its
//! `updated_at`, and whether it is a tombstone) the destination confirmed, written in the
//! same Postgres transaction as the row itself, so what is news to this destination is
//! read from here ([`PostgresSink::held`]), not from the state. A kill -9 between this
//! transaction and the state's checkpoint makes the next run read that page again and
//! find nothing new: no version is lost or written twice, whatever keeps the state.
//!
//! An upsert never replaces a newer version with an older one (versions are ordered by
//! `(updated_at, archived)`, as in `ledger.rs`); an equal one is written again (a refresh
//! brings the same version with more properties). A tombstone keeps the row and its last
//! properties, marked archived, with `archived_at` and, for a merge, `merged_into`.
//!
//! The schema's layout version is kept in `<schema>._martech_sync_schema`; migrations run
//! under an advisory lock, so that several processes starting at once do not race.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use tokio_postgres::{GenericClient, Statement};

use crate::object::ObjectType;
use crate::postgres::PgUrl;
use crate::record::{Record, RecordId};
use crate::state::{Checkpoint, Held, LedgerEntry, Pass, RecordsTable, SyncId};

use super::SinkUnusable;

/// The layout this build writes; a schema marked newer is refused.
const LAYOUT: i32 = 1;

/// `pg_advisory_xact_lock` key for migrations and table creation (any constant; "mts1").
const MIGRATION_LOCK: i64 = 0x6d74_7331;

/// A `--sink postgres://…`: the server and the schema the tables live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    pub url: PgUrl,
    pub schema: String,
}

impl PgTarget {
    /// The default schema.
    pub const DEFAULT_SCHEMA: &'static str = "hubspot";
}

/// A schema name that is not a plain identifier.
#[derive(Debug, thiserror::Error)]
#[error(
    "--pg-schema `{0}`: use 1 to 63 lower-case letters, digits or '_', starting with a letter or '_' (not pg_ nor information_schema)"
)]
pub struct BadSchema(pub String);

/// Checks a `--pg-schema` value: plain identifiers only, so that it needs no quoting a
/// user could get wrong in their own queries.
///
/// # Errors
/// [`BadSchema`].
pub fn check_schema(name: &str) -> Result<(), BadSchema> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        // Postgres's own schemas.
        && !name.starts_with("pg_")
        && name != "information_schema";
    if ok {
        Ok(())
    } else {
        Err(BadSchema(name.to_owned()))
    }
}

/// The table an object's rows go to: its name, with anything but letters, digits and
/// '_' made '_' (`2-1234567` is `object_2_1234567`).
pub fn table_name(object: &ObjectType) -> String {
    let name: String = object
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("object_{name}")
    } else {
        name
    }
}

/// An open Postgres sink.
pub struct PostgresSink {
    client: tokio_postgres::Client,
    /// The server and database (its display form): where a Postgres state may share
    /// the transaction.
    database: String,
    /// `postgres://user@host:port/db (schema s)`, for messages.
    shown: String,
    schema: String,
    portal: i64,
    tables: HashMap<String, Table>,
}

/// One object's table and its prepared statements.
struct Table {
    upsert: Statement,
    held: Statement,
    page: Statement,
}

impl PostgresSink {
    /// Connects, and creates or migrates the schema.
    ///
    /// # Errors
    /// When the server cannot be reached, or the schema is newer than this build.
    pub async fn open(target: &PgTarget, portal: u64) -> Result<PostgresSink> {
        let shown = format!("{} (schema {})", target.url, target.schema);
        let mut client = target
            .url
            .connect()
            .await
            .map_err(|e| unusable(&shown, e, || format!("connecting to {}", target.url)))?;
        migrate(&mut client, &target.schema).await.map_err(|e| {
            unusable(&shown, e, || {
                format!("preparing schema {} in {}", target.schema, target.url)
            })
        })?;
        Ok(PostgresSink {
            client,
            database: target.url.to_string(),
            shown,
            schema: target.schema.clone(),
            portal: i64::try_from(portal).context("a portal id past 2^63")?,
            tables: HashMap::new(),
        })
    }

    /// The table of `object`, created on first use.
    async fn table(&mut self, object: &ObjectType) -> Result<&Table> {
        let name = table_name(object);
        if !self.tables.contains_key(&name) {
            let table = create_table(&mut self.client, &self.schema, &name)
                .await
                .map_err(|e| {
                    unusable(&self.shown, e, || {
                        format!("preparing table {}.{name} in {}", self.schema, self.shown)
                    })
                })?;
            self.tables.insert(name.clone(), table);
        }
        Ok(&self.tables[&name])
    }

    /// Writes `records` in one transaction: the upsert is one statement, which Postgres
    /// runs as a transaction of its own (one round trip, no BEGIN and COMMIT).
    ///
    /// # Errors
    /// When the statement fails: then nothing of it is written.
    pub async fn deliver(&mut self, object: &ObjectType, records: &[&Record]) -> Result<()> {
        let upsert = self.table(object).await?.upsert.clone();
        write_rows(
            &self.client,
            &upsert,
            self.portal,
            &self.shown,
            object,
            records,
        )
        .await
    }

    /// Whether `state` is in this sink's database (same server, user, database and TLS
    /// settings).
    pub fn shares(&self, state: &PgUrl) -> bool {
        self.database == state.to_string()
    }

    /// Writes `records` and records the page in the state (its fence, versions and
    /// checkpoint) in one transaction: a kill -9 leaves both or neither.
    ///
    /// # Errors
    /// When either fails: then nothing of the page is written.
    pub async fn deliver_and_checkpoint(
        &mut self,
        object: &ObjectType,
        records: &[&Record],
        sync: SyncId,
        pass: Pass,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let upsert = self.table(object).await?.upsert.clone();
        let tx = self.client.transaction().await?;
        if !records.is_empty() {
            write_rows(&tx, &upsert, self.portal, &self.shown, object, records).await?;
        }
        crate::state::postgres::record_page(
            &tx,
            sync,
            pass,
            checkpoint,
            records,
            RecordsTable::Skip,
        )
        .await?;
        tx.commit().await.map_err(|e| {
            unusable(&self.shown, e.into(), || {
                format!(
                    "committing {} rows to {}",
                    records.len(),
                    table_name(object)
                )
            })
        })?;
        Ok(())
    }

    /// What the table holds of `ids`.
    ///
    /// # Errors
    /// On database errors.
    pub async fn held(
        &mut self,
        object: &ObjectType,
        ids: &[RecordId],
    ) -> Result<HashMap<RecordId, Held>> {
        let portal = self.portal;
        let held = self.table(object).await?.held.clone();
        let ids: Vec<i64> = ids.iter().map(|id| to_sql(*id)).collect::<Result<_>>()?;
        let rows = self.read(object, &held, &[&portal, &ids]).await?;
        rows.iter()
            .map(|row| Ok((from_sql(row.get(0))?, held_of(row.get(1), row.get(2)))))
            .collect()
    }

    /// Runs one of `object`'s reading statements.
    async fn read(
        &self,
        object: &ObjectType,
        statement: &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.client.query(statement, params).await.map_err(|e| {
            unusable(&self.shown, e.into(), || {
                format!("reading {} in {}", table_name(object), self.shown)
            })
        })
    }

    /// Up to `limit` rows with ids after `after`, by id, as ledger entries.
    ///
    /// # Errors
    /// On database errors.
    pub async fn ledger_page(
        &mut self,
        object: &ObjectType,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        let portal = self.portal;
        let page = self.table(object).await?.page.clone();
        let after = after.map(to_sql).transpose()?.unwrap_or(-1);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(object, &page, &[&portal, &after, &limit]).await?;
        rows.iter()
            .map(|row| {
                Ok(LedgerEntry {
                    id: from_sql(row.get(0))?,
                    held: held_of(row.get(1), row.get(2)),
                })
            })
            .collect()
    }
}

/// `err` as [`SinkUnusable`] (exit 78) when no rerun fixes it: the login refused, the
/// database missing, a privilege lacking, a layout newer than this build. A server down
/// or unreachable stays an ordinary failure (exit 1): the next run may find it up.
fn unusable(shown: &str, err: anyhow::Error, doing: impl FnOnce() -> String) -> anyhow::Error {
    // PostgreSQL's SQLSTATE classes 28 (invalid authorization), 3D (invalid catalog
    // name) and 42 (syntax error or access rule violation: a privilege lacking, a table
    // of the same name with other columns): "Appendix A. PostgreSQL Error Codes".
    let fatal = err.chain().any(|e| {
        e.downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| {
                let code = code.code();
                code.starts_with("28") || code.starts_with("3D") || code.starts_with("42")
            })
            || e.is::<NewerLayout>()
    });
    if fatal {
        SinkUnusable {
            sink: shown.to_owned(),
            why: format!("{err:#}"),
        }
        .into()
    } else {
        err.context(doing())
    }
}

/// Writes `records` with the table's `upsert`, on a connection or in a transaction.
async fn write_rows(
    client: &impl GenericClient,
    upsert: &Statement,
    portal: i64,
    shown: &str,
    object: &ObjectType,
    records: &[&Record],
) -> Result<()> {
    let rows = Rows::of(records)?;
    client
        .execute(
            upsert,
            &[
                &portal,
                &rows.ids,
                &rows.modified,
                &rows.archived,
                &rows.properties,
                &rows.created,
                &rows.archived_at,
                &rows.merged_into,
            ],
        )
        .await
        .map_err(|e| {
            unusable(shown, e.into(), || {
                format!("writing {} rows to {}", records.len(), table_name(object))
            })
        })?;
    Ok(())
}

/// A schema whose layout a newer martech-sync wrote.
#[derive(Debug, thiserror::Error)]
#[error(
    "the schema's layout version {found} is newer than this martech-sync understands ({LAYOUT}); upgrade martech-sync"
)]
struct NewerLayout {
    found: i32,
}

/// The properties as JSON text `jsonb` takes. `jsonb` refuses the character U+0000
/// (PostgreSQL's "JSON Types": "\u0000 is disallowed"), which a text field of HubSpot
/// may hold; it becomes U+FFFD rather than stopping the object's sync for good.
fn jsonb_text(properties: &serde_json::Map<String, serde_json::Value>) -> Result<String> {
    let text = serde_json::to_string(properties)?;
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    fn clean(value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(s.replace('\0', "\u{fffd}")),
            Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.replace('\0', "\u{fffd}"), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    Ok(serde_json::to_string(&clean(&serde_json::Value::Object(
        properties.clone(),
    )))?)
}

fn held_of(modified: i64, archived: bool) -> Held {
    Held {
        modified: crate::timestamp::Millis(modified),
        archived,
    }
}

fn to_sql(id: RecordId) -> Result<i64> {
    i64::try_from(id.0).with_context(|| format!("record id {} past 2^63", id.0))
}

fn from_sql(id: i64) -> Result<RecordId> {
    u64::try_from(id)
        .map(RecordId)
        .with_context(|| format!("a negative record id {id} in the table"))
}

/// A page as column arrays, one element per record, each id once (its newest version).
struct Rows {
    ids: Vec<i64>,
    modified: Vec<i64>,
    archived: Vec<bool>,
    properties: Vec<String>,
    created: Vec<Option<String>>,
    archived_at: Vec<Option<String>>,
    merged_into: Vec<Option<i64>>,
}

impl Rows {
    fn of(records: &[&Record]) -> Result<Rows> {
        // One statement may not touch a row twice (ON CONFLICT): keep each id's newest.
        let mut newest: HashMap<RecordId, &Record> = HashMap::with_capacity(records.len());
        for r in records {
            newest
                .entry(r.id)
                .and_modify(|old| {
                    if (r.modified, r.archived) >= (old.modified, old.archived) {
                        *old = r;
                    }
                })
                .or_insert(r);
        }
        let n = newest.len();
        let mut rows = Rows {
            ids: Vec::with_capacity(n),
            modified: Vec::with_capacity(n),
            archived: Vec::with_capacity(n),
            properties: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            archived_at: Vec::with_capacity(n),
            merged_into: Vec::with_capacity(n),
        };
        for r in records.iter().filter(|r| std::ptr::eq(**r, newest[&r.id])) {
            rows.ids.push(to_sql(r.id)?);
            rows.modified.push(r.modified.0);
            rows.archived.push(r.archived);
            rows.properties.push(jsonb_text(&r.properties)?);
            rows.created
                .push((!r.created_at.is_empty()).then(|| r.created_at.clone()));
            rows.archived_at.push(r.archived_at.clone());
            rows.merged_into
                .push(r.merged_into.map(to_sql).transpose()?);
        }
        Ok(rows)
    }
}

/// `"schema"."table"`, both already checked or derived to be plain identifiers.
fn qualified(schema: &str, table: &str) -> String {
    format!("\"{schema}\".\"{table}\"")
}

/// Creates the schema and its version table, and brings the layout to [`LAYOUT`].
async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<()> {
    let versions = qualified(schema, "_martech_sync_schema");
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Created only when missing: `CREATE ... IF NOT EXISTS` asks for the CREATE privilege
    // even when the object exists, and a schema and tables an administrator made for a
    // user with no more than USAGE, SELECT, INSERT and UPDATE must do.
    if !exists(&tx, &format!("\"{schema}\"")).await? {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await?;
    }
    if !exists(&tx, &versions).await? {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {versions} (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await?;
    }
    let found: Option<i32> = tx
        .query_one(&format!("SELECT max(version) FROM {versions}"), &[])
        .await?
        .get(0);
    let found = found.unwrap_or(0);
    if found > LAYOUT {
        return Err(NewerLayout { found }.into());
    }
    // Layout 1 is the one `create_table` writes; a later layout adds its steps here,
    // applied to every table of the schema.
    for version in found + 1..=LAYOUT {
        tx.execute(
            &format!("INSERT INTO {versions} (version) VALUES ($1)"),
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the schema (`"s"`) or relation (`"s"."t"`) `name` exists, asked without
/// needing any privilege on it.
async fn exists(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<bool> {
    let sql = if name.contains("\".\"") {
        "SELECT to_regclass($1) IS NOT NULL"
    } else {
        "SELECT to_regnamespace($1) IS NOT NULL"
    };
    Ok(tx.query_one(sql, &[&name]).await?.get(0))
}

/// Creates `schema.name` if it is new, and prepares its statements.
async fn create_table(
    client: &mut tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<Table> {
    if name.len() > 63 {
        bail!("the table name {name} is longer than Postgres allows (63)");
    }
    let table = qualified(schema, name);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    if !exists(&tx, &table).await? {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
             portal_id   bigint      NOT NULL,
             id          bigint      NOT NULL,
             properties  jsonb       NOT NULL,
             created_at  timestamptz,
             updated_at  timestamptz NOT NULL,
             archived    boolean     NOT NULL DEFAULT false,
             archived_at timestamptz,
             merged_into bigint,
             synced_at   timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (portal_id, id)
         )"
        ))
        .await?;
    }
    tx.commit().await?;
    // Versions go in as epoch milliseconds and come out the same: timestamptz keeps
    // microseconds, and the arithmetic is exact.
    let upsert = client
        .prepare(&format!(
            "INSERT INTO {table} AS t (portal_id, id, properties, created_at, updated_at,
                                       archived, archived_at, merged_into, synced_at)
             SELECT $1, u.id,
                    CASE WHEN u.archived THEN '{{}}'::jsonb ELSE u.properties::jsonb END,
                    u.created::timestamptz,
                    timestamptz 'epoch' + u.modified * interval '1 millisecond',
                    u.archived, u.archived_at::timestamptz, u.merged_into, now()
             FROM unnest($2::int8[], $3::int8[], $4::bool[], $5::text[], $6::text[],
                         $7::text[], $8::int8[])
                  AS u(id, modified, archived, properties, created, archived_at, merged_into)
             ON CONFLICT (portal_id, id) DO UPDATE SET
                 properties  = CASE WHEN excluded.archived THEN t.properties
                                    ELSE excluded.properties END,
                 created_at  = coalesce(excluded.created_at, t.created_at),
                 updated_at  = excluded.updated_at,
                 archived    = excluded.archived,
                 archived_at = excluded.archived_at,
                 merged_into = excluded.merged_into,
                 synced_at   = excluded.synced_at
             WHERE (excluded.updated_at, excluded.archived) >= (t.updated_at, t.archived)"
        ))
        .await?;
    let version = "(extract(epoch FROM updated_at) * 1000)::int8";
    let held = client
        .prepare(&format!(
            "SELECT id, {version}, archived FROM {table} WHERE portal_id = $1 AND id = ANY($2)"
        ))
        .await?;
    let page = client
        .prepare(&format!(
            "SELECT id, {version}, archived FROM {table}
             WHERE portal_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .await?;
    Ok(Table { upsert, held, page })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_character_becomes_a_replacement_character_for_jsonb() {
        let props: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"firstname":"nul\u0000byte","path":"C:\\u0000","tags":["a\u0000"]}"#,
        )
        .unwrap();
        let text = jsonb_text(&props).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["firstname"], "nul\u{fffd}byte");
        assert_eq!(back["path"], "C:\\u0000", "a literal backslash-u stays");
        assert_eq!(back["tags"][0], "a\u{fffd}");
    }

    #[test]
    fn tables_and_schemas_are_plain_identifiers() {
        let name = |s: &str| table_name(&ObjectType::unchecked(s));
        assert_eq!(name("contacts"), "contacts");
        assert_eq!(name("line_items"), "line_items");
        assert_eq!(name("2-1234567"), "object_2_1234567");
        assert_eq!(name("Pets"), "pets");
        for ok in ["hubspot", "_x", "crm_2"] {
            assert!(check_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Hub",
            "1x",
            "a-b",
            "a\"b",
            &"x".repeat(64),
            "pg_catalog",
            "information_schema",
        ] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
