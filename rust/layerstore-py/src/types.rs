//! Result types returned to Python. Plain frozen records: conversions only, no logic.

use layerstore::store::{BlobInfo, GcReport, Problem, PutOutcome, Usage, VerifyReport};
use layerstore::{layout::ImportReport, Descriptor};
use pyo3::prelude::*;

#[pyclass(module = "warmstart._native", name = "BlobInfo", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyBlobInfo {
    pub digest: String,
    pub size: u64,
    pub created: bool,
}

#[pymethods]
impl PyBlobInfo {
    fn __repr__(&self) -> String {
        format!(
            "BlobInfo(digest={:?}, size={}, created={})",
            self.digest,
            self.size,
            if self.created { "True" } else { "False" }
        )
    }
}

impl From<PutOutcome> for PyBlobInfo {
    fn from(outcome: PutOutcome) -> PyBlobInfo {
        PyBlobInfo {
            digest: outcome.digest.to_string(),
            size: outcome.size,
            created: outcome.created,
        }
    }
}

impl From<BlobInfo> for PyBlobInfo {
    fn from(info: BlobInfo) -> PyBlobInfo {
        PyBlobInfo {
            digest: info.digest.to_string(),
            size: info.size,
            created: false,
        }
    }
}

#[pyclass(module = "warmstart._native", name = "Descriptor", frozen, get_all)]
#[derive(Clone)]
pub struct PyDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub tag: Option<String>,
    /// The descriptor as OCI JSON, with every field it carries.
    pub json: String,
}

#[pymethods]
impl PyDescriptor {
    fn __repr__(&self) -> String {
        format!(
            "Descriptor(media_type={:?}, digest={:?}, size={}, tag={:?})",
            self.media_type, self.digest, self.size, self.tag
        )
    }
}

impl From<Descriptor> for PyDescriptor {
    fn from(descriptor: Descriptor) -> PyDescriptor {
        PyDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.to_string(),
            size: descriptor.size,
            tag: descriptor.ref_name().map(str::to_owned),
            json: serde_json::to_string(&descriptor).expect("a descriptor always serializes"),
        }
    }
}

#[pyclass(module = "warmstart._native", name = "Problem", frozen, get_all)]
#[derive(Clone)]
pub struct PyProblem {
    /// One of `digest_mismatch`, `truncated`, `size_mismatch`, `missing`, `invalid_name`,
    /// `invalid_manifest`.
    pub kind: &'static str,
    pub digest: Option<String>,
    pub path: Option<String>,
    pub actual_digest: Option<String>,
    pub expected_size: Option<u64>,
    pub actual_size: Option<u64>,
    pub referenced_by: Option<String>,
    /// Why a manifest is invalid, for `invalid_manifest`.
    pub detail: Option<String>,
}

#[pymethods]
impl PyProblem {
    fn __repr__(&self) -> String {
        format!(
            "Problem(kind={:?}, digest={:?}, path={:?})",
            self.kind, self.digest, self.path
        )
    }
}

impl From<Problem> for PyProblem {
    fn from(problem: Problem) -> PyProblem {
        let mut converted = PyProblem {
            kind: "",
            digest: None,
            path: None,
            actual_digest: None,
            expected_size: None,
            actual_size: None,
            referenced_by: None,
            detail: None,
        };
        match problem {
            Problem::DigestMismatch {
                digest,
                actual,
                size,
            } => {
                converted.kind = "digest_mismatch";
                converted.digest = Some(digest.to_string());
                converted.actual_digest = Some(actual.to_string());
                converted.actual_size = Some(size);
            }
            Problem::Truncated {
                digest,
                expected,
                actual,
            } => {
                converted.kind = "truncated";
                converted.digest = Some(digest.to_string());
                converted.expected_size = Some(expected);
                converted.actual_size = Some(actual);
            }
            Problem::SizeMismatch {
                digest,
                expected,
                actual,
            } => {
                converted.kind = "size_mismatch";
                converted.digest = Some(digest.to_string());
                converted.expected_size = Some(expected);
                converted.actual_size = Some(actual);
            }
            Problem::Missing {
                digest,
                referenced_by,
            } => {
                converted.kind = "missing";
                converted.digest = Some(digest.to_string());
                converted.referenced_by = Some(referenced_by);
            }
            Problem::InvalidManifest { digest, reason } => {
                converted.kind = "invalid_manifest";
                converted.digest = Some(digest.to_string());
                converted.detail = Some(reason);
            }
            Problem::InvalidName { path } => {
                converted.kind = "invalid_name";
                converted.path = Some(path.display().to_string());
            }
        }
        converted
    }
}

