//! Writing blobs: partial files in `ingest/`, per-digest locks, and the commit protocol.
//!
//! Commit protocol (the only way a file appears under `blobs/`):
//! 1. bytes are written to `ingest/<alg>-<hex>.data` (or `ingest/tmp-*.data` when the digest is
//!    not known in advance) while being hashed;
//! 2. the file is fsynced;
//! 3. its size is checked against the expected size, and its digest against the expected digest;
//! 4. it is renamed to `blobs/<alg>/<hex>`, and the `blobs/<alg>` directory is fsynced.
//!
//! A process killed at any step leaves either nothing under `blobs/` or the complete, verified
//! blob. A keyed partial file stays in `ingest/` and the next put of the same digest resumes it.
//!
//! Single flight: a put with a known digest takes an exclusive `flock` on
//! `ingest/<alg>-<hex>.lock` for its whole duration, so concurrent puts of the same digest (threads
//! or processes) write it once and the others return the committed blob. Puts of different
//! digests take different locks and never wait for each other. The lock file is removed after a
//! commit; a writer that then creates a fresh lock file finds the committed blob and stops. If two
//! writers ever share a partial file through that window, their bytes fail the digest check and
//! nothing reaches `blobs/`, because every commit verifies.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Result, StoreError};
use crate::store::Store;

/// Size of the buffers moved between the hashing and the writing thread.
const BUFFER_SIZE: usize = 1 << 20;
/// Buffers in flight between the two threads; with [`BUFFER_SIZE`] this bounds a put's memory to
/// about 8 MiB whatever the blob size.
const BUFFERS_IN_FLIGHT: usize = 8;
/// The writer requests a flush of dirty pages every this many bytes, so the final fsync does not
/// have to write the whole blob at once and disk writes overlap hashing.
const SYNC_INTERVAL: u64 = 16 << 20;

/// The caller's knowledge of the content before writing it. Unknown fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub digest: Option<Digest>,
    pub size: Option<u64>,
}

impl Expected {
    pub fn digest(digest: Digest) -> Expected {
        Expected {
            digest: Some(digest),
            size: None,
        }
    }

    pub fn with_size(mut self, size: u64) -> Expected {
        self.size = Some(size);
        self
    }

    fn check_size(&self, actual: u64) -> Result<()> {
        match self.size {
            Some(expected) if expected != actual => Err(StoreError::SizeMismatch {
                what: self
                    .digest
                    .as_ref()
                    .map_or_else(|| "blob".to_owned(), |d| format!("blob {d}")),
                expected,
                actual,
            }),
            _ => Ok(()),
        }
    }
}

/// The result of a put: the blob's digest and size, and whether this call wrote it (`false` when
/// the blob was already in the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub digest: Digest,
    pub size: u64,
    pub created: bool,
}

/// A partial blob being written. Dropping it without [`Ingest::commit`] leaves a keyed partial in
/// `ingest/` for a later resume and removes an unkeyed one.
pub struct Ingest<'s> {
    store: &'s Store,
    expected: Expected,
    data_path: PathBuf,
    file: File,
    hasher: Hasher,
    written: u64,
    keyed: bool,
    /// Held for the lifetime of a keyed ingest; the `flock` is released when the file closes.
    _lock: Option<File>,
}

/// Either the blob is already committed, or an ingest is open to write it.
pub enum IngestStart<'s> {
    Exists(PutOutcome),
    Open(Box<Ingest<'s>>),
}

