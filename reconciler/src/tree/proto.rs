//! The protocol between the daemon and a tree worker: one request (JSON, with the root
//! descriptors attached as `SCM_RIGHTS`), then any number of replies (progress, then exactly one
//! result), each one `SOCK_SEQPACKET` message of at most [`MAX_FRAME`] bytes.
//!
//! The daemon treats every reply as attacker-controlled: a frame over the limit, with
//! descriptors attached, not JSON, with unknown fields or out-of-range values is a protocol
//! error that ends the job. Errors travel as [`WireError`] (kind, operation, path bytes, errno,
//! message, bounded lengths) and are rebuilt into the same [`TreeError`] the engine would have
//! returned in-process.
//!
//! What it must not do: trust a length, a count or a string from a reply, or panic on any input.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::creds::{CredReport, Owner};
use super::error::{Op, TreeError};
use super::fd::Identity;
use super::remove::Removed;
use super::verify::Compare;
use super::{Progress, TreeStats};

/// Protocol version.
pub(crate) const VERSION: u32 = 1;
/// Largest message in either direction.
pub(crate) const MAX_FRAME: usize = 64 << 10;
/// Longest path carried in an error (longer ones are cut).
const MAX_PATH: usize = 8192;
/// Longest message text carried in an error (longer ones are cut).
const MAX_TEXT: usize = 2048;
/// Most descriptors a request carries.
pub(crate) const MAX_FDS: usize = 2;

/// What the worker is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum JobSpec {
    /// Copy fd 0 (source) into fd 1 (empty destination).
    Copy,
    /// Compare fd 0 with fd 1.
    Verify {
        /// What the comparison proves.
        compare: Compare,
    },
    /// Remove entry `name` of fd 0, which must be `expected`.
    Remove {
        /// The entry's name (bytes).
        name: Vec<u8>,
        /// Its recorded identity.
        expected: Identity,
    },
    /// Count fd 0.
    Scan,
    /// Report the worker's credentials.
    Credentials,
}

impl JobSpec {
    /// Number of root descriptors the job takes.
    pub(crate) fn fds(&self) -> usize {
        match self {
            JobSpec::Copy | JobSpec::Verify { .. } => 2,
            JobSpec::Remove { .. } | JobSpec::Scan => 1,
            JobSpec::Credentials => 0,
        }
    }
}

/// The daemon's request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    /// [`VERSION`].
    pub(crate) v: u32,
    /// Who to become.
    pub(crate) owner: Owner,
    /// What to do.
    pub(crate) job: JobSpec,
    /// The message label (path bytes) of each attached descriptor, in order.
    pub(crate) labels: Vec<Vec<u8>>,
}

/// The result of a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Copy or verification counts.
    Stats(TreeStats),
    /// Removal result.
    Removed(Removed),
    /// Scan totals.
    Scanned(Progress),
    /// The worker's credentials.
    Credentials(CredReport),
}

/// Kinds of [`TreeError`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    Io,
    MountPoint,
    Mismatch,
    NotSubset,
    Changed,
    IdentityMismatch,
    NotRecreatable,
    BadDestination,
    TooDeep,
    Cancelled,
    Credentials,
    Worker,
}

/// A [`TreeError`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireError {
    kind: ErrorKind,
    #[serde(default)]
    op: Option<Op>,
    #[serde(default)]
    path: Vec<u8>,
    #[serde(default)]
    errno: Option<i32>,
    #[serde(default)]
    text: String,
    #[serde(default)]
    identities: Option<(Identity, Identity)>,
    #[serde(default)]
    number: Option<u64>,
}

/// One reply of the worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Progress so far.
    Progress(Progress),
    /// The job finished.
    Done(Outcome),
    /// The job failed.
    Failed(WireError),
}

