//! Errors of unpacking layers into a directory.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::StoreError;

/// Failures of [`crate::unpack`]. Every variant names the layer and, where there is one, the
/// tar entry that failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("rejected entry {entry:?} of layer {layer}: {reason}")]
    UnsafeEntry {
        layer: Digest,
        entry: String,
        reason: String,
    },

    #[error("invalid layer {layer}: {reason}")]
    InvalidLayer {
        layer: Digest,
        reason: String,
        #[source]
        source: Option<io::Error>,
    },

    #[error(
        "layer {layer} has media type {media_type:?} but its first bytes are {detected}; \
         the manifest and the blob disagree"
    )]
    CompressionMismatch {
        layer: Digest,
        media_type: String,
        detected: &'static str,
    },

    #[error("layer {layer} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { layer: Digest, media_type: String },

    #[error("layer {layer} unpacks to {actual}, but the image config expects diff_id {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },

    #[error("invalid image {image}: {reason}")]
    InvalidImage { image: String, reason: String },

    #[error("target {path} {reason}; choose an empty directory or remove it")]
    TargetInUse { path: PathBuf, reason: String },

    #[error("{operation} {path} failed")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> UnpackError {
        let path = path.into();
        move |source| UnpackError::Io {
            operation,
            path,
            source,
        }
    }
}

pub type UnpackResult<T> = std::result::Result<T, UnpackError>;
