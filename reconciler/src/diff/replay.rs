//! Replaying a send stream on an in-memory model of the namespace: every node is either an
//! inode of the old snapshot (discovered lazily, the first time a path reaches it) or one the
//! stream creates; at the end each node's final links are compared with its original one.
//! Pure: no system access.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

use super::stream::{self, attr, cmd, Command};
use super::{Change, DiffEntry, DiffError, EntryKind};

/// Index of a node in [`Tree::nodes`].
type NodeId = usize;
/// The subvolume root.
const ROOT: NodeId = 0;

/// What the stream has revealed about a node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindGuess {
    Known(EntryKind),
    /// Unlinked or hardlinked: not a directory, otherwise unknown.
    NonDir,
    Unknown,
}

impl KindGuess {
    fn entry_kind(self) -> EntryKind {
        match self {
            KindGuess::Known(k) => k,
            KindGuess::NonDir => EntryKind::File,
            KindGuess::Unknown => EntryKind::Other,
        }
    }
}

/// Where a node comes from.
#[derive(Debug, Clone)]
enum Origin {
    /// An inode of the old snapshot, first reached as `name` in directory `parent` (which was
    /// its name there, as directories only change through commands we replay). The root has no
    /// parent.
    Old {
        parent: Option<NodeId>,
        name: OsString,
    },
    /// Created by the stream.
    New,
}

#[derive(Debug, Clone)]
struct Node {
    origin: Origin,
    kind: KindGuess,
    /// Current names: (directory, name).
    links: Vec<(NodeId, OsString)>,
    /// Current entries of a directory that the model knows.
    children: HashMap<OsString, NodeId>,
    /// Names whose `children` entry (or absence) is authoritative because the stream touched
    /// them. Other names of an old directory are still as in the old snapshot.
    settled: HashSet<OsString>,
    /// Data, size, mode, owner, xattrs or file attributes changed.
    changed: bool,
}

impl Node {
    fn new(origin: Origin, kind: KindGuess) -> Self {
        Node {
            origin,
            kind,
            links: Vec::new(),
            children: HashMap::new(),
            settled: HashSet::new(),
            changed: false,
        }
    }
}

/// The replayed namespace.
struct Tree {
    nodes: Vec<Node>,
}

/// Context for error messages: the command being replayed.
struct At<'c> {
    offset: usize,
    command: &'static str,
    path: &'c Path,
}

impl At<'_> {
    fn err(&self, reason: &'static str) -> DiffError {
        DiffError::Inconsistent {
            offset: self.offset,
            command: self.command,
            path: self.path.to_path_buf(),
            reason,
        }
    }
}

impl Tree {
    fn new() -> Self {
        let root = Node::new(
            Origin::Old {
                parent: None,
                name: OsString::new(),
            },
            KindGuess::Known(EntryKind::Dir),
        );
        Tree { nodes: vec![root] }
    }

    fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The entry `name` in directory `dir`, discovering an old inode when the name has not
    /// been touched yet in an old directory.
    fn lookup(&mut self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        let d = &self.nodes[dir];
        if let Some(&child) = d.children.get(name) {
            return Some(child);
        }
        if d.settled.contains(name) || matches!(d.origin, Origin::New) {
            return None;
        }
        let mut node = Node::new(
            Origin::Old {
                parent: Some(dir),
                name: name.to_os_string(),
            },
            KindGuess::Unknown,
        );
        node.links.push((dir, name.to_os_string()));
        let id = self.add(node);
        self.nodes[dir].children.insert(name.to_os_string(), id);
        Some(id)
    }

    /// Walk `components` from the root; every step must exist and is a directory.
    fn walk(&mut self, components: &[&OsStr], at: &At<'_>) -> Result<NodeId, DiffError> {
        let mut cur = ROOT;
        for name in components {
            self.mark_dir(cur);
            cur = self
                .lookup(cur, name)
                .ok_or_else(|| at.err("a directory on this path does not exist at this point"))?;
        }
        Ok(cur)
    }

    fn mark_dir(&mut self, id: NodeId) {
        let n = &mut self.nodes[id];
        if n.kind == KindGuess::Unknown {
            n.kind = KindGuess::Known(EntryKind::Dir);
        }
    }

    /// The node a path names.
    fn resolve(&mut self, path: &Path, at: &At<'_>) -> Result<NodeId, DiffError> {
        let comps = components(path, at)?;
        self.walk(&comps, at)
    }

