//! Generated documentation: the man pages (`ws-ckpt man`) and the shell completions
//! (`ws-ckpt completions SHELL`).
//!
//! What it does: lays out, in roff or shell syntax, what the clap definitions in
//! [`crate::args`] and the config key reference in [`ws_ckpt::config::keys`] say. Pages:
//! `ws-ckpt(1)`, one `ws-ckpt-COMMAND(1)` per command and nested command (walked from the clap
//! tree, so a new command gets its page, its completion and its SEE ALSO entry by itself),
//! and `ws-ckpt.toml(5)` with every key the config parser accepts. The headed blocks of a
//! command's `after_help` (`Examples:`, `Exit status:`, `Flags:`…) become man sections.
//! The bash script works around clap_complete's handling of hyphenated binary names.
//!
//! What it must not do: hold text about a command or a config key (that belongs beside its
//! definition), or touch anything but stdout and the directory given to `--out-dir`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use ws_ckpt::config::keys::{self, DocumentedKey, SECTIONS};
use ws_ckpt::error::{Error, ErrorCode};

use crate::args::Cli;

/// One man page.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// `ws-ckpt`, `ws-ckpt-checkpoint`, `ws-ckpt-config-show`, `ws-ckpt.toml`.
    pub name: String,
    /// Manual section: 1 (commands) or 5 (file formats).
    pub section: u8,
    /// The roff source.
    pub text: String,
}

impl Page {
    /// `ws-ckpt-checkpoint.1`.
    pub(crate) fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }

    /// `ws-ckpt-checkpoint(1)`.
    pub(crate) fn reference(&self) -> String {
        format!("{}({})", self.name, self.section)
    }
}

/// `ws-ckpt man [PAGE] [--out-dir DIR]`.
pub(crate) fn man(page: Option<&str>, out_dir: Option<&Path>) -> Result<i32, Error> {
    let pages = man_pages();
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, &e))?;
        let mut listing = String::new();
        for p in &pages {
            let path = dir.join(p.file_name());
            std::fs::write(&path, &p.text).map_err(|e| io_error("write", &path, &e))?;
            listing.push_str(&format!("{}\n", path.display()));
        }
        write_stdout(&listing);
        return Ok(0);
    }
    let wanted = page.unwrap_or("ws-ckpt").trim().replace(' ', "-");
    let found = pages.iter().find(|p| {
        p.name == wanted
            || p.file_name() == wanted
            || p.reference() == wanted
            || p.name == format!("ws-ckpt-{wanted}")
    });
    match found {
        Some(p) => {
            write_stdout(&p.text);
            Ok(0)
        }
        None => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("there is no man page \"{wanted}\""),
        )
        .hint(format!(
            "use one of: {}",
            pages
                .iter()
                .map(|p| p
                    .name
                    .strip_prefix("ws-ckpt-")
                    .unwrap_or(&p.name)
                    .to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `ws-ckpt completions SHELL`.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<i32, Error> {
    write_stdout(&completion_script(shell)?);
    Ok(0)
}

/// The completion script for `shell`.
pub(crate) fn completion_script(shell: clap_complete::Shell) -> Result<String, Error> {
    if shell == clap_complete::Shell::Bash {
        return bash_completion();
    }
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
    String::from_utf8(buf).map_err(|e| generator_error(&format!("{shell} completions: {e}")))
}

const BIN: &str = "ws-ckpt";
/// The name the bash script is generated for (see [`bash_completion`]).
const BASH_GEN_NAME: &str = "ws_ckpt";

/// clap_complete names the bash state of each subcommand after the binary, replacing `-` by
/// `__` where it tracks the words typed (`ws__ckpt__subcmd__checkpoint`) but by `__subcmd__`
/// in the `case` arms that complete them (`ws__subcmd__ckpt__subcmd__checkpoint`): for a
/// hyphenated binary nothing after the subcommand completes. Generating for a name without a
/// hyphen makes the two agree; only the `complete` registration names the real binary.
fn bash_completion() -> Result<String, Error> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut cmd,
        BASH_GEN_NAME,
        &mut buf,
    );
    let text = String::from_utf8(buf).map_err(|e| generator_error(&format!("bash: {e}")))?;
    let suffix = format!(" {BASH_GEN_NAME}");
    let mut registrations = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.strip_suffix(&suffix) {
            Some(head) if line.trim_start().starts_with("complete -F ") => {
                registrations += 1;
                out.push_str(head);
                out.push(' ');
                out.push_str(BIN);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    if registrations == 0 {
        return Err(generator_error(
            "the bash script has no `complete -F ... ws_ckpt` line to register for ws-ckpt",
        ));
    }
    Ok(out)
}

fn generator_error(what: &str) -> Error {
    Error::new(
        ErrorCode::OperationFailed,
        format!("cannot generate {what}"),
    )
    .hint("this is a bug in ws-ckpt's generated documentation; please report it")
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {what} {}: {e}", path.display()),
    )
    .hint("choose a directory you can write to")
}

/// Write to stdout; a closed pipe (`ws-ckpt man | head`) is not an error.
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Every man page: `ws-ckpt(1)`, one per command (depth first, in clap's order), then
/// `ws-ckpt.toml(5)`.
pub(crate) fn man_pages() -> Vec<Page> {
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut commands = Vec::new();
    collect(&root, &mut commands);
    let names: Vec<String> = commands.iter().map(page_name).collect();
    let mut pages: Vec<Page> = commands
        .iter()
        .map(|c| command_page(c, &root, &names))
        .collect();
    pages.push(config_page(&names));
    pages
}

fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The headed blocks of a help text: a line at column 0 ending in `:` starts a block, the
/// indented lines after it are its body.
fn blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let heading = !line.starts_with(' ') && line.trim_end().ends_with(':') && !line.is_empty();
        if heading {
            out.push((
                line.trim_end().trim_end_matches(':').to_string(),
                Vec::new(),
            ));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line.to_string());
        }
    }
    for (_, body) in &mut out {
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let indent = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        for l in body.iter_mut() {
            *l = l.get(indent..).unwrap_or("").to_string();
        }
    }
    out
}

