//! Seed data for the fake: the fixture file of realistic contacts the demo starts from
//! (`fixtures/contacts.json`, HubSpot's answer shape), and synthetic records in any
//! number for tests and benchmarks.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::store::FakeRecord;
use crate::object::ObjectType;
use crate::timestamp::Millis;

/// The contacts the demo and `mock-hubspot` start from.
pub const CONTACTS_FIXTURE: &str = include_str!("../../fixtures/contacts.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedRecord {
    id: String,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// Parses records in HubSpot's answer shape (a JSON array) for `object`. The modified
/// time comes from the object's modified property, else `updatedAt`.
///
/// # Errors
/// When the text is not such an array or a record lacks a numeric id or a time.
pub fn parse_records(object: &ObjectType, text: &str) -> Result<Vec<FakeRecord>> {
    let seeds: Vec<SeedRecord> = serde_json::from_str(text)
        .context("seed records must be a JSON array of HubSpot records")?;
    seeds
        .into_iter()
        .map(|s| {
            let id: u64 =
                s.id.parse()
                    .with_context(|| format!("seed record id `{}` is not a number", s.id))?;
            let mut properties: BTreeMap<String, String> = s
                .properties
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    Value::Null => None,
                    other => Some((k, other.to_string())),
                })
                .collect();
            let mut time = |prop: &str, fallback: &Option<String>| {
                properties
                    .remove(prop)
                    .or_else(|| fallback.clone())
                    .and_then(|s| Millis::parse_hubspot(&s))
            };
            let modified = time(object.modified_property(), &s.updated_at)
                .with_context(|| format!("seed record {id} has no modified time"))?;
            let created = time(object.created_property(), &s.created_at).unwrap_or(modified);
            properties.remove("hs_object_id");
            Ok(FakeRecord::new(id, created, modified, properties))
        })
        .collect()
}

const FIRST: [&str; 12] = [
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Radia",
    "Edsger",
    "Frances",
];
const LAST: [&str; 10] = [
    "Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie", "Liskov",
    "Thompson", "Perlman",
];

/// Synthetic contacts-like records: one per id, modified at `modified(id)`.
pub fn synthetic(
    ids: impl IntoIterator<Item = u64>,
    modified: impl Fn(u64) -> Millis,
) -> Vec<FakeRecord> {
    ids.into_iter()
        .map(|id| {
            let first = FIRST[usize::try_from(id % 12).unwrap_or(0)];
            let last = LAST[usize::try_from(id / 12 % 10).unwrap_or(0)];
            let mut properties = BTreeMap::new();
            properties.insert("firstname".to_owned(), first.to_owned());
            properties.insert("lastname".to_owned(), last.to_owned());
            properties.insert(
                "email".to_owned(),
                format!(
                    "{}.{}.{id}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
            );
            let modified = modified(id);
            let created = modified.minus(std::time::Duration::from_secs(86_400));
            FakeRecord::new(id, created, modified, properties)
        })
        .collect()
}

/// Synthetic records of any object: contacts as [`synthetic`] makes them, other objects
/// with a made-up value for each of their default properties.
pub fn synthetic_for(
    object: &ObjectType,
    ids: impl IntoIterator<Item = u64>,
    modified: impl Fn(u64) -> Millis,
) -> Vec<FakeRecord> {
    if object.as_str() == "contacts" {
        return synthetic(ids, modified);
    }
    let system = [
        object.modified_property(),
        object.created_property(),
        "hs_object_id",
    ];
    let names: Vec<&str> = object
        .default_properties()
        .iter()
        .copied()
        .filter(|p| !system.contains(p))
        .collect();
    ids.into_iter()
        .map(|id| {
            let properties = names
                .iter()
                .map(|name| ((*name).to_owned(), value_of(name, id)))
                .collect();
            let modified = modified(id);
            let created = modified.minus(std::time::Duration::from_secs(86_400));
            FakeRecord::new(id, created, modified, properties)
        })
        .collect()
}

/// A plausible value for property `name` of record `id`.
fn value_of(name: &str, id: u64) -> String {
    match name {
        "amount" | "price" => format!("{}.00", 100 + id % 900),
        "quantity" => (1 + id % 9).to_string(),
        "domain" => format!("company-{id}.example.com"),
        "closedate" | "hs_expiration_date" => "2025-06-30T00:00:00.000Z".to_owned(),
        "pipeline" | "hs_pipeline" => "default".to_owned(),
        "dealstage" | "hs_pipeline_stage" => "appointmentscheduled".to_owned(),
        "hs_ticket_priority" => {
            ["LOW", "MEDIUM", "HIGH"][usize::try_from(id % 3).unwrap_or(0)].to_owned()
        }
        "hs_status" => "DRAFT".to_owned(),
        other => format!("{} {id}", other.trim_start_matches("hs_").replace('_', " ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_gets_its_default_properties() {
        for standard in crate::object::STANDARD {
            let object: ObjectType = standard.name.parse().unwrap();
            let records = synthetic_for(&object, 1..=2, |_| Millis(1_000));
            assert_eq!(records.len(), 2);
            let json = super::super::store::Store::to_json(&object, &records[0], &[]);
            for name in object.default_properties() {
                assert!(
                    !json["properties"][*name].is_null(),
                    "{} {name}",
                    standard.name
                );
            }
        }
    }

    #[test]
    fn the_fixture_parses() {
        let records = parse_records(&"contacts".parse().unwrap(), CONTACTS_FIXTURE).unwrap();
        assert_eq!(records.len(), 20);
        assert!(records.iter().all(|r| r.properties.contains_key("email")));
        assert!(
            records
                .iter()
                .all(|r| !r.properties.contains_key("lastmodifieddate"))
        );
    }
}
