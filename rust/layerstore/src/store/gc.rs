//! Reachability from `index.json` and garbage collection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::manifest;
use crate::store::ingest::remove_if_exists;
use crate::store::{read_dir, BlobFile, BlobInfo, Store};

/// A blob reachable from `index.json`: the size its referrer declares, and who refers to it.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub size: u64,
    pub referenced_by: String,
    /// The blob may be absent from the store without the image being broken: a foreign layer
    /// (with `urls`), the `subject` of a referrer, or an entry of an index (a platform that
    /// was not pulled). A blob that one referrer needs and another does not is not optional.
    pub optional: bool,
}

/// The result of a reference walk.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub reachable: BTreeMap<Digest, Reference>,
    /// Manifests whose descriptors could not be read, with the reason.
    pub invalid: Vec<(Digest, String)>,
}

/// Options for [`Store::gc`].
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreachable blobs younger than this (by modification time) are kept, so a blob written
    /// or reused by a pull that has not yet tagged its manifest survives a concurrent `gc`.
    pub grace_period: Duration,
    /// Partial files in `ingest/` idle for longer than this, and not locked by a writer, are
    /// removed.
    pub ingest_max_age: Duration,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            grace_period: Duration::from_secs(3600),
            ingest_max_age: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

/// What [`Store::gc`] removed (or would remove, in a dry run).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub removed_blobs: Vec<BlobInfo>,
    pub removed_blob_bytes: u64,
    pub removed_ingest_files: Vec<PathBuf>,
    pub removed_ingest_bytes: u64,
    pub kept_blobs: u64,
    pub kept_blob_bytes: u64,
}

impl Store {
    /// Walks `index.json` → manifests and indexes → configs, layers, nested manifests, artifact
    /// blobs and subjects, returning every reachable digest.
    ///
    /// An index entry that is absent is reachable but optional, and has no children: what a
    /// platform that was never pulled refers to is unknown, so gc keeps what is reachable from
    /// the entries that are present.
    ///
    /// Only blobs in a manifest position (`index.json` entries, `manifests`, `subject`) are
    /// opened and parsed; configs, layers and artifact blobs are content. A manifest that is not
    /// a JSON object has no children.
    /// Blobs in `untrusted` (known to be corrupt) are not parsed. A manifest whose descriptors
    /// are invalid is listed in [`Walk::invalid`].
    pub(crate) fn walk(&self, untrusted: &BTreeSet<Digest>) -> Result<Walk> {
        let mut walk = Walk::default();
        let mut queue: VecDeque<(manifest::Reference, String, bool)> = self
            .read_index()?
            .manifests
            .into_iter()
            .map(|descriptor| {
                let reference = manifest::Reference {
                    descriptor,
                    is_manifest: true,
                    is_subject: false,
                };
                (reference, "index.json".to_owned(), false)
            })
            .collect();
        while let Some((reference, referenced_by, may_be_absent)) = queue.pop_front() {
            let manifest::Reference {
                descriptor,
                is_manifest,
                ..
            } = reference;
            let optional = may_be_absent || !descriptor.urls().is_empty();
            if let Some(known) = walk.reachable.get_mut(&descriptor.digest) {
                known.optional &= optional;
                continue;
            }
            walk.reachable.insert(
                descriptor.digest.clone(),
                Reference {
                    size: descriptor.size,
                    referenced_by,
                    optional,
                },
            );
            if !is_manifest || untrusted.contains(&descriptor.digest) {
                continue;
            }
            if descriptor.size > manifest::MAX_MANIFEST_SIZE {
                let reason = format!("manifest {} is larger than 4 MiB", descriptor.digest);
                walk.invalid.push((descriptor.digest.clone(), reason));
                continue;
            }
            let bytes = match self.read_range(&descriptor.digest, 0, None) {
                Ok(bytes) => bytes,
                Err(StoreError::BlobNotFound { .. } | StoreError::RangeOutOfBounds { .. }) => {
                    continue
                }
                Err(error) => return Err(error),
            };
            let name = format!("manifest {}", descriptor.digest);
            match manifest::referenced_descriptors(&bytes, &name) {
                Ok(children) => {
                    for child in children {
                        let may_be_absent = child.is_subject || child.is_index_entry();
                        queue.push_back((child, descriptor.digest.to_string(), may_be_absent));
                    }
                }
                Err(error) => walk
                    .invalid
                    .push((descriptor.digest.clone(), error_chain(&error))),
            }
        }
        Ok(walk)
    }

