//! Webhook events: the JSON array HubSpot POSTs (docs/HUBSPOT.md §14), parsed from the
//! raw bytes (they are what is signed) into what the worker needs: which record of which
//! object changed or went away, and when. Event ids are not unique, so an event's key is
//! built from every field that tells two deliveries apart.

use serde_json::Value;

use crate::object::ObjectType;
use crate::record::RecordId;
use crate::timestamp::Millis;

/// What happened to the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created, changed, restored, or the winner of a merge: fetch its current version.
    Change,
    /// Deleted (or privacy-deleted): hand the sink a tombstone.
    Deletion,
    /// Merged into another record: a tombstone with `mergedInto`.
    Merged,
}

impl EventKind {
    /// The name stored in the queue.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Change => "change",
            EventKind::Deletion => "deletion",
            EventKind::Merged => "merged",
        }
    }

    /// The inverse of [`EventKind::as_str`].
    pub fn parse(s: &str) -> EventKind {
        match s {
            "deletion" => EventKind::Deletion,
            "merged" => EventKind::Merged,
            _ => EventKind::Change,
        }
    }
}

/// One event the worker acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Identifies one delivery of one event, for deduplication.
    pub key: String,
    pub object: ObjectType,
    pub id: RecordId,
    pub kind: EventKind,
    pub occurred: Millis,
    /// For [`EventKind::Merged`]: the record it went into.
    pub merged_into: Option<RecordId>,
    /// The HubSpot portal it happened in (`portalId`): a Postgres state queues the
    /// events of many portals, and each portal's worker takes its own.
    pub portal: Option<u64>,
}

/// The body is not a JSON array of event objects.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the body is not a JSON array of HubSpot events: {0}")]
pub struct BadBatch(String);

/// Parses a delivery. Events of kinds or objects martech-sync does not sync
/// (association changes, products, conversations) are left out: they are answered 200
/// all the same, or HubSpot would retry them for a day.
///
/// # Errors
/// When the body is not a JSON array of objects.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, BadBatch> {
    let value: Value = serde_json::from_slice(body).map_err(|e| BadBatch(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(BadBatch("not an array".into()));
    };
    let mut events = Vec::with_capacity(items.len());
    for item in &items {
        if !item.is_object() {
            return Err(BadBatch("an element is not an object".into()));
        }
        let parsed = events_of(item);
        if parsed.is_empty() {
            // The kind and id only: property values never reach a log.
            let kind = item
                .get("subscriptionType")
                .or_else(|| item.get("eventType"))
                .and_then(Value::as_str)
                .unwrap_or("-");
            let id = item.get("objectId").and_then(number).unwrap_or(0);
            tracing::debug!(kind, id, "webhook event ignored");
        }
        events.extend(parsed);
    }
    Ok(events)
}

/// The events one webhook event stands for: one, or for a merge, the winner's change
/// and a `Merged` for each record merged into it (HubSpot's webhook docs: `*.merge`
/// carries `primaryObjectId`, `mergedObjectIds[]` and `newObjectId`, the record the
/// merge created, which both old ids now resolve to).
fn events_of(v: &Value) -> Vec<Event> {
    let Some(event) = event(v) else {
        return Vec::new();
    };
    let is_merge = v
        .get("subscriptionType")
        .or_else(|| v.get("eventType"))
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with(".merge"));
    if !is_merge {
        return vec![event];
    }
    let winner = v
        .get("newObjectId")
        .and_then(number)
        .or_else(|| v.get("primaryObjectId").and_then(number))
        .map_or(event.id, RecordId);
    let mut losers: Vec<RecordId> = v
        .get("mergedObjectIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(number)
        .map(RecordId)
        .collect();
    losers.extend(v.get("primaryObjectId").and_then(number).map(RecordId));
    losers.push(event.id);
    losers.sort_unstable();
    losers.dedup();
    losers.retain(|id| *id != winner);
    let mut out = vec![Event {
        key: format!("{}|winner:{}", event.key, winner.0),
        id: winner,
        ..event.clone()
    }];
    out.extend(losers.into_iter().map(|id| Event {
        key: format!("{}|merged:{}", event.key, id.0),
        id,
        kind: EventKind::Merged,
        merged_into: Some(winner),
        ..event.clone()
    }));
    out
}

