//! The fake's search semantics: filter groups (OR of ANDs), the operators HubSpot
//! documents, one sort, `limit` ≤ 200, `after` as an offset capped at 10,000, and `total`
//! (docs/HUBSPOT.md §1–§2), over what the index shows: archived records and records the
//! index hides never match, and a record modified within its index lag shows its
//! previous version. Pure: the server owns the effects.

use std::cmp::Ordering;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::Value;

use super::store::{FakeRecord, Store};
use crate::object::ObjectType;
use crate::timestamp::Millis;

/// HubSpot's cap on reachable results of one query.
pub const MAX_REACHABLE: u64 = 10_000;
/// HubSpot's largest page.
pub const MAX_LIMIT: u64 = 200;

/// A search request as HubSpot accepts it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    #[serde(default)]
    pub filter_groups: Vec<FilterGroup>,
    /// The undocumented top-level form; treated as one more group.
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub sorts: Vec<SortSpec>,
    #[serde(default)]
    pub properties: Vec<String>,
    pub limit: Option<u64>,
    pub after: Option<Value>,
}

/// Filters ANDed together.
#[derive(Debug, Default, Deserialize)]
pub struct FilterGroup {
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// One filter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub property_name: String,
    pub operator: String,
    pub value: Option<Value>,
    pub high_value: Option<Value>,
    pub values: Option<Vec<Value>>,
}

/// A sort: the documented object form or the SDKs' string form (`-createdate`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SortSpec {
    Object {
        #[serde(rename = "propertyName")]
        property_name: String,
        direction: Option<String>,
    },
    Name(String),
}

/// Why HubSpot would answer 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("limit {0} is above the maximum of {MAX_LIMIT}")]
    Limit(u64),
    #[error("Invalid after: {0}")]
    After(String),
    #[error("Paging past {MAX_REACHABLE} results is not allowed (after {after}, limit {limit})")]
    PastCap { after: u64, limit: u64 },
    #[error("There was a problem with the request: {0} filter groups, at most 5 allowed")]
    TooManyGroups(usize),
    #[error("There was a problem with the request: {0} filters in a group, at most 6 allowed")]
    TooManyFilters(usize),
    #[error("Only one sort is supported, got {0}")]
    TooManySorts(usize),
    #[error("Unknown operator {0}")]
    Operator(String),
    #[error("Filter on {0} needs a value")]
    MissingValue(String),
}

/// One page of an answer.
#[derive(Debug)]
pub struct SearchResult {
    pub total: u64,
    /// The versions the index shows.
    pub results: Vec<FakeRecord>,
    pub next_after: Option<u64>,
}

/// How ties under the sort are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TieOrder {
    /// By id, as a stable sort would.
    ById,
    /// Shuffled on every request, as HubSpot does not promise an order among equals.
    Unstable,
}

/// A comparable property value: numbers and datetimes as numbers, the rest as text.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Num(f64),
    Text(String),
}

impl Val {
    fn parse(s: &str) -> Val {
        if let Ok(n) = s.trim().parse::<f64>() {
            return Val::Num(n);
        }
        match Millis::parse_hubspot(s) {
            #[allow(clippy::cast_precision_loss)]
            Some(t) => Val::Num(t.0 as f64),
            None => Val::Text(s.to_lowercase()),
        }
    }

    fn from_json(v: &Value) -> Option<Val> {
        match v {
            Value::String(s) => Some(Val::parse(s)),
            Value::Number(n) => n.as_f64().map(Val::Num),
            Value::Bool(b) => Some(Val::Text(b.to_string())),
            _ => None,
        }
    }

    fn cmp(&self, other: &Val) -> Ordering {
        match (self, other) {
            (Val::Num(a), Val::Num(b)) => a.total_cmp(b),
            (Val::Num(a), Val::Text(b)) => a.to_string().cmp(b),
            (Val::Text(a), Val::Num(b)) => a.cmp(&b.to_string()),
            (Val::Text(a), Val::Text(b)) => a.cmp(b),
        }
    }
}

