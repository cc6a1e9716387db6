//! The one place Rust errors become Python exceptions.
//!
//! The exception classes are defined in `warmstart/errors.py` (so they can inherit stdlib
//! categories and carry docstrings) and looked up here by name. The match is exhaustive: a new
//! `StoreError` variant does not compile until it has a Python class.

use layerstore::registry::error::PullError;
use layerstore::unpack::pull::PullUnpackError;
use layerstore::unpack::UnpackError;
use layerstore::StoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Formats an error with its chain of causes, `outer: inner: innermost`.
fn message_with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Formats an I/O failure as `<operation> <path> failed: <reason>`, without the
/// `(os error N)` suffix Rust adds (Python shows the errno itself) and with a hint for the
/// common causes.
fn io_message(operation: &str, path: &std::path::Path, source: &std::io::Error) -> String {
    let reason = source.to_string();
    let reason = match reason.find(" (os error ") {
        Some(position) => reason[..position].to_owned(),
        None => reason,
    };
    let hint = match source.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; check the permissions of this path and of its parent directories"
        }
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            "; the path must be a directory or not exist"
        }
        std::io::ErrorKind::StorageFull => "; free disk space on that file system",
        _ => "",
    };
    format!("{operation} {} failed: {reason}{hint}", path.display())
}

