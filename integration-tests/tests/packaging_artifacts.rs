//! Packaging artifacts (SPEC §9): `scripts/package` builds the .rpm and the .deb from the
//! already built (debug) binary; their file lists, config files, ghost files and control data
//! are checked; every maintainer script passes `sh -n`; the uninstall scriptlets run in a
//! sandbox (`WS_CKPT_ROOT=<temp dir>`) and keep the snapshot storage while a workspace is
//! recorded; the Ansible module declares, converges and releases a workspace on a real loop
//! btrfs (check mode, a real run, an idempotent rerun, diff mode).
//!
//! Nothing here installs a package on the host or touches /etc/ws-ckpt, /var/lib/ws-ckpt,
//! /run/ws-ckpt or /mnt/btrfs-workspace. A missing tool (rpmbuild, dpkg-deb, ansible) is a loud
//! `SKIPPED (tool X not installed)` locally and a failure in CI (`CI` set): scripts/install-deps
//! installs them all.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ws_ckpt_integration_tests::{bin_path, TestEnv};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// An executable in `$PATH` or the usual bin/sbin directories.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Loud skip for a missing tool; in CI a missing tool is a failure.
fn skip(tool: &str, test: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is not installed but CI is set: run scripts/install-deps (test {test})");
    }
    let banner = "=".repeat(65);
    let msg = format!("{banner}\nSKIPPED (tool {tool} not installed): {test}\n{banner}\n");
    // Straight to fd 2 so that libtest's capture cannot hide it.
    let _ = std::io::stderr().lock().write_all(msg.as_bytes());
}

use ws_ckpt_integration_tests::run_tool as run;

#[track_caller]
fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// The packages `scripts/package` built from the test binary (once per test run).
struct Packages {
    rpm: Option<PathBuf>,
    deb: Option<PathBuf>,
}

fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-artifacts");
        let _ = fs::remove_dir_all(&out);
        let has_rpm = tool("rpmbuild").is_some();
        let has_deb = tool("dpkg-deb").is_some();
        if !has_rpm && !has_deb {
            return Packages {
                rpm: None,
                deb: None,
            };
        }
        let mut cmd = Command::new(repo().join("scripts/package"));
        cmd.arg("--bin").arg(bin_path()).arg("--out").arg(&out);
        if !has_rpm {
            cmd.arg("--no-rpm");
        }
        if !has_deb {
            cmd.arg("--no-deb");
        }
        let listed = stdout_of(&mut cmd);
        let built: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
        let find = |ext: &str| {
            built
                .iter()
                .find(|p| p.extension().is_some_and(|e| e == ext))
                .cloned()
        };
        let pkgs = Packages {
            rpm: find("rpm"),
            deb: find("deb"),
        };
        assert_eq!(
            pkgs.rpm.is_some(),
            has_rpm,
            "scripts/package printed {listed}"
        );
        assert_eq!(
            pkgs.deb.is_some(),
            has_deb,
            "scripts/package printed {listed}"
        );
        for p in built {
            assert!(p.is_file(), "{} was not written", p.display());
        }
        pkgs
    })
}

fn rpm_package(test: &str) -> Option<&'static Path> {
    if tool("rpm").is_none() || tool("rpmbuild").is_none() {
        skip("rpmbuild", test);
        return None;
    }
    packages().rpm.as_deref()
}

fn deb_package(test: &str) -> Option<&'static Path> {
    if tool("dpkg-deb").is_none() {
        skip("dpkg-deb", test);
        return None;
    }
    packages().deb.as_deref()
}

