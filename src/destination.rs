//! `Destination`: where a sync delivers, and the key its state is kept under.
//!
//! A sync is (object, destination): the cursor, the open windows and their checkpoints,
//! the delivered versions and the property list belong to that pair, so a sink never
//! synced before starts as a first run and never silently misses what another sink got
//! (docs/ARCHITECTURE.md, "Destinations"). The key comes from the sink: `sqlite` for the
//! default sink, `jsonl:` with the file's absolute path, `exec:` with the command as
//! given; `--destination NAME` replaces it for users who want to name one.

use std::fmt;

use crate::sink::{JsonlTarget, SinkSpec};

/// The destination a pre-destination state file's syncs belong to until a run claims
/// them (a name no user can give: it has parentheses).
pub const UNASSIGNED: &str = "(unassigned)";

/// A destination: its state key and how its sink was last described.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    key: String,
    sink: String,
}

/// A `--destination` name that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error(
        "--destination `{0}`: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    Shape(String),
    #[error("--destination sqlite names the default sink's state; pick another name for this sink")]
    Reserved,
}

impl Destination {
    /// The destination of `spec`, named `name` when the user gave one. `spec` must
    /// already hold an absolute jsonl path (see [`SinkSpec::absolute`]).
    ///
    /// # Errors
    /// A name of the wrong shape, or `sqlite` for another sink.
    pub fn of(spec: &SinkSpec, name: Option<&str>) -> Result<Destination, BadName> {
        let sink = spec.stored();
        let key = match name {
            None => match spec {
                SinkSpec::Sqlite => "sqlite".to_owned(),
                SinkSpec::Jsonl(JsonlTarget::Stdout) => "jsonl:-".to_owned(),
                SinkSpec::Jsonl(JsonlTarget::File(path)) => format!("jsonl:{}", path.display()),
                SinkSpec::Exec(_) | SinkSpec::Postgres(_) => sink.clone(),
            },
            Some(name) => {
                let ok_start = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric());
                let ok_chars = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !(ok_start && ok_chars && name.len() <= 64) {
                    return Err(BadName::Shape(name.to_owned()));
                }
                if name == "sqlite" && *spec != SinkSpec::Sqlite {
                    return Err(BadName::Reserved);
                }
                name.to_owned()
            }
        };
        Ok(Destination { key, sink })
    }

    /// A destination known only by its key (from the state, or `cursor --destination`).
    pub fn named(key: impl Into<String>, sink: impl Into<String>) -> Destination {
        Destination {
            key: key.into(),
            sink: sink.into(),
        }
    }

    /// The key the state is kept under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How the sink was given, for `status`.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// How to name this destination on a command line, for the hints in error lines:
    /// nothing for the default sink, ` --sink '...'` for a derived one (a relative
    /// handler's from its directory), ` --destination NAME` for a named one.
    pub fn flag(&self) -> String {
        if self.key == "sqlite" {
            String::new()
        } else if self.key.starts_with("jsonl:") || self.key.starts_with("exec:") {
            let spec = SinkSpec::from_stored(&self.key)
                .map_or_else(|| self.key.clone(), |s| s.to_string());
            format!(" --sink '{}'", spec.replace('\'', r"'\''"))
        } else if self
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            format!(" --destination {}", self.key)
        } else {
            // A postgres:// destination's key: quoted for the shell.
            format!(" --destination '{}'", self.key.replace('\'', r"'\''"))
        }
    }

    /// The sink this destination was last given, read back from the state.
    pub fn sink_spec(&self) -> Option<SinkSpec> {
        SinkSpec::from_stored(&self.sink)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let cases: [(SinkSpec, Option<&str>, &str); 6] = [
            (SinkSpec::Sqlite, None, "sqlite"),
            (
                SinkSpec::Jsonl(JsonlTarget::File("/data/out.jsonl".into())),
                None,
                "jsonl:/data/out.jsonl",
            ),
            (SinkSpec::Jsonl(JsonlTarget::Stdout), None, "jsonl:-"),
            (
                SinkSpec::Exec(crate::sink::Handler::new("./load.sh --fast")),
                None,
                "exec:./load.sh --fast",
            ),
            (
                SinkSpec::Exec(crate::sink::Handler::new("./load.sh")),
                Some("warehouse"),
                "warehouse",
            ),
            (SinkSpec::Sqlite, Some("sqlite"), "sqlite"),
        ];
        for (spec, name, want) in cases {
            let got = Destination::of(&spec, name).unwrap();
            assert_eq!(got.key(), want, "{spec:?} {name:?}");
        }
        let refused = [
            (
                SinkSpec::Exec(crate::sink::Handler::new("x")),
                "sqlite",
                BadName::Reserved,
            ),
            (
                SinkSpec::Sqlite,
                "has space",
                BadName::Shape("has space".into()),
            ),
            (
                SinkSpec::Sqlite,
                "(unassigned)",
                BadName::Shape("(unassigned)".into()),
            ),
            (SinkSpec::Sqlite, "", BadName::Shape(String::new())),
        ];
        for (spec, name, want) in refused {
            assert_eq!(Destination::of(&spec, Some(name)), Err(want), "{name}");
        }
        let flags = [
            (SinkSpec::Sqlite, None, ""),
            (
                SinkSpec::Exec(crate::sink::Handler::new("./it's.sh")),
                None,
                r" --sink 'exec:./it'\''s.sh'",
            ),
            (
                SinkSpec::Sqlite,
                Some("warehouse"),
                " --destination warehouse",
            ),
        ];
        for (spec, name, want) in flags {
            assert_eq!(Destination::of(&spec, name).unwrap().flag(), want);
        }
    }
}
