//! An OCI Distribution client: manifests and blobs over HTTP(S), with the Docker token flow,
//! manual redirects that never carry the registry's credentials to another host, and retries
//! that honour `Retry-After`.

pub mod auth;
pub mod error;
pub mod platform;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::digest::Digest;
use crate::manifest::{self, MAX_MANIFEST_SIZE};
use crate::reference::Reference;
use auth::{Challenge, CredentialStore};
use error::{redact_url, ErrorEnvelope, PullError, RequestContext};

/// Media types accepted for manifests, in order of preference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.artifact.manifest.v1+json";

/// Largest error body read; the rest is dropped unread.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Maximum wait a `Retry-After` header can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Settings of a [`RegistryClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// PEM files of extra certificate authorities, trusted besides the system's.
    pub ca_certificates: Vec<PathBuf>,
    pub credentials: CredentialStore,
    pub connect_timeout: Duration,
    /// A request that receives no byte for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First retry delay; later ones double, with full jitter, up to 10 s.
    pub retry_base_delay: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            insecure_registries: Vec::new(),
            ca_certificates: Vec::new(),
            credentials: CredentialStore::default(),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_attempts: 5,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

/// A manifest or index fetched from a registry, verified against its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// The destination of a request: a registry repository (for credentials and errors) or a plain URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// `None` for plain URLs, which get no registry credentials.
    pub reference: Option<Reference>,
    pub digest: Option<Digest>,
}

/// A client for one or more registries. Cheap to share behind an `Arc`; tokens are cached per
/// registry and repository and reused by every request of every pull.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    options: ClientOptions,
    /// `Authorization` header values by `registry/repository`.
    tokens: Mutex<HashMap<String, String>>,
    /// The scheme each loopback registry responded to, by host.
    schemes: Mutex<HashMap<String, &'static str>>,
}

