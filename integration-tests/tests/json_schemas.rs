//! Every `--format json` output matches its JSON Schema in `docs/schema/` (docs/json.md).
//!
//! What it checks: the schemas are well formed (a JSON Schema 2020-12 subset this file's
//! validator implements; an unsupported keyword is an error, so nothing in a schema goes
//! unchecked), and the real output of every command, produced on a real loop btrfs, validates.
//! Validation here is stricter than the published contract: a property the output has but its
//! schema does not declare is an error, so a new field cannot go undocumented. Every command
//! in `ws-ckpt --help` must have a schema (or be listed in [`NO_JSON`]).
//!
//! To cover a new output: add its schema file, a row to [`OUTPUTS`], and a `check(…)` call on
//! the real output in [`every_json_output_matches_its_schema`].
//!
//! Nothing outside the test's own temporary root is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use ws_ckpt_integration_tests::{bin_path, btrfs, wait_until, TestEnv};

/// Command (as typed after `ws-ckpt`) → schema file stem in docs/schema.
const OUTPUTS: &[(&str, &str)] = &[
    ("plan", "plan"),
    ("apply", "apply"),
    ("reload", "apply"),
    ("status", "status"),
    ("init", "init"),
    ("release", "release"),
    ("checkpoint", "checkpoint"),
    ("rollback", "rollback"),
    ("rollback --preview", "rollback-preview"),
    ("recover", "recover"),
    ("list", "list"),
    ("delete", "delete"),
    ("cleanup", "cleanup"),
    ("diff", "diff"),
    ("config show", "config-show"),
    ("config validate", "config-validate"),
    ("config", "config-overview"),
    ("config -g", "config-global"),
    ("config -w", "config-policy"),
];

/// Commands that print no JSON document (documentation, shell code, or a long-running
/// process whose output is its log).
const NO_JSON: &[&str] = &["daemon", "completions", "man", "help", "config help"];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

/// The schemas of docs/schema, by file name (`plan.schema.json`).
struct Schemas {
    files: BTreeMap<String, Value>,
}

const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "oneOf",
    "anyOf",
    "allOf",
    "minimum",
    "format",
];

/// Which properties of an object instance the schema looked at.
enum Seen {
    /// No schema applied to this location describes an object's properties: any value
    /// (e.g. free-form metadata) is accepted as it is.
    Free,
    /// These properties were described; any other is undocumented.
    Some(BTreeSet<String>),
    /// `additionalProperties` accepts every other property.
    All,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        match (&mut *self, other) {
            (Seen::All, _) | (_, Seen::Free) => {}
            (_, Seen::All) => *self = Seen::All,
            (Seen::Some(a), Seen::Some(b)) => a.extend(b),
            (Seen::Free, b) => *self = b,
        }
    }
}

impl Schemas {
    fn load() -> Schemas {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(schema_dir()).expect("docs/schema exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".schema.json"),
                "{name}: files in docs/schema are named <output>.schema.json"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let schema: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            let id = schema["$id"].as_str().unwrap_or_default();
            assert!(id.ends_with(&format!("/{name}")), "{name}: $id {id}");
            for key in ["title", "description"] {
                assert!(schema[key].is_string(), "{name} has no {key}");
            }
            files.insert(name, schema);
        }
        let s = Schemas { files };
        for (name, schema) in &s.files {
            s.lint(name, schema, "");
        }
        s
    }

