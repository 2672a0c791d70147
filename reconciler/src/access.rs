//! Who may reach a workspace's storage through the mount (SPEC §7.3, "as private as the
//! original"): the access a workspace's **gates** grant, and the POSIX ACL that encodes it.
//!
//! A gate is a root-owned directory, mode 0700, that holds a workspace's subvolume (its data
//! gate, `<data_root>/gates/<ws_id>`) or its snapshots (its snapshot gate,
//! `<snapshots_root>/<ws_id>`). Root-owned, so nobody but root can rename or replace what is in
//! it; 0700, so nobody else can even search it — except the users and groups its access ACL
//! (`system.posix_acl_access`) names: the owner, each `allow_users` user and each
//! `allow_groups` group get `r-x`. When every ancestor of the original directory was
//! world-searchable, others could reach it before it became a workspace, so the gate lets them
//! search (`--x`) too: never less private than before. (Group-only searchability is not
//! carried over: a group that could reach the original only through group permissions of its
//! ancestors loses that path through the mount unless it is named in `allow_groups`.)
//!
//! On a filesystem without ACL support the most restrictive gate that still lets the owner in
//! is used: group-owned by the owner's primary group, mode 0750 (0751 with `--x` for others);
//! `allow_users`/`allow_groups` then have no access through the mount and a finding says so.
//!
//! Pure: encoding, decoding and comparison only. Observation reads the gates, the planner
//! decides, the executor writes (`execute::gates`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Name of the access-ACL extended attribute.
pub const ACL_XATTR: &std::ffi::CStr = c"system.posix_acl_access";

const ACL_VERSION: u32 = 2;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
const R_X: u16 = 0o5;
const X: u16 = 0o1;
const RWX: u16 = 0o7;

/// What a gate grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateAccess {
    /// Users granted `r-x` (the owner and `allow_users`).
    pub users: BTreeSet<u32>,
    /// Groups granted `r-x` (`allow_groups`).
    pub groups: BTreeSet<u32>,
    /// Everyone else may search it (`--x`).
    pub others_search: bool,
}

/// How a gate is to be written on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateForm {
    /// Owner (always root).
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits as `stat` shows them once the ACL is set.
    pub mode: u32,
    /// The access ACL (`system.posix_acl_access`), when the gate needs named entries.
    pub acl: Option<Vec<u8>>,
}

/// An observed gate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirObs {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Its access ACL.
    pub acl: AclObs,
}

/// What the access ACL of a directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclObs {
    /// None is set (the mode says everything).
    None,
    /// This one (raw xattr value).
    Set(Vec<u8>),
    /// The filesystem does not support ACLs.
    Unsupported,
    /// It could not be read (error text).
    Unreadable(String),
}

impl GateAccess {
    /// The gate as written with ACL support, owned by `own` (ws-ckpt's own uid and gid:
    /// root's in production), which needs no entry of its own.
    pub fn with_acl(&self, own: (u32, u32)) -> GateForm {
        let other = if self.others_search { X } else { 0 };
        let users: Vec<u32> = self.users.iter().copied().filter(|u| *u != own.0).collect();
        if users.is_empty() && self.groups.is_empty() {
            return GateForm {
                uid: own.0,
                gid: own.1,
                mode: 0o700 | u32::from(other),
                acl: None,
            };
        }
        let mut entries = vec![(TAG_USER_OBJ, RWX, u32::MAX)];
        entries.extend(users.iter().map(|u| (TAG_USER, R_X, *u)));
        entries.push((TAG_GROUP_OBJ, 0, u32::MAX));
        entries.extend(self.groups.iter().map(|g| (TAG_GROUP, R_X, *g)));
        entries.push((TAG_MASK, R_X, u32::MAX));
        entries.push((TAG_OTHER, other, u32::MAX));
        GateForm {
            uid: own.0,
            gid: own.1,
            mode: 0o700 | (u32::from(R_X) << 3) | u32::from(other),
            acl: Some(encode(&entries)),
        }
    }

    /// The gate without ACL support: group-owned by `owner_gid` (the owner's primary group),
    /// `r-x` for that group; only `own` when there is no owner to let in (root's workspace).
    pub fn without_acl(&self, owner_gid: Option<u32>, own: (u32, u32)) -> GateForm {
        let other = if self.others_search { 0o1 } else { 0 };
        match owner_gid {
            Some(gid) => GateForm {
                uid: own.0,
                gid,
                mode: 0o750 | other,
                acl: None,
            },
            None => GateForm {
                uid: own.0,
                gid: own.1,
                mode: 0o700 | other,
                acl: None,
            },
        }
    }

