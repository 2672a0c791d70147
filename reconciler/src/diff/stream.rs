//! Parser for the btrfs send stream (protocol versions 1 to 3): splits the byte stream into
//! commands, verifies each command's crc32c and decodes its attributes (TLVs).
//!
//! This module only decodes; it gives no meaning to the commands (that is [`super`]'s job) and
//! it never touches the system. It must never panic on malformed input: every length is checked
//! and a short or corrupt stream is a [`DiffError`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::DiffError;

/// Magic bytes at the start of every send stream (including the terminating NUL).
pub(crate) const MAGIC: &[u8; 13] = b"btrfs-stream\0";
/// Size of the stream header: magic plus a little-endian u32 version.
const STREAM_HEADER_LEN: usize = MAGIC.len() + 4;
/// Size of a command header: u32 payload length, u16 command, u32 crc32c.
const CMD_HEADER_LEN: usize = 10;
/// Newest protocol version this parser understands.
pub(crate) const MAX_VERSION: u32 = 3;

/// Send-stream command numbers (kernel `fs/btrfs/send.h`, not exported in uapi headers).
pub(crate) mod cmd {
    pub(crate) const SUBVOL: u16 = 1;
    pub(crate) const SNAPSHOT: u16 = 2;
    pub(crate) const MKFILE: u16 = 3;
    pub(crate) const MKDIR: u16 = 4;
    pub(crate) const MKNOD: u16 = 5;
    pub(crate) const MKFIFO: u16 = 6;
    pub(crate) const MKSOCK: u16 = 7;
    pub(crate) const SYMLINK: u16 = 8;
    pub(crate) const RENAME: u16 = 9;
    pub(crate) const LINK: u16 = 10;
    pub(crate) const UNLINK: u16 = 11;
    pub(crate) const RMDIR: u16 = 12;
    pub(crate) const SET_XATTR: u16 = 13;
    pub(crate) const REMOVE_XATTR: u16 = 14;
    pub(crate) const WRITE: u16 = 15;
    pub(crate) const CLONE: u16 = 16;
    pub(crate) const TRUNCATE: u16 = 17;
    pub(crate) const CHMOD: u16 = 18;
    pub(crate) const CHOWN: u16 = 19;
    pub(crate) const UTIMES: u16 = 20;
    pub(crate) const END: u16 = 21;
    pub(crate) const UPDATE_EXTENT: u16 = 22;
    pub(crate) const FALLOCATE: u16 = 23;
    pub(crate) const FILEATTR: u16 = 24;
    pub(crate) const ENCODED_WRITE: u16 = 25;
    pub(crate) const ENABLE_VERITY: u16 = 26;

    /// Human-readable command name for error messages.
    pub(crate) fn name(c: u16) -> &'static str {
        match c {
            SUBVOL => "subvol",
            SNAPSHOT => "snapshot",
            MKFILE => "mkfile",
            MKDIR => "mkdir",
            MKNOD => "mknod",
            MKFIFO => "mkfifo",
            MKSOCK => "mksock",
            SYMLINK => "symlink",
            RENAME => "rename",
            LINK => "link",
            UNLINK => "unlink",
            RMDIR => "rmdir",
            SET_XATTR => "set_xattr",
            REMOVE_XATTR => "remove_xattr",
            WRITE => "write",
            CLONE => "clone",
            TRUNCATE => "truncate",
            CHMOD => "chmod",
            CHOWN => "chown",
            UTIMES => "utimes",
            END => "end",
            UPDATE_EXTENT => "update_extent",
            FALLOCATE => "fallocate",
            FILEATTR => "fileattr",
            ENCODED_WRITE => "encoded_write",
            ENABLE_VERITY => "enable_verity",
            _ => "unknown",
        }
    }
}

/// Send-stream attribute numbers (only the ones the differ reads, plus DATA whose encoding
/// changes in v2).
pub(crate) mod attr {
    pub(crate) const INO: u16 = 3;
    pub(crate) const XATTR_NAME: u16 = 13;
    pub(crate) const PATH: u16 = 15;
    pub(crate) const PATH_TO: u16 = 16;
    pub(crate) const PATH_LINK: u16 = 17;
    pub(crate) const DATA: u16 = 19;

    /// Human-readable attribute name for error messages.
    pub(crate) fn name(a: u16) -> &'static str {
        match a {
            INO => "ino",
            XATTR_NAME => "xattr_name",
            PATH => "path",
            PATH_TO => "path_to",
            PATH_LINK => "path_link",
            DATA => "data",
            _ => "unknown",
        }
    }
}

