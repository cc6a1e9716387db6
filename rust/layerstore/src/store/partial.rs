//! Partial blobs written at random offsets, for chunked downloads.
//!
//! A [`PartialBlob`] is a preallocated `ingest/<alg>-<hex>.data` file plus a log,
//! `ingest/<alg>-<hex>.chunks`, of byte ranges known to be written (one `start end` line each,
//! appended after the range's bytes are written). A process killed mid-download leaves both; the
//! next [`Store::open_partial`] of the same digest reads the log so only missing ranges are
//! fetched again. The digest lock is held for the blob's lifetime, as for every keyed ingest.
//!
//! The caller hashes the file's bytes in order and passes the digest to
//! [`PartialBlob::commit`], which checks it against the expected digest before the rename. The
//! bytes hashed are the ones written to the file (read back from it, or the very buffers a
//! successful write took), so a commit still only publishes verified content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::ingest::{
    open_partial_file, remove_held_lock, remove_if_exists, sync_directory, touch, PutOutcome,
};
use crate::store::Store;

/// Buffers per `pwritev` call, well under Linux's `IOV_MAX` of 1024.
const MAX_IO_SLICES: usize = 256;

/// Either the blob is already committed, or a partial file is open for it.
pub enum PartialStart {
    Exists(PutOutcome),
    Open(PartialBlob),
}

/// A preallocated partial blob, locked for this writer.
pub struct PartialBlob {
    store: Store,
    digest: Digest,
    size: u64,
    data_path: PathBuf,
    log_path: PathBuf,
    file: File,
    log: Mutex<File>,
    completed: Vec<(u64, u64)>,
    _lock: File,
}

impl Store {
    /// Opens (or resumes) the partial file of a blob of known digest and size. Waits for any
    /// other writer of the digest; returns [`PartialStart::Exists`] when the blob is committed.
    pub fn open_partial(&self, digest: &Digest, size: u64) -> Result<PartialStart> {
        let lock = self.lock_digest(digest)?;
        self.open_partial_locked(lock, digest, size)
    }

    /// Like [`Store::open_partial`], but returns `None` at once when another writer holds the
    /// digest's lock, instead of waiting for it.
    pub fn try_open_partial(&self, digest: &Digest, size: u64) -> Result<Option<PartialStart>> {
        match self.try_lock_digest(digest)? {
            Some(lock) => self.open_partial_locked(lock, digest, size).map(Some),
            None => Ok(None),
        }
    }

    fn open_partial_locked(&self, lock: File, digest: &Digest, size: u64) -> Result<PartialStart> {
        if let Ok(info) = self.stat(digest) {
            touch(&self.blob_path(digest));
            remove_held_lock(&self.lock_path(digest), &lock);
            if info.size != size {
                return Err(StoreError::SizeMismatch {
                    what: format!("blob {digest}"),
                    expected: size,
                    actual: info.size,
                });
            }
            return Ok(PartialStart::Exists(PutOutcome {
                digest: digest.clone(),
                size,
                created: false,
            }));
        }
        let stem = format!("{}-{}", digest.algorithm(), digest.hex());
        let data_path = self.ingest_dir().join(format!("{stem}.data"));
        let log_path = self.ingest_dir().join(format!("{stem}.chunks"));
        let file = open_partial_file(&data_path)?;
        let length = file
            .metadata()
            .map_err(StoreError::io("stat", &data_path))?
            .len();
        let completed = if length == size {
            read_log(&log_path, size)
        } else {
            Vec::new()
        };
        if completed.is_empty() {
            // Unknown content: start from an empty log, so no stale range is trusted.
            file.set_len(0)
                .map_err(StoreError::io("truncate", &data_path))?;
            remove_if_exists(&log_path);
        }
        preallocate(&file, size).map_err(StoreError::io("preallocate", &data_path))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(StoreError::io("open", &log_path))?;
        if !completed.is_empty() {
            let bytes: u64 = completed.iter().map(|(start, end)| end - start).sum();
            tracing::info!(%digest, bytes, "resuming partial download");
        }
        Ok(PartialStart::Open(PartialBlob {
            store: self.clone(),
            digest: digest.clone(),
            size,
            data_path,
            log_path,
            file,
            log: Mutex::new(log),
            completed,
            _lock: lock,
        }))
    }
}

