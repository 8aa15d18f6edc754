//! [`MemFs`]: an in-memory [`Fs`] that knows what is durable, for
//! fault-injection and crash tests (redb's `tests/crash_consistency.rs`
//! pattern).
//!
//! Model:
//! - A file's bytes become durable at [`FileHandle::sync_data`]; writes and
//!   length changes after the last sync are kept as a pending list, in order.
//! - A directory's entries (file creation, rename, removal) become durable at
//!   [`Fs::sync_dir`] on that directory. Creating and removing directories
//!   is durable at once: the data directory is the caller's business, and
//!   what is under test is the WAL's own files.
//! - [`MemFs::crash_with`] rebuilds the disk as a crash would leave it: each
//!   directory keeps its durable entries, each file its durable bytes plus a
//!   chosen prefix of its pending writes (cut at any byte, to model a torn
//!   write). Locks die with the "process".
//! - [`Faults`] make syncs or writes fail after a countdown, and stay failed,
//!   like a disk that has gone bad.

use super::{FileHandle, Fs};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Failures to inject into a [`MemFs`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// After this many more successful syncs (file or directory), every sync
    /// fails with an I/O error.
    pub fail_sync_after: Option<u64>,
    /// After this many more successful writes, every write fails (as with
    /// `ENOSPC`) without writing anything.
    pub fail_write_after: Option<u64>,
}

/// An in-memory file system with durability tracking. Cheap to clone: clones
/// share one disk.
#[derive(Debug, Default, Clone)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Directory nodes; index 0 is the root.
    dirs: Vec<Dir>,
    inodes: Vec<Inode>,
    /// inode → id of the handle that holds its lock.
    locks: HashMap<usize, u64>,
    next_handle: u64,
    faults: Faults,
    file_syncs: u64,
    dir_syncs: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            dirs: vec![Dir::default()],
            inodes: Vec::new(),
            locks: HashMap::new(),
            next_handle: 0,
            faults: Faults::default(),
            file_syncs: 0,
            dir_syncs: 0,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Dir {
    current: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir(usize),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl Pending {
    /// How much of the crash budget this operation uses: its bytes, or one
    /// for a length change.
    fn weight(&self) -> u64 {
        match self {
            Pending::Write(_, d) => d.len() as u64,
            Pending::SetLen(_) => 1,
        }
    }
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let off = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = off.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off..end].copy_from_slice(bytes);
}

fn set_len(data: &mut Vec<u8>, len: u64) {
    data.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
}

fn names(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(
                n.to_str()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path"))?
                    .to_owned(),
            ),
        }
    }
    Ok(out)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", path.display()),
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

/// Counts a countdown down; `true` when the operation must fail.
fn trip(countdown: &mut Option<u64>) -> bool {
    match countdown {
        None => false,
        Some(0) => true,
        Some(n) => {
            *n -= 1;
            false
        }
    }
}

