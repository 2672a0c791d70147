//! systemd readiness notification (`sd_notify`): one datagram such as `READY=1` or
//! `STATUS=…` to the socket named by `$NOTIFY_SOCKET` (a path, or an abstract name starting
//! with `@`). Without `$NOTIFY_SOCKET` it does nothing.
//!
//! It only sends; it must not decide what to report or block the caller.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Errors sending a notification.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is not a usable address.
    #[error("NOTIFY_SOCKET={addr:?} is not a socket path or @abstract name")]
    BadAddress {
        /// The value.
        addr: String,
    },
    /// Sending failed.
    #[error("cannot notify systemd at {addr:?}: {source}")]
    Send {
        /// The value of `$NOTIFY_SOCKET`.
        addr: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Send `state` (newline-separated `KEY=value` assignments) to `$NOTIFY_SOCKET`. Returns
/// `Ok(false)` when the variable is unset or empty (not running under systemd).
pub fn sd_notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET_ENV) {
        Some(addr) if !addr.is_empty() => notify_to(&addr, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Send `state` to the notification socket `addr` (a filesystem path, or `@name` for an
/// abstract socket).
pub fn notify_to(addr: &OsStr, state: &str) -> Result<(), NotifyError> {
    let shown = addr.to_string_lossy().into_owned();
    let bytes = addr.as_bytes();
    let sockaddr = match bytes.first() {
        Some(b'@') => abstract_addr(&bytes[1..]).map_err(|_| NotifyError::BadAddress {
            addr: shown.clone(),
        })?,
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(addr)).map_err(|_| {
            NotifyError::BadAddress {
                addr: shown.clone(),
            }
        })?,
        _ => return Err(NotifyError::BadAddress { addr: shown }),
    };
    let send = |source| NotifyError::Send {
        addr: shown.clone(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send)?;
    sock.send_to_addr(state.as_bytes(), &sockaddr)
        .map_err(send)?;
    Ok(())
}

fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

/// Keep one status line short and on one line (systemctl shows it in `status`).
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=ok: 2 workspaces").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=ok: 2 workspaces");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ws-ckpt-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STATUS=x").unwrap();
        assert_eq!(recv(&listener), "STATUS=x");
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        assert!(matches!(
            notify_to(OsStr::new("relative"), "X=1"),
            Err(NotifyError::BadAddress { .. })
        ));
        assert!(matches!(
            notify_to(OsStr::new(""), "X=1"),
            Err(NotifyError::BadAddress { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let e = notify_to(dir.path().join("nobody").as_os_str(), "X=1").unwrap_err();
        assert!(matches!(e, NotifyError::Send { .. }), "{e}");
    }

    #[test]
    fn status_lines_are_flattened_and_bounded() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("abcd", 4), "abcd");
    }
}
