//! Import from and export to OCI image layout directories.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Result, StoreError};
use crate::manifest::{self, Descriptor, ImageIndex, Reference};
use crate::store::{Expected, Store};

/// What an import copied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    /// The root descriptors added to `index.json` (tagged or not).
    pub images: Vec<Descriptor>,
    /// Blobs written by this import.
    pub blobs_added: u64,
    pub bytes_added: u64,
    /// Blobs that were already in the store and were not copied again.
    pub blobs_present: u64,
}

impl Store {
    /// Copies images from the OCI layout at `source` into this store and adds their root
    /// descriptors to `index.json`.
    ///
    /// With `tags`, only the entries of `source/index.json` carrying one of those tags are
    /// imported; otherwise all entries are. Every blob reachable from an imported entry is
    /// copied and verified against its descriptor; a reachable blob missing from `source` is an
    /// error, unless it is a foreign layer (a descriptor with `urls`), a referrer's subject or an
    /// entry of an index (a platform that was not pulled), which are skipped.
    pub fn import_layout(&self, source: &Path, tags: Option<&[String]>) -> Result<ImportReport> {
        let roots = select_roots(source, tags)?;
        let mut report = ImportReport::default();
        self.copy_closure(source, &roots, &mut report)?;
        for root in &roots {
            self.tag_descriptor(root.clone())?;
        }
        report.images = roots;
        Ok(report)
    }

    /// Writes the images carrying `tags` (all tagged images when `None`) to a new or existing
    /// OCI layout at `target`, with every blob they reach. An index is written with the
    /// platforms in the store; its other entries stay listed, without their blobs.
    pub fn export_layout(&self, target: &Path, tags: Option<&[String]>) -> Result<ImportReport> {
        let fresh = !target.exists();
        let target_store = Store::open(target)?;
        let tags = match tags {
            Some(tags) => tags.to_vec(),
            None => self.tags()?.into_iter().map(|(tag, _)| tag).collect(),
        };
        let report = target_store.import_layout(self.root(), Some(&tags))?;
        if fresh {
            remove_working_directories(&target_store, target);
        }
        Ok(report)
    }

    /// Copies every blob reachable from `roots` in the layout at `source`.
    fn copy_closure(
        &self,
        source: &Path,
        roots: &[Descriptor],
        report: &mut ImportReport,
    ) -> Result<()> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<(Reference, String, bool)> = roots
            .iter()
            .map(|root| {
                let reference = Reference {
                    descriptor: root.clone(),
                    is_manifest: true,
                    is_subject: false,
                };
                (reference, "index.json".to_owned(), false)
            })
            .collect();
        while let Some((reference, referenced_by, is_index_entry)) = queue.pop_front() {
            let Reference {
                descriptor,
                is_manifest,
                is_subject,
            } = reference;
            if !seen.insert(descriptor.digest.clone()) {
                continue;
            }
            let path = source_blob_path(source, &descriptor.digest);
            if !path.is_file() {
                if !descriptor.urls().is_empty() {
                    tracing::info!(digest = %descriptor.digest, "skipping foreign layer absent from the source");
                    continue;
                }
                if is_subject {
                    tracing::info!(digest = %descriptor.digest, %referenced_by, "skipping subject manifest absent from the source");
                    continue;
                }
                if is_index_entry {
                    // A platform that was not pulled: the index may still be tagged (see
                    // `Store::first_missing`), and a reader that selects it gets an error.
                    tracing::info!(digest = %descriptor.digest, %referenced_by, "skipping index entry absent from the source");
                    continue;
                }
                return Err(StoreError::MissingBlob {
                    digest: descriptor.digest,
                    referenced_by,
                    source_path: source.to_owned(),
                });
            }
            let expected = Expected::digest(descriptor.digest.clone()).with_size(descriptor.size);
            let outcome = self.put_file(&path, expected)?;
            if outcome.created {
                report.blobs_added += 1;
                report.bytes_added += outcome.size;
            } else {
                report.blobs_present += 1;
            }
            if !is_manifest {
                continue;
            }
            let invalid = |reason: String| StoreError::InvalidLayout {
                path: path.clone(),
                reason,
            };
            if descriptor.size > manifest::MAX_MANIFEST_SIZE {
                return Err(invalid(format!(
                    "manifest {} is larger than 4 MiB",
                    descriptor.digest
                )));
            }
            let bytes = self.read_range(&descriptor.digest, 0, None)?;
            if manifest::media_type_of(&bytes).is_none() {
                return Err(invalid(format!(
                    "{} (referenced by {referenced_by}) is not a manifest or index",
                    descriptor.digest
                )));
            }
            let name = format!("manifest {}", descriptor.digest);
            for child in manifest::referenced_descriptors(&bytes, &name)? {
                let is_index_entry = child.is_index_entry();
                queue.push_back((child, descriptor.digest.to_string(), is_index_entry));
            }
        }
        Ok(())
    }
}

/// Removes the store's working directories from a layout that export just created: a plain
/// layout has no use for them. A failure leaves a harmless empty folder.
fn remove_working_directories(target_store: &Store, target: &Path) {
    for directory in [target_store.ingest_dir(), target_store.quarantine_dir()] {
        for entry in fs::read_dir(&directory).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".lock") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&directory);
    }
    for algorithm in Algorithm::ALL {
        let _ = fs::remove_dir(target.join("blobs").join(algorithm.name()));
    }
}

fn source_blob_path(source: &Path, digest: &Digest) -> PathBuf {
    source
        .join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
}

/// Reads `source/index.json` and returns the entries to import.
fn select_roots(source: &Path, tags: Option<&[String]>) -> Result<Vec<Descriptor>> {
    let layout_file = source.join("oci-layout");
    if !layout_file.is_file() {
        return Err(StoreError::InvalidLayout {
            path: source.to_owned(),
            reason: "no oci-layout file; expected an OCI image layout directory".into(),
        });
    }
    let index_path = source.join("index.json");
    let bytes = fs::read(&index_path).map_err(StoreError::io("read", &index_path))?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidJson {
            what: index_path.display().to_string(),
            source,
        })?;
    let Some(tags) = tags else {
        return Ok(index.manifests);
    };
    let mut roots = Vec::new();
    for tag in tags {
        let entry = index
            .manifests
            .iter()
            .find(|entry| entry.ref_name() == Some(tag.as_str()))
            .ok_or_else(|| StoreError::TagNotFound { tag: tag.clone() })?;
        roots.push(entry.clone());
    }
    Ok(roots)
}
