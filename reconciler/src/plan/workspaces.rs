//! Workspace rules (SPEC §4 rules 4-8): legacy migrations, recorded workspaces (storage,
//! symlinks, release, snapshots, retention, nesting, advisories) and declared workspaces
//! (adopt or initialize, with the init guards).

use super::{
    init_guard, retention_deletions, Action, MigratedWorkspace, Planner, ADVISORY_FS_PERCENT,
    ADVISORY_SNAPSHOT_COUNT,
};
use crate::config::{DeclState, WorkspaceDecl};
use crate::finding::{Finding, FindingKind, Severity};
use crate::ids;
use crate::model::{PathState, StorageView};
use crate::state::PendingKind;
use crate::state::WorkspaceIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

impl Planner<'_> {
    /// Legacy data. Returns true when a migration must run before anything else is planned.
    pub(super) fn migrations(&mut self, view: &StorageView) -> bool {
        let state = self.persisted.state.as_ref();
        let recorded: BTreeSet<&str> = state
            .map(|s| s.workspaces.iter().map(|w| w.ws_id.as_str()).collect())
            .unwrap_or_default();
        let v0: Vec<MigratedWorkspace> = view
            .v0_indexes
            .iter()
            .filter(|(id, _)| {
                !recorded.contains(id.as_str()) && !self.persisted.indexes.contains_key(*id)
            })
            .filter(|(id, _)| ids::is_valid_ws_id(id))
            .map(|(id, idx)| MigratedWorkspace {
                ws_id: id.clone(),
                path: idx.workspace_path.clone(),
                snapshots: idx.snapshots.len(),
            })
            .collect();
        if !v0.is_empty() {
            self.act(Action::MigrateV0Indexes { workspaces: v0 });
            return true;
        }
        if let Some(s) = state {
            if !s.config_declared {
                let undeclared: Vec<MigratedWorkspace> = s
                    .workspaces
                    .iter()
                    .filter(|w| self.config.workspace(&w.workspace_path).is_none())
                    .map(|w| MigratedWorkspace {
                        ws_id: w.ws_id.clone(),
                        path: w.workspace_path.clone(),
                        snapshots: self
                            .persisted
                            .indexes
                            .get(&w.ws_id)
                            .map(|i| i.snapshots.len())
                            .unwrap_or(0),
                    })
                    .collect();
                self.act(Action::DeclareMigrated {
                    workspaces: undeclared,
                });
                return true;
            }
        }
        false
    }

    pub(super) fn recorded_workspaces(&mut self, view: &StorageView, busy: &BTreeSet<String>) {
        let Some(state) = self.persisted.state.as_ref() else {
            return;
        };
        for w in &state.workspaces {
            if busy.contains(&w.ws_id) {
                continue;
            }
            let ws_id = &w.ws_id;
            let path = &w.workspace_path;
            let expected = self.res.ws_subvol(ws_id);
            let empty_index = WorkspaceIndex::new(path.clone());
            let index = self
                .persisted
                .indexes
                .get(ws_id)
                .map_or(&empty_index, |i| &**i);
            if !view.workspace_subvols.contains(ws_id) {
                let f = Finding::new(
                    FindingKind::StorageUnavailable,
                    Severity::Error,
                    format!(
                        "workspace {ws_id} ({}) is unavailable: its subvolume {} is missing on {} ; {} snapshot(s) recorded",
                        path.display(),
                        expected.display(),
                        if view.device.is_empty() { "the backend".to_string() } else { view.device.clone() },
                        index.snapshots.len()
                    ),
                    "restore the subvolume (e.g. from a snapshot with `btrfs subvolume snapshot`), or release the workspace with `ws-ckpt release`".to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
                continue;
            }
            let decl = self.config.workspace(path);
            let mut detached = false;
            match self.obs.path(path) {
                PathState::Symlink { target, .. } if *target == expected => {}
                PathState::Missing => self.act(Action::RepairSymlink {
                    ws_id: ws_id.clone(),
                    path: path.clone(),
                    target: expected.clone(),
                }),
                PathState::Symlink {
                    target_exists: false,
                    ..
                } => self.act(Action::RepairSymlink {
                    ws_id: ws_id.clone(),
                    path: path.clone(),
                    target: expected.clone(),
                }),
                other => {
                    detached = true;
                    let what = match other {
                        PathState::Dir { .. } => "a real directory".to_string(),
                        PathState::Symlink { target, .. } => {
                            format!("a symlink to {}", target.display())
                        }
                        _ => "a file".to_string(),
                    };
                    let f = Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("workspace {ws_id} is detached: {} is {what}, not the symlink to {}; ws-ckpt will not overwrite it", path.display(), expected.display()),
                        format!("move {} aside, then run `ws-ckpt apply` to restore the symlink (the workspace data is intact in {})", path.display(), expected.display()),
                    )
                    .ws(ws_id, path);
                    self.find(f);
                }
            }
            match decl.map(|d| d.state) {
                Some(DeclState::Absent) if !detached => {
                    self.act(Action::ReleaseWorkspace {
                        ws_id: ws_id.clone(),
                        path: path.clone(),
                    });
                    continue;
                }
                Some(_) => {}
                None if self.opts.prune && !detached => {
                    self.act(Action::ReleaseWorkspace {
                        ws_id: ws_id.clone(),
                        path: path.clone(),
                    });
                    continue;
                }
                None => {
                    let f = Finding::new(
                        FindingKind::UndeclaredWorkspace,
                        Severity::Warning,
                        format!("workspace {ws_id} ({}) is recorded but declared in no config file", path.display()),
                        format!("declare it (`ws-ckpt init {}`), set state = \"absent\" to release it, or run `ws-ckpt apply --prune`", path.display()),
                    )
                    .ws(ws_id, path);
                    self.find(f);
                }
            }
            self.snapshots(ws_id, index, view);
            if let Some(d) = decl {
                if self.config.effective_auto_cleanup(d) {
                    let del = retention_deletions(index, self.config.effective_keep(d), self.now);
                    if !del.is_empty() {
                        self.act(Action::ApplyRetention {
                            ws_id: ws_id.clone(),
                            delete: del,
                        });
                    }
                }
            }
            if let Some(nested) = view.nested.get(ws_id) {
                let list: Vec<String> = nested.iter().map(|p| p.display().to_string()).collect();
                let f = Finding::new(
                    FindingKind::NestedSubvolume,
                    Severity::Warning,
                    format!(
                        "workspace {ws_id} ({}) contains the subvolume(s) {}: snapshots and rollbacks do not include their contents",
                        path.display(),
                        list.join(", ")
                    ),
                    "turn them into plain directories (copy the data out, `btrfs subvolume delete`, copy back) if they should be checkpointed".to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
            }
            if index.snapshots.len() > ADVISORY_SNAPSHOT_COUNT {
                let f = Finding::new(
                    FindingKind::AdvisorySnapshotCount,
                    Severity::Info,
                    format!("workspace {ws_id} has {} snapshots", index.snapshots.len()),
                    "enable retention (`auto_cleanup = true`, `keep = N`) or run `ws-ckpt cleanup`"
                        .to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
            }
        }
    }

    pub(super) fn snapshots(&mut self, ws_id: &str, index: &WorkspaceIndex, view: &StorageView) {
        let empty = BTreeSet::new();
        let on_disk = view.snapshots.get(ws_id).unwrap_or(&empty);
        let mut mark = Vec::new();
        let mut clear = Vec::new();
        for (id, e) in &index.snapshots {
            let present = on_disk.contains(id);
            if !present && !e.missing {
                mark.push(id.clone());
            } else if present && e.missing {
                clear.push(id.clone());
            }
        }
        let adopt: Vec<String> = on_disk
            .iter()
            .filter(|id| !index.snapshots.contains_key(*id) && ids::is_valid_snapshot_id(id))
            .cloned()
            .collect();
        if !mark.is_empty() {
            self.act(Action::MarkMissing {
                ws_id: ws_id.to_string(),
                snapshots: mark,
            });
        }
        if !clear.is_empty() {
            self.act(Action::ClearMissing {
                ws_id: ws_id.to_string(),
                snapshots: clear,
            });
        }
        if !adopt.is_empty() {
            self.act(Action::AdoptSnapshot {
                ws_id: ws_id.to_string(),
                snapshots: adopt,
            });
        }
    }

    pub(super) fn declared_workspaces(&mut self, view: &StorageView, busy: &BTreeSet<String>) {
        let state = self.persisted.state.as_ref();
        let mut taken: BTreeMap<String, PathBuf> = state
            .map(|s| {
                s.workspaces
                    .iter()
                    .map(|w| (w.ws_id.clone(), w.workspace_path.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for op in self.persisted.pending() {
            if let PendingKind::Init { ws_id, path, .. } = &op.kind {
                taken.insert(ws_id.clone(), path.clone());
            }
        }
        let mut others: Vec<PathBuf> = taken.values().cloned().collect();
        others.extend(
            self.config
                .workspaces
                .iter()
                .filter(|w| w.state == DeclState::Present)
                .map(|w| w.path.clone()),
        );
        // Unrecorded workspaces known from the indexes (state.json lost or rebuilt).
        let mut candidates: Vec<(Option<&WorkspaceDecl>, PathBuf, Option<String>)> = Vec::new();
        for d in self
            .config
            .workspaces
            .iter()
            .filter(|d| d.state == DeclState::Present)
        {
            candidates.push((Some(d), d.path.clone(), d.id.clone()));
        }
        for (id, idx) in &self.persisted.indexes {
            if !taken.contains_key(id) && self.config.workspace(&idx.workspace_path).is_none() {
                candidates.push((None, idx.workspace_path.clone(), Some(id.clone())));
            }
        }
        for (decl, path, explicit_id) in candidates {
            if taken.values().any(|p| *p == path) {
                continue;
            }
            let ws_id = explicit_id.clone().unwrap_or_else(|| {
                // An index already kept for this path (lost state.json) names its ID.
                self.persisted
                    .indexes
                    .iter()
                    .find(|(id, i)| i.workspace_path == path && !taken.contains_key(*id))
                    .map(|(id, _)| id.clone())
                    .unwrap_or_else(|| ids::allocate_ws_id(&path, |id| taken.contains_key(id)))
            });
            if busy.contains(&ws_id) {
                continue;
            }
            if taken.contains_key(&ws_id) {
                self.find(
                    Finding::new(
                        FindingKind::InvalidPath,
                        Severity::Error,
                        format!(
                            "id {ws_id} declared for {} is already used by {}",
                            path.display(),
                            taken[&ws_id].display()
                        ),
                        "choose another `id` or remove it to derive one from the path".to_string(),
                    )
                    .ws(&ws_id, &path),
                );
                continue;
            }
            taken.insert(ws_id.clone(), path.clone());
            let expected = self.res.ws_subvol(&ws_id);
            let subvol = view.workspace_subvols.contains(&ws_id);
            let other_refs: Vec<&Path> = others.iter().map(PathBuf::as_path).collect();
            let state_dir = &self.config.daemon.state_dir;
            let st = self.obs.path(&path).clone();
            match (&st, subvol) {
                (PathState::Symlink { target, .. }, true) if *target == expected => {
                    self.act(Action::AdoptWorkspace {
                        ws_id,
                        path,
                        create_symlink: false,
                    });
                }
                (PathState::Missing, true) => self.act(Action::AdoptWorkspace {
                    ws_id,
                    path,
                    create_symlink: true,
                }),
                _ if decl.is_none() => {}
                (PathState::Dir { .. }, true) => self.find(
                    Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("{} is a real directory but an unrecorded workspace subvolume {} exists for it; ws-ckpt keeps both", path.display(), expected.display()),
                        format!("compare them; to keep the subvolume move {} aside and run `ws-ckpt apply`; to keep the directory, move the subvolume away", path.display()),
                    )
                    .ws(&ws_id, &path),
                ),
                (PathState::Dir { .. }, false) | (PathState::Missing, false) => {
                    if let Some(why) = init_guard(&path, self.res, state_dir, &other_refs) {
                        self.find(
                            Finding::new(
                                FindingKind::InvalidPath,
                                Severity::Error,
                                format!("cannot make a workspace of {}: {why}", path.display()),
                                "remove this [[workspace]] from the config or choose another directory".to_string(),
                            )
                            .ws(&ws_id, &path),
                        );
                    } else {
                        self.act(Action::InitWorkspace { ws_id, path });
                    }
                }
                _ => self.find(
                    Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("{} is {:?}, not a directory ws-ckpt can turn into a workspace", path.display(), st),
                        format!("move {} aside or fix the declared path", path.display()),
                    )
                    .ws(&ws_id, &path),
                ),
            }
        }
    }

    pub(super) fn advisories(&mut self, view: &StorageView) {
        let pct = view.usage.used_percent();
        if pct > ADVISORY_FS_PERCENT {
            self.find(Finding::new(
                FindingKind::AdvisoryFsUsage,
                Severity::Warning,
                format!(
                    "the filesystem at {} is {pct}% full",
                    self.res.mount.display()
                ),
                "delete old snapshots (`ws-ckpt cleanup`) or raise img_size".to_string(),
            ));
        }
    }
}
