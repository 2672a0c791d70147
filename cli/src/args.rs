//! Command-line definitions (clap derive). Completions and the man page are generated from
//! these, so every help text here is user documentation.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// Stable JSON (documented in docs/json.md).
    Json,
}

/// ws-ckpt: instant checkpoints and rollbacks of any directory on btrfs.
///
/// A TOML config declares the backend and the workspaces; `ws-ckpt apply` (or the daemon)
/// makes the machine match it. Workspaces stay at their path (it becomes a symlink to a btrfs
/// subvolume); checkpoints are read-only snapshots.
///
/// Typical use:
///   ws-ckpt init ~/project            # declare and convert a directory
///   ws-ckpt checkpoint -w ~/project -m "before refactor"
///   ws-ckpt rollback -w ~/project -s <ID>
///   ws-ckpt status
#[derive(Debug, Parser)]
#[command(
    name = "ws-ckpt",
    version,
    propagate_version = true,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Config file (drop-ins are read from <its dir>/config.d).
    #[arg(
        long,
        global = true,
        env = "WS_CKPT_CONFIG",
        default_value = "/etc/ws-ckpt/config.toml"
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
pub enum Command {
    /// Show what `apply` would change: actions and findings.
    ///
    /// With --detailed-exitcode: 0 = in sync, 2 = changes pending, 1 = error.
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
    /// JSON: {"changed": bool, "actions": [...], "findings": [...]}.
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
    Status {
        /// Only this workspace (path or ws_id).
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
    },
    /// Turn a directory into a workspace (declares it in config.d/50-<ws_id>.toml, then applies).
    Init {
        /// The directory.
        path: PathBuf,
    },
    /// Turn a workspace back into a plain directory (sets state = "absent", then applies).
    ///
    /// Snapshots of the workspace are deleted after the data is copied back and verified.
    Release {
        /// The workspace path.
        path: PathBuf,
    },
    /// Take a read-only snapshot of a workspace (a plain directory is initialized first).
    ///
    /// Prints the snapshot ID. IDs: 1-128 of [A-Za-z0-9._-], starting alphanumeric;
    /// generated from the time when omitted.
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
    /// Refuses while a process has its working directory inside the workspace, unless --force.
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
    List {
        /// Workspace: its path or ws_id.
        #[arg(short = 'w', long = "workspace")]
        workspace: Option<String>,
    },
    /// Delete a snapshot. Pinned or MISSING snapshots need --force.
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
    /// `+` added, `-` deleted, `M` modified, `R` renamed (old → new).
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
    Reload,
    /// Run the daemon: watch the config and the system, reconcile, serve the socket.
    ///
    /// With --check: run one planning pass and exit non-zero on blocking findings.
    Daemon {
        /// Plan once and exit: 0 ok, 1 blocking findings.
        #[arg(long)]
        check: bool,
    },
    /// Show or validate the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective merged config (all files, defaults filled in).
    Show,
    /// Validate a config file and its drop-ins; exit 1 with file:line:column on error.
    Validate {
        /// File to validate (default: --config).
        path: Option<PathBuf>,
    },
}
