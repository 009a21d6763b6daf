//! CRM search, keyed: the request body of one keyed page and the checks on its answer.
//!
//! Every page is a fresh search `modified ≥ lo AND modified ≤ hi AND hs_object_id >
//! last_id` (and `hs_object_id ≤ upto` for a slice that is not the last), sorted by
//! `hs_object_id` ascending, never an `after` offset: an offset shifts when a record
//! leaves the result set mid-scan and stops at 10,000 (docs/ARCHITECTURE.md, "The window engine").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::timestamp::Millis;
use crate::window::{Slice, Window};

/// The body of one keyed search page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchBody<'a> {
    filter_groups: [FilterGroup; 1],
    sorts: [Sort; 1],
    properties: &'a [String],
    limit: u32,
}

#[derive(Debug, Serialize)]
struct FilterGroup {
    filters: Vec<Filter>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    property_name: &'static str,
    operator: &'static str,
    value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Sort {
    property_name: &'static str,
    direction: &'static str,
}

/// What the largest-id probe asks for: the id alone (an empty list would bring back
/// HubSpot's default properties).
static ID_ONLY: std::sync::LazyLock<[String; 1]> =
    std::sync::LazyLock::new(|| ["hs_object_id".to_owned()]);

impl<'a> SearchBody<'a> {
    /// Records asked for.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The page of `slice` of `window` after `after` (the slice's first page when
    /// `None`). `properties` must already hold the modified property and `hs_object_id`.
    pub fn keyed(
        object: &ObjectType,
        window: Window,
        slice: &Slice,
        after: Option<RecordId>,
        properties: &'a [String],
        limit: u32,
    ) -> SearchBody<'a> {
        let mut filters = window_filters(object, window);
        if let Some(id) = after {
            filters.push(id_filter("GT", id));
        }
        if let Some(id) = slice.upto {
            filters.push(id_filter("LTE", id));
        }
        SearchBody {
            filter_groups: [FilterGroup { filters }],
            sorts: [Sort {
                property_name: "hs_object_id",
                direction: "ASCENDING",
            }],
            properties,
            limit,
        }
    }

    /// The record of `window` with the largest id after `after`, to split the rest of
    /// the window into slices.
    pub fn largest_id(object: &ObjectType, window: Window, after: RecordId) -> SearchBody<'static> {
        let mut filters = window_filters(object, window);
        filters.push(id_filter("GT", after));
        SearchBody {
            filter_groups: [FilterGroup { filters }],
            sorts: [Sort {
                property_name: "hs_object_id",
                direction: "DESCENDING",
            }],
            properties: &*ID_ONLY,
            limit: 1,
        }
    }
}

fn window_filters(object: &ObjectType, window: Window) -> Vec<Filter> {
    let modified = object.modified_property();
    // Epoch milliseconds as strings: the form of HubSpot's own example.
    vec![
        Filter {
            property_name: modified,
            operator: "GTE",
            value: window.lo.0.to_string(),
        },
        Filter {
            property_name: modified,
            operator: "LTE",
            value: window.hi.0.to_string(),
        },
    ]
}

fn id_filter(operator: &'static str, id: RecordId) -> Filter {
    Filter {
        property_name: "hs_object_id",
        operator,
        value: id.0.to_string(),
    }
}

/// A search answer as HubSpot sends it.
#[derive(Debug, Deserialize)]
pub struct SearchResponse {
    #[serde(default)]
    pub total: Option<u64>,
    pub results: Vec<RawRecord>,
    #[serde(default)]
    pub paging: Option<Paging>,
}

/// `paging`: present when more results follow.
#[derive(Debug, Deserialize)]
pub struct Paging {
    pub next: Option<Value>,
}

/// A result before its id and modified time are checked.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawRecord {
    pub id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub archived_at: Option<String>,
}

/// A checked page.
#[derive(Debug)]
pub struct Page {
    /// Matches of this query, this page included; a hint for progress only.
    pub total: Option<u64>,
    pub records: Vec<Record>,
    /// The largest id search returned: where the next page starts, even when a record
    /// was dropped later (gone by the time it was hydrated).
    pub last_id: Option<RecordId>,
    /// Whether HubSpot said more results follow.
    pub more: bool,
}

/// A search answer that parses but cannot be trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("a result has id `{0}`, which is not a number")]
    BadId(String),
    #[error("record {id} has no `{property}`")]
    MissingModified { id: u64, property: &'static str },
    #[error("record {id} has `{property}` = `{value}`, which is not a timestamp")]
    BadTimestamp {
        id: u64,
        property: &'static str,
        value: String,
    },
    #[error("record {id} came after record {previous}: ids must ascend (was the sort ignored?)")]
    OutOfOrder { id: u64, previous: u64 },
    #[error("a page said more results follow but had none")]
    EmptyWithMore,
}