/// The blocks of a command's `after_help` (long form first).
pub(crate) fn help_blocks(cmd: &clap::Command) -> Vec<(String, Vec<String>)> {
    cmd.get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|t| blocks(&t.to_string()))
        .unwrap_or_default()
}

/// Escape text for a roff text line: backslashes, minus signs, and a leading `.` or `'`.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c => out.push(c),
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// A quoted macro argument.
fn arg(text: &str) -> String {
    format!("\"{}\"", esc(text).replace('"', "\\(dq"))
}

struct Roff(String);

impl Roff {
    fn new() -> Roff {
        Roff(String::new())
    }
    fn raw(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        if !text.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }
    fn section(&mut self, name: &str) -> &mut Self {
        self.raw(&format!(".SH {}", arg(&name.to_uppercase())))
    }
    /// A section heading kept as written (TOML table headers are case-sensitive).
    fn section_verbatim(&mut self, name: &str) -> &mut Self {
        self.raw(&format!(".SH {}", arg(name)))
    }
    fn para(&mut self, text: &str) -> &mut Self {
        self.raw(".PP");
        for line in text.lines() {
            self.raw(&esc(line));
        }
        self
    }
    /// A preformatted block, indented.
    fn pre(&mut self, lines: &[String]) -> &mut Self {
        self.raw(".RS 4").raw(".nf");
        for l in lines {
            self.raw(&esc(l));
        }
        self.raw(".fi").raw(".RE")
    }
    /// A tagged paragraph: bold tag, then the text.
    fn item(&mut self, tag: &str, text: &str) -> &mut Self {
        self.raw(".TP").raw(&format!(".B {}", arg(tag)));
        for line in text.lines() {
            self.raw(&esc(line));
        }
        self
    }
}

