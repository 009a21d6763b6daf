//! `ObjectType`: which HubSpot CRM object a sync moves, and what the engine must know of
//! it: the property that holds its last-modified time, its creation time, the properties
//! search returns by default, the scope a private app needs to read it, and whether its
//! records merge. Standard objects are a table here; custom objects are named by their
//! type id (`2-1234567`) or by their name, resolved through the schemas API.
//!
//! Sources, checked against HubSpot's docs (2026): the object type ids and default
//! search properties of "Understanding the CRM" and "Search the CRM"; the modified
//! property per object (`lastmodifieddate` for contacts, `hs_lastmodifieddate` for every
//! other object); `hs_createdate` as the created property of quotes and engagements;
//! the read scopes of the OpenAPI specs (any one of those listed suffices);
//! communications and postal mail are searchable per the specs and peer connectors,
//! though the docs' tables leave them out (see the README's object list).

use std::fmt;
use std::str::FromStr;

/// What the engine knows of a standard object.
#[derive(Debug)]
pub struct Standard {
    /// The name in URLs and on the command line.
    pub name: &'static str,
    /// HubSpot's object type id.
    pub type_id: &'static str,
    /// The name of its webhook subscriptions (`contact.creation`), when it has any.
    pub webhook: Option<&'static str>,
    pub modified: &'static str,
    pub created: &'static str,
    /// What search returns when no properties are asked for.
    pub defaults: &'static [&'static str],
    /// A scope that lets a private app read it.
    pub scope: &'static str,
    /// Whether its records merge (`hs_merged_object_ids`).
    pub merges: bool,
}

const ENGAGEMENT: &[&str] = &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"];