fn event(v: &Value) -> Option<Event> {
    let kind_name = v
        .get("subscriptionType")
        .or_else(|| v.get("eventType"))
        .and_then(Value::as_str)?;
    let (subject, action) = kind_name.split_once('.')?;
    // `contact.creation`, or the generic `object.creation` with an `objectTypeId`.
    let object = match subject {
        "object" => ObjectType::from_type_id(v.get("objectTypeId").and_then(Value::as_str)?)?,
        named => ObjectType::from_webhook(named)?,
    };
    let kind = match action {
        "creation" | "propertyChange" | "restore" | "merge" => EventKind::Change,
        "deletion" | "privacyDeletion" => EventKind::Deletion,
        _ => return None,
    };
    let id = v.get("objectId").and_then(number)?;
    let occurred = v
        .get("occurredAt")
        .and_then(number)
        .and_then(|n| i64::try_from(n).ok())?;
    let field = |name: &str| {
        v.get(name)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let key = [
        field("portalId"),
        field("subscriptionId"),
        kind_name.to_owned(),
        id.to_string(),
        field("propertyName"),
        occurred.to_string(),
        field("eventId"),
    ]
    .join("|");
    Some(Event {
        key,
        object,
        id: RecordId(id),
        kind,
        occurred: Millis(occurred),
        merged_into: None,
        portal: v.get("portalId").and_then(number),
    })
}

/// A number, or a string holding one (HubSpot sends both).
fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_hubspot_sends() {
        let body = br#"[
            {"eventId":1,"subscriptionId":12,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","objectId":123},
            {"eventId":2,"subscriptionId":13,"portalId":62515,"occurredAt":1564113600001,"eventType":"deal.deletion","objectId":"77"},
            {"eventId":3,"subscriptionId":14,"portalId":62515,"occurredAt":1564113600002,"subscriptionType":"object.propertyChange","objectTypeId":"2-123456","objectId":5,"propertyName":"x"},
            {"eventId":4,"subscriptionId":15,"portalId":62515,"occurredAt":1564113600003,"subscriptionType":"contact.associationChange","objectId":123},
            {"eventId":5,"subscriptionId":16,"portalId":62515,"occurredAt":1564113600004,"subscriptionType":"conversation.creation","objectId":9},
            {"eventId":6,"subscriptionId":17,"portalId":62515,"occurredAt":1564113600005,"subscriptionType":"object.creation","objectTypeId":"0-3","objectId":8}
        ]"#;
        let events = parse_batch(body).unwrap();
        let got: Vec<(&str, u64, EventKind)> = events
            .iter()
            .map(|e| (e.object.as_str(), e.id.0, e.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("contacts", 123, EventKind::Change),
                ("deals", 77, EventKind::Deletion),
                ("2-123456", 5, EventKind::Change),
                ("deals", 8, EventKind::Change)
            ]
        );
        assert_eq!(
            events[0].key,
            "62515|12|contact.creation|123||1564113600000|1"
        );
    }

    #[test]
    fn a_merge_fetches_the_new_record_and_tombstones_the_old_ones() {
        let body = br#"[{"eventId":9,"subscriptionId":3,"portalId":1,"occurredAt":1625097600000,
            "subscriptionType":"contact.merge","objectId":123,"primaryObjectId":123,
            "mergedObjectIds":[456,789],"newObjectId":999,"numberOfPropertiesMoved":4}]"#;
        let got: Vec<(u64, EventKind, Option<u64>)> = parse_batch(body)
            .unwrap()
            .iter()
            .map(|e| (e.id.0, e.kind, e.merged_into.map(|i| i.0)))
            .collect();
        assert_eq!(
            got,
            [
                (999, EventKind::Change, None),
                (123, EventKind::Merged, Some(999)),
                (456, EventKind::Merged, Some(999)),
                (789, EventKind::Merged, Some(999)),
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_an_array_of_objects() {
        for body in [&b"{}"[..], b"[1,2]", b"not json", b""] {
            assert!(
                parse_batch(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse_batch(b"[]").unwrap(), []);
    }
}
