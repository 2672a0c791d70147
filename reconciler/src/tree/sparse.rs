//! File data by its data/hole map (`SEEK_DATA`/`SEEK_HOLE`): copying only the data segments
//! (after trying `FICLONE`), and comparing two files run by run without ever reading a hole —
//! where one side has data and the other a hole, only the data side is read and must be zeros.
//! A 16 GiB sparse file with 4 KiB of data costs a few `lseek` calls and one 4 KiB read.
//!
//! What it must not do: hold more than one buffer of a file in memory, or read beyond the size
//! it was given.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{io_err, retry};
use super::pace::{FileWindow, Pacer};

/// Chunk size for one `copy_file_range` call and one progress step.
const COPY_CHUNK: u64 = 8 << 20;
/// Buffer size for read/write copying and for comparison.
pub(crate) const BUF_SIZE: usize = 256 << 10;

/// Whether `pos` lies in data or in a hole, and where that run ends (at most `size`).
fn run_at(fd: BorrowedFd<'_>, pos: u64, size: u64) -> io::Result<(bool, u64)> {
    let seek = |off: u64, whence| {
        // SAFETY: plain lseek on a live descriptor.
        let rc = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as u64)
        }
    };
    match seek(pos, libc::SEEK_DATA) {
        Ok(d) if d <= pos => {
            let hole = match seek(pos, libc::SEEK_HOLE) {
                Ok(h) => h.min(size),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => size,
                Err(e) => return Err(e),
            };
            Ok((true, hole.max(pos + 1).min(size)))
        }
        Ok(d) => Ok((false, d.min(size))),
        // No data after `pos` (or the file shrank): a hole up to the size we were given.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok((false, size)),
        // No SEEK_DATA support: everything is data.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((true, size)),
        Err(e) => Err(e),
    }
}

/// The run iterator of one file: caches the current run so each run costs two `lseek`s.
struct Runs<'a> {
    fd: BorrowedFd<'a>,
    size: u64,
    run: Option<(bool, u64)>,
}

impl Runs<'_> {
    fn at(&mut self, pos: u64) -> io::Result<(bool, u64)> {
        match self.run {
            Some((data, end)) if pos < end => Ok((data, end)),
            _ => {
                let r = run_at(self.fd, pos, self.size)?;
                self.run = Some(r);
                Ok(r)
            }
        }
    }
}

fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], mut pos: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = retry(|| {
            // SAFETY: `buf[n..]` is writable for its length; the descriptor is live.
            let rc = unsafe {
                libc::pread(
                    fd.as_raw_fd(),
                    buf[n..].as_mut_ptr().cast(),
                    buf.len() - n,
                    pos as libc::off_t,
                )
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as usize)
            }
        })?;
        if got == 0 {
            break;
        }
        n += got;
        pos += got as u64;
    }
    Ok(n)
}

fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry(|| {
            // SAFETY: `buf` is readable for its length; the descriptor is live.
            let rc = unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    pos as libc::off_t,
                )
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as usize)
            }
        })?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf = &buf[n..];
        pos += n as u64;
    }
    Ok(())
}

/// Per-copy state of data copying: which fast paths still work.
pub(crate) struct DataCopier {
    /// FICLONE may still work (cleared after EXDEV/EOPNOTSUPP/ENOTTY).
    clone_ok: bool,
    /// copy_file_range may still work (cleared after it is refused).
    cfr_ok: bool,
    buf: Vec<u8>,
    /// Write-behind of the copied data (see `pace`).
    pacer: Pacer,
    /// The write-behind state of the file being copied.
    window: FileWindow,
}

/// How a file's data was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copied {
    /// Shared with `FICLONE`.
    Reflinked,
    /// Data segments copied.
    Copied,
}

impl DataCopier {
    pub(crate) fn new() -> DataCopier {
        DataCopier {
            clone_ok: true,
            cfr_ok: true,
            buf: Vec::new(),
            pacer: Pacer::new(),
            window: FileWindow::default(),
        }
    }

