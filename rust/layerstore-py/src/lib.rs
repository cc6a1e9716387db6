//! Python bindings for the `layerstore` crate, importable as `warmstart._native`.
//!
//! Conversions and wrappers only: every operation calls the core crate with the GIL released,
//! so Python threads run while a blob is hashed or written.

mod errors;
mod pull;
mod stream;
mod types;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use layerstore::fetch::Progress;
use layerstore::registry::platform::Platform;
use layerstore::store::GcOptions;
use layerstore::unpack::UnpackOptions;
use layerstore::{Digest, Expected, Store};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py_err;
use crate::stream::PyReader;
use crate::types::{
    PyBlobInfo, PyDescriptor, PyGcReport, PyImportReport, PyProblem, PyUsage, PyVerifyReport,
};
use crate::unpack::{PyLayerReport, PyUnpackReport};

fn parse_digest(text: &str) -> PyResult<Digest> {
    Digest::parse(text).map_err(|error| to_py_err(error.into()))
}

fn expected(digest: Option<&str>, size: Option<i64>) -> PyResult<Expected> {
    Ok(Expected {
        digest: digest.map(parse_digest).transpose()?,
        size: size.map(|size| non_negative(size, "size")).transpose()?,
    })
}

fn non_negative(value: i64, name: &str) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be at least 0, got {value}")))
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a finite number of seconds from 0 to below 2**64, got {value}"
        ))
    })
}

/// The native layer store; `warmstart.LayerStore` subclasses it.
#[pyclass(module = "warmstart._native", name = "LayerStore", subclass, frozen)]
struct PyLayerStore {
    store: Store,
    pullers: pull::PullerCache,
}

#[pymethods]
impl PyLayerStore {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<PyLayerStore> {
        let store = py.detach(|| Store::open(path)).map_err(to_py_err)?;
        Ok(PyLayerStore {
            store,
            pullers: pull::PullerCache::default(),
        })
    }

    #[getter]
    fn root(&self) -> PathBuf {
        self.store.root().to_owned()
    }

    #[pyo3(signature = (data, *, digest=None, size=None))]
    fn put(
        &self,
        py: Python<'_>,
        data: &[u8],
        digest: Option<&str>,
        size: Option<i64>,
    ) -> PyResult<PyBlobInfo> {
        let expected = expected(digest, size)?;
        let outcome = py
            .detach(|| self.store.put_bytes(data, expected))
            .map_err(to_py_err)?;
        Ok(outcome.into())
    }

