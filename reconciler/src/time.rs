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

/// `t` in the local time zone, `2026-12-01 23:36:39`, for tables (JSON keeps RFC 3339 UTC).
/// RFC 3339 UTC when the local time cannot be computed.
pub fn format_local(t: SystemTime) -> String {
    let Some(secs) = t
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| libc::time_t::try_from(d.as_secs()).ok())
    else {
        return format_rfc3339(t);
    };
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `secs` and `tm` are valid for the call; localtime_r writes only into `tm`
    // (thread-safe, unlike localtime) and returns null on failure.
    let done = unsafe { libc::localtime_r(&secs, tm.as_mut_ptr()) };
    if done.is_null() {
        return format_rfc3339(t);
    }
    // SAFETY: localtime_r succeeded, so it filled `tm` (and the zeroed start was already a
    // valid `tm`: integers and a null zone pointer).
    let tm = unsafe { tm.assume_init() };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// How long before `now` the time `t` was, as people say it: `just now`, `45 s ago`,
/// `3 min ago`, `5 h ago`, `1 day ago`, `12 days ago`, `3 months ago`, `2 years ago`.
pub fn age(now: SystemTime, t: SystemTime) -> String {
    let Ok(d) = now.duration_since(t) else {
        return "in the future".to_string();
    };
    let s = d.as_secs();
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one} ago")
        } else {
            format!("{n} {many} ago")
        }
    };
    match s {
        0..=4 => "just now".to_string(),
        5..=59 => format!("{s} s ago"),
        60..=3_599 => format!("{} min ago", s / 60),
        3_600..=86_399 => format!("{} h ago", s / 3_600),
        86_400..=5_183_999 => plural(s / 86_400, "day", "days"),
        5_184_000..=63_071_999 => plural(s / 2_592_000, "month", "months"),
        _ => plural(s / 31_536_000, "year", "years"),
    }
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
    fn ages_read_like_people_say_them() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let ago = |s: u64| age(now, now - Duration::from_secs(s));
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(45), "45 s ago");
        assert_eq!(ago(180), "3 min ago");
        assert_eq!(ago(5 * 3600 + 10), "5 h ago");
        assert_eq!(ago(86_400), "1 day ago");
        assert_eq!(ago(12 * 86_400), "12 days ago");
        assert_eq!(ago(95 * 86_400), "3 months ago");
        assert_eq!(ago(2 * 365 * 86_400), "2 years ago");
        assert_eq!(age(now, now + Duration::from_secs(5)), "in the future");
    }

    #[test]
    fn local_time_has_the_table_shape() {
        let t = format_local(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        assert_eq!(t.len(), 19, "{t}");
        assert_eq!((&t[4..5], &t[10..11], &t[13..14]), ("-", " ", ":"), "{t}");
    }

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