impl Store {
    /// Opens an ingest for content described by `expected`, using `algorithm` when no digest is
    /// expected. With an expected digest this waits for any other writer of the same digest,
    /// then returns [`IngestStart::Exists`] if that writer committed it, or resumes the partial
    /// file it left behind.
    pub fn ingest(&self, expected: Expected, algorithm: Algorithm) -> Result<IngestStart<'_>> {
        let Some(digest) = expected.digest.clone() else {
            return self.open_unkeyed(expected, algorithm);
        };
        let lock = self.lock_digest(&digest)?;
        if let Some(outcome) = self.existing(&digest, &expected)? {
            touch(&self.blob_path(&digest));
            remove_held_lock(&self.lock_path(&digest), &lock);
            return Ok(IngestStart::Exists(outcome));
        }
        let data_path =
            self.ingest_dir()
                .join(format!("{}-{}.data", digest.algorithm(), digest.hex()));
        let mut file = open_partial_file(&data_path)?;
        let (hasher, written) =
            resume_partial(&mut file, &data_path, &expected, digest.algorithm())?;
        Ok(IngestStart::Open(Box::new(Ingest {
            store: self,
            expected,
            data_path,
            file,
            hasher,
            written,
            keyed: true,
            _lock: Some(lock),
        })))
    }

    fn open_unkeyed(&self, expected: Expected, algorithm: Algorithm) -> Result<IngestStart<'_>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "tmp-{}-{nanos}-{}.data",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let data_path = self.ingest_dir().join(&name);
        // gc removes idle files in ingest/ only when it can take their lock, so even a write
        // whose digest is not known yet holds one.
        let lock = lock_file(&data_path.with_extension("lock"))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&data_path)
            .map_err(StoreError::io("create", &data_path))?;
        Ok(IngestStart::Open(Box::new(Ingest {
            store: self,
            expected,
            data_path,
            file,
            hasher: algorithm.hasher(),
            written: 0,
            keyed: false,
            _lock: Some(lock),
        })))
    }

    /// Returns the committed blob if present, checking its size against `expected`.
    fn existing(&self, digest: &Digest, expected: &Expected) -> Result<Option<PutOutcome>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(metadata) => {
                expected.check_size(metadata.len())?;
                Ok(Some(PutOutcome {
                    digest: digest.clone(),
                    size: metadata.len(),
                    created: false,
                }))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::io("stat", path)(error)),
        }
    }

    /// Takes the exclusive lock of one digest, waiting for its current holder.
    pub(crate) fn lock_digest(&self, digest: &Digest) -> Result<File> {
        lock_file(&self.lock_path(digest))
    }

    /// Like [`Store::lock_digest`], but returns `None` when another writer holds the lock.
    pub(crate) fn try_lock_digest(&self, digest: &Digest) -> Result<Option<File>> {
        try_lock_file(&self.lock_path(digest))
    }

    pub(crate) fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.ingest_dir()
            .join(format!("{}-{}.lock", digest.algorithm(), digest.hex()))
    }

    /// Writes all of `reader` as one blob and commits it.
    pub fn put_reader(&self, reader: impl Read, expected: Expected) -> Result<PutOutcome> {
        let algorithm = expected
            .digest
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        match self.ingest(expected, algorithm)? {
            IngestStart::Exists(outcome) => Ok(outcome),
            IngestStart::Open(mut ingest) => {
                // A resumed partial cannot be matched against a fresh stream from byte 0.
                if ingest.written > 0 {
                    ingest.restart()?;
                }
                ingest.copy_from(reader)?;
                ingest.commit()
            }
        }
    }

    /// Writes `data` as one blob and commits it.
    pub fn put_bytes(&self, data: &[u8], expected: Expected) -> Result<PutOutcome> {
        self.put_reader(data, expected)
    }

    /// Copies the file at `path` into the store as one blob.
    pub fn put_file(&self, path: &Path, expected: Expected) -> Result<PutOutcome> {
        let file = File::open(path).map_err(StoreError::io("open", path))?;
        self.put_reader(file, expected)
    }
}