    /// Whether the observed directory is exactly the gate `form` describes.
    pub fn is_written(form: &GateForm, obs: &DirObs) -> bool {
        let acl_ok = match (&form.acl, &obs.acl) {
            (None, AclObs::None | AclObs::Unsupported) => true,
            (Some(want), AclObs::Set(have)) => decode(have) == decode(want),
            _ => false,
        };
        obs.uid == form.uid && obs.gid == form.gid && obs.mode == form.mode && acl_ok
    }
}

fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

/// The entries of an ACL xattr value, sorted (tag, id, perm); `None` when malformed.
fn decode(bytes: &[u8]) -> Option<Vec<(u16, u32, u16)>> {
    let (head, body) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != ACL_VERSION || body.len() % 8 != 0 {
        return None;
    }
    let mut v: Vec<(u16, u32, u16)> = body
        .chunks_exact(8)
        .map(|c| {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            let id = if matches!(tag, TAG_USER | TAG_GROUP) {
                id
            } else {
                u32::MAX
            };
            (tag, id, perm)
        })
        .collect();
    v.sort_unstable();
    Some(v)
}

/// The users and groups an ACL value grants anything to (for messages and tests).
pub fn named_in(bytes: &[u8]) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut users = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (tag, id, perm) in decode(bytes).unwrap_or_default() {
        match tag {
            TAG_USER if perm != 0 => {
                users.insert(id);
            }
            TAG_GROUP if perm != 0 => {
                groups.insert(id);
            }
            _ => {}
        }
    }
    (users, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(users: &[u32], groups: &[u32], others: bool) -> GateAccess {
        GateAccess {
            users: users.iter().copied().collect(),
            groups: groups.iter().copied().collect(),
            others_search: others,
        }
    }

    #[test]
    fn the_acl_names_exactly_the_owner_and_the_allowed() {
        let f = access(&[1000, 1002], &[2000], false).with_acl((0, 0));
        assert_eq!((f.uid, f.gid, f.mode), (0, 0, 0o750));
        let acl = f.acl.clone().unwrap();
        assert_eq!(
            named_in(&acl),
            (
                [1000, 1002].into_iter().collect(),
                [2000].into_iter().collect()
            )
        );
        // Header, then 7 entries of 8 bytes, in the kernel's order (tag, then id).
        assert_eq!(acl.len(), 4 + 7 * 8);
        assert_eq!(&acl[..4], &2u32.to_le_bytes());
        let tags: Vec<u16> = acl[4..]
            .chunks_exact(8)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(tags, [1, 2, 2, 4, 8, 0x10, 0x20]);
        let others = access(&[1000], &[], true).with_acl((0, 0));
        assert_eq!(others.mode, 0o751);
        // Root's own workspace: no named entries, the mode says it all.
        let root = access(&[], &[], false).with_acl((0, 0));
        assert_eq!((root.mode, root.acl), (0o700, None));
        // ws-ckpt's own user needs no entry.
        assert_eq!(access(&[0], &[], false).with_acl((0, 0)).acl, None);
    }

    #[test]
    fn comparison_ignores_entry_order_but_not_entries() {
        let want = access(&[1000], &[2000], false).with_acl((0, 0));
        let acl = want.acl.clone().unwrap();
        let mut shuffled = acl[..4].to_vec();
        let chunks: Vec<&[u8]> = acl[4..].chunks_exact(8).collect();
        for c in chunks.iter().rev() {
            shuffled.extend_from_slice(c);
        }
        let obs = |acl: AclObs, mode: u32| DirObs {
            uid: 0,
            gid: 0,
            mode,
            acl,
        };
        assert!(GateAccess::is_written(
            &want,
            &obs(AclObs::Set(shuffled), 0o750)
        ));
        assert!(!GateAccess::is_written(
            &want,
            &obs(AclObs::Set(acl.clone()), 0o755)
        ));
        assert!(!GateAccess::is_written(&want, &obs(AclObs::None, 0o750)));
        let carol = access(&[1000, 1003], &[2000], false).with_acl((0, 0));
        assert!(!GateAccess::is_written(
            &carol,
            &obs(AclObs::Set(acl), 0o750)
        ));
        let plain = access(&[], &[], false).with_acl((0, 0));
        assert!(GateAccess::is_written(&plain, &obs(AclObs::None, 0o700)));
        assert!(!GateAccess::is_written(&plain, &obs(AclObs::None, 0o755)));
        assert_eq!(decode(b"\x02\x00\x00\x00\x01"), None);
        assert_eq!(decode(b"\x03\x00\x00\x00"), None);
    }

    #[test]
    fn without_acls_the_owners_group_gets_in() {
        let a = access(&[1000, 1002], &[], false);
        let f = a.without_acl(Some(1000), (0, 0));
        assert_eq!((f.uid, f.gid, f.mode, f.acl), (0, 1000, 0o750, None));
        assert_eq!(a.without_acl(None, (0, 0)).mode, 0o700);
    }
}
