//! Pulls: resolve a reference to a manifest, fetch its blobs in parallel ranges, tag it (or the
//! index it was picked from).

pub mod chunked;
mod connections;
pub mod ranges;
mod retained;
mod single;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use url::Url;

use crate::digest::Digest;
use crate::manifest::{self, Descriptor};
use crate::reference::Reference;
use crate::registry::error::PullError;
use crate::registry::platform::{self, Platform};
use crate::registry::{FetchedManifest, RegistryClient, Target};
use crate::store::{Expected, Store};

pub use chunked::{BlobJob, BlobReport, BlobSource, FetchOptions, Fetcher, Progress, PullEvent};
pub use stream::{BlobStream, PrefixReader};

/// Settings of one pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The platform picked from an index; the host's when `None`.
    pub platform: Option<Platform>,
    pub fetch: FetchOptions,
    /// The tag written to `index.json`; the normalized reference when `None`.
    pub tag: Option<String>,
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The normalized reference that was pulled.
    pub reference: String,
    /// The tag written to `index.json`. It names the index when there is one.
    pub tag: String,
    /// The digest of the image manifest pulled (the platform's, for an index).
    pub manifest_digest: Digest,
    pub media_type: String,
    /// The index the manifest was picked from, when the reference named one. The store
    /// contains it, and the tag names it.
    pub index_digest: Option<Digest>,
    pub blobs: Vec<BlobReport>,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    /// Seconds from the start of the pull until its manifest (and the index before it, when
    /// the reference names one) arrived, before any blob request.
    pub manifest_seconds: f64,
    pub seconds: f64,
}

/// Pulls images and artifacts into a store.
#[derive(Debug, Clone)]
pub struct Puller {
    fetcher: Arc<Fetcher>,
}

impl Puller {
    pub fn new(store: Store, client: Arc<RegistryClient>) -> Puller {
        Puller {
            fetcher: Arc::new(Fetcher::new(store, client)),
        }
    }

    pub fn store(&self) -> &Store {
        self.fetcher.store()
    }

    /// Pulls `reference`: its manifest (picking `options.platform` from an index, never an
    /// attestation), then every config, layer and artifact blob it lists, then commits the
    /// manifest and tags it. Blobs already in the store are not fetched.
    ///
    /// For an index, the index blob is committed too and the tag names the index, so pulls of
    /// other platforms under the same tag add to it. The tag is written only after the
    /// platform's manifest and blobs are committed, and the store checks that every platform
    /// of the index in the store is complete before it writes the tag.
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
        progress: &Arc<Progress>,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        // Checked before any download, since the tag is written only after all of them.
        let tag = options.tag.clone().unwrap_or_else(|| reference.to_string());
        crate::store::index::validate_tag(&tag)?;
        let client = self.fetcher.client();
        let mut fetched = client
            .fetch_manifest(reference, &reference.manifest_reference())
            .await?;
        let mut index = None;
        if is_index(&fetched.media_type) {
            let parsed: manifest::ImageIndex = parse_json(&fetched.bytes, &fetched.digest)?;
            let wanted = options.platform.clone().unwrap_or_else(Platform::host);
            let chosen = platform::select(&parsed.manifests, &wanted, &reference.to_string())?;
            let platform_manifest = client
                .fetch_manifest(reference, &chosen.digest.to_string())
                .await?;
            index = Some(std::mem::replace(&mut fetched, platform_manifest));
            if is_index(&fetched.media_type) {
                return Err(PullError::InvalidManifest {
                    what: fetched.digest.to_string(),
                    reason: "an index entry for a platform is itself an index".into(),
                });
            }
        }
        if fetched.media_type != manifest::OCI_MANIFEST
            && fetched.media_type != manifest::DOCKER_MANIFEST
            && fetched.media_type != "application/vnd.oci.artifact.manifest.v1+json"
        {
            return Err(PullError::UnsupportedMediaType {
                media_type: fetched.media_type,
                reference: reference.to_string(),
            });
        }
        let manifest_seconds = started.elapsed().as_secs_f64();
        let jobs = blob_jobs(&fetched.bytes, &fetched.digest, reference)?;
        progress.send(PullEvent::Manifest {
            digest: fetched.digest.clone(),
            bytes: fetched.bytes.clone(),
        });
        let blobs = self
            .fetcher
            .fetch_all(jobs, &options.fetch, progress)
            .await?;

        self.commit_and_tag(&tag, &fetched, index.as_ref()).await?;

