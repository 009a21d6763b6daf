//! The Postgres state's tables, in schema `martech_sync`, and their forward migrations.
//! The version is the one row of `martech_sync.schema_version`; step `i` of
//! [`MIGRATIONS`] moves a database from version `i` to `i + 1`. Migrating runs under a
//! transaction-scoped advisory lock, so that the first runs of many CronJobs at once
//! cannot race to create the tables.
//!
//! Every sync row carries the HubSpot portal it belongs to, and so does every row keyed
//! by a sync (windows, slices, ledger, runs) through it; the queue, the request counts
//! and the property-name cache carry it themselves. One database holds many portals.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::state::sqlite::NewerSchema;

/// The schema the state's tables live in.
pub const SCHEMA: &str = "martech_sync";

/// `pg_advisory_xact_lock` key for migrations ("mtss").
const MIGRATION_LOCK: i64 = 0x6d74_7373;

/// Schema steps.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite file holds at its version 4, keyed by portal.
    "
    CREATE TABLE martech_sync.syncs (
        id          BIGSERIAL PRIMARY KEY,
        portal_id   BIGINT NOT NULL,
        object      TEXT NOT NULL,
        destination TEXT NOT NULL,
        sink        TEXT NOT NULL,
        cursor_ms   BIGINT,
        recheck_ms  BIGINT,
        swept_ms    BIGINT,
        properties  TEXT,
        created_ms  BIGINT NOT NULL,
        UNIQUE (portal_id, object, destination)
    );
    CREATE TABLE martech_sync.windows (
        sync      BIGINT NOT NULL REFERENCES martech_sync.syncs ON DELETE CASCADE,
        pass      TEXT NOT NULL,
        lo_ms     BIGINT NOT NULL,
        hi_ms     BIGINT NOT NULL,
        pages     BIGINT NOT NULL DEFAULT 0,
        opened_ms BIGINT NOT NULL,
        refresh   BOOLEAN NOT NULL DEFAULT FALSE,
        seen      BIGINT NOT NULL DEFAULT 0,
        total     BIGINT,
        PRIMARY KEY (sync, pass)
    );
    CREATE TABLE martech_sync.slices (
        sync     BIGINT NOT NULL REFERENCES martech_sync.syncs ON DELETE CASCADE,
        pass     TEXT NOT NULL,
        slice    INTEGER NOT NULL,
        after_id BIGINT,
        upto_id  BIGINT,
        last_id  BIGINT,
        done     BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (sync, pass, slice)
    );
    CREATE TABLE martech_sync.ledger (
        sync        BIGINT NOT NULL REFERENCES martech_sync.syncs ON DELETE CASCADE,
        id          BIGINT NOT NULL,
        modified_ms BIGINT NOT NULL,
        archived    BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (sync, id)
    );
    CREATE TABLE martech_sync.runs (
        id           BIGSERIAL PRIMARY KEY,
        sync         BIGINT NOT NULL REFERENCES martech_sync.syncs ON DELETE CASCADE,
        pass         TEXT NOT NULL,
        object       TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        ended_at     TEXT,
        duration_ms  BIGINT,
        lo_ms        BIGINT NOT NULL,
        hi_ms        BIGINT NOT NULL,
        resumed      BOOLEAN NOT NULL,
        pages        BIGINT NOT NULL DEFAULT 0,
        seen         BIGINT NOT NULL DEFAULT 0,
        delivered    BIGINT NOT NULL DEFAULT 0,
        skipped      BIGINT NOT NULL DEFAULT 0,
        requests     BIGINT NOT NULL DEFAULT 0,
        retries      BIGINT NOT NULL DEFAULT 0,
        rate_limited BIGINT NOT NULL DEFAULT 0,
        error        TEXT,
        summary      TEXT
    );
    CREATE INDEX runs_by_sync ON martech_sync.runs (sync, pass, id);
    CREATE TABLE martech_sync.property_names (
        portal_id  BIGINT NOT NULL,
        object     TEXT NOT NULL,
        fetched_ms BIGINT NOT NULL,
        names      TEXT NOT NULL,
        PRIMARY KEY (portal_id, object)
    );
    CREATE TABLE martech_sync.records (
        portal_id   BIGINT NOT NULL,
        object      TEXT NOT NULL,
        id          BIGINT NOT NULL,
        modified_ms BIGINT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        archived    BOOLEAN NOT NULL,
        properties  TEXT NOT NULL,
        archived_at TEXT,
        merged_into BIGINT,
        PRIMARY KEY (portal_id, object, id)
    );
    CREATE TABLE martech_sync.webhook_events (
        key             TEXT PRIMARY KEY,
        portal_id       BIGINT,
        object          TEXT NOT NULL,
        object_id       BIGINT NOT NULL,
        kind            TEXT NOT NULL,
        occurred_ms     BIGINT NOT NULL,
        received_ms     BIGINT NOT NULL,
        state           TEXT NOT NULL DEFAULT 'queued',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL DEFAULT 0,
        claimed_until   BIGINT NOT NULL DEFAULT 0,
        last_error      TEXT,
        merged_into     BIGINT
    );
    CREATE INDEX webhook_events_queued ON martech_sync.webhook_events (state, occurred_ms);
    CREATE TABLE martech_sync.usage (
        portal_id BIGINT NOT NULL,
        day       TEXT NOT NULL,
        requests  BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (portal_id, day)
    );
    CREATE TABLE martech_sync.meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ",
];

/// Moves the database forward to the current schema.
///
/// # Errors
/// [`NewerSchema`], or when the schema cannot be created (a privilege lacking).
pub async fn migrate(client: &mut Client) -> Result<()> {
    if version(client).await? == Some(MIGRATIONS.len()) {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version INTEGER NOT NULL)"
    ))
    .await
    .with_context(|| format!("creating schema {SCHEMA}"))?;
    let found: Option<i32> = tx
        .query_opt(&format!("SELECT version FROM {SCHEMA}.schema_version"), &[])
        .await?
        .map(|r| r.get(0));
    let found = usize::try_from(found.unwrap_or(0)).unwrap_or(0);
    check_version(found)?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found) {
        tx.batch_execute(step)
            .await
            .with_context(|| format!("migrating the state to schema version {}", i + 1))?;
    }
    let now = i32::try_from(MIGRATIONS.len())?;
    tx.execute(&format!("DELETE FROM {SCHEMA}.schema_version"), &[])
        .await?;
    tx.execute(
        &format!("INSERT INTO {SCHEMA}.schema_version (version) VALUES ($1)"),
        &[&now],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The schema version, `None` before the first migration; [`NewerSchema`] past this
/// build's.
///
/// # Errors
/// As said, or when it cannot be read.
pub async fn version(client: &Client) -> Result<Option<usize>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{SCHEMA}.schema_version")],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let found: Option<i32> = client
        .query_opt(&format!("SELECT version FROM {SCHEMA}.schema_version"), &[])
        .await?
        .map(|r| r.get(0));
    let found = found.map(|v| usize::try_from(v).unwrap_or(0));
    if let Some(found) = found {
        check_version(found)?;
    }
    Ok(found)
}

fn check_version(found: usize) -> Result<(), NewerSchema> {
    if found > MIGRATIONS.len() {
        return Err(NewerSchema {
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(())
}