/// Files every package must ship (paths differing by format are checked separately).
const COMMON_FILES: &[&str] = &[
    "/usr/bin/ws-ckpt",
    "/usr/share/bash-completion/completions/ws-ckpt",
    "/usr/share/fish/vendor_completions.d/ws-ckpt.fish",
    "/etc/ws-ckpt/config.toml",
    "/etc/ws-ckpt/config.toml.sample",
    "/etc/ws-ckpt/config.d",
    "/usr/share/doc/ws-ckpt/README.md",
    "/usr/share/doc/ws-ckpt/examples/minimal.toml",
    "/usr/share/doc/ws-ckpt/examples/loop-backend.toml",
    "/usr/share/doc/ws-ckpt/examples/base-backend.toml",
    "/usr/share/doc/ws-ckpt/examples/many-workspaces.toml",
    "/usr/share/doc/ws-ckpt/examples/legacy-0.3.toml",
];

#[test]
fn rpm_ships_files_config_and_ghosts() {
    let Some(rpm) = rpm_package("rpm_ships_files_config_and_ghosts") else {
        return;
    };
    let list = stdout_of(Command::new("rpm").arg("-qlp").arg(rpm));
    let files: Vec<&str> = list.lines().collect();
    for f in COMMON_FILES.iter().chain(&[
        "/usr/lib/systemd/system/ws-ckpt.service",
        "/usr/share/zsh/site-functions/_ws-ckpt",
        "/var/lib/ws-ckpt/state.json",
        "/var/lib/ws-ckpt/daemon.lock",
        "/run/ws-ckpt/ws-ckpt.sock",
    ]) {
        assert!(files.contains(f), "{f} missing from rpm -qlp:\n{list}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("/usr/share/man/man1/ws-ckpt.1")),
        "no man page in:\n{list}"
    );
    assert!(
        !files.iter().any(|f| f.ends_with("btrfs-data.img")),
        "the loop image must never be owned by the package:\n{list}"
    );

    let config = stdout_of(Command::new("rpm").arg("-qp").arg("--configfiles").arg(rpm));
    for f in [
        "/etc/ws-ckpt/config.toml",
        "/etc/ws-ckpt/config.toml.sample",
    ] {
        assert!(
            config.lines().any(|l| l == f),
            "{f} not a config file:\n{config}"
        );
    }

    // File flags: c = %config, n = noreplace, g = %ghost.
    let flags = stdout_of(
        Command::new("rpm")
            .arg("-qp")
            .arg("--qf")
            .arg("[%{FILEFLAGS:fflags} %{FILENAMES}\\n]")
            .arg(rpm),
    );
    let flag_of = |path: &str| -> String {
        flags
            .lines()
            .find_map(|l| {
                l.split_once(' ')
                    .filter(|(_, p)| *p == path)
                    .map(|(f, _)| f)
            })
            .unwrap_or_else(|| panic!("{path} not in the flag list:\n{flags}"))
            .to_string()
    };
    for f in [
        "/etc/ws-ckpt/config.toml",
        "/etc/ws-ckpt/config.toml.sample",
    ] {
        let fl = flag_of(f);
        assert!(fl.contains('c') && fl.contains('n'), "{f}: {fl}");
        assert!(!fl.contains('g'), "{f} must be shipped, not %ghost: {fl}");
    }
    for f in [
        "/var/lib/ws-ckpt/state.json",
        "/var/lib/ws-ckpt/daemon.lock",
        "/run/ws-ckpt/ws-ckpt.sock",
    ] {
        assert!(
            flag_of(f).contains('g'),
            "{f} must be %ghost: {}",
            flag_of(f)
        );
    }
    // rpm erases plain %ghost files; state.json must survive an erase, so it is %config too.
    assert!(flag_of("/var/lib/ws-ckpt/state.json").contains('c'));

    let qf = |tag: &str| {
        stdout_of(
            Command::new("rpm")
                .arg("-qp")
                .arg("--qf")
                .arg(format!("%{{{tag}}}"))
                .arg(rpm),
        )
    };
    assert_eq!(qf("PREIN").trim(), "(none)", "nothing may run in %pre");
    assert!(qf("POSTIN").contains("mkdir -p"), "%post creates the dirs");
    assert!(qf("POSTIN").contains("daemon-reload"));
    assert!(
        !qf("POSTIN").contains("enable"),
        "enabling is the admin's choice"
    );
    assert!(qf("POSTUN").contains("ws_ckpt_remove_storage"));
    let requires = stdout_of(Command::new("rpm").arg("-qp").arg("--requires").arg(rpm));
    assert!(
        requires.lines().any(|l| l.trim() == "btrfs-progs"),
        "{requires}"
    );
}

#[test]
fn deb_ships_files_conffiles_and_control() {
    let Some(deb) = deb_package("deb_ships_files_conffiles_and_control") else {
        return;
    };
    let list = stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb));
    let files: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| {
            let p = p.trim_start_matches('.').trim_end_matches('/');
            p.to_string()
        })
        .collect();
    for f in COMMON_FILES.iter().chain(&[
        "/lib/systemd/system/ws-ckpt.service",
        "/usr/share/zsh/vendor-completions/_ws-ckpt",
        "/usr/share/man/man1/ws-ckpt.1.gz",
    ]) {
        assert!(
            files.iter().any(|p| p == f),
            "{f} missing from dpkg-deb -c:\n{list}"
        );
    }
    for line in list.lines() {
        assert!(line.contains("root/root"), "not owned by root: {line}");
    }
    assert!(!files
        .iter()
        .any(|f| f.starts_with("/var/lib") || f.starts_with("/run")));

    let info = stdout_of(Command::new("dpkg-deb").arg("-I").arg(deb));
    for needle in [
        "Package: ws-ckpt",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(
            info.contains(needle),
            "{needle} missing from dpkg-deb -I:\n{info}"
        );
    }
    let depends = stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"));
    assert!(depends.contains("btrfs-progs"), "Depends: {depends}");

    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(ctrl.path()));
    let conffiles = fs::read_to_string(ctrl.path().join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/ws-ckpt/config.toml"),
        "{conffiles}"
    );
    assert!(
        !ctrl.path().join("preinst").exists(),
        "no preinst: nothing may block an install"
    );
    let md5sums = fs::read_to_string(ctrl.path().join("md5sums")).unwrap();
    assert!(md5sums.contains("usr/bin/ws-ckpt"), "{md5sums}");
}

