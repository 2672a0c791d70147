//! Names of the temporary entries ws-ckpt creates next to a user's path (the copy of init and
//! release, the link of a symlink replacement): derived from the original name, never appended
//! to it, so that every name that fits `NAME_MAX` gets a temporary sibling that fits too.
//!
//! Format: `.ws-ckpt-<tag>-<hash>-<op id>`, where `<hash>` is the first 12 hex digits of the
//! SHA-256 of the original name, `<tag>` says what the entry is for (`[a-z0-9]`, at most 16
//! characters) and `<op id>` is the operation's id (`[A-Za-z0-9-]`, at most 64 characters). At
//! most 103 bytes in all. [`parse_temp_name`] and [`is_temp_name_for`] recognise them again, so
//! recovery and orphan reports only ever touch names ws-ckpt made.
//!
//! What it must not do: produce a name containing `/` or NUL, longer than 255 bytes, or one that
//! could be confused with a user's file (every name starts with [`TEMP_PREFIX`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Every temporary name starts with this.
pub const TEMP_PREFIX: &str = ".ws-ckpt-";
/// Hex digits of the name hash.
const HASH_LEN: usize = 12;
const TAG_MAX: usize = 16;
const OP_ID_MAX: usize = 64;
/// Longest file name Linux accepts.
pub const NAME_MAX: usize = 255;

/// The parts of a temporary name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempName {
    /// What it is for (`init`, `release`, `link`, …).
    pub tag: String,
    /// Hash of the original name (12 hex digits).
    pub hash: String,
    /// The operation id.
    pub op_id: String,
}

/// The 12-hex-digit hash of an original name.
fn name_hash(original: &OsStr) -> String {
    let digest = Sha256::digest(original.as_bytes());
    digest
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn clean(s: &str, max: usize, allow_dash: bool) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || (allow_dash && *c == '-'))
        .map(|c| {
            if allow_dash {
                c
            } else {
                c.to_ascii_lowercase()
            }
        })
        .take(max)
        .collect();
    if out.is_empty() {
        "x".to_string()
    } else {
        out
    }
}

/// The temporary sibling name for `original` (a file name, not a path). `tag` and `op_id` are
/// reduced to their allowed characters and lengths (ws-ckpt's own values already are).
pub fn temp_sibling_name(original: &OsStr, tag: &str, op_id: &str) -> OsString {
    let name = format!(
        "{TEMP_PREFIX}{}-{}-{}",
        clean(tag, TAG_MAX, false),
        name_hash(original),
        clean(op_id, OP_ID_MAX, true)
    );
    debug_assert!(name.len() <= NAME_MAX);
    OsString::from_vec(name.into_bytes())
}

/// `path` with its last component replaced by [`temp_sibling_name`] of it (`path` itself for
/// the root).
pub fn temp_sibling(path: &Path, tag: &str, op_id: &str) -> PathBuf {
    match path.file_name() {
        Some(name) => path.with_file_name(temp_sibling_name(name, tag, op_id)),
        None => path.join(temp_sibling_name(OsStr::new(""), tag, op_id)),
    }
}

/// The parts of a temporary name made by [`temp_sibling_name`], or `None` for any other name.
pub fn parse_temp_name(name: &OsStr) -> Option<TempName> {
    let s = std::str::from_utf8(name.as_bytes()).ok()?;
    let rest = s.strip_prefix(TEMP_PREFIX)?;
    let (tag, rest) = rest.split_once('-')?;
    let (hash, op_id) = rest.split_once('-')?;
    let tag_ok = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let hash_ok = hash.len() == HASH_LEN
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let op_ok = !op_id.is_empty()
        && op_id.len() <= OP_ID_MAX
        && op_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (tag_ok && hash_ok && op_ok).then(|| TempName {
        tag: tag.to_string(),
        hash: hash.to_string(),
        op_id: op_id.to_string(),
    })
}

/// Whether `temp` is a temporary sibling name made for `original` (any tag and op id).
pub fn is_temp_name_for(original: &OsStr, temp: &OsStr) -> bool {
    parse_temp_name(temp).is_some_and(|t| t.hash == name_hash(original))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_name_max_even_for_the_longest_names() {
        let long = "n".repeat(NAME_MAX);
        let op = "6650f1a2b3c00123-123456-789";
        let t = temp_sibling_name(OsStr::new(&long), "release", op);
        assert!(t.len() <= NAME_MAX, "{}", t.len());
        assert!(t.to_str().unwrap().starts_with(".ws-ckpt-release-"));
        assert!(t.to_str().unwrap().ends_with(op));
        let worst = temp_sibling_name(OsStr::new(&long), &"T".repeat(300), &"9".repeat(300));
        assert!(worst.len() <= 103, "{}", worst.len());
        assert!(!worst.as_bytes().contains(&b'/'));
    }

    #[test]
    fn names_are_derived_deterministically_and_recognised() {
        let a = temp_sibling_name(OsStr::new("proj"), "init", "abc-1-2");
        assert_eq!(a, temp_sibling_name(OsStr::new("proj"), "init", "abc-1-2"));
        assert_ne!(a, temp_sibling_name(OsStr::new("proj2"), "init", "abc-1-2"));
        let parsed = parse_temp_name(&a).unwrap();
        assert_eq!(parsed.tag, "init");
        assert_eq!(parsed.op_id, "abc-1-2");
        assert!(is_temp_name_for(OsStr::new("proj"), &a));
        assert!(!is_temp_name_for(OsStr::new("other"), &a));
        // Non-UTF-8 originals hash fine.
        let bin = OsStr::from_bytes(b"\xff\xfe name");
        assert!(is_temp_name_for(bin, &temp_sibling_name(bin, "link", "1")));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for n in [
            "proj",
            ".ws-ckpt-",
            ".ws-ckpt-init",
            ".ws-ckpt-init-0123456789ab",
            ".ws-ckpt-init-0123456789ab-",
            ".ws-ckpt-INIT-0123456789ab-op",
            ".ws-ckpt-init-0123456789AB-op",
            ".ws-ckpt-init-0123456789a-op",
            ".ws-ckpt-init-0123456789ab-op/x",
            ".proj.ws-ckpt-init-1234",
        ] {
            assert_eq!(parse_temp_name(OsStr::new(n)), None, "{n}");
        }
        assert!(parse_temp_name(OsStr::new(".ws-ckpt-init-0123456789ab-op-1")).is_some());
    }

    #[test]
    fn sibling_paths_replace_the_last_component() {
        let p = temp_sibling(Path::new("/home/a/proj"), "init", "o1");
        assert_eq!(p.parent(), Some(Path::new("/home/a")));
        assert!(is_temp_name_for(OsStr::new("proj"), p.file_name().unwrap()));
    }
}
