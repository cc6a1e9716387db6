//! OCI descriptors and the parts of manifests and indexes the store needs to walk references.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Result, StoreError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The annotation that names a tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest blob the reference walk parses as JSON. Manifests and indexes are limited to 4 MiB by
/// the OCI distribution spec, so a larger blob is content, not a manifest.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// An OCI content descriptor. Fields the store does not interpret (`platform`, `urls`,
/// `artifactType`, ...) are kept unchanged in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub annotations: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            annotations: Map::new(),
            extra: Map::new(),
        }
    }

    /// The tag this descriptor carries in an OCI layout index, if any.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).and_then(Value::as_str)
    }

    /// The `urls` field of a foreign (non-distributable) layer, joined for messages.
    pub fn urls(&self) -> Vec<String> {
        self.extra
            .get("urls")
            .and_then(Value::as_array)
            .map(|urls| {
                urls.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True for media types whose content is never a manifest (layers and image configs), so the
    /// reference walk does not need to parse them.
    pub fn is_content(&self) -> bool {
        is_content_media_type(&self.media_type)
    }
}

pub fn is_content_media_type(media_type: &str) -> bool {
    media_type.contains(".layer.")
        || media_type.contains(".rootfs.")
        || media_type == OCI_CONFIG
        || media_type == "application/vnd.docker.container.image.v1+json"
}

/// An OCI image index as stored in `index.json`; unknown top-level fields are kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// `null` is accepted on read (Docker 25 writes it) and written back as an empty list.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Descriptor>, D::Error> {
    Ok(Option::<Vec<Descriptor>>::deserialize(deserializer)?.unwrap_or_default())
}

impl Default for ImageIndex {
    fn default() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            extra: Map::new(),
        }
    }
}

/// A descriptor found inside a manifest or index, with its role there.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub descriptor: Descriptor,
    /// True for `manifests` entries and `subject` (they are manifests or indexes themselves);
    /// false for `config`, `layers` and artifact `blobs` (content, never parsed).
    pub is_manifest: bool,
    /// True for `subject`: the manifest that a referrer (a signature or an SBOM) is about.
    /// It links to another image and is not part of this one. So it may be absent from a store
    /// or layout, and pulling the referrer does not fetch it.
    pub is_subject: bool,
}

impl Reference {
    /// True for an entry of an index's `manifests` (for a child that [`referenced_descriptors`]
    /// returned): one platform, or one image, of a multi-platform image. A store may hold an
    /// index without some of its entries, because a pull fetches only the platform it selects.
    pub fn is_index_entry(&self) -> bool {
        self.is_manifest && !self.is_subject
    }
}

/// True for the media types of an OCI image index and a Docker manifest list.
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Returns the descriptors a manifest, index or artifact manifest refers to: `config`, `layers`,
/// `blobs` (content), and `manifests`, `subject` (manifests). Content that is not a JSON object
/// yields no children. A `subject` is marked [`Reference::is_subject`]: callers that check an
/// image is complete must not require it.
///
/// `what` names the blob in errors.
pub fn referenced_descriptors(bytes: &[u8], what: &str) -> Result<Vec<Reference>> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(Vec::new());
    };
    let mut children = Vec::new();
    let parse = |value: &Value, is_manifest: bool| -> Result<Reference> {
        let descriptor =
            serde_json::from_value(value.clone()).map_err(|source| StoreError::InvalidJson {
                what: format!("descriptor in {what}"),
                source,
            })?;
        Ok(Reference {
            descriptor,
            is_manifest,
            is_subject: false,
        })
    };
    // An image config also has a "config" object, without a digest: not a descriptor.
    if let Some(value) = object.get("config").filter(|v| v.get("digest").is_some()) {
        children.push(parse(value, false)?);
    }
    if let Some(value) = object.get("subject").filter(|v| v.get("digest").is_some()) {
        children.push(Reference {
            is_subject: true,
            ..parse(value, true)?
        });
    }
    for (key, is_manifest) in [("layers", false), ("manifests", true), ("blobs", false)] {
        if let Some(Value::Array(items)) = object.get(key) {
            for item in items {
                children.push(parse(item, is_manifest)?);
            }
        }
    }
    Ok(children)
}

/// Returns the media type a manifest or index declares, or infers it from its fields.
pub fn media_type_of(bytes: &[u8]) -> Option<String> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    if let Some(media_type) = object.get("mediaType").and_then(Value::as_str) {
        return Some(media_type.to_owned());
    }
    if object.contains_key("manifests") {
        Some(OCI_INDEX.to_owned())
    } else if object.contains_key("layers") || object.contains_key("config") {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn referenced_descriptors_of_manifest() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":3}},
               "layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{D2}","size":5,"urls":["u"]}}]}}"#
        );
        let children = referenced_descriptors(manifest.as_bytes(), "test").unwrap();
        assert_eq!(children.len(), 2);
        assert_eq!(children[0].descriptor.digest.to_string(), D1);
        assert!(!children[0].is_manifest);
        assert_eq!(children[1].descriptor.urls(), vec!["u".to_owned()]);
    }

    #[test]
    fn subject_is_an_optional_manifest() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"artifactType":"application/spdx+json",
               "config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":2}},
               "layers":[],
               "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":7}}}}"#
        );
        let children = referenced_descriptors(manifest.as_bytes(), "test").unwrap();
        assert_eq!(children.len(), 2);
        assert!(!children[0].is_subject);
        let subject = &children[1];
        assert_eq!(subject.descriptor.digest.to_string(), D2);
        assert!(subject.is_manifest);
        assert!(subject.is_subject);
    }

    #[test]
    fn image_config_is_not_a_descriptor() {
        let config = br#"{"config":{"Env":["A=1"]},"rootfs":{"type":"layers"}}"#;
        assert!(referenced_descriptors(config, "config").unwrap().is_empty());
    }

    #[test]
    fn invalid_child_digest_is_an_error() {
        let manifest = br#"{"layers":[{"digest":"sha256:xyz","size":1}]}"#;
        let error = referenced_descriptors(manifest, "manifest m").unwrap_err();
        assert!(error.to_string().contains("manifest m"));
    }

    #[test]
    fn null_manifests_read_as_empty() {
        let index: ImageIndex =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":null}"#).unwrap();
        assert!(index.manifests.is_empty());
    }
}
