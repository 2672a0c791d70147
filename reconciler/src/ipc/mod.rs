//! The daemon's socket protocol (SPEC §7.2): newline-delimited JSON over a Unix stream
//! socket, one request per line (`{"v":1,"op":"checkpoint",...}`), one response line per
//! request (`{"ok":true,"result":…}` or `{"ok":false,"error":{"code","message","hint"}}`).
//! A request that asks for its printed form (`list` with `"output":"json"`) is answered by a
//! header line `{"ok":true,"printed":N}` followed by the N bytes the command prints. A
//! client that found the socket in its main config file without reading the drop-ins names
//! that file (`"config":"DEV:INO"`, [`encode_request_for`]): a daemon serving another file
//! answers [`OTHER_CONFIG`] without running the request, and the client finds its daemon
//! through the whole config. A client sends one request per connection and then ends its
//! write side.
//!
//! This module holds the wire codec, the bounded line reader, the server side of one
//! connection ([`serve_connection`], generic over the request handler) and the client
//! ([`connect`] + [`exchange`], [`call`], [`daemon_running`]). It must not touch the engine, authorize anything or
//! decide what a request does: the daemon passes a handler in.

use crate::api::{Reply, Request, PROTOCOL_VERSION};
use crate::error::{Error, ErrorCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// File name of the socket inside the runtime directory: `<runtime_dir>/ws-ckpt.sock`.
pub const SOCKET_NAME: &str = "ws-ckpt.sock";

/// Largest accepted request line (without its newline). Longer lines are refused and the
/// connection is closed.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Largest response line a client accepts (a `list` of many snapshots can be large).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How long the server waits for the next request on an idle connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server waits for a client to accept a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request may take from its first byte to its newline (a client that sends a
/// line byte by byte cannot hold a connection longer than this; SPEC §7.3).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// The server's time limits on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the first byte of the next request.
    pub idle: Duration,
    /// From the first byte of a request to its newline.
    pub request: Duration,
    /// Waiting for the client to accept a response.
    pub write: Duration,
}

impl Timeouts {
    /// The daemon's limits.
    pub const DAEMON: Timeouts = Timeouts {
        idle: IDLE_TIMEOUT,
        request: REQUEST_DEADLINE,
        write: WRITE_TIMEOUT,
    };
}

/// Errors of the wire layer itself (before a request reaches the engine, or after the
/// engine answered). They become [`Error`]s with a code at the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The line is longer than the limit.
    #[error("request longer than {limit} bytes without a newline; split it or send less data")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The line is not UTF-8.
    #[error("request is not valid UTF-8; send JSON text")]
    NotUtf8,
    /// The line is not a JSON object.
    #[error(
        "malformed request: {0}; send one JSON object per line like {{\"v\":1,\"op\":\"status\"}}"
    )]
    Malformed(String),
    /// `v` is missing or not the supported version.
    #[error("unsupported protocol version {found} (this daemon speaks version {PROTOCOL_VERSION}); use a ws-ckpt client of the same version")]
    Version {
        /// What the request carried (`missing` when absent).
        found: String,
    },
    /// The object does not describe a known request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A response line that is not `{"ok":…}`.
    #[error("malformed response from the daemon at {socket}: {why}; is the daemon the same version as this client?")]
    BadResponse {
        /// Socket path.
        socket: String,
        /// What is wrong.
        why: String,
    },
    /// The request line did not end within the whole-request deadline.
    #[error("request not complete within {}s of its first byte; send each request as one line at once", .limit.as_secs())]
    Deadline {
        /// The deadline.
        limit: Duration,
    },
    /// Socket I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the socket.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<IpcError> for Error {
    fn from(e: IpcError) -> Self {
        let code = match e {
            IpcError::TooLong { .. }
            | IpcError::NotUtf8
            | IpcError::Malformed(_)
            | IpcError::Version { .. }
            | IpcError::Invalid(_)
            | IpcError::Deadline { .. } => ErrorCode::InvalidArgument,
            IpcError::BadResponse { .. } | IpcError::Io { .. } => ErrorCode::Io,
        };
        Error::new(code, e.to_string())
    }
}

/// The wire name of an error code (`"SnapshotMissing"`).
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// The error code with this wire name; unknown names (a newer daemon) map to `Io`.
pub fn parse_code(name: &str) -> ErrorCode {
    // A newer daemon may send a code this client does not know: report it as an I/O error
    // (the message still says what happened).
    serde_json::from_value(Value::String(name.to_string())).unwrap_or(ErrorCode::Io)
}

/// One request line (without the newline): `{"v":1,"op":…,…}`.
pub fn encode_request(req: &Request) -> String {
    encode_request_for(req, None)
}

/// [`encode_request`] for a client that found the socket in the config file whose
/// [`config_identity`] is `config` without reading its drop-ins: `{"v":1,"config":ID,…}`. A
/// daemon serving another config does not run it ([`OTHER_CONFIG`]).
pub fn encode_request_for(req: &Request, config: Option<&str>) -> String {
    let mut obj = Map::new();
    obj.insert("v".into(), Value::from(PROTOCOL_VERSION));
    if let Some(c) = config {
        obj.insert("config".into(), Value::from(c));
    }
    // A Request always serializes to an object tagged by "op".
    if let Ok(Value::Object(fields)) = serde_json::to_value(req) {
        obj.extend(fields);
    }
    Value::Object(obj).to_string()
}

/// Decode one request line (without the newline). Checks UTF-8, JSON, the version, then the
/// request itself; unknown ops and fields are refused. The `config` of
/// [`encode_request_for`] is dropped: see [`decode_request_for`].
pub fn decode_request(line: &[u8]) -> Result<Request, IpcError> {
    decode_request_for(line).map(|(req, _)| req)
}

/// [`decode_request`], with the identity of the config the client expects the daemon to
/// serve, when it says one.
pub fn decode_request_for(line: &[u8]) -> Result<(Request, Option<String>), IpcError> {
    let text = std::str::from_utf8(line).map_err(|_| IpcError::NotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| IpcError::Malformed(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(IpcError::Malformed("not a JSON object".into()));
    };
    match obj.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(IpcError::Version {
                found: v.to_string(),
            })
        }
        None => {
            return Err(IpcError::Version {
                found: "missing".into(),
            })
        }
    }
    let config = match obj.remove("config") {
        None => None,
        Some(Value::String(c)) => Some(c),
        Some(_) => return Err(IpcError::Invalid("`config` is not a string".into())),
    };
    let req =
        serde_json::from_value(Value::Object(obj)).map_err(|e| IpcError::Invalid(e.to_string()))?;
    Ok((req, config))
}