/// Opens the partial file of a keyed ingest for reading and writing, creating it if needed.
/// Anything else found at that path (a symlink, a directory, a read-only file left by a crash)
/// is removed first: `ingest/` belongs to the store, and following a symlink there could
/// overwrite a file outside it.
pub(crate) fn open_partial_file(path: &Path) -> Result<File> {
    if let Ok(metadata) = fs::symlink_metadata(path) {
        let usable = metadata.is_file() && metadata.permissions().mode() & 0o200 != 0;
        if !usable {
            tracing::warn!(path = %path.display(), "replacing an unusable partial file");
            let removed = if metadata.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            removed.map_err(StoreError::io("remove", path))?;
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(StoreError::io("open", path))
}

/// Opens (creating if needed) and exclusively locks the lock file at `path`.
///
/// Lock files may be removed, but only by a holder of their lock. A waiter that gets the lock of
/// a file that was removed (or replaced) meanwhile finds that `path` no longer names the inode it
/// locked, and starts over on the current file, so two writers never hold "the" lock at once.
pub(crate) fn lock_file(path: &Path) -> Result<File> {
    loop {
        if let LockAttempt::Held(file) = lock_file_once(path, true)? {
            return Ok(file);
        }
    }
}

/// Like [`lock_file`], but returns `None` at once when another holder has the lock.
pub(crate) fn try_lock_file(path: &Path) -> Result<Option<File>> {
    loop {
        match lock_file_once(path, false)? {
            LockAttempt::Held(file) => return Ok(Some(file)),
            LockAttempt::Busy => return Ok(None),
            LockAttempt::Replaced => continue,
        }
    }
}

enum LockAttempt {
    Held(File),
    /// Another holder has the lock (only without waiting).
    Busy,
    /// `path` was removed or replaced while this attempt waited for its lock.
    Replaced,
}

/// Opens the lock file at `path` and locks it, waiting for the lock when `wait`.
fn lock_file_once(path: &Path, wait: bool) -> Result<LockAttempt> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StoreError::io("open lock file", path))?;
    if wait {
        file.lock().map_err(StoreError::io("lock", path))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(LockAttempt::Busy),
            Err(fs::TryLockError::Error(error)) => return Err(StoreError::io("lock", path)(error)),
        }
    }
    let locked = file.metadata().map_err(StoreError::io("stat", path))?;
    match fs::metadata(path) {
        Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => {
            Ok(LockAttempt::Held(file))
        }
        Ok(_) => Ok(LockAttempt::Replaced),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(LockAttempt::Replaced),
        Err(error) => Err(StoreError::io("stat", path)(error)),
    }
}

/// Removes a lock file while its lock is held by `_held` (see [`lock_file`]).
pub(crate) fn remove_held_lock(path: &Path, _held: &File) {
    remove_if_exists(path);
}

/// Marks a blob as just used, so `gc`'s grace period protects it while the caller (a pull or an
/// import that found it already present) goes on to tag the image that needs it. Called with
/// the blob's lock held; `gc` checks the time again under the same lock.
pub(crate) fn touch(path: &Path) {
    let result = File::open(path).and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = result {
        tracing::debug!(path = %path.display(), %error, "could not refresh the blob's modification time");
    }
}

