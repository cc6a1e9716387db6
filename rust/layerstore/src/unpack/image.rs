//! The layers of an image in the store, with the diff_ids its config lists.

use serde_json::Value;

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, MAX_MANIFEST_SIZE};
use crate::registry::platform::Platform;
use crate::store::Store;
use crate::unpack::error::{UnpackError, UnpackResult};

/// One layer: its blob and the digest of its uncompressed tar stream.
#[derive(Clone, Debug)]
pub struct Layer {
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub diff_id: Digest,
}

/// An image manifest resolved in the store: its layers from the bottom one up.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest_digest: Digest,
    pub layers: Vec<Layer>,
}

/// Resolves a tag or a manifest digest to an image. An index is resolved to the manifest of
/// `platform`, which must be in the store whole (see [`Store::resolve_platform`]). An image
/// manifest is returned whatever its platform.
pub fn resolve(store: &Store, reference: &str, platform: &Platform) -> UnpackResult<Image> {
    let chosen = store.resolve_platform(reference, platform)?;
    let document = read_json(store, &chosen.digest, reference)?;
    from_document(store, chosen.digest, &document, reference)
}

/// Builds the image of the manifest `bytes` (digest `digest`, not necessarily in the store yet),
/// reading its config from the store.
pub fn from_manifest(store: &Store, digest: &Digest, bytes: &[u8]) -> UnpackResult<Image> {
    let reference = digest.to_string();
    let document = parse_json(bytes, digest, &reference)?;
    from_document(store, digest.clone(), &document, &reference)
}

/// Builds the image of a parsed image manifest, reading its config from the store.
fn from_document(
    store: &Store,
    digest: Digest,
    document: &Value,
    reference: &str,
) -> UnpackResult<Image> {
    let config: Descriptor = field(document, "config", reference)?;
    let layers: Vec<Descriptor> = field(document, "layers", reference)?;
    let config_document = read_json(store, &config.digest, reference)?;
    let diff_ids: Vec<Digest> = config_document
        .get("rootfs")
        .and_then(|rootfs| rootfs.get("diff_ids"))
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|error| invalid(reference, format!("config rootfs.diff_ids: {error}")))?
        .ok_or_else(|| invalid(reference, "the config has no rootfs.diff_ids".into()))?;
    if diff_ids.len() != layers.len() {
        return Err(invalid(
            reference,
            format!(
                "the manifest lists {} layers but the config lists {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    Ok(Image {
        manifest_digest: digest,
        layers: layers
            .into_iter()
            .zip(diff_ids)
            .map(|(descriptor, diff_id)| Layer {
                digest: descriptor.digest,
                media_type: descriptor.media_type,
                size: descriptor.size,
                diff_id,
            })
            .collect(),
    })
}

fn read_json(store: &Store, digest: &Digest, reference: &str) -> UnpackResult<Value> {
    let size = store.stat(digest)?.size;
    if size > MAX_MANIFEST_SIZE {
        return Err(invalid(
            reference,
            format!("blob {digest} is {size} bytes, too large for a manifest or config"),
        ));
    }
    let bytes = store.read_range(digest, 0, None)?;
    parse_json(&bytes, digest, reference)
}

fn parse_json(bytes: &[u8], digest: &Digest, reference: &str) -> UnpackResult<Value> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| invalid(reference, format!("blob {digest} is not JSON: {error}")))?;
    if manifest::media_type_of(bytes).is_some_and(|media_type| media_type.contains("artifact")) {
        return Err(invalid(
            reference,
            format!("{digest} is an artifact, not an image"),
        ));
    }
    Ok(value)
}

fn field<T: serde::de::DeserializeOwned>(
    document: &Value,
    name: &str,
    reference: &str,
) -> UnpackResult<T> {
    let value = document
        .get(name)
        .cloned()
        .ok_or_else(|| invalid(reference, format!("the manifest has no {name:?} field")))?;
    serde_json::from_value(value).map_err(|error| invalid(reference, format!("{name}: {error}")))
}

fn invalid(reference: &str, reason: String) -> UnpackError {
    UnpackError::InvalidImage {
        image: reference.to_owned(),
        reason,
    }
}
