//! Command-line definitions (clap derive). Completions and the man pages are generated from
//! these (`crate::gen`), so every help text here is user documentation. Each subcommand's
//! `after_help` is plain text in headed blocks (`Examples:`, `Exit status:`, `Flags:`: a
//! heading alone on a line at column 0, its body indented); the man page turns each block
//! into a section of the same name. Every subcommand has an `Examples:` block (a test checks).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Human-readable tables.
    Table,
    /// Stable JSON (documented in docs/json.md).
    Json,
}

/// Instant checkpoints and rollbacks of any directory on btrfs.
///
/// A TOML config declares the backend and the workspaces; `ws-ckpt apply` (or the daemon)
/// makes the machine match it. Workspaces stay at their path (it becomes a symlink to a btrfs
/// subvolume); checkpoints are read-only snapshots.
///
/// Without a running daemon, root runs every command in-process; other users need the
/// daemon (systemctl start ws-ckpt) and may use the workspaces they own or are allowed on.
/// `ws-ckpt help COMMAND` or `man ws-ckpt-COMMAND` describes each command.
#[derive(Debug, Parser)]
#[command(
    name = "ws-ckpt",
    version,
    propagate_version = true,
    after_help = MAIN_AFTER
)]
pub(crate) struct Cli {
    /// Config file (drop-ins are read from <its dir>/config.d).
    #[arg(
        long,
        global = true,
        env = "WS_CKPT_CONFIG",
        default_value = ws_ckpt::config::DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show what `apply` would change: actions and findings.
    ///
    /// Plans against the config, the persisted state and a fresh observation of the system
    /// (mounts, loop devices, subvolumes, symlinks). Each finding carries a fix.
    #[command(after_help = PLAN_AFTER)]
    Plan {
        /// Exit 2 when changes are pending (like terraform plan).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan releasing undeclared workspaces too.
        #[arg(long)]
        prune: bool,
    },
    /// Make the system match the config. Exit 0 converged, 1 failed or blocked.
    ///
    /// Creates, attaches and mounts the backend, initializes declared workspaces, releases
    /// those declared state = "absent", repairs symlinks, adopts and marks snapshots, applies
    /// retention and finishes or reverts interrupted operations. Run twice, the second run
    /// changes nothing. JSON: {"changed": bool, "actions": [...], "findings": [...]}.
    #[command(after_help = APPLY_AFTER)]
    Apply {
        /// Change nothing; report what would be done.
        #[arg(long)]
        check: bool,
        /// Print each planned or taken action with its details.
        #[arg(long)]
        diff: bool,
        /// Also release workspaces that are recorded but declared nowhere.
        #[arg(long)]
        prune: bool,
    },
    /// Backend, daemon and workspace health. Exit 0 healthy, 3 degraded, 1 error.
    ///
    /// Backend (type, how it was selected, mount, device, image, usage), daemon (pid,
    /// uptime, last pass, last unclean shutdown), one condition per workspace and every
    /// finding with its fix. Other users see their own workspaces.
    #[command(after_help = STATUS_AFTER)]
    Status {
        /// Only this workspace (path or ws_id).
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
    },
    /// Turn a directory into a workspace (declares it in config.d/50-<ws_id>.toml, then applies).
    ///
    /// The directory must exist (a missing path is refused). Its contents are copied into a
    /// new btrfs subvolume of the backend, verified, and the directory is then replaced by a
    /// symlink to the subvolume in one atomic rename, so the path keeps working; the
    /// original is deleted last. On the backend's own btrfs filesystem the copy is a reflink
    /// (fast, no extra space). From another filesystem (the usual case: a home directory on
    /// ext4 or xfs and a loop backend) it is a full copy preserving modes, owners, times,
    /// xattrs, symlinks, hardlinks and sparse files: it takes time, needs free space in the
    /// backend for the whole tree, and shows progress on a terminal. If something writes into
    /// the directory during the copy, the original is kept beside it and the command says
    /// where. Refused: /, system directories, home roots, paths inside the backend, and
    /// paths inside or containing another workspace.
    #[command(after_help = INIT_AFTER)]
    Init {
        /// The directory.
        path: PathBuf,
    },
    /// Turn a workspace back into a plain directory (sets state = "absent", then applies).
    ///
    /// The data is copied back to a plain directory at the path and verified; only then are
    /// the subvolume, the snapshots and the index deleted. Any failure stops before anything
    /// is deleted. A real directory at the path is never overwritten.
    #[command(after_help = RELEASE_AFTER)]
    Release {
        /// The workspace path.
        path: PathBuf,
    },
    /// Take a read-only snapshot of a workspace (a plain directory is initialized first).
    ///
    /// Prints the snapshot ID. IDs: 1-128 of [A-Za-z0-9._-], starting alphanumeric;
    /// generated from the time when omitted (YYYYMMDD-HHMMSS-mmm, UTC, sortable).
    /// One ioctl and one journal append: the cost does not grow with the number of
    /// snapshots. A directory that is not a workspace yet is initialized first (see
    /// `ws-ckpt init --help`).
    #[command(after_help = CHECKPOINT_AFTER)]
    Checkpoint {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: String,
        /// Snapshot ID (default: generated, sortable by time).
        #[arg(short = 's', long = "snapshot", alias = "id", short_alias = 'i')]
        snapshot: Option<String>,
        /// Message stored with the snapshot.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
        /// JSON metadata stored with the snapshot, e.g. '{"tool":"edit"}'.
        #[arg(long)]
        metadata: Option<String>,
        /// Pin it: retention and cleanup never delete it.
        #[arg(long)]
        pin: bool,
    },
    /// Roll a workspace back to a snapshot (atomic; the path never disappears).
    ///
    /// A writable copy of the snapshot replaces the workspace in one atomic exchange; the
    /// previous state is then deleted (take a checkpoint first to keep it). Refuses while a
    /// process has its working directory inside the workspace (bind mounts included) unless
    /// --force, and refuses MISSING snapshots.
    #[command(after_help = ROLLBACK_AFTER)]
    Rollback {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: String,
        /// Snapshot to roll back to.
        #[arg(short = 's', long = "snapshot", short_alias = 'i', alias = "id")]
        snapshot: String,
        /// Roll back even if processes are using the workspace.
        #[arg(long)]
        force: bool,
    },
    /// List snapshots (all workspaces when -w is omitted), newest last.
    #[command(after_help = LIST_AFTER)]
    List {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
    },
    /// Delete a snapshot. Pinned or MISSING snapshots need --force.
    ///
    /// -w may be left out when the snapshot ID is unique across workspaces. The space is
    /// returned by the btrfs cleaner in the background.
    #[command(after_help = DELETE_AFTER)]
    Delete {
        /// Workspace (optional when the snapshot ID is unique).
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
        /// Snapshot ID.
        #[arg(short = 's', long = "snapshot", short_alias = 'i', alias = "id")]
        snapshot: String,
        /// Delete even if pinned or MISSING.
        #[arg(long)]
        force: bool,
    },
    /// Delete old snapshots now: never pinned ones, never the newest.
    ///
    /// Waits (bounded) for the btrfs cleaner so the space is really free when it returns.
    #[command(after_help = CLEANUP_AFTER)]
    Cleanup {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: String,
        /// Keep the N newest unpinned (e.g. 20), or delete those older than an age (e.g. 30d).
        /// Default: the workspace's retention setting.
        #[arg(long)]
        keep: Option<String>,
    },
    /// Show what changed between two snapshots, or since a snapshot (live workspace).
    ///
    /// `+` added, `-` deleted, `M` modified, `R` renamed (old → new). Read from the btrfs
    /// send stream, so it is exact for renames, symlinks, hardlinks and directories.
    #[command(after_help = DIFF_AFTER)]
    Diff {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: String,
        /// Older snapshot.
        #[arg(short = 'f', long = "from")]
        from: String,
        /// Newer snapshot (default: the live workspace).
        #[arg(short = 't', long = "to")]
        to: Option<String>,
    },
    /// Ask the daemon to re-read the config and reconcile now (root).
    ///
    /// The same as `systemctl reload ws-ckpt` (SIGHUP), but waits for the pass and prints
    /// its result like `apply`. A config that does not validate is reported and the daemon
    /// keeps running on the last good one.
    #[command(after_help = RELOAD_AFTER)]
    Reload,
    /// Run the daemon: watch the config and the system, reconcile, serve the socket.
    ///
    /// With --check: run one planning pass and exit non-zero on blocking findings.
    /// Normally started by systemd (ws-ckpt.service, Type=notify): READY after the first
    /// pass, STATUS= with a one-line health summary. Only one daemon runs per state_dir
    /// (daemon.lock); a lock left by a crash is detected and recovered from.
    #[command(after_help = DAEMON_AFTER)]
    Daemon {
        /// Plan once and exit: 0 ok, 1 blocking findings.
        #[arg(long)]
        check: bool,
    },
    /// Show or validate the configuration.
    ///
    /// The main file (--config) is read first, then <its dir>/config.d/*.toml in lexical
    /// order. Every key is described in ws-ckpt.toml(5) (`ws-ckpt man ws-ckpt.toml`).
    #[command(subcommand, after_help = CONFIG_AFTER)]
    Config(ConfigCommand),
    /// Print shell completions.
    #[command(after_help = COMPLETIONS_AFTER)]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff), or write them all with --out-dir.
    ///
    /// Pages: ws-ckpt(1), one ws-ckpt-COMMAND(1) per command (ws-ckpt-config-show(1) for
    /// nested ones) and ws-ckpt.toml(5), the reference of every config key.
    #[command(after_help = MAN_AFTER)]
    Man {
        /// The page: a command (checkpoint, config-show), ws-ckpt.toml, or ws-ckpt (default).
        page: Option<String>,
        /// Write every page into DIR (ws-ckpt.1, ws-ckpt-COMMAND.1…, ws-ckpt.toml.5) and
        /// print their paths.
        #[arg(long, value_name = "DIR", conflicts_with = "page")]
        out_dir: Option<PathBuf>,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective merged config (all files, defaults filled in).
    ///
    /// As TOML with the file each workspace is declared in, or as JSON with --format json.
    #[command(after_help = CONFIG_SHOW_AFTER)]
    Show,
    /// Validate a config file and its drop-ins; exit 1 with file:line:column on error.
    ///
    /// Changes nothing. The drop-ins read are those in config.d next to the file.
    #[command(after_help = CONFIG_VALIDATE_AFTER)]
    Validate {
        /// File to validate (default: --config).
        path: Option<PathBuf>,
    },
}

const MAIN_AFTER: &str = "\
Examples:
  ws-ckpt init ~/project                     declare a directory and make it a workspace
  ws-ckpt checkpoint -w ~/project -m \"before refactor\"
  ws-ckpt list -w ~/project
  ws-ckpt rollback -w ~/project -s 20261124-150742-123
  ws-ckpt status
  ws-ckpt --format json list                 every command speaks JSON

Exit status:
  0  success
  1  error: one line says what failed (naming the path or ID), one line how to fix it
  2  plan --detailed-exitcode: changes pending
  3  status: degraded

Environment:
  WS_CKPT_CONFIG  the config file, like --config (default /etc/ws-ckpt/config.toml)
  WS_CKPT_LOG     log filter for stderr, e.g. debug or ws_ckpt=trace (default: warn; the
                  daemon uses daemon.log_level)";

const PLAN_AFTER: &str = "\
Examples:
  ws-ckpt plan                         what `apply` would do now
  ws-ckpt plan --detailed-exitcode     exit 2 when changes are pending (scripts, monitoring)
  ws-ckpt --format json plan           actions and findings as JSON

Exit status:
  0  nothing pending, or changes pending without --detailed-exitcode
  1  an error, or a finding of severity error (e.g. backend-conflict)
  2  changes pending (only with --detailed-exitcode)";

const APPLY_AFTER: &str = "\
Examples:
  ws-ckpt apply                        converge now
  ws-ckpt apply --check --diff         print what would be done with its details
  ws-ckpt apply --prune                also release workspaces that are declared nowhere

Exit status:
  0  converged (or, with --check, nothing blocks)
  1  an action failed, a finding is an error (e.g. backend-conflict), or the command failed";

const STATUS_AFTER: &str = "\
Examples:
  ws-ckpt status
  ws-ckpt status -w ~/project
  ws-ckpt --format json status | jq .health

Exit status:
  0  healthy
  1  error (e.g. a backend conflict blocks every change), or the command failed
  3  degraded: a workspace is not ready or a warning is reported";

const INIT_AFTER: &str = "\
Examples:
  ws-ckpt init ~/project
  ws-ckpt --format json init /srv/agent/project";

const RELEASE_AFTER: &str = "\
Examples:
  ws-ckpt release ~/project            ~/project is a plain directory again";

const CHECKPOINT_AFTER: &str = "\
Examples:
  ws-ckpt checkpoint -w ~/project -m \"before refactor\"
  ws-ckpt checkpoint -w ~/project -s before-upgrade --pin
  ws-ckpt checkpoint -w ws-4612d8 --metadata '{\"tool\":\"edit\"}'
  id=$(ws-ckpt checkpoint -w ~/project)    the ID is the only line on stdout";

const ROLLBACK_AFTER: &str = "\
Examples:
  ws-ckpt rollback -w ~/project -s before-upgrade
  ws-ckpt rollback -w ~/project -s 20261124-150742-123 --force";

const LIST_AFTER: &str = "\
Flags:
  pinned   retention and cleanup never delete it (checkpoint --pin)
  MISSING  recorded, but its subvolume is gone: rollback and diff refuse it; `delete
           --force` forgets it; it clears by itself when the subvolume comes back

Examples:
  ws-ckpt list                         every workspace you may use
  ws-ckpt list -w ~/project
  ws-ckpt --format json list -w ~/project";

const DELETE_AFTER: &str = "\
Examples:
  ws-ckpt delete -w ~/project -s before-upgrade
  ws-ckpt delete -s 20261124-150742-123          the ID is unique: -w is not needed
  ws-ckpt delete -w ~/project -s old --force     pinned or MISSING";

const CLEANUP_AFTER: &str = "\
Examples:
  ws-ckpt cleanup -w ~/project                   the workspace's retention setting
  ws-ckpt cleanup -w ~/project --keep 5          keep the 5 newest unpinned
  ws-ckpt cleanup -w ~/project --keep 30d        delete unpinned ones older than 30 days";

const DIFF_AFTER: &str = "\
Examples:
  ws-ckpt diff -w ~/project -f before-refactor              since then (live workspace)
  ws-ckpt diff -w ~/project -f c1 -t c2
  ws-ckpt --format json diff -w ~/project -f c1";

const RELOAD_AFTER: &str = "\
Examples:
  ws-ckpt reload
  systemctl reload ws-ckpt                       the same, without waiting

Exit status:
  0  the pass converged
  1  no daemon answers, an action failed, or a finding is an error";

const DAEMON_AFTER: &str = "\
Examples:
  systemctl enable --now ws-ckpt                 the usual way to run it
  ws-ckpt daemon                                 in the foreground (logs on stderr)
  ws-ckpt daemon --check                         before starting: would it be blocked?

Exit status:
  0  clean stop (SIGTERM, SIGINT), or --check found nothing blocking
  1  another daemon runs, the config or state cannot be loaded, or --check found a
     blocking finding";

const CONFIG_AFTER: &str = "\
Examples:
  ws-ckpt config show
  ws-ckpt config validate
  ws-ckpt config validate /tmp/new-config.toml";

const CONFIG_SHOW_AFTER: &str = "\
Examples:
  ws-ckpt config show
  ws-ckpt --format json config show | jq '.workspaces[].path'";

const CONFIG_VALIDATE_AFTER: &str = "\
Examples:
  ws-ckpt config validate
  ws-ckpt --config /tmp/new/config.toml config validate

Exit status:
  0  valid
  1  invalid: file:line:column, the key and what to write instead";

const COMPLETIONS_AFTER: &str = "\
Examples:
  ws-ckpt completions bash > /etc/bash_completion.d/ws-ckpt
  ws-ckpt completions zsh > \"${fpath[1]}/_ws-ckpt\"
  ws-ckpt completions fish > ~/.config/fish/completions/ws-ckpt.fish";

const MAN_AFTER: &str = "\
Examples:
  ws-ckpt man | man -l -
  ws-ckpt man checkpoint | man -l -
  ws-ckpt man ws-ckpt.toml | man -l -
  ws-ckpt man --out-dir /tmp/man";