/// Builds an exception with the GIL held; a failure to build it (the class cannot be imported)
/// is raised in its place.
fn with_gil_exception(build: impl FnOnce(Python<'_>) -> PyResult<PyErr>) -> PyErr {
    Python::attach(|py| build(py).unwrap_or_else(|failure| failure))
}

/// Converts a store error into an instance of its `warmstart.errors` class, with the failing
/// values attached as attributes.
pub fn to_py_err(error: StoreError) -> PyErr {
    with_gil_exception(|py| build(py, &error))
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
        StoreError::IncompleteImage {
            digest,
            referenced_by,
            ..
        } => {
            attributes.set_item("digest", digest.to_string())?;
            attributes.set_item("referenced_by", referenced_by)?;
            "MissingBlobError"
        }
        StoreError::PlatformNotFound { .. } => {
            // The class a pull raises for the same failure. No request was made, so no status.
            attributes.set_item("status", py.None())?;
            "PlatformNotFoundError"
        }
        StoreError::PlatformNotInStore {
            reference,
            platform,
            manifest,
            missing,
        } => {
            attributes.set_item("reference", reference)?;
            attributes.set_item("platform", platform)?;
            attributes.set_item("manifest", manifest.to_string())?;
            attributes.set_item("digest", missing.to_string())?;
            "PlatformNotInStoreError"
        }
        StoreError::ForeignLayerMissing { digest, .. } => {
            attributes.set_item("digest", digest.to_string())?;
            "ForeignLayerError"
        }
        StoreError::Io {
            operation,
            path,
            source,
        } => {
            let class = py.import("warmstart.errors")?.getattr("StoreIOError")?;
            let message = io_message(operation, path, source);
            let exception = match source.raw_os_error() {
                Some(errno) => class.call1((errno, message))?,
                None => class.call1((message,))?,
            };
            exception.setattr("filename", path)?;
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

/// Converts a pull error into an instance of its `warmstart.errors` class. Errors that wrap a
/// store error become that store error's class; retries that ran out take the class of their
/// last failure, with the attempt count in the message.
pub fn pull_to_py_err(error: PullError) -> PyErr {
    with_gil_exception(|py| build_pull(py, &error))
}

fn build_pull(py: Python<'_>, error: &PullError) -> PyResult<PyErr> {
    let (class_name, context, status) = classify_pull(error);
    let class_name = match class_name {
        Some(name) => name,
        None => {
            // A store failure inside a pull (digest mismatch, I/O): keep its own class.
            let inner = innermost_store_error(error).expect("only store errors have no class");
            let converted = build(py, inner)?;
            let value = converted.value(py);
            value.setattr("args", (message_with_causes(error),))?;
            return Ok(converted);
        }
    };
    let class = py.import("warmstart.errors")?.getattr(class_name)?;
    let exception = class.call1((message_with_causes(error),))?;
    exception.setattr("status", status)?;
    if let Some(context) = context {
        exception.setattr("url", &context.url)?;
        exception.setattr("registry", &context.registry)?;
        exception.setattr("repository", &context.repository)?;
        exception.setattr("digest", context.digest.as_ref().map(ToString::to_string))?;
    }
    Ok(PyErr::from_value(exception))
}

fn innermost_store_error(error: &PullError) -> Option<&StoreError> {
    match error {
        PullError::Store(inner) => Some(inner),
        PullError::RetriesExhausted { last, .. } => innermost_store_error(last),
        _ => None,
    }
}

type Classified<'e> = (
    Option<&'static str>,
    Option<&'e layerstore::registry::error::RequestContext>,
    Option<u16>,
);

fn classify_pull(error: &PullError) -> Classified<'_> {
    match error {
        PullError::InvalidReference { .. }
        | PullError::InvalidUrl { .. }
        | PullError::InvalidPlatform { .. } => (Some("InvalidReferenceError"), None, None),
        PullError::Status {
            context, status, ..
        } => (Some("RegistryError"), Some(context), Some(*status)),
        PullError::Unauthorized {
            context, status, ..
        } => (Some("RegistryAuthError"), Some(context), Some(*status)),
        PullError::NotFound { context, .. } => {
            (Some("RegistryNotFoundError"), Some(context), Some(404))
        }
        PullError::Transport { context, .. } => {
            (Some("RegistryConnectionError"), Some(context), None)
        }
        PullError::Stalled { context, .. } => (Some("RegistryTimeoutError"), Some(context), None),
        PullError::Protocol { context, .. } => (Some("RegistryProtocolError"), Some(context), None),
        PullError::RetriesExhausted { last, .. } => classify_pull(last),
        PullError::InvalidManifest { .. } | PullError::UnsupportedMediaType { .. } => {
            (Some("RegistryProtocolError"), None, None)
        }
        PullError::PlatformNotFound { .. } => (Some("PlatformNotFoundError"), None, None),
        PullError::InvalidCredentials { .. } => (Some("RegistryAuthError"), None, None),
        PullError::Store(_) => (None, None, None),
    }
}

/// Converts an unpack error into an instance of its `warmstart.errors` class. A store failure
/// inside an unpack keeps its store class.
pub fn unpack_to_py_err(error: UnpackError) -> PyErr {
    with_gil_exception(|py| build_unpack(py, &error))
}

fn build_unpack(py: Python<'_>, error: &UnpackError) -> PyResult<PyErr> {
    let message = message_with_causes(error);
    let attributes = PyDict::new(py);
    let class_name = match error {
        UnpackError::Store(inner) => {
            let converted = build(py, inner)?;
            converted.value(py).setattr("args", (message,))?;
            return Ok(converted);
        }
        UnpackError::UnsafeEntry {
            layer,
            entry,
            reason,
        } => {
            attributes.set_item("layer", layer.to_string())?;
            attributes.set_item("entry", entry)?;
            attributes.set_item("reason", reason)?;
            "UnsafeEntryError"
        }
        UnpackError::InvalidLayer { layer, .. }
        | UnpackError::CompressionMismatch { layer, .. }
        | UnpackError::UnsupportedMediaType { layer, .. } => {
            attributes.set_item("layer", layer.to_string())?;
            "InvalidLayerError"
        }
        UnpackError::DiffIdMismatch {
            layer,
            expected,
            actual,
        } => {
            attributes.set_item("layer", layer.to_string())?;
            attributes.set_item("expected", expected.to_string())?;
            attributes.set_item("actual", actual.to_string())?;
            "DiffIdMismatchError"
        }
        UnpackError::InvalidImage { image, .. } => {
            attributes.set_item("image", image)?;
            "InvalidImageError"
        }
        UnpackError::TargetInUse { path, .. } => {
            let class = py
                .import("warmstart.errors")?
                .getattr("UnpackTargetError")?;
            let exception = class.call1((EEXIST, message, path))?;
            return Ok(PyErr::from_value(exception));
        }
        UnpackError::Io {
            operation,
            path,
            source,
        } => {
            let class = py.import("warmstart.errors")?.getattr("UnpackIOError")?;
            let message = io_message(operation, path, source);
            let exception = class.call1((source.raw_os_error(), message, path))?;
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

/// `EEXIST` on Linux and macOS, the errno `FileExistsError` stands for.
const EEXIST: i32 = 17;

/// Converts a failure of a pull with overlapped unpack.
pub fn pull_unpack_to_py_err(error: PullUnpackError) -> PyErr {
    match error {
        PullUnpackError::Pull(inner) => pull_to_py_err(inner),
        PullUnpackError::Unpack(inner) => unpack_to_py_err(inner),
    }
}
