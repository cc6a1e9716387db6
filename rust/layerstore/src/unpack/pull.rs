//! Pull with overlapped unpack: each layer extracts while its bytes download.
//!
//! The pull reports its manifest, each blob whose download starts (with a [`BlobStream`] on
//! its partial file) and each blob it commits or finds in the store. Once the manifest and its
//! config are known, the target is claimed for the image. Each layer then extracts into a
//! staging directory. It reads a downloading blob through a [`crate::fetch::PrefixReader`],
//! which ends only after the store has verified and committed the blob, and a blob the store
//! already had from `blobs/`. Either way the store checked the blob's digest, so the
//! extraction checks only the config's diff_id. When a download fails, restarts from byte 0
//! after the reader's first byte, or the pull is cancelled, the reader fails, the staging
//! directory is removed and nothing is published for that extraction.
//!
//! As in [`unpack_image_with`], at most one layer per core extracts at a time, largest first,
//! the download running or not. The other blobs keep downloading into the store, and
//! their extraction starts later from the partial file or the committed blob. A [`Flusher`]
//! writes dirty pages back while layers extract.
//!
//! Layers are published while the pull runs, so a process killed before the pull ends keeps
//! them for the next run. Each layer whose extraction finished waits in `ready`, and one
//! publish at a time runs on the blocking pool: one `syncfs`, then the renames of every layer
//! ready when it started ([`Bundle::publish_all`]). Layers that finish during a publish go
//! into the next batch, so the number of `syncfs` calls is at most the number of layers and
//! shrinks when layers finish close together. After the pull, [`unpack_image_with`] extracts
//! whatever is still missing (a layer whose extraction during the pull failed for a reason
//! other than its diff_id) and writes `lowerdir`, which is what marks the target complete.
//!
//! Dropping the future of [`pull_and_unpack`] (a cancelled pull) stops the extractions it
//! started at their next read: the readers of blobs that did not commit fail with the download,
//! and every other reader fails through [`Cancellable`]. Each removes its staging directory, so
//! no extraction goes on writing into the target after the pull has gone.
//!
//! With `flatten`, one thread applies the layers in manifest order to one root filesystem
//! instead, each from its download or its committed blob as the pull reports them, so the
//! flatten runs while later layers download. The layers are in order, so when a layer's bytes
//! arrive after a later layer's, the later layer waits. When that thread fails for a reason
//! other than a diff_id, the flatten after the pull starts again from the committed blobs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::digest::Digest;
use crate::error::StoreError;
use crate::fetch::{BlobStream, Progress, PullEvent, PullOptions, PullReport, Puller};
use crate::reference::Reference;
use crate::registry::error::PullError;
use crate::registry::platform::Platform;
use crate::store::Store;
use crate::unpack::bundle::{Bundle, Flusher};
use crate::unpack::compression::Compression;
use crate::unpack::error::{UnpackError, UnpackResult};
use crate::unpack::extract::{BlobCheck, Context};
use crate::unpack::metadata::{Degradations, Privileges};
use crate::unpack::{
    claim, flatten_with, image, stage_layer, unpack_image_with, Image, Layer, LayerReport, Staged,
    UnpackOptions, UnpackReport,
};

/// A failure of the pull or of the unpack.
#[derive(Debug, thiserror::Error)]
pub enum PullUnpackError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