impl RegistryClient {
    pub fn new(options: ClientOptions) -> Result<RegistryClient, PullError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("warmstart/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true);
        for path in &options.ca_certificates {
            let pem = std::fs::read(path).map_err(|error| PullError::InvalidCredentials {
                reason: format!("cannot read CA certificate {}: {error}", path.display()),
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|error| {
                PullError::InvalidCredentials {
                    reason: format!("invalid PEM certificate {}: {error}", path.display()),
                }
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|error| PullError::InvalidCredentials {
                reason: format!("cannot build the HTTP client: {error}"),
            })?;
        Ok(RegistryClient {
            http,
            options,
            tokens: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Returns the registry's base URL: `http://` for registries marked insecure and `https://`
    /// for the rest. Loopback registries get HTTPS when they speak it and plain HTTP otherwise,
    /// as Docker treats them. The first request to a loopback registry probes
    /// `https://host/v2/` once, and the client keeps the result for its lifetime.
    pub async fn registry_url(&self, reference: &Reference) -> String {
        let host = reference.api_host();
        let marked_insecure = self
            .options
            .insecure_registries
            .iter()
            .any(|registry| registry == reference.registry() || registry == host);
        let scheme = if marked_insecure {
            "http"
        } else if reference.is_loopback() {
            self.loopback_scheme(host).await
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    async fn loopback_scheme(&self, host: &str) -> &'static str {
        if let Some(scheme) = self.schemes.lock().expect("not poisoned").get(host) {
            return scheme;
        }
        let probe = self
            .http
            .get(format!("https://{host}/v2/"))
            .timeout(self.options.connect_timeout)
            .send()
            .await;
        let scheme = match probe {
            Ok(_) => "https",
            // A certificate the client does not trust is a TLS server: keep HTTPS, so the pull
            // fails with that error instead of speaking plain HTTP to it.
            Err(error) if error_chain_mentions(&error, "certificate") => "https",
            Err(_) => "http",
        };
        tracing::debug!(host, scheme, "chose the scheme of a loopback registry");
        self.schemes
            .lock()
            .expect("not poisoned")
            .insert(host.to_owned(), scheme);
        scheme
    }

    /// Fetches a manifest or index by tag or digest and checks its digest: against the
    /// reference's digest, or else against `Docker-Content-Digest` when the registry sends one.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        manifest_reference: &str,
    ) -> Result<FetchedManifest, PullError> {
        let url = self.parse_url(&format!(
            "{}/v2/{}/manifests/{manifest_reference}",
            self.registry_url(reference).await,
            reference.repository()
        ))?;
        let target = Target {
            reference: Some(reference.clone()),
            digest: None,
        };
        let response = self
            .request(&target, Method::GET, &url, None, Some(MANIFEST_ACCEPT))
            .await?;
        let context = self.context(&target, "GET", &url);
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let bytes = read_capped(response, MAX_MANIFEST_SIZE as usize, &context).await?;
        let expected = Digest::parse(manifest_reference).ok().or(header_digest);
        let algorithm = expected
            .as_ref()
            .map_or(crate::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of_bytes(algorithm, &bytes);
        if let Some(expected) = expected {
            if expected != digest {
                return Err(PullError::Store(crate::StoreError::DigestMismatch {
                    expected,
                    actual: digest,
                    bytes: bytes.len() as u64,
                }));
            }
        }
        let media_type = manifest::media_type_of(&bytes)
            .or(content_type)
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Starts a GET of a blob, optionally of the byte range `start..=end`. The response is
    /// returned as soon as its headers arrive; the caller reads and checks the body.
    pub async fn get_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Response, PullError> {
        let url = self.parse_url(&format!(
            "{}/v2/{}/blobs/{digest}",
            self.registry_url(reference).await,
            reference.repository()
        ))?;
        let target = Target {
            reference: Some(reference.clone()),
            digest: Some(digest.clone()),
        };
        self.request(&target, Method::GET, &url, range, None).await
    }

    /// Starts a request to a plain URL (an artifact behind a presigned URL, for example).
    pub async fn get_url(
        &self,
        url: &Url,
        method: Method,
        range: Option<(u64, u64)>,
        digest: &Digest,
    ) -> Result<Response, PullError> {
        let target = Target {
            reference: None,
            digest: Some(digest.clone()),
        };
        self.request(&target, method, url, range, None).await
    }

    fn parse_url(&self, text: &str) -> Result<Url, PullError> {
        Url::parse(text).map_err(|error| PullError::InvalidUrl {
            url: text.to_owned(),
            reason: error.to_string(),
        })
    }

    /// Describes a request for errors, without credentials.
    pub fn context(&self, target: &Target, method: &'static str, url: &Url) -> RequestContext {
        RequestContext {
            method,
            url: redact_url(url),
            registry: target
                .reference
                .as_ref()
                .map(|r| r.registry().to_owned())
                .unwrap_or_default(),
            repository: target
                .reference
                .as_ref()
                .map(|r| r.repository().to_owned())
                .unwrap_or_default(),
            digest: target.digest.clone(),
        }
    }

    /// Sends a request with retries: retryable statuses and transport failures are retried with
    /// backoff (honouring `Retry-After`), a 401 triggers one authentication and a retry.
    pub async fn request(
        &self,
        target: &Target,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
        accept: Option<&str>,
    ) -> Result<Response, PullError> {
        let method_name = method_name(&method);
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            attempt += 1;
            let outcome = self
                .send_following_redirects(target, method.clone(), url, range, accept)
                .await;
            let error = match outcome {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED
                        && target.reference.is_some()
                        && !authenticated =>
                {
                    authenticated = true;
                    attempt -= 1;
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let context = self.context(target, method_name, url);
                    self.authenticate(target, challenge, response, context)
                        .await?;
                    continue;
                }
                Ok(response) => {
                    let retry_after = retry_after(response.headers());
                    let error = self
                        .error_from_response(target, method_name, url, response)
                        .await;
                    (error, retry_after)
                }
                Err(error) => (error, None),
            };
            let (error, retry_after) = error;
            if !error.is_retryable() || attempt >= self.options.max_attempts {
                return Err(if attempt > 1 {
                    PullError::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(error),
                    }
                } else {
                    error
                });
            }
            let delay =
                retry_after.unwrap_or_else(|| backoff(self.options.retry_base_delay, attempt));
            tracing::warn!(error = %error, attempt, delay_s = delay.as_secs_f64(), "retrying request");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_following_redirects(
        &self,
        target: &Target,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
        accept: Option<&str>,
    ) -> Result<Response, PullError> {
        let method_name = method_name(&method);
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.request(method.clone(), current.clone());
            // Registry credentials go only to the registry's own origin, never to a storage
            // host it redirects to.
            if same_origin(&current, url) {
                if let Some(header) = self.cached_authorization(target) {
                    request = request.header(AUTHORIZATION, header);
                }
            }
            if let Some((start, end)) = range {
                request = request.header(RANGE, format!("bytes={start}-{end}"));
            }
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let context = || Box::new(self.context(target, method_name, &current));
            let response =
                match tokio::time::timeout(self.options.stall_timeout, request.send()).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(source)) => {
                        return Err(PullError::Transport {
                            context: context(),
                            source,
                        })
                    }
                    Err(_) => {
                        return Err(PullError::Stalled {
                            context: context(),
                            timeout: self.options.stall_timeout,
                        })
                    }
                };
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| PullError::Protocol {
                    context: context(),
                    reason: format!(
                        "HTTP {} without a Location header",
                        response.status().as_u16()
                    ),
                })?;
            let next = current
                .join(location)
                .map_err(|error| PullError::Protocol {
                    context: context(),
                    reason: format!("invalid redirect Location: {error}"),
                })?;
            tracing::debug!(from = %redact_url(&current), to = %redact_url(&next), "following redirect");
            current = next;
        }
        Err(PullError::Protocol {
            context: Box::new(self.context(target, method_name, url)),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn token_key(target: &Target) -> Option<String> {
        target
            .reference
            .as_ref()
            .map(|reference| format!("{}/{}", reference.registry(), reference.repository()))
    }

    fn cached_authorization(&self, target: &Target) -> Option<String> {
        let key = Self::token_key(target)?;
        self.tokens.lock().expect("not poisoned").get(&key).cloned()
    }

    /// Handles a 401: fetches a bearer token from the challenge's realm, or uses basic
    /// credentials, and caches the header for the repository.
    async fn authenticate(
        &self,
        target: &Target,
        challenge: Option<Challenge>,
        response: Response,
        context: RequestContext,
    ) -> Result<(), PullError> {
        let reference = target
            .reference
            .as_ref()
            .expect("only registry targets authenticate");
        let credentials = self.options.credentials.for_registry(reference.registry());
        let status = response.status().as_u16();
        let envelope = ErrorEnvelope::decode(
            &read_capped(response, MAX_ERROR_BODY, &context)
                .await
                .unwrap_or_default(),
        );
        let unauthorized = |envelope| PullError::Unauthorized {
            context: Box::new(context.clone()),
            status,
            envelope,
        };
        let header = match challenge {
            Some(Challenge::Basic) => match credentials {
                Some(credentials) => credentials.basic_header(),
                None => return Err(unauthorized(envelope)),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
                let mut token_url = self.parse_url(&realm)?;
                {
                    let mut query = token_url.query_pairs_mut();
                    if let Some(service) = &service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", &scope);
                }
                let mut request = self.http.get(token_url.clone());
                if let Some(credentials) = credentials {
                    request = request.header(AUTHORIZATION, credentials.basic_header());
                }
                let token_context = RequestContext {
                    method: "GET",
                    url: redact_url(&token_url),
                    ..context.clone()
                };
                let token_response =
                    request
                        .send()
                        .await
                        .map_err(|source| PullError::Transport {
                            context: Box::new(token_context.clone()),
                            source,
                        })?;
                let token_status = token_response.status().as_u16();
                let body = read_capped(token_response, MAX_ERROR_BODY, &token_context).await?;
                if !(200..300).contains(&token_status) {
                    return Err(PullError::Unauthorized {
                        context: Box::new(token_context),
                        status: token_status,
                        envelope: ErrorEnvelope::decode(&body),
                    });
                }
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let token = value
                    .get("token")
                    .or_else(|| value.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| PullError::Protocol {
                        context: Box::new(token_context),
                        reason: "the token response has no token field".into(),
                    })?;
                format!("Bearer {token}")
            }
            None => return Err(unauthorized(envelope)),
        };
        let key = Self::token_key(target).expect("registry target");
        self.tokens
            .lock()
            .expect("not poisoned")
            .insert(key, header);
        tracing::debug!(
            registry = reference.registry(),
            repository = reference.repository(),
            "authenticated"
        );
        Ok(())
    }

    async fn error_from_response(
        &self,
        target: &Target,
        method: &'static str,
        url: &Url,
        response: Response,
    ) -> PullError {
        let status = response.status().as_u16();
        let context = self.context(target, method, url);
        let body = read_capped(response, MAX_ERROR_BODY, &context)
            .await
            .unwrap_or_default();
        let envelope = ErrorEnvelope::decode(&body);
        let context = Box::new(context);
        match status {
            401 | 403 => PullError::Unauthorized {
                context,
                status,
                envelope,
            },
            404 => PullError::NotFound { context, envelope },
            _ => PullError::Status {
                context,
                status,
                envelope,
            },
        }
    }
}

/// True when `needle` appears in the error or any of its causes.
fn error_chain_mentions(error: &dyn std::error::Error, needle: &str) -> bool {
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = current {
        if error.to_string().to_ascii_lowercase().contains(needle) {
            return true;
        }
        current = error.source();
    }
    false
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::HEAD => "HEAD",
        _ => "GET",
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Reads at most `limit` bytes of a body; a longer body is an error.
pub async fn read_capped(
    mut response: Response,
    limit: usize,
    context: &RequestContext,
) -> Result<Vec<u8>, PullError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(PullError::Protocol {
                        context: Box::new(context.clone()),
                        reason: format!("body larger than {limit} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(source) => {
                return Err(PullError::Transport {
                    context: Box::new(context.clone()),
                    source,
                })
            }
        }
    }
}

/// Parses `Retry-After` as seconds or an HTTP date, capped at one minute.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: a random delay up to `base × 2^(attempt-1)`, at most 10 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(10));
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(20));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(
            delay > Duration::from_secs(17) && delay <= Duration::from_secs(20),
            "{delay:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for attempt in 1..30 {
            let delay = backoff(Duration::from_millis(200), attempt);
            let ceiling = Duration::from_millis(200 * (1 << (attempt - 1).min(16)))
                .min(Duration::from_secs(10));
            assert!(delay <= ceiling, "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        let registry = Url::parse("http://127.0.0.1:5000/v2/a/blobs/x").unwrap();
        assert!(same_origin(
            &registry,
            &Url::parse("http://127.0.0.1:5000/other").unwrap()
        ));
        assert!(!same_origin(
            &registry,
            &Url::parse("http://127.0.0.1:5001/v2").unwrap()
        ));
        assert!(!same_origin(
            &registry,
            &Url::parse("https://127.0.0.1:5000/v2").unwrap()
        ));
    }
}
