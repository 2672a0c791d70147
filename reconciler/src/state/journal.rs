//! The append-only journal beside a base file, shared by the snapshot indexes (`index.json` +
//! `journal.jsonl`) and the state file (`state.json` + `state.journal.jsonl`), so that one
//! change costs one appended line and one `fdatasync`, whatever the size of the base.
//!
//! A journal starts with a header line `{"journal":1,"base_sha256":…,"base_ino":…,"base_len":…}`
//! naming the exact base file it applies to, then one JSON value per line. A journal whose base
//! is not the current base file has already been folded into it (a crash between the two steps
//! of [`JournalFiles::install`]) and is dropped; so every crash point resolves to the state
//! before or after the last change, without relying on replays being idempotent.
//!
//! This module handles bytes and files; what a line means is its caller's business.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{fsync_dir, write_atomic_mode};
use super::StateError;
use crate::ids::sha256_hex;

/// Version of the journal header.
const JOURNAL_VERSION: u32 = 1;
/// Upper bound on the header line we read.
const MAX_HEADER_BYTES: u64 = 4096;

/// First line of a journal: the base file the following lines apply to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalHeader {
    /// Header format version.
    journal: u32,
    /// SHA-256 of the base file's bytes: the authority at load time.
    base_sha256: String,
    /// Inode of the base file: a cheap staleness check at append time.
    base_ino: u64,
    /// Size of the base file.
    base_len: u64,
}

/// A base file and its journal, in one directory.
#[derive(Debug, Clone)]
pub(crate) struct JournalFiles {
    /// The directory holding both.
    pub(crate) dir: PathBuf,
    /// The base file (`index.json`, `state.json`).
    pub(crate) base: PathBuf,
    /// The journal (`journal.jsonl`, `state.journal.jsonl`).
    pub(crate) journal: PathBuf,
    /// Mode of both files when created.
    pub(crate) mode: u32,
}

/// What a journal says about its base (see [`JournalFiles::replay`]).
#[derive(Debug)]
pub(crate) enum Replay<'a> {
    /// No journal (or an empty one).
    Nothing,
    /// The journal belongs to an older base: already folded into it (drop it).
    Stale,
    /// The lines to apply to the base, in order (numbered from 2: the header is line 1), and
    /// whether an unterminated last line (a crash mid-append) was ignored.
    Lines {
        /// (line number, bytes without the newline).
        lines: Vec<(usize, &'a [u8])>,
        /// An unterminated last line was left out.
        torn: bool,
    },
}

pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io(path, e)),
    }
}

