//! Tags: `index.json` entries annotated with `org.opencontainers.image.ref.name`.
//!
//! Every change to `index.json` is a read-modify-write under the lock `ingest/index.json.lock`,
//! and the new file replaces the old one by rename, so readers (skopeo included) see either the
//! old or the new index, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::manifest::{self, Descriptor, ImageIndex, REF_NAME};
use crate::registry::platform;
use crate::store::ingest::{lock_file, sync_directory};
use crate::store::Store;

/// A blob an image needs that the store lacks, found by [`Store::first_missing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Missing {
    pub digest: Digest,
    /// The manifest that refers to it (with its platform, for an index entry), or `index.json`.
    pub referenced_by: String,
}

/// Longest tag accepted; OCI's reference grammar allows 128 characters for a tag and 255 for a
/// whole reference, and a layout tag may hold a whole reference.
const MAX_TAG_LENGTH: usize = 255;

impl Store {
    /// Reads `index.json`.
    pub fn read_index(&self) -> Result<ImageIndex> {
        let path = self.root().join("index.json");
        let bytes = fs::read(&path).map_err(StoreError::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidJson {
            what: path.display().to_string(),
            source,
        })
    }

    pub(crate) fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).expect("an index always serializes");
        write_atomically(self.root(), "index.json", &bytes)
    }

    /// Applies `change` to `index.json` under the index lock.
    pub fn update_index<T>(&self, change: impl FnOnce(&mut ImageIndex) -> Result<T>) -> Result<T> {
        let _lock = lock_file(&self.ingest_dir().join("index.json.lock"))?;
        let mut index = self.read_index()?;
        let result = change(&mut index)?;
        self.write_index(&index)?;
        Ok(result)
    }

    /// Points `tag` at the manifest or index `digest`, which must be in the store. The media type
    /// recorded in `index.json` is the one the manifest declares, or is inferred from its fields.
    /// Returns the descriptor written.
    pub fn tag(&self, tag: &str, digest: &Digest) -> Result<Descriptor> {
        validate_tag(tag)?;
        let (mut descriptor, _) = self.read_manifest(digest)?;
        descriptor
            .annotations
            .insert(REF_NAME.into(), Value::String(tag.to_owned()));
        self.tag_descriptor(descriptor.clone())?;
        Ok(descriptor)
    }

    /// Reads the manifest or index `digest` and returns its descriptor (with the media type it
    /// declares, or one inferred from its fields) and its bytes. A blob that is not a manifest
    /// raises [`StoreError::InvalidLayout`].
    pub(crate) fn read_manifest(&self, digest: &Digest) -> Result<(Descriptor, Vec<u8>)> {
        let size = self.stat(digest)?.size;
        let not_a_manifest = || StoreError::InvalidLayout {
            path: self.blob_path(digest),
            reason: format!("blob {digest} is not a manifest or index"),
        };
        if size > manifest::MAX_MANIFEST_SIZE {
            return Err(not_a_manifest());
        }
        let bytes = self.read_range(digest, 0, None)?;
        let media_type = manifest::media_type_of(&bytes).ok_or_else(not_a_manifest)?;
        Ok((Descriptor::new(&media_type, digest.clone(), size), bytes))
    }

    /// Adds `descriptor` to `index.json`, replacing any entry with the same tag.
    ///
    /// The descriptor must name a complete image (see [`Store::first_missing`]): an image
    /// manifest and every blob it reaches, or an index whose entries that are in the store are
    /// complete. Entries of an index may be absent, because a store often holds only the
    /// platforms that were pulled. Raises [`StoreError::IncompleteImage`] otherwise.
    pub fn tag_descriptor(&self, descriptor: Descriptor) -> Result<()> {
        if let Some(tag) = descriptor.ref_name() {
            validate_tag(tag)?;
        }
        if let Some(missing) = self.first_missing(&descriptor)? {
            let image = descriptor
                .ref_name()
                .map_or_else(|| descriptor.digest.to_string(), str::to_owned);
            return Err(StoreError::IncompleteImage {
                image,
                digest: missing.digest,
                referenced_by: missing.referenced_by,
            });
        }
        self.update_index(|index| {
            if let Some(tag) = descriptor.ref_name() {
                index
                    .manifests
                    .retain(|entry| entry.ref_name() != Some(tag));
            } else if index.manifests.iter().any(|entry| entry == &descriptor) {
                return Ok(());
            }
            index.manifests.push(descriptor);
            Ok(())
        })
    }

    /// Returns the first blob that `root` needs and the store lacks, or `None` when the image
    /// is complete.
    ///
    /// The root is needed, and so is every blob that a needed manifest refers to. Three kinds
    /// of blob may be absent: an entry of an index's `manifests` (a platform that was not
    /// pulled), a foreign layer (a descriptor with `urls`, which may live at its URL only) and
    /// a referrer's `subject` (another image). An index entry that is present is needed whole,
    /// so a platform in the store is never half an image.
    pub(crate) fn first_missing(&self, root: &Descriptor) -> Result<Option<Missing>> {
        let mut queue = vec![(root.clone(), true, false, "index.json".to_owned())];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((descriptor, is_manifest, optional, referenced_by)) = queue.pop() {
            // Presence first: a blob optional in one place may be needed in another.
            if !self.has(&descriptor.digest) {
                if optional || !descriptor.urls().is_empty() {
                    continue;
                }
                return Ok(Some(Missing {
                    digest: descriptor.digest,
                    referenced_by,
                }));
            }
            if !seen.insert(descriptor.digest.clone()) {
                continue;
            }
            if !is_manifest || descriptor.size > manifest::MAX_MANIFEST_SIZE {
                continue;
            }
            let bytes = self.read_range(&descriptor.digest, 0, None)?;
            let name = format!("manifest {}", descriptor.digest);
            let is_index = manifest::media_type_of(&bytes)
                .is_some_and(|media_type| manifest::is_index_media_type(&media_type));
            let kind = if is_index { "index" } else { "manifest" };
            let referrer = match platform::platform_of(&descriptor) {
                Some(platform) => format!(
                    "{kind} {} (platform {platform} in {referenced_by})",
                    descriptor.digest
                ),
                None => format!("{kind} {}", descriptor.digest),
            };
            for child in manifest::referenced_descriptors(&bytes, &name)? {
                if child.is_subject {
                    continue; // a referrer's subject is another image, not part of this one
                }
                let optional = child.is_index_entry();
                let is_manifest = child.is_manifest;
                queue.push((child.descriptor, is_manifest, optional, referrer.clone()));
            }
        }
        Ok(None)
    }

    /// Removes `tag` from `index.json`; the blobs stay until `gc`. Returns whether it existed.
    pub fn untag(&self, tag: &str) -> Result<bool> {
        validate_tag(tag)?;
        self.update_index(|index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|entry| entry.ref_name() != Some(tag));
            Ok(index.manifests.len() != before)
        })
    }

    /// Returns the descriptor `tag` points to.
    pub fn resolve(&self, tag: &str) -> Result<Descriptor> {
        self.read_index()?
            .manifests
            .into_iter()
            .find(|entry| entry.ref_name() == Some(tag))
            .ok_or_else(|| StoreError::TagNotFound {
                tag: tag.to_owned(),
            })
    }

    /// Returns every tagged descriptor in `index.json`, in file order.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .filter_map(|entry| entry.ref_name().map(|tag| (tag.to_owned(), entry.clone())))
            .collect())
    }
}

