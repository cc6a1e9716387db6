//! The target directory of an unpack, and its crash-safe publish protocol.
//!
//! ```text
//! <target>/image.json            the image: manifest digest and layers; written first
//! <target>/layers/<hex>/         one complete layer, named by the hex of its diff_id
//! <target>/layers/.partial-*/    a layer being extracted
//! <target>/lowerdir              overlay layout complete: layer paths, top-most first, `:`-joined
//! <target>/rootfs/               flattened root filesystem, complete
//! <target>/.partial-rootfs/      a flatten in progress
//! <target>/.lock                 held (flock) by the unpack working on the target
//! ```
//!
//! A layer directory, `rootfs/` and `lowerdir` appear only by rename, once their content is
//! complete and flushed to disk (`syncfs`). A crash therefore leaves `.partial-*` directories,
//! which the next run removes, and complete layers, which it keeps.
//!
//! An unpack flushes once, not once per layer: every layer is extracted and verified in its
//! staging directory, one `syncfs` writes all of them, and only then are they renamed
//! ([`Bundle::publish_all`]). The order that makes a rename safe is the same as with a flush per
//! layer (data on disk before the name that declares it complete), so a crash at any point
//! still leaves only `.partial-*` directories or complete layers. What a crash costs is more
//! work for the next run, which extracts again the layers that had finished but were not yet
//! renamed. While layers extract, a [`Flusher`] thread keeps writing dirty data back, so the
//! final `syncfs` finds little left to write. A pull with overlapped unpack publishes while it
//! downloads instead, one `syncfs` per batch of layers that finished (see
//! [`crate::unpack::pull`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::unpack::error::{UnpackError, UnpackResult};

const RECORD: &str = "image.json";
const LOWERDIR: &str = "lowerdir";
const LAYERS: &str = "layers";
const ROOTFS: &str = "rootfs";
const PARTIAL_ROOTFS: &str = ".partial-rootfs";
const LOCK: &str = ".lock";
const PARTIAL_PREFIX: &str = ".partial-";

/// The contents of `image.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub manifest: Digest,
    /// `(layer digest, diff_id)` from the bottom layer up.
    pub layers: Vec<(Digest, Digest)>,
}

/// An unpack target, locked for as long as this value lives.
#[derive(Debug)]
pub struct Bundle {
    root: PathBuf,
    _lock: File,
}

