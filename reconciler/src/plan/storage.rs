//! Storage rules (SPEC §7.3, issue 10): private storage directories, each workspace behind its
//! gates with exactly the access the config grants, the migration of earlier layouts into the
//! gates, the binding of each workspace path to the directory recorded at init, the backoff of
//! failing actions, and the report of everything ws-ckpt made that no record explains
//! (`orphan`).

use super::{Action, Planner};
use crate::access::{AclObs, DirObs, GateAccess};
use crate::config::DeclState;
use crate::finding::{Finding, FindingKind, Severity};
use crate::ids;
use crate::model::{PathState, StorageView};
use crate::resolve::{rollback_tmp_op, ROOT_DIR_MODE};
use crate::state::{PendingKind, WorkspaceEntry};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What the planner may do at a workspace path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathAccess {
    /// The directory holding it is the recorded one (or none is recorded yet and it was
    /// reached without a symlink): the path may be repaired, released, adopted.
    Bound,
    /// It is not: nothing is done at the path (a finding says why).
    Refused,
}

impl Planner<'_> {
    /// Push `a`, unless it failed recently and is backing off (then report it instead).
    pub(super) fn act_or_back_off(&mut self, a: Action) {
        let key = a.failure_key();
        let failing = self
            .persisted
            .state
            .as_ref()
            .and_then(|s| s.failures.iter().find(|f| f.key == key));
        let Some(f) = failing else {
            self.plan.actions.push(a);
            return;
        };
        let waiting = f.retry_at.time().is_some_and(|t| t > self.now);
        let what = match a.path() {
            Some(p) => format!("`{}` of {}", a.name(), p.display()),
            None => format!("`{}`", a.describe()),
        };
        let retry = if waiting {
            format!(
                "it is retried after {} (passes until then skip it)",
                f.retry_at.as_str()
            )
        } else {
            "it is retried now".to_string()
        };
        let mut finding = Finding::new(
            FindingKind::ActionFailing,
            Severity::Error,
            format!(
                "{what} failed {} time(s) in a row, last at {}: {}; {retry}",
                f.failures, f.last_failed_at, f.error
            ),
            "fix the cause named in the error; `ws-ckpt apply` retries at once".to_string(),
        );
        finding.ws_id = a.ws_id().map(str::to_string);
        finding.path = a.path().map(Path::to_path_buf);
        self.find(finding);
        if !waiting || self.opts.retry_failed {
            self.plan.actions.push(a);
        } else {
            self.plan.backing_off.push(key);
        }
    }

    /// data_root, its gates directory and snapshots_root: root's, mode 0711.
    pub(super) fn storage_roots(&mut self, view: &StorageView) {
        let wrong: Vec<PathBuf> = view
            .roots
            .iter()
            .filter(|(_, o)| {
                !o.as_ref()
                    .is_some_and(|o| o.uid == self.obs.own_ids.0 && o.mode == ROOT_DIR_MODE)
            })
            .map(|(p, _)| p.clone())
            .collect();
        if !wrong.is_empty() {
            self.act(Action::SecureStorage { dirs: wrong });
        }
    }

    /// Whether the directory holding `w`'s path is the one recorded; findings when not, and
    /// the record of it for a workspace recorded without one (once reached safely, with the
    /// path being the workspace symlink).
    pub(super) fn path_access(&mut self, w: &WorkspaceEntry, expected: &Path) -> PathAccess {
        let path = &w.workspace_path;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Some(obs) = self.obs.parent_of(path) else {
            return PathAccess::Bound;
        };
        match (&w.parent, &obs.found) {
            (Some(rec), Ok(now)) if rec.matches(now) => PathAccess::Bound,
            (Some(rec), Ok(now)) => {
                self.parent_replaced(
                    w,
                    format!(
                        "{} is another directory than the one recorded when it became a workspace (was {}, owner uid {}; now {}, owner uid {})",
                        parent.display(),
                        ident(rec.dev, rec.ino),
                        rec.uid,
                        ident(now.dev, now.ino),
                        now.uid
                    ),
                );
                PathAccess::Refused
            }
            (_, Err(why)) => {
                if matches!(self.obs.path(path), PathState::Missing) && why.contains("No such file")
                {
                    // The whole directory is gone: nothing can be created there either.
                    self.parent_replaced(w, format!("{} does not exist", parent.display()));
                } else {
                    self.parent_replaced(
                        w,
                        format!(
                            "{} cannot be opened without following a symlink ({why})",
                            parent.display()
                        ),
                    );
                }
                PathAccess::Refused
            }
            (None, Ok(now)) => {
                let is_link = matches!(self.obs.path(path), PathState::Symlink { target, .. } if target == expected);
                if is_link {
                    self.act(Action::RecordParent {
                        ws_id: w.ws_id.clone(),
                        path: path.clone(),
                        parent: *now,
                    });
                }
                PathAccess::Bound
            }
        }
    }

    fn parent_replaced(&mut self, w: &WorkspaceEntry, what: String) {
        let path = &w.workspace_path;
        self.find(
            Finding::new(
                FindingKind::ParentReplaced,
                Severity::Error,
                format!(
                    "workspace {} ({}): {what}; ws-ckpt creates, repairs and releases nothing there until it is back",
                    w.ws_id,
                    path.display()
                ),
                format!(
                    "put the original directory back at {} (the workspace data is intact in its subvolume), then run `ws-ckpt apply`",
                    path.parent().unwrap_or(Path::new("/")).display()
                ),
            )
            .ws(&w.ws_id, path),
        );
    }

    /// What `w`'s gates must grant: its owner (recorded, or the owner of its subvolume for a
    /// workspace recorded without one), `allow_users` and `allow_groups` of its declaration,
    /// and others' search permission when its original was reachable by them.
    pub(super) fn desired_access(&self, w: &WorkspaceEntry, view: &StorageView) -> GateAccess {
        let owner = w
            .owner_uid
            .or_else(|| view.subvol_owner.get(&w.ws_id).copied())
            .filter(|u| *u != self.obs.own_ids.0);
        let mut users: BTreeSet<u32> = owner.into_iter().collect();
        let mut groups = BTreeSet::new();
        if let Some(d) = self.config.workspace(&w.workspace_path) {
            for u in &d.allow_users {
                if let Some(Some(uid)) = self.obs.accounts.users.get(u) {
                    users.insert(*uid);
                }
            }
            for g in &d.allow_groups {
                if let Some(Some(gid)) = self.obs.accounts.groups.get(g) {
                    groups.insert(*gid);
                }
            }
        }
        GateAccess {
            users,
            groups,
            others_search: self.others_search(w),
        }
    }

    fn others_search(&self, w: &WorkspaceEntry) -> bool {
        w.others_search.unwrap_or_else(|| {
            self.obs
                .parent_of(&w.workspace_path)
                .is_some_and(|p| p.others_search)
        })
    }

    /// Keep `w`'s gates as [`Planner::desired_access`] says.
    pub(super) fn gate_access(&mut self, w: &WorkspaceEntry, view: &StorageView) {
        let access = self.desired_access(w, view);
        let gate = view.gates.get(&w.ws_id);
        let snaps = view.snapshot_gates.get(&w.ws_id);
        let unsupported = [gate, snaps]
            .iter()
            .any(|o| o.is_some_and(|o| o.acl == AclObs::Unsupported));
        let form = if unsupported {
            let gid = w
                .owner_uid
                .filter(|u| *u != self.obs.own_ids.0)
                .and_then(|u| self.obs.accounts.primary_gid.get(&u).copied().flatten());
            let f = access.without_acl(gid, self.obs.own_ids);
            self.find(
                Finding::new(
                    FindingKind::AclUnsupported,
                    Severity::Warning,
                    format!(
                        "the filesystem of {} does not support POSIX ACLs: the storage gates of workspace {} are group-owned by gid {} (its owner's primary group), mode {:04o}; allow_users and allow_groups cannot reach its files through the mount",
                        self.res.mount.display(),
                        w.ws_id,
                        f.gid,
                        f.mode
                    ),
                    "mount the btrfs filesystem with ACL support (the default; remove `noacl`)".to_string(),
                )
                .ws(&w.ws_id, &w.workspace_path),
            );
            f
        } else {
            access.with_acl(self.obs.own_ids)
        };
        let wrong = |o: Option<&DirObs>| !o.is_some_and(|o| GateAccess::is_written(&form, o));
        let mut gates = Vec::new();
        if wrong(gate) {
            gates.push(self.res.gate(&w.ws_id));
        }
        if wrong(snaps) {
            gates.push(self.res.snap_dir(&w.ws_id));
        }
        let record = w.others_search.is_none().then(|| self.others_search(w));
        if !gates.is_empty() || record.is_some() {
            self.act(Action::SetStorageAccess {
                ws_id: w.ws_id.clone(),
                path: w.workspace_path.clone(),
                gates,
                form,
                record_others_search: record,
            });
        }
    }

    /// Everything under ws-ckpt's storage, and every temporary name beside a user path, that
    /// ws-ckpt made and that no record explains: one `orphan` finding each, with the command
    /// that removes it or what adopts it.
    pub(super) fn orphans(&mut self, view: &StorageView) {
        let state = self.persisted.state.as_ref();
        let recorded: BTreeSet<&str> = state
            .map(|s| s.workspaces.iter().map(|w| w.ws_id.as_str()).collect())
            .unwrap_or_default();
        let mut pending_ws: BTreeSet<String> = BTreeSet::new();
        let mut pending_ops: BTreeSet<String> = BTreeSet::new();
        let mut pending_paths: BTreeSet<PathBuf> = BTreeSet::new();
        for op in self.persisted.pending() {
            pending_ops.insert(op.op_id.clone());
            if let Some(ws) = op.kind.ws_id() {
                pending_ws.insert(ws.to_string());
            }
            match &op.kind {
                PendingKind::Init { tmp, subvol, .. }
                | PendingKind::Release { tmp, subvol, .. } => {
                    pending_paths.insert(tmp.clone());
                    pending_paths.insert(subvol.clone());
                }
                PendingKind::Rollback { tmp, .. } => {
                    pending_paths.insert(tmp.clone());
                }
                _ => {}
            }
        }
        if state.is_some_and(|s| s.undecodable_pending().next().is_some()) {
            // An operation this version cannot read may own anything: report nothing.
            return;
        }
        // Adoptable: declared present, or known from an index.
        let adoptable = |id: &str| {
            self.persisted.indexes.contains_key(id)
                || self.config.workspaces.iter().any(|d| {
                    d.state == DeclState::Present
                        && d.id
                            .as_deref()
                            .map_or_else(|| ids::derive_ws_id(&d.path) == id, |x| x == id)
                })
        };
        let known = |id: &str| recorded.contains(id) || pending_ws.contains(id);
        for name in &view.legacy_subvols {
            let p = self.res.legacy_ws_subvol(name);
            if pending_paths.contains(&p) {
                continue;
            }
            if let Some(rest) = name.strip_prefix('.') {
                // `.<ws_id>.rollback-<op>`: an earlier layout's rollback copy.
                let op = rest.split_once(".rollback-").map(|(_, op)| op);
                if op.is_some_and(|op| !pending_ops.contains(op)) {
                    self.orphan(
                        &p,
                        "a rollback's writable copy of a workspace (earlier layout) that no interrupted operation records",
                        format!("delete it: `btrfs subvolume delete {}`", p.display()),
                    );
                }
                continue;
            }
            if !ids::is_valid_ws_id(name) || known(name) || adoptable(name) {
                continue;
            }
            self.orphan(
                &p,
                "a workspace subvolume (earlier layout) that no workspace records",
                format!(
                    "to keep it, declare its workspace (a [[workspace]] with `id = \"{name}\"` whose path is missing or a symlink to it) and run `ws-ckpt reload` (`ws-ckpt apply` when no daemon runs), which adopts it; to drop it: `btrfs subvolume delete {}`",
                    p.display()
                ),
            );
        }
        for ws_id in view.gates.keys() {
            let gate = self.res.gate(ws_id);
            let has_live = view.workspace_subvols.contains(ws_id);
            if !(known(ws_id) || has_live && adoptable(ws_id)) {
                let (what, fix) = if has_live {
                    (
                        "the storage gate of a workspace that no record explains, holding its subvolume",
                        format!(
                            "to keep it, declare its workspace (a [[workspace]] with `id = \"{ws_id}\"` whose path is missing or a symlink to {}) and run `ws-ckpt reload` (`ws-ckpt apply` when no daemon runs), which adopts it; to drop it: `btrfs subvolume delete {} && rmdir {}`",
                            self.res.ws_subvol(ws_id).display(),
                            self.res.ws_subvol(ws_id).display(),
                            gate.display()
                        ),
                    )
                } else {
                    (
                        "the storage gate of a workspace that no record explains",
                        format!("remove it: `rmdir {}`", gate.display()),
                    )
                };
                if view.gate_extra.get(ws_id).is_none_or(|e| e.is_empty()) {
                    self.orphan(&gate, what, fix);
                    continue;
                }
            }
            for (name, is_sub) in view.gate_extra.get(ws_id).into_iter().flatten() {
                let p = gate.join(name);
                if pending_paths.contains(&p) {
                    continue;
                }
                match (rollback_tmp_op(name), is_sub) {
                    (Some(op), _) if pending_ops.contains(op) => {}
                    (Some(_), true) => self.orphan(
                        &p,
                        "a rollback's writable copy of the workspace that no interrupted operation records",
                        format!("delete it: `btrfs subvolume delete {}`", p.display()),
                    ),
                    (_, true) => self.orphan(
                        &p,
                        "a subvolume in a storage gate that ws-ckpt does not know",
                        format!("move it out or delete it: `btrfs subvolume delete {}`", p.display()),
                    ),
                    (_, false) => self.orphan(
                        &p,
                        "an entry in a storage gate that ws-ckpt does not know",
                        format!("move it out or remove it (`rm -r {}`)", p.display()),
                    ),
                }
            }
        }
        for (ws_id, snaps) in &view.snapshots {
            if known(ws_id) || adoptable(ws_id) || !ids::is_valid_ws_id(ws_id) {
                continue;
            }
            if view.v0_indexes.contains_key(ws_id) {
                continue;
            }
            let dir = self.res.snap_dir(ws_id);
            let fix = if snaps.is_empty() {
                format!("remove it: `rmdir {}`", dir.display())
            } else {
                format!(
                    "to keep them, declare the workspace (`id = \"{ws_id}\"`) and run `ws-ckpt reload` (`ws-ckpt apply` when no daemon runs), which adopts them; to drop them: `btrfs subvolume delete {}/* && rmdir {}`",
                    dir.display(),
                    dir.display()
                )
            };
            self.orphan(
                &dir,
                &format!(
                    "the snapshot directory of a workspace that no record explains ({} snapshot(s))",
                    snaps.len()
                ),
                fix,
            );
        }
        let parents: Vec<(PathBuf, Vec<std::ffi::OsString>)> = self
            .obs
            .parents
            .iter()
            .map(|(p, o)| (p.clone(), o.temp_names.iter().cloned().collect()))
            .collect();
        for (dir, names) in parents {
            for n in names {
                let p = dir.join(&n);
                if pending_paths.contains(&p) {
                    continue;
                }
                let tag = crate::tree::names::parse_temp_name(&n)
                    .map(|t| t.tag)
                    .unwrap_or_default();
                self.orphan(
                    &p,
                    &format!(
                        "a temporary entry ws-ckpt made beside a workspace path (`{tag}`) that no interrupted operation records; it may hold data"
                    ),
                    format!(
                        "look inside, keep what you need, then remove it: `rm -r '{}'`",
                        p.display()
                    ),
                );
            }
        }
    }

    fn orphan(&mut self, p: &Path, what: &str, fix: String) {
        let mut f = Finding::new(
            FindingKind::Orphan,
            Severity::Warning,
            format!("{} is {what}", p.display()),
            fix,
        );
        f.path = Some(p.to_path_buf());
        self.find(f);
    }
}

fn ident(dev: u64, ino: u64) -> String {
    format!("dev {dev:#x} inode {ino}")
}