/// Pulls `reference` into the puller's store and unpacks it into `target`, extracting while
/// the layers download.
pub async fn pull_and_unpack(
    puller: &Puller,
    reference: &Reference,
    pull_options: &PullOptions,
    target: &Path,
    options: &UnpackOptions,
    progress: &Arc<Progress>,
) -> Result<(PullReport, UnpackReport), PullUnpackError> {
    let target = target.to_owned();
    // Staging directories are removed only once the target is claimed for this image (in
    // `learn_image`, or by the unpack after the pull). A target that belongs to another image
    // is rejected, and it must keep that image's staging directories.
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&target))
        .await
        .expect("opening a target does not panic")?;
    let store = puller.store().clone();
    let mut overlap = Overlap::new(store.clone(), bundle, options.flatten);
    let events = progress.subscribe();
    let pulled = overlap
        .run(puller.pull(reference, pull_options, progress), events)
        .await;
    let Overlap {
        bundle,
        context,
        published,
        started,
        failure,
        publish_failure,
        rejected,
        ..
    } = overlap;
    if let Some(rejected) = rejected {
        // Nothing extracted: extraction starts only once the target is claimed.
        return Err(rejected.into());
    }
    // A layer published during the pull read a blob the store committed and matched its
    // diff_id, so it stays published even when the pull failed, and the next run keeps it.
    if let Some(error) = publish_failure {
        return Err(error.into());
    }
    let report = pulled.expect("the pull ran to its end unless the target was rejected")?;
    if let Some(failure) = failure {
        return Err(failure.into());
    }

    let manifest = report.manifest_digest.to_string();
    let options = options.clone();
    let mut unpacked = tokio::task::spawn_blocking(move || -> UnpackResult<UnpackReport> {
        // The pull committed this image manifest, so no platform is selected here.
        let image = image::resolve(&store, &manifest, &Platform::host())?;
        let context = Arc::into_inner(context).expect("every extraction task has finished");
        unpack_image_with(&store, &image, &bundle, &options, context)
    })
    .await
    .expect("unpack does not panic")?;
    merge_reports(&mut unpacked.layers, published);
    if let Some(started) = started {
        unpacked.seconds = started.elapsed().as_secs_f64();
    }
    Ok((report, unpacked))
}

/// Replaces the report of each layer the unpack after the pull found published with the report
/// of its extraction during the pull (at its first position, for a layer listed twice).
fn merge_reports(layers: &mut [LayerReport], mut streamed: Vec<LayerReport>) {
    for layer in layers.iter_mut().filter(|layer| layer.reused) {
        let found = streamed
            .iter()
            .position(|s| s.digest == layer.digest && s.diff_id == layer.diff_id);
        if let Some(index) = found {
            *layer = streamed.swap_remove(index);
        }
    }
}

/// Whether the layers of the image being pulled are known yet.
enum ImageState {
    /// Waiting for the manifest or its config.
    Unknown,
    /// Known, and the target is claimed for it.
    Known(Arc<Image>),
    /// Not an image this unpack can use during the pull, and the unpack after the pull reports
    /// why. Or the target belongs to another image, which stops the pull.
    Unusable,
}

/// The source of the layer blob an extraction reads.
enum Source {
    Downloading(BlobStream),
    Committed(Digest),
}

impl Source {
    fn digest(&self) -> &Digest {
        match self {
            Source::Downloading(stream) => &stream.digest,
            Source::Committed(digest) => digest,
        }
    }
}

/// The extractions that run while a pull downloads.
struct Overlap {
    store: Store,
    bundle: Arc<Bundle>,
    context: Arc<Context>,
    /// Maximum number of extractions running at once, during the download and after it.
    limit: usize,
    /// The pulled manifest's digest, bytes and config digest, once the pull sent them.
    manifest: Option<(Digest, Vec<u8>, Digest)>,
    image: ImageState,
    /// Layer blobs waiting for the image to be known or for a free extraction thread.
    queue: VecDeque<Source>,
    /// Digests queued so far, so a blob that streamed is not extracted again when it commits.
    queued: HashSet<Digest>,
    /// Extraction threads running. They are threads of their own, not tasks of the runtime's
    /// blocking pool, because a reader waiting for bytes must never hold a thread the download
    /// needs to make progress.
    running: usize,
    finished_sender: UnboundedSender<Finished>,
    finished: UnboundedReceiver<Finished>,
    /// Layers extracted and verified, waiting for the next publish.
    ready: Vec<Staged>,
    /// The publish running on the blocking pool, if any. It returns the reports of the layers
    /// it published.
    publishing: Option<JoinHandle<UnpackResult<Vec<LayerReport>>>>,
    /// Reports of the layers published during the pull.
    published: Vec<LayerReport>,
    /// The first publish that failed. No publish starts after it, and the layers still
    /// staged stay `.partial-*` directories for the next run to remove.
    publish_failure: Option<UnpackError>,
    /// Writes dirty pages back while extractions run.
    flusher: Option<Flusher>,
    /// A layer whose verified blob does not unpack to the config's diff_id. The layers that
    /// matched are published all the same, as [`unpack_image_with`] does.
    failure: Option<UnpackError>,
    /// The target belongs to another image. The pull is stopped as soon as this is known.
    rejected: Option<UnpackError>,
    /// When the first extraction started.
    started: Option<Instant>,
    /// Tells the extraction threads to stop once this is dropped.
    cancel: CancelOnDrop,
    /// The thread that applies the layers to one flattened root filesystem, in flatten mode.
    flatten: Flatten,
}

