//! Errors of the layer store. Every variant names the value that failed; causes are attached as
//! sources instead of being repeated in the message.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// A string that is not a valid `<algorithm>:<hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestParseError {
    pub value: String,
    pub reason: &'static str,
}

/// Failures of [`crate::Store`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    InvalidDigest(#[from] DigestParseError),

    #[error("content does not match digest {expected}: got {actual} after {bytes} bytes")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        bytes: u64,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("blob {digest} not found in the store")]
    BlobNotFound { digest: Digest },

    #[error("blob {digest} is in use: {referenced_by} refers to it; untag the image first or delete with force")]
    BlobInUse {
        digest: Digest,
        referenced_by: String,
    },

    #[error("tag {tag:?} not found in index.json")]
    TagNotFound { tag: String },

    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag { tag: String, reason: &'static str },

    #[error("range {offset}+{length} is outside blob {digest} of {size} bytes")]
    RangeOutOfBounds {
        digest: Digest,
        offset: u64,
        length: u64,
        size: u64,
    },

    #[error("invalid image layout at {path}: {reason}")]
    InvalidLayout { path: PathBuf, reason: String },

    #[error("invalid JSON in {what}")]
    InvalidJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("blob {digest} referenced by {referenced_by} is missing from {source_path}")]
    MissingBlob {
        digest: Digest,
        referenced_by: String,
        source_path: PathBuf,
    },

    #[error(
        "image {image} is incomplete: blob {digest} referenced by {referenced_by} is not in the \
         store; pull the image again (for an index, the platform of that manifest) before tagging it"
    )]
    IncompleteImage {
        /// The tag being written, or the root digest for an untagged entry.
        image: String,
        digest: Digest,
        referenced_by: String,
    },

    #[error("{reference} has no manifest for platform {platform}; it lists {available}")]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: String,
    },

    #[error(
        "platform {platform} of {reference} is not in the store: {}; pull that platform first, \
         through the mirror or with `warmstart pull --platform {platform} <image>` (add \
         `--tag <tag>` when the tag is not the image reference), which adds it to the index",
        absence(.manifest, .missing)
    )]
    PlatformNotInStore {
        reference: String,
        platform: String,
        /// The platform's manifest, as the index lists it.
        manifest: Digest,
        /// The first blob of that platform missing: the manifest itself, or one of its blobs.
        missing: Digest,
    },

    #[error(
        "foreign layer {digest} (urls: {urls}) is not included in archive {archive}; \
         warmstart imports foreign layers only when their bytes are in the archive"
    )]
    ForeignLayerMissing {
        digest: Digest,
        urls: String,
        archive: PathBuf,
    },

    #[error("{operation} {path} failed")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Describes what of a platform is missing, for [`StoreError::PlatformNotInStore`].
fn absence(manifest: &Digest, missing: &Digest) -> String {
    if manifest == missing {
        format!("the index lists manifest {manifest}, which was never pulled")
    } else {
        format!("its manifest {manifest} is there, but blob {missing} is missing")
    }
}

impl StoreError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            operation,
            path,
            source,
        }
    }

    /// True when the content itself was wrong (as opposed to I/O or lookup failures), so a retry
    /// from another source may succeed.
    pub fn is_content_error(&self) -> bool {
        matches!(
            self,
            StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
