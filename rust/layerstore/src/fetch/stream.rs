//! Reading a blob while it downloads.
//!
//! The fetcher writes ranges at their offsets in a preallocated partial file and announces the
//! end of the contiguous written prefix after each write. A [`PrefixReader`] reads that file
//! through its own handle and blocks until the bytes it needs are inside the prefix. It returns
//! end of file only after the store has committed the blob, so a consumer that reads to the end
//! has read a blob whose digest the store verified. Because the handle outlives the rename into
//! `blobs/`, a reader that starts late reads the committed blob through the same path.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use crate::digest::Digest;

/// How far a blob's download has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Bytes `0..written` are on disk. `written` drops to 0 when a download that cannot resume
    /// restarts from byte 0, and grows again as the same bytes arrive once more.
    Downloading { written: u64 },
    /// The store verified the digest and renamed the file into `blobs/`.
    Committed,
    /// The download failed or was cancelled: the blob will not be committed by this pull.
    Failed,
}

/// The download status of one blob, shared between the fetcher and the readers.
#[derive(Debug)]
pub(crate) struct Prefix {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Prefix {
    pub(crate) fn new(written: u64) -> Arc<Prefix> {
        Arc::new(Prefix {
            status: Mutex::new(Status::Downloading { written }),
            changed: Condvar::new(),
        })
    }

    /// Announces that `0..written` is on disk. Does nothing once the blob is committed or failed.
    pub(crate) fn advance(&self, written: u64) {
        self.set(|status| match *status {
            Status::Downloading { written: old } if old != written => {
                Some(Status::Downloading { written })
            }
            _ => None,
        });
    }

    pub(crate) fn commit(&self) {
        self.set(|status| (*status != Status::Failed).then_some(Status::Committed));
    }

    pub(crate) fn fail(&self) {
        self.set(|status| (*status != Status::Committed).then_some(Status::Failed));
    }

    fn set(&self, next: impl FnOnce(&Status) -> Option<Status>) {
        let mut status = self.status.lock().expect("not poisoned");
        if let Some(next) = next(&status) {
            *status = next;
            self.changed.notify_all();
        }
    }
}

/// Marks a blob failed when dropped before [`PrefixGuard::commit`], so readers stop waiting when
/// its download ends without a commit (an error, or the pull's future dropped).
pub(crate) struct PrefixGuard(pub(crate) Option<Arc<Prefix>>);

impl PrefixGuard {
    pub(crate) fn commit(&self) {
        if let Some(prefix) = &self.0 {
            prefix.commit();
        }
    }
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        if let Some(prefix) = &self.0 {
            prefix.fail();
        }
    }
}

/// A blob that a pull started to download, readable while its bytes arrive.
#[derive(Debug)]
pub struct BlobStream {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    file: File,
    prefix: Arc<Prefix>,
}

impl BlobStream {
    pub(crate) fn new(
        digest: Digest,
        media_type: String,
        size: u64,
        file: File,
        prefix: Arc<Prefix>,
    ) -> BlobStream {
        BlobStream {
            digest,
            media_type,
            size,
            file,
            prefix,
        }
    }

    /// Returns a reader of the blob from byte 0.
    pub fn into_reader(self) -> PrefixReader {
        PrefixReader {
            stream: self,
            position: 0,
        }
    }
}

/// Reads a downloading blob in order, blocking until the next bytes are written. Returns end of
/// file once all bytes are read and the store has committed the blob, and an error as soon as
/// the download fails or is cancelled.
#[derive(Debug)]
pub struct PrefixReader {
    stream: BlobStream,
    position: u64,
}

impl PrefixReader {
    /// Waits until bytes after `position` are readable; returns the end of what is readable.
    fn wait_for_bytes(&self) -> io::Result<u64> {
        let prefix = &self.stream.prefix;
        let mut status = prefix.status.lock().expect("not poisoned");
        loop {
            match *status {
                Status::Committed => return Ok(self.stream.size),
                Status::Failed => {
                    return Err(io::Error::other(format!(
                        "the download of blob {} failed or was cancelled",
                        self.stream.digest
                    )))
                }
                Status::Downloading { written } if written > self.position => return Ok(written),
                Status::Downloading { .. } => {
                    status = prefix.changed.wait(status).expect("not poisoned");
                }
            }
        }
    }
}

impl Read for PrefixReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let readable = self.wait_for_bytes()?;
        if self.position >= readable {
            // Only a committed blob gets here: every byte is read and verified.
            return Ok(0);
        }
        let length = buffer.len().min((readable - self.position) as usize);
        let count = self
            .stream
            .file
            .read_at(&mut buffer[..length], self.position)?;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the partial file of blob {} ends at byte {} of {}",
                    self.stream.digest, self.position, self.stream.size
                ),
            ));
        }
        self.position += count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn stream_of(data: &[u8], prefix: &Arc<Prefix>) -> (tempfile::NamedTempFile, BlobStream) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(data).unwrap();
        let handle = file.reopen().unwrap();
        let digest = crate::digest::Algorithm::Sha256.hasher().finish();
        let stream = BlobStream::new(
            digest,
            "application/octet-stream".into(),
            data.len() as u64,
            handle,
            Arc::clone(prefix),
        );
        (file, stream)
    }

    #[test]
    fn reader_waits_for_prefix_and_commit() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let prefix = Prefix::new(0);
        let (_file, stream) = stream_of(&data, &prefix);
        let reader = std::thread::spawn(move || {
            let mut read = Vec::new();
            stream.into_reader().read_to_end(&mut read).map(|_| read)
        });
        for written in [100, 100, 4_000, 10_000] {
            std::thread::sleep(Duration::from_millis(20));
            prefix.advance(written);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "end of file before the commit");
        prefix.commit();
        assert_eq!(reader.join().unwrap().unwrap(), data);
    }

    #[test]
    fn reader_fails_when_download_fails() {
        let data = vec![7u8; 1000];
        let prefix = Prefix::new(500);
        let (_file, stream) = stream_of(&data, &prefix);
        let reader = std::thread::spawn(move || {
            let mut read = Vec::new();
            let result = stream.into_reader().read_to_end(&mut read);
            (read.len(), result)
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(PrefixGuard(Some(Arc::clone(&prefix))));
        let (read, result) = reader.join().unwrap();
        assert_eq!(read, 500);
        let error = result.unwrap_err();
        assert!(
            error.to_string().contains("failed or was cancelled"),
            "{error}"
        );
    }

    #[test]
    fn restart_keeps_reader_waiting_until_bytes_return() {
        let data = vec![1u8; 1000];
        let prefix = Prefix::new(600);
        let (_file, stream) = stream_of(&data, &prefix);
        let mut reader = stream.into_reader();
        let mut first = vec![0u8; 600];
        reader.read_exact(&mut first).unwrap();
        prefix.advance(0);
        let waiting = std::thread::spawn(move || {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).map(|_| rest.len())
        });
        prefix.advance(300);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiting.is_finished(),
            "read bytes beyond the restarted prefix"
        );
        prefix.advance(1000);
        prefix.commit();
        assert_eq!(waiting.join().unwrap().unwrap(), 400);
    }

    #[test]
    fn guard_after_commit_keeps_committed() {
        let prefix = Prefix::new(0);
        let guard = PrefixGuard(Some(Arc::clone(&prefix)));
        guard.commit();
        drop(guard);
        assert_eq!(*prefix.status.lock().unwrap(), Status::Committed);
    }
}
