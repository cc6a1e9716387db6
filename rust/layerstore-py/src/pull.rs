//! `LayerStore.pull` and `LayerStore.fetch`: awaitables backed by the core's async puller.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use layerstore::fetch::{BlobReport, FetchOptions, Progress, PullOptions, PullReport, Puller};
use layerstore::reference::Reference;
use layerstore::registry::auth::CredentialStore;
use layerstore::registry::error::PullError;
use layerstore::registry::platform::Platform;
use layerstore::registry::{ClientOptions, FetchedManifest, RegistryClient};
use layerstore::{Digest, Store};
use pyo3::prelude::*;

use crate::errors::pull_to_py_err;

/// Client settings that identify a cached puller; pulls with equal settings share one
/// scheduler and its per-host connection limits.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientKey {
    pub insecure_registries: Vec<String>,
    pub ca_certificates: Vec<PathBuf>,
    pub stall_timeout: Duration,
    pub max_attempts: u32,
}

/// The puller a store object reuses across calls.
#[derive(Default)]
pub struct PullerCache {
    cached: Mutex<Option<(ClientKey, Puller)>>,
}

impl PullerCache {
    pub fn get(&self, store: &Store, key: ClientKey) -> Result<Puller, PullError> {
        let mut cached = self.cached.lock().expect("not poisoned");
        if let Some((existing, puller)) = cached.as_ref() {
            if *existing == key {
                return Ok(puller.clone());
            }
        }
        let options = ClientOptions {
            insecure_registries: key.insecure_registries.clone(),
            ca_certificates: key.ca_certificates.clone(),
            credentials: CredentialStore::from_environment()?,
            stall_timeout: key.stall_timeout,
            max_attempts: key.max_attempts,
            ..ClientOptions::default()
        };
        let puller = Puller::new(store.clone(), Arc::new(RegistryClient::new(options)?));
        *cached = Some((key, puller.clone()));
        Ok(puller)
    }
}

#[pyclass(module = "warmstart._native", name = "BlobReport", frozen, get_all)]
#[derive(Clone)]
pub struct PyBlobReport {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub fetched_bytes: u64,
    pub reused: bool,
    pub ranged: bool,
    pub requests: u32,
    pub seconds: f64,
}

#[pymethods]
impl PyBlobReport {
    fn __repr__(&self) -> String {
        format!(
            "BlobReport(digest={:?}, size={}, fetched_bytes={}, reused={}, seconds={:.3})",
            self.digest,
            self.size,
            self.fetched_bytes,
            if self.reused { "True" } else { "False" },
            self.seconds
        )
    }
}

impl From<BlobReport> for PyBlobReport {
    fn from(report: BlobReport) -> PyBlobReport {
        PyBlobReport {
            digest: report.digest.to_string(),
            size: report.size,
            media_type: report.media_type,
            fetched_bytes: report.fetched_bytes,
            reused: report.reused,
            ranged: report.ranged,
            requests: report.requests,
            seconds: report.seconds,
        }
    }
}

#[pyclass(module = "warmstart._native", name = "PullReport", frozen, get_all)]
pub struct PyPullReport {
    pub reference: String,
    pub tag: String,
    pub manifest_digest: String,
    pub media_type: String,
    pub index_digest: Option<String>,
    pub blobs: Vec<PyBlobReport>,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    pub manifest_seconds: f64,
    pub seconds: f64,
}

#[pymethods]
impl PyPullReport {
    fn __repr__(&self) -> String {
        format!(
            "PullReport(reference={:?}, manifest_digest={:?}, bytes_fetched={}, bytes_reused={}, seconds={:.3})",
            self.reference, self.manifest_digest, self.bytes_fetched, self.bytes_reused, self.seconds
        )
    }
}

impl From<PullReport> for PyPullReport {
    fn from(report: PullReport) -> PyPullReport {
        PyPullReport {
            reference: report.reference,
            tag: report.tag,
            manifest_digest: report.manifest_digest.to_string(),
            media_type: report.media_type,
            index_digest: report.index_digest.map(|d| d.to_string()),
            blobs: report.blobs.into_iter().map(PyBlobReport::from).collect(),
            bytes_fetched: report.bytes_fetched,
            bytes_reused: report.bytes_reused,
            manifest_seconds: report.manifest_seconds,
            seconds: report.seconds,
        }
    }
}