fn cut_text(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn cut_path(p: &std::path::Path) -> Vec<u8> {
    let b = p.as_os_str().as_bytes();
    b[..b.len().min(MAX_PATH)].to_vec()
}

impl WireError {
    /// The wire form of `e` (long paths and texts cut).
    pub(crate) fn from_error(e: &TreeError) -> WireError {
        let mut w = WireError {
            kind: ErrorKind::Worker,
            op: None,
            path: Vec::new(),
            errno: None,
            text: String::new(),
            identities: None,
            number: None,
        };
        match e {
            TreeError::Io { op, path, source } => {
                w.kind = ErrorKind::Io;
                w.op = Some(*op);
                w.path = cut_path(path);
                w.errno = source.raw_os_error();
                w.text = cut_text(&source.to_string());
            }
            TreeError::MountPoint { path } => {
                w.kind = ErrorKind::MountPoint;
                w.path = cut_path(path);
            }
            TreeError::Mismatch { path, what }
            | TreeError::NotSubset { path, what }
            | TreeError::Changed { path, what }
            | TreeError::BadDestination { path, what } => {
                w.kind = match e {
                    TreeError::Mismatch { .. } => ErrorKind::Mismatch,
                    TreeError::NotSubset { .. } => ErrorKind::NotSubset,
                    TreeError::Changed { .. } => ErrorKind::Changed,
                    _ => ErrorKind::BadDestination,
                };
                w.path = cut_path(path);
                w.text = cut_text(what);
            }
            TreeError::IdentityMismatch {
                path,
                expected,
                found,
            } => {
                w.kind = ErrorKind::IdentityMismatch;
                w.path = cut_path(path);
                w.identities = Some((*expected, *found));
            }
            TreeError::NotRecreatable { path, uid, what } => {
                w.kind = ErrorKind::NotRecreatable;
                w.path = cut_path(path);
                w.number = Some(u64::from(*uid));
                w.text = cut_text(what);
            }
            TreeError::TooDeep { path, limit } => {
                w.kind = ErrorKind::TooDeep;
                w.path = cut_path(path);
                w.number = Some(*limit as u64);
            }
            TreeError::Cancelled => w.kind = ErrorKind::Cancelled,
            TreeError::Credentials { who, what } => {
                w.kind = ErrorKind::Credentials;
                w.path = cut_text(who).into_bytes();
                w.text = cut_text(what);
            }
            TreeError::Worker { what } => w.text = cut_text(what),
        }
        w
    }

    /// The error this stands for; `Err` when a field is missing or out of range.
    pub(crate) fn into_error(self) -> Result<TreeError, String> {
        if self.path.len() > MAX_PATH || self.text.len() > MAX_TEXT + '…'.len_utf8() {
            return Err("an error field is longer than the protocol allows".into());
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&self.path));
        let text = self.text;
        let missing = |what: &str| format!("a {:?} error without its {what}", self.kind);
        Ok(match self.kind {
            ErrorKind::Io => {
                let op = self.op.ok_or_else(|| missing("operation"))?;
                let source = match self.errno {
                    Some(n) if (1..4096).contains(&n) => io::Error::from_raw_os_error(n),
                    Some(n) => return Err(format!("errno {n} is out of range")),
                    None => io::Error::other(text),
                };
                TreeError::Io { op, path, source }
            }
            ErrorKind::MountPoint => TreeError::MountPoint { path },
            ErrorKind::Mismatch => TreeError::Mismatch { path, what: text },
            ErrorKind::NotSubset => TreeError::NotSubset { path, what: text },
            ErrorKind::Changed => TreeError::Changed { path, what: text },
            ErrorKind::BadDestination => TreeError::BadDestination { path, what: text },
            ErrorKind::IdentityMismatch => {
                let (expected, found) = self.identities.ok_or_else(|| missing("identities"))?;
                TreeError::IdentityMismatch {
                    path,
                    expected,
                    found,
                }
            }
            ErrorKind::NotRecreatable => TreeError::NotRecreatable {
                path,
                uid: self
                    .number
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| missing("uid"))?,
                what: text,
            },
            ErrorKind::TooDeep => TreeError::TooDeep {
                path,
                limit: self
                    .number
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| missing("limit"))?,
            },
            ErrorKind::Cancelled => TreeError::Cancelled,
            ErrorKind::Credentials => TreeError::Credentials {
                who: String::from_utf8_lossy(&self.path).into_owned(),
                what: text,
            },
            ErrorKind::Worker => TreeError::Worker { what: text },
        })
    }
}

