//! The store: an OCI image layout on disk with crash-safe writes.
//!
//! ```text
//! <root>/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json            tags: descriptors annotated with org.opencontainers.image.ref.name
//! <root>/blobs/<alg>/<hex>     complete, verified blobs, read-only once committed
//! <root>/ingest/               partial writes (*.data) and lock files (*.lock)
//! <root>/quarantine/           blobs that failed `verify`, moved aside for inspection
//! ```

pub mod gc;
pub mod index;
pub mod ingest;
pub mod partial;
pub mod platform;
pub mod verify;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Result, StoreError};

pub use gc::{GcOptions, GcReport};
pub use ingest::{Expected, Ingest, IngestStart, PutOutcome};
pub use partial::{PartialBlob, PartialStart};
pub use verify::{Problem, VerifyReport};

const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// A committed blob: its digest and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// Disk use of a store, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub ingest_files: u64,
    pub ingest_bytes: u64,
    pub quarantine_files: u64,
    pub quarantine_bytes: u64,
}

/// A layer store rooted at a directory. Cheap to clone; every method works on the directory
/// directly, so several `Store` values, threads and processes may share one root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating the directory and an empty layout if needed.
    /// An existing directory must be empty or an OCI image layout of version 1.x.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        fs::create_dir_all(&store.root).map_err(StoreError::io("create directory", &store.root))?;
        store.init_layout()?;
        for directory in [store.ingest_dir(), store.quarantine_dir()] {
            fs::create_dir_all(&directory)
                .map_err(StoreError::io("create directory", &directory))?;
        }
        for algorithm in Algorithm::ALL {
            let directory = store.root.join("blobs").join(algorithm.name());
            fs::create_dir_all(&directory)
                .map_err(StoreError::io("create directory", &directory))?;
        }
        Ok(store)
    }

    fn init_layout(&self) -> Result<()> {
        let layout_path = self.root.join("oci-layout");
        match fs::read(&layout_path) {
            Ok(bytes) => check_layout_version(&layout_path, &bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let known = ["blobs", "ingest", "quarantine", "index.json", "oci-layout"];
                let has_other_files = fs::read_dir(&self.root)
                    .map_err(StoreError::io("list", &self.root))?
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .any(|name| !known.contains(&name.as_str()) && !name.starts_with('.'));
                if has_other_files {
                    return Err(StoreError::InvalidLayout {
                        path: self.root.clone(),
                        reason: "the directory is not empty and has no oci-layout file; \
                                 choose an empty directory or an existing store"
                            .into(),
                    });
                }
                // Several processes may create the same store at once: each file is created
                // only if absent, index.json first, so a store with oci-layout is complete.
                let ingest = self.ingest_dir();
                fs::create_dir_all(&ingest).map_err(StoreError::io("create directory", &ingest))?;
                let empty_index =
                    serde_json::to_vec_pretty(&crate::manifest::ImageIndex::default())
                        .expect("an index always serializes");
                index::create_if_absent(&self.root, "index.json", &empty_index)?;
                index::create_if_absent(&self.root, "oci-layout", OCI_LAYOUT.as_bytes())?;
                Ok(())
            }
            Err(error) => Err(StoreError::io("read", layout_path)(error)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a committed blob (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn stat(&self, digest: &Digest) -> Result<BlobInfo> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(metadata) => Ok(BlobInfo {
                digest: digest.clone(),
                size: metadata.len(),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound {
                    digest: digest.clone(),
                })
            }
            Err(error) => Err(StoreError::io("stat", path)(error)),
        }
    }

    /// Opens a committed blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound {
                    digest: digest.clone(),
                }
            } else {
                StoreError::io("open", path)(error)
            }
        })
    }

    /// Reads `length` bytes from `offset` (to the end when `length` is `None`).
    /// A range that reaches past the end of the blob is an error, not a short read.
    pub fn read_range(&self, digest: &Digest, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
        let mut file = self.open_blob(digest)?;
        let path = self.blob_path(digest);
        let size = file
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(StoreError::RangeOutOfBounds {
                digest: digest.clone(),
                offset,
                length,
                size,
            });
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(StoreError::io("seek", &path))?;
        let capacity = usize::try_from(length).unwrap_or(usize::MAX);
        let mut data = Vec::with_capacity(capacity);
        file.take(length)
            .read_to_end(&mut data)
            .map_err(StoreError::io("read", &path))?;
        Ok(data)
    }

    /// Lists committed blobs, sorted by digest. Files under `blobs/` whose names are not valid
    /// digests are skipped here and reported by `verify`.
    pub fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut blobs = Vec::new();
        for entry in self.blob_files()? {
            if let BlobFile::Valid { digest, size, .. } = entry {
                blobs.push(BlobInfo { digest, size });
            }
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(blobs)
    }

    /// Deletes a blob; returns whether it existed. A blob reachable from `index.json` is
    /// refused with [`StoreError::BlobInUse`] unless `force` is set, because deleting it would
    /// leave a tagged image incomplete.
    pub fn delete(&self, digest: &Digest, force: bool) -> Result<bool> {
        if !force {
            if let Some(reference) = self.reachable()?.get(digest) {
                return Err(StoreError::BlobInUse {
                    digest: digest.clone(),
                    referenced_by: reference.referenced_by.clone(),
                });
            }
        }
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(StoreError::io("delete", path)(error)),
        }
    }

    /// Counts files and bytes in `blobs/`, `ingest/` and `quarantine/`.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for entry in self.blob_files()? {
            let (BlobFile::Valid { size, .. } | BlobFile::Invalid { size, .. }) = entry;
            usage.blobs += 1;
            usage.blob_bytes += size;
        }
        (usage.ingest_files, usage.ingest_bytes) = directory_totals(&self.ingest_dir())?;
        usage.ingest_files -= lock_files(&self.ingest_dir())?;
        (usage.quarantine_files, usage.quarantine_bytes) =
            directory_totals(&self.quarantine_dir())?;
        Ok(usage)
    }

    /// Every regular file under `blobs/<alg>/`, classified by whether its name is a digest.
    pub(crate) fn blob_files(&self) -> Result<Vec<BlobFile>> {
        let blobs = self.root.join("blobs");
        let mut files = Vec::new();
        for algorithm_entry in read_dir(&blobs)? {
            let algorithm_path = algorithm_entry.path();
            if !algorithm_path.is_dir() {
                continue;
            }
            let algorithm = Algorithm::from_name(&algorithm_entry.file_name().to_string_lossy());
            for entry in read_dir(&algorithm_path)? {
                let path = entry.path();
                let metadata = match fs::symlink_metadata(&path) {
                    Ok(metadata) => metadata,
                    // Removed by a concurrent delete or gc after the listing.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(StoreError::io("stat", &path)(error)),
                };
                let name = entry.file_name().to_string_lossy().into_owned();
                let size = metadata.len();
                // Symlinks and directories are never blobs: verify reports them.
                if !metadata.is_file() {
                    files.push(BlobFile::Invalid { path, size: 0 });
                    continue;
                }
                match algorithm.map(|a| Digest::from_parts(a, &name)) {
                    Some(Ok(digest)) => files.push(BlobFile::Valid { digest, size, path }),
                    _ => files.push(BlobFile::Invalid { path, size }),
                }
            }
        }
        Ok(files)
    }
}

