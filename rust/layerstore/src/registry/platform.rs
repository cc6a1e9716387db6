//! Platform selection from image indexes and manifest lists.

use std::fmt;

use serde_json::Value;

use crate::manifest::Descriptor;
use crate::registry::error::PullError;

/// An `os/architecture[/variant]` triple, as in `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(text: &str) -> Result<Platform, PullError> {
        let parts: Vec<&str> = text.split('/').collect();
        let invalid = || PullError::InvalidReference {
            reference: text.to_owned(),
            reason:
                "a platform is os/architecture or os/architecture/variant, for example linux/amd64"
                    .into(),
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|part| part.is_empty()) {
            return Err(invalid());
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|variant| (*variant).to_owned()),
        })
    }

    /// The platform this process runs on, in OCI names (`x86_64` is `amd64`).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    fn matches(&self, descriptor: &Descriptor) -> bool {
        let Some(platform) = descriptor.extra.get("platform") else {
            return false;
        };
        let field = |name: &str| platform.get(name).and_then(Value::as_str);
        if field("os") != Some(self.os.as_str())
            || field("architecture") != Some(self.architecture.as_str())
        {
            return false;
        }
        match (&self.variant, field("variant")) {
            (Some(wanted), Some(variant)) => wanted == variant,
            (Some(wanted), None) => self.architecture == "arm64" && wanted == "v8",
            (None, _) => true,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// True for index entries that are not runnable images: attestations (`unknown/unknown`, or a
/// `vnd.docker.reference.type` annotation) and entries without a platform.
fn is_attestation(descriptor: &Descriptor) -> bool {
    let unknown = descriptor
        .extra
        .get("platform")
        .is_some_and(|p| p.get("os").and_then(Value::as_str) == Some("unknown"));
    unknown
        || descriptor
            .annotations
            .contains_key("vnd.docker.reference.type")
}

/// Formats the `platform` of an index entry as `os/architecture[/variant]`, with `?` for a
/// missing field. Returns `None` when the entry has no platform.
pub fn platform_of(descriptor: &Descriptor) -> Option<String> {
    let platform = descriptor.extra.get("platform")?;
    let field = |name: &str| platform.get(name).and_then(Value::as_str).unwrap_or("?");
    Some(match platform.get("variant").and_then(Value::as_str) {
        Some(variant) => format!("{}/{}/{variant}", field("os"), field("architecture")),
        None => format!("{}/{}", field("os"), field("architecture")),
    })
}

/// Picks the manifest for `platform` from the entries of an index. Attestation entries are never
/// picked. When several entries match, the first wins, as in Docker.
pub fn select(
    manifests: &[Descriptor],
    platform: &Platform,
    reference: &str,
) -> Result<Descriptor, PullError> {
    find(manifests, platform)
        .cloned()
        .ok_or_else(|| PullError::PlatformNotFound {
            platform: platform.to_string(),
            reference: reference.to_owned(),
            available: available(manifests),
        })
}

/// Returns the entry [`select`] picks for `platform`, or `None`.
pub fn find<'a>(manifests: &'a [Descriptor], platform: &Platform) -> Option<&'a Descriptor> {
    manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .find(|d| platform.matches(d))
}

/// Lists the platforms of an index's runnable entries, for messages: `linux/amd64, linux/arm64`,
/// or `none`.
pub fn available(manifests: &[Descriptor]) -> String {
    let platforms: Vec<String> = manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .filter_map(platform_of)
        .collect();
    if platforms.is_empty() {
        "none".into()
    } else {
        platforms.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, architecture: &str, variant: Option<&str>, digit: char) -> Descriptor {
        let mut platform = serde_json::json!({"os": os, "architecture": architecture});
        if let Some(variant) = variant {
            platform["variant"] = variant.into();
        }
        let mut descriptor = Descriptor::new(
            crate::manifest::OCI_MANIFEST,
            crate::Digest::parse(&format!("sha256:{}", digit.to_string().repeat(64))).unwrap(),
            100,
        );
        descriptor.extra.insert("platform".into(), platform);
        descriptor
    }

    #[test]
    fn select_skips_attestations() {
        let manifests = vec![
            entry("unknown", "unknown", None, '1'),
            entry("linux", "arm64", Some("v8"), '2'),
            entry("linux", "amd64", None, '3'),
        ];
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            select(&manifests, &amd64, "r").unwrap().digest,
            manifests[2].digest
        );
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(
            select(&manifests, &arm, "r").unwrap().digest,
            manifests[1].digest
        );
        let unknown = Platform::parse("unknown/unknown").unwrap();
        let error = select(&manifests, &unknown, "r").unwrap_err().to_string();
        assert!(
            error.contains("available: linux/arm64/v8, linux/amd64"),
            "{error}"
        );
    }

    #[test]
    fn parse_rejects_bad_platforms() {
        for text in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(text).is_err(), "{text}");
        }
    }
}