pub(crate) fn remove_optional(path: &Path) -> Result<bool, StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StateError::io(path, e)),
    }
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl JournalFiles {
    /// `<dir>/<base>` and `<dir>/<journal>`.
    pub(crate) fn new(dir: &Path, base: &str, journal: &str, mode: u32) -> JournalFiles {
        JournalFiles {
            dir: dir.to_path_buf(),
            base: dir.join(base),
            journal: dir.join(journal),
            mode,
        }
    }

    /// The lines of `journal` (the journal's bytes) that apply to `base` (the base file's
    /// bytes). Errors: a bad header, in words.
    pub(crate) fn replay<'a>(&self, base: &[u8], journal: &'a [u8]) -> Result<Replay<'a>, String> {
        if journal.is_empty() {
            return Ok(Replay::Nothing);
        }
        let (header, mut rest) = self.parse_header(journal)?;
        if header.base_sha256 != sha256_hex(base, 32) {
            return Ok(Replay::Stale);
        }
        let mut lines = Vec::new();
        let mut line_no = 1usize;
        while !rest.is_empty() {
            line_no += 1;
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                return Ok(Replay::Lines { lines, torn: true });
            };
            lines.push((line_no, &rest[..end]));
            rest = &rest[end + 1..];
        }
        Ok(Replay::Lines { lines, torn: false })
    }

    /// Remove a stale journal (see [`Replay::Stale`]) durably.
    pub(crate) fn drop_journal(&self) -> Result<(), StateError> {
        if remove_optional(&self.journal)? {
            fsync_dir(&self.dir).map_err(|e| StateError::io(&self.dir, e))?;
        }
        Ok(())
    }

    /// Current size of the journal (0 when absent).
    pub(crate) fn journal_len(&self) -> u64 {
        fs::metadata(&self.journal).map_or(0, |m| m.len())
    }

    /// Append one line (without its newline) with `O_APPEND` + `fdatasync`, starting or
    /// restarting the journal when it does not name the current base (which must exist). On
    /// error nothing of the line stays in the journal (a partial line is cut).
    pub(crate) fn append_line(&self, line: &[u8]) -> Result<(), StateError> {
        self.append_line_synced(line, true)
    }

    /// [`JournalFiles::append_line`], with the `fdatasync` only when `sync` (a line whose
    /// loss in a power cut is harmless: it only confirms what a crash recovery would conclude
    /// anyway).
    pub(crate) fn append_line_synced(&self, line: &[u8], sync: bool) -> Result<(), StateError> {
        let pending = self.append_line_deferred(line)?;
        match sync {
            true => pending.sync(),
            false => Ok(()),
        }
    }

    /// Append one line (as [`JournalFiles::append_line`]) and return with its `fdatasync`
    /// still to do ([`PendingSync::sync`]), so that the caller can make it outside a lock
    /// it holds. Nothing else may write this journal until then (the caller holds the
    /// workspace or state the journal belongs to).
    pub(crate) fn append_line_deferred(&self, line: &[u8]) -> Result<PendingSync, StateError> {
        let base_meta = fs::metadata(&self.base).map_err(|e| StateError::io(&self.base, e))?;
        self.ensure(&base_meta)?;
        let mut file = OpenOptions::new()
            .append(true)
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.journal)
            .map_err(|e| StateError::io(&self.journal, e))?;
        let len = drop_torn_tail(&file, &self.journal)?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes) {
            // Leave the journal as it was; a partial line would be ignored anyway.
            let _ = file.set_len(len);
            return Err(StateError::io(&self.journal, e));
        }
        Ok(PendingSync {
            file,
            len_before: len,
            path: self.journal.clone(),
        })
    }

    /// Replace the base with `bytes` and drop the journal, so that a crash at any point
    /// leaves either the old state (old base + journal) or the new one.
    pub(crate) fn install(&self, bytes: &[u8]) -> Result<(), StateError> {
        let new_hash = sha256_hex(bytes, 32);
        let journal_base = self
            .read_header()?
            .and_then(Result::ok)
            .map(|h| h.base_sha256);
        let write_base = || {
            write_atomic_mode(&self.base, bytes, self.mode)
                .map_err(|e| StateError::io(&self.base, e))
        };
        if journal_base.as_deref() == Some(new_hash.as_str()) {
            // The journal's base has exactly the new bytes: the new base would not tell the
            // journal is stale, so drop the journal first (the base on disk already has these
            // bytes unless the journal was stale anyway).
            self.drop_journal()?;
            write_base()
        } else {
            write_base()?;
            self.drop_journal()
        }
    }

    /// Make sure the journal exists with a header naming the current base. O(1) unless the
    /// journal must be (re)started.
    fn ensure(&self, base_meta: &fs::Metadata) -> Result<(), StateError> {
        let header = match self.read_header()? {
            None => return self.start(),
            Some(Err(error)) => {
                return Err(StateError::CorruptJournal {
                    path: self.journal.clone(),
                    error,
                })
            }
            Some(Ok(h)) => h,
        };
        if header.base_ino == base_meta.ino() && header.base_len == base_meta.len() {
            return Ok(());
        }
        // The base was replaced: either by an install whose last step did not happen (the
        // journal is stale) or by hand with the same content (the journal still applies).
        let base = fs::read(&self.base).map_err(|e| StateError::io(&self.base, e))?;
        if sha256_hex(&base, 32) != header.base_sha256 {
            tracing::warn!(journal = %self.journal.display(), "restarting a stale journal");
            return self.start();
        }
        let journal = fs::read(&self.journal).map_err(|e| StateError::io(&self.journal, e))?;
        let rest = self
            .parse_header(&journal)
            .map_err(|error| StateError::CorruptJournal {
                path: self.journal.clone(),
                error,
            })?
            .1;
        let meta = fs::metadata(&self.base).map_err(|e| StateError::io(&self.base, e))?;
        let mut bytes = self.header_line(&JournalHeader {
            base_ino: meta.ino(),
            base_len: meta.len(),
            ..header
        })?;
        bytes.extend_from_slice(rest);
        write_atomic_mode(&self.journal, &bytes, self.mode)
            .map_err(|e| StateError::io(&self.journal, e))
    }

    /// (Re)create the journal with only a header naming the current base.
    fn start(&self) -> Result<(), StateError> {
        let mut file = File::open(&self.base).map_err(|e| StateError::io(&self.base, e))?;
        let meta = file.metadata().map_err(|e| StateError::io(&self.base, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| StateError::io(&self.base, e))?;
        let line = self.header_line(&JournalHeader {
            journal: JOURNAL_VERSION,
            base_sha256: sha256_hex(&bytes, 32),
            base_ino: meta.ino(),
            base_len: bytes.len() as u64,
        })?;
        write_atomic_mode(&self.journal, &line, self.mode)
            .map_err(|e| StateError::io(&self.journal, e))
    }

    /// Split a journal into its header and the lines that follow.
    fn parse_header<'a>(&self, journal: &'a [u8]) -> Result<(JournalHeader, &'a [u8]), String> {
        let jname = name(&self.journal);
        let end = journal
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| format!("{jname}: header line is incomplete"))?;
        let header: JournalHeader =
            serde_json::from_slice(&journal[..end]).map_err(|e| format!("{jname} header: {e}"))?;
        if header.journal != JOURNAL_VERSION {
            return Err(format!(
                "{jname} header: unsupported journal version {}",
                header.journal
            ));
        }
        Ok((header, &journal[end + 1..]))
    }

    /// The header: `None` when there is no (or an empty) journal; `Some(Err)` when it is
    /// unreadable. Reads only the first line.
    fn read_header(&self) -> Result<Option<Result<JournalHeader, String>>, StateError> {
        let file = match File::open(&self.journal) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&self.journal, e)),
        };
        // One read in the common case (the header is the first ~200 bytes), not the small
        // probing reads of `read_to_end`: this runs before every appended line.
        let mut buf = vec![0u8; MAX_HEADER_BYTES as usize];
        let mut len = 0;
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            match (&file).read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StateError::io(&self.journal, e)),
            }
        }
        buf.truncate(len);
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.parse_header(&buf).map(|(h, _)| h)))
    }

    fn header_line(&self, header: &JournalHeader) -> Result<Vec<u8>, StateError> {
        let mut bytes = serde_json::to_vec(header).map_err(|e| StateError::Encode {
            path: self.journal.clone(),
            source: e,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// A line appended to a journal whose `fdatasync` is still to be made.
#[derive(Debug)]
#[must_use = "the line is not durable until `sync` returns"]
pub(crate) struct PendingSync {
    file: File,
    len_before: u64,
    path: PathBuf,
}

impl PendingSync {
    /// Make the line durable; on failure it is cut again (the journal as it was).
    pub(crate) fn sync(self) -> Result<(), StateError> {
        if let Err(e) = self.file.sync_data() {
            let _ = self.file.set_len(self.len_before);
            return Err(StateError::io(&self.path, e));
        }
        Ok(())
    }
}

/// Cut an unterminated last line (left by a crash mid-append) so that the next line starts
/// clean. Returns the journal length afterwards. O(length of the last line).
fn drop_torn_tail(file: &File, path: &Path) -> Result<u64, StateError> {
    let io_err = |e| StateError::io(path, e);
    let len = file.metadata().map_err(io_err)?.len();
    let mut last = [0u8; 1];
    if len == 0 {
        return Ok(0);
    }
    file.read_exact_at(&mut last, len - 1).map_err(io_err)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    let mut end = len;
    let mut keep = 0u64;
    let mut chunk = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buf, start).map_err(io_err)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    file.set_len(keep).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    tracing::warn!(journal = %path.display(), dropped = len - keep, "dropped a torn journal line");
    Ok(keep)
}