/// The identity of a config file as [`encode_request_for`] sends it: its device and inode
/// (`DEV:INO`), the same whatever path names it.
pub fn config_identity(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}", meta.dev(), meta.ino())
}

/// One response line (without the newline).
pub fn encode_response(result: &Result<Reply, Error>) -> String {
    let mut line = response_line(result);
    line.pop();
    // Only JSON text went in.
    String::from_utf8(line).unwrap_or_default()
}

/// One response line with its newline, written in one buffer: `{"ok":true,"result":…}` around
/// the result's own text (a large `list` is not copied into another JSON tree). A printed
/// answer is its header line followed by its text.
pub fn response_line(result: &Result<Reply, Error>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(Reply::Printed(text)) = result {
        out.reserve(text.len() + 32);
        out.extend_from_slice(&printed_header(text.len()));
        out.extend_from_slice(text);
        return out;
    }
    match result {
        Ok(r) => {
            if let Reply::Json(t) = r {
                out.reserve(t.len() + 24);
            }
            out.extend_from_slice(OK_PREFIX);
            r.write_json(&mut out);
            out.push(b'}');
        }
        Err(e) => {
            let mut err = Map::new();
            err.insert("code".into(), Value::from(code_name(e.code)));
            err.insert("message".into(), Value::from(e.message.clone()));
            if let Some(h) = &e.hint {
                err.insert("hint".into(), Value::from(h.clone()));
            }
            let v = serde_json::json!({"ok": false, "error": err});
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &v);
        }
    }
    out.push(b'\n');
    out
}

/// Decode one response line into the result or the daemon's error.
pub fn decode_response(line: &[u8], socket: &Path) -> Result<Value, Error> {
    decode_response_as(line, socket)
}

/// [`decode_response`] straight into the result's own type (no [`Value`] in between: a large
/// `list` is read once).
pub fn decode_response_as<T: DeserializeOwned>(line: &[u8], socket: &Path) -> Result<T, Error> {
    /// A response line; `result` is decoded only when present.
    #[derive(serde::Deserialize)]
    struct Wire<T> {
        ok: Option<bool>,
        result: Option<T>,
        error: Option<Value>,
    }
    let bad = |why: String| -> Error {
        IpcError::BadResponse {
            socket: socket.display().to_string(),
            why,
        }
        .into()
    };
    let v: Wire<T> = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    match v.ok {
        Some(true) => match v.result {
            Some(r) => Ok(r),
            None => serde_json::from_value(Value::Null).map_err(|e| bad(e.to_string())),
        },
        Some(false) => {
            let e = v
                .error
                .ok_or_else(|| bad("\"ok\":false without \"error\"".into()))?;
            let field = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            let code = parse_code(&field("code").unwrap_or_default());
            let mut err = Error::new(
                code,
                field("message")
                    .unwrap_or_else(|| "the daemon reported an error without a message".into()),
            );
            err.hint = field("hint");
            Err(err)
        }
        None => Err(bad("no boolean \"ok\" field".into())),
    }
}

/// The start of every successful response line, as [`response_line`] writes it.
const OK_PREFIX: &[u8] = br#"{"ok":true,"result":"#;

/// The start of the header line of a printed answer ([`Reply::Printed`]).
const PRINTED_PREFIX: &[u8] = br#"{"ok":true,"printed":"#;

/// The header line (newline included) of a printed answer of `len` bytes.
fn printed_header(len: usize) -> Vec<u8> {
    let mut h = PRINTED_PREFIX.to_vec();
    h.extend_from_slice(len.to_string().as_bytes());
    h.extend_from_slice(b"}\n");
    h
}

/// The length a printed answer's header line (newline excluded) announces; `None` for any
/// other line.
fn printed_len(line: &[u8]) -> Option<usize> {
    let digits = line.strip_prefix(PRINTED_PREFIX)?.strip_suffix(b"}")?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The answer to a request that asked for its printed form: the printed text, or (from a
/// daemon that answered with the result itself) the result's JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Printed {
    /// What to print, as it is to be printed.
    Text(Vec<u8>),
    /// The result's JSON text: the caller prints it as it prints results.
    Result(RawResult),
}

impl Printed {
    /// The in-process reply as its answer on a connection would be.
    pub fn from_reply(reply: Reply) -> Printed {
        match reply {
            Reply::Printed(text) => Printed::Text(text),
            other => Printed::Result(RawResult::from_reply(other)),
        }
    }
}

/// A request's result as the compact JSON text the daemon wrote (or the in-process engine
/// produced), not decoded: a command printing JSON re-prints it without building values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResult {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawResult {
    /// The result's JSON text.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The text of an in-process reply (a text reply is taken as it is, not copied).
    pub fn from_reply(reply: Reply) -> RawResult {
        match reply {
            Reply::Json(text) => RawResult::whole(text.into_bytes()),
            other => {
                let mut buf = Vec::new();
                other.write_json(&mut buf);
                RawResult::whole(buf)
            }
        }
    }

    fn whole(buf: Vec<u8>) -> RawResult {
        let end = buf.len();
        RawResult { buf, start: 0, end }
    }
}

/// [`decode_response`] without decoding the result: its text is cut out of the line as
/// [`response_line`] wrote it (the caller parses it, so it is not checked here). A line of
/// another form (an error, or another writer's spacing) is decoded and the result re-encoded.
pub fn decode_response_raw(line: Vec<u8>, socket: &Path) -> Result<RawResult, Error> {
    if line.len() > OK_PREFIX.len() && line.starts_with(OK_PREFIX) && line.ends_with(b"}") {
        let end = line.len() - 1;
        return Ok(RawResult {
            buf: line,
            start: OK_PREFIX.len(),
            end,
        });
    }
    let v: Value = decode_response_as(&line, socket)?;
    // Writing a Value into a Vec cannot fail.
    Ok(RawResult::whole(serde_json::to_vec(&v).unwrap_or_default()))
}

/// Outcome of reading one line.
#[derive(Debug)]
pub enum Line {
    /// A complete line (newline stripped). A final line without newline before EOF counts.
    Data(Vec<u8>),
    /// The peer closed the connection at a line boundary.
    Eof,
}