/// Restores the hash state of a partial file left by an earlier writer by hashing its bytes.
/// A partial longer than the expected size is discarded.
fn resume_partial(
    file: &mut File,
    path: &Path,
    expected: &Expected,
    algorithm: Algorithm,
) -> Result<(Hasher, u64)> {
    let length = file.metadata().map_err(StoreError::io("stat", path))?.len();
    let mut hasher = algorithm.hasher();
    if length == 0 || expected.size.is_some_and(|size| length > size) {
        file.set_len(0).map_err(StoreError::io("truncate", path))?;
        return Ok((hasher, 0));
    }
    // TODO: persist the hash state with the partial so a resume does not re-read the prefix.
    let mut buffer = vec![0u8; BUFFER_SIZE];
    file.seek(SeekFrom::Start(0))
        .map_err(StoreError::io("seek", path))?;
    loop {
        let count = file
            .read(&mut buffer)
            .map_err(StoreError::io("read", path))?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    tracing::info!(path = %path.display(), bytes = length, "resuming partial blob");
    Ok((hasher, length))
}

impl Ingest<'_> {
    /// Bytes already in the partial file (non-zero after a resume).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Discards the partial content and starts from byte 0.
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(StoreError::io("truncate", &self.data_path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(StoreError::io("seek", &self.data_path))?;
        self.hasher = self
            .expected
            .digest
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm)
            .hasher();
        self.written = 0;
        Ok(())
    }

    /// Appends `data` at the current offset.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.check_not_oversized(data.len())?;
        self.file
            .seek(SeekFrom::Start(self.written))
            .map_err(StoreError::io("seek", &self.data_path))?;
        self.file
            .write_all(data)
            .map_err(StoreError::io("write", &self.data_path))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn check_not_oversized(&self, more: usize) -> Result<()> {
        if let Some(size) = self.expected.size {
            let total = self.written + more as u64;
            if total > size {
                return Err(StoreError::SizeMismatch {
                    what: self.describe(),
                    expected: size,
                    actual: total,
                });
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.expected
            .digest
            .as_ref()
            .map_or_else(|| "blob".to_owned(), |d| format!("blob {d}"))
    }

    /// Appends everything `reader` yields. Hashing runs on this thread while a second thread
    /// writes, so the two overlap; memory stays bounded by the buffers in flight.
    pub fn copy_from(&mut self, mut reader: impl Read) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(self.written))
            .map_err(StoreError::io("seek", &self.data_path))?;
        let writer_file = self
            .file
            .try_clone()
            .map_err(StoreError::io("open", &self.data_path))?;
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS_IN_FLIGHT);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..BUFFERS_IN_FLIGHT {
            empty_tx
                .send(vec![0u8; BUFFER_SIZE])
                .expect("receiver is alive");
        }
        let data_path = self.data_path.clone();
        let writer = thread::Builder::new()
            .name("layerstore-write".into())
            .spawn(move || write_buffers(writer_file, &data_path, full_rx, empty_tx))
            .map_err(StoreError::io("spawn writer thread for", &self.data_path))?;

        let read_result = self.hash_and_send(&mut reader, &full_tx, &empty_rx);
        drop(full_tx);
        let write_result = writer.join().expect("writer thread does not panic");
        // A write error explains a closed channel better than the send failure it caused.
        write_result?;
        read_result
    }

    fn hash_and_send(
        &mut self,
        reader: &mut impl Read,
        full_tx: &mpsc::SyncSender<Vec<u8>>,
        empty_rx: &mpsc::Receiver<Vec<u8>>,
    ) -> Result<()> {
        loop {
            let Ok(mut buffer) = empty_rx.recv() else {
                return Ok(()); // the writer stopped; its error is reported by the caller
            };
            buffer.resize(BUFFER_SIZE, 0);
            let count = read_full(reader, &mut buffer)
                .map_err(StoreError::io("read source for", &self.data_path))?;
            if count == 0 {
                return Ok(());
            }
            self.check_not_oversized(count)?;
            buffer.truncate(count);
            self.hasher.update(&buffer);
            self.written += count as u64;
            if full_tx.send(buffer).is_err() {
                return Ok(());
            }
        }
    }

    /// Runs the commit protocol: fsync, size check, digest check, rename, directory fsync.
    /// On a size or digest mismatch the partial file is removed, so the next put starts clean.
    pub fn commit(self) -> Result<PutOutcome> {
        self.file
            .sync_all()
            .map_err(StoreError::io("fsync", &self.data_path))?;
        let actual_size = self.written;
        let actual = self.hasher.clone().finish();
        let checked =
            self.expected
                .check_size(actual_size)
                .and_then(|()| match &self.expected.digest {
                    Some(expected) if *expected != actual => Err(StoreError::DigestMismatch {
                        expected: expected.clone(),
                        actual: actual.clone(),
                        bytes: actual_size,
                    }),
                    _ => Ok(()),
                });
        if let Err(error) = checked {
            remove_if_exists(&self.data_path);
            return Err(error);
        }

        // An unkeyed put learns its digest only now. It takes the digest's lock for the rename,
        // so it cannot race a keyed writer or gc of the same blob.
        let late_lock = if self.keyed {
            None
        } else {
            Some(self.store.lock_digest(&actual)?)
        };
        let target = self.store.blob_path(&actual);
        let directory = target.parent().expect("blob paths have a parent");
        if target.exists() {
            remove_if_exists(&self.data_path);
            touch(&target);
            if let Some(lock) = &late_lock {
                remove_held_lock(&self.store.lock_path(&actual), lock);
            }
            return Ok(PutOutcome {
                digest: actual,
                size: actual_size,
                created: false,
            });
        }
        fs::create_dir_all(directory).map_err(StoreError::io("create directory", directory))?;
        fs::rename(&self.data_path, &target)
            .map_err(StoreError::io("rename into place", &target))?;
        // Committed blobs are immutable; read-only files catch accidental writes by other tools.
        // This comes after the rename so a crash cannot leave a read-only partial in ingest/.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("make read-only", &target))?;
        sync_directory(directory)?;
        if let Some(lock) = &late_lock {
            remove_held_lock(&self.store.lock_path(&actual), lock);
        }
        tracing::debug!(digest = %actual, bytes = actual_size, "committed blob");
        Ok(PutOutcome {
            digest: actual,
            size: actual_size,
            created: true,
        })
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        // A committed ingest's data file was renamed away; removing a missing file is harmless.
        // A keyed partial with bytes in it stays for a resume; an empty one is useless.
        if !self.keyed || self.written == 0 {
            remove_if_exists(&self.data_path);
        }
        // The fields, and so the lock, are dropped after this function: it is still held here.
        if let Some(lock) = &self._lock {
            let lock_path = match &self.expected.digest {
                Some(digest) => self.store.lock_path(digest),
                None => self.data_path.with_extension("lock"),
            };
            remove_held_lock(&lock_path, lock);
        }
    }
}

