//! Parallel chunked download of blobs into partial files, with hashing overlapped.
//!
//! For each blob: the first missing range is requested as a probe. A 206 whose `Content-Range`
//! starts where asked means the server honours ranges, and the blob's other ranges are queued
//! behind the per-host connection limit. A 200, or a 206 starting elsewhere, means it does not:
//! the blob is fetched as one stream from byte 0, and no full body is ever spliced into a chunk.
//! Bytes are written at their offset in the preallocated partial file. A hashing task hashes the
//! contiguous prefix as it grows, so verification overlaps the download. It takes the bytes
//! from the written buffers where they are still in memory and reads them back from the file
//! elsewhere, so the digest covers exactly the bytes on disk. A subscriber to [`Progress`] gets
//! the same prefix as a [`BlobStream`], to consume each blob while it downloads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use url::Url;

use crate::digest::{Digest, Hasher};
use crate::error::StoreError;
use crate::fetch::connections::{Acquire, Connections, Priority, Slot};
use crate::fetch::ranges::{ramp, RangeSet};
use crate::fetch::retained::{MemoryBudget, Piece, Retained, RETAIN_LIMIT};
use crate::fetch::stream::{BlobStream, Prefix, PrefixGuard};
use crate::reference::Reference;
use crate::registry::error::{PullError, RequestContext};
use crate::registry::{backoff, RegistryClient};
use crate::store::{PartialBlob, PartialStart, Store};

/// Bytes written to the partial file at once.
const WRITE_BUFFER: usize = 1 << 20;
/// Bytes hashed per read of the partial file: small enough that the bytes a read copies are
/// still in the CPU cache when the hasher reads them.
const HASH_BUFFER: usize = 256 << 10;

/// First and longest pause between two tries to take a blob's lock that another writer holds.
const LOCK_POLL_FIRST: Duration = Duration::from_millis(5);
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);

/// Connections per host of a pull by default. Object stores behind registries cap each
/// connection's throughput, so the aggregate grows with the count: at 50 MB/s per connection,
/// 16 connections move up to 800 MB/s. On loopback, 16 cost no more CPU than 8.
pub const DEFAULT_CONNECTIONS: usize = 16;

/// Range size and connection count of a fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Concurrent connections per host, shared by every blob and pull of one [`Fetcher`].
    pub connections: usize,
    /// Size of the byte ranges a large blob is split into.
    pub chunk_size: u64,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            connections: DEFAULT_CONNECTIONS,
            chunk_size: 16 << 20,
        }
    }
}

/// The source of a blob's bytes.
#[derive(Clone, Debug)]
pub enum BlobSource {
    Registry(Reference),
    Url(Url),
}

/// One blob to fetch.
#[derive(Clone, Debug)]
pub struct BlobJob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub source: BlobSource,
    /// True for the config blob of the manifest being pulled, which starts before the others.
    pub config: bool,
}

/// The outcome of fetching one blob.
#[derive(Clone, Debug)]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Bytes received from the network for this blob (retries included).
    pub fetched_bytes: u64,
    /// True when the blob was already in the store and nothing was fetched.
    pub reused: bool,
    /// True when the blob's bytes came from range requests: this pull's, or those of an
    /// earlier, interrupted pull whose finished chunks this pull resumed from. So a resumed
    /// blob finished with one range request is ranged. False when the blob came as one stream
    /// from byte 0 (the server ignored or stopped honouring Range, or the blob fits in one
    /// chunk), and for a blob found in the store.
    pub ranged: bool,
    /// HTTP requests made for this blob's bytes.
    pub requests: u32,
    /// Seconds from the start of the fetch to the commit.
    pub seconds: f64,
}

/// Live counters of a pull, read by progress displays while the pull runs.
///
/// `fetched_bytes + reused_bytes` never exceeds `total_bytes` for a reader that loads
/// `fetched_bytes`, then `reused_bytes`, both with [`Ordering::Acquire`], and `total_bytes`
/// last.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sizes of every blob of the pull.
    pub total_bytes: AtomicU64,
    /// Bytes downloaded and written into their blob's partial file. A restart from byte 0
    /// subtracts the bytes it discards, so a byte fetched twice counts once; the per-blob
    /// [`BlobReport::fetched_bytes`] counts every byte received.
    pub fetched_bytes: AtomicU64,
    /// Bytes found in the store: committed blobs, and the chunks that an earlier, interrupted
    /// pull left in a partial file (subtracted again when a restart from byte 0 discards them).
    pub reused_bytes: AtomicU64,
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
    /// The sender of [`PullEvent`]s, set by [`Progress::subscribe`].
    events: Mutex<Option<mpsc::UnboundedSender<PullEvent>>>,
}