/// Read one `\n`-terminated line of at most `limit` bytes (newline excluded). A longer line
/// is [`IpcError::TooLong`] (the rest is not read); I/O errors, including read timeouts,
/// are [`IpcError::Io`].
pub fn read_line_bounded<R: BufRead>(r: &mut R, limit: usize) -> Result<Line, IpcError> {
    let mut buf = Vec::new();
    // At most one byte past the limit: enough to tell a line of `limit` bytes from a longer
    // one. `read_until` finds the newline a word at a time (a `list` reply is megabytes).
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    match r.take(cap).read_until(b'\n', &mut buf) {
        Ok(_) => {}
        Err(source) => {
            return Err(IpcError::Io {
                what: "reading from the socket".into(),
                source,
            })
        }
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Data(buf));
    }
    if buf.len() > limit {
        return Err(IpcError::TooLong { limit });
    }
    Ok(match buf.is_empty() {
        true => Line::Eof,
        false => Line::Data(buf),
    })
}

/// How much of a reply [`read_reply`] reads on the stack first.
const REPLY_HEAD_BYTES: usize = 16 * 1024;

/// Read the one reply line of at most `limit` bytes from `r`, as [`read_line_bounded`]
/// does. Most replies are small and come in one read, into a buffer on the stack; only a
/// longer one (a `list` of megabytes) goes on through a large read buffer, which then comes
/// in few reads. (That buffer for every command was an `mmap` and a `munmap` per process,
/// whose TLB shootdown costs about 0.1 ms on a VM.) Nothing is expected after the line,
/// except after the header line of a printed answer: then its text.
fn read_reply<R: Read>(mut r: R, limit: usize) -> Result<Answer, IpcError> {
    let mut head = [0u8; REPLY_HEAD_BYTES];
    let n = loop {
        match r.read(&mut head) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(IpcError::Io {
                    what: "reading from the socket".into(),
                    source,
                })
            }
        }
    };
    if n == 0 {
        return Ok(Answer::Line(Line::Eof));
    }
    if let Some(end) = head[..n].iter().position(|b| *b == b'\n') {
        if end > limit {
            return Err(IpcError::TooLong { limit });
        }
        if let Some(len) = printed_len(&head[..end]) {
            return read_printed(&head[end + 1..n], r, len, limit).map(Answer::Printed);
        }
        return Ok(Answer::Line(Line::Data(head[..end].to_vec())));
    }
    let rest = std::io::Cursor::new(&head[..n]).chain(r);
    let mut reader = BufReader::with_capacity(256 * 1024, rest);
    match read_line_bounded(&mut reader, limit)? {
        Line::Data(line) => match printed_len(&line) {
            // A printed answer whose header came in pieces.
            Some(len) => read_printed(&[], reader, len, limit).map(Answer::Printed),
            None => Ok(Answer::Line(Line::Data(line))),
        },
        Line::Eof => Ok(Answer::Line(Line::Eof)),
    }
}

/// The `len` bytes of a printed answer: `first` (read with its header), then the rest from
/// `r`. An answer that ends early is an error (nothing partial is printed).
fn read_printed<R: Read>(
    first: &[u8],
    r: R,
    len: usize,
    limit: usize,
) -> Result<Vec<u8>, IpcError> {
    if len > limit {
        return Err(IpcError::TooLong { limit });
    }
    let first = &first[..first.len().min(len)];
    // The length is the daemon's word: reserve at most 16 MiB before the bytes arrive.
    let mut text = Vec::with_capacity(len.min(16 << 20));
    text.extend_from_slice(first);
    let left = (len - first.len()) as u64;
    if let Err(source) = r.take(left).read_to_end(&mut text) {
        return Err(IpcError::Io {
            what: "reading from the socket".into(),
            source,
        });
    }
    if text.len() < len {
        return Err(IpcError::Io {
            what: "reading from the socket".into(),
            source: std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("the answer ended after {} of its {len} bytes", text.len()),
            ),
        });
    }
    Ok(text)
}

/// What a client reads back for one request.
enum Answer {
    /// A response line (or the end of the connection).
    Line(Line),
    /// The text of a printed answer, read after its header line.
    Printed(Vec<u8>),
}

/// What one buffered chunk did to the line being read.
enum Step {
    /// Consume this many bytes; the line goes on.
    More(usize),
    /// Consume this many bytes (the newline included); the line is complete.
    Done(usize, Line),
}

/// Append `chunk` up to its first newline to `buf` (an empty chunk is EOF), refusing a line
/// longer than `limit` bytes: the server's line splitting.
fn line_step(buf: &mut Vec<u8>, chunk: &[u8], limit: usize) -> Result<Step, IpcError> {
    if chunk.is_empty() {
        let line = match buf.is_empty() {
            true => Line::Eof,
            false => Line::Data(std::mem::take(buf)),
        };
        return Ok(Step::Done(0, line));
    }
    let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
        Some(i) => (i, true),
        None => (chunk.len(), false),
    };
    if buf.len() + take > limit {
        return Err(IpcError::TooLong { limit });
    }
    buf.extend_from_slice(&chunk[..take]);
    Ok(match done {
        true => Step::Done(take + 1, Line::Data(std::mem::take(buf))),
        false => Step::More(take),
    })
}

fn write_line(w: &mut impl Write, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    write_bytes(w, &bytes)
}

fn write_bytes(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes)?;
    w.flush()
}

/// Write one response line, the same bytes as [`response_line`]; a large text result (a
/// `list`) is sent from where it is, not copied into the line's buffer first.
fn write_response(w: &mut impl Write, result: &Result<Reply, Error>) -> std::io::Result<()> {
    match result {
        Ok(Reply::Json(t)) if t.len() >= 64 * 1024 => {
            w.write_all(OK_PREFIX)?;
            w.write_all(t.as_bytes())?;
            w.write_all(b"}\n")?;
            w.flush()
        }
        Ok(Reply::Printed(t)) if t.len() >= 64 * 1024 => {
            w.write_all(&printed_header(t.len()))?;
            w.write_all(t)?;
            w.flush()
        }
        _ => write_bytes(w, &response_line(result)),
    }
}