/// A file found under `blobs/`.
pub(crate) enum BlobFile {
    Valid {
        digest: Digest,
        size: u64,
        path: PathBuf,
    },
    Invalid {
        path: PathBuf,
        size: u64,
    },
}

fn check_layout_version(path: &Path, bytes: &[u8]) -> Result<()> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| StoreError::InvalidJson {
            what: path.display().to_string(),
            source,
        })?;
    match value.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(version) if version.starts_with("1.") => Ok(()),
        other => Err(StoreError::InvalidLayout {
            path: path.to_owned(),
            reason: format!("unsupported imageLayoutVersion {other:?}, expected 1.x"),
        }),
    }
}

pub(crate) fn read_dir(path: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(path) {
        Ok(entries) => entries
            .collect::<io::Result<Vec<_>>>()
            .map_err(StoreError::io("list", path)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(StoreError::io("list", path)(error)),
    }
}

/// Counts lock files, which `usage` does not report as ingest files.
fn lock_files(path: &Path) -> Result<u64> {
    let is_lock = |entry: &fs::DirEntry| entry.file_name().to_string_lossy().ends_with(".lock");
    Ok(read_dir(path)?
        .iter()
        .filter(|entry| is_lock(entry))
        .count() as u64)
}

fn directory_totals(path: &Path) -> Result<(u64, u64)> {
    let mut totals = (0, 0);
    for entry in read_dir(path)? {
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Committed or removed by a writer after the listing.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(StoreError::io("stat", entry.path())(error)),
        };
        if metadata.is_file() {
            totals.0 += 1;
            totals.1 += metadata.len();
        }
    }
    Ok(totals)
}