    /// Returns every digest reachable from `index.json`; a manifest with invalid descriptors is
    /// an error, because what it refers to cannot be known.
    pub(crate) fn reachable(&self) -> Result<BTreeMap<Digest, Reference>> {
        let walk = self.walk(&BTreeSet::new())?;
        if let Some((digest, reason)) = walk.invalid.into_iter().next() {
            return Err(StoreError::InvalidLayout {
                path: self.blob_path(&digest),
                reason: format!(
                    "{reason}; run `warmstart store verify --quarantine` to move it aside"
                ),
            });
        }
        Ok(walk.reachable)
    }

    /// Removes every blob not reachable from `index.json` (older than the grace period) and
    /// stale partial files in `ingest/`. A reference walk that fails (an unreadable manifest)
    /// aborts the collection before anything is removed.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let reachable = self.reachable()?;
        let now = SystemTime::now();
        let mut report = GcReport::default();
        for file in self.blob_files()? {
            let BlobFile::Valid { digest, size, path } = file else {
                continue; // other entries are reported by verify, and quarantined there
            };
            if reachable.contains_key(&digest) || is_young(&path, now, options.grace_period) {
                report.kept_blobs += 1;
                report.kept_blob_bytes += size;
                continue;
            }
            if !options.dry_run
                && !self.remove_unused_blob(&digest, &path, now, options.grace_period)?
            {
                report.kept_blobs += 1;
                report.kept_blob_bytes += size;
                continue;
            }
            tracing::debug!(%digest, size, "removed unreachable blob");
            report.removed_blob_bytes += size;
            report.removed_blobs.push(BlobInfo { digest, size });
        }
        self.collect_ingest(options, now, &mut report)?;
        tracing::info!(
            removed_blobs = report.removed_blobs.len(),
            removed_bytes = report.removed_blob_bytes + report.removed_ingest_bytes,
            dry_run = options.dry_run,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// Deletes an unreachable blob under its lock, unless a writer used it since the walk (a
    /// put or pull that found it present refreshes its time under the same lock). Returns
    /// whether it was removed.
    fn remove_unused_blob(
        &self,
        digest: &Digest,
        path: &Path,
        now: SystemTime,
        grace: Duration,
    ) -> Result<bool> {
        let lock = self.lock_digest(digest)?;
        let lock_path = self.lock_path(digest);
        if is_young(path, now, grace) {
            remove_if_exists(&lock_path);
            return Ok(false);
        }
        let removed = match fs::remove_file(path) {
            Ok(()) => true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(error) => return Err(StoreError::io("delete", path)(error)),
        };
        remove_if_exists(&lock_path);
        drop(lock);
        Ok(removed)
    }

    /// Removes idle partial, log, lock and temporary files. Files of a digest whose lock a
    /// writer holds are in use and kept; lock files are removed only while gc holds them, which
    /// the lock protocol of `lock_file` makes safe. The index lock is never removed.
    fn collect_ingest(
        &self,
        options: &GcOptions,
        now: SystemTime,
        report: &mut GcReport,
    ) -> Result<()> {
        for entry in read_dir(&self.ingest_dir())? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(metadata) = fs::symlink_metadata(&path) else {
                continue; // removed by its writer meanwhile
            };
            let idle = metadata
                .modified()
                .is_ok_and(|modified| age(now, modified) >= options.ingest_max_age);
            if name == "index.json.lock" || !idle || metadata.is_dir() {
                continue;
            }
            let stem = name
                .strip_suffix(".data")
                .or_else(|| name.strip_suffix(".chunks"))
                .or_else(|| name.strip_suffix(".lock"));
            // Take the lock that guards the file, so no writer is using it: its own lock for
            // partial data, the index lock for a temporary index.json.
            let guard = match stem {
                Some(stem) => self.ingest_dir().join(format!("{stem}.lock")),
                None if name.starts_with("tmp-index.json") => {
                    self.ingest_dir().join("index.json.lock")
                }
                None => path.clone(),
            };
            let held = match try_lock(&guard)? {
                Some(lock) => Some(lock),
                None => continue,
            };
            if !options.dry_run {
                remove_if_exists(&path);
                if let Some(stem) = stem {
                    // Held by gc itself, so removing it is safe (see `lock_file`).
                    remove_if_exists(&self.ingest_dir().join(format!("{stem}.lock")));
                }
            }
            drop(held);
            report.removed_ingest_bytes += metadata.len();
            report.removed_ingest_files.push(path);
        }
        Ok(())
    }
}

fn is_young(path: &Path, now: SystemTime, grace: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| age(now, modified) < grace)
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Takes the lock at `path` if nobody holds it; `None` when a writer does.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(file) => file,
        Err(error) => return Err(StoreError::io("open lock file", path)(error)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::io("lock", path)(error)),
    }
}

/// Formats an error with its causes, for messages that outlive it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