    #[pyo3(signature = (path, *, digest=None, size=None))]
    fn put_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        digest: Option<&str>,
        size: Option<i64>,
    ) -> PyResult<PyBlobInfo> {
        let expected = expected(digest, size)?;
        let outcome = py
            .detach(|| self.store.put_file(&path, expected))
            .map_err(to_py_err)?;
        Ok(outcome.into())
    }

    #[pyo3(signature = (stream, *, digest=None, size=None))]
    fn put_stream(
        &self,
        py: Python<'_>,
        stream: Bound<'_, PyAny>,
        digest: Option<&str>,
        size: Option<i64>,
    ) -> PyResult<PyBlobInfo> {
        let expected = expected(digest, size)?;
        let reader = PyReader::new(&stream)?;
        let python_error = reader.error_slot();
        let result = py.detach(|| self.store.put_reader(reader, expected));
        if let Some(error) = python_error.lock().expect("not poisoned").take() {
            return Err(error);
        }
        Ok(result.map_err(to_py_err)?.into())
    }

    #[pyo3(signature = (digest, offset=0, length=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        digest: &str,
        offset: i64,
        length: Option<i64>,
    ) -> PyResult<Vec<u8>> {
        let digest = parse_digest(digest)?;
        let offset = non_negative(offset, "offset")?;
        let length = length
            .map(|length| non_negative(length, "length"))
            .transpose()?;
        py.detach(|| self.store.read_range(&digest, offset, length))
            .map_err(to_py_err)
    }

    fn path(&self, digest: &str) -> PyResult<PathBuf> {
        let digest = parse_digest(digest)?;
        self.store.stat(&digest).map_err(to_py_err)?;
        Ok(self.store.blob_path(&digest))
    }

    fn has(&self, digest: &str) -> PyResult<bool> {
        Ok(self.store.has(&parse_digest(digest)?))
    }

    fn stat(&self, digest: &str) -> PyResult<PyBlobInfo> {
        let digest = parse_digest(digest)?;
        Ok(self.store.stat(&digest).map_err(to_py_err)?.into())
    }

    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyBlobInfo>> {
        let blobs = py.detach(|| self.store.list()).map_err(to_py_err)?;
        Ok(blobs.into_iter().map(PyBlobInfo::from).collect())
    }

    #[pyo3(signature = (digest, *, force=false))]
    fn delete(&self, py: Python<'_>, digest: &str, force: bool) -> PyResult<bool> {
        let digest = parse_digest(digest)?;
        py.detach(|| self.store.delete(&digest, force))
            .map_err(to_py_err)
    }

    #[pyo3(signature = (*, quarantine=false))]
    fn verify(&self, py: Python<'_>, quarantine: bool) -> PyResult<PyVerifyReport> {
        let report = py
            .detach(|| self.store.verify(quarantine))
            .map_err(to_py_err)?;
        Ok(report.into())
    }

    fn tag(&self, py: Python<'_>, tag: &str, digest: &str) -> PyResult<PyDescriptor> {
        let digest = parse_digest(digest)?;
        let descriptor = py
            .detach(|| self.store.tag(tag, &digest))
            .map_err(to_py_err)?;
        Ok(descriptor.into())
    }

    fn untag(&self, py: Python<'_>, tag: &str) -> PyResult<bool> {
        py.detach(|| self.store.untag(tag)).map_err(to_py_err)
    }

    fn resolve(&self, tag: &str) -> PyResult<PyDescriptor> {
        Ok(self.store.resolve(tag).map_err(to_py_err)?.into())
    }

    /// Resolves a tag or manifest digest to the image manifest for `platform` (`os/arch[/variant]`,
    /// the host's when `None`); see `Store::resolve_platform`.
    #[pyo3(signature = (reference, platform=None))]
    fn resolve_platform(
        &self,
        py: Python<'_>,
        reference: &str,
        platform: Option<&str>,
    ) -> PyResult<PyDescriptor> {
        let platform = match platform {
            Some(text) => Platform::parse(text).map_err(errors::pull_to_py_err)?,
            None => Platform::host(),
        };
        let descriptor = py
            .detach(|| self.store.resolve_platform(reference, &platform))
            .map_err(to_py_err)?;
        Ok(descriptor.into())
    }

    fn tags(&self) -> PyResult<Vec<PyDescriptor>> {
        let tags = self.store.tags().map_err(to_py_err)?;
        Ok(tags
            .into_iter()
            .map(|(_, descriptor)| descriptor.into())
            .collect())
    }

    #[pyo3(signature = (*, grace_period_s=3600.0, ingest_max_age_s=86400.0, dry_run=false))]
    fn gc(
        &self,
        py: Python<'_>,
        grace_period_s: f64,
        ingest_max_age_s: f64,
        dry_run: bool,
    ) -> PyResult<PyGcReport> {
        let options = GcOptions {
            grace_period: seconds(grace_period_s, "grace_period_s")?,
            ingest_max_age: seconds(ingest_max_age_s, "ingest_max_age_s")?,
            dry_run,
        };
        let report = py.detach(|| self.store.gc(&options)).map_err(to_py_err)?;
        Ok(report.into())
    }

    fn usage(&self, py: Python<'_>) -> PyResult<PyUsage> {
        Ok(py.detach(|| self.store.usage()).map_err(to_py_err)?.into())
    }

    #[pyo3(signature = (path, *, tags=None))]
    fn import_layout(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tags: Option<Vec<String>>,
    ) -> PyResult<PyImportReport> {
        let report = py
            .detach(|| self.store.import_layout(&path, tags.as_deref()))
            .map_err(to_py_err)?;
        Ok(report.into())
    }

    #[pyo3(signature = (path, *, tag=None))]
    fn import_archive(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tag: Option<&str>,
    ) -> PyResult<PyImportReport> {
        let report = py
            .detach(|| self.store.import_docker_archive(&path, tag))
            .map_err(to_py_err)?;
        Ok(report.into())
    }

    #[pyo3(signature = (path, *, tags=None))]
    fn export_layout(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tags: Option<Vec<String>>,
    ) -> PyResult<PyImportReport> {
        let report = py
            .detach(|| self.store.export_layout(&path, tags.as_deref()))
            .map_err(to_py_err)?;
        Ok(report.into())
    }

    /// Pulls an image or artifact; blocks until it ends and returns a `PullReport`.
    /// `warmstart.LayerStore.pull` runs it on a worker thread as an awaitable.
    #[pyo3(signature = (
        reference, *, platform=None, connections=16, chunk_size=16777216, tag=None,
        insecure_registries=Vec::new(), ca_certificates=Vec::new(), stall_timeout_s=30.0,
        max_attempts=5, progress=None
    , cancel=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(name = "_pull")]
    fn pull<'py>(
        &self,
        py: Python<'py>,
        reference: &str,
        platform: Option<&str>,
        connections: usize,
        chunk_size: u64,
        tag: Option<String>,
        insecure_registries: Vec<String>,
        ca_certificates: Vec<PathBuf>,
        stall_timeout_s: f64,
        max_attempts: u32,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, pull::CancelToken>>,
    ) -> PyResult<pull::PyPullReport> {
        let reference = pull::parse_reference(reference)?;
        let options = pull::pull_options(platform, connections, chunk_size, tag)?;
        let puller = self.puller(
            insecure_registries,
            ca_certificates,
            stall_timeout_s,
            max_attempts,
        )?;
        pull::run_blocking(py, cancel, async move {
            let counters = Arc::new(Progress::default());
            let work = puller.pull(&reference, &options, &counters);
            let report = pull::with_progress(Arc::clone(&counters), progress, work)
                .await
                .map_err(errors::pull_to_py_err)?;
            Ok(pull::PyPullReport::from(report))
        })
    }

    /// Downloads one blob from an HTTP(S) URL; blocks until it ends and returns a `BlobReport`.
    #[pyo3(signature = (
        url, *, digest, size=None, connections=16, chunk_size=16777216, stall_timeout_s=30.0,
        max_attempts=5, progress=None
    , cancel=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(name = "_fetch")]
    fn fetch<'py>(
        &self,
        py: Python<'py>,
        url: &str,
        digest: &str,
        size: Option<u64>,
        connections: usize,
        chunk_size: u64,
        stall_timeout_s: f64,
        max_attempts: u32,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, pull::CancelToken>>,
    ) -> PyResult<pull::PyBlobReport> {
        let url = pull::parse_url(url)?;
        let digest = pull::parse_digest(digest)?;
        let options = pull::fetch_options(connections, chunk_size)?;
        let puller = self.puller(Vec::new(), Vec::new(), stall_timeout_s, max_attempts)?;
        pull::run_blocking(py, cancel, async move {
            let counters = Arc::new(Progress::default());
            let work = puller.fetch_url(&url, &digest, size, &options, &counters);
            let report = pull::with_progress(Arc::clone(&counters), progress, work)
                .await
                .map_err(errors::pull_to_py_err)?;
            Ok(pull::PyBlobReport::from(report))
        })
    }

    /// Fetches one manifest or index by tag or digest into the store without tagging it;
    /// blocks until it ends and returns a `ManifestReport`.
    #[pyo3(signature = (
        reference, *, insecure_registries=Vec::new(), ca_certificates=Vec::new(),
        stall_timeout_s=30.0, max_attempts=5
    , cancel=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(name = "_pull_manifest")]
    fn pull_manifest<'py>(
        &self,
        py: Python<'py>,
        reference: &str,
        insecure_registries: Vec<String>,
        ca_certificates: Vec<PathBuf>,
        stall_timeout_s: f64,
        max_attempts: u32,
        cancel: Option<PyRef<'_, pull::CancelToken>>,
    ) -> PyResult<pull::PyManifestReport> {
        let reference = pull::parse_reference(reference)?;
        let puller = self.puller(
            insecure_registries,
            ca_certificates,
            stall_timeout_s,
            max_attempts,
        )?;
        pull::run_blocking(py, cancel, async move {
            let fetched = puller
                .pull_manifest(&reference)
                .await
                .map_err(errors::pull_to_py_err)?;
            Ok(pull::PyManifestReport::from(fetched))
        })
    }

    /// Fetches one blob of the reference's repository by digest; blocks until it ends and returns a
    /// `BlobReport`.
    #[pyo3(signature = (
        reference, *, digest, size=None, connections=16, chunk_size=16777216,
        insecure_registries=Vec::new(), ca_certificates=Vec::new(), stall_timeout_s=30.0,
        max_attempts=5, progress=None
    , cancel=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(name = "_pull_blob")]
    fn pull_blob<'py>(
        &self,
        py: Python<'py>,
        reference: &str,
        digest: &str,
        size: Option<u64>,
        connections: usize,
        chunk_size: u64,
        insecure_registries: Vec<String>,
        ca_certificates: Vec<PathBuf>,
        stall_timeout_s: f64,
        max_attempts: u32,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, pull::CancelToken>>,
    ) -> PyResult<pull::PyBlobReport> {
        let reference = pull::parse_reference(reference)?;
        let digest = pull::parse_digest(digest)?;
        let options = pull::fetch_options(connections, chunk_size)?;
        let puller = self.puller(
            insecure_registries,
            ca_certificates,
            stall_timeout_s,
            max_attempts,
        )?;
        pull::run_blocking(py, cancel, async move {
            let counters = Arc::new(Progress::default());
            let work = puller.pull_blob(&reference, &digest, size, &options, &counters);
            let report = pull::with_progress(Arc::clone(&counters), progress, work)
                .await
                .map_err(errors::pull_to_py_err)?;
            Ok(pull::PyBlobReport::from(report))
        })
    }

    /// Unpacks an image (a tag or a manifest digest) into `target`; returns an `UnpackReport`.
    /// From an index it selects `platform` (`os/arch[/variant]`, default: this host).
    #[pyo3(signature = (reference, target, *, flatten=false, platform=None))]
    fn unpack(
        &self,
        py: Python<'_>,
        reference: &str,
        target: PathBuf,
        flatten: bool,
        platform: Option<&str>,
    ) -> PyResult<PyUnpackReport> {
        let platform = platform
            .map(Platform::parse)
            .transpose()
            .map_err(errors::pull_to_py_err)?;
        let options = UnpackOptions { flatten, platform };
        let report = py
            .detach(|| layerstore::unpack::unpack(&self.store, reference, &target, &options))
            .map_err(errors::unpack_to_py_err)?;
        Ok(report.into())
    }

    /// Pulls an image and unpacks it into `target`, extracting each layer while its blob
    /// downloads; blocks until it ends and returns `(PullReport, UnpackReport)`.
    #[pyo3(signature = (
        reference, target, *, flatten=false, platform=None, connections=16,
        chunk_size=16777216, tag=None, insecure_registries=Vec::new(),
        ca_certificates=Vec::new(), stall_timeout_s=30.0, max_attempts=5, progress=None
    , cancel=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(name = "_pull_and_unpack")]
    fn pull_and_unpack<'py>(
        &self,
        py: Python<'py>,
        reference: &str,
        target: PathBuf,
        flatten: bool,
        platform: Option<&str>,
        connections: usize,
        chunk_size: u64,
        tag: Option<String>,
        insecure_registries: Vec<String>,
        ca_certificates: Vec<PathBuf>,
        stall_timeout_s: f64,
        max_attempts: u32,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, pull::CancelToken>>,
    ) -> PyResult<(pull::PyPullReport, PyUnpackReport)> {
        let reference = pull::parse_reference(reference)?;
        let options = pull::pull_options(platform, connections, chunk_size, tag)?;
        let puller = self.puller(
            insecure_registries,
            ca_certificates,
            stall_timeout_s,
            max_attempts,
        )?;
        let unpack_options = UnpackOptions {
            flatten,
            ..UnpackOptions::default()
        };
        pull::run_blocking(py, cancel, async move {
            let counters = Arc::new(Progress::default());
            let work = layerstore::unpack::pull::pull_and_unpack(
                &puller,
                &reference,
                &options,
                &target,
                &unpack_options,
                &counters,
            );
            let (pulled, unpacked) = pull::with_progress(Arc::clone(&counters), progress, work)
                .await
                .map_err(errors::pull_unpack_to_py_err)?;
            Ok((
                pull::PyPullReport::from(pulled),
                PyUnpackReport::from(unpacked),
            ))
        })
    }

    fn __repr__(&self) -> String {
        format!("LayerStore({:?})", self.store.root().display().to_string())
    }
}

