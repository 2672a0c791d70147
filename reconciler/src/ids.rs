//! Identifiers: every rule about workspace and snapshot IDs, in one place. The config, the
//! persisted state, authorization and the operations all validate with these functions, so
//! an ID one of them accepts is accepted by all (SPEC §3, §5.2).
//!
//! Pure functions, plus the generators of derived and time-based IDs. An ID is validated
//! before any path is built from it: both kinds become one path component under the data root
//! or the snapshots root.

use crate::error::{Error, ErrorCode};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Maximum length of a snapshot ID in bytes (the kernel's NAME_MAX: it is one path component).
pub const MAX_SNAPSHOT_ID_LEN: usize = 255;
/// Maximum length of a workspace ID.
pub const MAX_WS_ID_LEN: usize = 64;
/// Names a workspace ID may not take: what ws-ckpt keeps next to the workspace subvolumes in
/// the data root (on the loop backend the data root is the mount, and `snapshots` is the
/// snapshots root itself; `gates` holds the storage gates, see `resolve`).
pub const RESERVED_WS_IDS: &[&str] = &["snapshots", "gates"];
/// The workspace-ID rule, as error messages state it.
pub const WS_ID_RULE: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
/// The snapshot-ID rule, as error messages state it.
pub const SNAPSHOT_ID_RULE: &str =
    "any UTF-8 name of 1-255 bytes (spaces and CJK allowed) that is not blank, \
     contains no / \\ NUL or control character, and does not start with a dot";

/// The first `len` bytes (at most all 32) of the SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8], len: usize) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(len)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `ws-` + the first 6 hex digits of SHA-256 of the absolute path.
pub fn derive_ws_id(path: &Path) -> String {
    format!("ws-{}", sha256_hex(path.as_os_str().as_encoded_bytes(), 3))
}

/// The derived ID for `path`, with `-2`, `-3`… appended while `taken(id)` says it is used by
/// another workspace.
pub fn allocate_ws_id(path: &Path, taken: impl Fn(&str) -> bool) -> String {
    first_free(derive_ws_id(path), taken)
}

/// `base`, or `base-2`, `base-3`… — the first that `taken` does not claim.
fn first_free(base: String, taken: impl Fn(&str) -> bool) -> String {
    if !taken(&base) {
        return base;
    }
    (2u32..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or(base)
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,max-1}`: safe as one path component (no `/`, never `.` or
/// `..`, never hidden).
fn is_component(id: &str, max: usize) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True for a valid snapshot ID (SPEC §5.2, upstream's alphabet): any UTF-8 name of at most
/// [`MAX_SNAPSHOT_ID_LEN`] bytes without `/`, `\`, NUL or control characters, not blank, and
/// not starting with `.` (which also rules out `.` and `..`, and keeps ws-ckpt's own hidden
/// temporary names in a snapshot directory apart from every snapshot). Such a name is always
/// exactly one path component.
pub fn is_valid_snapshot_id(id: &str) -> bool {
    snapshot_id_problem(id).is_none()
}

/// Why `id` is not a valid snapshot ID (one clause, for an error message), or `None`.
pub fn snapshot_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_SNAPSHOT_ID_LEN {
        Some("it is longer than 255 bytes")
    } else if id.trim().is_empty() {
        Some("it is only whitespace")
    } else if id.starts_with('.') {
        Some("it starts with a dot")
    } else if id.contains(['/', '\\']) {
        Some("it contains / or \\")
    } else if id.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    }
}

/// True for a valid workspace ID: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` and not one of
/// [`RESERVED_WS_IDS`].
pub fn is_valid_ws_id(id: &str) -> bool {
    ws_id_problem(id).is_none()
}

/// Why `id` is not a valid workspace ID (one clause, for an error message), or `None`.
pub fn ws_id_problem(id: &str) -> Option<String> {
    if !is_component(id, MAX_WS_ID_LEN) {
        Some(format!("it must match {WS_ID_RULE}"))
    } else if RESERVED_WS_IDS.contains(&id) {
        Some(format!(
            "\"{id}\" is the name of one of ws-ckpt's own directories in the data root"
        ))
    } else {
        None
    }
}

/// `Ok` for a valid snapshot ID, else an `InvalidArgument` error naming it and the rule.
pub fn check_snapshot_id(id: &str) -> Result<(), Error> {
    match snapshot_id_problem(id) {
        None => Ok(()),
        Some(problem) => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid snapshot ID {id:?}: {problem}"),
        )
        .hint(format!("snapshot IDs are {SNAPSHOT_ID_RULE}"))),
    }
}

