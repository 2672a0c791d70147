//! The Ansible collection `ws_ckpt.ws_ckpt` (packaging/ansible): `ansible-test sanity`
//! passes, and ansible-core (from PyPI) drives the `workspace` and `workspace_info` modules
//! and the `ws_ckpt` role against a real loop btrfs: check mode changes nothing (and refuses
//! to plan without the config file), a real run declares every key in one step and returns
//! ws_id, reruns report changed=false, a value ws-ckpt rejects leaves the config untouched,
//! a change ws-ckpt cannot apply is undone, a running daemon is reloaded, and release gives
//! the data back.
//!
//! Nothing outside each test's temporary root is touched (HOME, Ansible's temp dirs and
//! ansible-test's virtual environments included). A missing ansible is a loud SKIPPED locally
//! and a failure in CI (scripts/install-deps --test installs ansible-core with pip).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use ws_ckpt_integration_tests::{bin_path, wait_until, Run, TestEnv};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

fn collections_path() -> PathBuf {
    repo().join("packaging/ansible")
}

fn collection_dir() -> PathBuf {
    collections_path().join("ansible_collections/ws_ckpt/ws_ckpt")
}

fn skip(tool: &str, test: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "{tool} is not installed but CI is set: run scripts/install-deps --test (test {test})"
        );
    }
    let banner = "=".repeat(65);
    let msg = format!("{banner}\nSKIPPED (tool {tool} not installed): {test}\n{banner}\n");
    let _ = std::io::stderr().lock().write_all(msg.as_bytes());
}

/// ansible-core: the `ansible` executable's directory and the Python that imports it.
struct Ansible {
    bin_dir: PathBuf,
    python: String,
}

fn ansible(test: &str) -> Option<Ansible> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/local/bin"), PathBuf::from("/usr/bin")])
        .find(|d| d.join("ansible").is_file() && d.join("ansible-playbook").is_file());
    let Some(bin_dir) = found else {
        skip("ansible (ansible-core)", test);
        return None;
    };
    for py in ["python3", "python"] {
        let Ok(out) = Command::new(py)
            .args(["-c", "import sys, ansible; print(sys.executable)"])
            .output()
        else {
            continue;
        };
        if out.status.success() {
            let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
            return Some(Ansible { bin_dir, python });
        }
    }
    skip("a python3 that imports ansible", test);
    None
}

impl Ansible {
    /// A command for an Ansible tool with HOME and every temp dir under `home`, the
    /// collection from this repository, and no colour.
    fn command(&self, tool: &str, home: &Path) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        cmd.env("HOME", home)
            .env("ANSIBLE_COLLECTIONS_PATH", collections_path())
            .env("ANSIBLE_PYTHON_INTERPRETER", &self.python)
            .env("ANSIBLE_LOCALHOST_WARNING", "false")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_LOCAL_TEMP", home.join(".ansible-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join(".ansible-tmp"))
            .env_remove("WS_CKPT_CONFIG");
        cmd
    }
}

/// One ad-hoc module run: `ansible localhost -m MODULE -a JSON`.
struct ModuleRun {
    ok: bool,
    result: Value,
    output: String,
}

fn module(env: &TestEnv, a: &Ansible, name: &str, args: Value, flags: &[&str]) -> ModuleRun {
    let mut cmd = a.command("ansible", &env.root);
    cmd.args(["localhost", "-c", "local", "-i", "localhost,", "-m"])
        .arg(format!("ws_ckpt.ws_ckpt.{name}"))
        .arg("-a")
        .arg(args.to_string())
        .args(flags);
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
    let result: Value = serde_json::from_str(&run.stdout[json_start..])
        .unwrap_or_else(|e| panic!("result is not JSON ({e})\n{}", run.describe()));
    ModuleRun {
        ok: run.status == Some(0),
        result,
        output,
    }
}

#[track_caller]
fn ok(r: ModuleRun) -> ModuleRun {
    assert!(r.ok, "the module failed:\n{}", r.output);
    r
}

#[track_caller]
fn failed(r: ModuleRun) -> ModuleRun {
    assert!(!r.ok, "the module should have failed:\n{}", r.output);
    r
}

