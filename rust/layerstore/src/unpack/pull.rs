//! Pull with overlapped unpack: each layer is extracted as soon as the pull commits its blob,
//! while the other blobs still download.
//!
//! Layers extracted early are published under the diff_id computed while extracting them, so
//! their names are right whatever image they belong to. Once the pull ends, [`unpack_image`]
//! matches them against the config's diff_ids, extracts whatever is still missing and writes
//! `lowerdir`.
//!
//! TODO: extraction starts when a blob is committed, not while its bytes arrive; streaming
//! from the partial file needs the fetcher to announce its contiguous prefix.
//! TODO: a flatten starts only after the pull, because it applies layers in order.

use std::path::Path;
use std::sync::Arc;

use crate::digest::{Algorithm, Digest};
use crate::fetch::{Progress, PullOptions, PullReport, Puller};
use crate::reference::Reference;
use crate::registry::error::PullError;
use crate::store::Store;
use crate::unpack::bundle::{self, Bundle};
use crate::unpack::compression::Compression;
use crate::unpack::error::{UnpackError, UnpackResult};
use crate::unpack::extract::{self, Context, DeferredDirectories, Mode};
use crate::unpack::metadata::{Degradations, Privileges};
use crate::unpack::{image, unpack_image_with, UnpackOptions, UnpackReport};

/// A failure of the pull or of the unpack.
#[derive(Debug, thiserror::Error)]
pub enum PullUnpackError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

/// Pulls `reference` into the puller's store and unpacks it into `target`, extracting layers
/// while the rest of the image downloads (overlay layout only).
pub async fn pull_and_unpack(
    puller: &Puller,
    reference: &Reference,
    pull_options: &PullOptions,
    target: &Path,
    options: &UnpackOptions,
    progress: &Arc<Progress>,
) -> Result<(PullReport, UnpackReport), PullUnpackError> {
    let target = target.to_owned();
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&target))
        .await
        .expect("opening a target does not panic")?;
    let bundle = Arc::new(bundle);
    bundle_remove_partials(&bundle).await?;
    let context = Arc::new(Context {
        privileges: Privileges::current(),
        degradations: Degradations::default(),
    });
    let store = puller.store().clone();
    let mut early = tokio::task::JoinSet::new();
    let pull = puller.pull(reference, pull_options, progress);
    tokio::pin!(pull);
    let mut seen = 0;
    let pulled = loop {
        let notified = progress.committed_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let committed: Vec<(Digest, String)> =
            progress.committed.lock().expect("not poisoned")[seen..].to_vec();
        seen += committed.len();
        for (digest, media_type) in committed {
            if options.flatten || Compression::from_media_type(&media_type).is_none() {
                continue;
            }
            let (store, bundle, context) =
                (store.clone(), Arc::clone(&bundle), Arc::clone(&context));
            early.spawn_blocking(move || {
                if let Err(error) = extract_committed(&store, &bundle, &digest, &media_type, &context) {
                    // The unpack after the pull extracts this layer again and reports the error.
                    tracing::warn!(layer = %digest, %error, "extracting a layer during the pull failed");
                }
            });
        }
        tokio::select! {
            result = &mut pull => break result,
            () = &mut notified => {}
        }
    };
    // Every early extraction finishes before the final step, which removes partial directories.
    while early.join_next().await.is_some() {}
    let report = pulled?;
    let manifest = report.manifest_digest.to_string();
    let options = options.clone();
    let unpacked = tokio::task::spawn_blocking(move || -> UnpackResult<UnpackReport> {
        let image = image::resolve(&store, &manifest)?;
        let context = Arc::into_inner(context).expect("early extractions have finished");
        unpack_image_with(&store, &image, &bundle, &options, context)
    })
    .await
    .expect("unpack does not panic")?;
    Ok((report, unpacked))
}

async fn bundle_remove_partials(bundle: &Arc<Bundle>) -> UnpackResult<()> {
    let bundle = Arc::clone(bundle);
    tokio::task::spawn_blocking(move || bundle.remove_partials())
        .await
        .expect("removing partial directories does not panic")
}

/// Extracts a committed layer blob and publishes it under the diff_id computed on the way.
fn extract_committed(
    store: &Store,
    bundle: &Bundle,
    digest: &Digest,
    media_type: &str,
    context: &Context,
) -> UnpackResult<()> {
    let staging = bundle.layer_staging(&format!("c-{}", digest.hex()))?;
    let mut directories = DeferredDirectories::new();
    let extracted = extract::extract_layer(
        store.open_blob(digest)?,
        digest,
        media_type,
        Algorithm::Sha256,
        &staging,
        Mode::Overlay,
        &mut directories,
        context,
    );
    let extracted = match extracted {
        Ok(extracted) if extracted.digest == *digest => extracted,
        Ok(extracted) => {
            bundle::remove_tree(&staging)?;
            return Err(crate::error::StoreError::DigestMismatch {
                expected: digest.clone(),
                actual: extracted.digest,
                bytes: extracted.compressed_bytes,
            }
            .into());
        }
        Err(error) => {
            bundle::remove_tree(&staging)?;
            return Err(error);
        }
    };
    extract::apply_directories(&directories, context)?;
    bundle.publish(&staging, &bundle.layer_path(&extracted.diff_id))
}