#[test]
fn every_maintainer_script_passes_sh_n() {
    let repo = repo();
    let mut scripts: Vec<(PathBuf, &str)> = vec![
        (repo.join("packaging/deb/postinst"), "sh"),
        (repo.join("packaging/deb/prerm"), "sh"),
        (repo.join("packaging/deb/postrm"), "sh"),
        (repo.join("packaging/deb/storage.sh"), "sh"),
        (repo.join("packaging/deb/build-deb"), "bash"),
        (repo.join("scripts/package"), "bash"),
        (repo.join("scripts/install-deps"), "bash"),
    ];
    let storage = fs::read_to_string(repo.join("packaging/deb/storage.sh")).unwrap();
    assert!(
        !storage.contains('%'),
        "storage.sh is pasted into the rpm spec: a % would be expanded as a macro"
    );
    let dir = tempfile::tempdir().unwrap();
    if let Some(deb) = deb_package("every_maintainer_script_passes_sh_n (deb part)") {
        let ctrl = dir.path().join("deb");
        run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
        for s in ["postinst", "prerm", "postrm"] {
            scripts.push((ctrl.join(s), "sh"));
        }
    }
    if let Some(rpm) = rpm_package("every_maintainer_script_passes_sh_n (rpm part)") {
        for (tag, body) in rpm_scriptlets(rpm) {
            let p = dir.path().join(format!("rpm-{tag}.sh"));
            fs::write(&p, body).unwrap();
            scripts.push((p, "sh"));
        }
    }
    for (script, shell) in &scripts {
        let out = Command::new(shell).arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} -n {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(scripts.len() >= 7);
}

/// The install/uninstall scriptlets of an rpm (tag, body), without the "(none)" ones.
fn rpm_scriptlets(rpm: &Path) -> Vec<(&'static str, String)> {
    ["PREIN", "POSTIN", "PREUN", "POSTUN"]
        .into_iter()
        .filter_map(|tag| {
            let body = stdout_of(
                Command::new("rpm")
                    .arg("-qp")
                    .arg("--qf")
                    .arg(format!("%{{{tag}}}"))
                    .arg(rpm),
            );
            (body.trim() != "(none)").then_some((tag, body))
        })
        .collect()
}

/// A fake root for the uninstall scriptlets: /var/lib/ws-ckpt with a (sparse) image, an
/// index and the given state.json text, /etc/ws-ckpt/config.toml.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(state_json: Option<&str>) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/ws-ckpt");
        fs::create_dir_all(state.join("indexes/ws-4612d8")).unwrap();
        fs::create_dir_all(dir.path().join("etc/ws-ckpt/config.d")).unwrap();
        fs::write(
            dir.path().join("etc/ws-ckpt/config.toml"),
            "# all defaults\n#state_dir = \"/elsewhere\"\n",
        )
        .unwrap();
        let img = fs::File::create(state.join("btrfs-data.img")).unwrap();
        img.set_len(64 << 20).unwrap();
        fs::write(state.join("indexes/ws-4612d8/index.json"), "{}").unwrap();
        if let Some(text) = state_json {
            fs::write(state.join("state.json"), text).unwrap();
        }
        Sandbox { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn image(&self) -> PathBuf {
        self.root().join("var/lib/ws-ckpt/btrfs-data.img")
    }

    fn state(&self) -> PathBuf {
        self.root().join("var/lib/ws-ckpt/state.json")
    }

    /// Run `sh script args…` with WS_CKPT_ROOT set; returns stderr. The script must succeed.
    fn run(&self, script: &Path, args: &[&str]) -> String {
        let out = run(Command::new("sh")
            .arg(script)
            .args(args)
            .env("WS_CKPT_ROOT", self.root()));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn state_with_workspaces(workspaces: &str) -> String {
    format!(
        r#"{{
  "version": 1,
  "backend": {{"backend_type": "BtrfsLoop", "selection_method": "auto-detect", "selected_at": "2026-11-24T15:07:42Z"}},
  "paths": {{"backend": "BtrfsLoop", "mount_path": "/mnt/btrfs-workspace", "data_root": "/mnt/btrfs-workspace",
            "snapshots_root": "/mnt/btrfs-workspace/snapshots",
            "loop_img": {{"img_path": "/var/lib/ws-ckpt/btrfs-data.img", "img_size_bytes": 67108864, "last_loop_device": "/dev/loop1"}}}},
  "workspaces": {workspaces}
}}
"#
    )
}

const ONE_WORKSPACE: &str = r#"[{"ws_id": "ws-4612d8", "workspace_path": "/home/alice/project",
   "registered_at": "2026-11-24T15:07:42Z", "origin_backend": "BtrfsLoop"}]"#;

