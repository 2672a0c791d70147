//! Who a job runs as: the [`Owner`] identity (uid, primary gid, supplementary groups from the
//! user database), the irreversible privilege drop of the worker process, and a report of a
//! process's credentials ([`CredReport`]) used to prove that drop.
//!
//! What it must not do: change the credentials of the daemon (only the worker, a single-threaded
//! process of its own, ever calls [`drop_privileges`]), or keep any capability after the drop.

use std::io;

use super::error::TreeError;

/// The identity a job runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary group included), sorted, without duplicates.
    pub groups: Vec<u32>,
}

/// Most supplementary groups accepted (Linux' `NGROUPS_MAX`).
const NGROUPS_MAX: usize = 65536;

impl Owner {
    /// An identity with exactly these ids (groups sorted and deduplicated, `gid` added).
    pub fn new(uid: u32, gid: u32, groups: impl IntoIterator<Item = u32>) -> Owner {
        let mut groups: Vec<u32> = groups.into_iter().chain([gid]).collect();
        groups.sort_unstable();
        groups.dedup();
        Owner { uid, gid, groups }
    }

    /// root (uid 0, gid 0).
    pub fn root() -> Owner {
        Owner::new(0, 0, [])
    }

    /// `uid` with its primary group and supplementary groups from the user database
    /// (`getpwuid_r`, `getgrouplist`).
    pub fn lookup(uid: u32) -> Result<Owner, TreeError> {
        let who = format!("uid {uid}");
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| TreeError::Credentials {
                who: who.clone(),
                what: format!("the user database cannot be read ({e})"),
            })?
            .ok_or_else(|| TreeError::Credentials {
                who: who.clone(),
                what: "no such user in the user database; recreate the account or change the \
                       owner of the tree"
                    .into(),
            })?;
        let name =
            std::ffi::CString::new(user.name.as_bytes()).map_err(|_| TreeError::Credentials {
                who: who.clone(),
                what: "the user name contains a NUL byte".into(),
            })?;
        let groups =
            nix::unistd::getgrouplist(&name, user.gid).map_err(|e| TreeError::Credentials {
                who: who.clone(),
                what: format!("cannot list the groups of {} ({e})", user.name),
            })?;
        Ok(Owner::new(
            uid,
            user.gid.as_raw(),
            groups.into_iter().map(|g| g.as_raw()).take(NGROUPS_MAX),
        ))
    }

    /// The credentials of the calling process (effective uid and gid, supplementary groups).
    pub fn current() -> Owner {
        let groups = nix::unistd::getgroups().unwrap_or_default();
        Owner::new(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            groups.into_iter().map(|g| g.as_raw()),
        )
    }

    /// uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the primary group or one of the supplementary groups.
    pub fn has_group(&self, gid: u32) -> bool {
        gid == self.gid || self.groups.binary_search(&gid).is_ok()
    }

    /// "uid U (gid G)" for messages.
    pub fn describe(&self) -> String {
        format!("uid {} (gid {})", self.uid, self.gid)
    }
}

/// The credentials of a process, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredReport {
    /// Real, effective, saved user id.
    pub uids: [u32; 3],
    /// Real, effective, saved group id.
    pub gids: [u32; 3],
    /// Filesystem user id.
    pub fsuid: u32,
    /// Supplementary groups, sorted.
    pub groups: Vec<u32>,
    /// Effective capability set (bit N = capability N).
    pub cap_effective: u64,
    /// Permitted capability set.
    pub cap_permitted: u64,
    /// Inheritable capability set.
    pub cap_inheritable: u64,
    /// Ambient capability set.
    pub cap_ambient: u64,
    /// Bounding set.
    pub cap_bounding: u64,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// `PR_GET_DUMPABLE` (a non-dumpable process cannot be ptraced or read through /proc by
    /// its own user).
    pub dumpable: bool,
    /// The thread's nice value (tree jobs run at 10, below interactive requests).
    #[serde(default)]
    pub nice: i32,
}

