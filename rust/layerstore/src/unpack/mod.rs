//! Unpacking: from layers in the store to a root filesystem on disk.
//!
//! Two layouts, both in a target directory described in [`bundle`]:
//! - **overlay**: one directory per layer, in the form overlayfs takes as lower directories,
//!   extracted in parallel (one layer per core, largest first), plus a `lowerdir` file naming
//!   them top-most first;
//! - **flatten**: one merged root filesystem, the layers applied in order with whiteouts.
//!
//! A layer is published only when its tar stream hashes to the `diff_id` the image config
//! lists, which covers every byte extracted. A blob read from the store is not hashed again,
//! because the store checked its digest before storing it.
//! Entries that would write outside the target are rejected, see [`path`].

pub mod bundle;
pub mod compression;
pub mod error;
pub mod extract;
pub mod image;
pub mod metadata;
pub mod path;
pub mod pull;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::digest::Digest;
use crate::error::StoreError;
use crate::registry::platform::Platform;
use crate::store::Store;

use bundle::Flusher;
pub use bundle::{Bundle, Record};
pub use error::{UnpackError, UnpackResult};
pub use extract::Mode;
pub use image::{Image, Layer};

use extract::{BlobCheck, Context, DeferredDirectories, Extracted, Target};
use metadata::{Degradations, Privileges};

/// Settings of one unpack.
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// Merge the layers into `rootfs/` instead of one directory per layer.
    pub flatten: bool,
    /// The platform selected from an index; the host's when `None`. A pull with overlapped
    /// unpack takes the platform from its pull options instead.
    pub platform: Option<Platform>,
}

/// What happened to one layer.
#[derive(Clone, Debug)]
pub struct LayerReport {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    /// Size of the blob in bytes.
    pub compressed_bytes: u64,
    /// Size of the tar stream in bytes; 0 when the layer was already unpacked.
    pub uncompressed_bytes: u64,
    /// Tar entries extracted; 0 when the layer was already unpacked.
    pub entries: u64,
    /// True when the layer's directory was published before: by an earlier run, or for a
    /// layer the image lists twice, at its first position.
    pub reused: bool,
    /// Seconds spent extracting this layer, including waits for its bytes during a pull.
    pub seconds: f64,
}

/// What an unpack did.
#[derive(Clone, Debug)]
pub struct UnpackReport {
    pub target: PathBuf,
    pub manifest_digest: Digest,
    pub mode: Mode,
    /// The `rootfs/` directory (flatten) or the `lowerdir` file (overlay).
    pub result: PathBuf,
    /// From the bottom layer up.
    pub layers: Vec<LayerReport>,
    /// Metadata that could not be kept, one line per kind of loss.
    pub warnings: Vec<String>,
    /// Wall time. For a pull with overlapped unpack, from the start of the first extraction
    /// during the pull to the end.
    pub seconds: f64,
}

/// Unpacks the image `reference` (a tag or a manifest digest) from `store` into `target`.
/// Running it again after a crash finishes the job: complete layers are kept.
pub fn unpack(
    store: &Store,
    reference: &str,
    target: &Path,
    options: &UnpackOptions,
) -> UnpackResult<UnpackReport> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let image = image::resolve(store, reference, &platform)?;
    let bundle = Bundle::open(target)?;
    unpack_image(store, &image, &bundle, options)
}

/// Unpacks a resolved image into a locked target.
pub fn unpack_image(
    store: &Store,
    image: &Image,
    bundle: &Bundle,
    options: &UnpackOptions,
) -> UnpackResult<UnpackReport> {
    let context = Context {
        privileges: Privileges::current(),
        degradations: Degradations::default(),
    };
    unpack_image_with(store, image, bundle, options, context)
}

/// [`unpack_image`] with a context that may already hold warnings of earlier extractions.
pub(crate) fn unpack_image_with(
    store: &Store,
    image: &Image,
    bundle: &Bundle,
    options: &UnpackOptions,
    context: Context,
) -> UnpackResult<UnpackReport> {
    let started = Instant::now();
    claim(bundle, image)?;
    bundle.remove_partials()?;
    let (mode, result, layers) = if options.flatten {
        let layers = flatten(store, image, bundle, &context)?;
        (Mode::Flatten, bundle.rootfs_path(), layers)
    } else {
        let layers = overlay(store, image, bundle, &context)?;
        (Mode::Overlay, bundle.lowerdir_path(), layers)
    };
    let warnings = context.degradations.summary();
    for warning in &warnings {
        tracing::warn!(target = %bundle.root().display(), "{warning}");
    }
    let report = UnpackReport {
        target: bundle.root().to_owned(),
        manifest_digest: image.manifest_digest.clone(),
        mode,
        result,
        layers,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        target = %report.target.display(),
        manifest = %report.manifest_digest,
        seconds = report.seconds,
        "unpack finished"
    );
    Ok(report)
}