/// Read the next request line from a server connection: wait up to `t.idle` for its first
/// byte, then at most `t.request` in total for its newline ([`IpcError::Deadline`]). An idle
/// timeout is an [`IpcError::Io`] (the connection just ends).
fn read_request_line(reader: &mut BufReader<UnixStream>, t: Timeouts) -> Result<Line, IpcError> {
    let mut buf = Vec::new();
    let mut started: Option<std::time::Instant> = None;
    loop {
        if started.is_none() && (!buf.is_empty() || !reader.buffer().is_empty()) {
            started = Some(std::time::Instant::now());
        }
        let wait = match started {
            None => t.idle,
            Some(at) => match t.request.checked_sub(at.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => return Err(IpcError::Deadline { limit: t.request }),
            },
        };
        if reader.buffer().is_empty() {
            // `Some(ZERO)` is refused by the socket: an unset limit waits indefinitely.
            let _ = reader
                .get_ref()
                .set_read_timeout(Some(wait).filter(|d| !d.is_zero()));
        }
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if started.is_some()
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(IpcError::Deadline { limit: t.request })
            }
            Err(source) => {
                return Err(IpcError::Io {
                    what: "reading from the socket".into(),
                    source,
                })
            }
        };
        match line_step(&mut buf, chunk, MAX_REQUEST_BYTES)? {
            Step::More(n) => reader.consume(n),
            Step::Done(n, line) => {
                reader.consume(n);
                return Ok(line);
            }
        }
    }
}

