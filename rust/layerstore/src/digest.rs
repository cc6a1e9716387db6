//! Content digests (`<algorithm>:<hex>`) as a parsed type.
//!
//! A [`Digest`] is parsed once at the edge and is the only thing the store builds paths from,
//! so a path can never contain a separator, `..` or upper-case hex.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::DigestParseError;

/// Hash algorithms the store accepts, as registered by the OCI image spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm identifier used in digests and as the directory name under `blobs/`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the encoded (hex) part of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated content digest: a known algorithm and lower-case hex of the right length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestParseError> {
        let invalid = |reason: &'static str| DigestParseError {
            value: text.chars().take(200).collect(),
            reason,
        };
        let (algorithm, hex) = text.split_once(':').ok_or_else(|| {
            invalid("expected <algorithm>:<hex>, for example sha256:<64 hex digits>")
        })?;
        let algorithm = Algorithm::from_name(algorithm)
            .ok_or_else(|| invalid("unsupported algorithm, expected sha256 or sha512"))?;
        Digest::from_parts(algorithm, hex).map_err(invalid)
    }

    /// Builds a digest from an algorithm and its hex part, as found in a `blobs/<alg>/<hex>` path.
    pub fn from_parts(algorithm: Algorithm, hex: &str) -> Result<Digest, &'static str> {
        if hex.len() != algorithm.hex_len() {
            return Err(match algorithm {
                Algorithm::Sha256 => "a sha256 digest has exactly 64 hex digits",
                Algorithm::Sha512 => "a sha512 digest has exactly 128 hex digits",
            });
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("the hex part must be lower-case hexadecimal (0-9, a-f)");
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Computes the digest of `data` with `algorithm`.
    pub fn of_bytes(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut hasher = algorithm.hasher();
        hasher.update(data);
        hasher.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(text: &str) -> Result<Digest, DigestParseError> {
        Digest::parse(text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_round_trips() {
        let digest = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(digest.algorithm(), Algorithm::Sha256);
        assert_eq!(digest.to_string(), EMPTY_SHA256);
    }

    #[test]
    fn empty_input_hashes_to_known_digest() {
        assert_eq!(
            Digest::of_bytes(Algorithm::Sha256, b"").to_string(),
            EMPTY_SHA256
        );
        let sha512 = Digest::of_bytes(Algorithm::Sha512, b"");
        assert!(sha512.hex().starts_with("cf83e1357eefb8bd"));
        assert_eq!(Digest::parse(&sha512.to_string()).unwrap(), sha512);
    }

    #[test]
    fn parse_rejects_invalid_digests() {
        let cases = [
            ("", "expected <algorithm>"),
            ("sha256", "expected <algorithm>"),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported algorithm",
            ),
            ("sha256:abc", "exactly 64"),
            (
                &EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256"),
                "lower-case",
            ),
            (
                "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
                "exactly 64",
            ),
            (
                "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "exactly 128",
            ),
        ];
        for (text, expected) in cases {
            let error = Digest::parse(text).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(
                message.contains(&format!("{text:?}")),
                "{text:?} not shown in {message}"
            );
        }
    }
}
