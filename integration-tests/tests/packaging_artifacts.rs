//! Packaging artifacts (SPEC §9, issue 12): the .rpm (built by rpmbuild from the source
//! tarball and the vendored crates) and the .deb from `scripts/package`. Their file lists,
//! config files, ghosts and control data are checked; lintian reports no error and rpmlint
//! parses the spec; every maintainer script passes `sh -n`; the uninstall scriptlets keep the
//! snapshot storage while a workspace is recorded (run in a sandbox); and the .deb is
//! installed into a throw-away root with `dpkg --root` and purged there with storage paths
//! set in both the main config file and a drop-in.
//!
//! Packages: `$WS_CKPT_PACKAGES_DIR` when set (scripts/test builds them once, with the RPM's
//! unit tests in check), else `scripts/package --without-check` into the target directory
//! (a release build from source: minutes).
//!
//! Nothing here installs a package on the host or touches /etc/ws-ckpt, /var/lib/ws-ckpt,
//! /run/ws-ckpt or /mnt/btrfs-workspace. A missing tool (rpmbuild, dpkg-deb, lintian, rpmlint)
//! is a loud `SKIPPED (tool X not installed)` locally and a failure in CI (`CI` set):
//! scripts/install-deps --test installs them all.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ws_ckpt_integration_tests::{bin_path, full_bin_path};

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
        panic!(
            "{tool} is not installed but CI is set: run scripts/install-deps --test (test {test})"
        );
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

/// The packages (once per test run).
struct Packages {
    rpm: Option<PathBuf>,
    srpm: Option<PathBuf>,
    deb: Option<PathBuf>,
}

fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        let has_rpm = tool("rpmbuild").is_some() && tool("rpm2cpio").is_some();
        let has_deb = tool("dpkg-deb").is_some() && tool("dpkg-shlibdeps").is_some();
        let dir = match std::env::var_os("WS_CKPT_PACKAGES_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-artifacts");
                if has_rpm || has_deb {
                    let _ = fs::remove_dir_all(&out);
                    eprintln!("building the packages from source (scripts/package --without-check); set WS_CKPT_PACKAGES_DIR to reuse built ones");
                    let mut cmd = Command::new(repo().join("scripts/package"));
                    cmd.arg("--out").arg(&out).arg("--without-check");
                    if !has_rpm {
                        cmd.arg("--no-rpm").arg("--bin").arg(bin_path());
                    }
                    if !has_deb {
                        cmd.arg("--no-deb");
                    }
                    let listed = stdout_of(&mut cmd);
                    for p in listed.lines() {
                        assert!(Path::new(p).is_file(), "{p} was not written");
                    }
                }
                out
            }
        };
        let names: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        let find = |wanted: &dyn Fn(&str) -> bool| {
            names
                .iter()
                .find(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.starts_with("ws-ckpt") && wanted(&name)
                })
                .cloned()
        };
        Packages {
            rpm: find(&|n| n.ends_with(".rpm") && !n.ends_with(".src.rpm")),
            srpm: find(&|n| n.ends_with(".src.rpm")),
            deb: find(&|n| n.ends_with(".deb")),
        }
    })
}

fn rpm_package(test: &str) -> Option<&'static Path> {
    if tool("rpm").is_none() || tool("rpmbuild").is_none() {
        skip("rpmbuild", test);
        return None;
    }
    let p = packages().rpm.as_deref();
    assert!(p.is_some(), "{test}: no .rpm was built");
    p
}

fn deb_package(test: &str) -> Option<&'static Path> {
    if tool("dpkg-deb").is_none() {
        skip("dpkg-deb", test);
        return None;
    }
    let p = packages().deb.as_deref();
    assert!(p.is_some(), "{test}: no .deb was built");
    p
}

