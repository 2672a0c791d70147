//! Paths a caller names: made absolute and normalized the same way everywhere (the CLI before
//! sending a request, authorization, and the operations), without resolving the final
//! component, which for a workspace is the symlink itself.
//!
//! Reads only the current directory and the parent's canonical path; changes nothing.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Make a user-supplied path absolute and normalized without resolving its final component
/// (which is a symlink for a workspace): the parent is canonicalized.
pub fn absolute_user_path(p: &Path) -> Result<PathBuf> {
    let norm = lexical_absolute(p)?;
    let (Some(parent), Some(name)) = (norm.parent(), norm.file_name()) else {
        return Ok(norm);
    };
    match std::fs::canonicalize(parent) {
        Ok(cp) => Ok(cp.join(name)),
        Err(_) => Ok(norm),
    }
}

/// Make `p` absolute (against the current directory) and remove `.` and `..` lexically,
/// resolving nothing on disk. What the daemon does with a path a caller sent: the caller's
/// CLI already resolved it ([`absolute_user_path`], as the caller); resolving it again as root
/// would follow whatever symlink the caller put there in the meantime.
pub fn lexical_absolute(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("current directory", Path::new("."), e))?
            .join(p)
    };
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                norm.pop();
            }
            std::path::Component::CurDir => {}
            other => norm.push(other),
        }
    }
    Ok(norm)
}
