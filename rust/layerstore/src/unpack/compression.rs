//! Layer compression: recognised by media type, checked against the blob's first bytes.

use std::io::{self, BufRead, BufReader, Read};

use crate::digest::{Digest, Hasher};
use crate::unpack::error::{UnpackError, UnpackResult};

/// Bytes read from a layer blob at once.
const READ_BUFFER: usize = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// The compression a layer media type declares; `None` for media types that are not layers.
    /// Covers the OCI types (including the non-distributable ones) and Docker's.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        if !layer {
            return None;
        }
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// The compression the first bytes of a blob show. A tar stream is recognised by the
    /// `ustar` magic at offset 257 or by a zero first block (an empty archive).
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else if head.starts_with(&ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if head.get(257..262) == Some(b"ustar".as_slice())
            || (head.len() >= 512 && head[..512].iter().all(|&byte| byte == 0))
            || head.is_empty()
        {
            Some(Compression::None)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "an uncompressed tar",
        }
    }
}

/// A reader that counts, and unless made with [`HashingReader::counting`] hashes, every byte
/// read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, hasher: Hasher) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Some(hasher),
            bytes: 0,
        }
    }

    /// Creates a reader that counts the bytes and hashes nothing.
    pub fn counting(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: None,
            bytes: 0,
        }
    }

    /// Reads the rest of the stream, so the digest covers trailing bytes the consumer did not
    /// need (tar padding after the end-of-archive blocks, for example). Returns the digest
    /// (`None` for a counting reader) and the number of bytes.
    pub fn finish(mut self) -> io::Result<(Option<Digest>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.map(Hasher::finish), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buffer[..count]);
        }
        self.bytes += count as u64;
        Ok(count)
    }
}

type Compressed = BufReader<HashingReader<Box<dyn Read + Send>>>;

/// The decompressed stream of a layer blob, with the compressed bytes counted and, unless
/// opened with `hash_blob` unset, hashed as they are read.
pub enum Decoder {
    Gzip(Box<flate2::read::MultiGzDecoder<Compressed>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, Compressed>>),
    None(Box<Compressed>),
}

impl Decoder {
    /// Opens a layer blob for decompression after checking that its first bytes match the
    /// compression its media type declares. With `hash_blob`, [`Decoder::finish`] returns the
    /// digest of the blob, computed with the algorithm of `layer`.
    pub fn open(
        blob: impl Read + Send + 'static,
        layer: &Digest,
        media_type: &str,
        compression: Compression,
        hash_blob: bool,
    ) -> UnpackResult<Decoder> {
        let blob: Box<dyn Read + Send> = Box::new(blob);
        let hashing = if hash_blob {
            HashingReader::new(blob, layer.algorithm().hasher())
        } else {
            HashingReader::counting(blob)
        };
        let mut compressed = BufReader::with_capacity(READ_BUFFER, hashing);
        let head = fill_head(&mut compressed).map_err(|source| UnpackError::InvalidLayer {
            layer: layer.clone(),
            reason: "reading the blob failed".into(),
            source: Some(source),
        })?;
        let detected = Compression::sniff(head);
        if detected != Some(compression) {
            return Err(UnpackError::CompressionMismatch {
                layer: layer.clone(),
                media_type: media_type.to_owned(),
                detected: detected.map_or("neither gzip, zstd nor tar", Compression::name),
            });
        }
        Ok(match compression {
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(compressed)))
            }
            Compression::Zstd => {
                let decoder =
                    zstd::stream::read::Decoder::with_buffer(compressed).map_err(|source| {
                        UnpackError::InvalidLayer {
                            layer: layer.clone(),
                            reason: "starting zstd decompression failed".into(),
                            source: Some(source),
                        }
                    })?;
                Decoder::Zstd(Box::new(decoder))
            }
            Compression::None => Decoder::None(Box::new(compressed)),
        })
    }

    /// Reads the rest of the blob and returns its digest (`None` unless opened with
    /// `hash_blob`) and its size in bytes.
    pub fn finish(self) -> io::Result<(Option<Digest>, u64)> {
        let compressed = match self {
            Decoder::Gzip(decoder) => decoder.into_inner(),
            Decoder::Zstd(decoder) => decoder.finish(),
            Decoder::None(reader) => *reader,
        };
        // Bytes buffered but not consumed were hashed when the buffer was filled.
        compressed.into_inner().finish()
    }
}

impl Read for Decoder {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(decoder) => decoder.read(buffer),
            Decoder::Zstd(decoder) => decoder.read(buffer),
            Decoder::None(reader) => reader.read(buffer),
        }
    }
}

/// Returns the first buffered bytes of the blob (up to 1 MiB, fewer for a small blob).
fn fill_head(reader: &mut Compressed) -> io::Result<&[u8]> {
    reader.fill_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn sniff_recognises_magic_bytes() {
        let mut tar = vec![0u8; 512];
        tar[..4].copy_from_slice(b"file");
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(
            Compression::sniff(&[0x1f, 0x8b, 8, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::sniff(&ZSTD_MAGIC), Some(Compression::Zstd));
        assert_eq!(Compression::sniff(&tar), Some(Compression::None));
        assert_eq!(Compression::sniff(&[0u8; 1024]), Some(Compression::None));
        assert_eq!(Compression::sniff(b"{\"schemaVersion\":2}"), None);
    }
}
