//! Retention (SPEC §5.5): which snapshots a keep policy deletes. Pure.

use crate::config::Keep;
use crate::state::WorkspaceIndex;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// A snapshot the retention pass would delete, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDelete {
    /// Snapshot ID.
    pub id: String,
    /// Reason, e.g. `beyond keep = 20`.
    pub reason: String,
}

/// Snapshots the retention policy deletes: never pinned, never missing, never the newest.
pub fn retention_deletions(
    index: &WorkspaceIndex,
    keep: Keep,
    now: SystemTime,
) -> Vec<RetentionDelete> {
    let newest = index.snapshots.keys().last().cloned();
    let candidates: Vec<(&String, Option<SystemTime>)> = index
        .snapshots
        .iter()
        .filter(|(_, e)| !e.pinned)
        .map(|(id, e)| (id, e.created_at.time()))
        .collect();
    let mut out = Vec::new();
    match keep {
        Keep::Count(n) => {
            let n = n as usize;
            if candidates.len() > n {
                for (id, _) in &candidates[..candidates.len() - n] {
                    out.push(RetentionDelete {
                        id: (*id).clone(),
                        reason: format!("beyond keep = {n}"),
                    });
                }
            }
        }
        Keep::Age(age) => {
            let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            for (id, created) in &candidates {
                if created.is_some_and(|c| c < cutoff) {
                    out.push(RetentionDelete {
                        id: (*id).clone(),
                        reason: format!("older than {keep}"),
                    });
                }
            }
        }
    }
    out.retain(|d| Some(&d.id) != newest.as_ref() && !index.snapshots[&d.id].missing);
    out
}
