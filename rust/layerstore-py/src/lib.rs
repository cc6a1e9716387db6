//! Python bindings for the `layerstore` crate, importable as `warmstart._native`.
//!
//! Conversions and wrappers only: every operation calls the core crate with the GIL released,
//! so Python threads run while a blob is hashed or written.

mod errors;
mod stream;
mod types;

use std::path::PathBuf;
use std::time::Duration;

use layerstore::store::GcOptions;
use layerstore::{Digest, Expected, Store};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py_err;
use crate::stream::PyReader;
use crate::types::{
    PyBlobInfo, PyDescriptor, PyGcReport, PyImportReport, PyProblem, PyUsage, PyVerifyReport,
};

fn parse_digest(text: &str) -> PyResult<Digest> {
    Digest::parse(text).map_err(|error| to_py_err(error.into()))
}

fn expected(digest: Option<&str>, size: Option<u64>) -> PyResult<Expected> {
    Ok(Expected {
        digest: digest.map(parse_digest).transpose()?,
        size,
    })
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {value}"
        ))
    })
}

/// The native layer store; `warmstart.LayerStore` subclasses it.
#[pyclass(module = "warmstart._native", name = "LayerStore", subclass, frozen)]
struct PyLayerStore {
    store: Store,
}

#[pymethods]
impl PyLayerStore {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<PyLayerStore> {
        let store = py.detach(|| Store::open(path)).map_err(to_py_err)?;
        Ok(PyLayerStore { store })
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
        size: Option<u64>,
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
        size: Option<u64>,
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
        size: Option<u64>,
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
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Vec<u8>> {
        let digest = parse_digest(digest)?;
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

    fn __repr__(&self) -> String {
        format!("LayerStore({:?})", self.store.root().display().to_string())
    }
}

/// Parses and normalizes a digest string, raising `InvalidDigestError` when it is invalid.
#[pyfunction]
fn parse_digest_string(text: &str) -> PyResult<String> {
    Ok(parse_digest(text)?.to_string())
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
    module.add_function(wrap_pyfunction!(parse_digest_string, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