        let bytes_fetched = blobs.iter().map(|b| b.fetched_bytes).sum();
        let bytes_reused = blobs.iter().filter(|b| b.reused).map(|b| b.size).sum();
        tracing::info!(reference = %reference, bytes_fetched, bytes_reused, "pull finished");
        Ok(PullReport {
            reference: reference.to_string(),
            tag,
            manifest_digest: fetched.digest,
            media_type: fetched.media_type,
            index_digest: index.map(|index| index.digest),
            blobs,
            bytes_fetched,
            bytes_reused,
            manifest_seconds,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Commits the image manifest and then the index it was picked from, if any, and tags the
    /// index, else the manifest. Called once every blob of the manifest is committed, so a pull
    /// that fails or is killed before this leaves the tag as it was.
    async fn commit_and_tag(
        &self,
        tag: &str,
        manifest: &FetchedManifest,
        index: Option<&FetchedManifest>,
    ) -> Result<(), PullError> {
        let store = self.store().clone();
        let tag = tag.to_owned();
        let tagged = index.unwrap_or(manifest).digest.clone();
        let manifests: Vec<(Vec<u8>, Digest)> = std::iter::once(manifest)
            .chain(index)
            .map(|fetched| (fetched.bytes.clone(), fetched.digest.clone()))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<(), PullError> {
            for (bytes, digest) in manifests {
                let expected = Expected::digest(digest).with_size(bytes.len() as u64);
                store.put_bytes(&bytes, expected)?;
            }
            // TODO: another platform of the index that is in the store but incomplete (the
            // mirror stores a platform manifest before its blobs) makes this tag fail.
            store.tag(&tag, &tagged)?;
            Ok(())
        })
        .await
        .expect("committing a manifest does not panic")
    }

    /// Downloads one blob from a plain HTTP(S) URL through the chunked path. Without `size`, a
    /// HEAD request reads it from `Content-Length`.
    pub async fn fetch_url(
        &self,
        url: &Url,
        digest: &Digest,
        size: Option<u64>,
        options: &FetchOptions,
        progress: &Arc<Progress>,
    ) -> Result<BlobReport, PullError> {
        let size = match size {
            Some(size) => size,
            None => {
                let target = Target {
                    reference: None,
                    digest: Some(digest.clone()),
                };
                content_length(self.fetcher.client(), &target, url).await?
            }
        };
        let job = BlobJob {
            digest: digest.clone(),
            size,
            media_type: "application/octet-stream".into(),
            source: BlobSource::Url(url.clone()),
            config: false,
        };
        self.fetch_one(job, options, progress).await
    }

    /// Fetches a single blob through the shared scheduler.
    pub(crate) async fn fetch_one(
        &self,
        job: BlobJob,
        options: &FetchOptions,
        progress: &Arc<Progress>,
    ) -> Result<BlobReport, PullError> {
        let mut reports = self.fetcher.fetch_all(vec![job], options, progress).await?;
        Ok(reports.remove(0))
    }
}

/// Sends a HEAD request to `url` and returns its `Content-Length`.
pub(crate) async fn content_length(
    client: &RegistryClient,
    target: &Target,
    url: &Url,
) -> Result<u64, PullError> {
    let response = client
        .request(target, reqwest::Method::HEAD, url, None, None)
        .await?;
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| PullError::Protocol {
            context: Box::new(client.context(target, "HEAD", url)),
            reason: "the HEAD response has no Content-Length; pass the size explicitly".into(),
        })
}

fn is_index(media_type: &str) -> bool {
    media_type == manifest::OCI_INDEX || media_type == manifest::DOCKER_MANIFEST_LIST
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    digest: &Digest,
) -> Result<T, PullError> {
    serde_json::from_slice(bytes).map_err(|error| PullError::InvalidManifest {
        what: digest.to_string(),
        reason: error.to_string(),
    })
}

/// Lists the blobs of an image or artifact manifest: config, layers and artifact `blobs`.
/// Foreign layers (with `urls`) are skipped: registries do not serve them.
fn blob_jobs(
    bytes: &[u8],
    digest: &Digest,
    reference: &Reference,
) -> Result<Vec<BlobJob>, PullError> {
    let value: Value = parse_json(bytes, digest)?;
    // Each descriptor with whether it is the config.
    let mut descriptors: Vec<(Descriptor, bool)> = Vec::new();
    let parse = |value: &Value| -> Result<Descriptor, PullError> {
        parse_json(value.to_string().as_bytes(), digest)
    };
    if let Some(config) = value.get("config") {
        descriptors.push((parse(config)?, true));
    }
    for key in ["layers", "blobs"] {
        if let Some(Value::Array(items)) = value.get(key) {
            for item in items {
                descriptors.push((parse(item)?, false));
            }
        }
    }
    // A digest names one content and so one size. A manifest that lists one digest with two
    // sizes is invalid, and neither size can be trusted for the download.
    for (index, (descriptor, _)) in descriptors.iter().enumerate() {
        let other = descriptors[..index]
            .iter()
            .find(|(other, _)| other.digest == descriptor.digest && other.size != descriptor.size);
        if let Some((other, _)) = other {
            return Err(PullError::InvalidManifest {
                what: digest.to_string(),
                reason: format!(
                    "it lists blob {} with two sizes, {} and {} bytes; fix the manifest at the \
                     registry",
                    descriptor.digest, other.size, descriptor.size
                ),
            });
        }
    }
    Ok(descriptors
        .into_iter()
        .filter(|(descriptor, _)| {
            let foreign = !descriptor.urls().is_empty();
            if foreign {
                tracing::info!(digest = %descriptor.digest, "skipping foreign layer");
            }
            !foreign
        })
        .map(|(descriptor, config)| BlobJob {
            digest: descriptor.digest,
            size: descriptor.size,
            media_type: descriptor.media_type,
            source: BlobSource::Registry(reference.clone()),
            config,
        })
        .collect())
}
