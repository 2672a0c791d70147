//! Backend rules (SPEC §4 rules 1-3): migrate the pre-FHS image, bootstrap (create, attach,
//! mount, record), grow the image, and report unavailable storage per workspace.

use super::{human_bytes, Action, Planner};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::StorageView;
use crate::resolve::{image_creation_bytes, image_target_bytes};
use crate::state::SelectionMethod;
use std::collections::BTreeSet;
use std::path::Path;

impl Planner<'_> {
    /// Backend rules. Returns true when storage is mounted and ready for workspace planning.
    pub(super) fn backend(&mut self) -> bool {
        let res = self.res;
        let state = self.persisted.state.as_ref();
        let recorded = state.map(|s| s.workspaces.len()).unwrap_or(0);
        let mut create_image_bytes = None;
        let mut image_target = None;
        if let Some(image) = &res.image {
            let lcfg = &self.config.backend.btrfs_loop;
            match (&self.obs.image, &self.obs.legacy_image) {
                (None, Some(_)) if lcfg.legacy_image != *image => {
                    self.act(Action::MigrateImagePath {
                        from: lcfg.legacy_image.clone(),
                        to: image.clone(),
                    });
                }
                (Some(_), Some(_)) if lcfg.legacy_image != *image => {
                    self.find(Finding::new(
                        FindingKind::Ambiguous,
                        Severity::Warning,
                        format!("both the pre-FHS image {} and {} exist; ws-ckpt uses the new one and leaves the old one alone", lcfg.legacy_image.display(), image.display()),
                        format!("check which holds your data; remove {} once it is no longer needed", lcfg.legacy_image.display()),
                    ));
                }
                (None, None) => {
                    if recorded > 0 {
                        self.storage_unavailable(&format!(
                            "the loop image {} is missing",
                            image.display()
                        ));
                        return false;
                    }
                    let host = self.obs.image_host_usage.as_ref();
                    create_image_bytes = Some(image_creation_bytes(self.config, host));
                    image_target = Some(image_target_bytes(self.config, host));
                }
                _ => {}
            }
        }
        let mounted = self.obs.storage.is_some();
        let view = self.obs.storage.as_ref();
        let record_differs = match state {
            None => true,
            Some(s) => {
                s.backend.backend_type != res.backend_type
                    || s.paths.mount_path != res.mount
                    || s.paths.data_root != res.data_root
                    || s.paths.snapshots_root != res.snapshots_root
                    || s.paths.loop_img.as_ref().map(|l| &l.img_path) != res.image.as_ref()
                    || (matches!(
                        res.selection_method,
                        SelectionMethod::Config | SelectionMethod::ConfigOverride
                    ) && s.backend.selection_method != res.selection_method)
            }
        };
        let dirs_missing = view.is_some_and(|v| !v.data_root_exists || !v.snapshots_root_exists);
        if !mounted || record_differs || dirs_missing || create_image_bytes.is_some() {
            self.act(Action::BootstrapBackend {
                backend_type: res.backend_type,
                selection_method: res.selection_method,
                mount: res.mount.clone(),
                data_root: res.data_root.clone(),
                snapshots_root: res.snapshots_root.clone(),
                image: res.image.clone(),
                create_image_bytes,
                image_target_bytes: image_target,
                mount_needed: !mounted,
            });
        }
        if !mounted {
            if create_image_bytes.is_some() {
                // A brand-new, empty filesystem: every declared workspace will be initialized.
                let empty = StorageView {
                    data_root_exists: true,
                    snapshots_root_exists: true,
                    ..Default::default()
                };
                self.declared_workspaces(&empty, &BTreeSet::new());
            }
            return false;
        }
        if let (Some(image), Some(info), Some(s)) = (&res.image, &self.obs.image, state) {
            self.grow(image, info.size, s);
        }
        true
    }

    pub(super) fn grow(&mut self, image: &Path, current: u64, state: &crate::state::StateFile) {
        let target = image_target_bytes(self.config, self.obs.image_host_usage.as_ref());
        let recorded_target = state
            .paths
            .loop_img
            .as_ref()
            .and_then(|l| l.img_target_bytes);
        let wanted_growth = match recorded_target {
            Some(r) => target > r,
            None => true,
        };
        if target > current && wanted_growth {
            self.act(Action::GrowImage {
                image: image.to_path_buf(),
                from_bytes: current,
                to_bytes: target,
            });
        } else if target < current && recorded_target.is_some_and(|r| target < r) {
            self.find(Finding::new(
                FindingKind::ImageShrinkRefused,
                Severity::Info,
                format!(
                    "the config asks for a {} image but {} is {}; ws-ckpt never shrinks an image",
                    human_bytes(target),
                    image.display(),
                    human_bytes(current)
                ),
                "raise img_size/img_max_percent again, or leave it: the image keeps its size"
                    .to_string(),
            ));
        }
    }

    /// Per-workspace storage-unavailable findings (SPEC §4 rule 3).
    pub(super) fn storage_unavailable(&mut self, why: &str) {
        let Some(state) = &self.persisted.state else {
            return;
        };
        for w in &state.workspaces {
            let n = self
                .persisted
                .indexes
                .get(&w.ws_id)
                .map(|i| i.snapshots.len())
                .unwrap_or(0);
            let f = Finding::new(
                FindingKind::StorageUnavailable,
                Severity::Error,
                format!(
                    "workspace {} ({}) is unavailable: {why}; expected subvolume {}, {n} snapshot(s) recorded",
                    w.ws_id,
                    w.workspace_path.display(),
                    self.res.ws_subvol(&w.ws_id).display()
                ),
                "restore the image or mount the filesystem; the next pass picks it up by itself. Nothing was deleted".to_string(),
            )
            .ws(&w.ws_id, &w.workspace_path);
            self.find(f);
        }
    }
}
