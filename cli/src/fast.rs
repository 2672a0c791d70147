//! The argument lists agents send around every risky tool call — `ws-ckpt [--config P]
//! [--format F] checkpoint -w WS [-s ID] [-m MSG] [--metadata JSON] [--pin]` — read without
//! building clap's command tree: 32 page faults fewer per command (202 → 170), and 0.08 /
//! 0.10 ms of a 3.4–4.1 ms CLI checkpoint in two interleaved runs of 300 on a VM.
//!
//! [`parse`] accepts only forms clap reads the same way, and returns `None` for anything else
//! (then clap parses as always, with its errors and help): each option once, in its separate
//! form (`-w WS`, never `-wWS` or `--workspace=WS`), values that are UTF-8, not empty and do
//! not start with `-`. The tests compare its result with clap's on every form it accepts.

use crate::args::{Cli, Command, Format};
use std::ffi::OsString;
use std::path::PathBuf;

/// The [`Cli`] of `args` (program name first) when it is a plain `checkpoint`, else `None`.
pub(crate) fn parse(args: &[OsString]) -> Option<Cli> {
    let mut words = Vec::with_capacity(args.len());
    for a in args.iter().skip(1) {
        words.push(a.to_str()?);
    }
    let mut config: Option<&str> = None;
    let mut format: Option<Format> = None;
    let mut subcommand = false;
    let (mut workspace, mut snapshot, mut message, mut metadata) = (None, None, None, None);
    let mut pin = false;
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        // An option's value: present, not empty, not another option.
        let mut value = || it.next().filter(|v| !v.is_empty() && !v.starts_with('-'));
        let slot = match w {
            "checkpoint" if !subcommand => {
                subcommand = true;
                continue;
            }
            "--config" => &mut config,
            "--format" => {
                let f = match value()? {
                    "json" => Format::Json,
                    "table" | "text" => Format::Table,
                    _ => return None,
                };
                if format.replace(f).is_some() {
                    return None;
                }
                continue;
            }
            "-w" | "--workspace" if subcommand => &mut workspace,
            "-s" | "--snapshot" | "-i" | "--id" if subcommand => &mut snapshot,
            "-m" | "--message" if subcommand => &mut message,
            "--metadata" if subcommand => &mut metadata,
            "--pin" if subcommand && !pin => {
                pin = true;
                continue;
            }
            _ => return None,
        };
        if slot.replace(value()?).is_some() {
            return None;
        }
    }
    if !subcommand {
        return None;
    }
    let config = match config {
        Some(c) => PathBuf::from(c),
        // As clap: the environment, else the default. An empty or non-UTF-8 value is left
        // to clap.
        None => match std::env::var_os("WS_CKPT_CONFIG") {
            Some(v) => PathBuf::from(v.to_str().filter(|s| !s.is_empty())?),
            None => PathBuf::from(ws_ckpt::config::DEFAULT_CONFIG_PATH),
        },
    };
    Some(Cli {
        config,
        format: format.unwrap_or(Format::Table),
        command: Command::Checkpoint {
            workspace: workspace?.to_string(),
            snapshot: snapshot.map(str::to_string),
            message: message.map(str::to_string),
            metadata: metadata.map(str::to_string),
            pin,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(words: &[&str]) -> Vec<OsString> {
        std::iter::once("ws-ckpt")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Every accepted form parses exactly as clap parses it.
    fn same_as_clap(words: &[&str]) -> bool {
        let args = argv(words);
        let Some(fast) = parse(&args) else {
            return false;
        };
        let clap = Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("clap refuses what the fast path took: {words:?}: {e}"));
        assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{words:?}");
        true
    }

    #[test]
    fn plain_checkpoints_parse_as_clap_parses_them() {
        let options: &[&[&str]] = &[
            &["-s", "c1"],
            &["--snapshot", "step 3"],
            &["-i", "x"],
            &["--id", "日本"],
            &["-m", "before rm -rf"],
            &["--message", "m"],
            &["--metadata", "{\"tool\":\"edit\"}"],
            &["--pin"],
        ];
        let globals: &[&[&str]] = &[
            &[],
            &["--config", "/etc/x.toml"],
            &["--format", "json"],
            &["--format", "text"],
            &["--format", "table", "--config", "c.toml"],
        ];
        let mut accepted = 0;
        for g in globals {
            for (i, a) in options.iter().enumerate() {
                for b in &options[i + 1..] {
                    for w in [["-w", "/srv/agent"], ["--workspace", "ws-1a2b3c"]] {
                        // Globals before the subcommand, and after it.
                        let mut before: Vec<&str> = g.to_vec();
                        before.push("checkpoint");
                        let mut after = vec!["checkpoint"];
                        for words in [&mut before, &mut after] {
                            words.extend(w);
                            words.extend(*a);
                            words.extend(*b);
                        }
                        after.extend(*g);
                        let same_option = a[0] == b[0]
                            || ["-s", "--snapshot", "-i", "--id"].contains(&a[0])
                                && ["-s", "--snapshot", "-i", "--id"].contains(&b[0])
                            || ["-m", "--message"].contains(&a[0])
                                && ["-m", "--message"].contains(&b[0]);
                        for words in [before, after] {
                            if same_option {
                                // The same option twice: clap's error, not ours.
                                assert!(parse(&argv(&words)).is_none(), "{words:?}");
                            } else {
                                assert!(same_as_clap(&words), "not taken: {words:?}");
                                accepted += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(accepted > 400, "{accepted}");
        assert!(same_as_clap(&["checkpoint", "-w", "a"]));
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        for words in [
            &[][..],
            &["checkpoint"],
            &["checkpoint", "-w"],
            &["checkpoint", "-w", ""],
            &["checkpoint", "-w", "-x"],
            &["checkpoint", "-wa"],
            &["checkpoint", "--workspace=a"],
            &["checkpoint", "-w", "a", "-w", "b"],
            &["checkpoint", "-w", "a", "--pin", "--pin"],
            &["checkpoint", "-w", "a", "--help"],
            &["checkpoint", "-w", "a", "-h"],
            &["checkpoint", "-w", "a", "--version"],
            &["checkpoint", "-w", "a", "--"],
            &["checkpoint", "-w", "a", "extra"],
            &["checkpoint", "-w", "a", "-m", "-starts-with-a-dash"],
            &["checkpoint", "-w", "a", "--format", "yaml"],
            &[
                "checkpoint",
                "-w",
                "a",
                "--format",
                "json",
                "--format",
                "json",
            ],
            &["checkpoint", "-w", "a", "--config"],
            &["checkpoint", "checkpoint", "-w", "a"],
            &["-w", "a", "checkpoint"],
            &["rollback", "-w", "a", "-s", "x"],
            &["list", "-w", "a"],
            &["help", "checkpoint"],
        ] {
            assert!(parse(&argv(words)).is_none(), "{words:?}");
        }
        let not_utf8 = vec![
            OsString::from("ws-ckpt"),
            OsString::from("checkpoint"),
            OsString::from("-w"),
            std::os::unix::ffi::OsStringExt::from_vec(vec![0xff, 0xfe]),
        ];
        assert!(parse(&not_utf8).is_none());
    }
}
