//! `Millis`: an instant as HubSpot stores it, UTC epoch milliseconds, and the parsers
//! for the ways users and HubSpot write one.
//!
//! HubSpot answers with RFC 3339 strings (`2024-09-11T13:27:39.356Z`) and accepts epoch
//! milliseconds in search filters; users type RFC 3339, a plain date, epoch milliseconds
//! or an age such as `7d`. Everything inside the engine is `Millis`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// An instant in UTC epoch milliseconds, HubSpot's precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The earliest instant a first window starts from. HubSpot answers 500 to filters
    /// at the epoch itself (docs/HUBSPOT.md §3), so history starts one second later.
    pub const BEGINNING: Millis = Millis(1_000);

    /// The current wall-clock time.
    pub fn now() -> Millis {
        Millis(Utc::now().timestamp_millis())
    }

    /// This instant moved back by `d`, saturating.
    #[must_use]
    pub fn minus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(duration_ms(d)))
    }

    /// This instant moved forward by `d`, saturating.
    #[must_use]
    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(duration_ms(d)))
    }

    /// Parses what HubSpot puts in a datetime property: RFC 3339 or epoch milliseconds.
    pub fn parse_hubspot(s: &str) -> Option<Millis> {
        let s = s.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return Some(Millis(ms));
        }
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Millis(t.timestamp_millis()))
    }

    /// Parses what a user types for `--since`/`--until`: RFC 3339, a date (`2024-01-01`,
    /// midnight UTC), epoch milliseconds, or an age before `now` (`7d`, `36h`, `90m`).
    pub fn parse_user(s: &str, now: Millis) -> Option<Millis> {
        if let Some(t) = Millis::parse_hubspot(s) {
            return Some(t);
        }
        if let Ok(date) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
            let midnight = date.and_hms_opt(0, 0, 0)?.and_utc();
            return Some(Millis(midnight.timestamp_millis()));
        }
        // An age, with or without a leading minus (`-7d` reads as "7 days ago" too).
        let age = s.trim().strip_prefix('-').unwrap_or(s.trim());
        humantime::parse_duration(age)
            .ok()
            .map(|age| now.minus(age))
    }

    /// RFC 3339 with milliseconds and `Z`, as HubSpot writes it.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => self.0.to_string(),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_user_form() {
        let now = Millis(1_700_000_000_000);
        let cases = [
            ("2024-01-01", Some(1_704_067_200_000)),
            ("2024-01-01T00:00:01.5Z", Some(1_704_067_201_500)),
            ("2024-01-01T01:00:00+01:00", Some(1_704_067_200_000)),
            ("1704067200000", Some(1_704_067_200_000)),
            ("7d", Some(1_700_000_000_000 - 7 * 86_400_000)),
            ("36h", Some(1_700_000_000_000 - 36 * 3_600_000)),
            ("90m", Some(1_700_000_000_000 - 90 * 60_000)),
            ("-7d", Some(1_700_000_000_000 - 7 * 86_400_000)),
            ("yesterday", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(Millis::parse_user(input, now).map(|m| m.0), want, "{input}");
        }
    }

    #[test]
    fn round_trips_hubspot_format() {
        let t = Millis::parse_hubspot("2024-09-11T13:27:39.356Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-09-11T13:27:39.356Z");
    }
}