    /// Every keyword is one the validator implements, every `$ref` resolves.
    fn lint(&self, file: &str, schema: &Value, at: &str) {
        let Some(map) = schema.as_object() else {
            panic!("{file}{at}: a schema must be an object");
        };
        for (k, v) in map {
            assert!(
                KEYWORDS.contains(&k.as_str()),
                "{file}{at}: keyword {k} is not supported by the test's validator; use another or extend it"
            );
            match k.as_str() {
                "$ref" => {
                    self.resolve(file, v.as_str().unwrap());
                }
                "properties" | "$defs" => {
                    for (name, sub) in v.as_object().unwrap() {
                        self.lint(file, sub, &format!("{at}/{k}/{name}"));
                    }
                }
                "items" | "additionalProperties" if v.is_object() => {
                    self.lint(file, v, &format!("{at}/{k}"))
                }
                "oneOf" | "anyOf" | "allOf" => {
                    for (i, sub) in v.as_array().unwrap().iter().enumerate() {
                        self.lint(file, sub, &format!("{at}/{k}/{i}"));
                    }
                }
                "required" => {
                    let props = map.get("properties").and_then(Value::as_object);
                    for r in v.as_array().unwrap() {
                        assert!(
                            props.is_some_and(|p| p.contains_key(r.as_str().unwrap())),
                            "{file}{at}: required {r} is not among the properties"
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// (file, schema) a `$ref` points at.
    fn resolve(&self, file: &str, reference: &str) -> (String, &Value) {
        let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let target = if target.is_empty() { file } else { target };
        let root = self
            .files
            .get(target)
            .unwrap_or_else(|| panic!("{file}: $ref {reference}: no docs/schema/{target}"));
        let schema = root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{file}: $ref {reference} does not resolve"));
        (target.to_string(), schema)
    }

    /// Errors of `instance` against `docs/schema/<stem>.schema.json`.
    fn errors(&self, stem: &str, instance: &Value) -> Vec<String> {
        let file = format!("{stem}.schema.json");
        let schema = self
            .files
            .get(&file)
            .unwrap_or_else(|| panic!("no docs/schema/{file}"));
        let mut errors = Vec::new();
        self.at_location(&file, schema, instance, "", &mut errors);
        errors
    }

    /// Validate one instance location, then reject properties no schema looked at.
    fn at_location(
        &self,
        file: &str,
        schema: &Value,
        inst: &Value,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        let seen = self.validate(file, schema, inst, path, errors);
        if let (Some(obj), Seen::Some(seen)) = (inst.as_object(), seen) {
            for key in obj.keys().filter(|k| !seen.contains(*k)) {
                errors.push(format!(
                    "{path}/{key}: not in the schema (document it in docs/schema and docs/json.md)"
                ));
            }
        }
    }

    fn validate(
        &self,
        file: &str,
        schema: &Value,
        inst: &Value,
        path: &str,
        errors: &mut Vec<String>,
    ) -> Seen {
        let mut seen = Seen::Free;
        let s = schema.as_object().expect("linted");
        let at = if path.is_empty() { "(root)" } else { path };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let (target, sub) = self.resolve(file, r);
            seen.merge(self.validate(&target, sub, inst, path, errors));
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => panic!("{file}: bad type {t}"),
            };
            if !types.iter().any(|t| type_matches(t, inst)) {
                errors.push(format!(
                    "{at}: expected {}, found {inst}",
                    types.join(" or ")
                ));
                return seen;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(inst) {
                errors.push(format!(
                    "{at}: {inst} is not one of {}",
                    Value::from(e.clone())
                ));
            }
        }
        if let Some(c) = s.get("const") {
            if c != inst {
                errors.push(format!("{at}: expected {c}, found {inst}"));
            }
        }
        if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), inst.as_f64()) {
            if n < min {
                errors.push(format!("{at}: {n} is less than {min}"));
            }
        }
        if s.get("format").and_then(Value::as_str) == Some("date-time") {
            if let Some(text) = inst.as_str() {
                if !is_rfc3339(text) {
                    errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
                }
            }
        }
        if let Some(obj) = inst.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                seen.merge(Seen::Some(BTreeSet::new()));
                for (k, sub) in props {
                    if let Some(v) = obj.get(k) {
                        self.at_location(file, sub, v, &format!("{path}/{k}"), errors);
                        seen.merge(Seen::Some([k.clone()].into()));
                    }
                }
            }
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        errors.push(format!("{at}: required property {r} is missing"));
                    }
                }
            }
            match s.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    for k in obj.keys() {
                        if !props.is_some_and(|p| p.contains_key(k)) {
                            errors.push(format!("{path}/{k}: no additional properties allowed"));
                        }
                    }
                }
                Some(Value::Bool(true)) => seen.merge(Seen::All),
                Some(sub @ Value::Object(_)) => {
                    for (k, v) in obj {
                        if !props.is_some_and(|p| p.contains_key(k)) {
                            self.at_location(file, sub, v, &format!("{path}/{k}"), errors);
                        }
                    }
                    seen.merge(Seen::All);
                }
                _ => {}
            }
        }
        if let (Some(items), Some(arr)) = (s.get("items"), inst.as_array()) {
            for (i, v) in arr.iter().enumerate() {
                self.at_location(file, items, v, &format!("{path}/{i}"), errors);
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                seen.merge(self.validate(file, sub, inst, path, errors));
            }
        }
        for key in ["oneOf", "anyOf"] {
            let Some(alternatives) = s.get(key).and_then(Value::as_array) else {
                continue;
            };
            let mut passing = Vec::new();
            let mut why = Vec::new();
            for (i, sub) in alternatives.iter().enumerate() {
                let mut errs = Vec::new();
                // A branch passes only if its own location check passes too.
                let branch = self.validate(file, sub, inst, path, &mut errs);
                if errs.is_empty() {
                    passing.push(branch);
                } else {
                    why.push(format!("[{i}] {}", errs.join("; ")));
                }
            }
            let ok = if key == "oneOf" {
                passing.len() == 1
            } else {
                !passing.is_empty()
            };
            if !ok {
                errors.push(format!(
                    "{at}: {} of {} {key} alternatives match {inst}: {}",
                    passing.len(),
                    alternatives.len(),
                    why.join(" | ")
                ));
            }
            for p in passing {
                seen.merge(p);
            }
        }
        seen
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Collects which schemas real output was checked against.
struct Checker {
    schemas: Schemas,
    used: BTreeSet<String>,
}

