//! The one place Rust errors become Python exceptions.
//!
//! The exception classes are defined in `warmstart/errors.py` (so they can inherit stdlib
//! categories and carry docstrings) and looked up here by name. The match is exhaustive: a new
//! `StoreError` variant does not compile until it has a Python class.

use std::error::Error as _;

use layerstore::StoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Formats an error with its chain of causes, `outer: inner: innermost`.
fn message_with_causes(error: &StoreError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Converts a store error into an instance of its `warmstart.errors` class, with the failing
/// values attached as attributes.
pub fn to_py_err(error: StoreError) -> PyErr {
    Python::attach(|py| match build(py, &error) {
        Ok(exception) => exception,
        Err(lookup_failure) => lookup_failure,
    })
}

fn build(py: Python<'_>, error: &StoreError) -> PyResult<PyErr> {
    let message = message_with_causes(error);
    let attributes = PyDict::new(py);
    let class_name = match error {
        StoreError::InvalidDigest(inner) => {
            attributes.set_item("value", &inner.value)?;
            "InvalidDigestError"
        }
        StoreError::DigestMismatch {
            expected,
            actual,
            bytes,
        } => {
            attributes.set_item("expected", expected.to_string())?;
            attributes.set_item("actual", actual.to_string())?;
            attributes.set_item("bytes_read", bytes)?;
            "DigestMismatchError"
        }
        StoreError::SizeMismatch {
            expected, actual, ..
        } => {
            attributes.set_item("expected", expected)?;
            attributes.set_item("actual", actual)?;
            "SizeMismatchError"
        }
        StoreError::BlobNotFound { digest } => {
            attributes.set_item("digest", digest.to_string())?;
            "BlobNotFoundError"
        }
        StoreError::BlobInUse {
            digest,
            referenced_by,
        } => {
            attributes.set_item("digest", digest.to_string())?;
            attributes.set_item("referenced_by", referenced_by)?;
            "BlobInUseError"
        }
        StoreError::TagNotFound { tag } => {
            attributes.set_item("tag", tag)?;
            "TagNotFoundError"
        }
        StoreError::InvalidTag { tag, .. } => {
            attributes.set_item("tag", tag)?;
            "InvalidTagError"
        }
        StoreError::RangeOutOfBounds { digest, .. } => {
            attributes.set_item("digest", digest.to_string())?;
            "InvalidRangeError"
        }
        StoreError::InvalidLayout { path, .. } => {
            attributes.set_item("path", path)?;
            "InvalidLayoutError"
        }
        StoreError::InvalidJson { .. } => "InvalidLayoutError",
        StoreError::MissingBlob { digest, .. } => {
            attributes.set_item("digest", digest.to_string())?;
            "MissingBlobError"
        }
        StoreError::ForeignLayerMissing { digest, .. } => {
            attributes.set_item("digest", digest.to_string())?;
            "ForeignLayerError"
        }
        StoreError::Io { path, source, .. } => {
            let class = py.import("warmstart.errors")?.getattr("StoreIOError")?;
            let errno = source.raw_os_error();
            let exception = class.call1((errno, message, path))?;
            return Ok(PyErr::from_value(exception));
        }
    };
    let class = py.import("warmstart.errors")?.getattr(class_name)?;
    let exception = class.call1((message,))?;
    for (key, value) in attributes.iter() {
        exception.setattr(key.extract::<String>()?.as_str(), value)?;
    }
    Ok(PyErr::from_value(exception))
}