/// Reads the completed-range log; lines that are torn or out of bounds are ignored.
fn read_log(path: &PathBuf, size: u64) -> Vec<(u64, u64)> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        let mut fields = line.split(' ');
        let (Some(Ok(start)), Some(Ok(end)), None) = (
            fields.next().map(str::parse::<u64>),
            fields.next().map(str::parse::<u64>),
            fields.next(),
        ) else {
            continue;
        };
        if start < end && end <= size {
            ranges.push((start, end));
        }
    }
    ranges
}

impl PartialBlob {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Ranges recorded as written by an earlier, interrupted writer.
    pub fn completed_ranges(&self) -> &[(u64, u64)] {
        &self.completed
    }

    /// Writes `data` at `offset`. Writing past the declared size is an error.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if end > self.size {
            return Err(StoreError::SizeMismatch {
                what: format!("blob {}", self.digest),
                expected: self.size,
                actual: end,
            });
        }
        self.file
            .write_all_at(data, offset)
            .map_err(StoreError::io("write", &self.data_path))
    }

    /// Writes `buffers` back to back from `offset`, with one `pwritev` per up to
    /// [`MAX_IO_SLICES`] buffers instead of a copy into one contiguous buffer first. Writing past
    /// the declared size is an error.
    pub fn write_vectored_at<B: AsRef<[u8]>>(&self, offset: u64, buffers: &[B]) -> Result<()> {
        let length: u64 = buffers.iter().map(|b| b.as_ref().len() as u64).sum();
        if offset + length > self.size {
            return Err(StoreError::SizeMismatch {
                what: format!("blob {}", self.digest),
                expected: self.size,
                actual: offset + length,
            });
        }
        let (mut index, mut skip, mut position) = (0, 0, offset);
        loop {
            // Skips fully written (and empty) buffers. `skip` counts the bytes of the next buffer
            // that are already written.
            while index < buffers.len() && skip == buffers[index].as_ref().len() {
                index += 1;
                skip = 0;
            }
            if index == buffers.len() {
                return Ok(());
            }
            let slices: Vec<IoSlice<'_>> = buffers[index..]
                .iter()
                .take(MAX_IO_SLICES)
                .enumerate()
                .map(|(i, buffer)| IoSlice::new(&buffer.as_ref()[if i == 0 { skip } else { 0 }..]))
                .collect();
            let mut written = match rustix::io::pwritev(&self.file, &slices, position) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(StoreError::io("write", &self.data_path)(error));
                }
                Ok(count) => count,
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => return Err(StoreError::io("write", &self.data_path)(error.into())),
            };
            position += written as u64;
            while written > 0 {
                let available = buffers[index].as_ref().len() - skip;
                if written < available {
                    skip += written;
                    break;
                }
                written -= available;
                index += 1;
                skip = 0;
            }
        }
    }

    /// Reads `buffer.len()` bytes at `offset`, for hashing what was written.
    pub fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buffer, offset)
            .map_err(StoreError::io("read", &self.data_path))
    }

    /// Records that `start..end` is written, so a later resume does not fetch it again.
    pub fn record_completed(&self, start: u64, end: u64) -> Result<()> {
        let mut log = self.log.lock().expect("log lock is not poisoned");
        log.write_all(format!("{start} {end}\n").as_bytes())
            .map_err(StoreError::io("write", &self.log_path))
    }

    /// A second handle on the partial file, for flushing it from another thread while the
    /// download goes on, so the fsync at commit has little left to write.
    pub fn sync_handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(StoreError::io("open", &self.data_path))
    }

    /// Forgets every written range, for a restart from byte 0.
    pub fn reset(&mut self) -> Result<()> {
        let log = self.log.get_mut().expect("log lock is not poisoned");
        log.set_len(0)
            .map_err(StoreError::io("truncate", &self.log_path))?;
        self.completed.clear();
        Ok(())
    }

    /// Commits the blob after the caller hashed its bytes in order: fsync, compare `computed`
    /// with the expected digest, make read-only, rename, fsync the directory. On a mismatch the
    /// partial file and its log are removed and nothing is published.
    pub fn commit(self, computed: Digest) -> Result<PutOutcome> {
        self.file
            .sync_all()
            .map_err(StoreError::io("fsync", &self.data_path))?;
        if computed != self.digest {
            self.discard();
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual: computed,
                bytes: self.size,
            });
        }
        let target = self.store.blob_path(&self.digest);
        let directory = target
            .parent()
            .expect("blob paths have a parent")
            .to_owned();
        fs::create_dir_all(&directory).map_err(StoreError::io("create directory", &directory))?;
        fs::rename(&self.data_path, &target)
            .map_err(StoreError::io("rename into place", &target))?;
        // After the rename, so a crash cannot leave a read-only partial in ingest/.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("make read-only", &target))?;
        sync_directory(&directory)?;
        remove_if_exists(&self.log_path);
        Ok(PutOutcome {
            digest: self.digest.clone(),
            size: self.size,
            created: true,
        })
    }

    /// Removes the partial file and its log, for content that can never commit.
    pub fn discard(&self) {
        remove_if_exists(&self.data_path);
        remove_if_exists(&self.log_path);
    }
}

