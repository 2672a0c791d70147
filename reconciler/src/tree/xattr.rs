//! Extended attributes by descriptor: `flistxattr`/`fgetxattr`/`fsetxattr` on an open
//! descriptor, or — for the `O_PATH` descriptor of a symlink or special file, which the `f*`
//! calls refuse — the following `*xattr` calls on its `/proc/self/fd/N` magic link, which land on
//! exactly that inode (never on what a symlink points to).
//!
//! What it must not do: name an entry by a path inside a tree. Which namespaces are visible and
//! settable is decided by the kernel for the current credentials (`trusted.*` needs
//! `CAP_SYS_ADMIN`, `security.capability` needs `CAP_SETFCAP`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::fd::proc_path;

/// How to reach an inode's xattrs.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// An ordinary descriptor (regular file or directory).
    Fd(BorrowedFd<'a>),
    /// An `O_PATH` descriptor, reached through `/proc/self/fd/N`.
    Path(BorrowedFd<'a>),
}

/// Sorted list of (name, value).
pub(crate) type Xattrs = Vec<(CString, Vec<u8>)>;

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn ssize(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn list_raw(t: Target<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = if buf.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        (buf.as_mut_ptr().cast::<libc::c_char>(), buf.len())
    };
    match t {
        // SAFETY: `ptr` is null with size 0 (size query) or writable for `len` bytes.
        Target::Fd(fd) => ssize(unsafe { libc::flistxattr(fd.as_raw_fd(), ptr, len) }),
        Target::Path(fd) => {
            let p = proc_path(fd);
            // SAFETY: as above; `p` is NUL-terminated.
            ssize(unsafe { libc::listxattr(p.as_ptr(), ptr, len) })
        }
    }
}

fn get_raw(t: Target<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = if buf.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        (buf.as_mut_ptr().cast::<libc::c_void>(), buf.len())
    };
    match t {
        Target::Fd(fd) => {
            // SAFETY: `name` is NUL-terminated; `ptr` is null/0 or writable for `len` bytes.
            ssize(unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), ptr, len) })
        }
        Target::Path(fd) => {
            let p = proc_path(fd);
            // SAFETY: as above; `p` is NUL-terminated.
            ssize(unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), ptr, len) })
        }
    }
}

/// Names of all extended attributes, sorted; empty when the filesystem has none.
pub(crate) fn names(t: Target<'_>) -> io::Result<Vec<CString>> {
    loop {
        let need = match list_raw(t, &mut []) {
            Ok(n) => n,
            Err(e) if errno_of(&e) == libc::EOPNOTSUPP => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if need == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; need];
        let got = match list_raw(t, &mut buf) {
            Ok(n) => n,
            Err(e) if errno_of(&e) == libc::ERANGE => continue, // grew in between
            Err(e) => return Err(e),
        };
        buf.truncate(got);
        let mut names: Vec<CString> = buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            // ws-ckpt's own record on a workspace root is not part of the user's tree.
            .filter(|s| *s != super::CHECKPOINT_RECORD_XATTR.as_bytes())
            .filter_map(|s| CString::new(s).ok())
            .collect();
        names.sort();
        return Ok(names);
    }
}

