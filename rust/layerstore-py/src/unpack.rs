//! Unpack results returned to Python. Plain frozen records: conversions only, no logic.

use std::path::PathBuf;

use layerstore::unpack::{LayerReport, Mode, UnpackReport};
use pyo3::prelude::*;

#[pyclass(module = "warmstart._native", name = "LayerReport", frozen, get_all)]
#[derive(Clone)]
pub struct PyLayerReport {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    pub reused: bool,
    pub seconds: f64,
}

#[pymethods]
impl PyLayerReport {
    fn __repr__(&self) -> String {
        format!(
            "LayerReport(digest={:?}, uncompressed_bytes={}, entries={}, reused={})",
            self.digest,
            self.uncompressed_bytes,
            self.entries,
            if self.reused { "True" } else { "False" }
        )
    }
}

impl From<LayerReport> for PyLayerReport {
    fn from(report: LayerReport) -> PyLayerReport {
        PyLayerReport {
            digest: report.digest.to_string(),
            diff_id: report.diff_id.to_string(),
            media_type: report.media_type,
            compressed_bytes: report.compressed_bytes,
            uncompressed_bytes: report.uncompressed_bytes,
            entries: report.entries,
            reused: report.reused,
            seconds: report.seconds,
        }
    }
}

#[pyclass(module = "warmstart._native", name = "UnpackReport", frozen, get_all)]
#[derive(Clone)]
pub struct PyUnpackReport {
    pub target: PathBuf,
    pub manifest_digest: String,
    /// `"overlay"` or `"flatten"`.
    pub layout: String,
    /// The `rootfs` directory (flatten) or the `lowerdir` file (overlay).
    pub result: PathBuf,
    pub layers: Vec<PyLayerReport>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

#[pymethods]
impl PyUnpackReport {
    fn __repr__(&self) -> String {
        format!(
            "UnpackReport(target={:?}, layout={:?}, layers={}, seconds={:.3})",
            self.target.display().to_string(),
            self.layout,
            self.layers.len(),
            self.seconds
        )
    }
}

impl From<UnpackReport> for PyUnpackReport {
    fn from(report: UnpackReport) -> PyUnpackReport {
        PyUnpackReport {
            target: report.target,
            manifest_digest: report.manifest_digest.to_string(),
            layout: match report.mode {
                Mode::Overlay => "overlay".into(),
                Mode::Flatten => "flatten".into(),
            },
            result: report.result,
            layers: report.layers.into_iter().map(PyLayerReport::from).collect(),
            warnings: report.warnings,
            seconds: report.seconds,
        }
    }
}
