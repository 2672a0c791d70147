//! `tree-probe`: a test-only helper for the tree-engine tests. It is a tree worker when started
//! as one (so tests can use it as `WorkerSettings::exe`), and otherwise plays the hostile local
//! user, run by the tests under an unprivileged uid:
//!
//! - `swap DIR_A NAME_A DIR_B NAME_B ROUNDS SECS [LINK_TARGET]`: exchange the two entries with
//!   `renameat2(RENAME_EXCHANGE)` in a tight loop (re-creating `DIR_B/NAME_B` as a symlink to
//!   `LINK_TARGET` whenever it is missing and `DIR_A/NAME_A` is there to be exchanged with it),
//!   for at most ROUNDS exchanges or SECS seconds; prints the number of successful exchanges.
//!   The link waits for its partner so that, when both are in a destination the engine is
//!   about to fill, the link does not make the destination non-empty (which the engine
//!   refuses, so the race would never start).
//! - `signal PID SIG`: send a signal; prints `ok` or the errno.
//! - `ptrace PID`: try `PTRACE_ATTACH` (detaching again if it worked); prints `ok` or the errno.
//! - `readmem PID`: try to open `/proc/PID/mem` and `/proc/PID/environ`; prints what worked.
//!
//! What it must not do: anything outside the paths and pids it is given.

use std::ffi::CString;
use std::time::{Duration, Instant};

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| panic!("NUL in {s:?}"))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn swap(args: &[String]) -> i32 {
    let [a_dir, a_name, b_dir, b_name, rounds, secs, rest @ ..] = args else {
        eprintln!("usage: swap DIR_A NAME_A DIR_B NAME_B ROUNDS SECS [LINK_TARGET]");
        return 2;
    };
    let a = c(&format!("{a_dir}/{a_name}"));
    let b = c(&format!("{b_dir}/{b_name}"));
    let link = rest.first().map(|t| c(t));
    let rounds: u64 = rounds.parse().unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(secs.parse().unwrap_or(1));
    let (mut done, mut tries) = (0u64, 0u64);
    while done < rounds && Instant::now() < until {
        tries += 1;
        if let Some(t) = &link {
            // SAFETY: `a` is NUL-terminated and `st` is a plain out-buffer.
            let a_there = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::lstat(a.as_ptr(), &mut st) == 0
            };
            if a_there {
                // SAFETY: both strings are NUL-terminated.
                unsafe { libc::symlink(t.as_ptr(), b.as_ptr()) };
            }
        }
        // SAFETY: both strings are NUL-terminated.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            done += 1;
        } else if tries % 1024 == 0 {
            std::thread::yield_now();
        }
    }
    println!("{done}");
    0
}

fn pid_arg(args: &[String]) -> Option<libc::pid_t> {
    args.first()?.parse().ok()
}

fn main() {
    ws_ckpt::tree::worker::main_if_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("swap") => swap(&args[1..]),
        Some("signal") => {
            let (Some(pid), Some(sig)) = (pid_arg(&args[1..]), args.get(2)) else {
                std::process::exit(2)
            };
            // SAFETY: plain kill(2).
            let rc = unsafe { libc::kill(pid, sig.parse().unwrap_or(0)) };
            println!(
                "{}",
                if rc == 0 {
                    "ok".into()
                } else {
                    errno().to_string()
                }
            );
            0
        }
        Some("ptrace") => {
            let Some(pid) = pid_arg(&args[1..]) else {
                std::process::exit(2)
            };
            // SAFETY: PTRACE_ATTACH takes no pointers.
            let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
            if rc == 0 {
                // SAFETY: as above.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
                println!("ok");
            } else {
                println!("{}", errno());
            }
            0
        }
        Some("readmem") => {
            let Some(pid) = pid_arg(&args[1..]) else {
                std::process::exit(2)
            };
            for what in ["mem", "environ"] {
                match std::fs::File::open(format!("/proc/{pid}/{what}")) {
                    Ok(_) => println!("{what}: ok"),
                    Err(e) => println!("{what}: {}", e.raw_os_error().unwrap_or(0)),
                }
            }
            0
        }
        _ => {
            eprintln!("usage: tree-probe swap|signal|ptrace|readmem …");
            2
        }
    };
    std::process::exit(code);
}