impl SearchResponse {
    /// Checks every result: a numeric id above `after` and the one before it, and a
    /// parseable modified time.
    ///
    /// A page as full as `limit` counts as "more follow" even without `paging`: at worst
    /// one empty page more, never a slice cut short.
    ///
    /// # Errors
    /// The first result that breaks a rule.
    pub fn into_page(
        self,
        object: &ObjectType,
        after: Option<RecordId>,
        limit: u32,
    ) -> Result<Page, PageError> {
        let mut previous = after.map_or(0, |id| id.0);
        let mut records = Vec::with_capacity(self.results.len());
        for raw in self.results {
            let record = raw.into_record(object)?;
            if record.id.0 <= previous {
                return Err(PageError::OutOfOrder {
                    id: record.id.0,
                    previous,
                });
            }
            previous = record.id.0;
            records.push(record);
        }
        let full = limit > 0 && records.len() == limit as usize;
        let more = self.paging.is_some_and(|p| p.next.is_some()) || full;
        if more && records.is_empty() {
            return Err(PageError::EmptyWithMore);
        }
        Ok(Page {
            total: self.total,
            last_id: records.last().map(|r| r.id),
            records,
            more,
        })
    }
}

impl RawRecord {
    /// Checks the id and the modified time of one result.
    ///
    /// # Errors
    /// A non-numeric id, or a modified time that is missing or not a timestamp.
    pub fn into_record(self, object: &ObjectType) -> Result<Record, PageError> {
        let property = object.modified_property();
        let id: u64 = self
            .id
            .parse()
            .map_err(|_| PageError::BadId(self.id.clone()))?;
        let modified = match self.properties.get(property) {
            Some(Value::String(s)) => {
                Millis::parse_hubspot(s).ok_or_else(|| PageError::BadTimestamp {
                    id,
                    property,
                    value: s.clone(),
                })?
            }
            Some(Value::Number(n)) => {
                n.as_i64()
                    .map(Millis)
                    .ok_or_else(|| PageError::BadTimestamp {
                        id,
                        property,
                        value: n.to_string(),
                    })?
            }
            _ => return Err(PageError::MissingModified { id, property }),
        };
        Ok(Record {
            id: RecordId(id),
            modified,
            properties: self.properties,
            created_at: self.created_at,
            updated_at: self.updated_at,
            archived: self.archived,
            archived_at: self.archived_at,
            merged_into: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts() -> ObjectType {
        "contacts".parse().unwrap()
    }

    #[test]
    fn keyed_body_has_bounds_key_and_id_sort() {
        let props = vec!["lastmodifieddate".to_owned(), "hs_object_id".to_owned()];
        let window = Window {
            lo: Millis(10),
            hi: Millis(20),
        };
        let slice = Slice {
            upto: Some(RecordId(900)),
            ..Slice::WHOLE
        };
        let body = SearchBody::keyed(&contacts(), window, &slice, Some(RecordId(7)), &props, 200);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "filterGroups": [{"filters": [
                    {"propertyName": "lastmodifieddate", "operator": "GTE", "value": "10"},
                    {"propertyName": "lastmodifieddate", "operator": "LTE", "value": "20"},
                    {"propertyName": "hs_object_id", "operator": "GT", "value": "7"},
                    {"propertyName": "hs_object_id", "operator": "LTE", "value": "900"},
                ]}],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "properties": ["lastmodifieddate", "hs_object_id"],
                "limit": 200,
            })
        );
    }

    fn page(json: &str, after: Option<u64>) -> Result<Page, PageError> {
        let response: SearchResponse = serde_json::from_str(json).unwrap();
        response.into_page(&contacts(), after.map(RecordId), 200)
    }

    #[test]
    fn checks_results() {
        let ok = r#"{"total":2,"results":[
            {"id":"5","properties":{"lastmodifieddate":"2024-01-01T00:00:00.000Z"}},
            {"id":"9","properties":{"lastmodifieddate":"1704067200001"}}],
            "paging":{"next":{"after":"2"}}}"#;
        let p = page(ok, Some(4)).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[1].modified, Millis(1_704_067_200_001));
        assert!(p.more);

        let cases = [
            (
                r#"{"results":[{"id":"x","properties":{}}]}"#,
                None,
                PageError::BadId("x".into()),
            ),
            (
                r#"{"results":[{"id":"3","properties":{"lastmodifieddate":null}}]}"#,
                None,
                PageError::MissingModified {
                    id: 3,
                    property: "lastmodifieddate",
                },
            ),
            (
                r#"{"results":[{"id":"3","properties":{"lastmodifieddate":"soon"}}]}"#,
                None,
                PageError::BadTimestamp {
                    id: 3,
                    property: "lastmodifieddate",
                    value: "soon".into(),
                },
            ),
            (
                r#"{"results":[{"id":"3","properties":{"lastmodifieddate":"1"}}]}"#,
                Some(3),
                PageError::OutOfOrder { id: 3, previous: 3 },
            ),
            (
                r#"{"results":[],"paging":{"next":{"after":"1"}}}"#,
                None,
                PageError::EmptyWithMore,
            ),
        ];
        for (json, after, want) in cases {
            assert_eq!(page(json, after).unwrap_err(), want, "{json}");
        }
    }
}