impl Store {
    /// Answers a search of `object` as the index shows it at `now`.
    ///
    /// # Errors
    /// [`Invalid`] where HubSpot answers 400.
    pub fn search(
        &mut self,
        object: &ObjectType,
        request: &SearchRequest,
        now: Millis,
        ties: TieOrder,
        rng: &mut impl Rng,
    ) -> Result<SearchResult, Invalid> {
        let limit = request.limit.unwrap_or(10);
        if limit > MAX_LIMIT {
            return Err(Invalid::Limit(limit));
        }
        let after = match &request.after {
            None => 0,
            Some(v) => {
                let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                s.parse::<u64>().map_err(|_| Invalid::After(s))?
            }
        };
        if after + limit > MAX_REACHABLE {
            return Err(Invalid::PastCap { after, limit });
        }
        let mut groups: Vec<&[Filter]> = request
            .filter_groups
            .iter()
            .map(|g| g.filters.as_slice())
            .collect();
        if !request.filters.is_empty() {
            groups.push(&request.filters);
        }
        if groups.len() > 5 {
            return Err(Invalid::TooManyGroups(groups.len()));
        }
        if let Some(g) = groups.iter().find(|g| g.len() > 6) {
            return Err(Invalid::TooManyFilters(g.len()));
        }
        if request.sorts.len() > 1 {
            return Err(Invalid::TooManySorts(request.sorts.len()));
        }
        for filter in groups.iter().flat_map(|g| g.iter()) {
            check_filter(filter)?;
        }

        if let Some(result) = self.keyed_page(object, &groups, request, now, after, limit) {
            return Ok(result);
        }
        let compiled: Vec<Vec<Compiled<'_>>> = groups
            .iter()
            .map(|g| g.iter().map(Compiled::new).collect())
            .collect();
        let records = self.objects.get(object.as_str());
        let mut matches: Vec<&FakeRecord> = records
            .into_iter()
            .flat_map(|m| m.range(id_floor(&groups)..).map(|(_, r)| r))
            .filter_map(|r| r.searchable(now))
            .filter(|r| {
                compiled.is_empty()
                    || compiled
                        .iter()
                        .any(|g| g.iter().all(|f| f.matches(object, r)))
            })
            .collect();
        if let Some(sort) = request.sorts.first() {
            let (property, descending) = match sort {
                SortSpec::Object {
                    property_name,
                    direction,
                } => (
                    property_name.as_str(),
                    direction.as_deref() == Some("DESCENDING"),
                ),
                SortSpec::Name(name) => match name.strip_prefix('-') {
                    Some(p) => (p, true),
                    None => (name.as_str(), false),
                },
            };
            sort_matches(object, &mut matches, property, descending, ties, rng);
        }
        let total = matches.len() as u64;
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(matches.len());
        let end = usize::try_from(after + limit)
            .unwrap_or(usize::MAX)
            .min(matches.len());
        let results = matches[start..end].iter().map(|r| (*r).clone()).collect();
        let next_after = (after + limit < total).then_some(after + limit);
        Ok(SearchResult {
            total,
            results,
            next_after,
        })
    }