/// Every standard object martech-sync syncs.
pub const STANDARD: &[Standard] = &[
    Standard {
        name: "contacts",
        type_id: "0-1",
        webhook: Some("contact"),
        modified: "lastmodifieddate",
        created: "createdate",
        defaults: &[
            "firstname",
            "lastname",
            "email",
            "lastmodifieddate",
            "hs_object_id",
            "createdate",
        ],
        scope: "crm.objects.contacts.read",
        merges: true,
    },
    Standard {
        name: "companies",
        type_id: "0-2",
        webhook: Some("company"),
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &[
            "name",
            "domain",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "crm.objects.companies.read",
        merges: true,
    },
    Standard {
        name: "deals",
        type_id: "0-3",
        webhook: Some("deal"),
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &[
            "dealname",
            "amount",
            "closedate",
            "pipeline",
            "dealstage",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "crm.objects.deals.read",
        merges: true,
    },
    Standard {
        name: "tickets",
        type_id: "0-5",
        webhook: Some("ticket"),
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &[
            "content",
            "hs_pipeline",
            "hs_pipeline_stage",
            "hs_ticket_category",
            "hs_ticket_priority",
            "subject",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "tickets",
        merges: true,
    },
    Standard {
        name: "products",
        type_id: "0-7",
        webhook: Some("product"),
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &[
            "name",
            "description",
            "price",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "crm.objects.products.read",
        merges: false,
    },
    Standard {
        name: "line_items",
        type_id: "0-8",
        webhook: Some("line_item"),
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &[
            "quantity",
            "amount",
            "price",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "crm.objects.line_items.read",
        merges: false,
    },
    Standard {
        name: "quotes",
        type_id: "0-14",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: &[
            "hs_expiration_date",
            "hs_public_url_key",
            "hs_status",
            "hs_title",
            "hs_createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        scope: "crm.objects.quotes.read",
        merges: false,
    },
    Standard {
        name: "calls",
        type_id: "0-48",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "emails",
        type_id: "0-49",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "meetings",
        type_id: "0-47",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "notes",
        type_id: "0-46",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "tasks",
        type_id: "0-27",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "communications",
        type_id: "0-18",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "postal_mail",
        type_id: "0-116",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "hs_createdate",
        defaults: ENGAGEMENT,
        scope: "crm.objects.contacts.read",
        merges: false,
    },
    Standard {
        name: "leads",
        type_id: "0-136",
        webhook: None,
        modified: "hs_lastmodifieddate",
        created: "createdate",
        defaults: &["createdate", "hs_lastmodifieddate", "hs_object_id"],
        scope: "crm.objects.leads.read",
        merges: false,
    },
];

/// What a custom object's records carry: HubSpot's `hs_` system properties.
const CUSTOM_DEFAULTS: &[&str] = &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"];

/// A CRM object type: a standard name, a custom object's type id (`2-1234567`), or a
/// custom object's name (resolved to its type id through the schemas API before any
/// request; see [`ObjectType::resolved`]).
#[derive(Clone, Debug)]
pub struct ObjectType {
    name: String,
    /// For a custom object named by its name: its type id, once resolved.
    type_id: Option<String>,
}

impl PartialEq for ObjectType {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ObjectType {}

impl std::hash::Hash for ObjectType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for ObjectType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectType {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl ObjectType {
    /// The standard object of this name, if it is one.
    pub fn standard(&self) -> Option<&'static Standard> {
        STANDARD.iter().find(|s| s.name == self.name)
    }

    /// The property search filters and sorts on for "modified since": contacts use
    /// `lastmodifieddate`, every other object `hs_lastmodifieddate`.
    pub fn modified_property(&self) -> &'static str {
        self.standard()
            .map_or("hs_lastmodifieddate", |s| s.modified)
    }

    /// The property that holds the creation time.
    pub fn created_property(&self) -> &'static str {
        self.standard().map_or("hs_createdate", |s| s.created)
    }

    /// The properties search returns when none are asked for (docs/HUBSPOT.md §7); also
    /// what `poll` asks for without `--properties`.
    pub fn default_properties(&self) -> &'static [&'static str] {
        self.standard().map_or(CUSTOM_DEFAULTS, |s| s.defaults)
    }

    /// Whether records of this object can be merged, so that a winner's
    /// `hs_merged_object_ids` lists the ids merged into it: contacts, companies, deals,
    /// tickets and custom objects (HubSpot's "Merge records" knowledge-base article;
    /// the merge endpoints of the CRM specs).
    pub fn merges(&self) -> bool {
        self.standard().is_none_or(|s| s.merges)
    }

    /// A scope that lets a private app read the object, for error messages.
    pub fn scope(&self) -> &'static str {
        self.standard()
            .map_or("crm.objects.custom.read", |s| s.scope)
    }

    /// Whether this is a custom object named by its name, not yet resolved to its id.
    pub fn needs_resolving(&self) -> bool {
        self.standard().is_none() && !is_type_id(&self.name) && self.type_id.is_none()
    }

    /// This object with the type id its name resolves to.
    #[must_use]
    pub fn resolved(&self, type_id: &str) -> ObjectType {
        ObjectType {
            name: self.name.clone(),
            type_id: Some(type_id.to_owned()),
        }
    }

    /// The object of a HubSpot object type id: a standard one by name, else the id.
    pub fn from_type_id(type_id: &str) -> Option<ObjectType> {
        if let Some(s) = STANDARD.iter().find(|s| s.type_id == type_id) {
            return Some(ObjectType::unchecked(s.name));
        }
        (type_id.starts_with("2-") && is_type_id(type_id)).then(|| ObjectType::unchecked(type_id))
    }

    /// The object of a webhook subscription's subject (`contact`, `line_item`).
    pub fn from_webhook(subject: &str) -> Option<ObjectType> {
        STANDARD
            .iter()
            .find(|s| s.webhook == Some(subject))
            .map(|s| ObjectType::unchecked(s.name))
    }

    /// An object named in the state file, taken as it is.
    pub(crate) fn unchecked(name: &str) -> ObjectType {
        ObjectType {
            name: name.to_owned(),
            type_id: None,
        }
    }

    /// The name as the user gave it: the state file keys syncs by it.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// What goes into URLs: the name, or a custom object's resolved type id.
    pub fn api_name(&self) -> &str {
        self.type_id.as_deref().unwrap_or(&self.name)
    }
}

/// `2-1234567` or `0-1`.
fn is_type_id(s: &str) -> bool {
    s.split_once('-')
        .is_some_and(|(a, b)| is_digits(a) && is_digits(b))
}

/// The object named is neither a standard object, a type id, nor a name a custom object
/// could have.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown object type `{0}`: use a standard object ({list}), a custom object's type id \
     such as 2-1234567, or its name",
    list = standard_names()
)]
pub struct UnknownObjectType(String);

/// The standard names, comma-separated.
pub fn standard_names() -> String {
    STANDARD
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for ObjectType {
    type Err = UnknownObjectType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(standard) = STANDARD.iter().find(|x| x.name == s) {
            return Ok(ObjectType::unchecked(standard.name));
        }
        if is_type_id(s) {
            // A standard object's id names the standard object.
            return Ok(ObjectType::from_type_id(s).unwrap_or_else(|| ObjectType::unchecked(s)));
        }
        // A custom object's name: letters, digits and underscores (HubSpot's schema
        // names), or its fully qualified name `p1234_pets`. Resolved before use.
        let custom = !s.is_empty()
            && s.len() <= 100
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if custom {
            Ok(ObjectType::unchecked(s))
        } else {
            Err(UnknownObjectType(s.to_owned()))
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modified_properties() {
        let cases = [
            ("contacts", Some("lastmodifieddate")),
            ("companies", Some("hs_lastmodifieddate")),
            ("deals", Some("hs_lastmodifieddate")),
            ("tickets", Some("hs_lastmodifieddate")),
            ("notes", Some("hs_lastmodifieddate")),
            ("postal_mail", Some("hs_lastmodifieddate")),
            ("2-1234567", Some("hs_lastmodifieddate")),
            ("pets", Some("hs_lastmodifieddate")),
            ("Contact", None),
            ("2-", None),
            ("../etc", None),
            ("a b", None),
        ];
        for (name, want) in cases {
            let got = name.parse::<ObjectType>().ok();
            assert_eq!(
                got.as_ref().map(ObjectType::modified_property),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn the_table_is_consistent() {
        assert_eq!(STANDARD.len(), 15);
        for s in STANDARD {
            assert!(s.defaults.contains(&s.modified), "{}", s.name);
            assert!(s.defaults.contains(&"hs_object_id"), "{}", s.name);
            assert_eq!(
                ObjectType::from_type_id(s.type_id).unwrap().as_str(),
                s.name
            );
        }
        assert_eq!("0-3".parse::<ObjectType>().unwrap().as_str(), "deals");
        assert_eq!(
            "quotes".parse::<ObjectType>().unwrap().created_property(),
            "hs_createdate"
        );
        assert!("pets".parse::<ObjectType>().unwrap().needs_resolving());
        assert!(!"2-77".parse::<ObjectType>().unwrap().needs_resolving());
        let pets = "pets".parse::<ObjectType>().unwrap().resolved("2-77");
        assert_eq!((pets.as_str(), pets.api_name()), ("pets", "2-77"));
    }
}
