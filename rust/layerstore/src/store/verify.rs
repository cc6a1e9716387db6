//! Re-hashing every blob, in parallel on all cores.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::gc::Walk;
use crate::store::{BlobFile, Store};

const READ_BUFFER: usize = 1 << 20;

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file's content hashes to another digest.
    DigestMismatch {
        digest: Digest,
        actual: Digest,
        size: u64,
    },
    /// The file is shorter than a manifest declares, so its content hashes to another digest.
    Truncated {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// The content matches its digest, but a manifest declares another size for it.
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A blob reachable from `index.json` is absent.
    Missing {
        digest: Digest,
        referenced_by: String,
    },
    /// An entry under `blobs/` that is not a regular file named by a valid digest.
    InvalidName { path: PathBuf },
    /// A manifest that hashes correctly but whose descriptors are invalid.
    InvalidManifest { digest: Digest, reason: String },
}

impl Problem {
    /// The file this problem is about, when it has one.
    fn path(&self, store: &Store) -> Option<PathBuf> {
        match self {
            Problem::DigestMismatch { digest, .. }
            | Problem::Truncated { digest, .. }
            | Problem::SizeMismatch { digest, .. } => Some(store.blob_path(digest)),
            Problem::InvalidName { path } => Some(path.clone()),
            Problem::InvalidManifest { digest, .. } => Some(store.blob_path(digest)),
            Problem::Missing { .. } => None,
        }
    }
}

/// The outcome of [`Store::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub checked_blobs: u64,
    pub checked_bytes: u64,
    pub problems: Vec<Problem>,
    /// Where quarantined files were moved.
    pub quarantined: Vec<PathBuf>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Re-hashes every blob and checks the size of every blob reachable from `index.json`.
    /// With `quarantine`, corrupt, truncated and misnamed files are moved to `quarantine/`, so
    /// `blobs/` again holds only verified content and the next pull fetches them anew.
    pub fn verify(&self, quarantine: bool) -> Result<VerifyReport> {
        let mut files = self.blob_files()?;
        // Largest first, so one big blob does not start last and leave the other cores idle.
        files.sort_by_key(|file| std::cmp::Reverse(file_size(file)));

        // Hash first: the reference walk must not trust a manifest that fails its digest.
        let hashed: Vec<Result<Option<Digest>>> = files
            .par_iter()
            .map(|file| match file {
                BlobFile::Invalid { .. } => Ok(None),
                BlobFile::Valid { digest, path, .. } => match hash_file(path, digest) {
                    Ok(actual) => Ok(Some(actual)),
                    // Deleted by a concurrent writer or gc after the listing: nothing to check.
                    Err(StoreError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                },
            })
            .collect();
        let mut actual_digests = Vec::with_capacity(files.len());
        for result in hashed {
            actual_digests.push(result?);
        }
        let corrupt: BTreeSet<Digest> = files
            .iter()
            .zip(&actual_digests)
            .filter_map(|(file, actual)| match (file, actual) {
                (BlobFile::Valid { digest, .. }, Some(actual)) if actual != digest => {
                    Some(digest.clone())
                }
                _ => None,
            })
            .collect();
        let walk = self.walk(&corrupt)?;

        let mut report = VerifyReport {
            checked_blobs: files.len() as u64,
            checked_bytes: files.iter().map(file_size).sum(),
            ..VerifyReport::default()
        };
        for (file, actual) in files.iter().zip(actual_digests) {
            if let Some(problem) = check_file(file, actual, &walk) {
                report.problems.push(problem);
            }
        }
        for (digest, reason) in walk.invalid {
            report
                .problems
                .push(Problem::InvalidManifest { digest, reason });
        }
        for (digest, reference) in &walk.reachable {
            if !reference.optional && !self.has(digest) {
                report.problems.push(Problem::Missing {
                    digest: digest.clone(),
                    referenced_by: reference.referenced_by.clone(),
                });
            }
        }
        if quarantine {
            for problem in &report.problems {
                if let Some(path) = problem.path(self) {
                    if let Some(moved) = self.quarantine_file(&path)? {
                        report.quarantined.push(moved);
                    }
                }
            }
        }
        for problem in &report.problems {
            tracing::warn!(?problem, "verify found a problem");
        }
        Ok(report)
    }

    /// Moves a damaged file to `quarantine/`; `None` when it vanished meanwhile.
    fn quarantine_file(&self, path: &Path) -> Result<Option<PathBuf>> {
        let algorithm = path.parent().and_then(Path::file_name).map_or_else(
            || "unknown".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let stamp = format!(
            "{nanos}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let target = self
            .quarantine_dir()
            .join(format!("{algorithm}-{name}.{stamp}"));
        match fs::rename(path, &target) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("move to quarantine", path)(error)),
        }
        tracing::warn!(from = %path.display(), to = %target.display(), "quarantined blob");
        Ok(Some(target))
    }
}

/// Compares one file's hash and size with its name and with what manifests declare.
fn check_file(file: &BlobFile, actual: Option<Digest>, walk: &Walk) -> Option<Problem> {
    let (digest, size) = match file {
        BlobFile::Invalid { path, .. } => return Some(Problem::InvalidName { path: path.clone() }),
        BlobFile::Valid { digest, size, .. } => (digest, *size),
    };
    let actual = actual?;
    let declared = walk.reachable.get(digest).map(|reference| reference.size);
    if actual != *digest {
        return Some(match declared {
            Some(expected) if expected > size => Problem::Truncated {
                digest: digest.clone(),
                expected,
                actual: size,
            },
            _ => Problem::DigestMismatch {
                digest: digest.clone(),
                actual,
                size,
            },
        });
    }
    declared
        .filter(|expected| *expected != size)
        .map(|expected| Problem::SizeMismatch {
            digest: digest.clone(),
            expected,
            actual: size,
        })
}

fn file_size(file: &BlobFile) -> u64 {
    match file {
        BlobFile::Valid { size, .. } | BlobFile::Invalid { size, .. } => *size,
    }
}

/// Hashes the file at `path` with the algorithm of `digest`.
pub(crate) fn hash_file(path: &Path, digest: &Digest) -> Result<Digest> {
    let mut file = File::open(path).map_err(StoreError::io("open", path))?;
    let mut hasher = digest.algorithm().hasher();
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        let count = file
            .read(&mut buffer)
            .map_err(StoreError::io("read", path))?;
        if count == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..count]);
    }
}