    /// Copy `size` bytes of `src` into the new, empty `dst`, keeping holes; progress is
    /// `base + offset`.
    pub(crate) fn copy(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        size: u64,
        paths: (&Path, &Path),
        ctl: &mut Ctl<'_>,
    ) -> Result<Copied, TreeError> {
        let (sp, dp) = paths;
        let base = ctl.progress.bytes_done;
        if self.clone_ok {
            // SAFETY: both descriptors are open for the duration of the call; FICLONE takes
            // the source descriptor as its integer argument.
            let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
            if rc == 0 {
                ctl.progress.bytes_done = base + size;
                return Ok(Copied::Reflinked);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOTTY) => {
                    tracing::debug!(src = %sp.display(), error = %e, "reflink impossible, copying data");
                    self.clone_ok = false;
                }
                Some(libc::EINVAL) => {}
                _ => return Err(io_err(Op::Reflink, dp)(e)),
            }
        }
        let mut runs = Runs {
            fd: src,
            size,
            run: None,
        };
        self.window = FileWindow::default();
        let mut pos = 0u64;
        while pos < size {
            let (data, end) = runs.at(pos).map_err(io_err(Op::Seek, sp))?;
            if data {
                self.copy_range(src, dst, pos, end, paths, base, ctl)?;
            }
            pos = end;
        }
        // SAFETY: plain ftruncate on a live descriptor.
        if unsafe { libc::ftruncate(dst.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(io_err(Op::Truncate, dp)(io::Error::last_os_error()));
        }
        let window = std::mem::take(&mut self.window);
        self.pacer.finish(dst, window, size);
        ctl.progress.bytes_done = base + size;
        Ok(Copied::Copied)
    }

    /// Copy bytes `[start, end)` at the same offsets.
    #[allow(clippy::too_many_arguments)]
    fn copy_range(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        start: u64,
        end: u64,
        (sp, dp): (&Path, &Path),
        base: u64,
        ctl: &mut Ctl<'_>,
    ) -> Result<(), TreeError> {
        let mut pos = start;
        while pos < end {
            let chunk = (end - pos).min(COPY_CHUNK) as usize;
            let mut copied = None;
            if self.cfr_ok {
                let mut off_in = pos as libc::loff_t;
                let mut off_out = pos as libc::loff_t;
                // SAFETY: both descriptors are open; the offsets point to live locals.
                let rc = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        &mut off_in,
                        dst.as_raw_fd(),
                        &mut off_out,
                        chunk,
                        0,
                    )
                };
                if rc >= 0 {
                    copied = Some(rc as usize);
                } else {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(
                            libc::EXDEV
                            | libc::EINVAL
                            | libc::ENOSYS
                            | libc::EOPNOTSUPP
                            | libc::EPERM,
                        ) => {
                            tracing::debug!(src = %sp.display(), error = %e,
                                "copy_file_range refused, using read/write");
                            self.cfr_ok = false;
                        }
                        Some(libc::EINTR) => continue,
                        _ => return Err(io_err(Op::Write, dp)(e)),
                    }
                }
            }
            let n = match copied {
                Some(n) => n,
                None => {
                    if self.buf.is_empty() {
                        self.buf = vec![0; BUF_SIZE];
                    }
                    let want = chunk.min(self.buf.len());
                    let n = pread_full(src, &mut self.buf[..want], pos)
                        .map_err(io_err(Op::Read, sp))?;
                    pwrite_all(dst, &self.buf[..n], pos).map_err(io_err(Op::Write, dp))?;
                    n
                }
            };
            if n == 0 {
                // The source shrank while being copied; verification reports it.
                break;
            }
            pos += n as u64;
            self.pacer.wrote(dst, &mut self.window, pos);
            ctl.progress.bytes_done = base + pos;
            ctl.tick()?;
        }
        Ok(())
    }
}