/// Files every package must ship (paths differing by format are checked separately).
const COMMON_FILES: &[&str] = &[
    "/usr/bin/ws-ckpt",
    "/usr/bin/ws-ckpt-full",
    "/usr/share/bash-completion/completions/ws-ckpt",
    "/usr/share/fish/vendor_completions.d/ws-ckpt.fish",
    "/etc/ws-ckpt/config.toml",
    "/etc/ws-ckpt/config.d",
    "/usr/share/doc/ws-ckpt/README.md",
    "/usr/share/doc/ws-ckpt/json.md",
    "/usr/share/doc/ws-ckpt/config.toml.sample",
    "/usr/share/doc/ws-ckpt/schema/defs.schema.json",
    "/usr/share/doc/ws-ckpt/schema/status.schema.json",
    "/usr/share/doc/ws-ckpt/schema/list.schema.json",
    "/usr/share/doc/ws-ckpt/examples/minimal.toml",
    "/usr/share/doc/ws-ckpt/examples/loop-backend.toml",
    "/usr/share/doc/ws-ckpt/examples/base-backend.toml",
    "/usr/share/doc/ws-ckpt/examples/many-workspaces.toml",
    "/usr/share/doc/ws-ckpt/examples/legacy-0.3.toml",
];

/// Man pages every package must ship (without the compression suffix).
const MAN_PAGES: &[&str] = &[
    "/usr/share/man/man1/ws-ckpt.1",
    "/usr/share/man/man1/ws-ckpt-checkpoint.1",
    "/usr/share/man/man1/ws-ckpt-rollback.1",
    "/usr/share/man/man1/ws-ckpt-config-validate.1",
    "/usr/share/man/man5/ws-ckpt.toml.5",
];

fn has_man_pages(files: &[String], listing: &str) {
    for page in MAN_PAGES {
        assert!(
            files
                .iter()
                .any(|f| f == page || *f == format!("{page}.gz")),
            "{page} missing from:\n{listing}"
        );
    }
    let schemas = fs::read_dir(repo().join("docs/schema")).unwrap().count();
    let shipped = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/doc/ws-ckpt/schema/") && f.ends_with(".json"))
        .count();
    assert_eq!(
        shipped, schemas,
        "every docs/schema file is shipped:\n{listing}"
    );
}

#[test]
fn rpm_ships_files_config_and_ghosts() {
    let Some(rpm) = rpm_package("rpm_ships_files_config_and_ghosts") else {
        return;
    };
    let list = stdout_of(Command::new("rpm").arg("-qlp").arg(rpm));
    let files: Vec<String> = list.lines().map(String::from).collect();
    for f in COMMON_FILES.iter().chain(&[
        "/usr/lib/systemd/system/ws-ckpt.service",
        "/usr/share/zsh/site-functions/_ws-ckpt",
        "/usr/share/licenses/ws-ckpt/LICENSE-MIT",
        "/usr/share/licenses/ws-ckpt/LICENSE-APACHE",
        "/var/lib/ws-ckpt/state.json",
        "/var/lib/ws-ckpt/daemon.lock",
        "/run/ws-ckpt/ws-ckpt.sock",
    ]) {
        assert!(
            files.iter().any(|x| x == f),
            "{f} missing from rpm -qlp:\n{list}"
        );
    }
    has_man_pages(&files, &list);
    assert!(
        !files.iter().any(|f| f.ends_with("btrfs-data.img")),
        "the loop image must never be owned by the package:\n{list}"
    );

    let config = stdout_of(Command::new("rpm").arg("-qp").arg("--configfiles").arg(rpm));
    assert!(
        config.lines().any(|l| l == "/etc/ws-ckpt/config.toml"),
        "config.toml is not a config file:\n{config}"
    );

    // File flags: c = %config, n = noreplace, g = %ghost, d = %doc, l = %license.
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
    let fl = flag_of("/etc/ws-ckpt/config.toml");
    assert!(
        fl.contains('c') && fl.contains('n') && !fl.contains('g'),
        "config.toml: {fl}"
    );
    assert!(flag_of("/usr/share/doc/ws-ckpt/config.toml.sample").contains('d'));
    assert!(flag_of("/usr/share/licenses/ws-ckpt/LICENSE-MIT").contains('l'));
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
    assert!(
        qf("POSTIN").contains("preset"),
        "%systemd_post: {}",
        qf("POSTIN")
    );
    assert!(qf("PREUN").contains("ws_ckpt_remember_paths"));
    assert!(
        qf("PREUN").contains("disable"),
        "%systemd_preun: {}",
        qf("PREUN")
    );
    assert!(qf("POSTUN").contains("ws_ckpt_remove_storage"));
    assert!(
        qf("POSTUN").contains("try-restart"),
        "%systemd_postun_with_restart"
    );
    assert!(qf("LICENSE").contains("MIT OR Apache-2.0"));
    let requires = stdout_of(Command::new("rpm").arg("-qp").arg("--requires").arg(rpm));
    assert!(
        requires.lines().any(|l| l.trim() == "btrfs-progs"),
        "{requires}"
    );

    // The source package holds the source tarball, the vendored crates and the spec, and
    // builds with the systemd macros.
    let srpm = packages().srpm.as_deref().expect("a .src.rpm was built");
    let sources = stdout_of(Command::new("rpm").arg("-qlp").arg(srpm));
    for s in [
        "ws-ckpt-0.4.0.tar.gz",
        "ws-ckpt-0.4.0-vendor.tar.gz",
        "storage.sh",
        "ws-ckpt.spec",
    ] {
        assert!(
            sources.lines().any(|l| l.ends_with(s)),
            "{s} not in the .src.rpm:\n{sources}"
        );
    }
    let build_requires = stdout_of(Command::new("rpm").arg("-qp").arg("--requires").arg(srpm));
    for br in ["systemd-rpm-macros", "cargo", "rust"] {
        assert!(
            build_requires.lines().any(|l| l.starts_with(br)),
            "BuildRequires {br}:\n{build_requires}"
        );
    }
}