/// The flatten thread's state. [`Overlap::dispatch_flatten`] starts it only from `NotStarted`,
/// so it runs at most once.
enum Flatten {
    /// Overlay layout: one directory per layer, and no flatten thread.
    Off,
    NotStarted,
    Running(FlattenRun),
    /// Ended, or failed to start. The flatten after the pull covers what it did not do.
    Ended,
}

/// The thread that applies the layers in order in flatten mode.
struct FlattenRun {
    /// Sends the thread each layer's source as the pull reports it. Dropped once the pull has
    /// ended, so that a thread waiting for a layer the pull never reported stops.
    sources: Option<std::sync::mpsc::Sender<Source>>,
    done: oneshot::Receiver<FlattenOutcome>,
}

/// The outcome of the flatten thread: the reports of the layers it applied.
type FlattenOutcome = std::thread::Result<UnpackResult<Vec<LayerReport>>>;

/// Sets its flag when dropped. Dropped with [`Overlap`], which outlives every extraction it
/// started unless the pull's future is dropped first.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A blob reader that fails at the next read once the pull that started it is cancelled. A
/// committed blob, or a downloading one that commits before its extraction has read it all,
/// would otherwise go on extracting into the target after the pull has gone.
struct Cancellable<R> {
    inner: R,
    cancelled: Arc<AtomicBool>,
    digest: Digest,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "the pull was cancelled while blob {} was being extracted",
                self.digest
            )));
        }
        self.inner.read(buffer)
    }
}

impl Overlap {
    fn new(store: Store, bundle: Bundle, flatten: bool) -> Overlap {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let (finished_sender, finished) = mpsc::unbounded_channel();
        Overlap {
            store,
            bundle: Arc::new(bundle),
            context: Arc::new(Context {
                privileges: Privileges::current(),
                degradations: Degradations::default(),
            }),
            // One extraction per core, as in the unpack from the store: each runs three
            // threads, and more extractions than cores only compete for the CPU and the page
            // cache. The download does not lower it: when the network is the limit, the
            // largest blob arrives first on every connection (fetch/connections.rs) and its
            // extraction follows it, while a second one takes the smaller blobs as they
            // arrive. When the CPU is the limit, the download ends within seconds anyway
            // (docs/benchmarks.md, "Pull with overlapped unpack").
            limit: cores,
            manifest: None,
            image: ImageState::Unknown,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            running: 0,
            finished_sender,
            finished,
            ready: Vec::new(),
            publishing: None,
            published: Vec::new(),
            publish_failure: None,
            flusher: None,
            failure: None,
            rejected: None,
            started: None,
            cancel: CancelOnDrop(Arc::new(AtomicBool::new(false))),
            flatten: if flatten {
                Flatten::NotStarted
            } else {
                Flatten::Off
            },
        }
    }

    /// Drives `pull` while extracting and publishing layers as its events arrive. Returns once
    /// the pull has ended and every extraction it started has finished and been published, or
    /// `None` when the pull was stopped because the target belongs to another image
    /// (`rejected`).
    async fn run(
        &mut self,
        pull: impl std::future::Future<Output = Result<PullReport, PullError>>,
        mut events: UnboundedReceiver<PullEvent>,
    ) -> Option<Result<PullReport, PullError>> {
        tokio::pin!(pull);
        let pulled = loop {
            tokio::select! {
                result = &mut pull => break Some(result),
                Some(event) = events.recv() => {
                    self.handle(event).await;
                    if self.rejected.is_some() {
                        break None;
                    }
                }
                Some(finished) = self.finished.recv() => {
                    self.finish(finished);
                    self.dispatch();
                    self.start_publish();
                }
                published = join_publish(&mut self.publishing) => {
                    self.end_publish(published);
                    self.start_publish();
                }
                outcome = join_flatten(&mut self.flatten) => self.end_flatten(outcome),
            }
        };
        // Events sent just before the pull returned are still in the channel.
        while let Ok(event) = events.try_recv() {
            self.handle(event).await;
        }
        if !matches!(pulled, Some(Ok(_))) {
            // Readers of blobs that did not commit fail on their own; queued ones never start.
            self.queue.clear();
        }
        self.dispatch();
        if let Flatten::Running(run) = &mut self.flatten {
            // Every source the pull reported has been sent.
            run.sources = None;
        }
        let flattening = |flatten: &Flatten| matches!(flatten, Flatten::Running(_));
        while self.running > 0 || self.publishing.is_some() || flattening(&self.flatten) {
            tokio::select! {
                Some(finished) = self.finished.recv(), if self.running > 0 => {
                    self.finish(finished);
                    self.dispatch();
                }
                published = join_publish(&mut self.publishing) => self.end_publish(published),
                outcome = join_flatten(&mut self.flatten) => self.end_flatten(outcome),
            }
            self.start_publish();
        }
        self.flusher = None;
        pulled
    }