/// The full-uninstall scripts to exercise: (name, script file, args).
fn uninstall_scripts(dir: &Path) -> Vec<(String, PathBuf, Vec<&'static str>)> {
    let mut scripts = Vec::new();
    if let Some(deb) = deb_package("uninstall scriptlets (deb part)") {
        let ctrl = dir.join("deb");
        if !ctrl.exists() {
            run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
        }
        scripts.push((
            "deb postrm purge".into(),
            ctrl.join("postrm"),
            vec!["purge"],
        ));
    }
    if let Some(rpm) = rpm_package("uninstall scriptlets (rpm part)") {
        for (tag, body) in rpm_scriptlets(rpm) {
            if tag == "POSTUN" {
                let p = dir.join("rpm-postun.sh");
                fs::write(&p, body).unwrap();
                scripts.push(("rpm %postun 0 (erase)".into(), p, vec!["0"]));
            }
        }
    }
    scripts
}

#[test]
fn uninstall_keeps_storage_while_a_workspace_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = uninstall_scripts(dir.path());
    for (name, script, args) in &scripts {
        // A recorded workspace: everything stays, and the script says what and why.
        let sb = Sandbox::new(Some(&state_with_workspaces(ONE_WORKSPACE)));
        let before = fs::read(sb.state()).unwrap();
        let err = sb.run(script, args);
        assert!(sb.image().exists(), "{name} deleted the image:\n{err}");
        assert_eq!(
            fs::read(sb.state()).unwrap(),
            before,
            "{name} touched state.json"
        );
        assert!(sb
            .root()
            .join("var/lib/ws-ckpt/indexes/ws-4612d8/index.json")
            .exists());
        assert!(
            err.contains("kept") && err.contains("/home/alice/project"),
            "{name} must say what it kept and why:\n{err}"
        );

        // A state file that cannot be read: keep (cannot prove it is empty).
        let sb = Sandbox::new(Some("{\"version\": 1, \"workspaces\": [ {\"ws_id\": tor"));
        let err = sb.run(script, args);
        assert!(sb.image().exists() && sb.state().exists(), "{name}: {err}");

        // No state.json at all but an image: keep.
        let sb = Sandbox::new(None);
        let err = sb.run(script, args);
        assert!(
            sb.image().exists(),
            "{name} deleted an image nobody vouches for:\n{err}"
        );
        assert!(err.contains("kept"), "{name}: {err}");

        // A state file set aside as corrupt may record workspaces: keep.
        let sb = Sandbox::new(Some(&state_with_workspaces("[]")));
        fs::write(
            sb.root()
                .join("var/lib/ws-ckpt/state.json.corrupt-20261124T150742Z"),
            "garbage",
        )
        .unwrap();
        let err = sb.run(script, args);
        assert!(sb.image().exists() && sb.state().exists(), "{name}: {err}");

        // Every workspace released: the storage goes.
        let sb = Sandbox::new(Some(&state_with_workspaces("[ ]")));
        fs::remove_dir_all(sb.root().join("var/lib/ws-ckpt/indexes/ws-4612d8")).unwrap();
        let err = sb.run(script, args);
        assert!(
            !sb.image().exists(),
            "{name} kept an image with no workspace:\n{err}"
        );
        assert!(!sb.state().exists(), "{name}: {err}");
        assert!(err.contains("removed"), "{name}: {err}");
        // Nothing outside the sandbox was aimed at: the default paths are untouched names.
        assert!(!sb.root().join("var/lib/ws-ckpt").exists(), "{name}: {err}");
    }
    if scripts.is_empty() {
        skip(
            "dpkg-deb and rpmbuild",
            "uninstall_keeps_storage_while_a_workspace_is_recorded",
        );
    }
}