impl Bundle {
    /// Creates or opens `root` and takes its lock, waiting for another unpack of it to finish.
    /// A directory holding files warmstart did not write is rejected.
    pub fn open(root: &Path) -> UnpackResult<Bundle> {
        fs::create_dir_all(root).map_err(UnpackError::io("create directory", root))?;
        let root = root
            .canonicalize()
            .map_err(UnpackError::io("resolve", root))?;
        let foreign = foreign_names(&root)?;
        if !foreign.is_empty() {
            return Err(UnpackError::TargetInUse {
                path: root,
                reason: format!(
                    "contains files warmstart did not write ({})",
                    foreign.join(", ")
                ),
            });
        }
        let lock_path = root.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(UnpackError::io("open", &lock_path))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|error| UnpackError::io("lock", &lock_path)(error.into()))?;
        fs::create_dir_all(root.join(LAYERS))
            .map_err(UnpackError::io("create directory", &root))?;
        Ok(Bundle { root, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the target belongs to `record`'s image, writing `image.json` if it has none.
    pub fn claim(&self, record: &Record) -> UnpackResult<()> {
        let path = self.root.join(RECORD);
        match fs::read(&path) {
            Ok(bytes) => {
                let existing: Record =
                    serde_json::from_slice(&bytes).map_err(|error| UnpackError::TargetInUse {
                        path: self.root.clone(),
                        reason: format!("has an unreadable image.json ({error})"),
                    })?;
                if existing.manifest != record.manifest {
                    return Err(UnpackError::TargetInUse {
                        path: self.root.clone(),
                        reason: format!("holds image {}", existing.manifest),
                    });
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
                self.write_atomically(RECORD, &bytes)
            }
            Err(error) => Err(UnpackError::io("read", path)(error)),
        }
    }

    /// Removes `.partial-*` directories that an interrupted run left behind.
    pub fn remove_partials(&self) -> UnpackResult<()> {
        for directory in [self.root.clone(), self.root.join(LAYERS)] {
            let entries = fs::read_dir(&directory).map_err(UnpackError::io("list", &directory))?;
            for entry in entries {
                let entry = entry.map_err(UnpackError::io("list", &directory))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(PARTIAL_PREFIX)
                {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// The published directory of a layer.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(LAYERS).join(diff_id.hex())
    }

    /// A fresh, empty staging directory for the layer `key` (a digest hex).
    pub fn layer_staging(&self, key: &str) -> UnpackResult<PathBuf> {
        self.fresh(
            self.root
                .join(LAYERS)
                .join(format!("{PARTIAL_PREFIX}{key}")),
        )
    }

    /// A fresh, empty staging directory for a flattened root filesystem.
    pub fn rootfs_staging(&self) -> UnpackResult<PathBuf> {
        self.fresh(self.root.join(PARTIAL_ROOTFS))
    }

    pub fn rootfs_path(&self) -> PathBuf {
        self.root.join(ROOTFS)
    }

    pub fn lowerdir_path(&self) -> PathBuf {
        self.root.join(LOWERDIR)
    }

    fn fresh(&self, path: PathBuf) -> UnpackResult<PathBuf> {
        remove_tree(&path)?;
        crate::unpack::extract::create_directory(&path)
            .map_err(UnpackError::io("create directory", &path))?;
        // A directory made inside a setgid directory inherits the bit, and then every entry
        // created below gets that directory's group instead of the process's, which metadata
        // relies on (`Owner::Created`). Setting the mode clears the bit.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(UnpackError::io("set the mode of", &path))?;
        Ok(path)
    }

    /// Flushes `staging` to disk and renames it to `published`. When `published` already
    /// exists (another run got there first), `staging` is removed instead.
    pub fn publish(&self, staging: &Path, published: &Path) -> UnpackResult<()> {
        sync_filesystem(staging)?;
        if published.exists() {
            return remove_tree(staging);
        }
        fs::rename(staging, published).map_err(UnpackError::io("rename", staging))?;
        sync_directory(published.parent().expect("published paths have a parent"))
    }

    /// Flushes the file system once and renames each `(staging, published)` pair, as
    /// [`Bundle::publish`] does for one. All pairs must be on the file system of the target.
    pub fn publish_all(&self, pairs: &[(PathBuf, PathBuf)]) -> UnpackResult<()> {
        let Some((first, _)) = pairs.first() else {
            return Ok(());
        };
        sync_filesystem(first)?;
        let mut parents = Vec::new();
        for (staging, published) in pairs {
            if published.exists() {
                remove_tree(staging)?;
                continue;
            }
            fs::rename(staging, published).map_err(UnpackError::io("rename", staging))?;
            let parent = published.parent().expect("published paths have a parent");
            if !parents.contains(&parent) {
                parents.push(parent);
            }
        }
        for parent in parents {
            sync_directory(parent)?;
        }
        Ok(())
    }

    /// Writes the `lowerdir` file naming `layers` (bottom first) top-most first.
    pub fn write_lowerdir(&self, layers: &[PathBuf]) -> UnpackResult<()> {
        let joined: Vec<String> = layers
            .iter()
            .rev()
            .map(|path| path.display().to_string())
            .collect();
        self.write_atomically(LOWERDIR, format!("{}\n", joined.join(":")).as_bytes())
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> UnpackResult<()> {
        let temporary = self.root.join(format!("{PARTIAL_PREFIX}{name}"));
        let path = self.root.join(name);
        let mut file = File::create(&temporary).map_err(UnpackError::io("create", &temporary))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(UnpackError::io("write", &temporary))?;
        fs::rename(&temporary, &path).map_err(UnpackError::io("rename", &temporary))?;
        sync_directory(&self.root)
    }
}

/// Names in `root` that no unpack writes.
fn foreign_names(root: &Path) -> UnpackResult<Vec<String>> {
    let ours = [RECORD, LOWERDIR, LAYERS, ROOTFS, LOCK];
    let mut foreign = Vec::new();
    for entry in fs::read_dir(root).map_err(UnpackError::io("list", root))? {
        let name = entry
            .map_err(UnpackError::io("list", root))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !ours.contains(&name.as_str()) && !name.starts_with(PARTIAL_PREFIX) {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Removes a directory tree or a file; a missing path is not an error.
pub fn remove_tree(path: &Path) -> UnpackResult<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(found) if found.is_dir() => make_writable(path).and_then(|()| fs::remove_dir_all(path)),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    removed.map_err(UnpackError::io("remove", path))
}

/// Adds owner write and execute permission to every directory below `path`, so a tree with
/// read-only directories (an extracted layer, say) can be removed without root.
fn make_writable(path: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Ok(());
    }
    let mode = metadata.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// A thread that calls `syncfs` on a directory's file system in a loop, pausing
/// [`Flusher::PAUSE`] between calls, until it is dropped.
///
/// Linux starts writing dirty pages back only once they exceed `vm.dirty_background_ratio` of
/// memory (10 % by default) or are older than `vm.dirty_expire_centisecs` (30 s). An unpack that
/// writes gigabytes in seconds would otherwise leave most of them for the `syncfs` before
/// publishing. With this thread the disk writes while the CPU extracts. Errors are ignored
/// here, because the `syncfs` before publishing reports them.
pub struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Pause between two `syncfs` calls, so an idle file system is not flushed continuously.
    pub const PAUSE: Duration = Duration::from_millis(100);

    /// Starts flushing the file system that contains `directory`.
    pub fn start(directory: &Path) -> UnpackResult<Flusher> {
        let handle = File::open(directory).map_err(UnpackError::io("open", directory))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("unpack-flusher".into())
            .spawn(move || {
                let (stopped, wake) = &*signal;
                loop {
                    if let Err(error) = rustix::fs::syncfs(&handle) {
                        tracing::debug!(%error, "background syncfs failed");
                    }
                    let stopped = stopped.lock().expect("not poisoned");
                    let (stopped, _) = wake
                        .wait_timeout_while(stopped, Flusher::PAUSE, |stopped| !*stopped)
                        .expect("not poisoned");
                    if *stopped {
                        break;
                    }
                }
            })
            .map_err(UnpackError::io("start a flusher thread for", directory))?;
        Ok(Flusher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().expect("not poisoned") = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread returns after its current `syncfs`; it does not panic.
            let _ = thread.join();
        }
    }
}

/// Flushes the file system holding `path`: one `syncfs` instead of an `fsync` per file.
fn sync_filesystem(path: &Path) -> UnpackResult<()> {
    let directory = File::open(path).map_err(UnpackError::io("open", path))?;
    rustix::fs::syncfs(&directory).map_err(|error| UnpackError::io("sync", path)(error.into()))
}

fn sync_directory(path: &Path) -> UnpackResult<()> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(UnpackError::io("sync", path))
}