/// Checks that `bundle` belongs to `image`, recording the image in it if it is new.
pub(crate) fn claim(bundle: &Bundle, image: &Image) -> UnpackResult<()> {
    bundle.claim(&Record {
        manifest: image.manifest_digest.clone(),
        layers: image
            .layers
            .iter()
            .map(|layer| (layer.digest.clone(), layer.diff_id.clone()))
            .collect(),
    })
}

/// A layer extracted and verified in its staging directory, not yet published.
pub(crate) struct Staged {
    pub(crate) staging: PathBuf,
    pub(crate) published: PathBuf,
    pub(crate) report: LayerReport,
}

/// Extracts every missing layer into its own directory, in parallel, largest first, publishes
/// them after one flush and then writes `lowerdir`. Does nothing but report when `lowerdir`
/// already exists. When a layer fails, the layers that succeeded are still published, so the
/// next run keeps them, and the first error is returned.
fn overlay(
    store: &Store,
    image: &Image,
    bundle: &Bundle,
    context: &Context,
) -> UnpackResult<Vec<LayerReport>> {
    let complete = bundle.lowerdir_path().exists();
    let mut order: Vec<usize> = (0..image.layers.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(image.layers[index].size));
    // A layer listed twice is extracted once, because both extractions would use one staging
    // directory; its other positions report it as reused.
    let mut first: HashMap<&Digest, usize> = HashMap::new();
    for (index, layer) in image.layers.iter().enumerate() {
        first.entry(&layer.diff_id).or_insert(index);
    }
    let flusher = Flusher::start(bundle.root())?;
    let results = run_largest_first(&order, |index| {
        let layer = &image.layers[index];
        let repeated = first[&layer.diff_id] != index;
        if complete || repeated || bundle.layer_path(&layer.diff_id).is_dir() {
            Ok(None)
        } else {
            let blob = store.open_blob(&layer.digest)?;
            let key = layer.diff_id.hex();
            stage_layer(blob, layer, bundle, context, key, BlobCheck::Trusted).map(Some)
        }
    });
    drop(flusher);
    let mut reports = Vec::new();
    let mut pairs = Vec::new();
    let mut first_error = None;
    for (index, result) in results {
        match result {
            Ok(Some(staged)) => {
                pairs.push((staged.staging, staged.published));
                reports.push((index, staged.report));
            }
            Ok(None) => reports.push((index, reused(&image.layers[index]))),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    bundle.publish_all(&pairs)?;
    if let Some(error) = first_error {
        return Err(error);
    }
    reports.sort_by_key(|(index, _)| *index);
    if !complete {
        let paths: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|layer| bundle.layer_path(&layer.diff_id))
            .collect();
        bundle.write_lowerdir(&paths)?;
    }
    Ok(reports.into_iter().map(|(_, report)| report).collect())
}

/// Runs `work` for each index of `order` on one thread per core, each thread taking the next
/// index in `order` when it is free. With `order` largest first, the largest layer starts at
/// once and the small ones fill the other cores around it. (A rayon `par_iter` splits the list
/// in halves instead, which can run the two largest layers one after the other.)
fn run_largest_first<T: Send>(
    order: &[usize],
    work: impl Fn(usize) -> T + Sync,
) -> Vec<(usize, T)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(order.len());
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(order.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = work(index);
                    results.lock().expect("not poisoned").push((index, result));
                }
            });
        }
    });
    results.into_inner().expect("not poisoned")
}

