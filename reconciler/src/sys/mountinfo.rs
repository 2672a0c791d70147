//! Parsing of `/proc/self/mountinfo` into [`MountEntry`] values, and lookup of the mount that
//! contains a path.
//!
//! Parsing is pure ([`parse_mountinfo`]); [`read_mountinfo`] only reads the file and
//! [`mount_table_changed`] only polls it. This module must not canonicalize paths, stat
//! anything, or decide what a mount means.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{MountEntry, SysError, SysResult};

/// Where the kernel publishes this process's mount table.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// Parse the text of a mountinfo file. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    parse_mountinfo_bytes(text.as_bytes())
}

/// Parse mountinfo bytes (mount points need not be UTF-8). Malformed lines are skipped.
pub fn parse_mountinfo_bytes(bytes: &[u8]) -> Vec<MountEntry> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

/// Read and parse `/proc/self/mountinfo`.
pub fn read_mountinfo() -> SysResult<Vec<MountEntry>> {
    let path = Path::new(MOUNTINFO_PATH);
    let bytes = std::fs::read(path).map_err(|e| SysError::io("read mount table", path, e))?;
    Ok(parse_mountinfo_bytes(&bytes))
}

/// Whether the mount table changed since the last look through `file` (an open
/// [`MOUNTINFO_PATH`]; the kernel flags it with POLLPRI/POLLERR once per change, and this
/// look clears the flag). Waits up to `timeout_ms` for a change (`-1`: until one comes).
pub fn mount_table_changed(file: &std::fs::File, timeout_ms: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let wanted = libc::POLLPRI | libc::POLLERR;
    let mut pfd = [libc::pollfd {
        fd: file.as_raw_fd(),
        events: wanted,
        revents: 0,
    }];
    super::poll(&mut pfd, timeout_ms)?;
    Ok(pfd[0].revents & wanted != 0)
}

/// The mount whose mount point is the longest component-wise prefix of `path`. When several
/// entries share that mount point, the last one wins (it is stacked on top). `path` is used as
/// given: the caller canonicalizes it if symlinks may be involved.
pub fn find_mount_containing<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        if !path.starts_with(&m.mount_point) {
            continue;
        }
        let longer_or_same = match best {
            None => true,
            Some(b) => m.mount_point.components().count() >= b.mount_point.components().count(),
        };
        if longer_or_same {
            best = Some(m);
        }
    }
    best
}

/// One line: `id parent major:minor root mount_point options [optional...] - fstype source super`.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let mount_id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let _parent = fields.next()?;
    let dev = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    if !dev.contains(':') {
        return None;
    }
    let root = path_from(unescape(fields.next()?));
    let mount_point = path_from(unescape(fields.next()?));
    let mount_options = text_from(unescape(fields.next()?));
    // Zero or more optional fields ("shared:1", "master:2", ...) end at a lone "-".
    loop {
        if fields.next()? == b"-" {
            break;
        }
    }
    let fs_type = text_from(unescape(fields.next()?));
    let source = text_from(unescape(fields.next()?));
    let super_options = fields
        .next()
        .map(|f| text_from(unescape(f)))
        .unwrap_or_default();
    Some(MountEntry {
        mount_id,
        dev,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

/// Resolve the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && is_octal_escape(&field[i + 1..i + 4]) {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // Three octal digits can exceed 255 only for malformed input; keep it verbatim then.
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

fn path_from(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&bytes))
}

fn text_from(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
61 27 0:45 / /mnt/btrfs-workspace rw,relatime shared:30 master:2 - btrfs /dev/loop3 rw,space_cache=v2,subvolid=5,subvol=/
62 27 0:46 /@home /home rw,noatime - btrfs /dev/nvme0n1p2 rw,ssd,subvolid=257,subvol=/@home
70 27 0:50 / /mnt/with\\040space\\011tab rw - tmpfs my\\040tmp rw,size=4k
71 27 0:51 / /mnt/back\\134slash ro,nosuid - tmpfs tmpfs ro
garbage line without enough fields
72 61 0:45 /snapshots /mnt/btrfs-workspace/snapshots rw - btrfs /dev/loop3 rw,subvolid=258,subvol=/snapshots
";

    #[test]
    fn parses_fields_and_optional_fields() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 7, "the garbage line is skipped: {m:#?}");
        let ws = &m[2];
        assert_eq!(ws.mount_id, 61);
        assert_eq!(ws.dev, "0:45");
        assert_eq!(ws.root, Path::new("/"));
        assert_eq!(ws.mount_point, Path::new("/mnt/btrfs-workspace"));
        assert_eq!(ws.mount_options, "rw,relatime");
        assert_eq!(ws.fs_type, "btrfs");
        assert_eq!(ws.source, "/dev/loop3");
        assert_eq!(ws.super_options, "rw,space_cache=v2,subvolid=5,subvol=/");
        assert!(ws.is_writable());
        assert_eq!(m[0].fs_type, "proc");
        assert_eq!(m[1].source, "/dev/vda");
        assert_eq!(m[3].root, Path::new("/@home"));
    }

    #[test]
    fn decodes_octal_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m[4].mount_point, Path::new("/mnt/with space\ttab"));
        assert_eq!(m[4].source, "my tmp");
        assert_eq!(m[5].mount_point, Path::new("/mnt/back\\slash"));
        assert!(!m[5].is_writable());
    }

    #[test]
    fn escapes_that_are_not_octal_stay_verbatim() {
        assert_eq!(unescape(b"a\\09b"), b"a\\09b");
        assert_eq!(unescape(b"end\\04"), b"end\\04");
        assert_eq!(unescape(b"\\777"), b"\\777");
        assert_eq!(unescape(b"\\012x"), b"\nx");
    }

    #[test]
    fn non_utf8_mount_point_survives() {
        let line = b"80 27 0:60 / /mnt/caf\xe9 rw - tmpfs tmpfs rw\n";
        let m = parse_mountinfo_bytes(line);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point.as_os_str().as_bytes(), b"/mnt/caf\xe9");
    }

    #[test]
    fn missing_separator_is_skipped() {
        assert!(parse_mountinfo("1 2 0:1 / /x rw shared:1 ext4 /dev/x rw\n").is_empty());
        assert!(parse_mountinfo("").is_empty());
    }

    #[test]
    fn longest_prefix_wins_and_later_entries_shadow_earlier() {
        let m = parse_mountinfo(SAMPLE);
        let found = |p: &str| find_mount_containing(&m, Path::new(p)).map(|e| e.mount_id);
        assert_eq!(found("/etc/passwd"), Some(27));
        assert_eq!(found("/mnt/btrfs-workspace/ws1"), Some(61));
        assert_eq!(found("/mnt/btrfs-workspace"), Some(61));
        assert_eq!(found("/mnt/btrfs-workspace/snapshots/ws1/a"), Some(72));
        // Component-wise, not string prefix.
        assert_eq!(found("/mnt/btrfs-workspace2"), Some(27));
        assert_eq!(found("/home/alice"), Some(62));

        let mut stacked = m.clone();
        let mut top = m[2].clone();
        top.mount_id = 99;
        stacked.push(top);
        assert_eq!(
            find_mount_containing(&stacked, Path::new("/mnt/btrfs-workspace/x"))
                .map(|e| e.mount_id),
            Some(99)
        );
        assert!(find_mount_containing(&[], Path::new("/x")).is_none());
    }

    #[test]
    fn reads_the_real_table() {
        let m = read_mountinfo().expect("read /proc/self/mountinfo");
        assert!(
            m.iter().any(|e| e.mount_point == Path::new("/")),
            "no root mount in {m:#?}"
        );
    }
}