impl PyLayerStore {
    /// The cached puller for these client settings (see `pull::PullerCache`).
    fn puller(
        &self,
        insecure_registries: Vec<String>,
        ca_certificates: Vec<PathBuf>,
        stall_timeout_s: f64,
        max_attempts: u32,
    ) -> PyResult<layerstore::fetch::Puller> {
        let key = client_key(
            insecure_registries,
            ca_certificates,
            stall_timeout_s,
            max_attempts,
        )?;
        self.pullers
            .get(&self.store, key)
            .map_err(errors::pull_to_py_err)
    }
}

fn client_key(
    insecure_registries: Vec<String>,
    ca_certificates: Vec<PathBuf>,
    stall_timeout_s: f64,
    max_attempts: u32,
) -> PyResult<pull::ClientKey> {
    if max_attempts == 0 {
        return Err(PyValueError::new_err("max_attempts must be at least 1"));
    }
    let stall_timeout = seconds(stall_timeout_s, "stall_timeout_s")?;
    if stall_timeout.is_zero() {
        return Err(PyValueError::new_err(
            "stall_timeout_s must be more than 0 seconds",
        ));
    }
    Ok(pull::ClientKey {
        insecure_registries,
        ca_certificates,
        stall_timeout,
        max_attempts,
    })
}

