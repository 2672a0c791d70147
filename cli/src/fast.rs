//! The argument lists agents send around every risky tool call — `ws-ckpt [--config P]
//! [--format F] checkpoint -w WS [-s ID] [-m MSG] [--metadata JSON] [--pin]` — and their
//! `rollback -w WS (-s ID | -n N) [--force]` and `list [-w WS]`, read without clap: by the front binary ([`crate::front`]), which links no
//! clap at all, and by `ws-ckpt-full`, which then skips building clap's command tree (32 page
//! faults fewer per command, 202 → 170, and 0.08 / 0.10 ms of a 3.4–4.1 ms CLI checkpoint in
//! two interleaved runs of 300 on a VM).
//!
//! [`parse_fast`] accepts only forms clap reads the same way, and returns `None` for anything
//! else (then clap parses as always, with its errors and help): each option once, in its
//! separate form (`-w WS`, never `-wWS` or `--workspace=WS`), values that are UTF-8, not empty
//! and do not start with `-`. The tests compare its result with clap's on every form it
//! accepts.

use crate::args::{Cli, Command, Format};
use std::ffi::OsString;
use std::path::PathBuf;

/// A command line read without clap, as clap would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fast {
    /// `--config`, else `WS_CKPT_CONFIG`, else the default path.
    pub(crate) config: PathBuf,
    /// `--format json`.
    pub(crate) json: bool,
    /// The subcommand.
    pub(crate) command: FastCommand,
}

/// The subcommands read without clap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FastCommand {
    /// `checkpoint -w WS [-s ID] [-m MSG] [--metadata JSON] [--pin]`.
    Checkpoint {
        /// `-w`.
        workspace: String,
        /// `-s` (`-i`).
        snapshot: Option<String>,
        /// `-m`.
        message: Option<String>,
        /// `--metadata`, as given (not parsed yet).
        metadata: Option<String>,
        /// `--pin`.
        pin: bool,
    },
    /// `rollback -w WS (-s ID | -n N) [--force]` (no preview).
    Rollback {
        /// `-w`.
        workspace: String,
        /// `-s` (`-i`).
        snapshot: Option<String>,
        /// `-n`.
        ancestors: Option<u32>,
        /// `--force`.
        force: bool,
    },
    /// `list [-w WS]` (no page).
    List {
        /// `-w`.
        workspace: Option<String>,
    },
}

impl Fast {
    /// The [`Cli`] clap parses from the same words.
    pub(crate) fn into_cli(self) -> Cli {
        let command = match self.command {
            FastCommand::Checkpoint {
                workspace,
                snapshot,
                message,
                metadata,
                pin,
            } => Command::Checkpoint {
                workspace,
                snapshot,
                message,
                metadata,
                pin,
            },
            FastCommand::Rollback {
                workspace,
                snapshot,
                ancestors,
                force,
            } => Command::Rollback {
                workspace,
                snapshot,
                num_ancestors: ancestors,
                preview: false,
                force,
            },
            FastCommand::List { workspace } => Command::List {
                workspace,
                limit: None,
                cursor: None,
            },
        };
        Cli {
            config: self.config,
            format: if self.json {
                Format::Json
            } else {
                Format::Table
            },
            command,
        }
    }
}

/// The [`Cli`] of `args` (program name first) when [`parse_fast`] reads them, else `None`.
pub(crate) fn parse(args: &[OsString]) -> Option<Cli> {
    parse_fast(args).map(Fast::into_cli)
}

