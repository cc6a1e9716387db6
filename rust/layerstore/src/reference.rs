//! Image references (`[registry/]repository[:tag][@digest]`) with Docker's normalization.

use std::fmt;

use crate::digest::Digest;
use crate::registry::error::PullError;

/// The registry name Docker uses for images without a registry part.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference. At least one of `tag` and `digest` is set; a reference with neither
/// gets the tag `latest`, as Docker does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference, normalizing Docker Hub names: `ubuntu` becomes
    /// `docker.io/library/ubuntu:latest`.
    pub fn parse(text: &str) -> Result<Reference, PullError> {
        let invalid = |reason: String| PullError::InvalidReference {
            reference: text.chars().take(300).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("a reference must not be empty".into()));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(Digest::parse(digest).map_err(|error| invalid(error.to_string()))?),
            ),
            None => (text, None),
        };
        // A tag follows the last ':' that comes after the last '/', so a port is not a tag.
        let last_slash = name.rfind('/').map_or(0, |position| position + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(position) => {
                let split = last_slash + position;
                (&name[..split], Some(name[split + 1..].to_owned()))
            }
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_port(&registry).map_err(|reason| invalid(reason.into()))?;
        validate_repository(&repository).map_err(|reason| invalid(reason.into()))?;
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(|reason| invalid(reason.into()))?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host and port that serve the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The part that goes into `/v2/<repository>/manifests/<this>`: the digest if present.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// True for registries Docker talks to over plain HTTP without being told: `localhost` and
    /// the loopback addresses.
    pub fn is_loopback(&self) -> bool {
        let host = host_without_port(&self.registry);
        host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.")
    }
}

fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(host, _)| &host[1..]);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks the port of a registry written as `host:port` or `[address]:port`, so that a port no
/// URL can hold is an invalid reference rather than a failed request.
fn validate_port(registry: &str) -> Result<(), &'static str> {
    let after_host = if registry.starts_with('[') {
        registry.split_once(']').map_or("", |(_, rest)| rest)
    } else {
        registry.find(':').map_or("", |colon| &registry[colon..])
    };
    let Some(port) = after_host.strip_prefix(':') else {
        return Ok(());
    };
    let number = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten();
    match number {
        Some(number) if number > 0 => Ok(()),
        _ => Err("a registry port is a number from 1 to 65535"),
    }
}

/// Checks a repository path against the OCI distribution grammar: lower-case components of
/// `[a-z0-9]` joined by `.`, `_`, `__` or runs of `-`, separated by `/`.
fn validate_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() || repository.len() > 255 {
        return Err("the repository must have 1 to 255 characters");
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let valid_characters = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
        if !valid_characters {
            return Err(
                "repository names use only lower-case letters, digits, '.', '_', '-' and '/'",
            );
        }
        let alphanumeric_ends = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        if !alphanumeric_ends {
            return Err("each part of a repository name starts and ends with a letter or digit");
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let bytes = tag.as_bytes();
    let first_valid = bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest_valid = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b));
    if !first_valid || !rest_valid || bytes.len() > 128 {
        return Err("a tag has 1 to 128 letters, digits, '_', '.' or '-' and does not start with '.' or '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_normalizes_docker_hub_names() {
        let cases = [
            ("ubuntu", "docker.io", "library/ubuntu", Some("latest")),
            ("ubuntu:22.04", "docker.io", "library/ubuntu", Some("22.04")),
            (
                "pytorch/pytorch:2.4",
                "docker.io",
                "pytorch/pytorch",
                Some("2.4"),
            ),
            (
                "index.docker.io/library/redis",
                "docker.io",
                "library/redis",
                Some("latest"),
            ),
            (
                "localhost:5000/models/llm:v1",
                "localhost:5000",
                "models/llm",
                Some("v1"),
            ),
            ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", Some("latest")),
            ("ghcr.io/org/image:tag", "ghcr.io", "org/image", Some("tag")),
            ("localhost/app", "localhost", "app", Some("latest")),
        ];
        for (text, registry, repository, tag) in cases {
            let reference = Reference::parse(text).unwrap();
            assert_eq!(reference.registry(), registry, "{text}");
            assert_eq!(reference.repository(), repository, "{text}");
            assert_eq!(reference.tag(), tag, "{text}");
        }
        assert_eq!(
            Reference::parse("ubuntu").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn parse_reads_digests() {
        let reference = Reference::parse(&format!("localhost:5000/app@{DIGEST}")).unwrap();
        assert_eq!(reference.tag(), None);
        assert_eq!(reference.manifest_reference(), DIGEST);
        let both = Reference::parse(&format!("app:v1@{DIGEST}")).unwrap();
        assert_eq!(both.tag(), Some("v1"));
        assert_eq!(both.manifest_reference(), DIGEST);
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/app:v1@{DIGEST}")
        );
    }

    #[test]
    fn parse_rejects_invalid_references() {
        for text in [
            "",
            "UPPER/case",
            "app:",
            "app:-x",
            "app@sha256:abc",
            "a//b",
            "-a",
            "app:tag with space",
            "127.0.0.1:99999/app:v1",
            "localhost:0/app",
            "localhost:+80/app",
            "localhost:http/app",
            "[::1]:65536/app",
        ] {
            let error = Reference::parse(text).unwrap_err();
            assert!(
                error.to_string().contains(&format!("{text:?}")),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn loopback_registries_are_recognized() {
        for (text, loopback) in [
            ("localhost:5000/a", true),
            ("127.0.0.1:5000/a", true),
            ("127.1.2.3/a:v", true),
            ("[::1]:5000/a", true),
            ("registry.example.com/a", false),
            ("ubuntu", false),
        ] {
            assert_eq!(
                Reference::parse(text).unwrap().is_loopback(),
                loopback,
                "{text}"
            );
        }
    }
}
