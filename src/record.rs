//! `Record`: one version of one CRM object as HubSpot returned it, or a tombstone for one
//! that was deleted or merged away, and the shape handed to jsonl and exec handlers
//! (`objectType`, `id`, `properties`, `createdAt`, `updatedAt`, `archived`, and on
//! tombstones `archivedAt` and, for a merged-away record, `mergedInto`). That shape is a
//! public contract: handler scripts parse it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::object::ObjectType;
use crate::timestamp::Millis;

/// A HubSpot record id (`hs_object_id`): the key pages are keyed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId(pub u64);

/// One version of a record: `modified` is the value of the object's last-modified
/// property (for a tombstone, the deletion or merge time), which together with `id`
/// names the version.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: RecordId,
    pub modified: Millis,
    pub properties: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    pub archived: bool,
    /// When HubSpot archived it (tombstones and archived listings).
    pub archived_at: Option<String>,
    /// The record it was merged into (a merged-away record's tombstone).
    pub merged_into: Option<RecordId>,
}

/// The record shape handlers receive, borrowed so that writing it copies nothing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    object_type: &'a str,
    id: String,
    properties: &'a Map<String, Value>,
    /// `null` on a tombstone: HubSpot's archived listing has no creation time to give.
    created_at: Option<&'a str>,
    updated_at: &'a str,
    archived: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merged_into: Option<String>,
}

impl Record {
    /// A tombstone: `archived: true`, no properties, `updatedAt` = `archivedAt` = `at`.
    pub fn tombstone(id: RecordId, at: Millis, merged_into: Option<RecordId>) -> Record {
        let when = at.to_rfc3339();
        Record {
            id,
            modified: at,
            properties: Map::new(),
            created_at: String::new(),
            updated_at: when.clone(),
            archived: true,
            archived_at: Some(when),
            merged_into,
        }
    }

    /// Appends this record as one line of NDJSON (with the trailing newline) to `out`.
    pub fn write_json_line(&self, object: &ObjectType, out: &mut Vec<u8>) {
        let wire = Wire {
            object_type: object.as_str(),
            id: self.id.0.to_string(),
            properties: &self.properties,
            created_at: (!self.created_at.is_empty()).then_some(self.created_at.as_str()),
            updated_at: &self.updated_at,
            archived: self.archived,
            archived_at: self.archived_at.as_deref(),
            merged_into: self.merged_into.map(|id| id.0.to_string()),
        };
        // Serialising a map of JSON values into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &wire).expect("record serialises");
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_shape_is_the_documented_one() {
        let mut properties = Map::new();
        properties.insert("email".into(), Value::from("a@example.com"));
        properties.insert("phone".into(), Value::Null);
        let record = Record {
            id: RecordId(42),
            modified: Millis(1_700_000_000_000),
            properties,
            created_at: "2023-11-14T22:13:20.000Z".into(),
            updated_at: "2023-11-14T22:13:20.000Z".into(),
            archived: false,
            archived_at: None,
            merged_into: None,
        };
        let mut out = Vec::new();
        record.write_json_line(&"contacts".parse().unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"objectType\":\"contacts\",\"id\":\"42\",\"properties\":{\"email\":\"a@example.com\",\"phone\":null},\
             \"createdAt\":\"2023-11-14T22:13:20.000Z\",\"updatedAt\":\"2023-11-14T22:13:20.000Z\",\"archived\":false}\n"
        );
        let mut out = Vec::new();
        Record::tombstone(RecordId(7), Millis(1_700_000_000_000), Some(RecordId(42)))
            .write_json_line(&"contacts".parse().unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"objectType\":\"contacts\",\"id\":\"7\",\"properties\":{},\"createdAt\":null,\
             \"updatedAt\":\"2023-11-14T22:13:20.000Z\",\"archived\":true,\
             \"archivedAt\":\"2023-11-14T22:13:20.000Z\",\"mergedInto\":\"42\"}\n"
        );
    }
}