impl CredReport {
    /// Whether these are exactly `owner`'s ids with no capability at all, no new privileges and
    /// not dumpable; otherwise what differs.
    pub fn check(&self, owner: &Owner) -> Result<(), String> {
        let (u, g) = (owner.uid, owner.gid);
        let mut problems = Vec::new();
        if self.uids != [u, u, u] || self.fsuid != u {
            problems.push(format!("user ids are {:?} (fs {})", self.uids, self.fsuid));
        }
        if self.gids != [g, g, g] {
            problems.push(format!("group ids are {:?}", self.gids));
        }
        if self.groups != owner.groups {
            problems.push(format!("groups are {:?}", self.groups));
        }
        let caps = [
            ("effective", self.cap_effective),
            ("permitted", self.cap_permitted),
            ("inheritable", self.cap_inheritable),
            ("ambient", self.cap_ambient),
            ("bounding", self.cap_bounding),
        ];
        for (set, mask) in caps {
            if mask != 0 {
                problems.push(format!("{set} capabilities {mask:#x}"));
            }
        }
        if !self.no_new_privs {
            problems.push("no_new_privs is not set".into());
        }
        if self.dumpable {
            problems.push("the process is dumpable".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: prctl with integer arguments only; unused arguments are zero.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Highest capability number the kernel knows.
fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
        .min(63)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

/// The credentials of the calling thread.
pub fn report() -> CredReport {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are to live locals.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    let uids = [r, e, s];
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    let gids = [r, e, s];
    // SAFETY: setfsuid(-1) changes nothing and returns the current fsuid.
    let fsuid = unsafe { libc::setfsuid(u32::MAX) } as u32;
    let mut groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header reads two CapData structs into `data`.
    unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    let mut bounding = 0u64;
    let mut ambient = 0u64;
    for cap in 0..=cap_last_cap() {
        if prctl(libc::PR_CAPBSET_READ, cap.into()).unwrap_or(0) == 1 {
            bounding |= 1 << cap;
        }
        // SAFETY: prctl with integer arguments only.
        let is_set = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if is_set == 1 {
            ambient |= 1 << cap;
        }
    }
    CredReport {
        uids,
        gids,
        fsuid,
        groups,
        cap_effective: join(data[0].effective, data[1].effective),
        cap_permitted: join(data[0].permitted, data[1].permitted),
        cap_inheritable: join(data[0].inheritable, data[1].inheritable),
        cap_ambient: ambient,
        cap_bounding: bounding,
        no_new_privs: prctl(libc::PR_GET_NO_NEW_PRIVS, 0).unwrap_or(0) == 1,
        dumpable: prctl(libc::PR_GET_DUMPABLE, 0).unwrap_or(1) != 0,
        nice: super::nice::current().unwrap_or(0),
    }
}

/// Irreversibly become `owner`: empty the capability bounding and ambient sets, set the
/// supplementary groups, gid and uid (real, effective, saved), `PR_SET_NO_NEW_PRIVS`, not
/// dumpable; then check the result with [`CredReport::check`]. Call only in a single-threaded
/// process that is root.
pub(crate) fn drop_privileges(owner: &Owner) -> Result<(), String> {
    if owner.uid == 0 {
        return Err("refusing to run a tree worker as root".into());
    }
    let step = |what: &str, r: io::Result<libc::c_int>| {
        r.map(drop).map_err(|e| format!("{what} failed: {e}"))
    };
    step("PR_SET_DUMPABLE", prctl(libc::PR_SET_DUMPABLE, 0))?;
    for cap in 0..=cap_last_cap() {
        match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => {
                return Err(format!(
                    "dropping capability {cap} from the bounding set: {e}"
                ))
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(format!(
            "clearing the ambient capabilities: {}",
            io::Error::last_os_error()
        ));
    }
    let groups: Vec<libc::gid_t> = owner.groups.clone();
    // SAFETY: `groups` is a live slice of gid_t of the length passed.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(format!("setgroups: {}", io::Error::last_os_error()));
    }
    // SAFETY: plain setresgid/setresuid with integer arguments.
    if unsafe { libc::setresgid(owner.gid, owner.gid, owner.gid) } != 0 {
        return Err(format!("setresgid: {}", io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(owner.uid, owner.uid, owner.uid) } != 0 {
        return Err(format!("setresuid: {}", io::Error::last_os_error()));
    }
    step("PR_SET_NO_NEW_PRIVS", prctl(libc::PR_SET_NO_NEW_PRIVS, 1))?;
    step("PR_SET_DUMPABLE", prctl(libc::PR_SET_DUMPABLE, 0))?;
    report()
        .check(owner)
        .map_err(|e| format!("credentials after the drop are wrong: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_groups_are_normalised() {
        let o = Owner::new(1000, 100, [27, 100, 27, 5]);
        assert_eq!(o.groups, vec![5, 27, 100]);
        assert!(o.has_group(100) && o.has_group(27) && !o.has_group(0));
        assert!(!o.is_root());
        assert!(Owner::root().is_root());
        assert_eq!(Owner::new(5, 7, []).groups, vec![7]);
    }

    #[test]
    fn current_and_lookup_agree_on_the_uid() {
        let me = Owner::current();
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
        if let Ok(looked) = Owner::lookup(me.uid) {
            assert_eq!(looked.uid, me.uid);
            assert!(looked.has_group(looked.gid));
        }
        let err = Owner::lookup(u32::MAX - 7).unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
    }

    #[test]
    fn report_check_lists_every_problem() {
        let owner = Owner::new(1000, 1000, [1000]);
        let good = CredReport {
            uids: [1000; 3],
            gids: [1000; 3],
            fsuid: 1000,
            groups: vec![1000],
            cap_effective: 0,
            cap_permitted: 0,
            cap_inheritable: 0,
            cap_ambient: 0,
            cap_bounding: 0,
            no_new_privs: true,
            dumpable: false,
            nice: 10,
        };
        assert_eq!(good.check(&owner), Ok(()));
        let bad = CredReport {
            uids: [1000, 1000, 0],
            cap_permitted: 1 << 21,
            dumpable: true,
            ..good.clone()
        };
        let msg = bad.check(&owner).unwrap_err();
        assert!(msg.contains("user ids"), "{msg}");
        assert!(msg.contains("permitted capabilities 0x200000"), "{msg}");
        assert!(msg.contains("dumpable"), "{msg}");
        let me = report();
        assert_eq!(me.uids[1], nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn the_worker_never_drops_to_root() {
        assert!(drop_privileges(&Owner::root()).is_err());
    }
}