    /// Starts publishing every layer in `ready` unless a publish is running already; the
    /// layers that finish meanwhile wait for the next one.
    fn start_publish(&mut self) {
        if self.publishing.is_some() || self.ready.is_empty() || self.publish_failure.is_some() {
            return;
        }
        let batch = std::mem::take(&mut self.ready);
        let bundle = Arc::clone(&self.bundle);
        // A cancelled pull drops this handle but not the task: the publish still completes,
        // and it holds the target's lock until then.
        self.publishing = Some(tokio::task::spawn_blocking(move || {
            let pairs: Vec<_> = batch
                .iter()
                .map(|staged| (staged.staging.clone(), staged.published.clone()))
                .collect();
            bundle.publish_all(&pairs)?;
            Ok(batch.into_iter().map(|staged| staged.report).collect())
        }));
    }

    fn end_publish(&mut self, published: UnpackResult<Vec<LayerReport>>) {
        self.publishing = None;
        match published {
            Ok(reports) => {
                tracing::debug!(layers = reports.len(), "published layers during the pull");
                self.published.extend(reports);
            }
            Err(error) => {
                tracing::error!(%error, "publishing layers during the pull failed");
                self.publish_failure.get_or_insert(error);
            }
        }
    }

    async fn handle(&mut self, event: PullEvent) {
        match event {
            PullEvent::Manifest { digest, bytes } => {
                match config_digest(&bytes) {
                    Some(config) => self.manifest = Some((digest, bytes, config)),
                    None => self.image = ImageState::Unusable,
                }
                return;
            }
            _ if matches!(self.image, ImageState::Unusable) => return,
            PullEvent::Started(stream) => {
                if is_layer(&stream.media_type) && self.queued.insert(stream.digest.clone()) {
                    self.queue.push_back(Source::Downloading(stream));
                }
            }
            PullEvent::Committed { digest, media_type } => {
                let is_config = self
                    .manifest
                    .as_ref()
                    .is_some_and(|(_, _, config)| *config == digest);
                if is_config {
                    self.learn_image().await;
                } else if is_layer(&media_type) && self.queued.insert(digest.clone()) {
                    self.queue.push_back(Source::Committed(digest));
                }
            }
        }
        self.dispatch();
    }

    /// Reads the committed config, builds the image and claims the target for it.
    async fn learn_image(&mut self) {
        let Some((digest, bytes, _)) = self.manifest.clone() else {
            return;
        };
        let (store, bundle) = (self.store.clone(), Arc::clone(&self.bundle));
        let learned = tokio::task::spawn_blocking(move || -> UnpackResult<Image> {
            let image = image::from_manifest(&store, &digest, &bytes)?;
            claim(&bundle, &image)?;
            // What an interrupted run of this image left behind, removed before any
            // extraction of this run starts.
            bundle.remove_partials()?;
            Ok(image)
        })
        .await
        .expect("reading an image config does not panic");
        self.image = match learned {
            Ok(image) => ImageState::Known(Arc::new(image)),
            Err(error @ UnpackError::TargetInUse { .. }) => {
                tracing::error!(%error, "stopping the pull: the unpack target is not this image's");
                self.queue.clear();
                self.rejected = Some(error);
                ImageState::Unusable
            }
            Err(error) => {
                tracing::debug!(%error, "not extracting layers during the pull");
                self.queue.clear();
                ImageState::Unusable
            }
        };
    }