/// Serialize a message; `Err` if it would exceed [`MAX_FRAME`].
pub(crate) fn encode<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    let bytes = serde_json::to_vec(msg).map_err(|e| format!("cannot encode a message: {e}"))?;
    if bytes.len() > MAX_FRAME {
        return Err(format!(
            "a message of {} bytes exceeds the {MAX_FRAME}-byte limit",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Parse one reply of the worker (attacker-controlled input).
pub(crate) fn decode_reply(frame: &[u8]) -> Result<Reply, String> {
    if frame.len() > MAX_FRAME {
        return Err(format!(
            "a reply of {} bytes exceeds the limit",
            frame.len()
        ));
    }
    serde_json::from_slice(frame).map_err(|e| format!("a reply is not valid: {e}"))
}

/// Parse the daemon's request.
pub(crate) fn decode_request(frame: &[u8]) -> Result<Request, String> {
    if frame.len() > MAX_FRAME {
        return Err("the request exceeds the limit".into());
    }
    let req: Request =
        serde_json::from_slice(frame).map_err(|e| format!("the request is not valid: {e}"))?;
    if req.v != VERSION {
        return Err(format!(
            "protocol version {} is not {VERSION} (daemon and binary differ: restart the daemon)",
            req.v
        ));
    }
    if req.labels.len() != req.job.fds() || req.labels.iter().any(|l| l.len() > MAX_PATH) {
        return Err("the request's labels do not match its job".into());
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: TreeError) -> TreeError {
        let w = WireError::from_error(&e);
        let bytes = encode(&Reply::Failed(w)).unwrap();
        match decode_reply(&bytes).unwrap() {
            Reply::Failed(w) => w.into_error().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_survive_the_wire_with_the_same_message() {
        let cases = vec![
            TreeError::Io {
                op: Op::Open,
                path: "/home/u/x".into(),
                source: io::Error::from_raw_os_error(libc::EACCES),
            },
            TreeError::MountPoint {
                path: "/home/u/mnt".into(),
            },
            TreeError::Mismatch {
                path: "a/b".into(),
                what: "content differs at byte 3".into(),
            },
            TreeError::NotSubset {
                path: "a".into(),
                what: "missing from the copy".into(),
            },
            TreeError::Changed {
                path: "/x".into(),
                what: "replaced".into(),
            },
            TreeError::IdentityMismatch {
                path: "/x".into(),
                expected: Identity { dev: 1, ino: 2 },
                found: Identity { dev: 3, ino: 4 },
            },
            TreeError::NotRecreatable {
                path: "/x/dev".into(),
                uid: 1000,
                what: "it is a device node".into(),
            },
            TreeError::BadDestination {
                path: "/d".into(),
                what: "it is a non-empty directory".into(),
            },
            TreeError::TooDeep {
                path: "/d".into(),
                limit: 2048,
            },
            TreeError::Cancelled,
            TreeError::Credentials {
                who: "uid 5".into(),
                what: "no such user".into(),
            },
            TreeError::Worker {
                what: "died".into(),
            },
        ];
        for e in cases {
            let msg = e.to_string();
            let back = round_trip(e);
            assert_eq!(back.to_string(), msg);
        }
        let odd = std::ffi::OsStr::from_bytes(b"/h/\xff\n\x1b[31m");
        let back = round_trip(TreeError::MountPoint { path: odd.into() });
        assert!(matches!(back, TreeError::MountPoint { path } if path.as_os_str() == odd));
    }

    #[test]
    fn long_fields_are_cut_to_fit_one_frame() {
        let e = TreeError::Mismatch {
            path: PathBuf::from("x/".repeat(20_000)),
            what: "é".repeat(10_000),
        };
        let bytes = encode(&Reply::Failed(WireError::from_error(&e))).unwrap();
        assert!(bytes.len() <= MAX_FRAME);
        let Reply::Failed(w) = decode_reply(&bytes).unwrap() else {
            panic!()
        };
        let back = w.into_error().unwrap();
        assert!(
            matches!(back, TreeError::Mismatch { path, .. } if path.as_os_str().len() == MAX_PATH)
        );
    }

    #[test]
    fn garbage_and_oversize_replies_are_refused_not_trusted() {
        let big = vec![b' '; MAX_FRAME + 1];
        assert!(decode_reply(&big).is_err());
        for bad in [
            &b""[..],
            b"null",
            b"{}",
            b"\xff\xfe",
            b"{\"done\":{\"stats\":{\"files\":-1}}}",
            b"{\"progress\":{\"bytes_done\":1}}",
            b"{\"failed\":{\"kind\":\"io\",\"extra\":1}}",
            b"{\"done\":{\"nonsense\":{}}}",
            b"[1,2,3]",
            b"{\"progress\":{\"bytes_done\":5,\"bytes_total\":1,\"entries_done\":0,\"entries_total\":0,\"x\":0}}",
        ] {
            assert!(decode_reply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Well-formed but inconsistent errors are refused when rebuilt.
        for bad in [
            r#"{"failed":{"kind":"io","errno":13}}"#,
            r#"{"failed":{"kind":"io","op":"Open","errno":999999}}"#,
            r#"{"failed":{"kind":"identity_mismatch","path":[47]}}"#,
            r#"{"failed":{"kind":"not_recreatable","number":99999999999}}"#,
        ] {
            let Reply::Failed(w) = decode_reply(bad.as_bytes()).unwrap() else {
                panic!("{bad}")
            };
            assert!(w.into_error().is_err(), "{bad}");
        }
        let long_text = format!(
            r#"{{"failed":{{"kind":"worker","text":"{}"}}}}"#,
            "a".repeat(MAX_TEXT + 100)
        );
        let Reply::Failed(w) = decode_reply(long_text.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(w.into_error().is_err());
    }

    #[test]
    fn requests_are_checked_against_their_job() {
        let req = Request {
            v: VERSION,
            owner: Owner::new(1000, 1000, []),
            job: JobSpec::Copy,
            labels: vec![b"/a".to_vec(), b"/b".to_vec()],
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), req);
        let wrong = Request {
            labels: vec![b"/a".to_vec()],
            ..req.clone()
        };
        assert!(decode_request(&encode(&wrong).unwrap()).is_err());
        let old = Request { v: 0, ..req };
        assert!(decode_request(&encode(&old).unwrap())
            .unwrap_err()
            .contains("restart the daemon"));
        assert!(decode_request(b"{\"v\":1}").is_err());
    }
}