#[test]
fn upgrade_and_remove_without_purge_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(deb) = deb_package("upgrade_and_remove_without_purge_keep_everything (deb)") {
        let ctrl = dir.path().join("deb");
        run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
        let sb = Sandbox::new(Some(&state_with_workspaces("[]")));
        sb.run(&ctrl.join("prerm"), &["remove"]);
        sb.run(&ctrl.join("postrm"), &["remove"]);
        sb.run(&ctrl.join("postrm"), &["upgrade", "0.4.0-1"]);
        assert!(sb.image().exists() && sb.state().exists());
        // postinst creates the directories.
        let fresh = tempfile::tempdir().unwrap();
        run(Command::new("sh")
            .arg(ctrl.join("postinst"))
            .arg("configure")
            .env("WS_CKPT_ROOT", fresh.path()));
        assert!(fresh.path().join("var/lib/ws-ckpt").is_dir());
        assert!(fresh.path().join("etc/ws-ckpt/config.d").is_dir());
    }
    if let Some(rpm) = rpm_package("upgrade_and_remove_without_purge_keep_everything (rpm)") {
        let scriptlets = rpm_scriptlets(rpm);
        let file_of = |tag: &str| {
            let body = &scriptlets
                .iter()
                .find(|(t, _)| *t == tag)
                .unwrap_or_else(|| panic!("no {tag} scriptlet"))
                .1;
            let p = dir.path().join(format!("rpm-{tag}.sh"));
            fs::write(&p, body).unwrap();
            p
        };
        let sb = Sandbox::new(Some(&state_with_workspaces("[]")));
        // Upgrade: $1 = 1 in %preun and %postun.
        sb.run(&file_of("PREUN"), &["1"]);
        sb.run(&file_of("POSTUN"), &["1"]);
        assert!(sb.image().exists() && sb.state().exists());
        let fresh = tempfile::tempdir().unwrap();
        run(Command::new("sh")
            .arg(file_of("POSTIN"))
            .arg("1")
            .env("WS_CKPT_ROOT", fresh.path()));
        assert!(fresh.path().join("var/lib/ws-ckpt").is_dir());
        assert!(fresh.path().join("etc/ws-ckpt/config.d").is_dir());
    }
}

