//! Reachability from `index.json` and garbage collection.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::manifest::{self, Descriptor};
use crate::store::{read_dir, BlobFile, BlobInfo, Store};

/// A blob reachable from `index.json`: the size its referrer declares, and who refers to it.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub size: u64,
    pub referenced_by: String,
    /// A foreign layer (with `urls`) may be absent from the store without the image being broken.
    pub foreign: bool,
}

/// Options for [`Store::gc`].
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreachable blobs younger than this (by modification time) are kept, so a blob written by
    /// a pull that has not yet tagged its manifest survives a concurrent `gc`.
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
    /// Blobs whose media type marks them as layers or configs are not opened; any other present
    /// blob of at most 4 MiB is parsed, and a blob that is not a JSON object has no children.
    pub(crate) fn reachable(&self) -> Result<BTreeMap<Digest, Reference>> {
        let mut reachable = BTreeMap::new();
        let mut queue: VecDeque<(Descriptor, String)> = self
            .read_index()?
            .manifests
            .into_iter()
            .map(|descriptor| (descriptor, "index.json".to_owned()))
            .collect();
        while let Some((descriptor, referenced_by)) = queue.pop_front() {
            if reachable.contains_key(&descriptor.digest) {
                continue;
            }
            reachable.insert(
                descriptor.digest.clone(),
                Reference {
                    size: descriptor.size,
                    referenced_by,
                    foreign: !descriptor.urls().is_empty(),
                },
            );
            if descriptor.is_content() || descriptor.size > manifest::MAX_MANIFEST_SIZE {
                continue;
            }
            if !self.has(&descriptor.digest) {
                continue;
            }
            let bytes = self.read_range(&descriptor.digest, 0, None)?;
            let name = format!("manifest {}", descriptor.digest);
            for child in manifest::referenced_descriptors(&bytes, &name)? {
                queue.push_back((child, descriptor.digest.to_string()));
            }
        }
        Ok(reachable)
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
                continue; // invalid names are reported by verify, and quarantined there
            };
            let young = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| age(now, modified) < options.grace_period);
            if reachable.contains_key(&digest) || young {
                report.kept_blobs += 1;
                report.kept_blob_bytes += size;
                continue;
            }
            if !options.dry_run {
                // Hold the digest lock so a concurrent put of the same digest is not undone.
                let _lock = self.lock_digest(&digest)?;
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(StoreError::io("delete", path)(error)),
                }
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

    /// Removes idle partial and lock files. A file whose lock a writer holds is in use and kept.
    ///
    /// Removing a lock file can race with a writer that opened it just before: that writer then
    /// holds a lock nobody else can see, and a second writer of the same digest may download it
    /// again. Both still verify before the atomic rename, so the race costs bandwidth, never
    /// correctness; the age threshold makes it rare.
    fn collect_ingest(
        &self,
        options: &GcOptions,
        now: SystemTime,
        report: &mut GcReport,
    ) -> Result<()> {
        for entry in read_dir(&self.ingest_dir())? {
            let path = entry.path();
            let metadata = entry.metadata().map_err(StoreError::io("stat", &path))?;
            let idle = metadata
                .modified()
                .is_ok_and(|modified| age(now, modified) >= options.ingest_max_age);
            if !metadata.is_file() || !idle {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let lock_path = match name
                .strip_suffix(".data")
                .or_else(|| name.strip_suffix(".chunks"))
            {
                Some(stem) => self.ingest_dir().join(format!("{stem}.lock")),
                None => path.clone(),
            };
            if is_locked(&lock_path) {
                continue;
            }
            if !options.dry_run {
                fs::remove_file(&path).map_err(StoreError::io("delete", &path))?;
            }
            report.removed_ingest_bytes += metadata.len();
            report.removed_ingest_files.push(path);
        }
        Ok(())
    }
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// True when another open file description holds the `flock` on `path`.
fn is_locked(path: &std::path::Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    file.try_lock().is_err()
}
