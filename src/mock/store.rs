//! The fake's data: every object's records, and what happens to them in HubSpot —
//! modifications (seen by search only after the index lag), deletions (archived, in the
//! recycle bin, restorable), hard and GDPR deletions, merges (a new record with a new id
//! that the old ids resolve to), and records the search index never shows. Search
//! semantics are in `search.rs`; the HTTP side in `routes.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::object::ObjectType;
use crate::timestamp::Millis;

/// One record as the fake keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeRecord {
    pub id: u64,
    pub created: Millis,
    pub modified: Millis,
    /// Properties other than the id, created and modified times.
    pub properties: BTreeMap<String, String>,
    /// How often this record was modified through the fake; starts at 0.
    pub revision: u64,
    /// The search index shows this version from this instant on; before it, the
    /// version in `previous` (or nothing, for a record not yet indexed at all).
    pub indexed_at: Millis,
    pub previous: Option<Box<FakeRecord>>,
    /// When it was deleted (archived): gone from search, the live list and batch read,
    /// listed with `archived=true`.
    pub archived_at: Option<Millis>,
    /// The search index never shows it (list and batch read do).
    pub hidden: bool,
    /// Ids merged into this record (`hs_merged_object_ids`).
    pub merged: Vec<u64>,
}

impl FakeRecord {
    /// A record the index already shows.
    pub fn new(
        id: u64,
        created: Millis,
        modified: Millis,
        properties: BTreeMap<String, String>,
    ) -> FakeRecord {
        FakeRecord {
            id,
            created,
            modified,
            properties,
            revision: 0,
            indexed_at: Millis(0),
            previous: None,
            archived_at: None,
            hidden: false,
            merged: Vec::new(),
        }
    }

    /// The version search shows at `now`, if any.
    pub(super) fn searchable(&self, now: Millis) -> Option<&FakeRecord> {
        if self.archived_at.is_some() || self.hidden {
            return None;
        }
        if now >= self.indexed_at {
            Some(self)
        } else {
            self.previous.as_deref()
        }
    }

    /// Whether the live list and batch read show it.
    pub fn is_live(&self) -> bool {
        self.archived_at.is_none()
    }
}

/// Every object's records, ordered by id.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub(super) objects: BTreeMap<String, BTreeMap<u64, FakeRecord>>,
    /// Old ids of merged records, by object: the record they resolve to.
    aliases: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Bumped by every change, so cached match lists know when they are stale.
    pub(super) generation: u64,
    /// Until then some modification is not visible to search yet: no caching.
    pub(super) lag_until: Millis,
    /// Keyed-page match lists: ids (ascending) matching a group's filters other than
    /// the id bounds, by object and filters.
    pub(super) keyed: std::collections::HashMap<String, (u64, Arc<[u64]>)>,
}

impl Store {
    /// Adds or replaces a record of `object`.
    pub fn insert(&mut self, object: &str, record: FakeRecord) {
        self.generation += 1;
        self.objects
            .entry(object.to_owned())
            .or_default()
            .insert(record.id, record);
    }

    /// Adds records, as `insert` does.
    pub fn extend(&mut self, object: &str, records: impl IntoIterator<Item = FakeRecord>) {
        for r in records {
            self.insert(object, r);
        }
    }

    /// The record `id` of `object`, archived or not.
    pub fn get(&self, object: &str, id: u64) -> Option<&FakeRecord> {
        self.objects.get(object)?.get(&id)
    }

    /// The live record an id stands for: itself, or the record it was merged into, as
    /// batch read resolves it.
    pub fn resolve(&self, object: &str, id: u64) -> Option<&FakeRecord> {
        let mut id = id;
        // Merges chain (a winner merged again); aliases never form a loop.
        for _ in 0..16 {
            match self.get(object, id) {
                Some(r) => return r.is_live().then_some(r),
                None => id = *self.aliases.get(object)?.get(&id)?,
            }
        }
        None
    }

    /// How many records `object` has (live or archived).
    pub fn len(&self, object: &str) -> usize {
        self.objects.get(object).map_or(0, BTreeMap::len)
    }