/// `args` (program name first) when they are a plain `checkpoint`, `rollback` or `list`,
/// else `None`.
pub(crate) fn parse_fast(args: &[OsString]) -> Option<Fast> {
    let mut words = Vec::with_capacity(args.len());
    for a in args.iter().skip(1) {
        words.push(a.to_str()?);
    }
    let mut config: Option<&str> = None;
    let mut json: Option<bool> = None;
    let mut subcommand: Option<&str> = None;
    let (mut workspace, mut snapshot, mut message, mut metadata) = (None, None, None, None);
    let mut ancestors: Option<&str> = None;
    let (mut pin, mut force) = (false, false);
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        // An option's value: present, not empty, not another option.
        let mut value = || it.next().filter(|v| !v.is_empty() && !v.starts_with('-'));
        let checkpoint = subcommand == Some("checkpoint");
        let rollback = subcommand == Some("rollback");
        let slot = match w {
            "checkpoint" | "rollback" | "list" if subcommand.is_none() => {
                subcommand = Some(w);
                continue;
            }
            "--config" => &mut config,
            "--format" => {
                let f = match value()? {
                    "json" => true,
                    "table" | "text" => false,
                    _ => return None,
                };
                if json.replace(f).is_some() {
                    return None;
                }
                continue;
            }
            "-w" | "--workspace" if subcommand.is_some() => &mut workspace,
            "-s" | "--snapshot" | "-i" | "--id" if checkpoint || rollback => &mut snapshot,
            "-n" | "--num-ancestors" if rollback => &mut ancestors,
            "--force" if rollback && !force => {
                force = true;
                continue;
            }
            "-m" | "--message" if checkpoint => &mut message,
            "--metadata" if checkpoint => &mut metadata,
            "--pin" if checkpoint && !pin => {
                pin = true;
                continue;
            }
            _ => return None,
        };
        if slot.replace(value()?).is_some() {
            return None;
        }
    }
    let command = match subcommand? {
        "checkpoint" => FastCommand::Checkpoint {
            workspace: workspace?.to_string(),
            snapshot: snapshot.map(str::to_string),
            message: message.map(str::to_string),
            metadata: metadata.map(str::to_string),
            pin,
        },
        "rollback" => {
            // As clap: exactly one target; N a number from 1 (digits only here).
            let ancestors = match ancestors {
                Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(n.parse::<u32>().ok().filter(|n| *n >= 1)?)
                }
                Some(_) => return None,
                None => None,
            };
            if snapshot.is_some() == ancestors.is_some() {
                return None;
            }
            FastCommand::Rollback {
                workspace: workspace?.to_string(),
                snapshot: snapshot.map(str::to_string),
                ancestors,
                force,
            }
        }
        _ => FastCommand::List {
            workspace: workspace.map(str::to_string),
        },
    };
    let config = match config {
        Some(c) => PathBuf::from(c),
        // As clap: the environment, else the default. An empty or non-UTF-8 value is left
        // to clap.
        None => match std::env::var_os("WS_CKPT_CONFIG") {
            Some(v) => PathBuf::from(v.to_str().filter(|s| !s.is_empty())?),
            None => PathBuf::from(ws_ckpt::config::DEFAULT_CONFIG_PATH),
        },
    };
    Some(Fast {
        config,
        json: json.unwrap_or(false),
        command,
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
    fn plain_rollbacks_parse_as_clap_parses_them() {
        let mut accepted = 0;
        for g in [&[][..], &["--format", "json"], &["--config", "/etc/x.toml"]] {
            for w in [["-w", "/srv/agent"], ["--workspace", "ws-1a2b3c"]] {
                for target in [
                    &["-s", "c1"][..],
                    &["--snapshot", "2026"],
                    &["-i", "x"],
                    &["--id", "y"],
                    &["-n", "1"],
                    &["--num-ancestors", "12"],
                    &["-n", "007"],
                ] {
                    for force in [&[][..], &["--force"]] {
                        let mut before: Vec<&str> = g.to_vec();
                        before.push("rollback");
                        let mut after = vec!["rollback"];
                        for words in [&mut before, &mut after] {
                            words.extend(force);
                            words.extend(w);
                            words.extend(target);
                        }
                        after.extend(g);
                        for words in [before, after] {
                            assert!(same_as_clap(&words), "not taken: {words:?}");
                            accepted += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(accepted, 168);
    }

    #[test]
    fn plain_lists_parse_as_clap_parses_them() {
        let mut accepted = 0;
        for g in [
            &[][..],
            &["--format", "json"],
            &["--config", "/etc/x.toml", "--format", "json"],
            &["--format", "table"],
        ] {
            for w in [
                &[][..],
                &["-w", "/srv/agent"],
                &["--workspace", "ws-1a2b3c"],
            ] {
                let mut before: Vec<&str> = g.to_vec();
                before.push("list");
                before.extend(w);
                let mut after = vec!["list"];
                after.extend(w);
                after.extend(g);
                for words in [before, after] {
                    assert!(same_as_clap(&words), "not taken: {words:?}");
                    accepted += 1;
                }
            }
        }
        assert_eq!(accepted, 24);
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
            &["rollback", "-w", "a"],
            &["rollback", "-s", "x"],
            &["rollback", "-w", "a", "-s", "x", "-n", "1"],
            &["rollback", "-w", "a", "-n", "0"],
            &["rollback", "-w", "a", "-n", "+1"],
            &["rollback", "-w", "a", "-n", "x"],
            &["rollback", "-w", "a", "-n", "99999999999"],
            &["rollback", "-w", "a", "-s", "x", "--preview"],
            &["rollback", "-w", "a", "-s", "x", "--force", "--force"],
            &["rollback", "-w", "a", "-s", "x", "-m", "m"],
            &["rollback", "-w", "a", "-s", "x", "--pin"],
            &["checkpoint", "-w", "a", "-n", "1"],
            &["checkpoint", "-w", "a", "--force"],
            &["list", "-w", "a", "--limit", "3"],
            &["list", "--cursor", "c"],
            &["list", "-w", "a", "-s", "x"],
            &["list", "-w", "a", "--pin"],
            &["list", "-w", "a", "-w", "b"],
            &["list", "-w"],
            &["list", "list"],
            &["list", "checkpoint", "-w", "a"],
            &["checkpoint", "list", "-w", "a"],
            &["list", "--help"],
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
