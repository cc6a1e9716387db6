//! Single items of a registry repository: one manifest without tagging it, and one blob by
//! digest. A registry mirror fetches exactly what its clients request through these.

use std::sync::Arc;

use url::Url;

use super::{content_length, BlobJob, BlobReport, BlobSource, FetchOptions, Progress, Puller};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::error::PullError;
use crate::registry::{FetchedManifest, Target};
use crate::store::Expected;

impl Puller {
    /// Fetches the manifest or index that `reference` names (by tag or digest), verifies it and
    /// commits it to the store as a blob. Tags nothing and fetches none of the blobs it lists.
    pub async fn pull_manifest(&self, reference: &Reference) -> Result<FetchedManifest, PullError> {
        let fetched = self
            .fetcher
            .client()
            .fetch_manifest(reference, &reference.manifest_reference())
            .await?;
        let store = self.store().clone();
        let (bytes, digest) = (fetched.bytes.clone(), fetched.digest.clone());
        tokio::task::spawn_blocking(move || -> Result<(), PullError> {
            let expected = Expected::digest(digest).with_size(bytes.len() as u64);
            store.put_bytes(&bytes, expected)?;
            Ok(())
        })
        .await
        .expect("committing a manifest does not panic")?;
        Ok(fetched)
    }

    /// Fetches one blob of `reference`'s repository by digest through the chunked path. Without
    /// `size`, a HEAD request reads it from `Content-Length`, unless the blob is already in the
    /// store. A blob in the store is not fetched again.
    pub async fn pull_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        options: &FetchOptions,
        progress: &Arc<Progress>,
    ) -> Result<BlobReport, PullError> {
        let size = match size {
            Some(size) => size,
            None if self.store().has(digest) => self.store().stat(digest)?.size,
            None => self.blob_length(reference, digest).await?,
        };
        let job = BlobJob {
            digest: digest.clone(),
            size,
            media_type: "application/octet-stream".into(),
            source: BlobSource::Registry(reference.clone()),
            config: false,
        };
        self.fetch_one(job, options, progress).await
    }

    async fn blob_length(&self, reference: &Reference, digest: &Digest) -> Result<u64, PullError> {
        let client = self.fetcher.client();
        let text = format!(
            "{}/v2/{}/blobs/{digest}",
            client.registry_url(reference).await,
            reference.repository()
        );
        let url = Url::parse(&text).map_err(|error| PullError::InvalidUrl {
            url: text.clone(),
            reason: error.to_string(),
        })?;
        let target = Target {
            reference: Some(reference.clone()),
            digest: Some(digest.clone()),
        };
        content_length(client, &target, &url).await
    }
}