/// A generated, sortable, time-based snapshot ID: `YYYYMMDD-HHMMSS-mmm` in UTC, with `-N`
/// appended while `taken(id)` is true.
pub fn generate_snapshot_id(now: SystemTime, taken: impl Fn(&str) -> bool) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = crate::time::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let base = format!(
        "{y:04}{mo:02}{day:02}-{:02}{:02}{:02}-{:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    );
    first_free(base, taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sha256_hex_is_a_prefix_of_the_digest_in_lowercase_hex() {
        let full = "d0f631ca1ddba8db3bcfcb9e057cdc98";
        assert_eq!(sha256_hex(b"c1", 16), full);
        assert_eq!(sha256_hex(b"c1", 3), &full[..6]);
        assert_eq!(sha256_hex(b"c1", 99).len(), 64, "at most the whole digest");
        // The name a checkpoint's record is kept under on disk (read back after upgrades).
        assert_eq!(
            crate::sys::checkpoint_record_name("c1"),
            format!("trusted.ws-ckpt.checkpoint.{full}")
        );
    }

    #[test]
    fn ws_id_is_stable_and_short() {
        let id = derive_ws_id(Path::new("/tmp/perf/wsA"));
        assert!(id.starts_with("ws-") && id.len() == 9, "{id}");
        assert_eq!(id, derive_ws_id(Path::new("/tmp/perf/wsA")));
        assert_ne!(id, derive_ws_id(Path::new("/tmp/perf/wsB")));
        assert!(id[3..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn ws_id_collisions_get_suffixes() {
        let p = Path::new("/x");
        let base = derive_ws_id(p);
        let second = format!("{base}-2");
        assert_eq!(allocate_ws_id(p, |id| id == base), second);
        assert_eq!(
            allocate_ws_id(p, |id| id == base || id == second),
            format!("{base}-3")
        );
    }

    #[test]
    fn snapshot_id_rules() {
        let long = "a".repeat(255);
        let cjk = "备".repeat(85); // 255 bytes
        for ok in [
            "a",
            "c1",
            "2026.11.24_x-y",
            "-a",
            "a b",
            " leading space",
            "é",
            "重构前备份",
            "a:b@c#d+e=f,g",
            "a.",
            long.as_str(),
            cjk.as_str(),
        ] {
            assert!(is_valid_snapshot_id(ok), "{ok}");
        }
        let too_long = "a".repeat(256);
        let cjk_too_long = format!("{cjk}a");
        for bad in [
            "",
            "   ",
            ".",
            "..",
            ".a",
            "../../x",
            "a/b",
            "a\\b",
            "nul\0in",
            "tab\tin",
            "nl\nin",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
            too_long.as_str(),
            cjk_too_long.as_str(),
        ] {
            assert!(!is_valid_snapshot_id(bad), "{bad:?}");
        }
        assert!(!is_valid_ws_id("snapshots"));
        assert!(is_valid_ws_id("ws-1a2b3c") && is_valid_ws_id(&"a".repeat(64)));
        assert!(!is_valid_ws_id(&"a".repeat(65)) && !is_valid_ws_id("../x"));
        assert!(ws_id_problem("snapshots").is_some_and(|p| p.contains("own directories")));
        let e = check_snapshot_id("a/b").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("\"a/b\""), "{}", e.message);
        assert!(check_snapshot_id("c1").is_ok());
    }

    #[test]
    fn generated_ids_sort_by_time_and_avoid_collisions() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let a = generate_snapshot_id(t, |_| false);
        assert_eq!(a.len(), 19, "{a}");
        assert!(a.ends_with("-123"), "{a}");
        assert!(is_valid_snapshot_id(&a));
        let b = generate_snapshot_id(t + Duration::from_secs(1), |_| false);
        assert!(b > a);
        assert_eq!(generate_snapshot_id(t, |id| id == a), format!("{a}-2"));
        assert_eq!(crate::time::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::time::civil_from_days(20_416), (2025, 11, 24));
    }
}
