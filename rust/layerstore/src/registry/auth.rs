//! Registry credentials and the token flow.
//!
//! Credentials come from the `auths` section of Docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker/config.json`), then from `WARMSTART_REGISTRY_USERNAME` and
//! `WARMSTART_REGISTRY_PASSWORD`, which apply to every registry. Their `Debug` form is redacted,
//! and no error message contains them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::registry::error::PullError;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The value of a `Basic` Authorization header.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Credentials by registry host.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    by_registry: HashMap<String, Credentials>,
    fallback: Option<Credentials>,
}

impl CredentialStore {
    /// Reads Docker's `config.json` and the `WARMSTART_REGISTRY_*` environment variables.
    /// A missing `config.json` is not an error; an unreadable or malformed one is.
    pub fn from_environment() -> Result<CredentialStore, PullError> {
        let mut store = CredentialStore::default();
        if let Some(path) = docker_config_path() {
            if path.is_file() {
                store.load_docker_config(&path)?;
            }
        }
        if let (Ok(username), Ok(password)) = (
            std::env::var("WARMSTART_REGISTRY_USERNAME"),
            std::env::var("WARMSTART_REGISTRY_PASSWORD"),
        ) {
            store.fallback = Some(Credentials { username, password });
        }
        Ok(store)
    }

    /// Adds credentials for one registry (`host[:port]`, or `docker.io`).
    pub fn insert(&mut self, registry: &str, credentials: Credentials) {
        self.by_registry
            .insert(normalize_registry(registry), credentials);
    }

    /// Reads the `auths` section of a Docker `config.json`: entries with `auth` (base64 of
    /// `user:password`) or with `username` and `password`. Credential helpers are not run.
    pub fn load_docker_config(&mut self, path: &Path) -> Result<(), PullError> {
        let invalid = |reason: String| PullError::InvalidCredentials {
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|error| invalid(error.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|error| invalid(format!("invalid JSON: {error}")))?;
        let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
            return Ok(());
        };
        for (registry, entry) in auths {
            let credentials = if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "the auth entry for {registry} is not base64 of user:password"
                        ))
                    })?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("the auth entry for {registry} has no ':'")))?;
                Credentials {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else {
                let field =
                    |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                match (field("username"), field("password")) {
                    (Some(username), Some(password)) => Credentials { username, password },
                    _ => continue,
                }
            };
            self.insert(registry, credentials);
        }
        Ok(())
    }

    /// Returns the credentials for a registry as written in a reference (`docker.io` included).
    pub fn for_registry(&self, registry: &str) -> Option<&Credentials> {
        self.by_registry
            .get(&normalize_registry(registry))
            .or(self.fallback.as_ref())
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(directory) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(directory).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Maps the spellings Docker uses for Docker Hub to `docker.io` and strips URL schemes and
/// paths (`https://index.docker.io/v1/` → `docker.io`).
fn normalize_registry(registry: &str) -> String {
    let without_scheme = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, parameters) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let parameters = parse_parameters(parameters);
        Some(Challenge::Bearer {
            realm: parameters.get("realm")?.clone(),
            service: parameters.get("service").cloned(),
            scope: parameters.get("scope").cloned(),
        })
    }
}

/// Splits `key="value",key2=value2` into a map; commas inside quotes are kept.
fn parse_parameters(text: &str) -> HashMap<String, String> {
    let mut parameters = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        parameters.insert(key, value.to_owned());
        rest = remainder.trim_start_matches([',', ' ']);
    }
    parameters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parses_bearer_parameters() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#;
        assert_eq!(
            Challenge::parse(header),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
    }

    #[test]
    fn docker_config_auths_are_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                   "localhost:5000":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        )
        .unwrap();
        let mut store = CredentialStore::default();
        store.load_docker_config(&path).unwrap();
        assert_eq!(store.for_registry("docker.io").unwrap().username, "alice");
        assert_eq!(store.for_registry("localhost:5000").unwrap().password, "pw");
        assert!(store.for_registry("other.example").is_none());
        assert!(!format!("{:?}", store).contains("s3cret"));
    }

    #[test]
    fn malformed_docker_config_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"x":{"auth":"not base64!"}}}"#).unwrap();
        let error = CredentialStore::default()
            .load_docker_config(&path)
            .unwrap_err();
        assert!(error.to_string().contains("not base64"), "{error}");
    }
}
