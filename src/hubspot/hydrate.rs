//! `--all-properties`: every property of an object without putting hundreds of names
//! into the search body (HubSpot refuses bodies over 3,000 characters, docs/HUBSPOT.md §1,
//! §10). The property names come from `GET /crm/v3/properties/{object}`; search returns
//! ids only, and `POST /crm/v3/objects/{object}/batch/read` (≤ 100 ids a call) returns
//! the values.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::{Client, Limit};
use super::error::Correlation;
use super::search::RawRecord;
use crate::object::ObjectType;
use crate::record::{Record, RecordId};

/// HubSpot's largest batch read.
const BATCH: usize = 100;

#[derive(Deserialize)]
struct Properties {
    results: Vec<Property>,
}

#[derive(Deserialize)]
struct Property {
    name: String,
}

#[derive(Serialize)]
struct BatchRead<'a> {
    properties: &'a [String],
    inputs: Vec<BatchId>,
}

#[derive(Serialize)]
struct BatchId {
    id: String,
}

#[derive(Deserialize)]
struct BatchResponse {
    results: Vec<RawRecord>,
    /// With 207: what went wrong for some ids.
    #[serde(default)]
    errors: Vec<BatchError>,
}

#[derive(Deserialize)]
struct BatchError {
    category: Option<String>,
    message: Option<String>,
    #[serde(default)]
    context: HashMap<String, Vec<String>>,
}

impl Client {
    /// Every property name of `object`.
    ///
    /// # Errors
    /// As [`Client::search`].
    pub async fn property_names(&self, object: &ObjectType) -> Result<Vec<String>> {
        let path = format!("/crm/v3/properties/{}", object.api_name());
        let (properties, _): (Properties, _) = self
            .send(Method::GET, &path, None::<&()>, Limit::General)
            .await
            .with_context(|| format!("listing the properties of {object}"))?;
        Ok(properties.results.into_iter().map(|p| p.name).collect())
    }

    /// The current version of every record in `records`, with `properties`, in the same
    /// order; records HubSpot reports as not found (deleted since the search) are left
    /// out.
    ///
    /// # Errors
    /// As [`Client::batch_read`].
    pub async fn hydrate(
        &self,
        object: &ObjectType,
        records: Vec<Record>,
        properties: &[String],
    ) -> Result<Vec<Record>> {
        let ids: Vec<RecordId> = records.iter().map(|r| r.id).collect();
        let mut fetched = self
            .batch_read(object, &ids, properties, Unaccounted::Fail)
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|r| fetched.remove(&r.id))
            .collect())
    }

    /// The current versions of `ids` with `properties`, by batch read (100 a call).
    /// Records HubSpot reports as not found (deleted) are absent from the map, and so,
    /// with [`Unaccounted::Gone`], are records it neither returns nor reports.
    ///
    /// # Errors
    /// As [`Client::search`]; a result that lacks its id or modified time; any other
    /// per-record error; with [`Unaccounted::Fail`], a record neither returned nor
    /// reported missing.
    pub async fn batch_read(
        &self,
        object: &ObjectType,
        ids: &[RecordId],
        properties: &[String],
        unaccounted: Unaccounted,
    ) -> Result<HashMap<RecordId, Record>> {
        let path = format!("/crm/v3/objects/{}/batch/read", object.api_name());
        let mut fetched: HashMap<RecordId, Record> = HashMap::with_capacity(ids.len());
        let mut gone: HashSet<String> = HashSet::new();
        for chunk in ids.chunks(BATCH) {
            let body = BatchRead {
                properties,
                inputs: chunk
                    .iter()
                    .map(|id| BatchId {
                        id: id.0.to_string(),
                    })
                    .collect(),
            };
            let (answer, correlation_id): (BatchResponse, _) = self
                .send(Method::POST, &path, Some(&body), Limit::General)
                .await?;
            for raw in answer.results {
                let record = raw.into_record(object).with_context(|| {
                    format!(
                        "HubSpot sent a batch read that cannot be used{}",
                        Correlation(&correlation_id)
                    )
                })?;
                fetched.insert(record.id, record);
            }
            for error in answer.errors {
                let category = error.category.as_deref().unwrap_or("unknown");
                if category != "OBJECT_NOT_FOUND" {
                    bail!(
                        "HubSpot's batch read failed for some {object}: {} [{category}]{}",
                        error.message.as_deref().unwrap_or("no message"),
                        Correlation(&correlation_id)
                    );
                }
                gone.extend(error.context.into_values().flatten());
            }
        }
        // A merged-away id comes back as its winner, under the winner's id (HubSpot's
        // merge changelog: "fetching any records using the original IDs will return the
        // new merged record with the new ID"); so ids unaccounted for are fine as long as
        // as many records came back that nobody asked for.
        let asked: HashSet<RecordId> = ids.iter().copied().collect();
        let winners = fetched.keys().filter(|id| !asked.contains(id)).count();
        let unaccounted_ids = ids
            .iter()
            .filter(|id| !fetched.contains_key(id) && !gone.contains(&id.0.to_string()))
            .count();
        if unaccounted == Unaccounted::Fail && unaccounted_ids > winners {
            let id = ids
                .iter()
                .find(|id| !fetched.contains_key(id) && !gone.contains(&id.0.to_string()))
                .map_or(0, |id| id.0);
            bail!("HubSpot's batch read neither returned {object} {id} nor said it is gone");
        }
        if !gone.is_empty() {
            tracing::debug!(%object, gone = gone.len(), "records gone by the time of the batch read");
        }
        Ok(fetched)
    }
}

/// What to make of an id a batch read neither returned nor reported as not found (a
/// record merged into another, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unaccounted {
    /// Fail: the id came from a search page, and paging moves on past it.
    Fail,
    /// Treat it as gone: a webhook named it, and the poll stays the source of truth.
    Gone,
}

/// The property list of `--all-properties` for the search itself: just what the
/// engine needs.
pub fn lean(object: &ObjectType) -> Vec<String> {
    vec![
        object.modified_property().to_owned(),
        "hs_object_id".to_owned(),
    ]
}
