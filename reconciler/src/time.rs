//! Wall-clock helpers: RFC 3339 timestamps as stored in state.json and the indexes.
//!
//! Only formatting and parsing; no clock decisions (callers pass `now`).

use std::time::SystemTime;

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
}