impl State {
    fn lookup(&self, path: &Path) -> io::Result<Option<Node>> {
        let mut node = Node::Dir(0);
        for name in names(path)? {
            let Node::Dir(d) = node else {
                return Ok(None);
            };
            match self.dirs[d].current.get(&name) {
                Some(n) => node = *n,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent(&self, path: &Path) -> io::Result<(usize, String)> {
        let mut ns = names(path)?;
        let name = ns
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))?;
        let parent: std::path::PathBuf = ns.iter().collect();
        match self.lookup(&parent)? {
            Some(Node::Dir(d)) => Ok((d, name)),
            _ => Err(not_found(path)),
        }
    }

    fn handle(&mut self, state: &Arc<Mutex<State>>, inode: usize, write: bool) -> MemFile {
        self.next_handle += 1;
        MemFile {
            state: Arc::clone(state),
            inode,
            id: self.next_handle,
            write,
        }
    }
}

impl MemFs {
    /// An empty file system holding only the root directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the injected faults (countdowns restart from now).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// How many file syncs and directory syncs have succeeded so far.
    pub fn sync_counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.file_syncs, st.dir_syncs)
    }

    /// The disk a power cut would leave now, losing every unsynced write and
    /// every directory change not yet synced.
    pub fn crash(&self) -> MemFs {
        self.crash_with(|_| 0)
    }

    /// The disk a crash would leave now. For each file with unsynced
    /// changes, in creation order, `keep` is given the size of those changes
    /// (bytes written, plus one per length change) and returns how much of
    /// them reached the disk, in order: a value inside a write keeps only
    /// that write's first bytes (a torn write). Directory entries are the
    /// synced ones; no locks are held; faults are cleared.
    pub fn crash_with(&self, mut keep: impl FnMut(u64) -> u64) -> MemFs {
        let st = self.lock();
        let mut dirs = st.dirs.clone();
        for d in &mut dirs {
            d.current = d.durable.clone();
        }
        let mut inodes = Vec::with_capacity(st.inodes.len());
        for inode in &st.inodes {
            let mut data = inode.durable.clone();
            let total: u64 = inode.pending.iter().map(Pending::weight).sum();
            let mut budget = if total > 0 { keep(total).min(total) } else { 0 };
            for op in &inode.pending {
                if budget == 0 {
                    break;
                }
                match op {
                    Pending::SetLen(len) => set_len(&mut data, *len),
                    Pending::Write(off, bytes) => {
                        let n = usize::try_from(budget.min(bytes.len() as u64)).unwrap_or(0);
                        apply_write(&mut data, *off, &bytes[..n]);
                    }
                }
                budget = budget.saturating_sub(op.weight());
            }
            inodes.push(Inode {
                durable: data.clone(),
                data,
                pending: Vec::new(),
            });
        }
        MemFs {
            state: Arc::new(Mutex::new(State {
                dirs,
                inodes,
                ..State::default()
            })),
        }
    }
}

impl Fs for MemFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let mut st = self.lock();
        let (dir, name) = st.parent(path)?;
        let inode = match st.dirs[dir].current.get(&name) {
            Some(Node::File(i)) => {
                let i = *i;
                st.inodes[i].data.clear();
                st.inodes[i].pending.push(Pending::SetLen(0));
                i
            }
            Some(Node::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ))
            }
            None => {
                st.inodes.push(Inode::default());
                let i = st.inodes.len() - 1;
                st.dirs[dir].current.insert(name, Node::File(i));
                i
            }
        };
        let handle = st.handle(&self.state, inode, true);
        Ok(Box::new(handle))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn FileHandle>> {
        let mut st = self.lock();
        match st.lookup(path)? {
            Some(Node::File(i)) => {
                let handle = st.handle(&self.state, i, write);
                Ok(Box::new(handle))
            }
            _ => Err(not_found(path)),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        match st.lookup(dir)? {
            Some(Node::Dir(d)) => Ok(st.dirs[d].current.keys().cloned().collect()),
            _ => Err(not_found(dir)),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        matches!(self.lock().lookup(path), Ok(Some(_)))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let mut cur = 0;
        for name in names(dir)? {
            cur = match st.dirs[cur].current.get(&name) {
                Some(Node::Dir(d)) => *d,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::NotADirectory, name));
                }
                None => {
                    st.dirs.push(Dir::default());
                    let d = st.dirs.len() - 1;
                    st.dirs[cur].current.insert(name.clone(), Node::Dir(d));
                    st.dirs[cur].durable.insert(name, Node::Dir(d));
                    d
                }
            };
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let (parent, name) = st.parent(dir)?;
        match st.dirs[parent].current.get(&name) {
            Some(Node::Dir(_)) => {
                st.dirs[parent].current.remove(&name);
                st.dirs[parent].durable.remove(&name);
                Ok(())
            }
            _ => Err(not_found(dir)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let (fp, fname) = st.parent(from)?;
        let (tp, tname) = st.parent(to)?;
        let node = *st.dirs[fp]
            .current
            .get(&fname)
            .ok_or_else(|| not_found(from))?;
        if let Some(Node::Dir(d)) = st.dirs[tp].current.get(&tname) {
            if !st.dirs[*d].current.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    format!("{}: not empty", to.display()),
                ));
            }
        }
        st.dirs[fp].current.remove(&fname);
        st.dirs[tp].current.insert(tname, node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let (dir, name) = st.parent(path)?;
        match st.dirs[dir].current.get(&name) {
            Some(Node::File(_)) => {
                st.dirs[dir].current.remove(&name);
                Ok(())
            }
            _ => Err(not_found(path)),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if trip(&mut st.faults.fail_sync_after) {
            return Err(injected("directory sync"));
        }
        match st.lookup(dir)? {
            Some(Node::Dir(d)) => {
                st.dirs[d].durable = st.dirs[d].current.clone();
                st.dir_syncs += 1;
                Ok(())
            }
            _ => Err(not_found(dir)),
        }
    }
}

