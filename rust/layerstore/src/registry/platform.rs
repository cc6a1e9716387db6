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
    /// Parses `os/arch` or `os/arch/variant` into the OCI names that index entries use.
    ///
    /// Case is ignored. The kernel's architecture names map to OCI ones (`x86_64` to `amd64`,
    /// `aarch64` to `arm64`, `i386` and `i686` to `386`), and a variant of digits gets its `v`
    /// (`7` to `v7`). So `Linux/x86_64` is `linux/amd64`.
    pub fn parse(text: &str) -> Result<Platform, PullError> {
        let parts: Vec<&str> = text.split('/').collect();
        let invalid = || PullError::InvalidPlatform {
            platform: text.to_owned(),
            reason:
                "a platform is os/architecture or os/architecture/variant, for example linux/amd64"
                    .into(),
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|part| part.is_empty()) {
            return Err(invalid());
        }
        let architecture = match parts[1].to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_owned(),
            "aarch64" => "arm64".to_owned(),
            "i386" | "i686" => "386".to_owned(),
            other => other.to_owned(),
        };
        let variant = parts.get(2).map(|variant| {
            let variant = variant.to_ascii_lowercase();
            if variant.bytes().all(|byte| byte.is_ascii_digit()) {
                format!("v{variant}")
            } else {
                variant
            }
        });
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture,
            variant,
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
    fn parse_normalizes_names() {
        for (text, expected) in [
            ("Linux/AMD64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/aarch64/8", "linux/arm64/v8"),
            ("linux/ARM/V7", "linux/arm/v7"),
            ("linux/i686", "linux/386"),
            ("windows/amd64", "windows/amd64"),
        ] {
            let platform = Platform::parse(text).unwrap();
            assert_eq!(platform.to_string(), expected, "{text}");
        }
    }

    #[test]
    fn parse_rejects_bad_platforms() {
        for text in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(text).is_err(), "{text}");
        }
    }
}