/// Parses and normalizes a digest string, raising `InvalidDigestError` when it is invalid.
#[pyfunction]
fn parse_digest_string(text: &str) -> PyResult<String> {
    Ok(parse_digest(text)?.to_string())
}

/// Parses an image reference, raising `InvalidReferenceError` when it is invalid, and returns
/// it in full form: `registry/repository[:tag][@digest]`.
#[pyfunction]
fn parse_reference_string(text: &str) -> PyResult<String> {
    Ok(pull::parse_reference(text)?.to_string())
}

/// Parses an `os/architecture[/variant]` platform, raising `InvalidReferenceError` when it is
/// invalid.
#[pyfunction]
fn parse_platform_string(text: &str) -> PyResult<String> {
    let platform = layerstore::registry::platform::Platform::parse(text)
        .map_err(crate::errors::pull_to_py_err)?;
    Ok(platform.to_string())
}

/// Checks a tag of the store, raising `InvalidTagError` when it is invalid.
#[pyfunction]
fn parse_tag_string(text: &str) -> PyResult<String> {
    layerstore::store::index::validate_tag(text).map_err(errors::to_py_err)?;
    Ok(text.to_owned())
}

/// Parses an HTTP or HTTPS URL, raising `InvalidReferenceError` when it is invalid.
#[pyfunction]
fn parse_url_string(text: &str) -> PyResult<String> {
    Ok(pull::parse_url(text)?.to_string())
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyLayerStore>()?;
    module.add_class::<PyBlobInfo>()?;
    module.add_class::<PyDescriptor>()?;
    module.add_class::<PyProblem>()?;
    module.add_class::<PyVerifyReport>()?;
    module.add_class::<PyGcReport>()?;
    module.add_class::<PyUsage>()?;
    module.add_class::<PyImportReport>()?;
    module.add_class::<pull::PyPullReport>()?;
    module.add_class::<pull::PyBlobReport>()?;
    module.add_class::<pull::PyPullProgress>()?;
    module.add_class::<pull::CancelToken>()?;
    module.add_class::<pull::PyManifestReport>()?;
    module.add_class::<PyLayerReport>()?;
    module.add_class::<PyUnpackReport>()?;
    module.add_function(wrap_pyfunction!(parse_digest_string, module)?)?;
    module.add_function(wrap_pyfunction!(parse_reference_string, module)?)?;
    module.add_function(wrap_pyfunction!(parse_platform_string, module)?)?;
    module.add_function(wrap_pyfunction!(parse_tag_string, module)?)?;
    module.add_function(wrap_pyfunction!(parse_url_string, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add(
        "DEFAULT_CONNECTIONS",
        layerstore::fetch::chunked::DEFAULT_CONNECTIONS,
    )?;
    Ok(())
}
