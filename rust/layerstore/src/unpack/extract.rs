//! Extraction of one layer's tar stream into a directory, with the safety checks of
//! [`crate::unpack::path`] and OCI whiteouts.
//!
//! In [`Mode::Overlay`] the directory holds this layer alone, in the form overlayfs takes as a
//! lower directory: a whiteout `.wh.NAME` becomes a 0/0 character device `NAME`, and an opaque
//! marker `.wh..wh..opq` becomes the `trusted.overlay.opaque=y` extended attribute on its
//! directory (`user.overlay.opaque` when not running as root, for mounts with `userxattr`).
//! In [`Mode::Flatten`] the directory holds the layers below, and whiteouts remove what they
//! hide. A whiteout hides only lower layers, never entries of its own layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use rustix::fs::{FileType, Mode as FileMode, CWD};
use tar::EntryType;

use crate::digest::{Algorithm, Digest};
use crate::unpack::compression::{Compression, Decoder};
use crate::unpack::error::{UnpackError, UnpackResult};
use crate::unpack::metadata::{self, Degradations, Kind, Metadata, Owner, Privileges};
use crate::unpack::path::{self, PathProblem};

/// Bytes handed from the decompressing thread to the extracting thread at once.
const BLOCK_SIZE: usize = 1 << 20;
/// Blocks in flight between the two threads (so at most this many MiB buffered per layer).
const BLOCKS_IN_FLIGHT: usize = 8;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Where a layer is extracted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An empty directory of its own, whiteouts kept in overlayfs form.
    Overlay,
    /// On top of the layers below it, whiteouts applied.
    Flatten,
}

/// Settings shared by every layer of one unpack.
#[derive(Debug)]
pub struct Context {
    pub privileges: Privileges,
    pub degradations: Degradations,
}

/// Directory metadata set after the entries below them are written, because a read-only mode
/// would stop the writes and a new entry would change the modification time.
pub type DeferredDirectories = BTreeMap<PathBuf, Metadata>;

/// Digests and sizes of one extracted layer.
#[derive(Clone, Debug)]
pub struct Extracted {
    /// The digest of the blob as read, or with [`BlobCheck::Trusted`] the layer's digest.
    pub digest: Digest,
    pub compressed_bytes: u64,
    pub diff_id: Digest,
    pub uncompressed_bytes: u64,
    pub entries: u64,
}

/// Whether [`extract_layer`] hashes the compressed blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// Hash the blob as it is read; [`Extracted::digest`] is the digest computed.
    Hash,
    /// Do not hash the blob, which takes a sha256 pass off the decompressing thread. For blobs
    /// whose digest the store checked: read from the store, or through a
    /// [`crate::fetch::PrefixReader`], which ends only with the bytes the store verified. The
    /// `diff_id` still covers every byte extracted. [`Extracted::digest`] is then the digest
    /// the layer is stored under.
    Trusted,
}

/// The destination of [`extract_layer`] and the settings it extracts with.
pub struct Target<'a> {
    pub root: &'a Path,
    pub mode: Mode,
    /// Directory metadata to apply after the last layer that shares `root`.
    pub directories: &'a mut DeferredDirectories,
    pub context: &'a Context,
}