impl Checker {
    #[track_caller]
    fn check(&mut self, stem: &str, what: &str, value: &Value) {
        let errors = self.schemas.errors(stem, value);
        assert!(
            errors.is_empty(),
            "{what}: output does not match docs/schema/{stem}.schema.json:\n  {}\noutput:\n{}",
            errors.join("\n  "),
            serde_json::to_string_pretty(value).unwrap()
        );
        self.used.insert(stem.to_string());
    }
}

#[test]
fn the_validator_rejects_what_it_should() {
    let s = Schemas::load();
    let ok = json!({"error": {"code": "Io", "message": "cannot read /x", "hint": "check it"}});
    assert!(
        s.errors("error", &ok).is_empty(),
        "{:?}",
        s.errors("error", &ok)
    );
    for (bad, why) in [
        (
            json!({"error": {"code": "Nope", "message": "m"}}),
            "not one of",
        ),
        (json!({"error": {"message": "m"}}), "required property code"),
        (
            json!({"error": {"code": "Io", "message": 3}}),
            "expected string",
        ),
        (
            json!({"error": {"code": "Io", "message": "m", "extra": 1}}),
            "not in the schema",
        ),
        (json!({"oops": true}), "required property error"),
    ] {
        let errors = s.errors("error", &bad);
        assert!(
            errors.iter().any(|e| e.contains(why)),
            "{bad} should fail with {why}: {errors:?}"
        );
    }
    // Tagged unions: exactly one action variant, and its fields only.
    let apply = |action: Value| json!({"changed": false, "actions": [action], "findings": []});
    let good =
        apply(json!({"action": "init-workspace", "ws_id": "ws-1", "path": "/p", "result": "done"}));
    assert!(
        s.errors("apply", &good).is_empty(),
        "{:?}",
        s.errors("apply", &good)
    );
    for bad in [
        apply(json!({"action": "init-workspace", "ws_id": "ws-1", "path": "/p"})),
        apply(json!({"action": "no-such-action", "result": "done"})),
        apply(
            json!({"action": "init-workspace", "ws_id": "ws-1", "path": "/p", "result": "done", "x": 1}),
        ),
        apply(json!({"action": "init-workspace", "ws_id": "ws-1", "result": "done"})),
    ] {
        assert!(!s.errors("apply", &bad).is_empty(), "{bad} should fail");
    }
    assert!(is_rfc3339("2026-11-24T15:07:42Z"));
    assert!(is_rfc3339("2026-11-24T15:07:42.123456789Z"));
    assert!(is_rfc3339("2026-11-24T15:07:42+01:00"));
    assert!(!is_rfc3339("2026-11-24 15:07:42"));
    assert!(!is_rfc3339("yesterday"));
}