    /// Answers a keyed page (one filter group, id bounds, sorted by id ascending: what
    /// martech-sync sends) from a cached list of matching ids, so that paging through
    /// half a million records costs the fake a binary search a page, not a full scan.
    /// `None` when the request has another shape or the index is lagging.
    fn keyed_page(
        &mut self,
        object: &ObjectType,
        groups: &[&[Filter]],
        request: &SearchRequest,
        now: Millis,
        after: u64,
        limit: u64,
    ) -> Option<SearchResult> {
        let [group] = groups else {
            return None;
        };
        let by_id = match request.sorts.as_slice() {
            [] => true,
            [
                SortSpec::Object {
                    property_name,
                    direction,
                },
            ] => property_name == "hs_object_id" && direction.as_deref() != Some("DESCENDING"),
            [SortSpec::Name(name)] => name == "hs_object_id",
            _ => false,
        };
        if !by_id || now < self.lag_until {
            return None;
        }
        let (mut low, mut high) = (0u64, u64::MAX);
        let mut key = object.as_str().to_owned();
        let mut rest = Vec::new();
        for f in *group {
            if f.property_name == "hs_object_id" {
                let v = f.value.as_ref()?;
                let n: u64 = v.as_str().map_or_else(|| v.as_u64(), |s| s.parse().ok())?;
                match f.operator.as_str() {
                    "GT" => low = low.max(n.saturating_add(1)),
                    "GTE" => low = low.max(n),
                    "LT" => high = high.min(n.checked_sub(1)?),
                    "LTE" => high = high.min(n),
                    _ => return None,
                }
            } else {
                key.push_str(&format!(
                    "|{}:{}:{:?}:{:?}:{:?}",
                    f.property_name, f.operator, f.value, f.high_value, f.values
                ));
                rest.push(f);
            }
        }
        let generation = self.generation;
        let ids = match self.keyed.get(&key) {
            Some((g, ids)) if *g == generation => std::sync::Arc::clone(ids),
            _ => {
                let compiled: Vec<Compiled<'_>> = rest.iter().map(|f| Compiled::new(f)).collect();
                let ids: std::sync::Arc<[u64]> = self
                    .records(object.as_str())
                    .filter(|r| r.searchable(now).is_some())
                    .filter(|r| compiled.iter().all(|f| f.matches(object, r)))
                    .map(|r| r.id)
                    .collect();
                self.keyed
                    .insert(key, (generation, std::sync::Arc::clone(&ids)));
                ids
            }
        };
        let from = ids.partition_point(|id| *id < low);
        let to = ids.partition_point(|id| *id <= high);
        let ids = &ids[from..to.max(from)];
        let total = ids.len() as u64;
        let start = usize::try_from(after).unwrap_or(usize::MAX).min(ids.len());
        let end = usize::try_from(after + limit)
            .unwrap_or(usize::MAX)
            .min(ids.len());
        let records = self.objects.get(object.as_str())?;
        let results = ids[start..end]
            .iter()
            .filter_map(|id| records.get(id).cloned())
            .collect();
        Some(SearchResult {
            total,
            results,
            next_after: (after + limit < total).then_some(after + limit),
        })
    }
}

#[allow(clippy::cast_precision_loss)]
fn value(object: &ObjectType, r: &FakeRecord, name: &str) -> Option<Val> {
    if name == "hs_object_id" {
        Some(Val::Num(r.id as f64))
    } else if name == object.modified_property() {
        Some(Val::Num(r.modified.0 as f64))
    } else if name == object.created_property() {
        Some(Val::Num(r.created.0 as f64))
    } else {
        r.properties.get(name).map(|s| Val::parse(s))
    }
}

const OPERATORS: [&str; 10] = [
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
];

fn check_filter(f: &Filter) -> Result<(), Invalid> {
    if !OPERATORS.contains(&f.operator.as_str()) {
        return Err(Invalid::Operator(f.operator.clone()));
    }
    let needs = match f.operator.as_str() {
        "HAS_PROPERTY" | "NOT_HAS_PROPERTY" => true,
        "IN" => f.values.is_some(),
        "BETWEEN" => f.value.is_some() && f.high_value.is_some(),
        _ => f.value.is_some(),
    };
    if needs {
        Ok(())
    } else {
        Err(Invalid::MissingValue(f.property_name.clone()))
    }
}

/// A filter with its values parsed once per request rather than once per record.
struct Compiled<'a> {
    property: &'a str,
    operator: &'a str,
    value: Option<Val>,
    high: Option<Val>,
    values: Vec<Val>,
}