impl Drop for PartialBlob {
    fn drop(&mut self) {
        // Runs before the fields are dropped, so the lock is still held.
        remove_held_lock(&self.store.lock_path(&self.digest), &self._lock);
    }
}

impl std::fmt::Debug for PartialBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartialBlob({}, {} bytes)", self.digest, self.size)
    }
}

/// Sets `file` to `size` bytes with its blocks allocated, so a full disk fails here instead of
/// in the middle of the download, and writes skip the file system's per-page delayed
/// allocation. Falls back to a sparse file where the file system cannot allocate ahead.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    if size > 0 {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
            Err(error) => return Err(error.into()),
        }
    }
    file.set_len(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn write_vectored_at_writes_buffers_back_to_back() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(directory.path()).expect("store opens");
        // More buffers than one pwritev takes, with empty ones in between.
        let buffers: Vec<Vec<u8>> = (0..MAX_IO_SLICES * 2 + 3)
            .map(|i| vec![(i % 251) as u8; i % 7])
            .collect();
        let content: Vec<u8> = buffers.concat();
        let size = content.len() as u64 + 10;
        let digest = Digest::of_bytes(Algorithm::Sha256, b"placeholder");
        let PartialStart::Open(partial) = store.open_partial(&digest, size).expect("opens") else {
            panic!("a new digest has no committed blob");
        };
        partial
            .write_vectored_at(10, &buffers)
            .expect("write succeeds");
        let mut written = vec![0u8; content.len()];
        partial.read_at(10, &mut written).expect("read succeeds");
        assert_eq!(written, content);
        let too_long = partial.write_vectored_at(11, &buffers);
        assert!(matches!(too_long, Err(StoreError::SizeMismatch { .. })));
    }

    #[test]
    fn open_partial_allocates_blocks() {
        use std::os::unix::fs::MetadataExt;

        let directory = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(directory.path()).expect("store opens");
        let size = 8 << 20;
        let digest = Digest::of_bytes(Algorithm::Sha256, b"eight MiB");
        let PartialStart::Open(partial) = store.open_partial(&digest, size).expect("opens") else {
            panic!("a new digest has no committed blob");
        };
        let metadata = partial.file.metadata().expect("stat succeeds");
        assert_eq!(metadata.len(), size);
        // st_blocks counts 512-byte units whatever the file system's block size.
        assert!(
            metadata.blocks() * 512 >= size,
            "{} of {size} bytes allocated",
            metadata.blocks() * 512
        );
    }
}