#[test]
fn every_command_has_a_schema_and_docs_json_md_names_every_schema() {
    let schemas = Schemas::load();
    let help = |args: &[&str]| {
        let out = Command::new(bin_path())
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ws-ckpt {args:?} --help failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands_of = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter(|l| !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    let mut all = Vec::new();
    for c in commands_of(&help(&[])) {
        if c == "help" {
            all.push(c);
            continue;
        }
        let nested = commands_of(&help(&[c.as_str()]));
        if nested.is_empty() {
            all.push(c);
        } else {
            all.extend(nested.into_iter().map(|n| format!("{c} {n}")));
        }
    }
    assert!(all.len() >= 15, "{all:?}");
    for c in &all {
        assert!(
            OUTPUTS.iter().any(|(name, _)| name == c) || NO_JSON.contains(&c.as_str()),
            "`ws-ckpt {c}` has no JSON Schema: add docs/schema/<name>.schema.json, a row in OUTPUTS and a check of its real output in this file"
        );
    }
    let json_md = std::fs::read_to_string(schema_dir().join("../json.md")).unwrap();
    for name in schemas.files.keys() {
        assert!(
            json_md.contains(name.as_str()),
            "docs/json.md does not mention {name}"
        );
        let stem = name.trim_end_matches(".schema.json");
        assert!(
            stem == "defs" || stem == "error" || OUTPUTS.iter().any(|(_, s)| *s == stem),
            "{name} belongs to no command in OUTPUTS"
        );
    }
}

#[test]
fn every_json_output_matches_its_schema() {
    let Some(env) = TestEnv::new("every_json_output_matches_its_schema") else {
        return;
    };
    let mut c = Checker {
        schemas: Schemas::load(),
        used: BTreeSet::new(),
    };
    let run = |args: &[&str]| {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let ok = |args: &[&str]| {
        let r = run(args);
        r.ok();
        r.json()
    };

    // A declared workspace with every per-workspace key, besides the base config.
    let declared = env.home.join("declared");
    TestEnv::make_sample_tree(&declared);
    std::fs::write(
        env.dropin_dir.join("60-declared.toml"),
        format!(
            "[[workspace]]\npath = {:?}\nid = \"declared-ws\"\nkeep = \"30d\"\nauto_cleanup = true\nallow_users = [\"root\"]\nallow_groups = [\"root\"]\n",
            declared.display().to_string()
        ),
    )
    .unwrap();
    c.check(
        "config-validate",
        "config validate",
        &ok(&["config", "validate"]),
    );
    c.check("config-show", "config show", &ok(&["config", "show"]));

    let plan = ok(&["plan"]);
    c.check("plan", "plan (pending)", &plan);
    assert!(!plan["actions"].as_array().unwrap().is_empty(), "{plan}");
    c.check("apply", "apply --check", &ok(&["apply", "--check"]));
    let applied = ok(&["apply"]);
    c.check("apply", "apply", &applied);
    assert_eq!(applied["changed"], true, "{applied}");
    c.check("plan", "plan (in sync)", &ok(&["plan"]));

    let project = env.home.join("project");
    TestEnv::make_sample_tree(&project);
    let p = project.to_str().unwrap();
    c.check("init", "init", &ok(&["init", p]));
    c.check("init", "init (again)", &ok(&["init", p]));

    let c1 = ok(&[
        "checkpoint",
        "-w",
        p,
        "-s",
        "c1",
        "-m",
        "first",
        "--metadata",
        "{\"tool\":\"edit\",\"n\":1}",
    ]);
    c.check("checkpoint", "checkpoint", &c1);
    std::fs::write(project.join("added.txt"), "new\n").unwrap();
    std::fs::write(project.join("modified.txt"), "one\n").unwrap();
    let c2 = ok(&["checkpoint", "-w", p, "-s", "c2", "--pin"]);
    c.check("checkpoint", "checkpoint --pin", &c2);
    std::fs::write(project.join("modified.txt"), "two\n").unwrap();
    std::fs::rename(project.join("added.txt"), project.join("renamed.txt")).unwrap();
    std::fs::create_dir(project.join("newdir")).unwrap();
    std::os::unix::fs::symlink("renamed.txt", project.join("link")).unwrap();
    std::fs::remove_file(project.join("modified.txt")).unwrap();
    for args in [
        vec!["diff", "-w", p, "-f", "c1"],
        vec!["diff", "-w", p, "-f", "c1", "-t", "c2"],
        vec!["diff", "-w", p, "-f", "c2"],
    ] {
        let d = ok(&args);
        c.check("diff", &args.join(" "), &d);
    }
    let live = ok(&["diff", "-w", p, "-f", "c2"]);
    let changes: BTreeSet<&str> = live["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["change"].as_str())
        .collect();
    assert!(
        changes.contains("renamed") && changes.contains("added") && changes.contains("deleted"),
        "{live}"
    );

    c.check("list", "list", &ok(&["list"]));
    c.check("list", "list -w", &ok(&["list", "-w", p]));
    let page = ok(&["list", "-w", p, "--limit", "1"]);
    c.check("list", "list --limit 1", &page);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let last = ok(&["list", "-w", p, "--limit", "1", "--cursor", &cursor]);
    c.check("list", "list --cursor", &last);
    assert!(last["next_cursor"].is_null(), "{last}");
    for args in [
        vec!["rollback", "-w", p, "-s", "c1", "--preview"],
        vec!["rollback", "-w", p, "-n", "1", "--preview"],
    ] {
        let preview = ok(&args);
        c.check("rollback-preview", &args.join(" "), &preview);
        assert_eq!(preview["preview"], true, "{preview}");
    }
    c.check(
        "rollback",
        "rollback",
        &ok(&["rollback", "-w", p, "-s", "c1"]),
    );
    for id in ["c3", "c4", "c5"] {
        ok(&["checkpoint", "-w", p, "-s", id]);
    }
    let dry = ok(&["cleanup", "-w", p, "--keep", "1", "--dry-run"]);
    c.check("cleanup", "cleanup --keep 1 --dry-run", &dry);
    assert_eq!(dry["dry_run"], true, "{dry}");
    let cleaned = ok(&["cleanup", "-w", p, "--keep", "1"]);
    c.check("cleanup", "cleanup --keep 1", &cleaned);
    assert!(
        !cleaned["deleted"].as_array().unwrap().is_empty(),
        "{cleaned}"
    );
    c.check(
        "delete",
        "delete --force --dry-run",
        &ok(&["delete", "-w", p, "-s", "c2", "--force", "--dry-run"]),
    );
    c.check(
        "delete",
        "delete --force",
        &ok(&["delete", "-w", p, "-s", "c2", "--force"]),
    );

    // Upstream's config documents, viewed and changed.
    c.check("config-overview", "config", &ok(&["config"]));
    c.check("config-global", "config -g", &ok(&["config", "-g"]));
    c.check("config-policy", "config -w", &ok(&["config", "-w", p]));
    let changed = ok(&[
        "config",
        "-w",
        p,
        "--enable-auto-cleanup",
        "--auto-cleanup-keep",
        "7d",
    ]);
    c.check("config-policy", "config -w (change)", &changed);
    assert_eq!(
        changed["local"]["auto_cleanup_keep"]["raw"], "7d",
        "{changed}"
    );
    c.check(
        "config-policy",
        "config -w --reset",
        &ok(&["config", "-w", p, "--reset"]),
    );

    // A snapshot deleted behind ws-ckpt's back: MISSING everywhere.
    ok(&["checkpoint", "-w", p, "-s", "gone"]);
    let listed = ok(&["list", "-w", p]);
    let ws_id = listed[0]["ws_id"].as_str().unwrap().to_string();
    btrfs(&[
        "subvolume",
        "delete",
        env.mount
            .join("snapshots")
            .join(&ws_id)
            .join("gone")
            .to_str()
            .unwrap(),
    ]);
    c.check("plan", "plan (mark-missing)", &ok(&["plan"]));
    let status = run(&["status"]);
    c.check("status", "status (degraded)", &status.json());
    c.check("apply", "apply (mark-missing)", &ok(&["apply"]));
    let listed = ok(&["list", "-w", p]);
    c.check("list", "list (MISSING)", &listed);
    assert!(listed.to_string().contains("\"missing\":true"), "{listed}");
    ok(&["delete", "-w", p, "-s", "gone", "--force"]);
    c.check("status", "status (healthy)", &run(&["status"]).json());

    // Errors: each failing command prints an error document and exits 1.
    for (args, code) in [
        (vec!["list", "-w", "ws-000000"], "WorkspaceNotFound"),
        (
            vec!["delete", "-w", p, "-s", "no-such-snapshot"],
            "SnapshotNotFound",
        ),
        (
            vec!["checkpoint", "-w", p, "-s", "c5"],
            "SnapshotAlreadyExists",
        ),
        (
            vec!["checkpoint", "-w", p, "-s", "../escape"],
            "InvalidArgument",
        ),
        (
            vec!["rollback", "-w", p, "-s", "no-such-snapshot"],
            "SnapshotNotFound",
        ),
    ] {
        let r = run(&args);
        r.assert_code(1);
        let v = r.json();
        c.check("error", &args.join(" "), &v);
        assert_eq!(v["error"]["code"], code, "{}", r.describe());
    }
    let bad = env.root.join("bad/config.toml");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "[daemon]\nstate_dir = 3\n").unwrap();
    let r = run(&["config", "validate", bad.to_str().unwrap()]);
    r.assert_code(1);
    c.check("error", "config validate (invalid)", &r.json());
    assert_eq!(r.json()["error"]["code"], "ConfigInvalid");

    // Through the daemon: status has the daemon's fields, reload prints an apply report.
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
    let st = ok(&["status"]);
    c.check("status", "status (daemon)", &st);
    assert_eq!(st["daemon"]["running"], true, "{st}");
    c.check("apply", "reload", &ok(&["reload"]));
    c.check(
        "checkpoint",
        "checkpoint (daemon)",
        &ok(&["checkpoint", "-w", p]),
    );
    c.check("release", "release (daemon)", &ok(&["release", p]));
    let other = env.home.join("other");
    TestEnv::make_sample_tree(&other);
    let o = other.to_str().unwrap();
    ok(&["init", "-w", o]);
    ok(&["checkpoint", "-w", o, "-s", "o1"]);
    let recovered = ok(&["recover", "-w", o, "--force"]);
    c.check("recover", "recover -w --force (daemon)", &recovered);
    assert_eq!(recovered["recovered"][0]["snapshots"], 1, "{recovered}");
    c.check(
        "recover",
        "recover --all --force (nothing left)",
        &ok(&["recover", "--all", "--force"]),
    );
    assert!(d.term(), "the daemon did not stop on SIGTERM");
    assert!(
        d.wait_timeout(Duration::from_secs(30)).is_some(),
        "daemon did not exit"
    );

    let missing: Vec<&str> = OUTPUTS
        .iter()
        .map(|(_, s)| *s)
        .chain(["error"])
        .filter(|s| !c.used.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "no real output was checked against: {missing:?}"
    );
}
