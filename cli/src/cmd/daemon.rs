//! `daemon --check`: one planning pass (the running daemon's, or in-process without taking the
//! lock), printed as the actions the daemon would take and its findings. Exit 1 on blocking
//! findings or when no plan could be made, else 0. (`daemon` itself is the library's.)

use crate::args::Cli;
use serde_json::Value;
use std::time::Duration;

/// Client timeout of `daemon --check` when it asks a running daemon.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// `daemon --check`.
pub(super) fn check(cli: &Cli) -> i32 {
    let plan = match super::client(cli).check_plan(CHECK_TIMEOUT) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("  hint: {h}");
            }
            return 1;
        }
    };
    let (text, code) = render_check(&plan);
    print!("{text}");
    code
}

/// Text of `daemon --check` for a plan (as JSON) and its exit code.
fn render_check(plan: &Value) -> (String, i32) {
    let empty = Vec::new();
    let actions = plan
        .get("actions")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let findings = plan
        .get("findings")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = String::new();
    if actions.is_empty() {
        out.push_str("in sync: the daemon would change nothing\n");
    } else {
        out.push_str(&format!(
            "{} action(s) the daemon would take:\n",
            actions.len()
        ));
        for a in actions {
            let ws = a
                .get("ws_id")
                .and_then(Value::as_str)
                .map(|w| format!(" {w}"))
                .unwrap_or_default();
            out.push_str(&format!("  {}{ws}\n", s(a, "action")));
        }
    }
    let mut blocked = false;
    for f in findings {
        let kind = s(f, "kind");
        blocked |= matches!(kind.as_str(), "backend-conflict" | "newer-state-version");
        let sev = match s(f, "severity").as_str() {
            "error" => "ERROR".to_string(),
            other => other.to_string(),
        };
        out.push_str(&format!("{sev} [{kind}] {}\n", s(f, "message")));
        let hint = s(f, "hint");
        if !hint.is_empty() {
            out.push_str(&format!("    fix: {hint}\n"));
        }
    }
    if blocked {
        out.push_str("blocked: the daemon would refuse every change until this is fixed\n");
    }
    (out, i32::from(blocked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: &str, sev: &str) -> Value {
        serde_json::json!({"kind": kind, "severity": sev, "message": format!("{kind} happened"), "hint": format!("fix {kind}")})
    }

    #[test]
    fn check_output_exits_1_only_when_blocked_and_prints_the_fix() {
        let plan = serde_json::json!({"actions": [{"action": "mark-missing", "ws_id": "ws-abcdef"}], "findings": [finding("backend-conflict", "error")]});
        let (text, code) = render_check(&plan);
        assert_eq!(code, 1);
        assert!(text.contains("mark-missing ws-abcdef"), "{text}");
        assert!(
            text.contains("ERROR [backend-conflict] backend-conflict happened"),
            "{text}"
        );
        assert!(text.contains("fix: fix backend-conflict"), "{text}");
        let (text, code) = render_check(
            &serde_json::json!({"actions": [], "findings": [finding("storage-unavailable", "error")]}),
        );
        assert_eq!(code, 0, "{text}");
        let (text, code) = render_check(&serde_json::json!({"actions": [], "findings": []}));
        assert_eq!(
            (text.as_str(), code),
            ("in sync: the daemon would change nothing\n", 0)
        );
    }
}
