//! Selecting one platform of an image in the store.

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::manifest::{self, Descriptor, ImageIndex};
use crate::registry::platform::{self, Platform};
use crate::store::Store;

impl Store {
    /// Resolves `reference` (a tag or a manifest digest) to the image manifest for `platform`.
    ///
    /// An image manifest is returned as it is, whatever its platform. For an index, the entry
    /// for `platform` is selected as a pull selects it, never an attestation. That entry must
    /// be in the store with every blob it needs, so a reader never gets half an image.
    ///
    /// Raises [`StoreError::PlatformNotInStore`] for a platform the index lists but the store
    /// lacks (wholly or in part), [`StoreError::PlatformNotFound`] when the index lists no such
    /// platform, and [`StoreError::TagNotFound`] or [`StoreError::BlobNotFound`] for an unknown
    /// reference.
    pub fn resolve_platform(&self, reference: &str, platform: &Platform) -> Result<Descriptor> {
        let digest = match Digest::parse(reference) {
            Ok(digest) => digest,
            Err(_) => self.resolve(reference)?.digest,
        };
        let (root, bytes) = self.read_manifest(&digest)?;
        if !manifest::is_index_media_type(&root.media_type) {
            return Ok(root);
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidJson {
                what: format!("index {digest}"),
                source,
            })?;
        let Some(chosen) = platform::find(&index.manifests, platform) else {
            return Err(StoreError::PlatformNotFound {
                reference: reference.to_owned(),
                platform: platform.to_string(),
                available: platform::available(&index.manifests),
            });
        };
        if manifest::is_index_media_type(&chosen.media_type) {
            return Err(StoreError::InvalidLayout {
                path: self.blob_path(&digest),
                reason: format!(
                    "the entry of index {digest} for platform {platform} is itself an index"
                ),
            });
        }
        if let Some(missing) = self.first_missing(chosen)? {
            return Err(StoreError::PlatformNotInStore {
                reference: reference.to_owned(),
                platform: platform.to_string(),
                manifest: chosen.digest.clone(),
                missing: missing.digest,
            });
        }
        Ok(chosen.clone())
    }
}