#[pyclass(module = "warmstart._native", name = "VerifyReport", frozen, get_all)]
pub struct PyVerifyReport {
    pub checked_blobs: u64,
    pub checked_bytes: u64,
    pub problems: Vec<PyProblem>,
    pub quarantined: Vec<String>,
}

#[pymethods]
impl PyVerifyReport {
    #[getter]
    fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn __repr__(&self) -> String {
        format!(
            "VerifyReport(checked_blobs={}, checked_bytes={}, problems={}, quarantined={})",
            self.checked_blobs,
            self.checked_bytes,
            self.problems.len(),
            self.quarantined.len()
        )
    }
}

impl From<VerifyReport> for PyVerifyReport {
    fn from(report: VerifyReport) -> PyVerifyReport {
        PyVerifyReport {
            checked_blobs: report.checked_blobs,
            checked_bytes: report.checked_bytes,
            problems: report.problems.into_iter().map(PyProblem::from).collect(),
            quarantined: report
                .quarantined
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }
}

#[pyclass(module = "warmstart._native", name = "GcReport", frozen, get_all)]
pub struct PyGcReport {
    pub removed_blobs: Vec<PyBlobInfo>,
    pub removed_blob_bytes: u64,
    pub removed_ingest_files: Vec<String>,
    pub removed_ingest_bytes: u64,
    pub kept_blobs: u64,
    pub kept_blob_bytes: u64,
}

#[pymethods]
impl PyGcReport {
    fn __repr__(&self) -> String {
        format!(
            "GcReport(removed_blobs={}, removed_blob_bytes={}, kept_blobs={})",
            self.removed_blobs.len(),
            self.removed_blob_bytes,
            self.kept_blobs
        )
    }
}

impl From<GcReport> for PyGcReport {
    fn from(report: GcReport) -> PyGcReport {
        PyGcReport {
            removed_blobs: report
                .removed_blobs
                .into_iter()
                .map(PyBlobInfo::from)
                .collect(),
            removed_blob_bytes: report.removed_blob_bytes,
            removed_ingest_files: report
                .removed_ingest_files
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            removed_ingest_bytes: report.removed_ingest_bytes,
            kept_blobs: report.kept_blobs,
            kept_blob_bytes: report.kept_blob_bytes,
        }
    }
}

#[pyclass(module = "warmstart._native", name = "Usage", frozen, get_all)]
pub struct PyUsage {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub ingest_files: u64,
    pub ingest_bytes: u64,
    pub quarantine_files: u64,
    pub quarantine_bytes: u64,
}

impl From<Usage> for PyUsage {
    fn from(usage: Usage) -> PyUsage {
        PyUsage {
            blobs: usage.blobs,
            blob_bytes: usage.blob_bytes,
            ingest_files: usage.ingest_files,
            ingest_bytes: usage.ingest_bytes,
            quarantine_files: usage.quarantine_files,
            quarantine_bytes: usage.quarantine_bytes,
        }
    }
}

#[pyclass(module = "warmstart._native", name = "ImportReport", frozen, get_all)]
pub struct PyImportReport {
    pub images: Vec<PyDescriptor>,
    pub blobs_added: u64,
    pub bytes_added: u64,
    pub blobs_present: u64,
}

impl From<ImportReport> for PyImportReport {
    fn from(report: ImportReport) -> PyImportReport {
        PyImportReport {
            images: report.images.into_iter().map(PyDescriptor::from).collect(),
            blobs_added: report.blobs_added,
            bytes_added: report.bytes_added,
            blobs_present: report.blobs_present,
        }
    }
}