impl<'a> Compiled<'a> {
    fn new(f: &'a Filter) -> Compiled<'a> {
        Compiled {
            property: &f.property_name,
            operator: &f.operator,
            value: f.value.as_ref().and_then(Val::from_json),
            high: f.high_value.as_ref().and_then(Val::from_json),
            values: f
                .values
                .iter()
                .flatten()
                .filter_map(Val::from_json)
                .collect(),
        }
    }

    fn matches(&self, object: &ObjectType, r: &FakeRecord) -> bool {
        let have = value(object, r, self.property);
        let cmp = |want: &Option<Val>| match (&have, want) {
            (Some(h), Some(w)) => Some(h.cmp(w)),
            _ => None,
        };
        let at_least =
            |want: &Option<Val>| matches!(cmp(want), Some(Ordering::Greater | Ordering::Equal));
        let at_most =
            |want: &Option<Val>| matches!(cmp(want), Some(Ordering::Less | Ordering::Equal));
        match self.operator {
            "EQ" => cmp(&self.value) == Some(Ordering::Equal),
            "NEQ" => cmp(&self.value) != Some(Ordering::Equal),
            "LT" => cmp(&self.value) == Some(Ordering::Less),
            "LTE" => at_most(&self.value),
            "GT" => cmp(&self.value) == Some(Ordering::Greater),
            "GTE" => at_least(&self.value),
            "BETWEEN" => at_least(&self.value) && at_most(&self.high),
            "IN" => have
                .as_ref()
                .is_some_and(|h| self.values.iter().any(|v| h.cmp(v) == Ordering::Equal)),
            "HAS_PROPERTY" => have.is_some(),
            "NOT_HAS_PROPERTY" => have.is_none(),
            _ => false,
        }
    }
}

/// The lowest id any group can match, from `hs_object_id GT/GTE` filters present in
/// every group: keyed pages then skip what they already read instead of scanning it.
fn id_floor(groups: &[&[Filter]]) -> u64 {
    if groups.is_empty() {
        return 0;
    }
    groups
        .iter()
        .map(|g| {
            g.iter()
                .filter(|f| f.property_name == "hs_object_id")
                .filter_map(|f| {
                    let v = f.value.as_ref()?;
                    let n: u64 = v.as_str().map_or_else(|| v.as_u64(), |s| s.parse().ok())?;
                    match f.operator.as_str() {
                        "GT" => Some(n.saturating_add(1)),
                        "GTE" => Some(n),
                        _ => None,
                    }
                })
                .max()
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

fn sort_matches(
    object: &ObjectType,
    matches: &mut [&FakeRecord],
    property: &str,
    descending: bool,
    ties: TieOrder,
    rng: &mut impl Rng,
) {
    if ties == TieOrder::Unstable {
        matches.shuffle(rng);
    }
    let key = |r: &FakeRecord| value(object, r, property);
    let order = |a: &&FakeRecord, b: &&FakeRecord| {
        let o = match (key(a), key(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        if descending { o.reverse() } else { o }
    };
    match ties {
        // A stable sort over shuffled input leaves equal keys in random order.
        TieOrder::Unstable => matches.sort_by(order),
        TieOrder::ById => matches.sort_by(|a, b| order(a, b).then(a.id.cmp(&b.id))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    fn store() -> Store {
        let mut s = Store::default();
        for id in 1..=30u64 {
            let mut properties = BTreeMap::new();
            properties.insert(
                "firstname".into(),
                if id % 2 == 0 { "Ada" } else { "Alan" }.into(),
            );
            s.insert(
                "contacts",
                FakeRecord::new(
                    id,
                    Millis(1_000),
                    Millis(1_000 + i64::try_from(id / 10).unwrap()),
                    properties,
                ),
            );
        }
        s
    }

    fn search(body: Value) -> Result<SearchResult, Invalid> {
        let req: SearchRequest = serde_json::from_value(body).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        store().search(
            &"contacts".parse().unwrap(),
            &req,
            Millis(0),
            TieOrder::ById,
            &mut rng,
        )
    }

    #[test]
    fn filters_sorts_and_pages_like_hubspot() {
        let f = |p: &str, op: &str, v: &str| json!({"propertyName": p, "operator": op, "value": v});
        let cases: Vec<(Value, u64, Vec<u64>, Option<u64>)> = vec![
            (json!({}), 30, (1..=10).collect(), Some(10)),
            (
                json!({"limit": 5, "after": "25"}),
                30,
                (26..=30).collect(),
                None,
            ),
            (
                json!({"filterGroups": [{"filters": [f("lastmodifieddate", "GTE", "1002"), f("hs_object_id", "GT", "25")]}]}),
                5,
                (26..=30).collect(),
                None,
            ),
            (
                json!({"filterGroups": [{"filters": [f("firstname", "EQ", "ada")]}], "limit": 3,
                       "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}]}),
                15,
                vec![30, 28, 26],
                Some(3),
            ),
            (
                json!({"filterGroups": [{"filters": [f("hs_object_id", "LTE", "2")]}, {"filters": [f("hs_object_id", "EQ", "29")]}]}),
                3,
                vec![1, 2, 29],
                None,
            ),
            (
                json!({"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "BETWEEN",
                        "value": "1970-01-01T00:00:01.001Z", "highValue": "1001"}]}]}),
                10,
                (10..=19).collect(),
                None,
            ),
            (
                json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "IN", "values": ["3", "7"]}]}]}),
                2,
                vec![3, 7],
                None,
            ),
        ];
        for (body, total, ids, next) in cases {
            let r = search(body.clone()).unwrap();
            let got: Vec<u64> = r.results.iter().map(|r| r.id).collect();
            assert_eq!((r.total, got, r.next_after), (total, ids, next), "{body}");
        }
    }

