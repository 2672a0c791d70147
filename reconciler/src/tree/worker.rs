//! The credential worker: a job on a non-root owner's tree runs in a separate process that has
//! irreversibly become that owner, so the kernel enforces her own permissions on every entry.
//!
//! Daemon side ([`run`]): `socketpair(SOCK_SEQPACKET|SOCK_CLOEXEC)`; spawn (fork+exec through
//! `std::process::Command`, never a bare fork of the multithreaded daemon) the daemon's own
//! binary (`/proc/self/exe` by default) with the hidden argument [`WORKER_ARG`], an empty
//! environment, `/` as working directory, the socket as stdin and stdout discarded; send one
//! request with the root descriptors attached (`SCM_RIGHTS`); then read replies with `poll`,
//! bounded in size, parsed defensively ([`super::proto`]), with an idle timeout, an optional
//! deadline and the caller's cancellation check; the worker is killed (SIGKILL) and reaped on
//! every way out.
//!
//! Worker side ([`main_if_worker`], called first thing by the binary's `main`): not dumpable,
//! close every inherited descriptor but stdio, refuse to run unless started as root, receive
//! the request, drop to the owner ([`super::creds::drop_privileges`]: bounding and ambient
//! capability sets emptied, groups, gid, uid, `PR_SET_NO_NEW_PRIVS`, checked afterwards), set
//! `PR_SET_PDEATHSIG`, re-open each root descriptor as itself (`openat(fd, ".")`, so the
//! daemon's open grants nothing), run the job with the same engine as in-process, reply, exit.
//!
//! What it must not do: trust anything the worker sends, leave a worker running, do anything by
//! path (the worker only ever uses the descriptors it was given), or let a worker keep a
//! capability.

use std::ffi::OsStr;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

use super::creds::{drop_privileges, Owner};
use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{reopen_dir, Dir};
use super::proto::{
    decode_reply, decode_request, encode, JobSpec, Outcome, Reply, Request, WireError, MAX_FDS,
    MAX_FRAME, VERSION,
};
use super::Progress;

/// The hidden first argument that turns the binary into a tree worker.
pub const WORKER_ARG: &str = "__ws-ckpt-tree-worker";

/// How workers are started and how long they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The binary to run: one whose `main` calls [`main_if_worker`] first. Default
    /// `/proc/self/exe` (the running daemon's own binary, even after a package upgrade).
    pub exe: PathBuf,
    /// The worker is killed when it sends nothing (no progress) for this long.
    pub idle_timeout: Duration,
    /// The worker is killed when the whole job takes longer than this.
    pub deadline: Option<Duration>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            exe: PathBuf::from("/proc/self/exe"),
            idle_timeout: Duration::from_secs(300),
            deadline: None,
        }
    }
}

fn worker_err(what: impl Into<String>) -> TreeError {
    TreeError::Worker { what: what.into() }
}

/// Kills and reaps the worker on every way out of [`run`].
struct Reaper(Option<Child>);

impl Reaper {
    /// Wait up to `limit` for a clean exit; kill it otherwise. Returns whether it exited 0.
    fn finish(&mut self, limit: Duration) -> Result<(), TreeError> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let until = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(worker_err(format!("the worker exited with {status}")))
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(worker_err(
                        "the worker did not exit after its reply; killed",
                    ));
                }
                Err(e) => return Err(worker_err(format!("waiting for the worker failed: {e}"))),
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send one message with descriptors attached.
fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// Clamp a reported progress to what can be true: never backwards, done within total.
fn sanitize(p: Progress, prev: Progress) -> Progress {
    let fix = |done: u64, total: u64, prev_done: u64| {
        let done = done.max(prev_done);
        (done, total.max(done))
    };
    let (bytes_done, bytes_total) = fix(p.bytes_done, p.bytes_total, prev.bytes_done);
    let (entries_done, entries_total) = fix(p.entries_done, p.entries_total, prev.entries_done);
    Progress {
        bytes_done,
        bytes_total,
        entries_done,
        entries_total,
    }
}

fn msg_flags_bad(flags: MsgFlags) -> bool {
    flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
}