fn action_names(r: &ModuleRun) -> Vec<String> {
    r.result["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["action"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn dropins(env: &TestEnv) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(&env.dropin_dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn status(env: &TestEnv) -> Value {
    let r: Run = env.run(&["--format", "json", "status"]);
    r.json()
}

/// What ansible-test runs get as get-pip.py: ansible-test downloads pip's bootstrap script
/// from a host CI cannot reach, then runs it in each new sanity virtual environment. This
/// stand-in installs pip with ensurepip and the requested packages from PyPI.
const GET_PIP_STAND_IN: &str = r#"import subprocess
import sys

packages = [a for a in sys.argv[1:] if not a.startswith("-")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + packages)
"#;

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "output" && from.ends_with("tests") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn ansible_test_sanity_passes() {
    let test = "ansible_test_sanity_passes";
    let Some(a) = ansible(test) else { return };
    if !a.bin_dir.join("ansible-test").is_file() {
        skip("ansible-test", test);
        return;
    }
    let home = tempfile::Builder::new()
        .prefix("ws-ckpt-ansible-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // The pip version ansible-test bootstraps into its virtual environments.
    let out = Command::new(&a.python)
        .args([
            "-c",
            "import ansible_test, os, re, sys; t = open(os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')).read(); print(re.search(r\"pip='([0-9.]+)'\", t).group(1)); print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot read ansible-test's pip version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let (pip, python_version) = (lines.next().unwrap(), lines.next().unwrap());
    let cache = home.path().join(".ansible/test/cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(
        cache.join(format!("get_pip_{}.py", pip.replace('.', "_"))),
        GET_PIP_STAND_IN,
    )
    .unwrap();
    // A copy outside git: ansible-test then checks every file of the collection.
    let copy = home.path().join("src/ansible_collections/ws_ckpt/ws_ckpt");
    copy_tree(&collection_dir(), &copy);
    let out = Command::new(a.bin_dir.join("ansible-test"))
        .args([
            "sanity",
            "--local",
            "--python",
            python_version,
            "--color",
            "no",
        ])
        .current_dir(&copy)
        .env("HOME", home.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                a.bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ansible-test sanity failed:\n{report}"
    );
    for t in [
        "validate-modules",
        "pylint",
        "pep8",
        "yamllint",
        "ansible-doc",
        "import",
        "compile",
    ] {
        assert!(
            report.contains(&format!("Running sanity test \"{t}\"")),
            "sanity test {t} did not run:\n{report}"
        );
    }
}

#[test]
fn ansible_workspace_module_end_to_end() {
    let test = "ansible_workspace_module_end_to_end";
    let Some(a) = ansible(test) else { return };
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let project = env.home.join("project");
    TestEnv::make_sample_tree(&project);
    let digest = TestEnv::tree_digest(&project);
    let bin = bin_path();
    let args = |extra: Value| {
        let mut base = json!({"path": project, "config": env.config, "executable": bin});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let full = json!({"keep": 7, "auto_cleanup": true, "allow_users": ["root"],
                      "allow_groups": ["root"], "id": "agent-proj"});

    // Check mode without the config file: a clear failure, not a plan against the defaults.
    let missing = env.root.join("etc/no-such-config.toml");
    let r = failed(module(
        &env,
        &a,
        "workspace",
        json!({"path": project, "config": missing, "executable": bin}),
        &["--check"],
    ));
    let msg = r.result["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("does not exist") && msg.contains("check mode"),
        "{msg}"
    );

    // Check mode with diff: the declaration and the planned init, nothing written.
    let r = ok(module(
        &env,
        &a,
        "workspace",
        args(full.clone()),
        &["--check", "--diff"],
    ));
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(
        action_names(&r).contains(&"init-workspace".to_string()),
        "{}",
        r.output
    );
    for needle in [
        "keep = 7",
        "auto_cleanup = true",
        "allow_users = [\"root\"]",
        "allow_groups = [\"root\"]",
        "id = \"agent-proj\"",
    ] {
        assert!(
            r.output.contains(needle),
            "diff lacks {needle}:\n{}",
            r.output
        );
    }
    assert!(!project.is_symlink(), "check mode changed the directory");
    assert!(!env.image.exists(), "check mode created the image");
    assert!(dropins(&env).is_empty(), "check mode wrote a drop-in");

    // A value ws-ckpt rejects: ws-ckpt's message, nothing written (check mode and for real).
    for flags in [&["--check"][..], &[][..]] {
        let r = failed(module(
            &env,
            &a,
            "workspace",
            args(json!({"keep": "lots"})),
            flags,
        ));
        let msg = r.result["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("workspace.keep") && msg.contains("nothing was written"),
            "{msg}"
        );
        assert!(
            !msg.contains("ws_ckpt-"),
            "temporary paths leak into the message: {msg}"
        );
        assert!(dropins(&env).is_empty(), "a rejected value was written");
    }

    // For real: every key in one declaration, before the workspace exists.
    let r = ok(module(&env, &a, "workspace", args(full.clone()), &[]));
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert_eq!(r.result["ws_id"], "agent-proj", "{}", r.output);
    assert!(
        project.is_symlink(),
        "not a workspace after the run:\n{}",
        r.output
    );
    assert_eq!(TestEnv::tree_digest(&project), digest, "data changed");
    let declared = r.result["declared_in"].as_str().unwrap().to_string();
    assert!(declared.ends_with("/50-agent-proj.toml"), "{declared}");
    let text = fs::read_to_string(&declared).unwrap();
    for needle in [
        "keep = 7",
        "auto_cleanup = true",
        "allow_users = [\"root\"]",
        "allow_groups = [\"root\"]",
        "id = \"agent-proj\"",
    ] {
        assert!(text.contains(needle), "{needle} not declared:\n{text}");
    }
    assert_eq!(dropins(&env).len(), 1, "one declaration, in one step");
    let st = status(&env);
    assert_eq!(st["workspaces"][0]["ws_id"], "agent-proj", "{st}");
    assert_eq!(st["workspaces"][0]["condition"], "ready", "{st}");

    // Again: nothing to do, in check mode too.
    let r = ok(module(&env, &a, "workspace", args(full.clone()), &[]));
    assert_eq!(r.result["changed"], false, "{}", r.output);
    let r = ok(module(
        &env,
        &a,
        "workspace",
        args(full.clone()),
        &["--check"],
    ));
    assert_eq!(r.result["changed"], false, "{}", r.output);
    // Same ages written differently are the same.
    let mut thirty = full.clone();
    thirty["keep"] = json!("30d");
    ok(module(&env, &a, "workspace", args(thirty.clone()), &[]));
    thirty["keep"] = json!("720h");
    let r = ok(module(&env, &a, "workspace", args(thirty), &[]));
    assert_eq!(r.result["changed"], false, "720h is 30d:\n{}", r.output);

    // An edit keeps the file's comments and other keys; shown as a diff.
    let with_comment = format!("# kept comment\n{}", fs::read_to_string(&declared).unwrap());
    fs::write(&declared, &with_comment).unwrap();
    let r = ok(module(
        &env,
        &a,
        "workspace",
        args(json!({"keep": 9})),
        &["--diff"],
    ));
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(r.output.contains("+keep = 9"), "{}", r.output);
    let text = fs::read_to_string(&declared).unwrap();
    assert!(
        text.contains("# kept comment")
            && text.contains("keep = 9")
            && text.contains("allow_groups"),
        "{text}"
    );
    let err = failed(module(
        &env,
        &a,
        "workspace",
        args(json!({"id": "renamed"})),
        &[],
    ));
    assert!(
        err.result["msg"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{}",
        err.output
    );

    // A declaration ws-ckpt cannot carry out (a directory inside a workspace): the task
    // fails with ws-ckpt's reason and the config is as before.
    let before = dropins(&env);
    let nested = project.join("src");
    let r = failed(module(
        &env,
        &a,
        "workspace",
        json!({"path": nested, "config": env.config, "executable": bin}),
        &[],
    ));
    let msg = r.result["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("was restored") || msg.contains("configuration was not changed"),
        "{msg}"
    );
    assert_eq!(
        dropins(&env),
        before,
        "a failed declaration was left in config.d"
    );

    // workspace_info: health, the workspace and its snapshots.
    env.run(&["checkpoint", "-w", project.to_str().unwrap(), "-s", "c1"])
        .ok();
    let r = ok(module(
        &env,
        &a,
        "workspace_info",
        json!({"path": project, "config": env.config, "executable": bin}),
        &[],
    ));
    assert_eq!(r.result["changed"], false);
    assert_eq!(r.result["exists"], true, "{}", r.output);
    assert!(r.result["health"].is_string(), "{}", r.output);
    assert_eq!(
        r.result["workspaces"][0]["snapshots"][0]["id"], "c1",
        "{}",
        r.output
    );
    let r = ok(module(
        &env,
        &a,
        "workspace_info",
        json!({"path": "/nowhere", "config": env.config, "executable": bin, "snapshots": false}),
        &[],
    ));
    assert_eq!(r.result["exists"], false, "{}", r.output);

    // With a daemon: the module reloads it, and check mode says its plan is predicted.
    let d = env.spawn(&["daemon"], &[]);
    let sock = env.socket_path();
    assert!(
        wait_until(Duration::from_secs(60), || {
            assert!(d.try_wait().is_none(), "daemon exited:\n{}", d.stderr());
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }),
        "daemon did not start:\n{}",
        d.stderr()
    );
    let other = env.home.join("other");
    TestEnv::make_sample_tree(&other);
    let other_args = json!({"path": other, "config": env.config, "executable": bin, "keep": "2d"});
    let r = ok(module(
        &env,
        &a,
        "workspace",
        other_args.clone(),
        &["--check"],
    ));
    assert_eq!(r.result["predicted"], true, "{}", r.output);
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(!other.is_symlink());
    let r = ok(module(&env, &a, "workspace", other_args.clone(), &[]));
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert!(
        other.is_symlink(),
        "the daemon did not initialize it:\n{}",
        r.output
    );
    assert!(
        r.result["ws_id"].as_str().unwrap().starts_with("ws-"),
        "{}",
        r.output
    );
    let r = ok(module(&env, &a, "workspace", other_args, &[]));
    assert_eq!(r.result["changed"], false, "{}", r.output);
    assert!(d.term(), "the daemon did not stop on SIGTERM");
    assert!(
        d.wait_timeout(Duration::from_secs(30)).is_some(),
        "daemon did not exit"
    );

    // Release with --diff: the config edit and the release are shown; the data is back.
    let r = ok(module(
        &env,
        &a,
        "workspace",
        args(json!({"state": "absent"})),
        &["--diff"],
    ));
    assert_eq!(r.result["changed"], true, "{}", r.output);
    assert_eq!(r.result["ws_id"], "agent-proj", "{}", r.output);
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
    let r = ok(module(
        &env,
        &a,
        "workspace",
        args(json!({"state": "absent"})),
        &[],
    ));
    assert_eq!(r.result["changed"], false, "{}", r.output);
}

#[test]
fn ansible_role_templates_the_config_and_declares_workspaces() {
    let test = "ansible_role_templates_the_config_and_declares_workspaces";
    let Some(a) = ansible(test) else { return };
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let (one, two) = (env.home.join("one"), env.home.join("two"));
    TestEnv::make_sample_tree(&one);
    TestEnv::make_sample_tree(&two);
    let vars = json!({
        "ws_ckpt_install": false,
        "ws_ckpt_service": false,
        "ws_ckpt_config_path": env.config,
        "ws_ckpt_executable": bin_path(),
        "ws_ckpt_settings": {
            "daemon": {"state_dir": env.state_dir, "runtime_dir": env.runtime_dir, "reconcile_interval": "0"},
            "backend": {"type": "btrfs-loop"},
            "backend.btrfs-loop": {"image": env.image, "mount": env.mount, "img_size": 1,
                                   "img_max_percent": 100, "legacy_image": env.legacy_image()},
            "retention": {"keep": 15},
        },
        "ws_ckpt_workspaces": [
            {"path": one},
            {"path": two, "keep": "14d", "auto_cleanup": true, "allow_groups": ["root"]},
        ],
    });
    let playbook = env.root.join("site.yml");
    fs::write(
        &playbook,
        "- hosts: localhost\n  gather_facts: false\n  roles:\n    - ws_ckpt.ws_ckpt.ws_ckpt\n",
    )
    .unwrap();
    let vars_file = env.root.join("vars.json");
    fs::write(&vars_file, vars.to_string()).unwrap();
    let play = |flags: &[&str]| {
        let mut cmd = a.command("ansible-playbook", &env.root);
        cmd.args(["-c", "local", "-i", "localhost,"])
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .args(flags)
            .arg(&playbook);
        let run = env.run_command(cmd, Duration::from_secs(600));
        assert_eq!(
            run.status,
            Some(0),
            "ansible-playbook failed\n{}",
            run.describe()
        );
        run.stdout
    };
    let recap = |out: &str| -> String {
        out.lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };

    let out = play(&[]);
    assert!(!recap(&out).contains("changed=0"), "{out}");
    let config = fs::read_to_string(&env.config).unwrap();
    for needle in [
        "[daemon]",
        "reconcile_interval = \"0\"",
        "[backend.btrfs-loop]",
        "img_size = 1",
        "[retention]",
        "keep = 15",
    ] {
        assert!(config.contains(needle), "{needle} not templated:\n{config}");
    }
    assert!(
        one.is_symlink() && two.is_symlink(),
        "the role did not declare both:\n{out}"
    );
    let shown = env.run(&["--format", "json", "config", "show"]).json();
    let decl = shown["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["path"] == two.to_str().unwrap())
        .cloned()
        .unwrap();
    assert_eq!(decl["keep"], "2w", "14d is shown as 2w: {decl}");
    assert_eq!(decl["allow_groups"], json!(["root"]), "{decl}");
    assert_eq!(shown["retention"]["keep"], 15, "{shown}");

    // Again: nothing changes.
    let out = play(&[]);
    assert!(
        recap(&out).contains("changed=0"),
        "second run changed something:\n{out}"
    );
    let out = play(&["--check"]);
    assert!(
        recap(&out).contains("changed=0"),
        "check run reports changes:\n{out}"
    );
}
