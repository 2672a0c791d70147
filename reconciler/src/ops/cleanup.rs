//! `cleanup` (SPEC §5.5): apply a keep policy (or the workspace's retention policy) now.

use crate::api::Addressed;
use crate::config::Keep;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::plan::{retention_deletions, RetentionDelete};
use serde::Serialize;
use std::str::FromStr;
use std::time::SystemTime;

/// Result of `cleanup` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanupResult {
    /// Workspace ID.
    pub ws_id: String,
    /// The policy applied (`20` or `30d`).
    pub keep: String,
    /// Deleted snapshots and why.
    pub deleted: Vec<RetentionDelete>,
    /// Free space gained on the filesystem (after the btrfs cleaner ran; bounded wait).
    pub freed_bytes: u64,
    /// Nothing was deleted: `--dry-run` (`deleted` lists what would be).
    pub dry_run: bool,
}

impl Engine {
    /// `ws-ckpt cleanup` (SPEC §5.5): apply `keep` (or the workspace's retention policy) now.
    /// Never deletes pinned, MISSING or the newest snapshot. With `dry_run` it only reports
    /// what it would delete.
    pub fn cleanup(
        &self,
        addressed: &Addressed,
        keep: Option<&str>,
        dry_run: bool,
    ) -> Result<CleanupResult> {
        self.in_workspace(addressed.ws_id(), || {
            self.cleanup_locked(addressed, keep, dry_run)
        })
    }

    fn cleanup_locked(
        &self,
        addressed: &Addressed,
        keep: Option<&str>,
        dry_run: bool,
    ) -> Result<CleanupResult> {
        let ws = addressed.entry.clone();
        let config = self.config();
        let keep = match keep {
            Some(k) => Keep::from_str(k).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("invalid --keep {k:?}: {}", e.0),
                )
                .hint("use a count such as 20 or an age such as 30d")
            })?,
            None => config
                .workspace(&ws.workspace_path)
                .map(|d| config.effective_keep(d))
                .unwrap_or(config.retention.keep),
        };
        let res = self.storage_for(Some(&ws))?;
        self.check_path_addressed(addressed, &res)?;
        let deleted = self
            .store
            .read()
            .indexes
            .get(&ws.ws_id)
            .map(|i| retention_deletions(i, keep, SystemTime::now()))
            .unwrap_or_default();
        if dry_run {
            return Ok(CleanupResult {
                ws_id: ws.ws_id,
                keep: keep.to_string(),
                deleted,
                freed_bytes: 0,
                dry_run,
            });
        }
        fault::point("cleanup:after-plan");
        let before = self.sys().fs_usage(&res.mount).ok();
        let ids: Vec<String> = deleted.iter().map(|d| d.id.clone()).collect();
        self.delete_recorded(&res, &ws.ws_id, &ids)?;
        let after = self.sys().fs_usage(&res.mount).ok();
        let freed_bytes = match (before, after) {
            (Some(b), Some(a)) => a.free.saturating_sub(b.free),
            _ => 0,
        };
        Ok(CleanupResult {
            ws_id: ws.ws_id,
            keep: keep.to_string(),
            deleted,
            freed_bytes,
            dry_run,
        })
    }
}
