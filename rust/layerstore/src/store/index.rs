//! Tags: `index.json` entries annotated with `org.opencontainers.image.ref.name`.
//!
//! Every change to `index.json` is a read-modify-write under the lock `ingest/index.json.lock`,
//! and the new file replaces the old one by rename, so readers (skopeo included) see either the
//! old or the new index, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::manifest::{self, Descriptor, ImageIndex, REF_NAME};
use crate::store::ingest::{lock_file, sync_directory};
use crate::store::Store;

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
        let size = self.stat(digest)?.size;
        let media_type = if size <= manifest::MAX_MANIFEST_SIZE {
            manifest::media_type_of(&self.read_range(digest, 0, None)?)
        } else {
            None
        };
        let mut descriptor = Descriptor::new(
            media_type.as_deref().unwrap_or(manifest::OCI_MANIFEST),
            digest.clone(),
            size,
        );
        descriptor
            .annotations
            .insert(REF_NAME.into(), Value::String(tag.to_owned()));
        self.tag_descriptor(descriptor.clone())?;
        Ok(descriptor)
    }

    /// Adds `descriptor` to `index.json`, replacing any entry with the same tag. The blob must be
    /// in the store.
    pub fn tag_descriptor(&self, descriptor: Descriptor) -> Result<()> {
        if let Some(tag) = descriptor.ref_name() {
            validate_tag(tag)?;
        }
        self.stat(&descriptor.digest)?;
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

    /// Removes `tag` from `index.json`; the blobs stay until `gc`. Returns whether it existed.
    pub fn untag(&self, tag: &str) -> Result<bool> {
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

/// Checks a tag against the characters an OCI reference may contain.
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
    if !tag.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid("a tag must start with a letter or digit"));
    }
    Ok(())
}

/// Replaces `directory/name` with `bytes` by writing a temporary file, fsyncing it, renaming it
/// over the target and fsyncing the directory.
pub(crate) fn write_atomically(directory: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = directory.join(format!(".{name}.tmp-{}", std::process::id()));
    let target = directory.join(name);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(StoreError::io("write", &temporary))?;
    fs::rename(&temporary, &target).map_err(StoreError::io("rename into place", &target))?;
    sync_directory(directory)
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
        for tag in ["", "-x", "a b", "tag\n", &"x".repeat(256), ".hidden"] {
            assert!(validate_tag(tag).is_err(), "{tag:?}");
        }
    }
}