/// An event of a pull, sent to a subscriber as it happens, so the subscriber (unpack during a
/// pull) can start on each blob before the pull ends.
#[derive(Debug)]
pub enum PullEvent {
    /// The image manifest the pull resolved to, sent before any of its blobs is fetched.
    Manifest { digest: Digest, bytes: Vec<u8> },
    /// A blob's download started; the stream reads its bytes as they arrive.
    Started(BlobStream),
    /// A blob is in the store, committed by this pull or found there.
    Committed { digest: Digest, media_type: String },
}

impl Progress {
    /// Returns a receiver of the events of every pull that uses this progress from now on,
    /// replacing an earlier subscriber. Without a subscriber no event is built.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<PullEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.events.lock().expect("not poisoned") = Some(sender);
        receiver
    }

    fn is_subscribed(&self) -> bool {
        let events = self.events.lock().expect("not poisoned");
        events.as_ref().is_some_and(|sender| !sender.is_closed())
    }

    pub(crate) fn send(&self, event: PullEvent) {
        if let Some(sender) = self.events.lock().expect("not poisoned").as_ref() {
            // A subscriber that stopped listening needs no events.
            let _ = sender.send(event);
        }
    }

    fn record_committed(&self, digest: &Digest, media_type: &str) {
        self.send(PullEvent::Committed {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
        });
    }
}

/// Fetches blobs into a store. One fetcher shares its per-host connection limits between every
/// blob and every concurrent pull that uses it.
#[derive(Debug)]
pub struct Fetcher {
    store: Store,
    client: Arc<RegistryClient>,
    hosts: Mutex<HashMap<String, Arc<Connections>>>,
    /// Pulls started, which orders them for connections: an earlier pull goes first.
    pulls: AtomicU64,
    /// Caps the written bytes kept in memory for hashing, over all downloads.
    retain_budget: Arc<MemoryBudget>,
}

impl Fetcher {
    pub fn new(store: Store, client: Arc<RegistryClient>) -> Fetcher {
        Fetcher {
            store,
            client,
            hosts: Mutex::new(HashMap::new()),
            pulls: AtomicU64::new(0),
            retain_budget: MemoryBudget::new(RETAIN_LIMIT),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    /// Returns the connection slots of a host. Pulls that run at once share one set, sized by
    /// the first of them to reach the host. A pull that finds the set idle, with no download
    /// holding it, and of another size replaces it, so its own `connections` applies.
    fn connections(&self, host: &str, connections: usize) -> Arc<Connections> {
        let mut hosts = self.hosts.lock().expect("not poisoned");
        let slots = hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Connections::new(connections)));
        // Other references belong to the downloads of running pulls, and to the acquires and
        // slots cloned from them. So under this lock a count of 1 means no pull uses the set.
        if slots.size() != connections.max(1) && Arc::strong_count(slots) == 1 {
            *slots = Arc::new(Connections::new(connections));
        }
        Arc::clone(slots)
    }