#[test]
fn spec_builds_from_source_and_rpmlint_parses_it() {
    let spec = repo().join("packaging/rpm/ws-ckpt.spec");
    let text = fs::read_to_string(&spec).unwrap();
    for needle in [
        "Source0:",
        "Source1:",
        "%autosetup",
        "cargo build --release --locked --offline",
        "%check",
        "cargo test",
        "%license LICENSE-MIT LICENSE-APACHE",
        "%systemd_post ws-ckpt.service",
        "%systemd_preun ws-ckpt.service",
        "%systemd_postun_with_restart ws-ckpt.service",
        "BuildRequires:  systemd-rpm-macros",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from {}",
            spec.display()
        );
    }
    let cargo_version = fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("Version:")
            && cargo_version.contains(&format!("version = \"{}\"", l["Version:".len()..].trim()))),
        "the spec's Version is the workspace version"
    );
    let Some(rpmlint) = tool("rpmlint") else {
        skip("rpmlint", "spec_builds_from_source_and_rpmlint_parses_it");
        return;
    };
    let mut targets = vec![spec.clone()];
    if let Some(rpm) = packages().rpm.clone() {
        targets.push(rpm);
    }
    let out = Command::new(rpmlint).args(&targets).output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rpmlint:\n{report}");
    assert!(
        !report.contains("specfile-error")
            && !report.contains("error: ")
            && !report.contains("Traceback"),
        "rpmlint could not parse the spec:\n{report}"
    );
    assert!(
        report.contains("packages and"),
        "rpmlint printed no summary:\n{report}"
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
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_string())
        .collect();
    for f in COMMON_FILES.iter().chain(&[
        "/lib/systemd/system/ws-ckpt.service",
        "/usr/share/zsh/vendor-completions/_ws-ckpt",
        "/usr/share/doc/ws-ckpt/copyright",
        "/usr/share/doc/ws-ckpt/changelog.Debian.gz",
        "/usr/share/doc/ws-ckpt/changelog.gz",
    ]) {
        assert!(
            files.iter().any(|p| p == f),
            "{f} missing from dpkg-deb -c:\n{list}"
        );
    }
    has_man_pages(&files, &list);
    for line in list.lines() {
        assert!(line.contains("root/root"), "not owned by root: {line}");
    }
    assert!(!files
        .iter()
        .any(|f| f.starts_with("/var/lib") || f.starts_with("/run")));

    let field = |name: &str| stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    let depends = field("Depends");
    assert!(depends.contains("btrfs-progs"), "Depends: {depends}");
    assert!(
        depends.contains("libc6 (>= "),
        "versioned shlibs dependency: {depends}"
    );
    let maintainer = field("Maintainer");
    assert_eq!(maintainer.trim(), maintainer_identity(), "Maintainer");
    assert!(!maintainer.contains("localhost"));

    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(ctrl.path()));
    let conffiles = fs::read_to_string(ctrl.path().join("conffiles")).unwrap();
    assert_eq!(conffiles, "/etc/ws-ckpt/config.toml\n", "conffiles");
    assert!(
        !ctrl.path().join("preinst").exists(),
        "no preinst: nothing may block an install"
    );
    let md5sums = fs::read_to_string(ctrl.path().join("md5sums")).unwrap();
    assert!(md5sums.contains("usr/bin/ws-ckpt\n"), "{md5sums}");
    assert!(md5sums.contains("usr/bin/ws-ckpt-full\n"), "{md5sums}");
    let postinst = fs::read_to_string(ctrl.path().join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper update-state 'ws-ckpt.service'"));
    assert!(postinst.contains("deb-systemd-invoke try-restart"));
    assert!(!postinst.contains("deb-systemd-helper enable 'ws-ckpt.service' >/dev/null || true\n    fi\n    deb-systemd-helper enable"));
    let prerm = fs::read_to_string(ctrl.path().join("prerm")).unwrap();
    assert!(prerm.contains("deb-systemd-invoke stop 'ws-ckpt.service'"));
    assert!(
        !prerm
            .lines()
            .any(|l| l.trim_start().starts_with("systemctl")),
        "prerm uses deb-systemd-invoke, not systemctl"
    );

    let x = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    let copyright = fs::read_to_string(x.path().join("usr/share/doc/ws-ckpt/copyright")).unwrap();
    assert!(copyright
        .starts_with("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"));
    assert!(copyright.contains("License: MIT or Apache-2.0"));
    assert!(
        copyright.contains("Permission is hereby granted"),
        "the MIT text is included"
    );
    let unit = fs::read_to_string(x.path().join("lib/systemd/system/ws-ckpt.service")).unwrap();
    assert!(unit.contains("Documentation=man:ws-ckpt(1)"), "{unit}");
}

