//! Command-line definitions (clap derive). Completions and the man pages are generated from
//! these (`crate::gen`), so every help text here is user documentation. Each subcommand's
//! `after_help` is plain text in headed blocks (`Examples:`, `Exit status:`, `Flags:`: a
//! heading alone on a line at column 0, its body indented); the man page turns each block
//! into a section of the same name. Every subcommand has an `Examples:` block (a test checks).

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Human-readable tables (`text` is accepted too, as upstream's `config --format text`).
    #[value(alias = "text")]
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

/// Subcommands. Each one's arguments are built only when it is the one invoked (`defer`):
/// a `checkpoint` does not pay for the definitions of the other commands' flags.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
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
    /// Backend, daemon and workspace health; exit 0 whenever it could report.
    ///
    /// Backend (type, how it was selected, mount, device, image, usage), daemon (pid,
    /// uptime, last pass, last unclean shutdown), one condition per workspace, and every
    /// reason the health is not "healthy" with its fix. "healthy" means: the backend is
    /// mounted, every workspace is ready and nothing is pending. Other users see their own
    /// workspaces. With -w only that workspace is judged; a path that is no workspace, or
    /// whose workspace is detached, is an error.
    #[command(after_help = STATUS_AFTER)]
    Status {
        /// Only this workspace (path or ws_id).
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
        /// Exit 0 healthy, 3 degraded, 1 error (for monitoring), instead of 0 whenever a
        /// report could be made.
        #[arg(long)]
        detailed_exitcode: bool,
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
    /// paths inside or containing another workspace; and, unless --force, a directory in
    /// which a process has its working directory (it would be left in the deleted original).
    #[command(after_help = INIT_AFTER)]
    #[command(group(ArgGroup::new("dir").required(true).args(["path", "workspace"])))]
    Init {
        /// The directory.
        path: Option<PathBuf>,
        /// The directory (upstream's spelling: `init -w PATH`).
        #[arg(short = 'w', long = "workspace", value_name = "PATH")]
        workspace: Option<PathBuf>,
        /// Convert it even while processes have their working directory inside.
        #[arg(long)]
        force: bool,
    },
    /// Turn a workspace back into a plain directory (sets state = "absent", then applies).
    ///
    /// The data is copied back to a plain directory at the path and verified; only then are
    /// the subvolume, the snapshots and the index deleted. Any failure stops before anything
    /// is deleted. A real directory at the path is never overwritten. (`ws-ckpt recover` is
    /// the same, in upstream's form.)
    #[command(after_help = RELEASE_AFTER)]
    Release {
        /// The workspace path.
        path: PathBuf,
    },
    /// Turn workspaces back into plain directories (upstream's name for `release`).
    ///
    /// Asks first, showing each workspace and how many snapshots will be deleted; the
    /// answer is read from stdin, so `echo y | ws-ckpt recover -w ID` works. Also repairs a
    /// workspace whose symlink was deleted: its data is put back at the path. A real
    /// directory at the path is never overwritten: move it aside first. With --all every
    /// workspace is tried, past failures, and the exit status is 1 when any failed.
    #[command(after_help = RECOVER_AFTER)]
    #[command(group(ArgGroup::new("target").required(true).args(["workspace", "all"])))]
    Recover {
        /// The workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
        /// Every workspace you may release.
        #[arg(long)]
        all: bool,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Take a read-only snapshot of a workspace (a plain directory is initialized first).
    ///
    /// Prints the snapshot ID on the first line. IDs: any UTF-8 name of up to 255 bytes
    /// (spaces and CJK allowed) that is not blank, holds no / \\ or control character and
    /// does not start with a dot; generated from the time when omitted (YYYYMMDD-HHMMSS-mmm,
    /// UTC, sortable).
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
    /// previous state is then deleted (take a checkpoint first to keep it). The target is
    /// named with -s (an ID, or a prefix matching one ID) or counted back with -n along the
    /// lineage: -n 1 is the snapshot the live workspace descends from (the last checkpoint,
    /// or the target of the last rollback), -n 2 its parent, and so on. --preview shows what
    /// the rollback would revert and changes nothing. Refuses while another process has its
    /// working directory inside the workspace (bind mounts included) unless --force, and
    /// refuses MISSING snapshots.
    #[command(after_help = ROLLBACK_AFTER)]
    #[command(group(ArgGroup::new("target").required(true).args(["snapshot", "num_ancestors"])))]
    Rollback {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: String,
        /// Snapshot to roll back to (its ID, or a prefix matching exactly one).
        #[arg(short = 's', long = "snapshot", short_alias = 'i', alias = "id")]
        snapshot: Option<String>,
        /// Go back N snapshots along the lineage (1 = the one the workspace descends from).
        #[arg(short = 'n', long = "num-ancestors", value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..))]
        num_ancestors: Option<u32>,
        /// Show what would change; change nothing.
        #[arg(long)]
        preview: bool,
        /// Roll back even if processes are using the workspace.
        #[arg(long)]
        force: bool,
    },
    /// List snapshots (all workspaces when -w is omitted), oldest first.
    ///
    /// The table shows local times and ages; --format json prints one JSON array of
    /// {"id", "workspace", "meta": {...}} items (times in RFC 3339 UTC), or, with --limit or
    /// --cursor, one page: {"snapshots": [...], "next_cursor": TOKEN or null}.
    #[command(after_help = LIST_AFTER)]
    List {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
        /// At most N snapshots (one page; see next_cursor).
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(ws_ckpt::ops::MAX_PAGE)))]
        limit: Option<u32>,
        /// Continue after the page that returned this next_cursor.
        #[arg(long, value_name = "TOKEN")]
        cursor: Option<String>,
    },
    /// Delete a snapshot. Pinned or MISSING snapshots need --force (or a yes on a terminal).
    ///
    /// -w may be left out when the snapshot ID is unique across your workspaces. The space
    /// is returned by the btrfs cleaner in the background. Without --force, a pinned or
    /// MISSING snapshot is deleted only after you confirm on a terminal; without a terminal
    /// it is refused.
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
        /// Check everything and say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
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
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what changed between two snapshots, or since a snapshot (live workspace).
    ///
    /// `+` added, `-` deleted, `M` modified, `R` renamed (old → new); `No differences found.`
    /// when nothing changed. Read from the btrfs send stream, so it is exact for renames,
    /// symlinks, hardlinks and directories. A snapshot may be given by a unique prefix.
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
    /// (daemon.lock); a lock left by a crash is detected and recovered from. Upstream's
    /// form `daemon --mount-path M --socket S` works too: the loop backend lives at M (a
    /// btrfs already mounted there is used as it is, else the image is mounted there) and
    /// clients find the daemon with WS_CKPT_SOCKET=S; the state directory and everything
    /// else still come from the config.
    #[command(after_help = DAEMON_AFTER)]
    Daemon {
        /// Plan once and exit: 0 ok, 1 blocking findings.
        #[arg(long)]
        check: bool,
        /// Mount point of the loop backend (instead of [backend.btrfs-loop] mount); a btrfs
        /// filesystem already mounted there is used as it is.
        #[arg(long, value_name = "M")]
        mount_path: Option<PathBuf>,
        /// The socket to serve (instead of <runtime_dir>/ws-ckpt.sock).
        #[arg(long, value_name = "S")]
        socket: Option<PathBuf>,
        /// Log level (instead of [daemon] log_level): error, warn, info, debug or trace.
        #[arg(long, value_name = "L")]
        log_level: Option<String>,
    },
    /// Show or change the configuration: upstream's `config`, plus show and validate.
    ///
    /// Without a subcommand this is upstream's `config`: alone, an overview; -g the global
    /// settings; -w WS one workspace's retention policy (its effective values, its own and
    /// the global ones, and the file each comes from). With a change flag, the setting is
    /// edited where it is set (comments kept; a workspace's policy in the file declaring it,
    /// normally config.d/50-<ws_id>.toml) and the config reloaded; a change flag without
    /// -g or -w is global, as in ws-ckpt 0.3. Owners change their own workspace's policy;
    /// global changes need root. The main file (--config) is read first, then <its
    /// dir>/config.d/*.toml in lexical order; every key is described in ws-ckpt.toml(5).
    #[command(after_help = CONFIG_AFTER, args_conflicts_with_subcommands = true)]
    Config {
        /// show or validate.
        #[command(subcommand)]
        command: Option<ConfigCommand>,
        /// The policy and setting flags.
        #[command(flatten)]
        args: ConfigArgs,
    },
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