/// Extracts the layer blob read from `blob` into `target.root`. Returns the digest of the blob
/// (see [`BlobCheck`]) and the `diff_id` of its tar stream, computed with `diff_algorithm`. The
/// caller compares both with what it expects before publishing the root.
///
/// Three threads share the work of one layer, so a single large layer keeps more than one core
/// busy: one reads and decompresses the blob, one hashes the tar stream, and the calling thread
/// writes the files.
pub fn extract_layer(
    blob: impl Read + Send + 'static,
    layer: &Digest,
    media_type: &str,
    diff_algorithm: Algorithm,
    blob_check: BlobCheck,
    target: Target<'_>,
) -> UnpackResult<Extracted> {
    let Target {
        root,
        mode,
        directories,
        context,
    } = target;
    let compression = Compression::from_media_type(media_type).ok_or_else(|| {
        UnpackError::UnsupportedMediaType {
            layer: layer.clone(),
            media_type: media_type.to_owned(),
        }
    })?;
    let decoder = Decoder::open(
        blob,
        layer,
        media_type,
        compression,
        blob_check == BlobCheck::Hash,
    )?;
    let (to_extractor, for_extractor) = sync_channel::<Block>(BLOCKS_IN_FLIGHT);
    let (to_hasher, for_hasher) = sync_channel::<Block>(BLOCKS_IN_FLIGHT);
    // Blocks both readers are done with go back for reuse, which saves zeroing a new one.
    let (recycler, recycled) = sync_channel::<Vec<u8>>(2 * BLOCKS_IN_FLIGHT + 2);
    let thread_error = |source| UnpackError::Io {
        operation: "start a thread to extract into",
        path: root.to_owned(),
        source,
    };
    std::thread::scope(|scope| {
        let hash_recycler = recycler.clone();
        let hashing = std::thread::Builder::new()
            .name("unpack-hash".into())
            .spawn_scoped(scope, move || {
                let mut hasher = diff_algorithm.hasher();
                let mut bytes = 0;
                for block in for_hasher {
                    hasher.update(&block);
                    bytes += block.len() as u64;
                    recycle(block, &hash_recycler);
                }
                (hasher.finish(), bytes)
            })
            .map_err(thread_error)?;
        let decompressing = std::thread::Builder::new()
            .name("unpack-decompress".into())
            .spawn_scoped(scope, move || -> io::Result<(Option<Digest>, u64)> {
                let mut decoder = decoder;
                loop {
                    let mut block = recycled
                        .try_recv()
                        .unwrap_or_else(|_| vec![0u8; BLOCK_SIZE]);
                    block.resize(BLOCK_SIZE, 0);
                    let count = read_block(&mut decoder, &mut block)?;
                    if count == 0 {
                        break;
                    }
                    block.truncate(count);
                    let block = Arc::new(block);
                    let hashed = to_hasher.send(Arc::clone(&block));
                    // A closed extractor channel means extraction failed; its error is reported.
                    if hashed.is_err() || to_extractor.send(block).is_err() {
                        break;
                    }
                }
                drop((to_hasher, to_extractor));
                decoder.finish()
            })
            .map_err(thread_error)?;
        let mut extractor = Extractor {
            root,
            layer,
            mode,
            context,
            written: HashSet::new(),
            resolved: HashMap::new(),
            directories,
            buffer: vec![0u8; BLOCK_SIZE],
            entries: 0,
        };
        let extracted = extractor.extract(ChannelReader::new(for_extractor, recycler));
        let decompressed = decompressing.join().expect("decompression does not panic");
        let (diff_id, uncompressed_bytes) = hashing.join().expect("hashing does not panic");
        let (digest, compressed_bytes) =
            decompressed.map_err(|source| UnpackError::InvalidLayer {
                layer: layer.clone(),
                reason: format!("{} decompression failed", compression.name()),
                source: Some(source),
            })?;
        extracted?;
        Ok(Extracted {
            digest: digest.unwrap_or_else(|| layer.clone()),
            compressed_bytes,
            diff_id,
            uncompressed_bytes,
            entries: extractor.entries,
        })
    })
}

/// A block of the decompressed stream, shared by the hashing and the extracting thread.
type Block = Arc<Vec<u8>>;

/// Sends `block` back to the decompressing thread when this was its last reference.
fn recycle(block: Block, recycler: &SyncSender<Vec<u8>>) {
    // `Arc::into_inner` returns the vector to exactly one of the threads that drop a clone.
    if let Some(vector) = Arc::into_inner(block) {
        // A full channel or a finished decompressor just drops the block.
        let _ = recycler.try_send(vector);
    }
}

