//! Human-readable durations for the config file and the CLI: `"90s"`, `"15m"`, `"24h"`,
//! `"30d"`, `"2w"`, compounds such as `"1h30m"`, and `"0"` for zero.
//!
//! Pure string conversion only: this module must not read clocks or files.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error(
        "empty duration; write a number with a unit such as \"60s\", \"24h\" or \"30d\", or \"0\""
    )]
    Empty,
    /// A number was not followed by a unit.
    #[error(
        "duration \"{0}\" has a number without a unit; add one of s, m, h, d, w (e.g. \"{0}s\")"
    )]
    MissingUnit(String),
    /// An unknown unit or stray character was found.
    #[error("invalid duration \"{text}\": unexpected `{found}`; units are s, m, h, d, w (e.g. \"90s\", \"24h\", \"30d\", \"2w\")")]
    BadUnit {
        /// The whole input.
        text: String,
        /// The offending character.
        found: char,
    },
    /// The value does not fit in 64 bits of seconds.
    #[error("duration \"{0}\" is too large")]
    Overflow(String),
}

const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parse a duration string: one or more `<digits><unit>` groups with units `s m h d w`, or
/// the bare string `"0"`. Surrounding whitespace is ignored; nothing else is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.chars().all(|c| c == '0') {
        return Ok(Duration::ZERO);
    }
    let overflow = || DurationError::Overflow(text.to_string());
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(overflow)?,
            );
            continue;
        }
        let unit = UNITS.iter().find(|(u, _)| *u == c).map(|(_, secs)| *secs);
        match (number.take(), unit) {
            (Some(n), Some(secs)) => {
                total = n
                    .checked_mul(secs)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(overflow)?;
            }
            _ => {
                return Err(DurationError::BadUnit {
                    text: text.to_string(),
                    found: c,
                })
            }
        }
    }
    if number.is_some() {
        return Err(DurationError::MissingUnit(s.to_string()));
    }
    Ok(Duration::from_secs(total))
}

/// Format a duration with the largest unit that represents it exactly (`86400s` → `"1d"`,
/// `90s` → `"90s"`, zero → `"0"`). Sub-second parts are dropped. The result parses back with
/// [`parse_duration`] to the same whole number of seconds.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0".to_string();
    }
    for (unit, size) in UNITS {
        if (secs / size) * size == secs {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_compounds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration(" 60s "), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("60"),
            Err(DurationError::MissingUnit("60".into()))
        );
        assert!(matches!(
            parse_duration("5x"),
            Err(DurationError::BadUnit { found: 'x', .. })
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::BadUnit { found: 'h', .. })
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::BadUnit { found: '-', .. })
        ));
        assert!(matches!(
            parse_duration("1.5h"),
            Err(DurationError::BadUnit { found: '.', .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999w"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("9999999999999999w"),
            Err(DurationError::Overflow(_))
        ));
        let msg = parse_duration("60").unwrap_err().to_string();
        assert!(msg.contains("\"60s\""), "{msg}");
    }

    #[test]
    fn formats_with_largest_exact_unit_and_round_trips() {
        assert_eq!(format_duration(Duration::ZERO), "0");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "2w");
        assert_eq!(format_duration(Duration::from_secs(36 * 3_600)), "36h");
        for secs in [1, 59, 61, 3_599, 3_600, 86_399, 604_800, 1_000_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs}");
        }
    }
}
