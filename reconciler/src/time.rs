//! Wall-clock helpers: RFC 3339 timestamps as stored in state.json and the indexes, and the
//! [`Timestamp`] type that parses a stored one once, when it is read.
//!
//! Only formatting and parsing; no clock decisions (callers pass `now`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::SystemTime;

/// A stored RFC 3339 timestamp: its text exactly as written (saved back unchanged) and its
/// value, parsed once when read (`None` when the text is malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    at: Option<SystemTime>,
}

impl Timestamp {
    /// `text`, parsed.
    pub fn parse(text: impl Into<String>) -> Timestamp {
        let text = text.into();
        let at = parse_rfc3339(&text);
        Timestamp { text, at }
    }

    /// `t` with nanosecond precision (the precision snapshot entries are written with).
    pub fn nanos(t: SystemTime) -> Timestamp {
        Timestamp {
            text: format_rfc3339_nanos(t),
            at: Some(t),
        }
    }

    /// The text as stored.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The time, when the text is a valid timestamp.
    pub fn time(&self) -> Option<SystemTime> {
        self.at
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Timestamp::parse)
    }
}

/// Format a time as RFC 3339 UTC with second precision (`2026-11-24T15:07:42Z`).
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Format a time as RFC 3339 UTC with nanosecond precision (used where ordering matters).
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Parse an RFC 3339 timestamp (any precision, `Z` or no zone). `None` when malformed.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

/// Current time as RFC 3339 with second precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn round_trips_seconds_and_nanos() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let s = format_rfc3339(t);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(t));
        let tn = t + Duration::from_nanos(123_456_789);
        assert_eq!(parse_rfc3339(&format_rfc3339_nanos(tn)), Some(tn));
        assert!(parse_rfc3339("2026-11-24T15:07:42Z").is_some());
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn timestamps_keep_their_text_and_parse_once() {
        let t = Timestamp::parse("2026-11-24T15:07:42Z");
        assert_eq!(t.as_str(), "2026-11-24T15:07:42Z");
        assert_eq!(t.time(), parse_rfc3339("2026-11-24T15:07:42Z"));
        let bad: Timestamp = serde_json::from_str("\"yesterday\"").unwrap();
        assert_eq!((bad.as_str(), bad.time()), ("yesterday", None));
        assert_eq!(serde_json::to_string(&bad).unwrap(), "\"yesterday\"");
        let n = UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        assert_eq!(Timestamp::nanos(n).time(), Some(n));
    }
}