/// Buffers for [`compare`].
pub(crate) struct CompareBufs {
    a: Vec<u8>,
    b: Vec<u8>,
}

impl CompareBufs {
    pub(crate) fn new() -> CompareBufs {
        CompareBufs {
            a: Vec::new(),
            b: Vec::new(),
        }
    }
}

/// The first difference found by [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
    /// Bytes differ at this offset.
    At(u64),
    /// One side ended before `size` (it shrank while being compared).
    Short(u64),
}

/// Compare the first `size` bytes of `a` and `b` by their data/hole maps. Adds the bytes read
/// to `bytes_read`. `Ok(None)` when equal.
pub(crate) fn compare(
    (a, ap): (BorrowedFd<'_>, &Path),
    (b, bp): (BorrowedFd<'_>, &Path),
    size: u64,
    bufs: &mut CompareBufs,
    bytes_read: &mut u64,
    ctl: &mut Ctl<'_>,
) -> Result<Option<Difference>, TreeError> {
    if bufs.a.is_empty() {
        bufs.a = vec![0; BUF_SIZE];
        bufs.b = vec![0; BUF_SIZE];
    }
    let mut ra = Runs {
        fd: a,
        size,
        run: None,
    };
    let mut rb = Runs {
        fd: b,
        size,
        run: None,
    };
    let mut pos = 0u64;
    while pos < size {
        let (da, ea) = ra.at(pos).map_err(io_err(Op::Seek, ap))?;
        let (db, eb) = rb.at(pos).map_err(io_err(Op::Seek, bp))?;
        let end = ea.min(eb).max(pos + 1).min(size);
        let mut off = pos;
        while (da || db) && off < end {
            let want = ((end - off) as usize).min(BUF_SIZE);
            let na = if da {
                pread_full(a, &mut bufs.a[..want], off).map_err(io_err(Op::Read, ap))?
            } else {
                want
            };
            let nb = if db {
                pread_full(b, &mut bufs.b[..want], off).map_err(io_err(Op::Read, bp))?
            } else {
                want
            };
            *bytes_read += (if da { na } else { 0 } + if db { nb } else { 0 }) as u64;
            let n = na.min(nb);
            let first = match (da, db) {
                (true, true) => bufs.a[..n]
                    .iter()
                    .zip(&bufs.b[..n])
                    .position(|(x, y)| x != y),
                (true, false) => bufs.a[..n].iter().position(|x| *x != 0),
                _ => bufs.b[..n].iter().position(|x| *x != 0),
            };
            if let Some(i) = first {
                return Ok(Some(Difference::At(off + i as u64)));
            }
            if n < want {
                return Ok(Some(Difference::Short(off + n as u64)));
            }
            off += n as u64;
            ctl.progress.bytes_done += n as u64;
            ctl.tick()?;
        }
        if !(da || db) {
            ctl.progress.bytes_done += end - pos;
        }
        pos = end;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    fn sparse(path: &Path, size: u64, data: &[(u64, &[u8])]) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        f.set_len(size).unwrap();
        for (off, bytes) in data {
            f.write_all_at(bytes, *off).unwrap();
        }
        f.sync_all().unwrap();
        f
    }

    fn cmp(a: &File, b: &File, size: u64) -> (Option<Difference>, u64) {
        let mut read = 0;
        let mut sink = |_: &super::super::Progress| {};
        let never = || false;
        let mut ctl = Ctl::new(&mut sink, &never);
        let d = compare(
            (a.as_fd(), Path::new("a")),
            (b.as_fd(), Path::new("b")),
            size,
            &mut CompareBufs::new(),
            &mut read,
            &mut ctl,
        )
        .unwrap();
        (d, read)
    }

    /// Whether this filesystem reports holes at all (tmpfs, ext4, btrfs, xfs do).
    fn holes_supported(f: &File, size: u64) -> bool {
        matches!(run_at(f.as_fd(), 0, size), Ok((false, _)))
    }

    #[test]
    fn sparse_files_compare_without_reading_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 1u64 << 34; // 16 GiB apparent
        let probe = sparse(&tmp.path().join("probe"), 1 << 20, &[]);
        if !holes_supported(&probe, 1 << 20) {
            eprintln!(
                "{} reports no holes; sparse comparison cannot be tested here",
                tmp.path().display()
            );
            return;
        }
        let a = sparse(
            &tmp.path().join("a"),
            size,
            &[(0, b"head"), (size - 4, b"tail")],
        );
        let b = sparse(
            &tmp.path().join("b"),
            size,
            &[(0, b"head"), (size - 4, b"tail")],
        );
        let (d, read) = cmp(&a, &b, size);
        assert_eq!(d, None);
        assert!(
            read <= 4 * (64 << 10),
            "read {read} bytes of a 16 GiB sparse file"
        );

        // A byte changed at the very end is found, reading only the data blocks.
        b.write_all_at(b"X", size - 1).unwrap();
        let (d, read) = cmp(&a, &b, size);
        assert_eq!(d, Some(Difference::At(size - 1)));
        assert!(read <= 4 * (64 << 10), "{read}");
    }

    #[test]
    fn data_against_hole_reads_only_the_data_side_and_requires_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 8u64 << 20;
        let a = sparse(&tmp.path().join("a"), size, &[]);
        // b has 1 MiB of explicit zeros in the middle: same content as a hole.
        let b = sparse(
            &tmp.path().join("b"),
            size,
            &[(2 << 20, &vec![0u8; 1 << 20])],
        );
        let (d, read) = cmp(&a, &b, size);
        assert_eq!(d, None);
        if holes_supported(&a, size) {
            assert!(read <= 1 << 21, "{read}");
            assert!(read >= 1 << 20, "the data side must be read: {read}");
        }
        b.write_all_at(b"\x01", (2 << 20) + 77).unwrap();
        assert_eq!(cmp(&a, &b, size).0, Some(Difference::At((2 << 20) + 77)));
        assert_eq!(cmp(&b, &a, size).0, Some(Difference::At((2 << 20) + 77)));
    }

    #[test]
    fn dense_files_compare_byte_by_byte_and_short_files_are_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let a = sparse(&tmp.path().join("a"), data.len() as u64, &[(0, &data)]);
        let b = sparse(&tmp.path().join("b"), data.len() as u64, &[(0, &data)]);
        let n = data.len() as u64;
        assert_eq!(cmp(&a, &b, n), (None, 2 * n));
        b.write_all_at(b"\xff", 300_001).unwrap();
        assert_eq!(cmp(&a, &b, n).0, Some(Difference::At(300_001)));
        b.set_len(1000).unwrap();
        let (d, _) = cmp(&a, &b, n);
        assert!(
            matches!(d, Some(Difference::At(_) | Difference::Short(_))),
            "{d:?}"
        );
    }

    #[test]
    fn copy_keeps_holes_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 64u64 << 20;
        let a = sparse(
            &tmp.path().join("a"),
            size,
            &[
                (0, b"start"),
                (size / 2, &[7u8; 100_000]),
                (size - 3, b"end"),
            ],
        );
        let b = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp.path().join("b"))
            .unwrap();
        let mut sink = |_: &super::super::Progress| {};
        let never = || false;
        let mut ctl = Ctl::new(&mut sink, &never);
        let how = DataCopier::new()
            .copy(
                a.as_fd(),
                b.as_fd(),
                size,
                (Path::new("a"), Path::new("b")),
                &mut ctl,
            )
            .unwrap();
        assert_eq!(ctl.progress.bytes_done, size);
        assert_eq!(cmp(&a, &b, size).0, None);
        if how == Copied::Copied && holes_supported(&a, size) {
            let blocks = std::os::unix::fs::MetadataExt::blocks(&b.metadata().unwrap());
            assert!(
                blocks * 512 < 4 << 20,
                "copy is not sparse: {blocks} blocks"
            );
        }
    }
}