#[test]
fn lintian_reports_no_errors() {
    let Some(deb) = deb_package("lintian_reports_no_errors") else {
        return;
    };
    let Some(lintian) = tool("lintian") else {
        skip("lintian", "lintian_reports_no_errors");
        return;
    };
    let out = Command::new(lintian)
        .args([
            "--fail-on",
            "error",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .arg(deb)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("lintian:\n{report}");
    assert!(out.status.success(), "lintian reports errors:\n{report}");
    assert!(!report.lines().any(|l| l.starts_with("E: ")), "{report}");
}

/// The maintainer identity of every packaging file (packaging/maintainer).
fn maintainer_identity() -> String {
    fs::read_to_string(repo().join("packaging/maintainer"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn every_packaging_file_names_the_same_maintainer() {
    let who = maintainer_identity();
    assert!(
        who.contains('<') && who.ends_with('>') && !who.contains("localhost"),
        "{who}"
    );
    for file in [
        "packaging/deb/changelog",
        "packaging/rpm/ws-ckpt.spec",
        "packaging/ansible/ansible_collections/ws_ckpt/ws_ckpt/galaxy.yml",
    ] {
        let text = fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            text.contains(&who),
            "{file} does not name the maintainer {who}"
        );
    }
    let changelog = fs::read_to_string(repo().join("packaging/deb/changelog")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        changelog.starts_with(&format!("ws-ckpt ({version}-1) ")),
        "packaging/deb/changelog has no entry for {version}-1"
    );
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
        (repo.join("scripts/test"), "bash"),
        (repo.join("scripts/quickstart"), "bash"),
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
    assert!(scripts.len() >= 9);
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

    /// Run `sh script args…` with WS_CKPT_ROOT (RPM) and DPKG_ROOT (Debian) set to the
    /// sandbox; returns stderr. The script must succeed.
    fn run(&self, script: &Path, args: &[&str]) -> String {
        let out = run(Command::new("sh")
            .arg(script)
            .args(args)
            .env("WS_CKPT_ROOT", self.root())
            .env("DPKG_ROOT", self.root()));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn state_with_workspaces(workspaces: &str, image: &str, mount: &str) -> String {
    format!(
        r#"{{
  "version": 1,
  "backend": {{"backend_type": "BtrfsLoop", "selection_method": "auto-detect", "selected_at": "2026-11-24T15:07:42Z"}},
  "paths": {{"backend": "BtrfsLoop", "mount_path": "{mount}", "data_root": "{mount}",
            "snapshots_root": "{mount}/snapshots",
            "loop_img": {{"img_path": "{image}", "img_size_bytes": 67108864, "last_loop_device": "/dev/loop1"}}}},
  "workspaces": {workspaces}
}}
"#
    )
}

fn default_state(workspaces: &str) -> String {
    state_with_workspaces(
        workspaces,
        "/var/lib/ws-ckpt/btrfs-data.img",
        "/mnt/btrfs-workspace",
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
        let sb = Sandbox::new(Some(&default_state(ONE_WORKSPACE)));
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
        assert!(err.contains("kept"), "{name}: {err}");

        // No state.json at all but an image: keep.
        let sb = Sandbox::new(None);
        let err = sb.run(script, args);
        assert!(
            sb.image().exists(),
            "{name} deleted an image nobody vouches for:\n{err}"
        );
        assert!(err.contains("kept"), "{name}: {err}");

        // A state file set aside as corrupt may record workspaces: keep.
        let sb = Sandbox::new(Some(&default_state("[]")));
        fs::write(
            sb.root()
                .join("var/lib/ws-ckpt/state.json.corrupt-20261124T150742Z"),
            "garbage",
        )
        .unwrap();
        let err = sb.run(script, args);
        assert!(sb.image().exists() && sb.state().exists(), "{name}: {err}");
        assert!(err.contains("kept"), "{name}: {err}");

        // Every workspace released: the storage goes; the drop-ins stay, and are reported.
        let sb = Sandbox::new(Some(&default_state("[ ]")));
        fs::remove_dir_all(sb.root().join("var/lib/ws-ckpt/indexes/ws-4612d8")).unwrap();
        let dropin = sb.root().join("etc/ws-ckpt/config.d/50-ws-4612d8.toml");
        fs::write(
            &dropin,
            "[[workspace]]\npath = \"/home/alice/project\"\nstate = \"absent\"\n",
        )
        .unwrap();
        let err = sb.run(script, args);
        assert!(
            !sb.image().exists(),
            "{name} kept an image with no workspace:\n{err}"
        );
        assert!(!sb.state().exists(), "{name}: {err}");
        assert!(err.contains("removed"), "{name}: {err}");
        assert!(
            dropin.exists() && err.contains("kept") && err.contains("50-ws-4612d8.toml"),
            "{name}: {err}"
        );
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
fn rpm_erase_honours_paths_remembered_before_the_config_is_removed() {
    let Some(rpm) = rpm_package("rpm_erase_honours_paths_remembered_before_the_config_is_removed")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
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
    // The package's binary, config with a custom state_dir, a drop-in with the image.
    let sb = Sandbox::new(None);
    let root = sb.root();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::copy(bin_path(), root.join("usr/bin/ws-ckpt")).unwrap();
    fs::copy(full_bin_path(), root.join("usr/bin/ws-ckpt-full")).unwrap();
    fs::write(
        root.join("etc/ws-ckpt/config.toml"),
        "[daemon]\nstate_dir = \"/srv/ws/state\"\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ws-ckpt/config.d/10-storage.toml"),
        "[backend.btrfs-loop]\nimage = \"/srv/ws/img/data.img\"\nmount = \"/srv/ws/mnt\"\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("srv/ws/state")).unwrap();
    fs::create_dir_all(root.join("srv/ws/img")).unwrap();
    fs::File::create(root.join("srv/ws/img/data.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fs::write(
        root.join("srv/ws/state/state.json"),
        state_with_workspaces("[]", "/srv/ws/img/data.img", "/srv/ws/mnt"),
    )
    .unwrap();
    sb.run(&file_of("PREUN"), &["0"]);
    // rpm now deletes the unmodified config file; the drop-in is not the package's.
    fs::remove_file(root.join("etc/ws-ckpt/config.toml")).unwrap();
    let err = sb.run(&file_of("POSTUN"), &["0"]);
    assert!(!root.join("srv/ws/img/data.img").exists(), "{err}");
    assert!(!root.join("srv/ws/state/state.json").exists(), "{err}");
    assert!(
        err.contains("removed") && err.contains("/srv/ws/img/data.img"),
        "{err}"
    );
    assert!(
        !root.join("var/lib/ws-ckpt/paths-at-removal").exists(),
        "{err}"
    );
    // An image at the default path that no state file vouches for is not touched.
    assert!(sb.image().exists(), "{err}");
}

/// `dpkg --root DIR` (maintainer scripts chrootless, DPKG_ROOT=DIR): an empty dpkg database.
struct DpkgRoot {
    dir: tempfile::TempDir,
}

impl DpkgRoot {
    fn new() -> DpkgRoot {
        let dir = tempfile::Builder::new()
            .prefix("ws-ckpt-dpkg-root-")
            .tempdir_in("/var/tmp")
            .unwrap();
        for d in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("var/lib/dpkg/status"), "").unwrap();
        fs::write(dir.path().join("var/lib/dpkg/available"), "").unwrap();
        DpkgRoot { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// dpkg with the given action; returns its stderr (the maintainer scripts' messages).
    fn dpkg(&self, args: &[&str]) -> String {
        let out = Command::new("dpkg")
            .arg(format!("--root={}", self.dir.path().display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "dpkg {args:?} failed:\n{text}");
        text
    }

    fn status(&self) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Status}", "ws-ckpt"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn deb_installs_into_a_throwaway_root_and_purge_honours_config_and_dropin_paths() {
    let test = "deb_installs_into_a_throwaway_root_and_purge_honours_config_and_dropin_paths";
    let Some(deb) = deb_package(test) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs root in CI");
        }
        eprintln!("SKIPPED (needs root): {test}");
        return;
    }
    let deb = deb.to_str().unwrap();
    let storage_config = |r: &DpkgRoot| {
        // The state directory in the main file, the image and mount in a drop-in.
        fs::write(
            r.path("/etc/ws-ckpt/config.toml"),
            "[daemon]\nstate_dir = \"/srv/wsdata/state\"\n",
        )
        .unwrap();
        fs::write(
            r.path("/etc/ws-ckpt/config.d/10-storage.toml"),
            "# storage on /srv\n[backend.btrfs-loop]\nimage = \"/srv/wsdata/img/btrfs-data.img\"\nmount = \"/srv/wsdata/mnt\"\n",
        )
        .unwrap();
        fs::create_dir_all(r.path("/srv/wsdata/state/indexes")).unwrap();
        fs::create_dir_all(r.path("/srv/wsdata/img")).unwrap();
        fs::File::create(r.path("/srv/wsdata/img/btrfs-data.img"))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
    };
    let state = |workspaces: &str| {
        state_with_workspaces(
            workspaces,
            "/srv/wsdata/img/btrfs-data.img",
            "/srv/wsdata/mnt",
        )
    };

    // Install: files in place, directories made by postinst, the unit known to
    // deb-systemd-helper but not enabled.
    let r = DpkgRoot::new();
    r.dpkg(&["-i", deb]);
    assert!(
        r.status().contains("install ok installed"),
        "{}",
        r.status()
    );
    for f in [
        "/usr/bin/ws-ckpt",
        "/usr/bin/ws-ckpt-full",
        "/etc/ws-ckpt/config.toml",
        "/usr/share/man/man5/ws-ckpt.toml.5.gz",
        "/lib/systemd/system/ws-ckpt.service",
    ] {
        assert!(r.path(f).exists(), "{f} not installed");
    }
    assert!(r.path("/var/lib/ws-ckpt").is_dir() && r.path("/etc/ws-ckpt/config.d").is_dir());
    assert!(
        !r.path("/etc/systemd/system/multi-user.target.wants/ws-ckpt.service")
            .exists(),
        "the unit must not be enabled"
    );
    let out = Command::new(r.path("/usr/bin/ws-ckpt"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    // A recorded workspace: purge keeps the state and the image at the configured paths and
    // says so, although dpkg deleted config.toml before postrm ran.
    storage_config(&r);
    fs::write(r.path("/srv/wsdata/state/state.json"), state(ONE_WORKSPACE)).unwrap();
    let err = r.dpkg(&["--purge", "ws-ckpt"]);
    assert!(
        !r.path("/etc/ws-ckpt/config.toml").exists(),
        "purge removes the conffile"
    );
    assert!(
        r.path("/srv/wsdata/img/btrfs-data.img").exists(),
        "purge deleted the image of a recorded workspace:\n{err}"
    );
    assert!(r.path("/srv/wsdata/state/state.json").exists(), "{err}");
    for needle in [
        "kept",
        "/home/alice/project",
        "/srv/wsdata/state",
        "10-storage.toml",
    ] {
        assert!(
            err.contains(needle),
            "purge must say what it kept and why ({needle}):\n{err}"
        );
    }
    assert!(
        r.path("/etc/ws-ckpt/config.d/10-storage.toml").exists(),
        "drop-ins are the admin's"
    );
    assert!(
        !r.path("/var/lib/ws-ckpt/paths-at-removal").exists(),
        "{err}"
    );
    assert!(
        r.status().is_empty() || r.status().contains("not-installed"),
        "{}",
        r.status()
    );

    // Every workspace released; remove, then purge later: the storage at the configured
    // paths goes.
    let r = DpkgRoot::new();
    r.dpkg(&["-i", deb]);
    storage_config(&r);
    fs::write(r.path("/srv/wsdata/state/state.json"), state("[]")).unwrap();
    r.dpkg(&["--remove", "ws-ckpt"]);
    assert!(
        r.path("/etc/ws-ckpt/config.toml").exists(),
        "remove keeps the conffile"
    );
    assert!(
        r.path("/var/lib/ws-ckpt/paths-at-removal").exists(),
        "prerm remembers the paths"
    );
    assert!(
        r.path("/srv/wsdata/img/btrfs-data.img").exists(),
        "remove keeps everything"
    );
    let err = r.dpkg(&["--purge", "ws-ckpt"]);
    assert!(
        !r.path("/srv/wsdata/img/btrfs-data.img").exists(),
        "purge kept an image with no workspace:\n{err}"
    );
    assert!(!r.path("/srv/wsdata/state/state.json").exists(), "{err}");
    assert!(
        err.contains("removed /") && err.contains("/srv/wsdata/img/btrfs-data.img"),
        "{err}"
    );
    assert!(!r.path("/var/lib/ws-ckpt").exists(), "{err}");

    // No state at all, the image only named in the drop-in: kept, and said where it came from.
    let r = DpkgRoot::new();
    r.dpkg(&["-i", deb]);
    storage_config(&r);
    let err = r.dpkg(&["--purge", "ws-ckpt"]);
    assert!(r.path("/srv/wsdata/img/btrfs-data.img").exists(), "{err}");
    assert!(
        err.contains("kept") && err.contains("/srv/wsdata/img/btrfs-data.img"),
        "{err}"
    );
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
