//! Import of `docker save` archives.
//!
//! Two formats exist and both are read: the legacy one (`manifest.json`, `<id>/layer.tar`, the
//! config as `<hex>.json`) and the one Docker 25 writes (`manifest.json` pointing into an OCI
//! `blobs/sha256/` tree). `manifest.json` drives the import in both. Each image becomes an OCI
//! image manifest in the store; layer media types come from the archive's `LayerSources` when it
//! has them, and otherwise from the layer's first bytes (gzip, zstd or plain tar).
//!
//! Foreign layers (listed in `LayerSources` with `urls`) are imported only when their bytes are in
//! the archive. When they are not, the import fails before writing anything, because an image
//! with an absent layer could not be run or exported without fetching from the layer's URL.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::digest::{Algorithm, Digest};
use crate::error::{Result, StoreError};
use crate::layout::ImportReport;
use crate::manifest::{self, Descriptor};
use crate::store::{Expected, PutOutcome, Store};

/// Largest `manifest.json` or config file read into memory.
const MAX_METADATA_SIZE: u64 = 16 << 20;

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
struct ArchiveImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "LayerSources", default)]
    layer_sources: BTreeMap<String, Descriptor>,
}

impl Store {
    /// Imports every image of the `docker save` archive at `archive`, tagging each with its
    /// `RepoTags`. `tag`, when given, names the imported image instead and requires the archive
    /// to hold exactly one image. Returns the manifests written.
    pub fn import_docker_archive(&self, archive: &Path, tag: Option<&str>) -> Result<ImportReport> {
        let invalid = |reason: String| StoreError::InvalidLayout {
            path: archive.to_owned(),
            reason,
        };
        let (images, names) = read_manifest_json(archive)?;
        if tag.is_some() && images.len() != 1 {
            return Err(invalid(format!(
                "the archive holds {} images, so a single tag cannot name them; import without a tag",
                images.len()
            )));
        }
        check_layers_present(archive, &images, &names)?;

        // The second pass copies configs and layers into the store, keyed by their path.
        let wanted: BTreeSet<&str> = images
            .iter()
            .flat_map(|image| {
                std::iter::once(image.config.as_str())
                    .chain(image.layers.iter().map(String::as_str))
            })
            .collect();
        let mut report = ImportReport::default();
        let stored = self.copy_entries(archive, &wanted, &mut report)?;

        for image in &images {
            let descriptor = self.write_image_manifest(archive, image, &stored, &mut report)?;
            let tags: Vec<String> = match tag {
                Some(tag) => vec![tag.to_owned()],
                None => image.repo_tags.clone().unwrap_or_default(),
            };
            if tags.is_empty() {
                self.tag_descriptor(descriptor.clone())?;
                report.images.push(descriptor.clone());
            }
            for tag in tags {
                let mut tagged = descriptor.clone();
                tagged
                    .annotations
                    .insert(manifest::REF_NAME.into(), Value::String(tag));
                self.tag_descriptor(tagged.clone())?;
                report.images.push(tagged);
            }
        }
        Ok(report)
    }

    fn copy_entries(
        &self,
        archive: &Path,
        wanted: &BTreeSet<&str>,
        report: &mut ImportReport,
    ) -> Result<BTreeMap<String, (PutOutcome, [u8; 4])>> {
        let mut stored = BTreeMap::new();
        let file = File::open(archive).map_err(StoreError::io("open", archive))?;
        let mut entries_reader = tar::Archive::new(file);
        let entries = entries_reader
            .entries()
            .map_err(StoreError::io("read archive", archive))?;
        for entry in entries {
            let mut entry = entry.map_err(StoreError::io("read archive", archive))?;
            let name = entry_name(&entry, archive)?;
            if !wanted.contains(name.as_str()) || stored.contains_key(&name) {
                continue;
            }
            let mut magic = [0u8; 4];
            let head = read_head(&mut entry, &mut magic)
                .map_err(StoreError::io("read archive", archive))?;
            let expected = digest_in_name(&name)
                .map(Expected::digest)
                .unwrap_or_default();
            let outcome = self.put_reader(
                std::io::Cursor::new(magic[..head].to_vec()).chain(entry),
                expected,
            )?;
            if outcome.created {
                report.blobs_added += 1;
                report.bytes_added += outcome.size;
            } else {
                report.blobs_present += 1;
            }
            stored.insert(name, (outcome, magic));
        }
        Ok(stored)
    }

    fn write_image_manifest(
        &self,
        archive: &Path,
        image: &ArchiveImage,
        stored: &BTreeMap<String, (PutOutcome, [u8; 4])>,
        report: &mut ImportReport,
    ) -> Result<Descriptor> {
        let (config, _) = &stored[&image.config];
        let config_bytes = self.read_range(&config.digest, 0, None)?;
        let config_json: Value =
            serde_json::from_slice(&config_bytes).map_err(|source| StoreError::InvalidJson {
                what: format!("config {} in {}", image.config, archive.display()),
                source,
            })?;
        let diff_ids: Vec<&str> = config_json
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();

        let mut layers = Vec::new();
        for (position, path) in image.layers.iter().enumerate() {
            let (outcome, magic) = &stored[path];
            let source = diff_ids
                .get(position)
                .and_then(|id| image.layer_sources.get(*id));
            let descriptor = match source {
                Some(source) if source.digest == outcome.digest && source.size == outcome.size => {
                    source.clone()
                }
                _ => Descriptor::new(
                    layer_media_type(magic),
                    outcome.digest.clone(),
                    outcome.size,
                ),
            };
            layers.push(descriptor);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": Descriptor::new(manifest::OCI_CONFIG, config.digest.clone(), config.size),
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).expect("a manifest always serializes");
        let outcome = self.put_bytes(&bytes, Expected::default())?;
        if outcome.created {
            report.blobs_added += 1;
            report.bytes_added += outcome.size;
        }
        Ok(Descriptor::new(
            manifest::OCI_MANIFEST,
            outcome.digest,
            outcome.size,
        ))
    }
}

