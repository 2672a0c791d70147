//! Wall-clock helpers: RFC 3339 timestamps as stored in state.json and the indexes, and the
//! [`Timestamp`] type that parses a stored one once, when it is read.
//!
//! Only formatting and parsing; no clock decisions (callers pass `now`).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stored RFC 3339 timestamp: its text exactly as written (saved back unchanged) and its
/// value, parsed once when read (`None` when the text is malformed).
///
/// Compact: 16 bytes and no allocation when the text is the canonical rendering of its value
/// (`YYYY-MM-DDTHH:MM:SS`, 0 to 9 fraction digits, then `Z`, `+00:00` or nothing: what this
/// version, humantime and upstream's chrono write), so the text is rendered again when it is
/// asked for; any other text (malformed, leap second, lower precision than its digits
/// say…) is kept as it was read. Which one is decided by rendering the parsed value and
/// comparing, so the text read is always the text written.
#[derive(Clone, PartialEq, Eq)]
pub struct Timestamp(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// The canonical rendering of `secs`.`nanos` since the epoch with `digits` fraction
    /// digits and `zone`.
    Exact {
        secs: u64,
        nanos: u32,
        digits: Digits,
        zone: Zone,
    },
    /// Anything else: the text as read.
    Text(Box<TextStamp>),
}

#[derive(Clone, PartialEq, Eq)]
struct TextStamp {
    text: Box<str>,
    at: Option<SystemTime>,
}

/// Number of fraction digits of an [`Repr::Exact`] timestamp.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Digits {
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    D8,
    D9,
}

impl Digits {
    const ALL: [Digits; 10] = [
        Digits::D0,
        Digits::D1,
        Digits::D2,
        Digits::D3,
        Digits::D4,
        Digits::D5,
        Digits::D6,
        Digits::D7,
        Digits::D8,
        Digits::D9,
    ];

    fn count(self) -> usize {
        self as usize
    }
}

/// The zone suffix of an [`Repr::Exact`] timestamp.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// `Z`.
    Z,
    /// `+00:00`.
    Utc,
    /// Nothing.
    Bare,
}

impl Zone {
    fn text(self) -> &'static str {
        match self {
            Zone::Z => "Z",
            Zone::Utc => "+00:00",
            Zone::Bare => "",
        }
    }
}

/// Longest canonical rendering: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+00:00`.
const MAX_RENDERED: usize = 35;
/// 10000-01-01T00:00:00Z: four-digit years only.
const MAX_EXACT_SECS: u64 = 253_402_300_800;

/// `secs`.`nanos` rendered as RFC 3339 into `buf`; the length written. `secs` must be below
/// [`MAX_EXACT_SECS`].
fn render(
    secs: u64,
    nanos: u32,
    digits: Digits,
    zone: Zone,
    buf: &mut [u8; MAX_RENDERED],
) -> usize {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut n = 0;
    let mut put = |v: u64, width: usize, after: &[u8]| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[n + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        n += width;
        buf[n..n + after.len()].copy_from_slice(after);
        n += after.len();
    };
    put(y as u64, 4, b"-");
    put(u64::from(mo), 2, b"-");
    put(u64::from(d), 2, b"T");
    put(rem / 3600, 2, b":");
    put(rem / 60 % 60, 2, b":");
    let count = digits.count();
    put(rem % 60, 2, if count > 0 { b"." } else { b"" });
    put(
        u64::from(nanos) / 10u64.pow(9 - count as u32),
        count,
        zone.text().as_bytes(),
    );
    n
}

impl Timestamp {
    /// `text`, parsed.
    pub fn parse(text: impl Into<String>) -> Timestamp {
        let text = text.into();
        Timestamp::exact(&text).unwrap_or_else(|at| {
            Timestamp(Repr::Text(Box::new(TextStamp {
                text: text.into_boxed_str(),
                at,
            })))
        })
    }

    /// `text`, parsed (allocating only when it is not a canonical rendering).
    fn parse_str(text: &str) -> Timestamp {
        Timestamp::exact(text).unwrap_or_else(|at| {
            Timestamp(Repr::Text(Box::new(TextStamp {
                text: text.into(),
                at,
            })))
        })
    }