    /// Fetches every job into the store; a digest listed twice is fetched once. The first
    /// failure aborts the other downloads (their partial files stay for a resume) and is
    /// returned. Dropping the returned future cancels everything it started.
    ///
    /// The config blob gets the first connection, so that a consumer of the pull (unpack)
    /// learns the image before any layer arrives. The other blobs get their first connection
    /// largest first, since the biggest blob is the critical path, and then their other ranges
    /// in the same order, one blob after another ([`Connections`]). Blobs that another writer
    /// is downloading into the same store wait for it outside that order, so they never hold
    /// up the others.
    pub async fn fetch_all(
        self: &Arc<Self>,
        jobs: Vec<BlobJob>,
        options: &FetchOptions,
        progress: &Arc<Progress>,
    ) -> Result<Vec<BlobReport>, PullError> {
        let started = Instant::now();
        let pull = self.pulls.fetch_add(1, Ordering::Relaxed);
        let mut unique: Vec<BlobJob> = Vec::new();
        for job in jobs {
            if !unique.iter().any(|existing| existing.digest == job.digest) {
                unique.push(job);
            }
        }
        progress
            .blobs_total
            .fetch_add(unique.len() as u64, Ordering::Relaxed);
        progress
            .total_bytes
            .fetch_add(unique.iter().map(|job| job.size).sum(), Ordering::Relaxed);
        unique.sort_by_key(|job| (!job.config, std::cmp::Reverse(job.size)));

        // Open every partial file at once, without waiting for another writer's lock.
        let mut opening = Vec::new();
        for job in &unique {
            let store = self.store.clone();
            let (digest, size) = (job.digest.clone(), job.size);
            opening.push(tokio::task::spawn_blocking(move || {
                store.try_open_partial(&digest, size)
            }));
        }
        let mut reports = Vec::new();
        let mut tasks = JoinSet::new();
        let mut ready = Vec::new();
        for (rank, (job, opened)) in unique.into_iter().zip(opening).enumerate() {
            let priority = Priority {
                pull,
                later: false,
                rank,
            };
            match opened.await.expect("try_open_partial does not panic")? {
                Some(PartialStart::Exists(_)) => {
                    reports.push((rank, reused_report(job, started, progress)));
                }
                Some(PartialStart::Open(partial)) => ready.push((priority, job, partial)),
                None => {
                    let fetcher = Arc::clone(self);
                    let (options, progress) = (options.clone(), Arc::clone(progress));
                    tasks.spawn(async move {
                        let report = fetcher.fetch_blob(job, priority, options, progress).await;
                        (rank, report)
                    });
                }
            }
        }

        // Ask for every blob's first connection before any blob starts, so that none of
        // these requests can find a later range ahead of it.
        let mut first_requests = Vec::new();
        for (priority, job, partial) in ready {
            let (download, guard) = self.new_download(job, partial, priority, options, progress)?;
            let first = download.first_missing().map(|_| download.acquire(false));
            first_requests.push((priority.rank, download, guard, first));
        }
        for (rank, download, guard, first) in first_requests {
            tasks.spawn(async move { (rank, finish_blob(download, guard, first, started).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (index, result) = joined.expect("blob tasks do not panic");
            reports.push((index, result?));
        }
        reports.sort_by_key(|(index, _)| *index);
        Ok(reports.into_iter().map(|(_, report)| report).collect())
    }

    /// Fetches one blob whose partial file another writer holds: waits for that writer, then
    /// downloads what it left, queueing for connections behind everything already queued.
    async fn fetch_blob(
        self: Arc<Self>,
        job: BlobJob,
        priority: Priority,
        options: FetchOptions,
        progress: Arc<Progress>,
    ) -> Result<BlobReport, PullError> {
        let started = Instant::now();
        let opened = self.wait_for_partial(&job.digest, job.size).await?;
        match opened {
            PartialStart::Exists(_) => Ok(reused_report(job, started, &progress)),
            PartialStart::Open(partial) => {
                let (download, guard) =
                    self.new_download(job, partial, priority, &options, &progress)?;
                finish_blob(download, guard, None, started).await
            }
        }
    }

    /// Opens a blob's partial file once no other writer holds the blob's lock.
    ///
    /// The wait polls the lock instead of blocking in `flock`. A blocking wait would hold a
    /// thread of tokio's blocking pool (512 threads by default) until the other writer commits.
    /// Enough concurrent pulls of one image in a process would then take every thread, and the
    /// writer they wait for could no longer hash or commit its blobs, which need that pool.
    async fn wait_for_partial(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<PartialStart, PullError> {
        let mut delay = LOCK_POLL_FIRST;
        loop {
            let store = self.store.clone();
            let digest = digest.clone();
            let opened = tokio::task::spawn_blocking(move || store.try_open_partial(&digest, size))
                .await
                .expect("try_open_partial does not panic")?;
            if let Some(opened) = opened {
                return Ok(opened);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LOCK_POLL_MAX);
        }
    }

    fn new_download(
        self: &Arc<Self>,
        job: BlobJob,
        partial: PartialBlob,
        priority: Priority,
        options: &FetchOptions,
        progress: &Arc<Progress>,
    ) -> Result<(Arc<Download>, PrefixGuard), PullError> {
        let host = match &job.source {
            BlobSource::Registry(reference) => reference.api_host().to_owned(),
            BlobSource::Url(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
        };
        let mut done = RangeSet::default();
        for &(start, end) in partial.completed_ranges() {
            done.insert(start, end);
        }
        // Bytes already on disk from an earlier run count as reused.
        progress
            .reused_bytes
            .fetch_add(done.covered(), Ordering::Release);
        // Marks the stream failed if the blob's download ends without a commit, even by being
        // dropped.
        let guard = PrefixGuard(announce_stream(&job, &partial, &done, progress)?);
        let download = Arc::new(Download {
            fetcher: Arc::clone(self),
            job,
            partial,
            state: Mutex::new(State {
                resumed: done.covered(),
                done,
                generation: 0,
                hashed: 0,
                retained: Retained::default(),
            }),
            changed: Notify::new(),
            connections: self.connections(&host, options.connections),
            priority,
            options: options.clone(),
            progress: Arc::clone(progress),
            fetched: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            range_responses: AtomicU32::new(0),
            syncing: Arc::new(AtomicBool::new(false)),
            prefix: guard.0.clone(),
        });
        Ok((download, guard))
    }
}

/// Reports a blob found in the store, and records it as committed.
fn reused_report(job: BlobJob, started: Instant, progress: &Progress) -> BlobReport {
    progress.reused_bytes.fetch_add(job.size, Ordering::Release);
    progress.blobs_done.fetch_add(1, Ordering::Relaxed);
    progress.record_committed(&job.digest, &job.media_type);
    BlobReport {
        digest: job.digest,
        size: job.size,
        media_type: job.media_type,
        fetched_bytes: 0,
        reused: true,
        ranged: false,
        requests: 0,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Downloads a blob's missing ranges (its first range on the connection `first` asked for,
/// when given), checks its digest and commits it.
async fn finish_blob(
    download: Arc<Download>,
    guard: PrefixGuard,
    first: Option<Acquire>,
    started: Instant,
) -> Result<BlobReport, PullError> {
    let first_permit = match first {
        Some(acquire) => Some(acquire.await),
        None => None,
    };
    let media_type = download.job.media_type.clone();
    let progress = Arc::clone(&download.progress);

    // Aborted when this future is dropped (a cancelled pull), so the task does not keep the
    // partial blob and its lock alive.
    let mut hashing = AbortOnDrop(tokio::spawn(hash_prefix(Arc::clone(&download))));
    if let Err(error) = download_all(&download, first_permit).await {
        if matches!(error, PullError::Store(StoreError::SizeMismatch { .. })) {
            // The server's blob has another size than the descriptor. The partial file, whose
            // blocks are allocated at the descriptor's size, can never complete.
            download.partial.discard();
        }
        return Err(error);
    }
    let computed = (&mut hashing.0).await.expect("hashing does not panic")?;
    drop(hashing);

    let ranged = {
        let state = download.state.lock().expect("not poisoned");
        // Generation 0 holds only bytes from range responses and resumed chunks, because a
        // stream from byte 0 restarts into generation 1.
        // NOTE: a resumed partial file that was complete takes no request, and counts as
        // ranged even when the interrupted pull had fetched it as one stream.
        state.generation == 0
            && (state.resumed > 0 || download.range_responses.load(Ordering::Relaxed) > 0)
    };
    let fetched_bytes = download.fetched.load(Ordering::Relaxed);
    let requests = download.requests.load(Ordering::Relaxed);
    // The range tasks and the hashing task have ended, and background flushes own their
    // own file handle, so this is the last reference.
    let download = Arc::into_inner(download).expect("all tasks of the blob have finished");
    let outcome = tokio::task::spawn_blocking(move || download.partial.commit(computed))
        .await
        .expect("commit does not panic");
    let committed = outcome?;
    guard.commit();
    progress.blobs_done.fetch_add(1, Ordering::Relaxed);
    progress.record_committed(&committed.digest, &media_type);
    Ok(BlobReport {
        digest: committed.digest,
        size: committed.size,
        media_type,
        fetched_bytes,
        reused: false,
        ranged,
        requests,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Sends a [`PullEvent::Started`] for a blob whose partial file is open, when the pull has a
/// subscriber; returns the prefix the download must advance.
fn announce_stream(
    job: &BlobJob,
    partial: &PartialBlob,
    done: &RangeSet,
    progress: &Progress,
) -> Result<Option<Arc<Prefix>>, PullError> {
    if !progress.is_subscribed() {
        return Ok(None);
    }
    let prefix = Prefix::new(done.contiguous_end());
    let stream = BlobStream::new(
        job.digest.clone(),
        job.media_type.clone(),
        job.size,
        partial.sync_handle()?,
        Arc::clone(&prefix),
    );
    progress.send(PullEvent::Started(stream));
    Ok(Some(prefix))
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Written ranges, and a generation that changes when a restart from byte 0 discards them.
struct State {
    done: RangeSet,
    /// Bytes of `done` that an earlier run wrote, counted in `Progress::reused_bytes`. The
    /// rest of `done` this run wrote, counted in `Progress::fetched_bytes`.
    resumed: u64,
    generation: u64,
    /// End of the prefix the hashing task has taken on.
    hashed: u64,
    /// Written buffers kept for the hashing task.
    retained: Retained,
}

/// One blob being downloaded.
struct Download {
    fetcher: Arc<Fetcher>,
    job: BlobJob,
    partial: PartialBlob,
    state: Mutex<State>,
    /// Signalled whenever `state` changes, to wake the hashing task.
    changed: Notify,
    /// The connection slots of the blob's host, and the blob's place in their queue.
    connections: Arc<Connections>,
    priority: Priority,
    options: FetchOptions,
    progress: Arc<Progress>,
    fetched: AtomicU64,
    requests: AtomicU32,
    /// Range responses accepted: a 206 whose `Content-Range` starts where asked.
    range_responses: AtomicU32,
    /// True while a background flush of the partial file runs.
    syncing: Arc<AtomicBool>,
    /// The contiguous written prefix announced to a subscriber, if the pull has one.
    prefix: Option<Arc<Prefix>>,
}

/// The kind of response a range probe received.
enum Probe {
    /// A 206 starting where asked: ranges work.
    Ranged(Response),
    /// A 200 with the whole body: the server ignored Range.
    Whole(Response),
    /// A 206 starting elsewhere: its bytes are unusable and ranges are not trusted.
    WrongStart,
}

impl Download {
    /// Asks for a connection for the blob's first request, or for one of its `later` ranges.
    fn acquire(&self, later: bool) -> Acquire {
        let priority = Priority {
            later,
            ..self.priority
        };
        self.connections.acquire(priority)
    }

    fn context(&self, url_hint: &str) -> RequestContext {
        let (registry, repository) = match &self.job.source {
            BlobSource::Registry(reference) => (
                reference.registry().to_owned(),
                reference.repository().to_owned(),
            ),
            BlobSource::Url(_) => (String::new(), String::new()),
        };
        RequestContext {
            method: "GET",
            url: url_hint.to_owned(),
            registry,
            repository,
            digest: Some(self.job.digest.clone()),
        }
    }

    fn describe_source(&self) -> String {
        match &self.job.source {
            BlobSource::Registry(reference) => format!(
                "{}/v2/{}/blobs/{}",
                reference.api_host(),
                reference.repository(),
                self.job.digest
            ),
            BlobSource::Url(url) => crate::registry::error::redact_url(url),
        }
    }

    /// Sends a GET for `start..end` (no Range header when that is the whole blob).
    async fn request(&self, range: Option<(u64, u64)>) -> Result<Response, PullError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let client = self.fetcher.client();
        let inclusive = range.map(|(start, end)| (start, end - 1));
        match &self.job.source {
            BlobSource::Registry(reference) => {
                client
                    .get_blob(reference, &self.job.digest, inclusive)
                    .await
            }
            BlobSource::Url(url) => {
                client
                    .get_url(url, Method::GET, inclusive, &self.job.digest)
                    .await
            }
        }
    }

    /// Records `start..end` as written, counts its new bytes as fetched, and keeps its `buffers`
    /// for hashing when the budget allows. Returns false when a restart discarded this writer's
    /// generation.
    fn mark_written(&self, start: u64, end: u64, generation: u64, buffers: Vec<Bytes>) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if state.generation != generation {
            return false;
        }
        let covered = state.done.covered();
        state.done.insert(start, end);
        let added = state.done.covered() - covered;
        self.progress
            .fetched_bytes
            .fetch_add(added, Ordering::Release);
        let hashed = state.hashed;
        let budget = &self.fetcher.retain_budget;
        state.retained.offer(budget, hashed, start, end, buffers);
        if let Some(prefix) = &self.prefix {
            prefix.advance(state.done.contiguous_end());
        }
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Discards everything written, for a restart from byte 0; returns the new generation.
    fn restart(&self) -> u64 {
        let mut state = self.state.lock().expect("not poisoned");
        // The discarded bytes leave the progress, so the bytes fetched again count once. Writes
        // of the new generation take this lock, so they count only after these subtractions.
        let resumed = std::mem::take(&mut state.resumed);
        let written = state.done.covered() - resumed;
        self.progress
            .reused_bytes
            .fetch_sub(resumed, Ordering::AcqRel);
        self.progress
            .fetched_bytes
            .fetch_sub(written, Ordering::AcqRel);
        state.done.clear();
        state.retained.clear();
        state.hashed = 0;
        state.generation += 1;
        if let Some(prefix) = &self.prefix {
            prefix.restart();
        }
        let generation = state.generation;
        drop(state);
        self.changed.notify_one();
        generation
    }

    /// Returns the ranges still to download, each at most one chunk long.
    fn missing(&self) -> Vec<(u64, u64)> {
        let chunk = self.options.chunk_size.max(1);
        let state = self.state.lock().expect("not poisoned");
        state.done.missing(self.job.size, chunk)
    }

    fn first_missing(&self) -> Option<(u64, u64)> {
        self.missing().first().copied()
    }

    fn generation(&self) -> u64 {
        self.state.lock().expect("not poisoned").generation
    }

    /// Streams a response body into the partial file from `position`, stopping at `end`.
    /// Returns the position reached, which is short of `end` when the body ends early. A
    /// transport failure or stall comes back with the position it reached.
    async fn stream_body(
        &self,
        mut response: Response,
        mut position: u64,
        end: u64,
        generation: u64,
    ) -> (u64, Option<PullError>) {
        let stall = self.fetcher.client().options().stall_timeout;
        // The response's own buffers, written with one `pwritev` when they add up to
        // WRITE_BUFFER bytes, so the bytes are not copied into a staging buffer first.
        let mut buffer = Buffers::default();
        let mut buffer_start = position;
        loop {
            let next = tokio::time::timeout(stall, response.chunk()).await;
            let chunk = match next {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(source)) => {
                    let flushed = self.flush(&mut buffer, buffer_start, generation);
                    let context = Box::new(self.context(&self.describe_source()));
                    return (
                        flushed.unwrap_or(buffer_start),
                        Some(PullError::Transport { context, source }),
                    );
                }
                Err(_) => {
                    let flushed = self.flush(&mut buffer, buffer_start, generation);
                    let context = Box::new(self.context(&self.describe_source()));
                    return (
                        flushed.unwrap_or(buffer_start),
                        Some(PullError::Stalled {
                            context,
                            timeout: stall,
                        }),
                    );
                }
            };
            if position + chunk.len() as u64 > end {
                let context = Box::new(self.context(&self.describe_source()));
                let reason = format!("body runs past byte {end} of the requested range");
                return (buffer_start, Some(PullError::Protocol { context, reason }));
            }
            self.fetched
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            position += chunk.len() as u64;
            buffer.push(chunk);
            if buffer.len() >= WRITE_BUFFER {
                match self.flush(&mut buffer, buffer_start, generation) {
                    Ok(flushed) => buffer_start = flushed,
                    Err(error) => return (buffer_start, Some(error)),
                }
            }
        }
        match self.flush(&mut buffer, buffer_start, generation) {
            Ok(flushed) => (flushed, None),
            Err(error) => (buffer_start, Some(error)),
        }
    }

    /// Writes the buffers at `start`, marks them written and returns the position after them.
    fn flush(&self, buffer: &mut Buffers, start: u64, generation: u64) -> Result<u64, PullError> {
        if buffer.is_empty() {
            return Ok(start);
        }
        let (chunks, length) = buffer.take();
        self.partial.write_vectored_at(start, &chunks)?;
        let end = start + length as u64;
        self.mark_written(start, end, generation, chunks);
        Ok(end)
    }
}

/// Response chunks received but not yet written.
#[derive(Default)]
struct Buffers {
    chunks: Vec<Bytes>,
    length: usize,
}

impl Buffers {
    fn push(&mut self, chunk: Bytes) {
        self.length += chunk.len();
        self.chunks.push(chunk);
    }

    fn len(&self) -> usize {
        self.length
    }

    fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Returns the chunks and their total length, leaving this empty.
    fn take(&mut self) -> (Vec<Bytes>, usize) {
        let length = std::mem::take(&mut self.length);
        (std::mem::take(&mut self.chunks), length)
    }
}

/// Downloads every missing range of a blob, the first on `first_permit` when given.
async fn download_all(
    download: &Arc<Download>,
    first_permit: Option<Slot>,
) -> Result<(), PullError> {
    let size = download.job.size;
    let missing = download.missing();
    let Some(&(first_start, first_end)) = missing.first() else {
        return Ok(());
    };
    let permit = match first_permit {
        Some(permit) => permit,
        None => download.acquire(false).await,
    };
    let whole = first_start == 0 && first_end == size;
    let probe = if whole {
        Probe::Whole(download.request(None).await?)
    } else {
        classify(
            download.request(Some((first_start, first_end))).await?,
            first_start,
        )?
    };
    match probe {
        Probe::Ranged(response) => {
            // Workers take ranges in ascending order as connections free up, so the written
            // prefix (and the hashing behind it) grows from byte 0. When the ranges left take
            // more than one round of the connections, the first of them grow in size, so that
            // ranges started together do not also end together. In one round they all run at
            // once, and the ramp's extra pieces would only add a request to the round.
            let chunk = download.options.chunk_size;
            let connections = download.options.connections;
            let pieces = if missing.len() - 1 > connections {
                ramp(&missing[1..], connections, chunk)
            } else {
                missing[1..].to_vec()
            };
            // A worker per piece up to the connections, so that no piece waits for another
            // piece of its blob to end while a connection is free.
            let workers = connections.min(pieces.len());
            let queue = Arc::new(Mutex::new(VecDeque::from(pieces)));
            let mut ranges: JoinSet<Result<(), RangeError>> = JoinSet::new();
            for _ in 0..workers {
                let (download, queue) = (Arc::clone(download), Arc::clone(&queue));
                // Queued here, before the first range can free its connection.
                let first_slot = download.acquire(true);
                ranges.spawn(async move {
                    let mut slot = first_slot.await;
                    loop {
                        let Some((start, end)) = queue.lock().expect("not poisoned").pop_front()
                        else {
                            return Ok(());
                        };
                        fetch_range(&download, start, end, None).await?;
                        // Queued before the connection is freed, so that it stays with this
                        // blob unless a request that comes first in the order waits for one.
                        let next = download.acquire(true);
                        drop(slot);
                        slot = next.await;
                    }
                });
            }
            // The first range runs as one of the tasks, so a refusal or failure of any range
            // stops the others at once, the first range included.
            let first = Arc::clone(download);
            ranges.spawn(async move {
                let result = fetch_range(&first, first_start, first_end, Some(response)).await;
                drop(permit);
                result
            });
            let mut result = Ok(());
            while result.is_ok() {
                match ranges.join_next().await {
                    Some(joined) => result = joined.expect("range tasks do not panic"),
                    None => break,
                }
            }
            // Every range task has ended before a restart, so none writes into the new attempt.
            ranges.abort_all();
            while ranges.join_next().await.is_some() {}
            match result {
                Ok(()) => Ok(()),
                Err(RangeError::Failed(error)) => Err(error),
                Err(RangeError::Refused(error)) => {
                    tracing::warn!(source = %download.describe_source(), %error, "server stopped honouring Range; fetching the blob again as one stream");
                    let permit = download.acquire(true).await;
                    let result = fetch_whole(download, None).await;
                    drop(permit);
                    result
                }
            }
        }
        Probe::Whole(response) => {
            if !whole {
                tracing::warn!(source = %download.describe_source(), "server ignored Range; fetching the blob as one stream");
            }
            let result = fetch_whole(download, Some(response)).await;
            drop(permit);
            result
        }
        Probe::WrongStart => {
            tracing::warn!(source = %download.describe_source(), "server returned a range at the wrong offset; fetching the blob as one stream");
            let result = fetch_whole(download, None).await;
            drop(permit);
            result
        }
    }
}

/// Reads `Content-Range: bytes START-END/TOTAL`.
fn content_range(response: &Response) -> Option<(u64, u64, Option<u64>)> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()))
}

fn classify(response: Response, requested_start: u64) -> Result<Probe, PullError> {
    match response.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(&response) {
            Some((start, _, _)) if start == requested_start => Ok(Probe::Ranged(response)),
            _ => Ok(Probe::WrongStart),
        },
        _ => Ok(Probe::Whole(response)),
    }
}

/// The failure of a range fetch.
enum RangeError {
    /// The server returned the whole blob, a range at another offset or a 206 without a valid
    /// `Content-Range` for a range request, after it had honoured ranges. The blob is fetched
    /// again as one stream from byte 0.
    Refused(PullError),
    Failed(PullError),
}

impl From<PullError> for RangeError {
    fn from(error: PullError) -> RangeError {
        RangeError::Failed(error)
    }
}

/// Fetches `start..end` with as many requests as it takes: a truncated or stalled body is
/// continued from the last byte written, never restarted.
async fn fetch_range(
    download: &Arc<Download>,
    start: u64,
    end: u64,
    first: Option<Response>,
) -> Result<(), RangeError> {
    let max_attempts = download.fetcher.client().options().max_attempts;
    let base_delay = download.fetcher.client().options().retry_base_delay;
    let generation = download.generation();
    let mut position = start;
    let mut failures = 0u32;
    let mut response = first;
    while position < end {
        let current = match response.take() {
            Some(response) => response,
            None => download.request(Some((position, end))).await?,
        };
        check_range_response(download, &current, position, end)?;
        download.range_responses.fetch_add(1, Ordering::Relaxed);
        let (reached, error) = download
            .stream_body(current, position, end, generation)
            .await;
        let progressed = reached > position;
        position = reached;
        if position >= end && error.is_none() {
            break;
        }
        let error = error.unwrap_or_else(|| PullError::Protocol {
            context: Box::new(download.context(&download.describe_source())),
            reason: format!("body ended at byte {position} of range {start}-{end}"),
        });
        if !error.is_retryable() {
            return Err(error.into());
        }
        // Progress resets the count: a slow server that keeps delivering is not failing.
        failures = if progressed { 1 } else { failures + 1 };
        if failures >= max_attempts {
            return Err(PullError::RetriesExhausted {
                attempts: failures,
                last: Box::new(error),
            }
            .into());
        }
        tracing::warn!(error = %error, position, end, "continuing a range after a failure");
        tokio::time::sleep(backoff(base_delay, failures)).await;
    }
    download
        .partial
        .record_completed(start, end)
        .map_err(PullError::from)?;
    start_background_sync(download);
    Ok(())
}

/// Starts flushing the partial file to disk unless a flush is already running, so the disk
/// writes during the download instead of all at once in the commit's fsync. A failed flush is
/// only logged: the commit's own fsync reports it. The flush owns its own file handle, so it
/// never keeps the download alive.
fn start_background_sync(download: &Download) {
    if download.syncing.swap(true, Ordering::AcqRel) {
        return;
    }
    let file = match download.partial.sync_handle() {
        Ok(file) => file,
        Err(error) => {
            tracing::debug!(%error, "background flush not started");
            download.syncing.store(false, Ordering::Release);
            return;
        }
    };
    let syncing = Arc::clone(&download.syncing);
    tokio::task::spawn_blocking(move || {
        if let Err(error) = file.sync_data() {
            tracing::debug!(%error, "background flush failed");
        }
        syncing.store(false, Ordering::Release);
    });
}

fn check_range_response(
    download: &Download,
    response: &Response,
    position: u64,
    end: u64,
) -> Result<(), RangeError> {
    let protocol = |reason: String| PullError::Protocol {
        context: Box::new(download.context(&download.describe_source())),
        reason,
    };
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Err(RangeError::Refused(protocol(format!(
            "HTTP {} to a range request after the server had honoured ranges",
            response.status().as_u16()
        ))));
    }
    match content_range(response) {
        Some((start, last, total)) => {
            if start != position {
                return Err(RangeError::Refused(protocol(format!(
                    "Content-Range {start}-{last} for a request of {position}-{}",
                    end - 1
                ))));
            }
            if last >= end {
                return Err(protocol(format!(
                    "Content-Range {start}-{last} for a request of {position}-{}",
                    end - 1
                ))
                .into());
            }
            if total.is_some_and(|total| total != download.job.size) {
                return Err(PullError::Store(StoreError::SizeMismatch {
                    what: format!("blob {}", download.job.digest),
                    expected: download.job.size,
                    actual: total.unwrap_or_default(),
                })
                .into());
            }
            Ok(())
        }
        // The probe takes such a response as a sign that ranges cannot be trusted, too.
        None => Err(RangeError::Refused(protocol(
            "a 206 response without a valid Content-Range".into(),
        ))),
    }
}

/// Fetches the blob as one stream from byte 0, restarting from 0 after a failure because the
/// server cannot resume.
async fn fetch_whole(download: &Download, first: Option<Response>) -> Result<(), PullError> {
    let size = download.job.size;
    let max_attempts = download.fetcher.client().options().max_attempts;
    let base_delay = download.fetcher.client().options().retry_base_delay;
    let mut response = first;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let generation = download.restart();
        let current = match response.take() {
            Some(response) => response,
            None => download.request(None).await?,
        };
        let declared = current
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|declared| *declared != size) {
            return Err(PullError::Store(StoreError::SizeMismatch {
                what: format!(
                    "blob {} (Content-Length from {})",
                    download.job.digest,
                    download.describe_source()
                ),
                expected: size,
                actual: declared,
            }));
        }
        let (reached, error) = download.stream_body(current, 0, size, generation).await;
        if reached == size && error.is_none() {
            download.partial.record_completed(0, size)?;
            return Ok(());
        }
        let error = error.unwrap_or_else(|| PullError::Protocol {
            context: Box::new(download.context(&download.describe_source())),
            reason: format!("body ended at byte {reached} of {size}"),
        });
        if !error.is_retryable() || attempt >= max_attempts {
            return Err(if attempt > 1 {
                PullError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(error),
                }
            } else {
                error
            });
        }
        tracing::warn!(error = %error, attempt, "restarting a download that cannot resume");
        tokio::time::sleep(backoff(base_delay, attempt)).await;
    }
}

/// Hashes the contiguous written prefix as it grows; returns the digest once every byte is
/// hashed. Bytes come from the buffers kept by [`Download::mark_written`] where there are
/// some, and are read back from the partial file elsewhere, so the digest covers the bytes on
/// disk either way.
async fn hash_prefix(download: Arc<Download>) -> Result<Digest, PullError> {
    let size = download.job.size;
    let algorithm = download.job.digest.algorithm();
    let mut hasher: Hasher = algorithm.hasher();
    let mut hashed = 0u64;
    let mut generation = 0u64;
    // Reused by every read of the file, and allocated only once one is needed.
    let mut read_buffer: Vec<u8> = Vec::new();
    loop {
        let notified = download.changed.notified();
        let (contiguous, current_generation, pieces) = {
            let mut state = download.state.lock().expect("not poisoned");
            if state.generation != generation {
                hashed = 0;
            }
            let contiguous = state.done.contiguous_end();
            let pieces = state.retained.take(hashed, contiguous);
            state.hashed = contiguous.max(hashed);
            (contiguous, state.generation, pieces)
        };
        if current_generation != generation {
            hasher = algorithm.hasher();
            generation = current_generation;
        }
        if contiguous > hashed {
            let reader = Arc::clone(&download);
            let (moved_hasher, mut buffer) = (hasher, std::mem::take(&mut read_buffer));
            let hashed_pieces = tokio::task::spawn_blocking(move || {
                let mut hasher = moved_hasher;
                let result = hash_pieces(&reader.partial, pieces, &mut hasher, &mut buffer);
                result.map(|()| (hasher, buffer))
            });
            (hasher, read_buffer) = hashed_pieces.await.expect("hashing does not panic")?;
            hashed = contiguous;
            continue;
        }
        if hashed == size {
            return Ok(hasher.finish());
        }
        notified.await;
    }
}

/// Feeds `pieces` to `hasher` in order, reading the file's pieces through `buffer`.
fn hash_pieces(
    partial: &PartialBlob,
    pieces: Vec<Piece>,
    hasher: &mut Hasher,
    buffer: &mut Vec<u8>,
) -> Result<(), StoreError> {
    for piece in pieces {
        match piece {
            Piece::Memory(buffers, _reservation) => {
                for bytes in &buffers {
                    hasher.update(bytes);
                }
            }
            Piece::File { start, end } => {
                buffer.resize(HASH_BUFFER, 0);
                let mut offset = start;
                while offset < end {
                    let length = (end - offset).min(HASH_BUFFER as u64) as usize;
                    partial.read_at(offset, &mut buffer[..length])?;
                    hasher.update(&buffer[..length]);
                    offset += length as u64;
                }
            }
        }
    }
    Ok(())
}