/// First pass: parses `manifest.json` and lists every regular file in the archive.
fn read_manifest_json(archive: &Path) -> Result<(Vec<ArchiveImage>, BTreeSet<String>)> {
    let file = File::open(archive).map_err(StoreError::io("open", archive))?;
    let mut head = [0u8; 2];
    if (&file).read_exact(&mut head).is_ok() && head == [0x1f, 0x8b] {
        return Err(StoreError::InvalidLayout {
            path: archive.to_owned(),
            reason:
                "the archive is gzip-compressed; decompress it first (gunzip) and import the .tar"
                    .into(),
        });
    }
    let file = File::open(archive).map_err(StoreError::io("open", archive))?;
    let mut reader = tar::Archive::new(file);
    let mut names = BTreeSet::new();
    let mut manifest_json = None;
    for entry in reader
        .entries()
        .map_err(StoreError::io("read archive", archive))?
    {
        let mut entry = entry.map_err(StoreError::io("read archive", archive))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry_name(&entry, archive)?;
        if name == "manifest.json" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_METADATA_SIZE)
                .read_to_end(&mut bytes)
                .map_err(StoreError::io("read archive", archive))?;
            manifest_json = Some(bytes);
        }
        names.insert(name);
    }
    let bytes = manifest_json.ok_or_else(|| StoreError::InvalidLayout {
        path: archive.to_owned(),
        reason: "no manifest.json; expected an archive written by `docker save`".into(),
    })?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidJson {
            what: format!("manifest.json in {}", archive.display()),
            source,
        })?;
    Ok((images, names))
}

/// Fails before anything is written when a config or layer named by `manifest.json` is absent.
fn check_layers_present(
    archive: &Path,
    images: &[ArchiveImage],
    names: &BTreeSet<String>,
) -> Result<()> {
    for image in images {
        let referenced_by = format!("manifest.json in {}", archive.display());
        for path in std::iter::once(&image.config).chain(&image.layers) {
            if names.contains(path) {
                continue;
            }
            let digest = digest_in_name(path);
            let foreign = image.layer_sources.values().find(|source| {
                Some(&source.digest) == digest.as_ref() && !source.urls().is_empty()
            });
            return Err(match (foreign, digest) {
                (Some(source), _) => StoreError::ForeignLayerMissing {
                    digest: source.digest.clone(),
                    urls: source.urls().join(", "),
                    archive: archive.to_owned(),
                },
                (None, Some(digest)) => StoreError::MissingBlob {
                    digest,
                    referenced_by,
                    source_path: archive.to_owned(),
                },
                (None, None) => StoreError::InvalidLayout {
                    path: archive.to_owned(),
                    reason: format!("manifest.json names {path:?}, which is not in the archive"),
                },
            });
        }
    }
    Ok(())
}

fn entry_name(entry: &tar::Entry<'_, File>, archive: &Path) -> Result<String> {
    let path: PathBuf = entry
        .path()
        .map_err(StoreError::io("read archive", archive))?
        .into_owned();
    let name = path.to_string_lossy();
    Ok(name.trim_start_matches("./").to_owned())
}

/// Finds the digest in an archive path: `blobs/sha256/<hex>`, `sha256:<hex>`, `<hex>.tar.gz`
/// or `<hex>.json`. Legacy `<id>/layer.tar` paths carry none.
fn digest_in_name(path: &str) -> Option<Digest> {
    if let Some(rest) = path.strip_prefix("blobs/") {
        let (algorithm, hex) = rest.split_once('/')?;
        return Digest::from_parts(Algorithm::from_name(algorithm)?, hex).ok();
    }
    if let Ok(digest) = Digest::parse(path) {
        return Some(digest);
    }
    let stem = path.split('.').next()?;
    Digest::from_parts(Algorithm::Sha256, stem).ok()
}

/// Picks an OCI layer media type from a layer's first bytes.
fn layer_media_type(magic: &[u8; 4]) -> &'static str {
    match magic {
        [0x1f, 0x8b, ..] => manifest::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => manifest::OCI_LAYER_ZSTD,
        _ => manifest::OCI_LAYER_TAR,
    }
}

/// Reads up to four bytes; returns how many were read.
fn read_head(reader: &mut impl Read, magic: &mut [u8; 4]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < magic.len() {
        let count = reader.read(&mut magic[filled..])?;
        if count == 0 {
            break;
        }
        filled += count;
    }
    Ok(filled)
}
