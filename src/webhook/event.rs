//! Webhook events: the JSON array HubSpot POSTs (hubspot-api.md §14), parsed from the
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
    /// Created, changed, restored or merged: fetch its current version.
    Change,
    /// Deleted (or privacy-deleted): hand the sink a tombstone.
    Deletion,
}

impl EventKind {
    /// The name stored in the queue.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Change => "change",
            EventKind::Deletion => "deletion",
        }
    }

    /// The inverse of [`EventKind::as_str`].
    pub fn parse(s: &str) -> EventKind {
        if s == "deletion" {
            EventKind::Deletion
        } else {
            EventKind::Change
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
        if let Some(event) = event(item) {
            events.push(event);
        } else {
            tracing::debug!(event = %item, "webhook event ignored");
        }
    }
    Ok(events)
}

fn event(v: &Value) -> Option<Event> {
    let kind_name = v
        .get("subscriptionType")
        .or_else(|| v.get("eventType"))
        .and_then(Value::as_str)?;
    let (subject, action) = kind_name.split_once('.')?;
    let object: ObjectType = match subject {
        "contact" => "contacts".parse().ok()?,
        "company" => "companies".parse().ok()?,
        "deal" => "deals".parse().ok()?,
        "ticket" => "tickets".parse().ok()?,
        "object" => match v.get("objectTypeId").and_then(Value::as_str)? {
            "0-1" => "contacts".parse().ok()?,
            "0-2" => "companies".parse().ok()?,
            "0-3" => "deals".parse().ok()?,
            "0-5" => "tickets".parse().ok()?,
            custom => custom.parse().ok()?,
        },
        _ => return None,
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
            {"eventId":5,"subscriptionId":16,"portalId":62515,"occurredAt":1564113600004,"subscriptionType":"product.creation","objectId":9}
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
                ("2-123456", 5, EventKind::Change)
            ]
        );
        assert_eq!(
            events[0].key,
            "62515|12|contact.creation|123||1564113600000|1"
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
