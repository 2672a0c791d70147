//! Packaging checks: the systemd unit passes `systemd-analyze verify`; the CLI generates
//! completions and man pages from its clap definitions, and the bash completion really
//! completes (the script is sourced in bash and its function called as bash would).

use std::process::Command;
use ws_ckpt_integration_tests::bin_path;

#[test]
fn systemd_unit_verifies() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd/ws-ckpt.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "StateDirectory=ws-ckpt",
        "RuntimeDirectory=ws-ckpt",
        "ExecReload=",
        "Restart=on-failure",
        "Documentation=man:ws-ckpt(1)",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from {}",
            unit.display()
        );
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED (systemd-analyze not installed): systemd_unit_verifies only checked the unit's keys");
        return;
    };
    // verify checks that ExecStart exists: point it at the binary we just built.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("ws-ckpt.service");
    std::fs::write(
        &local,
        text.replace("/usr/bin/ws-ckpt", bin_path().to_str().unwrap()),
    )
    .unwrap();
    // verify also runs man(1) on every Documentation= page: give it the generated ones.
    let gen = dir.path().join("generated");
    let out = Command::new(bin_path())
        .args(["man", "--out-dir"])
        .arg(&gen)
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in std::fs::read_dir(&gen).unwrap() {
        let page = page.unwrap().path();
        let section = page.extension().unwrap().to_string_lossy().into_owned();
        let to = dir.path().join(format!("man/man{section}"));
        std::fs::create_dir_all(&to).unwrap();
        std::fs::rename(&page, to.join(page.file_name().unwrap())).unwrap();
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&local)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin_path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("checkpoint") && text.contains("rollback"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(bin_path()).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH") && man.contains("checkpoint"), "{man}");
    for page in ["checkpoint", "config-show", "ws-ckpt.toml"] {
        let out = Command::new(bin_path())
            .args(["man", page])
            .output()
            .unwrap();
        assert!(out.status.success(), "man {page}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(".TH"),
            "man {page}"
        );
    }
    let out = Command::new(bin_path())
        .args(["man", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nonsense") && err.contains("checkpoint"),
        "{err}"
    );

    // --out-dir writes every page; man(1) renders each without a warning.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path())
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(listed.len() > 15, "{listed:?}");
    assert!(listed.iter().any(|p| p.ends_with("/ws-ckpt.toml.5")));
    assert!(listed.iter().any(|p| p.ends_with("/ws-ckpt-checkpoint.1")));
    let Ok(man) = which("man") else {
        eprintln!("SKIPPED (man not installed): the generated pages were not rendered");
        return;
    };
    for page in &listed {
        let out = Command::new(&man)
            .args(["--warnings", "-l", "-Tutf8"])
            .arg(page)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success(), "man -l {page} failed");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{page}: {warnings}");
    }
}

/// What bash offers for the words typed so far (the last one is being completed), from the
/// generated script, calling its completion function the way bash's `complete -F` does.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    let driver = format!(
        r#"source '{script}'
spec=$(complete -p ws-ckpt) || {{ echo "no completion registered for ws-ckpt" >&2; exit 3; }}
fn=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$fn" ws-ckpt "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display(),
        words = quoted.join(" ")
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &driver])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash completion driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_flags_and_values_after_a_subcommand() {
    let out = Command::new(bin_path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ws-ckpt.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    let offered = bash_complete(&script, &["ws-ckpt", "checkpoint", "--"]);
    for flag in [
        "--workspace",
        "--snapshot",
        "--message",
        "--metadata",
        "--pin",
    ] {
        assert!(
            offered.iter().any(|o| o == flag),
            "`ws-ckpt checkpoint --<TAB>` does not offer {flag}: {offered:?}"
        );
    }
    assert!(!offered.iter().any(|o| o == "--force"), "{offered:?}");
    let offered = bash_complete(&script, &["ws-ckpt", "roll"]);
    assert_eq!(offered, ["rollback"]);
    let offered = bash_complete(&script, &["ws-ckpt", "config", ""]);
    assert!(
        offered.iter().any(|o| o == "show") && offered.iter().any(|o| o == "validate"),
        "{offered:?}"
    );
    let offered = bash_complete(&script, &["ws-ckpt", "config", "validate", "--"]);
    assert!(offered.iter().any(|o| o == "--config"), "{offered:?}");
    let offered = bash_complete(&script, &["ws-ckpt", "list", "--format", ""]);
    assert_eq!(offered, ["table", "json"]);
    let offered = bash_complete(&script, &["ws-ckpt", "rollback", "-w", "/tmp", "--f"]);
    assert!(offered.iter().any(|o| o == "--force"), "{offered:?}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