/// A manifest or index fetched on its own and committed to the store as a blob.
#[pyclass(module = "warmstart._native", name = "ManifestReport", frozen, get_all)]
pub struct PyManifestReport {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[pymethods]
impl PyManifestReport {
    fn __repr__(&self) -> String {
        format!(
            "ManifestReport(digest={:?}, media_type={:?}, size={})",
            self.digest, self.media_type, self.size
        )
    }
}

impl From<FetchedManifest> for PyManifestReport {
    fn from(fetched: FetchedManifest) -> PyManifestReport {
        PyManifestReport {
            digest: fetched.digest.to_string(),
            media_type: fetched.media_type,
            size: fetched.bytes.len() as u64,
        }
    }
}

/// A snapshot of a running pull's counters, passed to the progress callback.
#[pyclass(module = "warmstart._native", name = "PullProgress", frozen, get_all)]
pub struct PyPullProgress {
    pub total_bytes: u64,
    pub fetched_bytes: u64,
    pub reused_bytes: u64,
    pub blobs_total: u64,
    pub blobs_done: u64,
    /// True for the last call, made when the pull has finished or failed.
    pub finished: bool,
}

#[pymethods]
impl PyPullProgress {
    fn __repr__(&self) -> String {
        format!(
            "PullProgress(fetched_bytes={}, reused_bytes={}, total_bytes={}, blobs_done={}, \
             blobs_total={}, finished={})",
            self.fetched_bytes,
            self.reused_bytes,
            self.total_bytes,
            self.blobs_done,
            self.blobs_total,
            if self.finished { "True" } else { "False" }
        )
    }
}

fn snapshot(progress: &Progress, finished: bool) -> PyPullProgress {
    use std::sync::atomic::Ordering::{Acquire, Relaxed};
    // In the order `Progress` documents, so that the sum of the first two stays within the
    // total.
    let fetched_bytes = progress.fetched_bytes.load(Acquire);
    let reused_bytes = progress.reused_bytes.load(Acquire);
    let total_bytes = progress.total_bytes.load(Relaxed);
    PyPullProgress {
        total_bytes,
        fetched_bytes,
        reused_bytes,
        blobs_total: progress.blobs_total.load(Relaxed),
        blobs_done: progress.blobs_done.load(Relaxed),
        finished,
    }
}

/// Seconds between progress callbacks.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

fn report_progress(callback: &Py<PyAny>, progress: &Progress, finished: bool) {
    Python::attach(|py| {
        let value = snapshot(progress, finished);
        if let Err(error) = callback.call1(py, (value,)) {
            // A failing display must not fail the pull; Python prints the exception.
            error.write_unraisable(py, Some(callback.bind(py)));
        }
    });
}

/// Runs `work` while calling `callback` with progress every 0.2 s, and once more at the end.
/// The ticks run inside this future, on the thread that blocks on it (a Python thread), never
/// on a runtime worker thread.
pub async fn with_progress<T>(
    progress: Arc<Progress>,
    callback: Option<Py<PyAny>>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(callback) = callback else {
        return work.await;
    };
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    let mut work = std::pin::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = interval.tick() => report_progress(&callback, &progress, false),
        }
    };
    report_progress(&callback, &progress, true);
    result
}

/// The runtime that runs transfers. Its threads never touch Python: results, errors and
/// progress reach Python on the thread that blocks on the work, so no runtime thread can race
/// the interpreter's shutdown.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("warmstart-io")
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    })
}

/// Lets Python stop a blocking transfer from another thread: `warmstart.LayerStore`'s async
/// methods cancel it when their awaitable is cancelled.
#[pyclass(module = "warmstart._native", name = "CancelToken", frozen)]
pub struct CancelToken {
    sender: tokio::sync::watch::Sender<bool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> CancelToken {
        CancelToken {
            sender: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Stops the transfer this token was passed to; partial downloads stay for a resume.
    fn cancel(&self) {
        self.sender.send_replace(true);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        *self.sender.borrow()
    }
}

/// Blocks on `work` with the GIL released, returning early when `cancel` fires. Dropping the
/// work future stops every transfer it started.
pub fn run_blocking<T: Send>(
    py: Python<'_>,
    cancel: Option<PyRef<'_, CancelToken>>,
    work: impl std::future::Future<Output = PyResult<T>> + Send,
) -> PyResult<T> {
    let receiver = cancel.map(|token| token.sender.subscribe());
    py.detach(|| {
        runtime().block_on(async move {
            let Some(mut receiver) = receiver else {
                return work.await;
            };
            tokio::select! {
                result = work => result,
                _ = receiver.wait_for(|cancelled| *cancelled) => {
                    Err(pyo3::exceptions::PyRuntimeError::new_err("the transfer was cancelled"))
                }
            }
        })
    })
}

pub fn pull_options(
    platform: Option<&str>,
    connections: usize,
    chunk_size: u64,
    tag: Option<String>,
) -> PyResult<PullOptions> {
    let platform = platform
        .map(Platform::parse)
        .transpose()
        .map_err(pull_to_py_err)?;
    Ok(PullOptions {
        platform,
        fetch: fetch_options(connections, chunk_size)?,
        tag,
    })
}

pub fn fetch_options(connections: usize, chunk_size: u64) -> PyResult<FetchOptions> {
    if connections == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "connections must be at least 1",
        ));
    }
    if chunk_size < 64 * 1024 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "chunk_size must be at least 65536 bytes, got {chunk_size}"
        )));
    }
    Ok(FetchOptions {
        connections,
        chunk_size,
    })
}

pub fn parse_reference(text: &str) -> PyResult<Reference> {
    Reference::parse(text).map_err(pull_to_py_err)
}

pub fn parse_url(text: &str) -> PyResult<url::Url> {
    url::Url::parse(text)
        .map_err(|error| {
            pull_to_py_err(PullError::InvalidUrl {
                url: text.to_owned(),
                reason: error.to_string(),
            })
        })
        .and_then(|url| match url.scheme() {
            "http" | "https" => Ok(url),
            scheme => Err(pull_to_py_err(PullError::InvalidUrl {
                url: text.to_owned(),
                reason: format!("unsupported scheme {scheme:?}; use http or https"),
            })),
        })
}

pub fn parse_digest(text: &str) -> PyResult<Digest> {
    Digest::parse(text).map_err(|error| crate::errors::to_py_err(error.into()))
}