    /// Whether the store has no record at all.
    pub fn is_empty(&self) -> bool {
        self.objects.values().all(BTreeMap::is_empty)
    }

    /// The records of `object` with an id of at least `from`, in id order.
    pub fn records_from(&self, object: &str, from: u64) -> impl Iterator<Item = &FakeRecord> {
        self.objects
            .get(object)
            .into_iter()
            .flat_map(move |records| records.range(from..).map(|(_, r)| r))
    }

    /// Every record of `object` (live or archived), by id.
    pub fn records(&self, object: &str) -> impl Iterator<Item = &FakeRecord> {
        self.objects
            .get(object)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// The live records of `object`, by id.
    pub fn live(&self, object: &str) -> impl Iterator<Item = &FakeRecord> {
        self.records(object).filter(|r| r.is_live())
    }

    fn record_mut(&mut self, object: &str, id: u64) -> Option<&mut FakeRecord> {
        self.generation += 1;
        self.objects.get_mut(object)?.get_mut(&id)
    }

    /// Modifies record `id` at `now`: a new revision whose modified time is `now`, or one
    /// millisecond after the old one when the clock has not moved on. Search shows the new
    /// version only after `lag`. Returns whether the record exists.
    pub fn touch(&mut self, object: &str, id: u64, now: Millis, lag: std::time::Duration) -> bool {
        let Some(modified) = self
            .get(object, id)
            .map(|r| now.max(Millis(r.modified.0 + 1)))
        else {
            return false;
        };
        self.touch_at(object, id, modified, modified.plus(lag))
    }

    /// Modifies record `id` with the modified time `modified`, the new version visible to
    /// search from `visible_at` on (a per-record index lag). Returns whether it exists.
    pub fn touch_at(
        &mut self,
        object: &str,
        id: u64,
        modified: Millis,
        visible_at: Millis,
    ) -> bool {
        let Some(record) = self.record_mut(object, id) else {
            return false;
        };
        let mut before = record.clone();
        before.previous = None;
        record.previous = Some(Box::new(before));
        record.indexed_at = visible_at;
        record.modified = modified;
        record.revision += 1;
        record
            .properties
            .insert("mock_revision".into(), record.revision.to_string());
        self.lag_until = self.lag_until.max(visible_at);
        true
    }

    /// Deletes record `id` at `now` as the HubSpot UI does: archived, restorable.
    pub fn archive(&mut self, object: &str, id: u64, now: Millis) -> bool {
        let Some(record) = self.record_mut(object, id) else {
            return false;
        };
        record.archived_at = Some(now);
        true
    }

    /// Restores an archived record at `now`: live again, with a new version.
    pub fn restore(&mut self, object: &str, id: u64, now: Millis) -> bool {
        let Some(record) = self.record_mut(object, id) else {
            return false;
        };
        record.archived_at = None;
        self.touch(object, id, now, std::time::Duration::ZERO)
    }

    /// Deletes record `id` for good (a GDPR deletion, or the recycle bin emptied): gone
    /// from search, both listings and batch read.
    pub fn delete_for_good(&mut self, object: &str, id: u64) -> bool {
        self.generation += 1;
        self.objects
            .get_mut(object)
            .is_some_and(|m| m.remove(&id).is_some())
    }

    /// Hides record `id` from the search index for good (list and batch read see it).
    pub fn hide_from_search(&mut self, object: &str, id: u64) -> bool {
        let Some(record) = self.record_mut(object, id) else {
            return false;
        };
        record.hidden = true;
        true
    }

    /// Merges `others` into `primary` at `now` as HubSpot does today: a new record with a
    /// new id takes the primary's properties and lists every merged id in
    /// `hs_merged_object_ids`; the old ids leave search and both listings, and batch
    /// read resolves them to the new record. Returns the new id.
    pub fn merge(
        &mut self,
        object: &str,
        primary: u64,
        others: &[u64],
        now: Millis,
    ) -> Option<u64> {
        let mut winner = self.get(object, primary)?.clone();
        let new_id = self.objects.get(object)?.keys().next_back()? + 1;
        let mut merged = vec![primary];
        merged.extend_from_slice(&winner.merged);
        for id in others {
            let loser = self.objects.get_mut(object)?.remove(id)?;
            merged.push(*id);
            merged.extend(loser.merged);
        }
        self.objects.get_mut(object)?.remove(&primary);
        merged.sort_unstable();
        merged.dedup();
        let aliases = self.aliases.entry(object.to_owned()).or_default();
        for id in &merged {
            aliases.insert(*id, new_id);
        }
        winner.id = new_id;
        winner.created = now;
        winner.modified = now;
        winner.merged = merged;
        winner.previous = None;
        winner.indexed_at = Millis(0);
        self.insert(object, winner);
        Some(new_id)
    }

    /// Lets the search index catch up with every modification.
    pub fn catch_up_index(&mut self) {
        self.generation += 1;
        self.lag_until = Millis(0);
        for record in self.objects.values_mut().flat_map(BTreeMap::values_mut) {
            record.indexed_at = Millis(0);
            record.previous = None;
        }
    }

    /// A record in HubSpot's answer shape, with `properties` (the object's defaults when
    /// empty).
    pub fn to_json(object: &ObjectType, r: &FakeRecord, properties: &[String]) -> Value {
        let defaults;
        let names: &[String] = if properties.is_empty() {
            defaults = object
                .default_properties()
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>();
            &defaults
        } else {
            properties
        };
        let mut props = Map::new();
        for name in names {
            let value = property(object, r, name).map_or(Value::Null, Value::String);
            props.insert(name.clone(), value);
        }
        let mut out = json!({
            "id": r.id.to_string(),
            "properties": props,
            "createdAt": r.created.to_rfc3339(),
            "updatedAt": r.modified.to_rfc3339(),
            "archived": r.archived_at.is_some(),
        });
        if let Some(at) = r.archived_at {
            out["archivedAt"] = Value::from(at.to_rfc3339());
        }
        out
    }
}

/// The property as HubSpot would show it: system properties from the record's fields.
pub(super) fn property(object: &ObjectType, r: &FakeRecord, name: &str) -> Option<String> {
    if name == "hs_object_id" {
        Some(r.id.to_string())
    } else if name == object.modified_property() {
        Some(r.modified.to_rfc3339())
    } else if name == object.created_property() {
        Some(r.created.to_rfc3339())
    } else if name == "hs_merged_object_ids" {
        (!r.merged.is_empty()).then(|| {
            r.merged
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(";")
        })
    } else {
        r.properties.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut s = Store::default();
        for id in 1..=5 {
            s.insert(
                "contacts",
                FakeRecord::new(id, Millis(1), Millis(10), BTreeMap::new()),
            );
        }
        s
    }

    #[test]
    fn a_merge_makes_a_new_record_the_old_ids_resolve_to() {
        let mut s = store();
        let new = s.merge("contacts", 2, &[3], Millis(50)).unwrap();
        assert_eq!(new, 6);
        assert!(s.get("contacts", 2).is_none() && s.get("contacts", 3).is_none());
        assert_eq!(s.resolve("contacts", 3).map(|r| r.id), Some(6));
        let again = s.merge("contacts", 6, &[4], Millis(60)).unwrap();
        assert_eq!(s.get("contacts", again).unwrap().merged, [2, 3, 4, 6]);
        assert_eq!(s.resolve("contacts", 2).map(|r| r.id), Some(again));
        let contacts: ObjectType = "contacts".parse().unwrap();
        let json = Store::to_json(
            &contacts,
            s.get("contacts", again).unwrap(),
            &["hs_merged_object_ids".into()],
        );
        assert_eq!(json["properties"]["hs_merged_object_ids"], "2;3;4;6");
    }

    #[test]
    fn archived_records_are_restorable_and_deleted_ones_are_gone() {
        let mut s = store();
        s.archive("contacts", 1, Millis(20));
        assert!(s.resolve("contacts", 1).is_none());
        assert_eq!(s.live("contacts").count(), 4);
        s.restore("contacts", 1, Millis(30));
        assert_eq!(
            s.resolve("contacts", 1).map(|r| r.modified),
            Some(Millis(30))
        );
        s.delete_for_good("contacts", 1);
        assert!(s.get("contacts", 1).is_none() && s.resolve("contacts", 1).is_none());
    }
}
