//! Errors of registry access and pulls.

use std::time::Duration;

use crate::digest::Digest;
use crate::error::StoreError;

/// The OCI distribution error envelope: `{"errors":[{"code":..,"message":..,"detail":..}]}`,
/// reduced to its first entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorEnvelope {
    pub code: String,
    pub message: String,
}

impl ErrorEnvelope {
    /// Decodes the first error of an envelope; returns `None` for any other body.
    pub fn decode(body: &[u8]) -> Option<ErrorEnvelope> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let first = value.get("errors")?.as_array()?.first()?;
        Some(ErrorEnvelope {
            code: first
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_owned(),
            message: first
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// What an HTTP request was about, for error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub method: &'static str,
    /// The URL without credentials or query string (presigned URLs carry secrets there).
    pub url: String,
    pub registry: String,
    pub repository: String,
    pub digest: Option<Digest>,
}

impl std::fmt::Display for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.url)?;
        if !self.repository.is_empty() {
            write!(
                f,
                " (registry {}, repository {}",
                self.registry, self.repository
            )?;
            if let Some(digest) = &self.digest {
                write!(f, ", blob {digest}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Failures of pulls and fetches.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: String },

    #[error("{context} failed with HTTP {status}{}", envelope_suffix(.envelope))]
    Status {
        context: Box<RequestContext>,
        status: u16,
        envelope: Option<ErrorEnvelope>,
    },

    #[error("{context}: authentication failed with HTTP {status}{}; check the credentials for this registry", envelope_suffix(.envelope))]
    Unauthorized {
        context: Box<RequestContext>,
        status: u16,
        envelope: Option<ErrorEnvelope>,
    },

    #[error("{context}: not found{}", envelope_suffix(.envelope))]
    NotFound {
        context: Box<RequestContext>,
        envelope: Option<ErrorEnvelope>,
    },

    #[error("{context} failed")]
    Transport {
        context: Box<RequestContext>,
        #[source]
        source: reqwest::Error,
    },

    #[error("{context}: no bytes for {} s; the connection stalled", .timeout.as_secs_f64())]
    Stalled {
        context: Box<RequestContext>,
        timeout: Duration,
    },

    #[error("{context}: server broke the protocol: {reason}")]
    Protocol {
        context: Box<RequestContext>,
        reason: String,
    },

    #[error("gave up after {attempts} attempts")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: Box<PullError>,
    },

    #[error("invalid manifest {what}: {reason}")]
    InvalidManifest { what: String, reason: String },

    #[error("unsupported manifest media type {media_type:?} for {reference}")]
    UnsupportedMediaType {
        media_type: String,
        reference: String,
    },

    #[error("no manifest for platform {platform} in {reference}; available: {available}")]
    PlatformNotFound {
        platform: String,
        reference: String,
        available: String,
    },

    #[error("invalid credentials configuration: {reason}")]
    InvalidCredentials { reason: String },

    #[error(transparent)]
    Store(#[from] StoreError),
}

fn envelope_suffix(envelope: &Option<ErrorEnvelope>) -> String {
    match envelope {
        Some(envelope) if !envelope.code.is_empty() || !envelope.message.is_empty() => {
            format!(": {} {}", envelope.code, envelope.message)
                .trim_end()
                .to_owned()
        }
        _ => String::new(),
    }
}

impl PullError {
    /// True for failures a later attempt may not repeat: transport errors, stalls, truncated
    /// bodies, 408, 429, 500, 502, 503, 504. A digest mismatch is final: the server sent wrong
    /// bytes, and fetching a large blob again from it is unlikely to help.
    pub fn is_retryable(&self) -> bool {
        match self {
            PullError::Transport { .. }
            | PullError::Stalled { .. }
            | PullError::Protocol { .. } => true,
            PullError::Status { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// The HTTP status of a failed request, if the failure has one.
    pub fn status(&self) -> Option<u16> {
        match self {
            PullError::Status { status, .. } | PullError::Unauthorized { status, .. } => {
                Some(*status)
            }
            PullError::NotFound { .. } => Some(404),
            PullError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// Removes user info and the query string from a URL for logs and errors.
pub fn redact_url(url: &url::Url) -> String {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    let had_query = clean.query().is_some();
    clean.set_query(None);
    let mut text = clean.to_string();
    if had_query {
        text.push_str("?<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_decodes_first_error() {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"x"}]}"#;
        let envelope = ErrorEnvelope::decode(body).unwrap();
        assert_eq!(envelope.code, "BLOB_UNKNOWN");
        assert_eq!(envelope.message, "blob unknown to registry");
        assert!(ErrorEnvelope::decode(b"<html>").is_none());
    }

    #[test]
    fn redact_url_hides_credentials_and_query() {
        let url = url::Url::parse("https://user:secret@storage.example/blob?X-Amz-Signature=abc")
            .unwrap();
        let text = redact_url(&url);
        assert!(!text.contains("secret"));
        assert!(!text.contains("abc"));
        assert_eq!(text, "https://storage.example/blob?<redacted>");
    }

    #[test]
    fn retryable_statuses() {
        let status = |status| PullError::Status {
            context: Box::default(),
            status,
            envelope: None,
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 403, 405, 416] {
            assert!(!status(code).is_retryable(), "{code}");
        }
    }
}
