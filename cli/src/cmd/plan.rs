//! `plan`, `apply` and `reload`: what would change, make it so, or ask the daemon to.

use super::{call, json_mode, parse, str_of, QUICK, SLOW};
use crate::args::Cli;
use crate::output;
use ws_ckpt::api::Request;
use ws_ckpt::engine::ApplyReport;
use ws_ckpt::error::Error;
use ws_ckpt::execute::Outcome;
use ws_ckpt::plan::{Finding, Plan, Severity};

/// `plan [--detailed-exitcode] [--prune]`: 1 on error findings, 2 (when asked) when changes
/// are pending, else 0.
pub(super) fn plan(cli: &Cli, detailed_exitcode: bool, prune: bool) -> Result<i32, Error> {
    let v = call(cli, Request::Plan { prune }, QUICK)?;
    let p: Plan = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_plan(&p)
    }
    Ok(
        if p.findings.iter().any(|f| f.severity == Severity::Error) {
            1
        } else if detailed_exitcode && !p.actions.is_empty() {
            2
        } else {
            0
        },
    )
}

/// `apply [--check] [--diff] [--prune]`: 0 converged, 1 failed or blocked.
pub(super) fn apply(cli: &Cli, check: bool, diff: bool, prune: bool) -> Result<i32, Error> {
    let v = call(cli, Request::Apply { check, prune }, SLOW)?;
    let r: ApplyReport = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_apply(&r, diff)
    }
    Ok(if r.ok() { 0 } else { 1 })
}

/// `reload`: only through the daemon.
pub(super) fn reload(cli: &Cli) -> Result<i32, Error> {
    let v = super::client(cli).call_daemon(&Request::Reload, SLOW)?;
    let r: ApplyReport = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_apply(&r, false)
    }
    Ok(if r.ok() { 0 } else { 1 })
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "ERROR",
    }
}

/// Findings as `SEVERITY [kind] message` + `fix:` lines (also used by `status`).
pub(super) fn print_findings(findings: &[Finding]) {
    for f in findings {
        let kind = str_of(&serde_json::to_value(f.kind).unwrap_or_default());
        let (message, hint) = (output::esc(&f.message), output::esc(&f.hint));
        println!("{} [{kind}] {message}", severity_label(f.severity));
        println!("    fix: {hint}");
    }
}

fn print_plan(p: &Plan) {
    if p.actions.is_empty() {
        println!("in sync: nothing to do");
    } else {
        println!("{} action(s) pending:", p.actions.len());
        for a in &p.actions {
            println!("  {:<20} {}", a.name(), output::esc(&a.describe()));
        }
    }
    print_findings(&p.findings);
}

fn print_apply(r: &ApplyReport, diff: bool) {
    if r.actions.is_empty() {
        println!("in sync: nothing changed");
    }
    for a in &r.actions {
        let detail = if diff || a.result != Outcome::Done {
            format!(" {}", output::esc(&a.action.describe()))
        } else {
            a.action
                .ws_id()
                .map(|ws| format!(" {ws}"))
                .unwrap_or_default()
        };
        println!("{:<8} {}{detail}", a.result.to_string(), a.action.name());
        if let Some(e) = &a.error {
            println!("    error: {}", output::esc(&e.message));
            if let Some(h) = &e.hint {
                println!("    hint: {}", output::esc(h));
            }
        }
    }
    print_findings(&r.findings);
}
