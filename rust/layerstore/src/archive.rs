//! Import of `docker save` archives.
//!
//! Two formats exist and both are read: the legacy one (`manifest.json`, `<id>/layer.tar`, the
//! config as `<hex>.json`) and the one Docker 25 writes (`manifest.json` pointing into an OCI
//! `blobs/sha256/` tree). `manifest.json` drives the import in both. Each image becomes an OCI
//! image manifest in the store; layer media types come from the archive's `LayerSources` when it
//! has them, and otherwise from the layer's first bytes (gzip, zstd or plain tar).
//!
//! Entries are read the way `tar -x` and Docker read them: the last regular entry of a name wins,
//! and a symlink entry (legacy Docker writes a repeated layer as a link to the first copy) is
//! followed within the archive. Other entry types are never taken as a config or layer.
//!
//! Foreign layers (listed in `LayerSources` with `urls`) are imported only when their bytes are in
//! the archive. When they are not, the import fails before writing anything, because an image
//! with an absent layer could not be run or exported without fetching from the layer's URL.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::digest::{Algorithm, Digest};
use crate::error::{Result, StoreError};
use crate::layout::ImportReport;
use crate::manifest::{self, Descriptor};
use crate::store::{Expected, PutOutcome, Store};

/// Largest `manifest.json` read into memory.
const MAX_METADATA_SIZE: u64 = 16 << 20;
/// Symlink hops followed when resolving an entry name.
const MAX_LINK_HOPS: usize = 16;

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

/// What the first pass learned about an entry name: the position of its last regular file, or
/// the target of its last symlink.
#[derive(Clone, Debug)]
enum EntryKind {
    File(usize),
    Link(String),
}

/// The first pass over an archive.
struct Listing {
    images: Vec<ArchiveImage>,
    entries: BTreeMap<String, EntryKind>,
}

impl Listing {
    /// Follows symlinks to a regular file; returns its name and position in the archive.
    fn resolve(&self, name: &str) -> Option<(String, usize)> {
        let mut current = name.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&current)? {
                EntryKind::File(index) => return Some((current, *index)),
                EntryKind::Link(target) => current = join_link(&current, target)?,
            }
        }
        None
    }
}