fn outcome_fits(job: &JobSpec, outcome: &Outcome) -> bool {
    matches!(
        (job, outcome),
        (JobSpec::Copy | JobSpec::Verify { .. }, Outcome::Stats(_))
            | (JobSpec::Remove { .. }, Outcome::Removed(_))
            | (JobSpec::Scan, Outcome::Scanned(_))
            | (JobSpec::Credentials, Outcome::Credentials(_))
    )
}

/// Run `job` on `dirs` in a worker that becomes `owner`.
pub(crate) fn run(
    settings: &WorkerSettings,
    owner: &Owner,
    job: JobSpec,
    dirs: &[&Dir],
    ctl: &mut Ctl<'_>,
) -> Result<Outcome, TreeError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| worker_err(format!("socketpair failed: {e}")))?;
    let mut cmd = Command::new(&settings.exe);
    cmd.arg(WORKER_ARG)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd.spawn().map_err(|e| {
        worker_err(format!(
            "cannot start {} {WORKER_ARG}: {e}",
            settings.exe.display()
        ))
    })?;
    drop(cmd); // closes our copy of the worker's end
    tracing::debug!(pid = child.id(), uid = owner.uid, job = ?job, "started tree worker");
    let mut reaper = Reaper(Some(child));
    let request = Request {
        v: VERSION,
        owner: owner.clone(),
        job: job.clone(),
        labels: dirs
            .iter()
            .map(|d| d.label().as_os_str().as_bytes().to_vec())
            .collect(),
    };
    let raw: Vec<RawFd> = dirs.iter().map(|d| d.as_fd().as_raw_fd()).collect();
    match send(ours.as_fd(), &encode(&request).map_err(worker_err)?, &raw) {
        // A worker that gave up before reading may still have said why: read on.
        Ok(()) | Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {}
        Err(e) => {
            return Err(worker_err(format!(
                "cannot send the job to the worker: {e}"
            )))
        }
    }

    let started = Instant::now();
    let mut last = Instant::now();
    let mut buf = vec![0u8; MAX_FRAME + 1];
    let mut reset_seen = false;
    loop {
        ctl.tick()?;
        if last.elapsed() > settings.idle_timeout {
            return Err(worker_err(format!(
                "no progress for {}s; the worker was killed",
                settings.idle_timeout.as_secs()
            )));
        }
        if settings.deadline.is_some_and(|d| started.elapsed() > d) {
            return Err(worker_err("the job took longer than its deadline; killed"));
        }
        let mut pfd = libc::pollfd {
            fd: ours.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(worker_err(format!("poll failed: {e}")));
        }
        if n == 0 {
            continue;
        }
        let mut iov = [IoSliceMut::new(&mut buf)];
        let received =
            recvmsg::<UnixAddr>(ours.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT);
        let len = match received {
            Ok(m) if msg_flags_bad(m.flags) => {
                return Err(worker_err(
                    "the worker sent an oversized message or descriptors",
                ))
            }
            Ok(m) => m.bytes,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            // The worker exited without reading everything. The kernel reports that once,
            // possibly before a reply still queued for us: read on, and only a reset seen
            // twice (or the end of the stream) ends the job.
            Err(nix::errno::Errno::ECONNRESET) if !reset_seen => {
                reset_seen = true;
                continue;
            }
            Err(nix::errno::Errno::ECONNRESET) => 0,
            Err(e) => return Err(worker_err(format!("reading from the worker failed: {e}"))),
        };
        if len == 0 {
            let status = reaper.finish(Duration::from_secs(5)).err();
            return Err(status.unwrap_or_else(|| worker_err("the worker exited without a result")));
        }
        let reply =
            decode_reply(&buf[..len]).map_err(|e| worker_err(format!("protocol error: {e}")))?;
        last = Instant::now();
        match reply {
            Reply::Progress(p) => ctl.progress = sanitize(p, ctl.progress),
            Reply::Done(outcome) => {
                if !outcome_fits(&job, &outcome) {
                    return Err(worker_err("protocol error: a result of the wrong kind"));
                }
                reaper.finish(Duration::from_secs(5))?;
                ctl.finish();
                return Ok(outcome);
            }
            Reply::Failed(w) => {
                let e = w
                    .into_error()
                    .map_err(|e| worker_err(format!("protocol error: {e}")))?;
                let _ = reaper.finish(Duration::from_secs(5));
                return Err(e);
            }
        }
    }
}