/// An open [`MemFs`] file.
#[derive(Debug)]
struct MemFile {
    state: Arc<Mutex<State>>,
    inode: usize,
    id: u64,
    write: bool,
}

impl MemFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_write(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }
}

impl FileHandle for MemFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().inodes[self.inode].data.len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.lock();
        let data = &st.inodes[self.inode].data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        if end > data.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_write()?;
        let inode = self.inode;
        let mut st = self.lock();
        if trip(&mut st.faults.fail_write_after) {
            return Err(injected("write"));
        }
        let node = &mut st.inodes[inode];
        apply_write(&mut node.data, offset, data);
        node.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.check_write()?;
        let inode = self.inode;
        let mut st = self.lock();
        let node = &mut st.inodes[inode];
        set_len(&mut node.data, len);
        node.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if len > self.size()? {
            self.set_len(len)?;
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let inode = self.inode;
        let mut st = self.lock();
        if trip(&mut st.faults.fail_sync_after) {
            return Err(injected("fdatasync"));
        }
        let node = &mut st.inodes[inode];
        node.durable = node.data.clone();
        node.pending.clear();
        st.file_syncs += 1;
        Ok(())
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        let (inode, id) = (self.inode, self.id);
        let mut st = self.lock();
        match st.locks.get(&inode) {
            Some(holder) => Ok(*holder == id),
            None => {
                st.locks.insert(inode, id);
                Ok(true)
            }
        }
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let (inode, id) = (self.inode, self.id);
        let mut st = self.lock();
        if st.locks.get(&inode) == Some(&id) {
            st.locks.remove(&inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_a_torn_prefix() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        f.write_all_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(7, b"-pending").unwrap();

        let lost = fs.crash();
        let g = lost.open(Path::new("/d/f"), false).unwrap();
        assert_eq!(g.size().unwrap(), 7);

        let torn = fs.crash_with(|total| {
            assert_eq!(total, 8);
            3
        });
        let g = torn.open(Path::new("/d/f"), false).unwrap();
        let mut buf = vec![0; 10];
        g.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"durable-pe");
    }

    #[test]
    fn unsynced_names_vanish_on_crash() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/a")).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap();
        assert!(fs.crash().exists(Path::new("/d/a")));
        fs.sync_dir(Path::new("/d")).unwrap();
        let after = fs.crash();
        assert!(after.exists(Path::new("/d/b")));
        assert!(!after.exists(Path::new("/d/a")));
    }

    #[test]
    fn faults_are_sticky_and_locks_die_with_handles() {
        let fs = MemFs::new();
        let mut f = fs.create(Path::new("/f")).unwrap();
        fs.set_faults(Faults {
            fail_sync_after: Some(1),
            ..Faults::default()
        });
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.sync_dir(Path::new("/")).is_err());

        let mut g = fs.open(Path::new("/f"), false).unwrap();
        assert!(f.try_lock().unwrap());
        assert!(!g.try_lock().unwrap());
        drop(f);
        assert!(g.try_lock().unwrap());
    }
}