/// Resolves a symlink target relative to the link's directory; `None` if it leaves the archive.
fn join_link(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link.split('/').collect::<Vec<_>>()[..link.split('/').count() - 1].to_vec()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Maps a tar reader failure to a clear error. The reader's own message is left out: for a file
/// that is not a tar archive it quotes the file's bytes.
fn archive_error(archive: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |error| {
        tracing::debug!(archive = %archive.display(), %error, "tar reader failed");
        StoreError::InvalidLayout {
            path: archive.to_owned(),
            reason: "not a readable tar archive (truncated, compressed or another format); \
                     `docker save` writes a plain .tar"
                .into(),
        }
    }
}

impl Store {
    /// Imports every image of the `docker save` archive at `archive`, tagging each with its
    /// `RepoTags`. `tag`, when given, names the imported image instead and requires the archive
    /// to hold exactly one image. Returns the manifests written.
    pub fn import_docker_archive(&self, archive: &Path, tag: Option<&str>) -> Result<ImportReport> {
        let listing = read_listing(archive)?;
        if tag.is_some() && listing.images.len() != 1 {
            return Err(StoreError::InvalidLayout {
                path: archive.to_owned(),
                reason: format!(
                    "the archive holds {} images, so a single tag cannot name them; import without a tag",
                    listing.images.len()
                ),
            });
        }
        let resolved = check_entries_present(archive, &listing)?;
        let wanted: BTreeMap<usize, String> = resolved
            .values()
            .map(|(name, index)| (*index, name.clone()))
            .collect();
        let mut report = ImportReport::default();
        let stored = self.copy_entries(archive, &wanted, &mut report)?;
        let by_path = |path: &str| -> &(PutOutcome, [u8; 4]) { &stored[&resolved[path].0] };

        for image in &listing.images {
            let descriptor = self.write_image_manifest(archive, image, &by_path, &mut report)?;
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

    /// Second pass: copies the entries at the positions in `wanted` into the store.
    fn copy_entries(
        &self,
        archive: &Path,
        wanted: &BTreeMap<usize, String>,
        report: &mut ImportReport,
    ) -> Result<BTreeMap<String, (PutOutcome, [u8; 4])>> {
        let mut stored = BTreeMap::new();
        let file = File::open(archive).map_err(StoreError::io("open", archive))?;
        let mut reader = tar::Archive::new(file);
        let entries = reader.entries().map_err(archive_error(archive))?;
        for (index, entry) in entries.enumerate() {
            let mut entry = entry.map_err(archive_error(archive))?;
            let Some(name) = wanted.get(&index) else {
                continue;
            };
            let mut magic = [0u8; 4];
            let head = read_head(&mut entry, &mut magic).map_err(archive_error(archive))?;
            let expected = digest_in_name(name)
                .map(Expected::digest)
                .unwrap_or_default();
            let source = io::Cursor::new(magic[..head].to_vec()).chain(entry);
            let outcome = self.put_reader(source, expected)?;
            if outcome.created {
                report.blobs_added += 1;
                report.bytes_added += outcome.size;
            } else {
                report.blobs_present += 1;
            }
            stored.insert(name.clone(), (outcome, magic));
        }
        Ok(stored)
    }

    fn write_image_manifest<'a>(
        &self,
        archive: &Path,
        image: &ArchiveImage,
        stored: &dyn Fn(&str) -> &'a (PutOutcome, [u8; 4]),
        report: &mut ImportReport,
    ) -> Result<Descriptor> {
        let (config, _) = stored(&image.config);
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
            let (outcome, magic) = stored(path);
            let diff_id = diff_ids.get(position).copied();
            let media_type = layer_media_type(magic);
            // An uncompressed layer's digest is its diff_id; a mismatch means the archive pairs
            // the config with other layers than the ones it describes.
            // TODO: check compressed layers too, by hashing their decompressed bytes.
            if media_type == manifest::OCI_LAYER_TAR {
                if let Some(diff_id) = diff_id.filter(|id| *id != outcome.digest.to_string()) {
                    return Err(StoreError::InvalidLayout {
                        path: archive.to_owned(),
                        reason: format!(
                            "layer {path} hashes to {}, but the config lists diff_id {diff_id} at position {position}",
                            outcome.digest
                        ),
                    });
                }
            }
            let source = diff_id.and_then(|id| image.layer_sources.get(id));
            let descriptor = match source {
                Some(source) if source.digest == outcome.digest && source.size == outcome.size => {
                    source.clone()
                }
                _ => Descriptor::new(media_type, outcome.digest.clone(), outcome.size),
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

/// First pass: parses `manifest.json` and records the last regular file or symlink of each name.
fn read_listing(archive: &Path) -> Result<Listing> {
    let file = File::open(archive).map_err(StoreError::io("open", archive))?;
    let mut head = [0u8; 4];
    let read = read_head(&mut &file, &mut head).map_err(StoreError::io("read", archive))?;
    let compression = match &head[..read] {
        [0x1f, 0x8b, ..] => Some("gzip (gunzip it)"),
        [0x28, 0xb5, 0x2f, 0xfd] => Some("zstd (unzstd it)"),
        _ => None,
    };
    if let Some(compression) = compression {
        return Err(StoreError::InvalidLayout {
            path: archive.to_owned(),
            reason: format!("the archive is compressed with {compression}, then import the .tar"),
        });
    }
    let file = File::open(archive).map_err(StoreError::io("open", archive))?;
    let mut reader = tar::Archive::new(file);
    let mut entries = BTreeMap::new();
    let mut manifest_json = None;
    for (index, entry) in reader
        .entries()
        .map_err(archive_error(archive))?
        .enumerate()
    {
        let mut entry = entry.map_err(archive_error(archive))?;
        let name = entry_name(&entry, archive)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(archive_error(archive))?
                .map(|target| target.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.insert(name, EntryKind::Link(target));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if name == "manifest.json" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_METADATA_SIZE)
                .read_to_end(&mut bytes)
                .map_err(archive_error(archive))?;
            manifest_json = Some(bytes);
        }
        entries.insert(name, EntryKind::File(index));
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
    Ok(Listing { images, entries })
}

/// Resolves every config and layer path of `manifest.json` to a regular entry, failing before
/// anything is written when one is absent. Returns path → (resolved name, position).
fn check_entries_present(
    archive: &Path,
    listing: &Listing,
) -> Result<BTreeMap<String, (String, usize)>> {
    let mut resolved = BTreeMap::new();
    for image in &listing.images {
        let referenced_by = format!("manifest.json in {}", archive.display());
        for path in std::iter::once(&image.config).chain(&image.layers) {
            if let Some(found) = listing.resolve(path) {
                resolved.insert(path.clone(), found);
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
                    reason: format!(
                        "manifest.json names {path:?}, which is not a file in the archive"
                    ),
                },
            });
        }
    }
    Ok(resolved)
}

fn entry_name(entry: &tar::Entry<'_, File>, archive: &Path) -> Result<String> {
    let path = entry.path().map_err(archive_error(archive))?;
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
fn read_head(reader: &mut impl Read, magic: &mut [u8; 4]) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::join_link;

    #[test]
    fn join_link_resolves_relative_targets() {
        assert_eq!(
            join_link("ccc/layer.tar", "../aaa/layer.tar").as_deref(),
            Some("aaa/layer.tar")
        );
        assert_eq!(
            join_link("layer.tar", "other.tar").as_deref(),
            Some("other.tar")
        );
        assert_eq!(join_link("a/b", "/abs/c").as_deref(), Some("abs/c"));
        assert_eq!(join_link("a", "../../x"), None);
    }
}