/// Checks a tag against the grammar of `org.opencontainers.image.ref.name`: components of
/// letters and digits joined by one separator (`-`, `.`, `_`, `:`, `@`, `+`, `/`, or `--`).
pub fn validate_tag(tag: &str) -> Result<()> {
    let invalid = |reason| StoreError::InvalidTag {
        tag: tag.to_owned(),
        reason,
    };
    if tag.is_empty() {
        return Err(invalid("a tag must not be empty"));
    }
    if tag.len() > MAX_TAG_LENGTH {
        return Err(invalid("a tag has at most 255 characters"));
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b))
    {
        return Err(invalid(
            "a tag may contain only letters, digits and . _ - : / @ +",
        ));
    }
    let bytes = tag.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(invalid("a tag must start and end with a letter or digit"));
    }
    let separators =
        |window: &[u8]| !window[0].is_ascii_alphanumeric() && !window[1].is_ascii_alphanumeric();
    let doubled = bytes.windows(2).any(|w| separators(w) && w != b"--");
    let tripled_dash = tag.contains("---");
    if doubled || tripled_dash {
        return Err(invalid(
            "separators in a tag stand alone between letters or digits",
        ));
    }
    Ok(())
}

/// Writes `bytes` to a new temporary file in `root/ingest/` and fsyncs it. A crash leaves the
/// file in `ingest/`, where `gc` removes it once it is idle.
fn write_temporary(root: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temporary = root.join("ingest").join(format!(
        "tmp-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(StoreError::io("write", &temporary))?;
    Ok(temporary)
}

/// Replaces `root/name` with `bytes`: write a temporary file, fsync it, rename it over the
/// target, fsync the directory.
pub(crate) fn write_atomically(root: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = write_temporary(root, name, bytes)?;
    let target = root.join(name);
    if let Err(error) = fs::rename(&temporary, &target) {
        let _ = fs::remove_file(&temporary);
        return Err(StoreError::io("rename into place", &target)(error));
    }
    sync_directory(root)
}

/// Creates `root/name` with `bytes` unless it exists, atomically: the complete file appears
/// under its name by a hard link, which fails if another process created it first.
pub(crate) fn create_if_absent(root: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let target = root.join(name);
    if target.exists() {
        return Ok(());
    }
    let temporary = write_temporary(root, name, bytes)?;
    let linked = fs::hard_link(&temporary, &target);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => sync_directory(root),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::io("create", &target)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::validate_tag;

    #[test]
    fn validate_tag_accepts_references() {
        for tag in [
            "latest",
            "v1.2.3",
            "docker.io/library/ubuntu:22.04",
            "sha256-abc",
            "a@b+c",
        ] {
            assert!(validate_tag(tag).is_ok(), "{tag}");
        }
    }

    #[test]
    fn validate_tag_rejects_bad_tags() {
        for tag in [
            "",
            "-x",
            "a b",
            "tag\n",
            &"x".repeat(256),
            ".hidden",
            "a/../../b",
            "a//b",
            "a..b",
            "a::b",
            "a@@b",
            "a-",
        ] {
            assert!(validate_tag(tag).is_err(), "{tag:?}");
        }
    }
}