/// If the process was started as a tree worker (first argument [`WORKER_ARG`]), run the job and
/// exit; otherwise return at once. Call this first in `main`, before parsing arguments.
pub fn main_if_worker() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(WORKER_ARG)) {
        return;
    }
    std::process::exit(worker_main());
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) }
}

fn worker_main() -> i32 {
    prctl(libc::PR_SET_DUMPABLE, 0);
    // SAFETY: closes descriptors 3 and up, which this process never uses before this point.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: descriptor 0 is the request socket for the lifetime of the process.
    let sock = unsafe { BorrowedFd::borrow_raw(0) };
    match serve(sock) {
        Ok(()) => 0,
        Err(e) => {
            if let Ok(bytes) = encode(&Reply::Failed(WireError::from_error(&e))) {
                let _ = send(sock, &bytes, &[]);
            }
            eprintln!("ws-ckpt tree worker: {e}");
            1
        }
    }
}

/// Receive the request and its descriptors.
fn receive(sock: BorrowedFd<'_>) -> Result<(Request, Vec<OwnedFd>), TreeError> {
    let mut buf = vec![0u8; MAX_FRAME + 1];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| worker_err(format!("cannot read the request: {e}")))?;
    let mut fds = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| worker_err(format!("bad control message: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(worker_err("the request was truncated"));
    }
    let len = msg.bytes;
    let req = decode_request(&buf[..len]).map_err(worker_err)?;
    if fds.len() != req.job.fds() {
        return Err(worker_err(format!(
            "the request carries {} descriptors, its job needs {}",
            fds.len(),
            req.job.fds()
        )));
    }
    Ok((req, fds))
}