/// Serve one connection: read request lines until EOF, answer each with `handler`. A line
/// that cannot be decoded (oversized, not UTF-8, malformed, wrong version, unknown op) or
/// that does not end within `t.request` of its first byte gets an error response and the
/// connection is closed; so does a connection idle for `t.idle`. Empty lines are ignored.
/// Returns the number of requests handled. `handler` is never called for undecodable input.
pub fn serve_connection(
    stream: UnixStream,
    t: Timeouts,
    serves: &dyn Fn(&str) -> bool,
    handler: &mut dyn FnMut(Request) -> Result<Reply, Error>,
) -> usize {
    let Ok(()) = stream.set_write_timeout(Some(t.write).filter(|d| !d.is_zero())) else {
        return 0;
    };
    let Ok(mut writer) = stream.try_clone() else {
        return 0;
    };
    let mut reader = BufReader::new(stream);
    let mut handled = 0;
    loop {
        let line = match read_request_line(&mut reader, t) {
            Ok(Line::Eof) => break,
            Ok(Line::Data(l)) => l,
            Err(IpcError::Io { source, .. }) => {
                tracing::debug!(error = %source, "connection closed: read failed or idle timeout");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "refusing a request");
                let _ = write_bytes(&mut writer, &response_line(&Err(e.into())));
                break;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode_request_for(&line) {
            Ok((_, Some(config))) if !serves(&config) => {
                // Not run: the client finds its daemon through its whole config.
                let e = Error::new(ErrorCode::Busy, OTHER_CONFIG)
                    .hint("the client reads its whole config to find its daemon");
                let _ = write_bytes(&mut writer, &response_line(&Err(e)));
                break;
            }
            Ok((req, _)) => {
                let result = handler(req);
                handled += 1;
                if let Err(e) = write_response(&mut writer, &result) {
                    tracing::debug!(error = %e, "cannot send the response; client gone");
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "refusing a request");
                let _ = write_bytes(&mut writer, &response_line(&Err(e.into())));
                break;
            }
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    handled
}

/// The error of a command that needs the daemon when none answers on `socket`.
pub fn not_running(socket: &Path) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("the ws-ckpt daemon is not running (nothing answers on {})", socket.display()),
    )
    .hint("start it (systemctl start ws-ckpt, or `ws-ckpt daemon`), or run the command as root to work without it")
}

/// The message of the refusal a stopping daemon sends instead of running a request (the
/// request was not run: a client may send it elsewhere).
pub const SHUTTING_DOWN: &str = "the ws-ckpt daemon is shutting down";

/// The message of the refusal of a request whose client expects a daemon serving another
/// config file ([`encode_request_for`]); the request was not run.
pub const OTHER_CONFIG: &str = "this ws-ckpt daemon serves another config file";

/// Client: connect to the daemon's socket. `Ok(None)` when no daemon answers (no socket, or
/// connection refused); other failures (permission) are errors.
pub fn connect(socket: &Path) -> Result<Option<UnixStream>, Error> {
    match UnixStream::connect(socket) {
        Ok(s) => Ok(Some(s)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Err(Error::new(ErrorCode::PermissionDenied, format!("cannot connect to the ws-ckpt daemon at {}: {e}", socket.display()))
                .hint("the socket should be mode 0666 and its directory world-searchable; check the runtime_dir permissions"))
        }
        Err(e) => Err(Error::io("cannot connect to the ws-ckpt daemon at", socket, e)),
    }
}

/// What became of a request sent on a connection.
#[derive(Debug)]
pub enum Exchange<T = Value> {
    /// The daemon answered (a result or its error).
    Answered(Result<T, Error>),
    /// The daemon did not run the request: it is shutting down, or the connection was reset
    /// before the request was read. Safe to send it elsewhere (a new daemon, in-process).
    NotTaken(Error),
}

/// Client: send one request line `{"v":1, ...Request}` on `stream` (connected to `socket`)
/// and read one response line. `timeout` bounds each read and write (zero = wait
/// indefinitely, for long operations such as a large init).
pub fn exchange(stream: UnixStream, socket: &Path, req: &Request, timeout: Duration) -> Exchange {
    exchange_as(stream, socket, req, timeout)
}

/// [`exchange`], decoding the result straight into `T`.
pub fn exchange_as<T: DeserializeOwned>(
    stream: UnixStream,
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Exchange<T> {
    exchange_with(stream, socket, (req, None), timeout, |answer| {
        decode_response_as(&answer_line(answer, socket)?, socket)
    })
}

/// [`exchange`], keeping the result as the text the daemon wrote ([`decode_response_raw`]).
pub fn exchange_raw(
    stream: UnixStream,
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Exchange<RawResult> {
    exchange_raw_for(stream, socket, req, None, timeout)
}

/// [`exchange_raw`] of a request sent with the identity of the config file the client read
/// the socket from ([`encode_request_for`]); a daemon serving another config does not take
/// it, nor does one that predates the field (it refuses it as unknown).
pub fn exchange_raw_for(
    stream: UnixStream,
    socket: &Path,
    req: &Request,
    config: Option<&str>,
    timeout: Duration,
) -> Exchange<RawResult> {
    exchange_with(stream, socket, (req, config), timeout, |answer| {
        decode_response_raw(answer_line(answer, socket)?, socket)
    })
}

/// [`exchange`] of a request that asks for its printed form: the text to print, or the
/// result when the daemon answered with one.
pub fn exchange_printed(
    stream: UnixStream,
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Exchange<Printed> {
    exchange_printed_for(stream, socket, req, None, timeout)
}

/// [`exchange_printed`] with the identity of the client's config file (see
/// [`exchange_raw_for`]).
pub fn exchange_printed_for(
    stream: UnixStream,
    socket: &Path,
    req: &Request,
    config: Option<&str>,
    timeout: Duration,
) -> Exchange<Printed> {
    exchange_with(
        stream,
        socket,
        (req, config),
        timeout,
        |answer| match answer {
            Answer::Printed(text) => Ok(Printed::Text(text)),
            Answer::Line(_) => {
                decode_response_raw(answer_line(answer, socket)?, socket).map(Printed::Result)
            }
        },
    )
}

/// The response line of an answer that must be one (a printed answer to a request that
/// did not ask for one is a protocol error).
fn answer_line(answer: Answer, socket: &Path) -> Result<Vec<u8>, Error> {
    match answer {
        Answer::Line(Line::Data(line)) => Ok(line),
        Answer::Line(Line::Eof) => Err(IpcError::BadResponse {
            socket: socket.display().to_string(),
            why: "the connection ended without an answer".into(),
        }
        .into()),
        Answer::Printed(_) => Err(IpcError::BadResponse {
            socket: socket.display().to_string(),
            why: "printed output where a result was expected".into(),
        }
        .into()),
    }
}

/// [`exchange`] of `(request, config identity)` with the response line decoded by `decode`.
fn exchange_with<T>(
    stream: UnixStream,
    socket: &Path,
    (req, config): (&Request, Option<&str>),
    timeout: Duration,
    decode: impl FnOnce(Answer) -> Result<T, Error>,
) -> Exchange<T> {
    let t = Some(timeout).filter(|d| !d.is_zero());
    let io = |what: &str, e: std::io::Error| -> Error {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            Error::new(
                ErrorCode::Io,
                format!("no answer from the ws-ckpt daemon at {} within {}", socket.display(), humantime::format_duration(timeout)),
            )
            .hint("the daemon may be busy with a long operation; check `journalctl -u ws-ckpt` and retry")
        } else {
            Error::io(what, socket, e)
        }
    };
    let reset =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
    let answered = Exchange::Answered;
    if let Err(e) = stream
        .set_read_timeout(t)
        .and_then(|()| stream.set_write_timeout(t))
    {
        return answered(Err(io("cannot configure", e)));
    }
    if let Err(e) = write_line(&mut &stream, &encode_request_for(req, config)) {
        let err = io("cannot send the request to", e);
        return Exchange::NotTaken(err);
    }
    // One request per connection: the daemon's thread then finds the end of the connection
    // as soon as it has answered, instead of sleeping until we close it (a wake-up less per
    // request; the answer still comes back on the open read side).
    let _ = stream.shutdown(std::net::Shutdown::Write);
    match read_reply(stream.take(MAX_RESPONSE_BYTES as u64 + 1), MAX_RESPONSE_BYTES) {
        Ok(answer @ (Answer::Line(Line::Data(_)) | Answer::Printed(_))) => match decode(answer) {
            Err(e) if e.message == SHUTTING_DOWN || e.message == OTHER_CONFIG => {
                Exchange::NotTaken(e)
            }
            // A daemon that predates the config identity refuses the whole request.
            Err(e)
                if config.is_some()
                    && e.code == ErrorCode::InvalidArgument
                    && e.message.contains("unknown field `config`") =>
            {
                Exchange::NotTaken(e)
            }
            r => answered(r),
        },
        Ok(Answer::Line(Line::Eof)) => answered(Err(Error::new(
            ErrorCode::Io,
            format!(
                "the ws-ckpt daemon at {} closed the connection without answering",
                socket.display()
            ),
        )
        .hint("it may have stopped while running the request; check with `ws-ckpt list` or `ws-ckpt status`, and `journalctl -u ws-ckpt`"))),
        // Reset with our request unread: the daemon never took it.
        Err(IpcError::Io { source, .. }) if reset(&source) => {
            Exchange::NotTaken(io("the connection was reset by", source))
        }
        Err(IpcError::Io { source, .. }) => answered(Err(io("cannot read the answer from", source))),
        Err(e) => answered(Err(IpcError::BadResponse {
            socket: socket.display().to_string(),
            why: e.to_string(),
        }
        .into())),
    }
}

/// Client: [`connect`] then [`exchange`]: `Ok(result)` or the daemon's `Err(Error)`. No
/// daemon → an `Io` error saying the daemon is not running.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Value, Error> {
    let Some(stream) = connect(socket)? else {
        return Err(not_running(socket));
    };
    match exchange(stream, socket, req, timeout) {
        Exchange::Answered(r) => r,
        Exchange::NotTaken(e) => Err(e),
    }
}

/// True when a daemon answers on `socket` (a connection succeeds).
pub fn daemon_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// `<runtime_dir>/ws-ckpt.sock` of a config, or the socket `ws-ckpt daemon --socket` named.
pub fn socket_path(config: &crate::config::Config) -> std::path::PathBuf {
    config
        .overrides
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.runtime_dir.join(SOCKET_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn status_req() -> Request {
        Request::Status { workspace: None }
    }

    #[test]
    fn request_round_trips_with_version_first() {
        let req = Request::Checkpoint {
            workspace: "/home/a/p".into(),
            snapshot: Some("c1".into()),
            message: Some("m".into()),
            metadata: Some(serde_json::json!({"k": [1, 2]})),
            pin: true,
        };
        let line = encode_request(&req);
        assert!(line.starts_with("{\"v\":1,\"op\":\"checkpoint\""), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(decode_request(line.as_bytes()).unwrap(), req);
        assert_eq!(
            decode_request(encode_request(&Request::Reload).as_bytes()).unwrap(),
            Request::Reload
        );
    }

    #[test]
    fn minimal_request_uses_defaults() {
        let req =
            decode_request(br#"{"v":1,"op":"rollback","workspace":"ws-123456","snapshot":"c1"}"#)
                .unwrap();
        assert_eq!(
            req,
            Request::Rollback {
                workspace: "ws-123456".into(),
                snapshot: Some("c1".into()),
                ancestors: None,
                preview: false,
                force: false
            }
        );
    }

    #[test]
    fn version_is_required_and_checked() {
        for line in [
            &br#"{"op":"status"}"#[..],
            br#"{"v":2,"op":"status"}"#,
            br#"{"v":"1","op":"status"}"#,
            br#"{"v":0,"op":"status"}"#,
        ] {
            let e = decode_request(line).unwrap_err();
            assert!(matches!(e, IpcError::Version { .. }), "{e}");
            assert_eq!(Error::from(e).code, ErrorCode::InvalidArgument);
        }
    }

    #[test]
    fn malformed_inputs_are_refused_with_invalid_argument() {
        let cases: [&[u8]; 7] = [
            b"not json",
            b"[1,2,3]",
            b"{\"v\":1}",
            b"{\"v\":1,\"op\":\"format-disk\"}",
            b"{\"v\":1,\"op\":\"status\",\"evil\":true}",
            b"{\"v\":1,\"op\":\"rollback\",\"workspace\":\"w\",\"snapshot\":3}",
            b"\xff\xfe{\"v\":1}",
        ];
        for c in cases {
            let e = decode_request(c).unwrap_err();
            let err = Error::from(e);
            assert_eq!(
                err.code,
                ErrorCode::InvalidArgument,
                "{:?}: {}",
                String::from_utf8_lossy(c),
                err.message
            );
        }
        assert!(matches!(
            decode_request(b"\xff").unwrap_err(),
            IpcError::NotUtf8
        ));
    }

    /// Hands out its bytes `chunk` at a time, as a socket may.
    struct Chunked(Cursor<Vec<u8>>, usize);

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_reply_is_read_whole_in_one_read_or_across_many() {
        let data = |line: &[u8]| Line::Data(line.to_vec());
        let read = |bytes: Vec<u8>, chunk: usize, limit: usize| {
            read_reply(Chunked(Cursor::new(bytes), chunk), limit).map(|a| match a {
                Answer::Line(l) => l,
                Answer::Printed(_) => panic!("not a printed answer"),
            })
        };
        let same = |a: Line, b: Line| match (a, b) {
            (Line::Data(x), Line::Data(y)) => x == y,
            (Line::Eof, Line::Eof) => true,
            _ => false,
        };
        // Small, in one read (the usual reply), and in pieces.
        assert!(same(
            read(b"{\"ok\":true}\n".to_vec(), 1 << 20, 100).unwrap(),
            data(b"{\"ok\":true}")
        ));
        assert!(same(
            read(b"{\"ok\":true}\n".to_vec(), 3, 100).unwrap(),
            data(b"{\"ok\":true}")
        ));
        // Longer than the stack buffer, in one read and in odd pieces.
        let big: Vec<u8> = (0..REPLY_HEAD_BYTES * 3 + 7)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut line = big.clone();
        line.push(b'\n');
        for chunk in [1 << 20, REPLY_HEAD_BYTES, 4093] {
            let got = read(line.clone(), chunk, big.len()).unwrap();
            assert!(same(got, data(&big)), "chunk {chunk}");
            assert!(matches!(
                read(line.clone(), chunk, big.len() - 1),
                Err(IpcError::TooLong { .. })
            ));
        }
        // Too long within the first read; at the limit is fine.
        assert!(matches!(
            read(b"0123456789\n".to_vec(), 64, 9),
            Err(IpcError::TooLong { limit: 9 })
        ));
        assert!(same(
            read(b"0123456789\n".to_vec(), 64, 10).unwrap(),
            data(b"0123456789")
        ));
        // Closed without a reply; a last line without its newline still counts.
        assert!(same(read(Vec::new(), 64, 10).unwrap(), Line::Eof));
        assert!(same(
            read(b"partial".to_vec(), 3, 10).unwrap(),
            data(b"partial")
        ));
    }

    #[test]
    fn bounded_reader_splits_lines_and_refuses_long_ones() {
        let mut r = Cursor::new(b"abc\n\nlast".to_vec());
        assert!(matches!(read_line_bounded(&mut r, 10).unwrap(), Line::Data(l) if l == b"abc"));
        assert!(matches!(read_line_bounded(&mut r, 10).unwrap(), Line::Data(l) if l.is_empty()));
        assert!(matches!(read_line_bounded(&mut r, 10).unwrap(), Line::Data(l) if l == b"last"));
        assert!(matches!(read_line_bounded(&mut r, 10).unwrap(), Line::Eof));
        // Exactly at the limit is fine; one byte more is not, even across buffer refills.
        let mut r = BufReader::with_capacity(3, Cursor::new(b"0123456789\n01234567890\n".to_vec()));
        assert!(matches!(read_line_bounded(&mut r, 10).unwrap(), Line::Data(l) if l.len() == 10));
        assert!(matches!(
            read_line_bounded(&mut r, 10).unwrap_err(),
            IpcError::TooLong { limit: 10 }
        ));
    }

    #[test]
    fn responses_round_trip() {
        let p = Path::new("/run/x.sock");
        let ok = encode_response(&Ok(serde_json::json!({"a": 1}).into()));
        assert_eq!(
            encode_response(&Ok(Reply::Json(r#"{"a":1}"#.into()))),
            ok,
            "a text reply is the same line"
        );
        assert_eq!(ok, r#"{"ok":true,"result":{"a":1}}"#);
        assert_eq!(decode_response(ok.as_bytes(), p).unwrap()["a"], 1);
        let e = Error::new(ErrorCode::SnapshotMissing, "snapshot c2 of ws-1 is MISSING")
            .hint("delete --force");
        let line = encode_response(&Err(e.clone()));
        assert!(line.contains(r#""code":"SnapshotMissing""#), "{line}");
        assert_eq!(decode_response(line.as_bytes(), p).unwrap_err(), e);
        let no_hint = encode_response(&Err(Error::new(ErrorCode::Busy, "busy")));
        assert!(!no_hint.contains("hint"));
        assert_eq!(decode_response(b"{}", p).unwrap_err().code, ErrorCode::Io);
        assert_eq!(
            decode_response(b"garbage", p).unwrap_err().code,
            ErrorCode::Io
        );
    }

    #[test]
    fn raw_results_are_the_text_the_daemon_wrote() {
        let p = Path::new("/run/x.sock");
        let v = serde_json::json!({"a": [1, 2.5, "é\n"], "b": {}});
        let compact = serde_json::to_vec(&v).unwrap();
        let mut line = response_line(&Ok(v.clone().into()));
        line.pop();
        assert_eq!(decode_response_raw(line, p).unwrap().bytes(), compact);
        // Another writer's spacing: decoded, then written compactly.
        let spaced = br#"{ "result" : {"a": [1, 2.5, "\u00e9\n"], "b": {}}, "ok": true }"#;
        assert_eq!(
            decode_response_raw(spaced.to_vec(), p).unwrap().bytes(),
            compact
        );
        let e = Error::new(ErrorCode::SnapshotMissing, "gone").hint("delete --force");
        let mut line = response_line(&Err(e.clone()));
        line.pop();
        assert_eq!(decode_response_raw(line, p).unwrap_err(), e);
        assert_eq!(
            decode_response_raw(b"garbage".to_vec(), p)
                .unwrap_err()
                .code,
            ErrorCode::Io
        );
        // In-process: the reply's own text.
        let text = String::from_utf8(compact.clone()).unwrap();
        assert_eq!(RawResult::from_reply(Reply::Json(text)).bytes(), compact);
        assert_eq!(RawResult::from_reply(v.into()).bytes(), compact);
    }

    #[test]
    fn a_printed_answer_is_its_header_then_its_bytes_read_whole_or_refused() {
        let text: Vec<u8> = (0..REPLY_HEAD_BYTES * 2 + 5)
            .map(|i| {
                if i % 61 == 60 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        let sent = response_line(&Ok(Reply::Printed(text.clone())));
        assert!(
            sent.starts_with(format!("{{\"ok\":true,\"printed\":{}}}\n", text.len()).as_bytes())
        );
        let read = |bytes: &[u8], chunk: usize, limit: usize| {
            read_reply(Chunked(Cursor::new(bytes.to_vec()), chunk), limit)
        };
        for chunk in [1 << 20, 7, REPLY_HEAD_BYTES] {
            match read(&sent, chunk, text.len()).unwrap() {
                Answer::Printed(t) => assert_eq!(t, text, "chunk {chunk}"),
                Answer::Line(_) => panic!("a printed answer read as a line"),
            }
        }
        // Small, and empty.
        for t in [&b"[]\n"[..], b""] {
            let sent = response_line(&Ok(Reply::Printed(t.to_vec())));
            assert!(matches!(read(&sent, 64, 100).unwrap(), Answer::Printed(got) if got == t));
        }
        // Cut short, or longer than the limit: an error, never a part.
        let cut = &sent[..sent.len() - 1];
        assert!(matches!(read(cut, 4096, 1 << 20), Err(IpcError::Io { .. })));
        assert!(matches!(
            read(&sent, 4096, text.len() - 1),
            Err(IpcError::TooLong { .. })
        ));
        // A header of another form is an ordinary line.
        for line in [
            &b"{\"ok\":true,\"printed\":x}\n"[..],
            b"{\"ok\":true,\"printed\":}\n",
        ] {
            assert!(matches!(
                read(line, 64, 100).unwrap(),
                Answer::Line(Line::Data(_))
            ));
        }
        // In-process, the same text; as a value, the text as a string.
        assert_eq!(
            Printed::from_reply(Reply::Printed(b"[]\n".to_vec())),
            Printed::Text(b"[]\n".to_vec())
        );
        assert_eq!(
            Reply::Printed(b"[]\n".to_vec()).decode::<String>().unwrap(),
            "[]\n"
        );
    }

    #[test]
    fn a_large_text_reply_is_sent_as_its_response_line() {
        let big = format!("[{}\"end\"]", "\"x\",".repeat(40_000));
        let printed = Reply::Printed(big.clone().into_bytes());
        for r in [
            Ok(Reply::Json(big)),
            Ok(Reply::Json("[]".into())),
            Ok(printed),
            Ok(Reply::Printed(b"[]\n".to_vec())),
        ] {
            let mut sent = Vec::new();
            write_response(&mut sent, &r).unwrap();
            assert_eq!(sent, response_line(&r));
        }
    }

    #[test]
    fn every_code_maps_back() {
        for c in [
            ErrorCode::InvalidArgument,
            ErrorCode::SnapshotMissing,
            ErrorCode::PermissionDenied,
            ErrorCode::Io,
        ] {
            assert_eq!(parse_code(&code_name(c)), c);
        }
        assert_eq!(parse_code("SomethingNew"), ErrorCode::Io);
    }

    fn serve_in_thread(server: UnixStream) -> std::thread::JoinHandle<(usize, Vec<Request>)> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let n = serve_connection(
                server,
                Timeouts {
                    idle: Duration::from_secs(5),
                    request: Duration::from_secs(5),
                    write: Duration::from_secs(5),
                },
                &|_: &str| true,
                &mut |req| {
                    seen.push(req.clone());
                    Ok(Value::from(req.op()).into())
                },
            );
            (n, seen)
        })
    }

    fn read_response(r: &mut impl BufRead) -> Value {
        match read_line_bounded(r, MAX_RESPONSE_BYTES).unwrap() {
            Line::Data(l) => serde_json::from_slice(&l).unwrap(),
            Line::Eof => panic!("connection closed without a response"),
        }
    }

    #[test]
    fn server_answers_several_requests_then_closes_on_garbage() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = serve_in_thread(server);
        let mut w = client.try_clone().unwrap();
        let mut r = BufReader::new(client);
        w.write_all(
            format!(
                "{}\n\n{}\n",
                encode_request(&status_req()),
                encode_request(&Request::Reload)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            read_response(&mut r),
            serde_json::json!({"ok": true, "result": "status"})
        );
        assert_eq!(
            read_response(&mut r),
            serde_json::json!({"ok": true, "result": "reload"})
        );
        w.write_all(b"{\"v\":1,\"op\":\"nope\"}\n").unwrap();
        let resp = read_response(&mut r);
        assert_eq!(resp["ok"], false);
        assert_eq!(resp["error"]["code"], "InvalidArgument");
        assert!(matches!(read_line_bounded(&mut r, 100).unwrap(), Line::Eof));
        let (n, seen) = t.join().unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, vec![status_req(), Request::Reload]);
    }

    #[test]
    fn a_request_for_another_config_file_is_not_run_and_not_taken() {
        let ours = "2049:77";
        let serve = |server: UnixStream| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                serve_connection(
                    server,
                    Timeouts::DAEMON,
                    &|id: &str| id == ours,
                    &mut |req| {
                        seen.push(req.clone());
                        Ok(Value::from(req.op()).into())
                    },
                );
                seen
            })
        };
        let socket = Path::new("/test.sock");
        // The line names the file; a plain decode drops it, the daemon's decode returns it.
        let line = encode_request_for(&status_req(), Some(ours));
        assert!(
            line.starts_with(r#"{"v":1,"config":"2049:77","op":"status""#),
            "{line}"
        );
        assert_eq!(decode_request(line.as_bytes()).unwrap(), status_req());
        assert_eq!(
            decode_request_for(line.as_bytes()).unwrap(),
            (status_req(), Some(ours.to_string()))
        );
        assert!(decode_request_for(br#"{"v":1,"config":7,"op":"status"}"#).is_err());
        // Another file: refused before the handler, and the client may send it elsewhere.
        let (client, server) = UnixStream::pair().unwrap();
        let t = serve(server);
        let r = exchange_raw_for(
            client,
            socket,
            &status_req(),
            Some("2049:78"),
            Duration::from_secs(10),
        );
        match r {
            Exchange::NotTaken(e) => assert_eq!(e.message, OTHER_CONFIG),
            other => panic!("{other:?}"),
        }
        assert!(t.join().unwrap().is_empty(), "the request must not run");
        // A daemon that predates the field refuses it as unknown: not taken either.
        let (client, server) = UnixStream::pair().unwrap();
        let old = std::thread::spawn(move || {
            let mut r = BufReader::new(&server);
            read_line_bounded(&mut r, MAX_REQUEST_BYTES).unwrap();
            let e = Error::new(
                ErrorCode::InvalidArgument,
                "invalid request: unknown field `config`, expected one of `workspace`",
            );
            (&server).write_all(&response_line(&Err(e))).unwrap();
        });
        let r = exchange_raw_for(
            client,
            socket,
            &status_req(),
            Some(ours),
            Duration::from_secs(10),
        );
        assert!(matches!(r, Exchange::NotTaken(_)), "{r:?}");
        old.join().unwrap();

        // Its own file, or none named: run.
        for config in [Some(ours), None] {
            let (client, server) = UnixStream::pair().unwrap();
            let t = serve(server);
            match exchange_raw_for(
                client,
                socket,
                &status_req(),
                config,
                Duration::from_secs(10),
            ) {
                Exchange::Answered(Ok(raw)) => assert_eq!(raw.bytes(), br#""status""#),
                other => panic!("{config:?}: {other:?}"),
            }
            assert_eq!(t.join().unwrap(), vec![status_req()]);
        }
    }

    #[test]
    fn a_client_ends_its_side_once_its_request_is_sent() {
        let (client, server) = UnixStream::pair().unwrap();
        let answering = std::thread::spawn(move || {
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut r = BufReader::new(&server);
            let Line::Data(line) = read_line_bounded(&mut r, MAX_REQUEST_BYTES).unwrap() else {
                panic!("no request");
            };
            // Before any answer: the client has said it sends nothing more.
            let end = read_line_bounded(&mut r, MAX_REQUEST_BYTES);
            assert!(matches!(end, Ok(Line::Eof)), "{end:?}");
            (&server)
                .write_all(&response_line(&Ok(serde_json::json!("ok").into())))
                .unwrap();
            decode_request(&line).unwrap()
        });
        let socket = Path::new("/test.sock");
        match exchange(client, socket, &status_req(), Duration::from_secs(10)) {
            Exchange::Answered(Ok(v)) => assert_eq!(v, "ok"),
            other => panic!("{other:?}"),
        }
        assert_eq!(answering.join().unwrap(), status_req());
    }

    #[test]
    fn server_refuses_oversized_line_without_reading_it_all() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = serve_in_thread(server);
        let mut w = client.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            // Keep writing past the limit; the server stops reading and closes.
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < MAX_REQUEST_BYTES * 2 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        let mut r = BufReader::new(client);
        let resp = read_response(&mut r);
        assert_eq!(resp["error"]["code"], "InvalidArgument");
        assert!(resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than"));
        writer.join().unwrap();
        let (n, seen) = t.join().unwrap();
        assert_eq!((n, seen.len()), (0, 0));
    }

    #[test]
    fn server_closes_idle_connection_after_timeout() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_connection(
                server,
                Timeouts {
                    idle: Duration::from_millis(100),
                    request: Duration::from_secs(5),
                    write: Duration::from_secs(1),
                },
                &|_: &str| true,
                &mut |_| Ok(Value::Null.into()),
            )
        });
        let mut r = BufReader::new(client);
        assert!(matches!(read_line_bounded(&mut r, 100).unwrap(), Line::Eof));
        assert_eq!(t.join().unwrap(), 0);
    }

    #[test]
    fn a_request_trickled_byte_by_byte_is_cut_at_the_whole_request_deadline() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_connection(
                server,
                Timeouts {
                    idle: Duration::from_secs(5),
                    request: Duration::from_millis(300),
                    write: Duration::from_secs(1),
                },
                &|_: &str| true,
                &mut |_| Ok(Value::Null.into()),
            )
        });
        let mut w = client.try_clone().unwrap();
        let start = std::time::Instant::now();
        // One byte every 50 ms: each read is quick, the whole line is not.
        let trickle = std::thread::spawn(move || {
            for b in b"{\"v\":1,\"op\":\"status\",\"workspace\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
                if w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut r = BufReader::new(client);
        let resp = read_response(&mut r);
        let took = start.elapsed();
        assert_eq!(resp["error"]["code"], "InvalidArgument", "{resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .contains("first byte"),
            "{resp}"
        );
        assert!(took < Duration::from_secs(2), "cut after {took:?}");
        assert_eq!(t.join().unwrap(), 0);
        trickle.join().unwrap();
    }

    #[test]
    fn client_reports_daemon_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(SOCKET_NAME);
        assert!(!daemon_running(&sock));
        let e = call(&sock, &status_req(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);
        assert!(e.message.contains("not running"), "{}", e.message);
        // A stale socket file nobody listens on: connection refused, same answer.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let e = call(&sock, &status_req(), Duration::from_secs(1)).unwrap_err();
        assert!(e.message.contains("not running"), "{}", e.message);
    }

    #[test]
    fn client_talks_to_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(SOCKET_NAME);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                serve_connection(s, Timeouts::DAEMON, &|_: &str| true, &mut |req| match req {
                    Request::Status { .. } => Ok(serde_json::json!({"health": "healthy"}).into()),
                    _ => Err(Error::new(ErrorCode::PermissionDenied, "no").hint("ask root")),
                });
            }
        });
        assert!(daemon_running(&sock));
        let v = call(&sock, &status_req(), Duration::from_secs(5)).unwrap();
        assert_eq!(v["health"], "healthy");
        let e = call(&sock, &Request::Reload, Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str(), e.hint.as_deref()),
            (ErrorCode::PermissionDenied, "no", Some("ask root"))
        );
        t.join().unwrap();
    }

    #[test]
    fn client_times_out_on_a_silent_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(SOCKET_NAME);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let start = std::time::Instant::now();
        let e = call(&sock, &status_req(), Duration::from_millis(200)).unwrap_err();
        assert!(e.message.contains("no answer"), "{}", e.message);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