#[test]
fn default_config_is_valid_with_every_setting_uncommented() {
    let config = repo().join("packaging/deb/config.toml");
    let text = fs::read_to_string(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let as_is = dir.path().join("as-is.toml");
    fs::write(&as_is, &text).unwrap();
    let validate = |path: &Path| {
        stdout_of(
            Command::new(bin_path())
                .arg("--config")
                .arg(path)
                .args(["--format", "json", "config", "validate"])
                .env_remove("WS_CKPT_CONFIG"),
        )
    };
    let v: serde_json::Value = serde_json::from_str(&validate(&as_is)).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["workspaces"], 0,
        "the packaged config must declare no workspace"
    );
    // Settings are commented as `#key = value` (prose as `# text`): uncommenting every one of
    // them must give a valid config, so the documented keys and defaults are real.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("\nstate_dir = \"/var/lib/ws-ckpt\""));
    let all = dir.path().join("all.toml");
    fs::write(&all, uncommented).unwrap();
    let v: serde_json::Value = serde_json::from_str(&validate(&all)).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["workspaces"], 1);
}

/// The Python interpreter that can import ansible, when ansible-playbook/ansible is installed.
fn ansible_python() -> Option<(PathBuf, String)> {
    let ansible = tool("ansible")?;
    for py in ["python3", "python"] {
        let Ok(out) = Command::new(py)
            .args(["-c", "import sys, ansible; print(sys.executable)"])
            .output()
        else {
            continue;
        };
        if out.status.success() {
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            return Some((ansible, exe));
        }
    }
    None
}

/// Result of one `ansible localhost -m ws_ckpt` run: the parsed JSON and the full output.
struct AnsibleRun {
    result: serde_json::Value,
    output: String,
}

fn ansible_module(
    env: &TestEnv,
    ansible: &(PathBuf, String),
    args: serde_json::Value,
    flags: &[&str],
) -> AnsibleRun {
    let mut cmd = Command::new(&ansible.0);
    cmd.args(["localhost", "-c", "local", "-i", "localhost,", "-M"])
        .arg(repo().join("packaging/ansible/library"))
        .args(["-m", "ws_ckpt", "-a"])
        .arg(args.to_string())
        .args(flags)
        .env("ANSIBLE_PYTHON_INTERPRETER", &ansible.1)
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", env.root.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", env.root.join("ansible-tmp"))
        .env("HOME", &env.root)
        .env_remove("WS_CKPT_CONFIG");
    let run = env.run_command(cmd, Duration::from_secs(300));
    let output = format!("{}\n{}", run.stdout, run.stderr);
    // The minimal callback prints `localhost | CHANGED => {json}` (diffs come before it).
    let start = run
        .stdout
        .find("localhost | ")
        .unwrap_or_else(|| panic!("no result line\n{}", run.describe()));
    let json_start = run.stdout[start..]
        .find('{')
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("no JSON\n{}", run.describe()));
    let result: serde_json::Value = serde_json::from_str(&run.stdout[json_start..])
        .unwrap_or_else(|e| panic!("result is not JSON ({e})\n{}", run.describe()));
    if run.status != Some(0) {
        panic!("ansible failed\n{}", run.describe());
    }
    AnsibleRun { result, output }
}