/// Value of attribute `name`; `None` if it vanished.
pub(crate) fn get(t: Target<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    loop {
        let need = match get_raw(t, name, &mut []) {
            Ok(n) => n,
            Err(e) if errno_of(&e) == libc::ENODATA => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; need];
        if need == 0 {
            return Ok(Some(buf));
        }
        match get_raw(t, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if errno_of(&e) == libc::ERANGE => continue,
            Err(e) if errno_of(&e) == libc::ENODATA => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// All attributes with their values, sorted by name.
pub(crate) fn read_all(t: Target<'_>) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    for name in names(t)? {
        if let Some(value) = get(t, &name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// Set attribute `name` to `value`.
pub(crate) fn set(t: Target<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let rc = match t {
        // SAFETY: `name` is NUL-terminated; `value` is readable for `value.len()` bytes.
        Target::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        Target::Path(fd) => {
            let p = proc_path(fd);
            // SAFETY: as above; `p` is NUL-terminated.
            unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Remove attribute `name` (absent is fine).
pub(crate) fn remove(t: Target<'_>, name: &CStr) -> io::Result<()> {
    let rc = match t {
        // SAFETY: `name` is NUL-terminated and the descriptor is live.
        Target::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
        Target::Path(fd) => {
            let p = proc_path(fd);
            // SAFETY: both strings are NUL-terminated.
            unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if errno_of(&e) != libc::ENODATA {
            return Err(e);
        }
    }
    Ok(())
}

/// ACLs that a new entry may have inherited from its directory's default ACL.
pub(crate) fn is_inheritable_acl(name: &CStr) -> bool {
    matches!(
        name.to_bytes(),
        b"system.posix_acl_access" | b"system.posix_acl_default"
    )
}

/// The first difference between two sorted attribute lists, as a message.
pub(crate) fn describe_diff(a: &[(CString, Vec<u8>)], b: &[(CString, Vec<u8>)]) -> Option<String> {
    for (name, value) in a {
        match b.iter().find(|(n, _)| n == name) {
            None => {
                return Some(format!(
                    "xattr {} missing from the copy",
                    name.to_string_lossy()
                ))
            }
            Some((_, v)) if v != value => {
                return Some(format!(
                    "xattr {} has a different value",
                    name.to_string_lossy()
                ))
            }
            Some(_) => {}
        }
    }
    b.iter()
        .find(|(n, _)| !a.iter().any(|(m, _)| m == n))
        .map(|(name, _)| {
            format!(
                "xattr {} in the copy is not in the original",
                name.to_string_lossy()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn x(name: &str, v: &[u8]) -> (CString, Vec<u8>) {
        (CString::new(name).unwrap(), v.to_vec())
    }

    #[test]
    fn diffs_name_the_attribute() {
        let a = vec![x("user.a", b"1"), x("user.b", b"2")];
        assert_eq!(describe_diff(&a, &a), None);
        let m = describe_diff(&a, &[x("user.a", b"1")]).unwrap();
        assert!(m.contains("user.b missing"), "{m}");
        let m = describe_diff(&a, &[x("user.a", b"9"), x("user.b", b"2")]).unwrap();
        assert!(m.contains("user.a has a different value"), "{m}");
        let m = describe_diff(&a[..1], &a).unwrap();
        assert!(
            m.contains("user.b in the copy is not in the original"),
            "{m}"
        );
    }

    #[test]
    fn xattrs_round_trip_by_descriptor_and_by_proc_path() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let fd = Target::Fd(f.as_fd());
        let name = c"user.ws-ckpt.test";
        match set(fd, name, b"v\0alue") {
            Err(e) if errno_of(&e) == libc::EOPNOTSUPP => {
                eprintln!(
                    "user xattrs unsupported on {}; nothing to test",
                    p.display()
                );
                return;
            }
            other => other.unwrap(),
        }
        assert_eq!(get(fd, name).unwrap().unwrap(), b"v\0alue");
        let opath = super::super::fd::open_child_path(
            std::fs::File::open(tmp.path()).unwrap().as_fd(),
            c"f",
        )
        .unwrap();
        let via_proc = Target::Path(opath.as_fd());
        assert_eq!(
            read_all(via_proc).unwrap(),
            vec![x("user.ws-ckpt.test", b"v\0alue")]
        );
        set(via_proc, c"user.second", b"").unwrap();
        assert_eq!(names(fd).unwrap().len(), 2);
        assert_eq!(get(fd, c"user.second").unwrap().unwrap(), b"");
        remove(fd, c"user.second").unwrap();
        remove(fd, c"user.second").unwrap();
        assert_eq!(get(fd, c"user.second").unwrap(), None);
        assert!(is_inheritable_acl(c"system.posix_acl_access"));
        assert!(!is_inheritable_acl(c"user.x"));
    }
}