// Upstream's `config` flags (no doc comment: with `defer` it would become the about text of
// `config`, which is built after the variant's own).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ConfigArgs {
    /// The global settings.
    #[arg(short = 'g', long = "global", conflicts_with = "workspace")]
    pub global: bool,
    /// One workspace's retention policy (its path or ws_id).
    #[arg(short = 'w', long = "workspace")]
    pub workspace: Option<String>,
    /// Turn automatic cleanup on.
    #[arg(long, conflicts_with = "disable_auto_cleanup")]
    pub enable_auto_cleanup: bool,
    /// Turn automatic cleanup off.
    #[arg(long)]
    pub disable_auto_cleanup: bool,
    /// What automatic cleanup keeps: a count (20; 0 turns it off) or an age (30d).
    #[arg(long, value_name = "N|AGE")]
    pub auto_cleanup_keep: Option<String>,
    /// How often automatic cleanup runs, in seconds (global only).
    #[arg(long, value_name = "SECS")]
    pub auto_cleanup_interval: Option<u64>,
    /// How often the daemon reconciles, in seconds (global only; [daemon] reconcile_interval).
    #[arg(long, value_name = "SECS")]
    pub health_check_interval: Option<u64>,
    /// Loop image size cap in GB (global only).
    #[arg(long, value_name = "GB")]
    pub img_size: Option<u64>,
    /// Loop image cap as a percentage of the host filesystem (global only).
    #[arg(long, value_name = "P")]
    pub img_max_percent: Option<u32>,
    /// Drop the workspace's own values: it inherits the global ones (with -w only).
    #[arg(long)]
    pub reset: bool,
}