fn write_buffers(
    mut file: File,
    path: &Path,
    full_rx: mpsc::Receiver<Vec<u8>>,
    empty_tx: mpsc::Sender<Vec<u8>>,
) -> Result<()> {
    // A third thread flushes dirty pages while this one keeps writing, so the disk works during
    // the whole put instead of only in the final fsync. A flush request made while one is
    // running is dropped: the running flush's successor covers those bytes.
    let syncer_file = file.try_clone().map_err(StoreError::io("open", path))?;
    let (sync_tx, sync_rx) = mpsc::sync_channel::<()>(1);
    let syncer = thread::Builder::new()
        .name("layerstore-sync".into())
        .spawn(move || -> io::Result<()> {
            for () in sync_rx {
                syncer_file.sync_data()?;
            }
            Ok(())
        })
        .map_err(StoreError::io("spawn sync thread for", path))?;

    let mut unsynced = 0u64;
    let mut write_result = Ok(());
    for buffer in full_rx {
        if let Err(error) = file.write_all(&buffer) {
            write_result = Err(StoreError::io("write", path)(error));
            break;
        }
        unsynced += buffer.len() as u64;
        if unsynced >= SYNC_INTERVAL {
            let _ = sync_tx.try_send(());
            unsynced = 0;
        }
        // The hashing side may already have finished; then the buffer is simply dropped.
        let _ = empty_tx.send(buffer);
    }
    drop(sync_tx);
    let sync_result = syncer.join().expect("sync thread does not panic");
    write_result?;
    sync_result.map_err(StoreError::io("fsync", path))
}

/// Reads until `buffer` is full or the reader is exhausted; returns the byte count.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

pub(crate) fn sync_directory(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(StoreError::io("fsync directory", path))
}

pub(crate) fn remove_if_exists(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "could not remove partial file");
        }
    }
}