/// Render with clap_mangen's own section renderer.
fn mangen(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = f(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The blocks every command page shares with the main page (`Environment:`).
fn shared_blocks(root: &clap::Command) -> Vec<(String, Vec<String>)> {
    help_blocks(root)
        .into_iter()
        .filter(|(h, _)| h == "Environment")
        .collect()
}

const DEFAULT_EXIT_STATUS: &[&str] = &[
    "0  success",
    "1  error: one line says what failed (naming the path or ID), one line how to fix it",
];

fn command_page(cmd: &clap::Command, root: &clap::Command, all: &[String]) -> Page {
    let name = page_name(cmd);
    let is_root = name == page_name(root);
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .source(format!("ws-ckpt {}", version()))
        .manual("ws-ckpt manual");
    let mut r = Roff::new();
    r.raw(&mangen(|w| man.render_title(w)));
    r.raw(&mangen(|w| man.render_name_section(w)));
    r.raw(&mangen(|w| man.render_synopsis_section(w)));
    r.raw(&mangen(|w| man.render_description_section(w)));
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        r.raw(&mangen(|w| man.render_options_section(w)));
    }
    if cmd.has_subcommands() {
        r.raw(&mangen(|w| man.render_subcommands_section(w)));
    }
    let mut blocks = help_blocks(cmd);
    if !is_root {
        blocks.extend(shared_blocks(root));
    }
    if !blocks.iter().any(|(h, _)| h == "Exit status") {
        blocks.push((
            "Exit status".to_string(),
            DEFAULT_EXIT_STATUS.iter().map(|s| s.to_string()).collect(),
        ));
    }
    // Sections in the conventional man-page order; any other block keeps its place first.
    let order = ["Exit status", "Environment", "Examples"];
    for (heading, body) in blocks.iter().filter(|(h, _)| !order.contains(&h.as_str())) {
        r.section(heading).pre(body);
    }
    for wanted in order {
        for (heading, body) in blocks.iter().filter(|(h, _)| h == wanted) {
            r.section(heading).pre(body);
        }
        if wanted == "Environment" && (is_root || name.ends_with("-daemon")) {
            files_section(&mut r);
        }
    }
    r.section("See also");
    let mut see: Vec<String> = Vec::new();
    if is_root {
        see.extend(all.iter().skip(1).map(|n| format!("{n}(1)")));
    } else {
        see.push(format!("{}(1)", page_name(root)));
        let prefix = format!("{name}-");
        see.extend(
            all.iter()
                .filter(|n| n.starts_with(&prefix) || name.starts_with(&format!("{n}-")))
                .filter(|n| **n != page_name(root))
                .map(|n| format!("{n}(1)")),
        );
    }
    see.push("ws-ckpt.toml(5)".to_string());
    if is_root || name.ends_with("-daemon") {
        see.push("systemctl(1)".to_string());
    }
    see.push("btrfs(8)".to_string());
    r.raw(&see.iter().map(|s| esc(s)).collect::<Vec<_>>().join(",\n"));
    Page {
        name,
        section: 1,
        text: r.0,
    }
}

/// The files ws-ckpt reads and writes, at their default paths.
fn files_section(r: &mut Roff) {
    use ws_ckpt::config::{
        DEFAULT_CONFIG_PATH, DEFAULT_IMAGE_NAME, DEFAULT_LOOP_MOUNT, DEFAULT_RUNTIME_DIR,
        DEFAULT_STATE_DIR, DROPIN_DIR_NAME,
    };
    let config_dir = Path::new(DEFAULT_CONFIG_PATH)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let state = PathBuf::from(DEFAULT_STATE_DIR);
    let entries: Vec<(String, String)> = vec![
        (
            DEFAULT_CONFIG_PATH.to_string(),
            "The main config file (--config, WS_CKPT_CONFIG); see ws-ckpt.toml(5). Missing = all defaults.".into(),
        ),
        (
            format!("{}/*.toml", config_dir.join(DROPIN_DIR_NAME).display()),
            "Drop-ins, read after the main file in lexical order; `ws-ckpt init` writes 50-<ws_id>.toml here.".into(),
        ),
        (
            state.join("state.json").display().to_string(),
            "What ws-ckpt manages: backend, workspaces, interrupted operations (daemon.state_dir). Written atomically; a file that does not parse is moved aside as state.json.corrupt-<time>.".into(),
        ),
        (
            state.join("indexes/<ws_id>/index.json").display().to_string(),
            "Each workspace's snapshots (with an append-only journal beside it).".into(),
        ),
        (
            state.join("daemon.lock").display().to_string(),
            "Held by the running daemon or in-process command; left behind by a crash, which the next start detects.".into(),
        ),
        (
            state.join("audit.jsonl").display().to_string(),
            "One JSON line per mutating operation: time, caller uid and pid, operation, workspace, snapshot, result.".into(),
        ),
        (
            state.join(DEFAULT_IMAGE_NAME).display().to_string(),
            "The btrfs-loop image (backend.btrfs-loop.image).".into(),
        ),
        (
            format!("{DEFAULT_RUNTIME_DIR}/{}", ws_ckpt::ipc::SOCKET_NAME),
            "The daemon's socket (daemon.runtime_dir), mode 0666; callers are authorized by their uid.".into(),
        ),
        (
            DEFAULT_LOOP_MOUNT.to_string(),
            "Where the loop image is mounted: workspace subvolumes, and snapshots under snapshots/<ws_id>/<id>.".into(),
        ),
    ];
    r.section("Files");
    for (path, text) in entries {
        r.item(&path, &text);
    }
}

/// `ws-ckpt.toml(5)`: every key the parser accepts, grouped by table.
fn config_page(commands: &[String]) -> Page {
    let keys = keys::documented();
    let mut r = Roff::new();
    r.raw(&format!(
        ".TH {} 5 \"\" {} \"File formats\"",
        arg("ws-ckpt.toml"),
        arg(&format!("ws-ckpt {}", version()))
    ));
    r.section("Name");
    r.raw(&esc(
        "ws-ckpt.toml - the ws-ckpt configuration: backend, retention, access and workspaces",
    ));
    r.section("Synopsis");
    r.raw(&esc(ws_ckpt::config::DEFAULT_CONFIG_PATH))
        .raw(".br")
        .raw(&esc("/etc/ws-ckpt/config.d/*.toml"));
    r.section("Description");
    r.para("ws-ckpt is a declarative reconciler: these files declare the storage backend and the workspaces, and `ws-ckpt apply` or the ws-ckpt daemon makes the machine match them. The format is TOML.");
    r.para("The main file is read first, then every *.toml file in config.d next to it, in lexical order (names starting with a dot are skipped). A later file overrides each scalar key it sets. [[workspace]] tables are merged by path: a path declared again with identical settings is accepted, with different settings it is an error naming both files. A missing main file means all defaults; --config PATH or WS_CKPT_CONFIG points a command at another file, whose drop-ins are then in config.d next to it.");
    r.para("Unknown keys, wrong types, bad durations, relative paths and conflicting declarations are rejected with file, line, column and key (`ws-ckpt config validate`). A rejected config is never partly applied: the daemon keeps running on the last good one and reports the error in `ws-ckpt status`. `ws-ckpt config show` prints the effective configuration with every default filled in.");
    r.para("Durations are strings with units s, m, h, d and w, alone or combined (\"90s\", \"24h\", \"1h30m\", \"2w\"), or \"0\" where zero is allowed; keys ending in _secs take an integer number of seconds. Paths must be absolute.");
    for s in SECTIONS {
        let in_section: Vec<&DocumentedKey> = keys.iter().filter(|k| k.section == s.name).collect();
        if in_section.is_empty() {
            continue;
        }
        r.section_verbatim(s.header);
        r.para(s.text);
        for k in in_section {
            key_item(&mut r, k);
        }
    }
    // Keys in a table without a SectionDoc (a unit test forbids it; never drop a key).
    for k in keys
        .iter()
        .filter(|k| !SECTIONS.iter().any(|s| s.name == k.section))
    {
        key_item(&mut r, k);
    }
    r.section("Examples");
    r.para("A loop backend kept under one directory, snapshots older than 30 days deleted automatically, and one workspace keeping its 50 newest snapshots, shared with a group:");
    let example = [
        "[daemon]",
        "state_dir = \"/srv/ws-ckpt/state\"",
        "",
        "[backend]",
        "type = \"btrfs-loop\"",
        "",
        "[backend.btrfs-loop]",
        "image = \"/srv/ws-ckpt/btrfs-data.img\"",
        "mount = \"/srv/ws-ckpt/mnt\"",
        "img_size = 100",
        "",
        "[retention]",
        "auto_cleanup = true",
        "keep = \"30d\"",
        "",
        "[[workspace]]",
        "path = \"/srv/agent/project\"",
        "keep = 50",
        "allow_groups = [\"agents\"]",
    ];
    r.pre(&example.map(String::from));
    r.para("Commented examples of every kind are in /usr/share/doc/ws-ckpt/examples/.");
    files_section(&mut r);
    r.section("See also");
    let mut see = vec!["ws-ckpt(1)".to_string()];
    see.extend(
        commands
            .iter()
            .filter(|n| n.contains("-config") || n.ends_with("-init") || n.ends_with("-release"))
            .map(|n| format!("{n}(1)")),
    );
    r.raw(&see.iter().map(|s| esc(s)).collect::<Vec<_>>().join(",\n"));
    Page {
        name: "ws-ckpt.toml".to_string(),
        section: 5,
        text: r.0,
    }
}

fn key_item(r: &mut Roff, k: &DocumentedKey) {
    let (value, text) = match &k.doc {
        Some(d) => (d.value, d.text),
        None => ("value", "(not documented)"),
    };
    let default = match &k.default {
        Some(d) => format!("; default {d}"),
        None => String::new(),
    };
    r.item(&k.name, &format!("{value}{default}.\n{text}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(pages: &'a [Page], name: &str) -> &'a Page {
        pages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no page {name}"))
    }

    #[test]
    fn every_command_has_a_page_with_examples_and_exit_status() {
        let pages = man_pages();
        let mut root = Cli::command().disable_help_subcommand(true);
        root.build();
        let mut commands = Vec::new();
        collect(&root, &mut commands);
        assert!(commands.len() > 15, "{}", commands.len());
        for cmd in &commands {
            let name = page_name(cmd);
            let p = page(&pages, &name);
            assert!(
                help_blocks(cmd)
                    .iter()
                    .any(|(h, b)| h == "Examples" && !b.is_empty()),
                "{name}: add an `Examples:` block to its after_help in cli/src/args.rs"
            );
            for section in [
                "NAME",
                "SYNOPSIS",
                "DESCRIPTION",
                "EXIT STATUS",
                "EXAMPLES",
                "SEE ALSO",
            ] {
                assert!(
                    p.text.contains(&format!(".SH \"{section}\""))
                        || p.text.contains(&format!(".SH {section}\n")),
                    "{name}: no {section} section:\n{}",
                    p.text
                );
            }
            assert!(p.text.contains("ws\\-ckpt.toml(5)"), "{name}: SEE ALSO");
        }
        // The main page links every command page; the others link back.
        let main = page(&pages, "ws-ckpt");
        for cmd in commands.iter().skip(1) {
            let reference = esc(&format!("{}(1)", page_name(cmd)));
            assert!(
                main.text.contains(&reference),
                "ws-ckpt(1) lacks {reference}"
            );
        }
        for section in ["FILES", "ENVIRONMENT"] {
            assert!(
                main.text.contains(&format!(".SH \"{section}\"")),
                "{section}"
            );
        }
        assert!(page(&pages, "ws-ckpt-checkpoint")
            .text
            .contains("ws\\-ckpt(1)"));
        assert!(page(&pages, "ws-ckpt-config-show")
            .text
            .contains("ws\\-ckpt\\-config(1)"));
        assert!(page(&pages, "ws-ckpt-config")
            .text
            .contains("ws\\-ckpt\\-config\\-validate(1)"));
        assert!(!pages.iter().any(|p| p.name.ends_with("-help")));
    }

    #[test]
    fn the_config_page_documents_every_accepted_key() {
        let pages = man_pages();
        let p = page(&pages, "ws-ckpt.toml");
        assert_eq!(p.section, 5);
        for k in keys::documented() {
            assert!(k.doc.is_some(), "{} is not documented", k.key);
            assert!(
                p.text.contains(&format!(".B {}", arg(&k.name))),
                "{} missing from ws-ckpt.toml(5)",
                k.key
            );
        }
        for s in SECTIONS {
            assert!(
                p.text.contains(&format!(".SH {}", arg(s.header))),
                "{}",
                s.header
            );
        }
        assert!(
            p.text.contains("default \"/var/lib/ws\\-ckpt\""),
            "{}",
            p.text
        );
    }

    #[test]
    fn roff_escapes_what_roff_would_interpret() {
        assert_eq!(esc(".start"), "\\&.start");
        assert_eq!(esc("'quote"), "\\&'quote");
        assert_eq!(esc("a\\b-c"), "a\\eb\\-c");
        assert_eq!(arg("say \"hi\""), "\"say \\(dqhi\\(dq\"");
    }

    #[test]
    fn help_blocks_are_split_on_headings() {
        let b = blocks("Flags:\n  a  one\n  b  two\n\nExamples:\n  x --y\n");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, "Flags");
        assert_eq!(b[0].1, ["a  one", "b  two"]);
        assert_eq!(b[1], ("Examples".to_string(), vec!["x --y".to_string()]));
    }

    #[test]
    fn bash_script_states_agree_and_register_the_real_name() {
        let text = bash_completion().unwrap();
        assert!(
            text.contains("cmd=\"ws_ckpt__subcmd__checkpoint\""),
            "{text}"
        );
        assert!(
            text.contains("\n        ws_ckpt__subcmd__checkpoint)\n"),
            "{text}"
        );
        assert!(!text.contains("ws__subcmd__ckpt"), "{text}");
        let registrations: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("complete -F"))
            .collect();
        assert!(!registrations.is_empty());
        for l in registrations {
            assert!(l.ends_with(" ws-ckpt"), "{l}");
        }
    }
}
