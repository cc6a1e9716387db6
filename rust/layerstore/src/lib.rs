//! A content-addressed, crash-safe store for OCI blobs.
//!
//! The on-disk format is an [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
//! (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) so standard tools read it directly, plus
//! `ingest/` for partial writes and lock files, and `quarantine/` for blobs that failed
//! verification.
//!
//! Invariant: a file under `blobs/` is complete and its digest verified. A blob gets there only
//! by write → fsync → size check → digest check → rename → directory fsync, see [`store::ingest`].

pub mod archive;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{DigestParseError, Result, StoreError};
pub use manifest::Descriptor;
pub use store::{
    BlobInfo, Expected, GcOptions, GcReport, Problem, PutOutcome, Store, Usage, VerifyReport,
};
