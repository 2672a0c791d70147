//! Interrupted operations (SPEC §5.6): from the recorded phase and what is on disk, decide to
//! finish, to revert, or (when neither is provably safe) to keep both copies and report.

use super::{Action, Planner, Recovery, RecoveryStep};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::PathState;
use crate::state::{InitPhase, PendingKind, PendingOp, ReleasePhase};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

impl Planner<'_> {
    /// Interrupted operations. Returns the workspaces that must not be planned this pass.
    pub(super) fn pending(&mut self, storage_ready: bool) -> BTreeSet<String> {
        let mut busy = BTreeSet::new();
        for op in self.persisted.pending() {
            if let Some(ws) = op.kind.ws_id() {
                busy.insert(ws.to_string());
            }
            match &op.kind {
                PendingKind::MigrateImage { .. } | PendingKind::GrowImage { .. } => {
                    self.recover_image_op(op);
                }
                _ if storage_ready => self.recover_ws_op(op),
                _ => {}
            }
        }
        let state = self.persisted.state.as_ref();
        for (value, error) in state.into_iter().flat_map(|s| s.undecodable_pending()) {
            // Whatever it was doing, leave the workspace it names alone.
            let ws_id = value.get("ws_id").and_then(|w| w.as_str());
            if let Some(ws) = ws_id {
                busy.insert(ws.to_string());
            }
            let mut f = Finding::new(
                FindingKind::UnreadableOperation,
                Severity::Warning,
                format!(
                    "{} records an interrupted operation this ws-ckpt cannot read ({error}): {value}; it is kept as it is and nothing is done about it",
                    self.persisted.state_path.display()
                ),
                "if a newer ws-ckpt wrote it, let that version finish it; otherwise check the paths it names, then remove the entry from the \"pending\" list of state.json".to_string(),
            );
            f.ws_id = ws_id.map(str::to_string);
            self.find(f);
        }
        busy
    }

    pub(super) fn recover_image_op(&mut self, op: &PendingOp) {
        let step = match &op.kind {
            PendingKind::MigrateImage { from, to, tmp } => {
                let from_s = self.obs.path(from);
                let to_s = self.obs.path(to);
                let tmp_s = self.obs.path(tmp);
                match (from_s, to_s) {
                    (PathState::Missing, PathState::Other) => {
                        RecoveryStep::ForgetImageMove { to: to.clone() }
                    }
                    (PathState::Other, PathState::Missing) => {
                        RecoveryStep::RemovePartialImageCopy {
                            from: from.clone(),
                            tmp: tmp.clone(),
                            tmp_present: *tmp_s != PathState::Missing,
                        }
                    }
                    (PathState::Other, PathState::Other) => RecoveryStep::RemoveOldImage {
                        from: from.clone(),
                        to: to.clone(),
                    },
                    _ => {
                        self.find(Finding::new(
                            FindingKind::Ambiguous,
                            Severity::Error,
                            format!(
                                "interrupted image move {}: neither {} nor {} holds the image",
                                op.op_id,
                                from.display(),
                                to.display()
                            ),
                            format!(
                                "look for the image (partial copy: {}) and put it back at {}",
                                tmp.display(),
                                to.display()
                            ),
                        ));
                        return;
                    }
                }
            }
            PendingKind::GrowImage { image, to_bytes } => RecoveryStep::FinishGrowing {
                image: image.clone(),
                to_bytes: *to_bytes,
            },
            _ => return,
        };
        self.interrupted(op, step);
    }

    /// Finish or revert `op` by `step` (which of the two follows from the step).
    pub(super) fn interrupted(&mut self, op: &PendingOp, step: RecoveryStep) {
        let op_id = op.op_id.clone();
        let operation = op.kind.name().to_string();
        let ws_id = op.kind.ws_id().map(str::to_string);
        let finish = step.finishes();
        let recovery = Recovery(step);
        self.act(if finish {
            Action::FinishInterrupted {
                op_id,
                operation,
                ws_id,
                recovery,
            }
        } else {
            Action::RevertInterrupted {
                op_id,
                operation,
                ws_id,
                recovery,
            }
        });
    }

    pub(super) fn ambiguous(&mut self, op: &PendingOp, what: String) {
        let (ws, path) = match &op.kind {
            PendingKind::Init { ws_id, path, .. } | PendingKind::Release { ws_id, path, .. } => {
                (ws_id.clone(), path.clone())
            }
            _ => (String::new(), PathBuf::new()),
        };
        self.find(
            Finding::new(
                FindingKind::Ambiguous,
                Severity::Error,
                format!("interrupted {} {} cannot be finished or reverted safely: {what}; both copies are kept", op.kind.name(), op.op_id),
                "inspect the paths named, keep the right copy, then remove the operation with `ws-ckpt apply` after fixing".to_string(),
            )
            .ws(&ws, &path),
        );
    }

    pub(super) fn points_to(&self, p: &Path, target: &Path) -> bool {
        matches!(self.obs.path(p), PathState::Symlink { target: t, .. } if t == target)
    }

    pub(super) fn recover_ws_op(&mut self, op: &PendingOp) {
        match &op.kind {
            PendingKind::Init {
                path,
                subvol,
                tmp,
                phase,
                ..
            } => {
                let path_is_link = self.points_to(path, subvol);
                let path_is_dir = matches!(self.obs.path(path), PathState::Dir { .. });
                let tmp_state = self.obs.path(tmp).clone();
                let subvol_ok = self.obs.is_subvol(subvol);
                match (path_is_dir, path_is_link, phase) {
                    (true, _, _) if !matches!(tmp_state, PathState::Dir { .. }) => self
                        .interrupted(
                            op,
                            RecoveryStep::DeletePartialSubvolume {
                                path: path.clone(),
                                subvol: subvol.clone(),
                            },
                        ),
                    (false, true, InitPhase::Verified) if subvol_ok => self.interrupted(
                        op,
                        RecoveryStep::RemoveOriginalCopy {
                            path: path.clone(),
                            subvol: subvol.clone(),
                            tmp: tmp.clone(),
                        },
                    ),
                    _ => self.ambiguous(
                        op,
                        format!(
                            "{} is {:?}, {} is {:?}, subvolume {} present: {subvol_ok}",
                            path.display(),
                            self.obs.path(path),
                            tmp.display(),
                            tmp_state,
                            subvol.display()
                        ),
                    ),
                }
            }
            PendingKind::Release {
                path,
                subvol,
                tmp,
                phase,
                ..
            } => {
                let path_is_link = self.points_to(path, subvol);
                let path_is_dir = matches!(self.obs.path(path), PathState::Dir { .. });
                let tmp_is_link = self.points_to(tmp, subvol);
                match (path_is_link, path_is_dir, tmp_is_link, phase) {
                    (true, _, _, _) => self.interrupted(
                        op,
                        RecoveryStep::RemovePartialCopy {
                            path: path.clone(),
                            tmp: tmp.clone(),
                        },
                    ),
                    // The plain directory was verified again and the old symlink removed:
                    // only the deletions (subvolume, snapshots, gates) remain.
                    (false, true, _, ReleasePhase::Deleting) => self.interrupted(
                        op,
                        RecoveryStep::RemoveWorkspaceSubvolume { path: path.clone() },
                    ),
                    (false, true, true, ReleasePhase::Verified)
                    | (false, true, false, ReleasePhase::Verified)
                        if !matches!(self.obs.path(tmp), PathState::Dir { .. }) =>
                    {
                        self.interrupted(
                            op,
                            RecoveryStep::RemoveWorkspaceSubvolume { path: path.clone() },
                        )
                    }
                    _ => self.ambiguous(
                        op,
                        format!(
                            "{} is {:?}, {} is {:?}",
                            path.display(),
                            self.obs.path(path),
                            tmp.display(),
                            self.obs.path(tmp)
                        ),
                    ),
                }
            }
            PendingKind::Rollback {
                subvol,
                tmp,
                snapshot,
                live_tree,
                ..
            } => {
                let tmp_present = self.obs.is_subvol(tmp);
                let subvol_present = self.obs.is_subvol(subvol);
                match (subvol_present, tmp_present) {
                    (true, false) => self.interrupted(
                        op,
                        RecoveryStep::ForgetRollback {
                            subvol: subvol.clone(),
                        },
                    ),
                    // The copy is complete once it exists (a snapshot is made atomically);
                    // the exchange follows without a record of its own, so it may have
                    // happened in either phase.
                    (true, true) if live_tree.is_some() => self.interrupted(
                        op,
                        RecoveryStep::FinishRollback {
                            subvol: subvol.clone(),
                            tmp: tmp.clone(),
                            snapshot: snapshot.clone(),
                        },
                    ),
                    (true, true) => self.interrupted(
                        op,
                        RecoveryStep::DeleteOtherCopy {
                            subvol: subvol.clone(),
                            tmp: tmp.clone(),
                        },
                    ),
                    _ => self.ambiguous(op, format!("workspace subvolume {} present: {subvol_present}, rollback copy {} present: {tmp_present}", subvol.display(), tmp.display())),
                }
            }
            PendingKind::DeleteSnapshots { ws_id, snapshots } => self.interrupted(
                op,
                RecoveryStep::FinishDeleting {
                    ws_id: ws_id.clone(),
                    snapshots: snapshots.clone(),
                },
            ),
            PendingKind::MigrateImage { .. } | PendingKind::GrowImage { .. } => {}
        }
    }
}