fn action_names(r: &AnsibleRun) -> Vec<String> {
    r.result["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["action"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ansible_module_check_apply_idempotent_diff() {
    let test = "ansible_module_check_apply_idempotent_diff";
    let Some(ansible) = ansible_python() else {
        skip("ansible (ansible-core)", test);
        return;
    };
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let project = env.home.join("project");
    TestEnv::make_sample_tree(&project);
    let digest = TestEnv::tree_digest(&project);
    let bin = bin_path();
    let args = |state: &str| {
        serde_json::json!({
            "path": project, "state": state, "config": env.config,
            "binary": bin, "keep": "7", "auto_cleanup": true,
        })
    };

    // Check mode: the planned actions, changed=true, nothing touched.
    let r = ansible_module(&env, &ansible, args("present"), &["--check", "--diff"]);
    assert_eq!(r.result["changed"], true, "{}", r.output);
    let names = action_names(&r);
    assert!(
        names.contains(&"init-workspace".to_string()),
        "{names:?}\n{}",
        r.output
    );
    assert!(
        r.output.contains("+ init-workspace"),
        "diff shows the actions:\n{}",
        r.output
    );
    assert!(
        r.output.contains("keep = 7"),
        "diff shows the declaration:\n{}",
        r.output
    );
    assert!(!project.is_symlink(), "check mode changed the directory");
    assert!(!env.image.exists(), "check mode created the image");
    assert_eq!(
        fs::read_dir(&env.dropin_dir).unwrap().count(),
        0,
        "check mode wrote a drop-in"
    );

    // For real: the directory becomes a workspace, with the retention settings declared.
    let r = ansible_module(&env, &ansible, args("present"), &[]);
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(
        project.is_symlink(),
        "not a workspace after the run:\n{}",
        r.output
    );
    assert_eq!(TestEnv::tree_digest(&project), digest, "data changed");
    let declared = r.result["declared_in"].as_str().unwrap().to_string();
    let text = fs::read_to_string(&declared).unwrap();
    assert!(
        text.contains("keep = 7") && text.contains("auto_cleanup = true"),
        "{text}"
    );
    let status = env.run(&["--format", "json", "status"]);
    let status = status.json();
    assert_eq!(status["workspaces"][0]["condition"], "ready", "{status}");

    // Again: nothing to do.
    let r = ansible_module(&env, &ansible, args("present"), &[]);
    assert_eq!(r.result["changed"], false, "{}", r.output);
    let r = ansible_module(&env, &ansible, args("present"), &["--check"]);
    assert_eq!(r.result["changed"], false, "{}", r.output);

    // Release with --diff: the config edit and the release action are shown.
    let r = ansible_module(&env, &ansible, args("absent"), &["--diff"]);
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(r.output.contains("+state = \"absent\""), "{}", r.output);
    assert!(r.output.contains("release-workspace"), "{}", r.output);
    assert!(
        project.is_dir() && !project.is_symlink(),
        "not a plain directory again"
    );
    assert_eq!(
        TestEnv::tree_digest(&project),
        digest,
        "data changed by release"
    );
    let r = ansible_module(&env, &ansible, args("absent"), &[]);
    assert_eq!(r.result["changed"], false, "{}", r.output);
}