    /// Starts queued extractions, up to the limit, once the image is known.
    fn dispatch(&mut self) {
        let ImageState::Known(image) = &self.image else {
            return;
        };
        if self.failure.is_some() {
            self.queue.clear();
            return;
        }
        if !matches!(self.flatten, Flatten::Off) {
            let image = Arc::clone(image);
            self.dispatch_flatten(image);
            return;
        }
        while self.running < self.limit {
            // Largest first, because the largest layer is usually the critical path.
            let largest = (0..self.queue.len()).max_by_key(|&position| {
                let digest = self.queue[position].digest();
                image
                    .layers
                    .iter()
                    .find(|l| l.digest == *digest)
                    .map_or(0, |l| l.size)
            });
            let Some(source) = largest.and_then(|position| self.queue.remove(position)) else {
                return;
            };
            let Some(layer) = image.layers.iter().find(|l| l.digest == *source.digest()) else {
                continue;
            };
            if self.bundle.layer_path(&layer.diff_id).is_dir() {
                // An earlier run published it.
                continue;
            }
            let (layer, store) = (layer.clone(), self.store.clone());
            let (bundle, context) = (Arc::clone(&self.bundle), Arc::clone(&self.context));
            let sender = self.finished_sender.clone();
            let digest = layer.digest.clone();
            let cancelled = Arc::clone(&self.cancel.0);
            let spawned = std::thread::Builder::new()
                .name("warmstart-unpack".into())
                .spawn(move || {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        extract_source(source, &store, &layer, &bundle, &context, cancelled)
                    }));
                    // Released before the result is sent: the unpack after the pull takes the
                    // context back once every result has arrived.
                    drop((store, bundle, context));
                    // The receiver is gone only when the pull was cancelled.
                    let _ = sender.send((layer.digest, outcome));
                });
            match spawned {
                Ok(_) => {
                    self.running += 1;
                    self.started.get_or_insert_with(Instant::now);
                    if self.flusher.is_none() {
                        match Flusher::start(self.bundle.root()) {
                            Ok(flusher) => self.flusher = Some(flusher),
                            Err(error) => tracing::debug!(%error, "no background flush"),
                        }
                    }
                }
                Err(error) => {
                    // The unpack after the pull extracts the layer.
                    tracing::warn!(layer = %digest, %error, "starting an extraction thread failed");
                }
            }
        }
    }

    /// Starts the flatten thread unless it has run, and sends it every queued source.
    fn dispatch_flatten(&mut self, image: Arc<Image>) {
        if matches!(self.flatten, Flatten::NotStarted) {
            self.start_flatten(image);
        }
        let Flatten::Running(FlattenRun {
            sources: Some(sources),
            ..
        }) = &self.flatten
        else {
            self.queue.clear();
            return;
        };
        for source in self.queue.drain(..) {
            // The thread has ended when this fails, and the flatten after the pull takes over.
            if sources.send(source).is_err() {
                break;
            }
        }
    }

    fn start_flatten(&mut self, image: Arc<Image>) {
        let (sources, received) = std::sync::mpsc::channel();
        let (sender, done) = oneshot::channel();
        let (store, bundle) = (self.store.clone(), Arc::clone(&self.bundle));
        let context = Arc::clone(&self.context);
        let cancelled = Arc::clone(&self.cancel.0);
        let spawned = std::thread::Builder::new()
            .name("warmstart-flatten".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    flatten_sources(&image, &store, &bundle, &context, &cancelled, &received)
                }));
                // Released before the outcome is sent, as in the extraction threads.
                drop((store, bundle, context));
                let _ = sender.send(outcome);
            });
        match spawned {
            Ok(_) => {
                self.started.get_or_insert_with(Instant::now);
                self.flatten = Flatten::Running(FlattenRun {
                    sources: Some(sources),
                    done,
                });
            }
            Err(error) => {
                self.flatten = Flatten::Ended;
                tracing::warn!(%error, "starting the flatten thread failed; flattening after the pull");
            }
        }
    }

    fn end_flatten(&mut self, outcome: FlattenOutcome) {
        self.flatten = Flatten::Ended;
        match outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
            Ok(reports) => self.published.extend(reports),
            Err(error @ UnpackError::DiffIdMismatch { .. }) => {
                tracing::error!(%error, "layer does not match the image config");
                self.failure.get_or_insert(error);
            }
            Err(error) => {
                tracing::warn!(%error, "flattening during the pull failed; flattening after it");
            }
        }
    }

    fn finish(&mut self, (digest, outcome): Finished) {
        self.running -= 1;
        let result = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match result {
            Ok(staged) => self.ready.push(staged),
            Err(error @ UnpackError::DiffIdMismatch { .. }) => {
                tracing::error!(layer = %digest, %error, "layer does not match the image config");
                self.failure.get_or_insert(error);
            }
            Err(error) => {
                // A failed download fails the pull, which is the error reported. Anything else
                // gets a second try from the committed blob after the pull.
                tracing::warn!(layer = %digest, %error, "extracting a layer during the pull failed");
            }
        }
    }
}

