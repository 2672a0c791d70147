//! Transitional path-based entry points over [`crate::tree`], kept so the executor's call
//! sites stay unchanged until they are wired to [`crate::tree::Job`] with owners and recorded
//! identities (see the wiring guide in [`crate::tree`]).
//!
//! Each function opens its roots by path (the last component never followed, earlier ones
//! resolved normally) and then runs the descriptor engine in-process with the calling
//! process's credentials: inside the trees nothing is followed, no mount is crossed and
//! metadata is set on descriptors. What these shims cannot give: running as the tree's owner
//! and checking a *recorded* identity — [`remove_tree`] checks the identity it finds when it
//! starts.
//!
//! What it must not do: grow behaviour of its own; new callers use [`crate::tree`].

use std::path::Path;

use crate::tree::{Compare, Dir, Job};
pub use crate::tree::{Progress, TreeError as CopyError, TreeStats as CopyStats};

/// Copy the contents of directory `src` into the existing, empty directory `dst`, then give
/// `dst` itself `src`'s metadata ([`Job::copy`], in-process).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CopyStats, CopyError> {
    let (s, d) = (Dir::open(src)?, Dir::open(dst)?);
    Job::in_process().with_progress(progress).copy(&s, &d)
}

/// Prove `b` a faithful copy of `a`, content included ([`Compare::Full`]).
pub fn verify_tree(a: &Path, b: &Path) -> Result<CopyStats, CopyError> {
    Job::in_process().verify(&Dir::open(a)?, &Dir::open(b)?, Compare::Full)
}

/// [`verify_tree`] without reading file contents ([`Compare::Metadata`]).
pub fn verify_tree_metadata(a: &Path, b: &Path) -> Result<CopyStats, CopyError> {
    Job::in_process().verify(&Dir::open(a)?, &Dir::open(b)?, Compare::Metadata)
}

/// Remove the tree at `path` (`Ok` if there is nothing; a non-directory is unlinked). Mount
/// points inside make it fail before anything is deleted.
pub fn remove_tree(path: &Path) -> Result<(), CopyError> {
    let Some(name) = path.file_name() else {
        return Err(CopyError::BadDestination {
            path: path.to_path_buf(),
            what: "it has no last component to remove".into(),
        });
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = match Dir::open(parent) {
        Ok(d) => d,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(st) = parent.child_stat(name)? else {
        return Ok(());
    };
    Job::in_process()
        .remove(&parent, name, st.identity())
        .map(drop)
}