    /// The compact form of `text` when rendering its value gives `text` back; otherwise
    /// its value (`None` when malformed).
    fn exact(text: &str) -> Result<Timestamp, Option<SystemTime>> {
        let at = parse_rfc3339(text);
        let Some(d) = at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) else {
            return Err(at);
        };
        if d.as_secs() >= MAX_EXACT_SECS {
            return Err(at);
        }
        let b = text.as_bytes();
        let count = match b.get(19) {
            Some(b'.') => b[20..].iter().take_while(|c| c.is_ascii_digit()).count(),
            _ => 0,
        };
        let frac_end = if count > 0 { 20 + count } else { 19 };
        let zone = match text.get(frac_end..) {
            Some("Z") => Zone::Z,
            Some("+00:00") => Zone::Utc,
            Some("") => Zone::Bare,
            _ => return Err(at),
        };
        let Some(&digits) = Digits::ALL.get(count) else {
            return Err(at);
        };
        let t = Timestamp(Repr::Exact {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
            digits,
            zone,
        });
        if t.with_text(|s| s == text) {
            Ok(t)
        } else {
            Err(at)
        }
    }

    /// `t` with nanosecond precision (the precision snapshot entries are written with).
    pub fn nanos(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) if d.as_secs() < MAX_EXACT_SECS => Timestamp(Repr::Exact {
                secs: d.as_secs(),
                nanos: d.subsec_nanos(),
                digits: Digits::D9,
                zone: Zone::Z,
            }),
            _ => Timestamp(Repr::Text(Box::new(TextStamp {
                text: format_rfc3339_nanos(t).into_boxed_str(),
                at: Some(t),
            }))),
        }
    }

    /// The text as stored (rendered again for a compact timestamp).
    pub fn as_str(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Text(t) => Cow::Borrowed(&t.text),
            Repr::Exact { .. } => Cow::Owned(self.with_text(str::to_string)),
        }
    }

    /// `f` of the text as stored, without allocating.
    pub(crate) fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Text(t) => f(&t.text),
            Repr::Exact {
                secs,
                nanos,
                digits,
                zone,
            } => {
                let mut buf = [0u8; MAX_RENDERED];
                let n = render(*secs, *nanos, *digits, *zone, &mut buf);
                // Only ASCII digits and separators were written.
                f(std::str::from_utf8(&buf[..n]).unwrap_or_default())
            }
        }
    }

    /// The time, when the text is a valid timestamp.
    pub fn time(&self) -> Option<SystemTime> {
        match &self.0 {
            Repr::Text(t) => t.at,
            Repr::Exact { secs, nanos, .. } => Some(UNIX_EPOCH + Duration::new(*secs, *nanos)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|s| f.write_str(s))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|s| write!(f, "Timestamp({s:?})"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Ok(Timestamp::parse_str(s))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Timestamp, E> {
                Ok(Timestamp::parse(s))
            }
        }
        d.deserialize_string(V)
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    fn compact_timestamps_render_like_humantime() {
        // Every day boundary of a few leap and non-leap years, odd times of day, and the ends
        // of the range.
        let mut times: Vec<u64> = vec![0, 1, 59, 86_399, 86_400, 951_782_400, 4_107_542_400];
        times.extend((0..3_000).map(|d| 1_700_000_000 + d * 86_400 + d % 7 * 3_607));
        times.push(MAX_EXACT_SECS - 1);
        for secs in times {
            for nanos in [0, 1, 999_999_999, 123_456_789, 500_000_000, 120_000] {
                let t = UNIX_EPOCH + Duration::new(secs, nanos);
                let n = Timestamp::nanos(t);
                assert!(matches!(n.0, Repr::Exact { .. }));
                assert_eq!(n.as_str(), format_rfc3339_nanos(t));
                assert_eq!(n.time(), Some(t));
                let s = Timestamp::parse(format_rfc3339(t));
                assert!(matches!(s.0, Repr::Exact { .. }), "{s:?}");
                assert_eq!(s.as_str(), format_rfc3339(t));
                let millis = humantime::format_rfc3339_millis(t).to_string();
                let m = Timestamp::parse(millis.as_str());
                assert!(matches!(m.0, Repr::Exact { .. }), "{m:?}");
                assert_eq!((m.as_str(), m.to_string()), (millis.clone().into(), millis));
            }
        }
        // The last second of four-digit years.
        let far = UNIX_EPOCH + Duration::from_secs(MAX_EXACT_SECS - 1);
        assert_eq!(
            Timestamp::nanos(far).as_str(),
            "9999-12-31T23:59:59.000000000Z"
        );
    }

    #[test]
    fn every_text_reads_back_exactly() {
        for (text, compact) in [
            ("2026-11-24T15:07:42Z", true),
            ("2026-11-24T15:07:42.5Z", true),
            ("2026-11-24T15:07:42.000000000Z", true),
            ("2026-11-24T15:07:42.123456+00:00", true),
            ("2026-11-24T15:07:42", true),
            ("2026-11-24T15:07:42.1234567891Z", false),
            ("2026-11-24 15:07:42Z", false),
            ("2026-11-24T15:07:42.5+05:00", false),
            ("2026-11-24T15:07:60Z", false),
            ("2026-11-24T15:07:42ZZ", false),
            ("2026-11-24T15:07:42.Z", false),
            ("1969-12-31T23:59:59Z", false),
            ("yesterday", false),
            ("", false),
        ] {
            let t = Timestamp::parse(text);
            assert_eq!(matches!(t.0, Repr::Exact { .. }), compact, "{text}");
            assert_eq!(t.as_str(), text);
            assert_eq!(t.time(), parse_rfc3339(text), "{text}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("{text:?}"));
            let read: Timestamp = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(read, t, "{text}");
        }
        assert_eq!(std::mem::size_of::<Timestamp>(), 16);
    }

    #[test]
    fn timestamps_keep_their_text_and_parse_once() {
        let t = Timestamp::parse("2026-11-24T15:07:42Z");
        assert_eq!(t.as_str(), "2026-11-24T15:07:42Z");
        assert_eq!(t.time(), parse_rfc3339("2026-11-24T15:07:42Z"));
        let bad: Timestamp = serde_json::from_str("\"yesterday\"").unwrap();
        assert_eq!((&*bad.as_str(), bad.time()), ("yesterday", None));
        assert_eq!(serde_json::to_string(&bad).unwrap(), "\"yesterday\"");
        let n = UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        assert_eq!(Timestamp::nanos(n).time(), Some(n));
    }
}