/// One decoded command: its number, its byte offset in the stream (for error messages) and
/// its attributes in stream order, borrowing from the input.
#[derive(Debug, Clone)]
pub(crate) struct Command<'a> {
    /// Command number (see [`cmd`]).
    pub(crate) cmd: u16,
    /// Offset of the command header in the stream.
    pub(crate) offset: usize,
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Command<'a> {
    /// Raw value of the first attribute of type `ty`.
    pub(crate) fn attr(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
    }

    /// A path attribute (stream paths are relative to the subvolume root, no NUL).
    pub(crate) fn path(&self, ty: u16) -> Result<&'a Path, DiffError> {
        let raw = self.attr(ty).ok_or(DiffError::MissingAttribute {
            offset: self.offset,
            command: cmd::name(self.cmd),
            attribute: attr::name(ty),
        })?;
        Ok(Path::new(OsStr::from_bytes(raw)))
    }
}

/// A parsed stream: protocol version and every command up to and including `end`.
#[derive(Debug, Clone)]
pub(crate) struct Stream<'a> {
    /// Protocol version from the stream header.
    pub(crate) version: u32,
    /// Commands in stream order, `end` excluded.
    pub(crate) commands: Vec<Command<'a>>,
}

/// Parse a complete send stream. Every command's crc32c is verified; the stream must finish
/// with an `end` command (bytes after it are ignored, as `btrfs receive` does for one
/// subvolume).
pub(crate) fn parse(bytes: &[u8]) -> Result<Stream<'_>, DiffError> {
    if bytes.len() < STREAM_HEADER_LEN {
        return Err(DiffError::Truncated {
            offset: 0,
            needed: STREAM_HEADER_LEN,
            available: bytes.len(),
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(DiffError::BadMagic);
    }
    let version = le_u32(&bytes[MAGIC.len()..STREAM_HEADER_LEN]);
    if version == 0 || version > MAX_VERSION {
        return Err(DiffError::UnsupportedVersion { version });
    }
    let mut commands = Vec::new();
    let mut off = STREAM_HEADER_LEN;
    loop {
        if off == bytes.len() {
            return Err(DiffError::MissingEnd { offset: off });
        }
        let rest = &bytes[off..];
        if rest.len() < CMD_HEADER_LEN {
            return Err(DiffError::Truncated {
                offset: off,
                needed: CMD_HEADER_LEN,
                available: rest.len(),
            });
        }
        let len = le_u32(&rest[0..4]) as usize;
        let command = le_u16(&rest[4..6]);
        let stored_crc = le_u32(&rest[6..10]);
        let total = CMD_HEADER_LEN.saturating_add(len);
        if rest.len() < total {
            return Err(DiffError::Truncated {
                offset: off,
                needed: total,
                available: rest.len(),
            });
        }
        let payload = &rest[CMD_HEADER_LEN..total];
        let mut crc = crc32c_update(0, &rest[0..6]);
        crc = crc32c_update(crc, &[0u8; 4]);
        crc = crc32c_update(crc, payload);
        if crc != stored_crc {
            return Err(DiffError::CrcMismatch {
                offset: off,
                command: cmd::name(command),
                stored: stored_crc,
                computed: crc,
            });
        }
        if command == cmd::END {
            break;
        }
        let attrs = parse_attrs(payload, version, off, command)?;
        commands.push(Command {
            cmd: command,
            offset: off,
            attrs,
        });
        off += total;
    }
    Ok(Stream { version, commands })
}

/// Decode the TLVs of one command payload.
fn parse_attrs(
    payload: &[u8],
    version: u32,
    offset: usize,
    command: u16,
) -> Result<Vec<(u16, &[u8])>, DiffError> {
    let mut attrs = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let rest = &payload[pos..];
        if rest.len() < 2 {
            return Err(DiffError::BadAttribute {
                offset,
                command: cmd::name(command),
                reason: format!("attribute header cut short at payload byte {pos}"),
            });
        }
        let ty = le_u16(&rest[0..2]);
        if version >= 2 && ty == attr::DATA {
            // v2+: DATA has no length field and runs to the end of the command.
            attrs.push((ty, &rest[2..]));
            break;
        }
        if rest.len() < 4 {
            return Err(DiffError::BadAttribute {
                offset,
                command: cmd::name(command),
                reason: format!("attribute {ty} header cut short at payload byte {pos}"),
            });
        }
        let len = le_u16(&rest[2..4]) as usize;
        if rest.len() < 4 + len {
            return Err(DiffError::BadAttribute {
                offset,
                command: cmd::name(command),
                reason: format!(
                    "attribute {ty} claims {len} bytes but only {} remain",
                    rest.len() - 4
                ),
            });
        }
        attrs.push((ty, &rest[4..4 + len]));
        pos += 4 + len;
    }
    Ok(attrs)
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reflected CRC-32C (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// Lookup table for [`crc32c_update`], built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Raw CRC-32C as the kernel's `crc32c(seed, buf, len)`: no initial or final inversion. The
/// send stream uses seed 0 over the command with its crc field zeroed.
pub(crate) fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The common CRC-32C ("iSCSI") is the raw function with ~0 in and ~ out.
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_update(0, b""), 0);
    }

    #[test]
    fn crc32c_is_incremental() {
        let whole = crc32c_update(0, b"hello world");
        let parts = crc32c_update(crc32c_update(0, b"hello "), b"world");
        assert_eq!(whole, parts);
    }
}
