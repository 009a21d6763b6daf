//! `PropertySet`: which properties a destination is given. Stored per destination, so
//! that a run asking for properties the destination never got (`--all-properties`
//! added, a new name in `--properties`) is not a silent no-op: the versions it already
//! has would be skipped and never carry the new properties. Such a run needs
//! `--refresh`; a list that shrinks just runs.

use std::collections::BTreeSet;

/// The properties of a run or of what a destination was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertySet {
    /// `--all-properties`: whatever the portal has, including properties added later.
    All,
    /// These names.
    Named(BTreeSet<String>),
}

impl PropertySet {
    /// The named set of `names`.
    pub fn named<S: AsRef<str>>(names: &[S]) -> PropertySet {
        PropertySet::Named(names.iter().map(|s| s.as_ref().to_owned()).collect())
    }

    /// Whether every property of `wanted` is in this set.
    pub fn covers(&self, wanted: &PropertySet) -> bool {
        match (self, wanted) {
            (PropertySet::All, _) => true,
            (PropertySet::Named(_), PropertySet::All) => false,
            (PropertySet::Named(have), PropertySet::Named(want)) => want.is_subset(have),
        }
    }

    /// The names `wanted` adds to this set, for the error line (empty for `All`).
    pub fn missing<'w>(&self, wanted: &'w PropertySet) -> Vec<&'w str> {
        match (self, wanted) {
            (PropertySet::Named(have), PropertySet::Named(want)) => want
                .iter()
                .filter(|w| !have.contains(*w))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The stored form: `*` or a JSON array of names.
    pub fn to_stored(&self) -> String {
        match self {
            PropertySet::All => "*".to_owned(),
            PropertySet::Named(names) => {
                serde_json::to_string(names).expect("a set of strings serialises")
            }
        }
    }

    /// The inverse of [`PropertySet::to_stored`]; `None` for a value no version wrote.
    pub fn from_stored(s: &str) -> Option<PropertySet> {
        if s == "*" {
            return Some(PropertySet::All);
        }
        serde_json::from_str::<BTreeSet<String>>(s)
            .ok()
            .map(PropertySet::Named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_is_not_covered_and_shrinking_is() {
        let ab = PropertySet::named(&["a", "b"]);
        let a = PropertySet::named(&["a"]);
        let abc = PropertySet::named(&["a", "b", "c"]);
        assert!(ab.covers(&a));
        assert!(ab.covers(&ab));
        assert!(!ab.covers(&abc));
        assert_eq!(ab.missing(&abc), ["c"]);
        assert!(!ab.covers(&PropertySet::All));
        assert!(PropertySet::All.covers(&abc));
        assert!(PropertySet::All.covers(&PropertySet::All));
        for set in [ab, PropertySet::All] {
            assert_eq!(PropertySet::from_stored(&set.to_stored()), Some(set));
        }
    }
}
