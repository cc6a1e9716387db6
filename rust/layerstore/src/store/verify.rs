//! Re-hashing every blob, in parallel on all cores.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
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
    /// A file under `blobs/` whose name is not a valid digest.
    InvalidName { path: PathBuf },
}

impl Problem {
    /// The file this problem is about, when it has one.
    fn path(&self, store: &Store) -> Option<PathBuf> {
        match self {
            Problem::DigestMismatch { digest, .. }
            | Problem::Truncated { digest, .. }
            | Problem::SizeMismatch { digest, .. } => Some(store.blob_path(digest)),
            Problem::InvalidName { path } => Some(path.clone()),
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
        let reachable = self.reachable()?;
        let mut files = self.blob_files()?;
        // Largest first, so one big blob does not start last and leave the other cores idle.
        files.sort_by_key(|file| std::cmp::Reverse(file_size(file)));

        let results: Vec<Result<Option<Problem>>> = files
            .par_iter()
            .map(|file| match file {
                BlobFile::Invalid { path, .. } => {
                    Ok(Some(Problem::InvalidName { path: path.clone() }))
                }
                BlobFile::Valid { digest, size, path } => {
                    let actual = hash_file(path, digest)?;
                    let declared = reachable.get(digest).map(|reference| reference.size);
                    if actual != *digest && declared.is_some_and(|declared| declared > *size) {
                        return Ok(Some(Problem::Truncated {
                            digest: digest.clone(),
                            expected: declared.unwrap_or_default(),
                            actual: *size,
                        }));
                    }
                    if actual != *digest {
                        return Ok(Some(Problem::DigestMismatch {
                            digest: digest.clone(),
                            actual,
                            size: *size,
                        }));
                    }
                    Ok(reachable
                        .get(digest)
                        .filter(|reference| reference.size != *size)
                        .map(|reference| Problem::SizeMismatch {
                            digest: digest.clone(),
                            expected: reference.size,
                            actual: *size,
                        }))
                }
            })
            .collect();

        let mut report = VerifyReport {
            checked_blobs: files.len() as u64,
            checked_bytes: files.iter().map(file_size).sum(),
            ..VerifyReport::default()
        };
        for result in results {
            if let Some(problem) = result? {
                report.problems.push(problem);
            }
        }
        for (digest, reference) in &reachable {
            if !reference.foreign && !self.has(digest) {
                report.problems.push(Problem::Missing {
                    digest: digest.clone(),
                    referenced_by: reference.referenced_by.clone(),
                });
            }
        }
        if quarantine {
            for problem in &report.problems {
                if let Some(path) = problem.path(self) {
                    report.quarantined.push(self.quarantine_file(&path)?);
                }
            }
        }
        for problem in &report.problems {
            tracing::warn!(?problem, "verify found a problem");
        }
        Ok(report)
    }

    fn quarantine_file(&self, path: &Path) -> Result<PathBuf> {
        let algorithm = path.parent().and_then(Path::file_name).map_or_else(
            || "unknown".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = self
            .quarantine_dir()
            .join(format!("{algorithm}-{name}.{stamp}"));
        fs::rename(path, &target).map_err(StoreError::io("move to quarantine", path))?;
        tracing::warn!(from = %path.display(), to = %target.display(), "quarantined blob");
        Ok(target)
    }
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