// `config` subcommands (no doc comment, as for `ConfigArgs`).
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
  ws-ckpt rollback -w ~/project -n 1         back to the last checkpoint
  ws-ckpt status
  ws-ckpt --format json list                 every command speaks JSON

Exit status:
  0  success
  1  error: one line says what failed (naming the path or ID), one line how to fix it; with
     --format json the error is a JSON document on stdout and the line is on stderr too
  2  usage error; plan --detailed-exitcode: changes pending
  3  status --detailed-exitcode: degraded

Environment:
  WS_CKPT_CONFIG  the config file, like --config (default /etc/ws-ckpt/config.toml)
  WS_CKPT_SOCKET  talk to the daemon on this socket only (as upstream's clients do); when
                  nothing answers there every command fails with \"daemon is not running\"
                  instead of running in-process
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
  ws-ckpt status -w ~/project                    that workspace only
  ws-ckpt status --detailed-exitcode || alert    monitoring: non-zero unless healthy
  ws-ckpt --format json status | jq .attention

Exit status:
  0  a report was made (any health), or with --detailed-exitcode: healthy
  1  the command failed (no daemon, -w names no workspace or a detached one), or with
     --detailed-exitcode: error (e.g. a backend conflict blocks every change)
  3  with --detailed-exitcode: degraded (not mounted, a workspace not ready, something
     pending, or a warning)";

const INIT_AFTER: &str = "\
Examples:
  ws-ckpt init ~/project
  ws-ckpt init -w ~/project                      the same, upstream's spelling
  ws-ckpt init ~/project --force                 even while a shell is inside it
  ws-ckpt --format json init /srv/agent/project";

const RELEASE_AFTER: &str = "\
Examples:
  ws-ckpt release ~/project            ~/project is a plain directory again";

const RECOVER_AFTER: &str = "\
Examples:
  ws-ckpt recover -w ~/project                   asks, showing the snapshot count
  echo y | ws-ckpt recover -w ws-4612d8          by ws_id, answering from a pipe
  ws-ckpt recover --all --force                  every workspace, without asking

Exit status:
  0  recovered, or cancelled at the prompt
  1  a workspace could not be recovered (with --all: any; the others are still done)";

const CHECKPOINT_AFTER: &str = "\
Examples:
  ws-ckpt checkpoint -w ~/project -m \"before refactor\"
  ws-ckpt checkpoint -w ~/project -s \"before upgrade\" --pin
  ws-ckpt checkpoint -w ws-4612d8 --metadata '{\"tool\":\"edit\"}'
  id=$(ws-ckpt checkpoint -w ~/project | head -n1)    the ID is the first line on stdout
  ws-ckpt --format json checkpoint -w ~/project | jq -r .snapshot";

const ROLLBACK_AFTER: &str = "\
Examples:
  ws-ckpt rollback -w ~/project -s before-upgrade
  ws-ckpt rollback -w ~/project -s 20261124        a prefix matching one snapshot
  ws-ckpt rollback -w ~/project -n 1               discard changes since the last checkpoint
  ws-ckpt rollback -w ~/project -n 2 --preview     what going back one more would revert
  ws-ckpt rollback -w ~/project -s before-upgrade --force";

const LIST_AFTER: &str = "\
Flags:
  head     the live workspace descends from it: `rollback -n 1` goes back to it
  pinned   retention and cleanup never delete it (checkpoint --pin)
  MISSING  recorded, but its subvolume is gone: rollback and diff refuse it; `delete
           --force` forgets it; it clears by itself when the subvolume comes back

Examples:
  ws-ckpt list                         every workspace you may use
  ws-ckpt list -w ~/project
  ws-ckpt --format json list -w ~/project | jq -r '.[].id'
  ws-ckpt --format json list --limit 100           one page; then --cursor NEXT_CURSOR";

const DELETE_AFTER: &str = "\
Examples:
  ws-ckpt delete -w ~/project -s before-upgrade
  ws-ckpt delete -s 20261124-150742-123          the ID is unique: -w is not needed
  ws-ckpt delete -w ~/project -s old --force     pinned or MISSING
  ws-ckpt delete -w ~/project -s old --dry-run   would it be deleted?

Exit status:
  0  deleted (or would be, with --dry-run), or cancelled at the terminal prompt
  1  not deleted: unknown ID, or pinned/MISSING without --force and without a terminal";

const CLEANUP_AFTER: &str = "\
Examples:
  ws-ckpt cleanup -w ~/project                   the workspace's retention setting
  ws-ckpt cleanup -w ~/project --keep 5          keep the 5 newest unpinned
  ws-ckpt cleanup -w ~/project --keep 30d        delete unpinned ones older than 30 days
  ws-ckpt cleanup -w ~/project --keep 5 --dry-run    what that would delete";

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
  ws-ckpt daemon --mount-path /mnt/ws --socket /tmp/ws.sock    upstream's form

Exit status:
  0  clean stop (SIGTERM, SIGINT), or --check found nothing blocking
  1  another daemon runs, the config or state cannot be loaded, or --check found a
     blocking finding";

const CONFIG_AFTER: &str = "\
Examples:
  ws-ckpt config                                  overview
  ws-ckpt config -w ~/project --format json       the workspace's policy (ws-ckpt-policy/v1)
  ws-ckpt config -w ~/project --enable-auto-cleanup --auto-cleanup-keep 10
  ws-ckpt config -w ~/project --reset             inherit the global policy again
  ws-ckpt config -g --auto-cleanup-keep 30d       global (root)
  ws-ckpt config show
  ws-ckpt config validate /tmp/new-config.toml

Exit status:
  0  shown, or changed and reloaded
  1  refused (a global-only flag with -w, --reset without -w, a bad value, another user's
     workspace, a global change by a non-root user), or the changed config would not load
     (the files are then restored)";

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