/// Reads until `block` is full or the stream ends.
fn read_block(reader: &mut impl Read, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The receiving end of the decompressed stream. The stream ends early, with an error, when the
/// decompressing thread failed; that thread's error is the one reported.
struct ChannelReader {
    receiver: Receiver<Block>,
    recycler: SyncSender<Vec<u8>>,
    current: Block,
    position: usize,
}

impl ChannelReader {
    fn new(receiver: Receiver<Block>, recycler: SyncSender<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            receiver,
            recycler,
            current: Arc::new(Vec::new()),
            position: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.receiver.recv() {
                Ok(block) => {
                    recycle(std::mem::replace(&mut self.current, block), &self.recycler);
                    self.position = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let count = buffer.len().min(self.current.len() - self.position);
        buffer[..count].copy_from_slice(&self.current[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

struct Extractor<'a> {
    root: &'a Path,
    layer: &'a Digest,
    mode: Mode,
    context: &'a Context,
    /// Paths this layer wrote and their ancestors, which its whiteouts must not remove.
    written: HashSet<PathBuf>,
    /// Parent directories already resolved, by their components joined as in the entry name,
    /// so the next entry in the same directory needs no `lstat` per component. Emptied when
    /// a directory or a symlink is removed, the only change that can alter a resolution.
    resolved: HashMap<PathBuf, PathBuf>,
    directories: &'a mut DeferredDirectories,
    buffer: Vec<u8>,
    entries: u64,
}

impl Extractor<'_> {
    /// Extracts every entry, then reads the rest of the stream (tar padding after the
    /// end-of-archive blocks, for example) so the decompressing thread hashes all of it.
    fn extract(&mut self, stream: ChannelReader) -> UnpackResult<()> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|source| self.invalid("reading the tar stream failed", Some(source)))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|source| self.invalid("reading a tar entry failed", Some(source)))?;
            self.entry(&mut entry)?;
            self.entries += 1;
        }
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|source| {
            self.invalid("reading the end of the tar stream failed", Some(source))
        })?;
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> UnpackResult<()> {
        let name_bytes = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let components =
            path::entry_components(&name_bytes).map_err(|problem| self.problem(&name, problem))?;
        let Some((file_name, parents)) = components.split_last() else {
            return self.root_entry(&name, kind, entry);
        };
        if let Some(hidden) = file_name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&name, parents, hidden);
        }
        let metadata = Metadata::of_entry(entry).map_err(|source| {
            self.invalid(&format!("entry {name:?}: invalid header"), Some(source))
        })?;
        let parent = self.directory(&name, parents, true)?;
        let path = parent.join(file_name);
        match kind {
            EntryType::Directory => self.make_directory(&name, &path, metadata)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(&name, &path, entry, &metadata)?;
            }
            EntryType::Symlink => self.make_symlink(&name, &path, entry, &metadata)?,
            EntryType::Link => self.make_hardlink(&name, &path, entry)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.make_node(&name, &path, kind, entry, &metadata)?;
            }
            other => {
                self.context
                    .degradations
                    .record(format!("tar entries of type {other:?} skipped"));
                return Ok(());
            }
        }
        self.mark_written(&path);
        Ok(())
    }

    /// The entry `./`: the root directory's own metadata.
    fn root_entry<R: Read>(
        &mut self,
        name: &str,
        kind: EntryType,
        entry: &mut tar::Entry<'_, R>,
    ) -> UnpackResult<()> {
        if kind != EntryType::Directory {
            return Err(self.unsafe_entry(name, "only a directory may stand for the root"));
        }
        let metadata = Metadata::of_entry(entry).map_err(|source| {
            self.invalid(&format!("entry {name:?}: invalid header"), Some(source))
        })?;
        self.directories.insert(self.root.to_owned(), metadata);
        Ok(())
    }

    /// Resolves the directory `components` inside the root (see [`path::resolve_directory`]).
    fn directory(
        &mut self,
        name: &str,
        components: &[OsString],
        create: bool,
    ) -> UnpackResult<PathBuf> {
        let key: PathBuf = components.iter().collect();
        if let Some(resolved) = self.resolved.get(&key) {
            return Ok(resolved.clone());
        }
        let root = self.root;
        let mut created = Vec::new();
        let resolved = path::resolve_directory(root, components, create, &mut |parts| {
            created.push(root.join(parts.iter().collect::<PathBuf>()));
        });
        for path in &created {
            self.mark_written(path);
        }
        let resolved = resolved.map_err(|problem| self.problem(name, problem))?;
        self.resolved.insert(key, resolved.clone());
        Ok(resolved)
    }

    fn mark_written(&mut self, path: &Path) {
        let mut current = Some(path);
        while let Some(path) = current {
            if path == self.root || !self.written.insert(path.to_owned()) {
                break;
            }
            current = path.parent();
        }
    }

    fn make_directory(&mut self, name: &str, path: &Path, metadata: Metadata) -> UnpackResult<()> {
        self.create(name, path, true, "create directory", create_directory)?;
        self.directories.insert(path.to_owned(), metadata);
        Ok(())
    }

    /// Runs `make`, which creates the entry at `path` and fails with `AlreadyExists` when
    /// something is there. Then [`Self::clear`] makes room and `make` runs again. Trying first
    /// saves an `lstat` per entry in the common case of an empty path. A directory is kept
    /// when `keep_directory` is set, and `make` does not run again.
    fn create<T>(
        &mut self,
        name: &str,
        path: &Path,
        keep_directory: bool,
        operation: &'static str,
        mut make: impl FnMut(&Path) -> io::Result<T>,
    ) -> UnpackResult<Option<T>> {
        match make(path) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            made => {
                return made
                    .map(Some)
                    .map_err(|source| self.io_error(operation, path, source));
            }
        }
        if self.clear(name, path, keep_directory)? {
            return Ok(None);
        }
        make(path)
            .map(Some)
            .map_err(|source| self.io_error(operation, path, source))
    }

    fn write_file<R: Read>(
        &mut self,
        name: &str,
        path: &Path,
        entry: &mut tar::Entry<'_, R>,
        metadata: &Metadata,
    ) -> UnpackResult<()> {
        // `create_new` (O_EXCL) follows nothing, not even a symlink at the path itself.
        let mut file = self
            .create(name, path, false, "create", |path| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
            })?
            .expect("a file is never kept");
        loop {
            let count = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(self.invalid(
                        &format!("entry {name:?}: reading its data failed"),
                        Some(source),
                    ));
                }
            };
            file.write_all(&self.buffer[..count])
                .map_err(|source| self.io_error("write", path, source))?;
        }
        metadata::apply_to_file(
            &file,
            metadata,
            self.context.privileges,
            &self.context.degradations,
        )
        .map_err(|source| self.io_error("set metadata of", path, source))
    }

    fn make_symlink<R: Read>(
        &mut self,
        name: &str,
        path: &Path,
        entry: &tar::Entry<'_, R>,
        metadata: &Metadata,
    ) -> UnpackResult<()> {
        let target = match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => target.into_owned(),
            _ => return Err(self.invalid(&format!("symlink {name:?} has no target"), None)),
        };
        let target = Path::new(OsStr::from_bytes(&target));
        let location: Vec<OsString> = path
            .strip_prefix(self.root)
            .expect("resolved paths are below the root")
            .iter()
            .map(OsStr::to_owned)
            .collect();
        if path::symlink_escapes(&location, target) {
            return Err(self.unsafe_entry(
                name,
                &format!(
                    "symlink target {:?} leads outside the root",
                    target.display().to_string()
                ),
            ));
        }
        self.create(name, path, false, "create symlink", |path| {
            std::os::unix::fs::symlink(target, path)
        })?;
        self.apply(path, metadata, Kind::Symlink)
    }

    fn make_hardlink<R: Read>(
        &mut self,
        name: &str,
        path: &Path,
        entry: &tar::Entry<'_, R>,
    ) -> UnpackResult<()> {
        let Some(target) = entry.link_name_bytes() else {
            return Err(self.invalid(&format!("hardlink {name:?} has no target"), None));
        };
        let target_name = String::from_utf8_lossy(&target).into_owned();
        let components = path::entry_components(&target).map_err(|problem| match problem {
            PathProblem::Unsafe(reason) => {
                self.unsafe_entry(name, &format!("hardlink target {target_name:?}: {reason}"))
            }
            other => self.problem(name, other),
        })?;
        let Some((file_name, parents)) = components.split_last() else {
            return Err(self.unsafe_entry(name, "a hardlink to the root directory"));
        };
        let target_path = self.directory(name, parents, false)?.join(file_name);
        match fs::symlink_metadata(&target_path) {
            Ok(found) if found.is_dir() => {
                return Err(self.unsafe_entry(
                    name,
                    &format!("hardlink target {target_name:?} is a directory"),
                ));
            }
            Ok(_) => {}
            Err(source) => {
                let scope = match self.mode {
                    Mode::Overlay => "this layer",
                    Mode::Flatten => "this layer or a lower one",
                };
                return Err(self.invalid(
                    &format!("hardlink {name:?}: target {target_name:?} is not an earlier entry of {scope}"),
                    Some(source),
                ));
            }
        }
        if target_path == path {
            return Ok(());
        }
        // `link(2)` does not follow a symlink target, so the link stays inside the root.
        self.create(name, path, false, "create hardlink", |path| {
            fs::hard_link(&target_path, path)
        })?;
        Ok(())
    }

    fn make_node<R: Read>(
        &mut self,
        name: &str,
        path: &Path,
        kind: EntryType,
        entry: &tar::Entry<'_, R>,
        metadata: &Metadata,
    ) -> UnpackResult<()> {
        let header = entry.header();
        let (file_type, device) = match kind {
            EntryType::Fifo => (FileType::Fifo, 0),
            _ => {
                if !self.context.privileges.is_root() {
                    return Err(self.unsafe_entry(
                        name,
                        &format!(
                            "device nodes need root, and warmstart runs as uid {}",
                            self.context.privileges.uid
                        ),
                    ));
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let file_type = if kind == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (file_type, rustix::fs::makedev(major, minor))
            }
        };
        self.create(name, path, false, "create node", |path| {
            rustix::fs::mknodat(CWD, path, file_type, FileMode::from_raw_mode(0o600), device)
                .map_err(io::Error::from)
        })?;
        self.apply(path, metadata, Kind::Other)
    }

    /// Handles `.wh.NAME` and `.wh..wh..opq` in the directory `parents`.
    fn whiteout(&mut self, name: &str, parents: &[OsString], hidden: &[u8]) -> UnpackResult<()> {
        let opaque = [WHITEOUT_PREFIX, hidden].concat() == OPAQUE_MARKER;
        if !opaque && (hidden.is_empty() || hidden == b"." || hidden == b"..") {
            return Err(self.unsafe_entry(name, "a whiteout must name an entry of its directory"));
        }
        let directory = match self.mode {
            Mode::Overlay => self.directory(name, parents, true)?,
            Mode::Flatten => match self.directory(name, parents, false) {
                Ok(directory) => directory,
                // Nothing below hides there, so the whiteout has nothing to remove.
                Err(UnpackError::InvalidLayer { .. }) => return Ok(()),
                Err(error) => return Err(error),
            },
        };
        match (self.mode, opaque) {
            (Mode::Overlay, true) => self.mark_opaque(&directory),
            (Mode::Overlay, false) => self.make_whiteout(&directory, hidden),
            (Mode::Flatten, true) => self.clear_lower(&directory),
            (Mode::Flatten, false) => {
                let path = directory.join(OsStr::from_bytes(hidden));
                if self.written.contains(&path) {
                    return Ok(());
                }
                self.remove(&path)
            }
        }
    }

    /// Writes an overlayfs whiteout (a 0/0 character device) unless this layer has the entry.
    fn make_whiteout(&mut self, directory: &Path, hidden: &[u8]) -> UnpackResult<()> {
        let path = directory.join(OsStr::from_bytes(hidden));
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(());
        }
        let device = rustix::fs::makedev(0, 0);
        let made = rustix::fs::mknodat(
            CWD,
            &path,
            FileType::CharacterDevice,
            FileMode::empty(),
            device,
        );
        if let Err(error) = made {
            self.context.degradations.record(format!(
                "whiteouts kept as .wh. files, which overlayfs ignores: creating a 0/0 character device failed: {}",
                io::Error::from(error)
            ));
            let marker = directory.join(OsStr::from_bytes(&[WHITEOUT_PREFIX, hidden].concat()));
            File::create(&marker).map_err(|source| self.io_error("create", &marker, source))?;
        }
        Ok(())
    }

    /// Marks a directory opaque for overlayfs.
    fn mark_opaque(&mut self, directory: &Path) -> UnpackResult<()> {
        let flags = rustix::fs::XattrFlags::empty();
        let trusted = rustix::fs::lsetxattr(directory, "trusted.overlay.opaque", b"y", flags);
        let Err(trusted_error) = trusted else {
            return Ok(());
        };
        if rustix::fs::lsetxattr(directory, "user.overlay.opaque", b"y", flags).is_ok() {
            self.context.degradations.record(format!(
                "opaque directories marked with user.overlay.opaque (mount with userxattr): \
                 setting trusted.overlay.opaque failed: {}",
                io::Error::from(trusted_error)
            ));
            return Ok(());
        }
        self.context.degradations.record(format!(
            "opaque directories kept as .wh..wh..opq files, which overlayfs ignores: \
             setting trusted.overlay.opaque failed: {}",
            io::Error::from(trusted_error)
        ));
        let marker = directory.join(OsStr::from_bytes(OPAQUE_MARKER));
        File::create(&marker).map_err(|source| self.io_error("create", &marker, source))?;
        Ok(())
    }

    /// Removes everything below `directory` that lower layers wrote, keeping this layer's entries.
    fn clear_lower(&mut self, directory: &Path) -> UnpackResult<()> {
        let children =
            fs::read_dir(directory).map_err(|source| self.io_error("list", directory, source))?;
        for child in children {
            let child = child.map_err(|source| self.io_error("list", directory, source))?;
            let path = child.path();
            if !self.written.contains(&path) {
                self.remove(&path)?;
            } else if child.file_type().is_ok_and(|kind| kind.is_dir()) {
                self.clear_lower(&path)?;
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `path`. An existing directory is kept when `keep_directory`
    /// is set (a directory entry over a directory merges); returns whether one was kept.
    fn clear(&mut self, name: &str, path: &Path, keep_directory: bool) -> UnpackResult<bool> {
        match fs::symlink_metadata(path) {
            Ok(existing) if existing.is_dir() && keep_directory => Ok(true),
            Ok(_) => {
                self.remove(path)?;
                Ok(false)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(self.invalid(
                &format!("entry {name:?}: cannot inspect its path"),
                Some(source),
            )),
        }
    }

    /// Removes a file or a directory tree, and the deferred metadata of what it removed.
    fn remove(&mut self, path: &Path) -> UnpackResult<()> {
        let removed = match fs::symlink_metadata(path) {
            Ok(existing) if existing.is_dir() => {
                self.resolved.clear();
                fs::remove_dir_all(path)
            }
            Ok(existing) if existing.file_type().is_symlink() => {
                self.resolved.clear();
                fs::remove_file(path)
            }
            Ok(_) => fs::remove_file(path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => Err(error),
        };
        removed.map_err(|source| self.io_error("remove", path, source))?;
        self.directories
            .retain(|directory, _| !directory.starts_with(path));
        Ok(())
    }

    /// Applies the metadata of an entry this layer just created at `path`.
    fn apply(&self, path: &Path, metadata: &Metadata, kind: Kind) -> UnpackResult<()> {
        metadata::apply(
            path,
            metadata,
            kind,
            Owner::Created,
            self.context.privileges,
            &self.context.degradations,
        )
        .map_err(|source| self.io_error("set metadata of", path, source))
    }

    fn problem(&self, name: &str, problem: PathProblem) -> UnpackError {
        match problem {
            PathProblem::Unsafe(reason) => self.unsafe_entry(name, &reason),
            PathProblem::Invalid(reason, source) => {
                self.invalid(&format!("entry {name:?}: {reason}"), source)
            }
        }
    }

    fn unsafe_entry(&self, name: &str, reason: &str) -> UnpackError {
        UnpackError::UnsafeEntry {
            layer: self.layer.clone(),
            entry: name.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn invalid(&self, reason: &str, source: Option<io::Error>) -> UnpackError {
        UnpackError::InvalidLayer {
            layer: self.layer.clone(),
            reason: reason.to_owned(),
            source,
        }
    }

    fn io_error(&self, operation: &'static str, path: &Path, source: io::Error) -> UnpackError {
        UnpackError::Io {
            operation,
            path: path.to_owned(),
            source,
        }
    }
}

/// Creates a directory with mode 0755 (before the umask); its own mode is set later.
pub fn create_directory(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(path)
}

/// Sets the metadata of every deferred directory that is still a directory.
pub fn apply_directories(directories: &DeferredDirectories, context: &Context) -> UnpackResult<()> {
    for (path, metadata) in directories.iter().rev() {
        if !fs::symlink_metadata(path).is_ok_and(|found| found.is_dir()) {
            continue;
        }
        metadata::apply(
            path,
            metadata,
            Kind::Other,
            Owner::Unknown,
            context.privileges,
            &context.degradations,
        )
        .map_err(UnpackError::io("set metadata of", path))?;
    }
    Ok(())
}