    #[test]
    fn the_index_lags_behind_modifications() {
        let mut s = store();
        let lag = std::time::Duration::from_secs(10);
        s.touch("contacts", 5, Millis(50_000), lag);
        let req: SearchRequest = serde_json::from_value(json!({"filterGroups": [{"filters": [
            {"propertyName": "hs_object_id", "operator": "EQ", "value": "5"}]}]}))
        .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let contacts = "contacts".parse().unwrap();
        let mut at = |now| {
            s.search(
                &contacts,
                &req,
                Millis(now),
                TieOrder::ById,
                &mut rng.clone(),
            )
            .unwrap()
            .results[0]
                .modified
        };
        assert_eq!(at(59_999), Millis(1_000), "old version before the lag");
        assert_eq!(at(60_000), Millis(50_000), "new version after it");
        s.catch_up_index();
        assert_eq!(
            s.search(&contacts, &req, Millis(0), TieOrder::ById, &mut rng)
                .unwrap()
                .results[0]
                .modified,
            Millis(50_000)
        );
    }

    #[test]
    fn keyed_pages_from_the_cache_match_a_full_scan() {
        let f = |p: &str, op: &str, v: &str| json!({"propertyName": p, "operator": op, "value": v});
        let bodies = [
            json!({"filterGroups": [{"filters": [f("lastmodifieddate", "GTE", "1001"), f("lastmodifieddate", "LTE", "1002")]}],
                   "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}], "limit": 4}),
            json!({"filterGroups": [{"filters": [f("lastmodifieddate", "GTE", "1000"), f("hs_object_id", "GT", "12"),
                   f("hs_object_id", "LTE", "27")]}], "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                   "limit": 5}),
            json!({"filterGroups": [{"filters": [f("firstname", "EQ", "ada"), f("hs_object_id", "GTE", "29")]}]}),
            json!({"filterGroups": [{"filters": [f("hs_object_id", "LT", "3")]}], "limit": 1, "after": "1"}),
        ];
        let contacts = "contacts".parse().unwrap();
        for body in bodies {
            let req: SearchRequest = serde_json::from_value(body.clone()).unwrap();
            let mut rng = StdRng::seed_from_u64(1);
            let mut cached = store();
            let fast = cached
                .search(&contacts, &req, Millis(0), TieOrder::ById, &mut rng)
                .unwrap();
            let mut scanned = store();
            scanned.lag_until = Millis(i64::MAX);
            let slow = scanned
                .search(&contacts, &req, Millis(0), TieOrder::ById, &mut rng)
                .unwrap();
            let ids = |r: &SearchResult| r.results.iter().map(|x| x.id).collect::<Vec<_>>();
            assert_eq!(
                (fast.total, ids(&fast), fast.next_after),
                (slow.total, ids(&slow), slow.next_after),
                "{body}"
            );
            assert!(!cached.keyed.is_empty(), "the fast path answered");
        }
    }

    #[test]
    fn refuses_what_hubspot_refuses() {
        assert_eq!(
            search(json!({"limit": 201})).unwrap_err(),
            Invalid::Limit(201)
        );
        assert_eq!(
            search(json!({"limit": 200, "after": "9900"})).unwrap_err(),
            Invalid::PastCap {
                after: 9900,
                limit: 200
            }
        );
        assert!(matches!(
            search(
                json!({"filterGroups": [{"filters": [{"propertyName": "x", "operator": "LIKE", "value": "1"}]}]})
            ),
            Err(Invalid::Operator(_))
        ));
    }
}