/// The digest of a layer and the outcome of its extraction thread.
type Finished = (Digest, std::thread::Result<UnpackResult<Staged>>);

/// Waits for the running publish, if any; with none it never completes, so a `select!` branch
/// on it stays idle.
async fn join_publish(
    publishing: &mut Option<JoinHandle<UnpackResult<Vec<LayerReport>>>>,
) -> UnpackResult<Vec<LayerReport>> {
    match publishing {
        Some(handle) => handle.await.expect("publishing layers does not panic"),
        None => std::future::pending().await,
    }
}

/// Waits for the running flatten thread. With none running it never completes, as
/// [`join_publish`].
async fn join_flatten(flatten: &mut Flatten) -> FlattenOutcome {
    match flatten {
        Flatten::Running(run) => match (&mut run.done).await {
            Ok(outcome) => outcome,
            Err(_) => Ok(Err(UnpackError::InvalidImage {
                image: "being pulled".into(),
                reason: "the flatten thread ended without a result".into(),
            })),
        },
        _ => std::future::pending().await,
    }
}

/// Applies the image's layers in order to a flattened root filesystem, each read from the
/// source the pull reported for it. Waits for a layer's source when the pull has not reported
/// it yet, and fails when the pull ends without reporting it.
fn flatten_sources(
    image: &Image,
    store: &Store,
    bundle: &Bundle,
    context: &Context,
    cancelled: &Arc<AtomicBool>,
    sources: &std::sync::mpsc::Receiver<Source>,
) -> UnpackResult<Vec<LayerReport>> {
    let mut waiting: HashMap<Digest, Source> = HashMap::new();
    let mut opened: HashSet<Digest> = HashSet::new();
    flatten_with(image, bundle, context, |layer| {
        let source = if opened.contains(&layer.digest) {
            // A layer listed twice: its first read ended only after the store committed it.
            Source::Committed(layer.digest.clone())
        } else {
            loop {
                if let Some(source) = waiting.remove(&layer.digest) {
                    break source;
                }
                let Ok(source) = sources.recv() else {
                    return Err(StoreError::BlobNotFound {
                        digest: layer.digest.clone(),
                    }
                    .into());
                };
                waiting.insert(source.digest().clone(), source);
            }
        };
        opened.insert(layer.digest.clone());
        open_source(source, store, layer, Arc::clone(cancelled))
    })
}

/// Opens the blob `source` names, failing at the next read once `cancelled` is set.
fn open_source(
    source: Source,
    store: &Store,
    layer: &Layer,
    cancelled: Arc<AtomicBool>,
) -> UnpackResult<Box<dyn Read + Send>> {
    let inner: Box<dyn Read + Send> = match source {
        Source::Downloading(stream) => Box::new(stream.into_reader()),
        Source::Committed(digest) => Box::new(store.open_blob(&digest)?),
    };
    Ok(Box::new(Cancellable {
        inner,
        cancelled,
        digest: layer.digest.clone(),
    }))
}

/// Extracts one layer from `source` into a staging directory and checks it; see
/// [`stage_layer`]. Neither source is hashed again. A [`crate::fetch::PrefixReader`] ends only
/// after the store verified and committed the blob, and fails when the download restarted from
/// byte 0 after its first byte, so the bytes it returns are the ones the store verified. A
/// committed blob was verified before it was stored. Either read fails once `cancelled` is set.
fn extract_source(
    source: Source,
    store: &Store,
    layer: &Layer,
    bundle: &Bundle,
    context: &Context,
    cancelled: Arc<AtomicBool>,
) -> UnpackResult<Staged> {
    let blob = open_source(source, store, layer, cancelled)?;
    // Keyed by blob digest, so two blobs with one diff_id never share a directory.
    let key = format!("p-{}", layer.digest.hex());
    stage_layer(blob, layer, bundle, context, &key, BlobCheck::Trusted)
}

fn is_layer(media_type: &str) -> bool {
    Compression::from_media_type(media_type).is_some()
}

/// The config digest of an image manifest; `None` for anything else.
fn config_digest(manifest: &[u8]) -> Option<Digest> {
    let document: Value = serde_json::from_slice(manifest).ok()?;
    let digest = document.get("config")?.get("digest")?.as_str()?;
    Digest::parse(digest).ok()
}