/// Raise the soft open-file limit to the hard one (deep trees hold one descriptor per level).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max.min(1 << 20);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn serve(sock: BorrowedFd<'_>) -> Result<(), TreeError> {
    // SAFETY: geteuid/getppid have no preconditions.
    let (euid, ppid) = unsafe { (libc::geteuid(), libc::getppid()) };
    if euid != 0 {
        return Err(worker_err(
            "the tree worker is started by the ws-ckpt daemon as root, not by hand",
        ));
    }
    let (req, fds) = receive(sock)?;
    raise_nofile();
    // SAFETY: setrlimit with a live rlimit: no core dumps from a worker.
    unsafe {
        libc::setrlimit(
            libc::RLIMIT_CORE,
            &libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            },
        )
    };
    drop_privileges(&req.owner).map_err(|what| TreeError::Credentials {
        who: req.owner.describe(),
        what,
    })?;
    // The parent-death signal is cleared by a credential change: set it after the drop.
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != ppid {
        return Err(worker_err("the daemon went away"));
    }
    let mut dirs = Vec::new();
    for (fd, label) in fds.into_iter().zip(&req.labels) {
        let label = PathBuf::from(OsStr::from_bytes(label));
        let mine = reopen_dir(fd.as_fd()).map_err(|source| TreeError::Io {
            op: Op::OpenDir,
            path: label.clone(),
            source,
        })?;
        drop(fd);
        dirs.push(Dir::from_parts(mine, label));
    }
    let gone = std::cell::Cell::new(false);
    let mut sink = |p: &Progress| {
        let sent = encode(&Reply::Progress(*p))
            .ok()
            .is_some_and(|b| send(sock, &b, &[]).is_ok());
        if !sent {
            gone.set(true);
        }
    };
    let cancel = || gone.get();
    let mut ctl = Ctl::new(&mut sink, &cancel);
    let refs: Vec<&Dir> = dirs.iter().collect();
    let result = super::run_in_process(&req.job, Some(&req.owner), &refs, &mut ctl);
    let reply = match result {
        Ok(outcome) => Reply::Done(outcome),
        Err(e) => Reply::Failed(WireError::from_error(&e)),
    };
    let bytes = encode(&reply).map_err(worker_err)?;
    send(sock, &bytes, &[]).map_err(|e| worker_err(format!("cannot reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_goes_backwards_or_past_its_total() {
        let prev = Progress {
            bytes_done: 10,
            bytes_total: 100,
            entries_done: 5,
            entries_total: 50,
        };
        let wild = Progress {
            bytes_done: 3,
            bytes_total: 1,
            entries_done: u64::MAX,
            entries_total: 0,
        };
        let p = sanitize(wild, prev);
        assert_eq!((p.bytes_done, p.bytes_total), (10, 10));
        assert_eq!((p.entries_done, p.entries_total), (u64::MAX, u64::MAX));
    }

    #[test]
    fn results_must_match_the_job() {
        let stats = Outcome::Stats(super::super::TreeStats::default());
        assert!(outcome_fits(&JobSpec::Copy, &stats));
        assert!(!outcome_fits(&JobSpec::Scan, &stats));
        assert!(!outcome_fits(
            &JobSpec::Remove {
                name: b"x".to_vec(),
                expected: super::super::Identity { dev: 0, ino: 0 }
            },
            &stats
        ));
    }

    #[test]
    fn a_missing_worker_binary_is_a_clear_error() {
        let settings = WorkerSettings {
            exe: PathBuf::from("/nonexistent/ws-ckpt"),
            ..WorkerSettings::default()
        };
        let mut sink = |_: &Progress| {};
        let never = || false;
        let mut ctl = Ctl::new(&mut sink, &never);
        let err = run(
            &settings,
            &Owner::new(65534, 65534, []),
            JobSpec::Credentials,
            &[],
            &mut ctl,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ws-ckpt"), "{err}");
    }

    /// Run a Credentials job against a fake worker script; returns the error and the time taken.
    fn fake_worker(script: &str, idle: Duration) -> (TreeError, Duration) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("fake-worker");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let settings = WorkerSettings {
            exe,
            idle_timeout: idle,
            deadline: Some(Duration::from_secs(20)),
        };
        let mut sink = |_: &Progress| {};
        let never = || false;
        let mut ctl = Ctl::new(&mut sink, &never);
        let t = Instant::now();
        let err = run(
            &settings,
            &Owner::new(65534, 65534, []),
            JobSpec::Credentials,
            &[],
            &mut ctl,
        )
        .unwrap_err();
        (err, t.elapsed())
    }

    #[test]
    fn hostile_worker_output_is_refused() {
        let long = Duration::from_secs(20);
        let cases = [
            ("printf 'not json' >&0; sleep 1", "protocol error"),
            (
                "dd if=/dev/zero bs=70000 count=1 >&0 2>/dev/null; sleep 1",
                "oversized",
            ),
            (
                r#"printf '{"done":{"scanned":{"bytes_done":0,"bytes_total":0,"entries_done":0,"entries_total":0}}}' >&0"#,
                "wrong kind",
            ),
            (
                r#"printf '{"progress":{"bytes_done":1}}' >&0; sleep 1"#,
                "protocol error",
            ),
            ("exit 3", "exit"),
        ];
        for (script, expect) in cases {
            let (err, _) = fake_worker(script, long);
            assert!(matches!(err, TreeError::Worker { .. }), "{script}: {err:?}");
            assert!(err.to_string().contains(expect), "{script}: {err}");
        }
        // A well-formed failure is rebuilt as the engine's own error.
        let (err, _) = fake_worker(r#"printf '{"failed":{"kind":"cancelled"}}' >&0"#, long);
        assert!(matches!(err, TreeError::Cancelled), "{err:?}");
    }

    #[test]
    fn a_silent_worker_is_killed_after_the_idle_timeout() {
        let (err, took) = fake_worker("sleep 30", Duration::from_millis(300));
        assert!(err.to_string().contains("no progress"), "{err}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn a_binary_that_is_not_a_worker_is_detected() {
        // `true` reads nothing and exits 0 without a reply.
        let settings = WorkerSettings {
            exe: PathBuf::from("/bin/true"),
            ..WorkerSettings::default()
        };
        let mut sink = |_: &Progress| {};
        let never = || false;
        let mut ctl = Ctl::new(&mut sink, &never);
        let err = run(
            &settings,
            &Owner::new(65534, 65534, []),
            JobSpec::Credentials,
            &[],
            &mut ctl,
        )
        .unwrap_err();
        assert!(matches!(err, TreeError::Worker { .. }), "{err:?}");
    }
}