    /// The directory holding the last component of `path`, and that name.
    fn resolve_parent<'p>(
        &mut self,
        path: &'p Path,
        at: &At<'_>,
    ) -> Result<(NodeId, &'p OsStr), DiffError> {
        let comps = components(path, at)?;
        let (last, dirs) = comps
            .split_last()
            .ok_or_else(|| at.err("the path names the subvolume root"))?;
        let dir = self.walk(dirs, at)?;
        self.mark_dir(dir);
        Ok((dir, last))
    }

    /// Remove the name `name` from `dir` (the node keeps its other names).
    fn detach(&mut self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        let d = &mut self.nodes[dir];
        d.settled.insert(name.to_os_string());
        let child = d.children.remove(name)?;
        let links = &mut self.nodes[child].links;
        if let Some(i) = links.iter().position(|(p, n)| *p == dir && n == name) {
            links.remove(i);
        }
        Some(child)
    }

    /// Give `node` the name `name` in `dir`, replacing whatever the model knows is there
    /// (rename(2) semantics; the kernel removes overwritten names explicitly anyway).
    fn attach(&mut self, node: NodeId, dir: NodeId, name: &OsStr) {
        if self.nodes[dir].children.contains_key(name) {
            self.detach(dir, name);
        }
        let d = &mut self.nodes[dir];
        d.settled.insert(name.to_os_string());
        d.children.insert(name.to_os_string(), node);
        self.nodes[node].links.push((dir, name.to_os_string()));
    }

    /// Replay one command.
    fn apply(&mut self, c: &Command<'_>) -> Result<(), DiffError> {
        let new_kind = match c.cmd {
            cmd::MKFILE => Some(EntryKind::File),
            cmd::MKDIR => Some(EntryKind::Dir),
            cmd::SYMLINK => Some(EntryKind::Symlink),
            cmd::MKNOD | cmd::MKFIFO | cmd::MKSOCK => Some(EntryKind::Other),
            _ => None,
        };
        let command = cmd::name(c.cmd);
        if let Some(kind) = new_kind {
            let path = c.path(attr::PATH)?;
            let at = At {
                offset: c.offset,
                command,
                path,
            };
            let (dir, name) = self.resolve_parent(path, &at)?;
            let id = self.add(Node::new(Origin::New, KindGuess::Known(kind)));
            self.attach(id, dir, name);
            return Ok(());
        }
        match c.cmd {
            cmd::RENAME => {
                let from = c.path(attr::PATH)?;
                let to = c.path(attr::PATH_TO)?;
                let at = At {
                    offset: c.offset,
                    command,
                    path: from,
                };
                let (from_dir, from_name) = self.resolve_parent(from, &at)?;
                let node = self
                    .lookup(from_dir, from_name)
                    .ok_or_else(|| at.err("the source does not exist at this point"))?;
                let at_to = At { path: to, ..at };
                let (to_dir, to_name) = self.resolve_parent(to, &at_to)?;
                if self.is_ancestor_or_self(node, to_dir) {
                    return Err(at_to.err("a directory cannot move into itself"));
                }
                self.detach(from_dir, from_name);
                self.attach(node, to_dir, to_name);
            }
            cmd::LINK => {
                let new = c.path(attr::PATH)?;
                let existing = c.path(attr::PATH_LINK)?;
                let at = At {
                    offset: c.offset,
                    command,
                    path: existing,
                };
                let node = self.resolve(existing, &at)?;
                if self.nodes[node].kind == KindGuess::Unknown {
                    self.nodes[node].kind = KindGuess::NonDir;
                }
                let at_new = At { path: new, ..at };
                let (dir, name) = self.resolve_parent(new, &at_new)?;
                self.attach(node, dir, name);
            }
            cmd::UNLINK | cmd::RMDIR => {
                let path = c.path(attr::PATH)?;
                let at = At {
                    offset: c.offset,
                    command,
                    path,
                };
                let (dir, name) = self.resolve_parent(path, &at)?;
                let node = self
                    .lookup(dir, name)
                    .ok_or_else(|| at.err("the entry does not exist at this point"))?;
                self.detach(dir, name);
                let n = &mut self.nodes[node];
                if c.cmd == cmd::RMDIR {
                    n.kind = KindGuess::Known(EntryKind::Dir);
                } else if n.kind == KindGuess::Unknown {
                    n.kind = KindGuess::NonDir;
                }
            }
            cmd::WRITE
            | cmd::CLONE
            | cmd::TRUNCATE
            | cmd::UPDATE_EXTENT
            | cmd::FALLOCATE
            | cmd::ENCODED_WRITE => {
                let node = self.resolve_cmd_path(c, command)?;
                let n = &mut self.nodes[node];
                n.changed = true;
                if matches!(n.kind, KindGuess::Unknown | KindGuess::NonDir) {
                    n.kind = KindGuess::Known(EntryKind::File);
                }
            }
            // ws-ckpt's own record on the workspace root changes with every checkpoint.
            cmd::SET_XATTR | cmd::REMOVE_XATTR
                if c.attr(attr::XATTR_NAME)
                    == Some(crate::sys::CHECKPOINT_RECORD_XATTR.as_bytes()) => {}
            cmd::CHMOD
            | cmd::CHOWN
            | cmd::SET_XATTR
            | cmd::REMOVE_XATTR
            | cmd::FILEATTR
            | cmd::ENABLE_VERITY => {
                let node = self.resolve_cmd_path(c, command)?;
                self.nodes[node].changed = true;
            }
            // Times change on every parent of a changed entry: noise. Stream headers carry
            // no namespace change.
            cmd::UTIMES | cmd::SUBVOL | cmd::SNAPSHOT => {}
            other => {
                tracing::debug!(
                    command = other,
                    offset = c.offset,
                    "skipping unknown send command"
                );
            }
        }
        Ok(())
    }

    fn resolve_cmd_path(
        &mut self,
        c: &Command<'_>,
        command: &'static str,
    ) -> Result<NodeId, DiffError> {
        let path = c.path(attr::PATH)?;
        let at = At {
            offset: c.offset,
            command,
            path,
        };
        self.resolve(path, &at)
    }

    /// Whether `ancestor` is `node` or one of its current parent directories.
    fn is_ancestor_or_self(&self, ancestor: NodeId, mut node: NodeId) -> bool {
        for _ in 0..=self.nodes.len() {
            if node == ancestor {
                return true;
            }
            match self.nodes[node].links.first() {
                Some((parent, _)) => node = *parent,
                None => return false,
            }
        }
        false
    }

    /// The node's current path (through its first name), `None` when it is detached.
    fn final_path(&self, node: NodeId) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut cur = node;
        for _ in 0..=self.nodes.len() {
            if cur == ROOT {
                return Some(names.iter().rev().collect());
            }
            let (parent, name) = self.nodes[cur].links.first()?;
            names.push(name.as_os_str());
            cur = *parent;
        }
        None
    }

    fn link_path(&self, (dir, name): &(NodeId, OsString)) -> Option<PathBuf> {
        Some(self.final_path(*dir)?.join(name))
    }

    /// The node's path in the old snapshot.
    fn old_path(&self, node: NodeId) -> PathBuf {
        let mut names = Vec::new();
        let mut cur = node;
        while let Origin::Old {
            parent: Some(parent),
            name,
        } = &self.nodes[cur].origin
        {
            names.push(name.as_os_str());
            cur = *parent;
        }
        names.iter().rev().collect()
    }

    /// Compare every node's final names with its original one.
    fn entries(&self) -> Vec<DiffEntry> {
        let mut out = Vec::new();
        let mut push = |change: Change, path: Option<PathBuf>, kind: EntryKind| {
            if let Some(path) = path {
                let path = if path.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    path
                };
                out.push(DiffEntry { change, path, kind });
            }
        };
        for (id, node) in self.nodes.iter().enumerate() {
            let kind = node.kind.entry_kind();
            match &node.origin {
                Origin::New => {
                    for link in &node.links {
                        push(Change::Added, self.link_path(link), kind);
                    }
                }
                Origin::Old { parent: None, .. } => {
                    if node.changed {
                        push(Change::Modified, Some(PathBuf::new()), kind);
                    }
                }
                Origin::Old {
                    parent: Some(parent),
                    name,
                } => {
                    let original = (*parent, name.clone());
                    let kept = node.links.contains(&original);
                    let mut others = node.links.iter().filter(|l| **l != original);
                    let primary = if kept {
                        Some(original.clone())
                    } else if let Some(first) = others.next() {
                        push(
                            Change::Renamed {
                                from: self.old_path(id),
                            },
                            self.link_path(first),
                            kind,
                        );
                        Some(first.clone())
                    } else {
                        push(Change::Deleted, Some(self.old_path(id)), kind);
                        None
                    };
                    for link in others {
                        push(Change::Added, self.link_path(link), kind);
                    }
                    if let (true, Some(primary)) = (node.changed, primary) {
                        push(Change::Modified, self.link_path(&primary), kind);
                    }
                }
            }
        }
        out
    }
}

/// Split a stream path into names; stream paths are relative and never contain `..`.
fn components<'p>(path: &'p Path, at: &At<'_>) -> Result<Vec<&'p OsStr>, DiffError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(at.err("stream paths must be relative and must not contain `..`"))
            }
        }
    }
    Ok(out)
}

/// Parse and replay a stream into unsorted, unmerged entries.
pub(super) fn analyze(bytes: &[u8]) -> Result<Vec<DiffEntry>, DiffError> {
    let parsed = stream::parse(bytes)?;
    tracing::debug!(
        version = parsed.version,
        commands = parsed.commands.len(),
        "parsed send stream"
    );
    let mut tree = Tree::new();
    for c in &parsed.commands {
        tree.apply(c)?;
    }
    Ok(tree.entries())
}