/// Extracts one layer read from `blob` into the staging directory `staging_key` and checks it
/// against `layer`, for publishing under its diff_id. On any error the staging directory is
/// removed.
pub(crate) fn stage_layer(
    blob: impl Read + Send + 'static,
    layer: &Layer,
    bundle: &Bundle,
    context: &Context,
    staging_key: &str,
    blob_check: BlobCheck,
) -> UnpackResult<Staged> {
    let started = Instant::now();
    let staging = bundle.layer_staging(staging_key)?;
    let mut directories = DeferredDirectories::new();
    let extracted = extract::extract_layer(
        blob,
        &layer.digest,
        &layer.media_type,
        layer.diff_id.algorithm(),
        blob_check,
        Target {
            root: &staging,
            mode: Mode::Overlay,
            directories: &mut directories,
            context,
        },
    );
    let extracted = match extracted.and_then(|extracted| check(layer, extracted)) {
        Ok(extracted) => extracted,
        Err(error) => {
            bundle::remove_tree(&staging)?;
            return Err(error);
        }
    };
    if let Err(error) = extract::apply_directories(&directories, context) {
        bundle::remove_tree(&staging)?;
        return Err(error);
    }
    Ok(Staged {
        published: bundle.layer_path(&layer.diff_id),
        staging,
        report: report(layer, &extracted, started),
    })
}

/// Applies every layer in order to one staging directory and publishes it as `rootfs/`.
/// Does nothing but report when `rootfs/` already exists.
fn flatten(
    store: &Store,
    image: &Image,
    bundle: &Bundle,
    context: &Context,
) -> UnpackResult<Vec<LayerReport>> {
    flatten_with(image, bundle, context, |layer| {
        let blob: Box<dyn Read + Send> = Box::new(store.open_blob(&layer.digest)?);
        Ok(blob)
    })
}

/// [`flatten`] reading each layer's blob from `open`, which is called once per layer in
/// manifest order and may block until the blob is available. The blob's digest is trusted,
/// so `open` must return bytes the store verified.
pub(crate) fn flatten_with(
    image: &Image,
    bundle: &Bundle,
    context: &Context,
    mut open: impl FnMut(&Layer) -> UnpackResult<Box<dyn Read + Send>>,
) -> UnpackResult<Vec<LayerReport>> {
    if bundle.rootfs_path().is_dir() {
        return Ok(image.layers.iter().map(reused).collect());
    }
    let staging = bundle.rootfs_staging()?;
    let flusher = Flusher::start(bundle.root())?;
    let mut directories = DeferredDirectories::new();
    let mut reports = Vec::new();
    // TODO: decompress the next layer while this one is applied; today only decompression and
    // extraction of the same layer overlap.
    for layer in &image.layers {
        let started = Instant::now();
        let extracted = open(layer).and_then(|blob| {
            extract::extract_layer(
                blob,
                &layer.digest,
                &layer.media_type,
                layer.diff_id.algorithm(),
                BlobCheck::Trusted,
                Target {
                    root: &staging,
                    mode: Mode::Flatten,
                    directories: &mut directories,
                    context,
                },
            )
        });
        match extracted.and_then(|extracted| check(layer, extracted)) {
            Ok(extracted) => reports.push(report(layer, &extracted, started)),
            Err(error) => {
                bundle::remove_tree(&staging)?;
                return Err(error);
            }
        }
    }
    extract::apply_directories(&directories, context)?;
    drop(flusher);
    bundle.publish(&staging, &bundle.rootfs_path())?;
    Ok(reports)
}

/// Checks the digests of an extracted layer against the manifest and the config. With
/// [`BlobCheck::Trusted`] the blob digest is the layer's own, so only the diff_id is compared.
fn check(layer: &Layer, extracted: Extracted) -> UnpackResult<Extracted> {
    if extracted.digest != layer.digest {
        return Err(StoreError::DigestMismatch {
            expected: layer.digest.clone(),
            actual: extracted.digest,
            bytes: extracted.compressed_bytes,
        }
        .into());
    }
    if extracted.diff_id != layer.diff_id {
        return Err(UnpackError::DiffIdMismatch {
            layer: layer.digest.clone(),
            expected: layer.diff_id.clone(),
            actual: extracted.diff_id,
        });
    }
    Ok(extracted)
}

fn report(layer: &Layer, extracted: &Extracted, started: Instant) -> LayerReport {
    LayerReport {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        media_type: layer.media_type.clone(),
        compressed_bytes: extracted.compressed_bytes,
        uncompressed_bytes: extracted.uncompressed_bytes,
        entries: extracted.entries,
        reused: false,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn reused(layer: &Layer) -> LayerReport {
    LayerReport {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        media_type: layer.media_type.clone(),
        compressed_bytes: layer.size,
        uncompressed_bytes: 0,
        entries: 0,
        reused: true,
        seconds: 0.0,
    }
}
