//! Reading a blob while it downloads.
//!
//! The fetcher writes ranges at their offsets in a preallocated partial file and announces the
//! end of the contiguous written prefix after each write. A [`PrefixReader`] reads that file
//! through its own handle and blocks until the bytes it needs are inside the prefix. It returns
//! end of file only after the store has committed the blob, and fails when the download
//! restarted from byte 0 after the reader's first byte. So a consumer that reads to the end has
//! read exactly the bytes whose digest the store verified, and need not hash them again.
//! Because the handle outlives the rename into `blobs/`, a reader that starts late reads the
//! committed blob through the same path.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use crate::digest::Digest;

/// How far a blob's download has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Bytes `0..written` are on disk.
    Downloading { written: u64 },
    /// The store verified the digest and renamed the file into `blobs/`.
    Committed,
    /// The download failed or was cancelled: the blob will not be committed by this pull.
    Failed,
}

/// The status of a download and how often it restarted from byte 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    status: Status,
    /// Incremented by [`Prefix::restart`]. Between two restarts, every byte below the
    /// announced prefix is written once and never changes, which is what lets a reader trust
    /// the store's digest check for the bytes it read.
    restarts: u64,
}

/// The download status of one blob, shared between the fetcher and the readers.
#[derive(Debug)]
pub(crate) struct Prefix {
    state: Mutex<State>,
    changed: Condvar,
}

impl Prefix {
    pub(crate) fn new(written: u64) -> Arc<Prefix> {
        Arc::new(Prefix {
            state: Mutex::new(State {
                status: Status::Downloading { written },
                restarts: 0,
            }),
            changed: Condvar::new(),
        })
    }

    /// Announces that `0..written` is on disk. Does nothing once the blob is committed or failed.
    pub(crate) fn advance(&self, written: u64) {
        self.set(|state| match state.status {
            Status::Downloading { written: old } if old != written => Some(State {
                status: Status::Downloading { written },
                ..*state
            }),
            _ => None,
        });
    }

    /// Announces that a download that cannot resume starts again from byte 0: the bytes
    /// written so far will be written again, and a reader that read any of them fails.
    pub(crate) fn restart(&self) {
        self.set(|state| match state.status {
            Status::Downloading { .. } => Some(State {
                status: Status::Downloading { written: 0 },
                restarts: state.restarts + 1,
            }),
            _ => None,
        });
    }

    pub(crate) fn commit(&self) {
        self.set(|state| {
            (state.status != Status::Failed).then_some(State {
                status: Status::Committed,
                ..*state
            })
        });
    }

    pub(crate) fn fail(&self) {
        self.set(|state| {
            (state.status != Status::Committed).then_some(State {
                status: Status::Failed,
                ..*state
            })
        });
    }

    fn set(&self, next: impl FnOnce(&State) -> Option<State>) {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(next) = next(&state) {
            *state = next;
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
            restarts: 0,
        }
    }
}

/// Reads a downloading blob in order, blocking until the next bytes are written. Returns end of
/// file once all bytes are read and the store has committed the blob. Returns an error as soon
/// as the download fails or is cancelled, or restarts from byte 0 after this reader's first
/// byte, because the bytes read before a restart are not the ones the store then verifies.
#[derive(Debug)]
pub struct PrefixReader {
    stream: BlobStream,
    position: u64,
    /// The download's restart count when this reader read its first byte.
    restarts: u64,
}

impl PrefixReader {
    /// Waits until bytes after `position` are readable; returns the end of what is readable.
    fn wait_for_bytes(&mut self) -> io::Result<u64> {
        let prefix = &self.stream.prefix;
        let mut state = prefix.state.lock().expect("not poisoned");
        loop {
            if self.position == 0 {
                // Nothing read yet, so the bytes of any earlier try do not matter.
                self.restarts = state.restarts;
            } else if state.restarts != self.restarts {
                return Err(io::Error::other(format!(
                    "the download of blob {} restarted from byte 0 after {} bytes were read \
                     from it; read the blob again once the store has committed it",
                    self.stream.digest, self.position
                )));
            }
            match state.status {
                Status::Committed => return Ok(self.stream.size),
                Status::Failed => {
                    return Err(io::Error::other(format!(
                        "the download of blob {} failed or was cancelled",
                        self.stream.digest
                    )))
                }
                Status::Downloading { written } if written > self.position => return Ok(written),
                Status::Downloading { .. } => {
                    state = prefix.changed.wait(state).expect("not poisoned");
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
    fn restart_after_first_byte_fails_reader() {
        let data = vec![1u8; 1000];
        let prefix = Prefix::new(600);
        let (_file, stream) = stream_of(&data, &prefix);
        let mut reader = stream.into_reader();
        let mut first = vec![0u8; 600];
        reader.read_exact(&mut first).unwrap();
        prefix.restart();
        let waiting = std::thread::spawn(move || {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)
        });
        // The same bytes arriving again and a commit do not make the reader go on.
        prefix.advance(1000);
        prefix.commit();
        let error = waiting.join().unwrap().unwrap_err();
        assert!(
            error.to_string().contains("restarted from byte 0"),
            "{error}"
        );
    }

    #[test]
    fn restart_after_last_byte_fails_at_end() {
        let data = vec![2u8; 1000];
        let prefix = Prefix::new(1000);
        let (_file, stream) = stream_of(&data, &prefix);
        let mut reader = stream.into_reader();
        let mut all = vec![0u8; 1000];
        reader.read_exact(&mut all).unwrap();
        prefix.restart();
        prefix.advance(1000);
        prefix.commit();
        let error = reader.read(&mut [0u8; 10]).unwrap_err();
        assert!(error.to_string().contains("after 1000 bytes"), "{error}");
    }

    #[test]
    fn restart_before_first_byte_is_harmless() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let prefix = Prefix::new(600);
        let (_file, stream) = stream_of(&data, &prefix);
        prefix.restart();
        prefix.restart();
        let reader = std::thread::spawn(move || {
            let mut read = Vec::new();
            stream.into_reader().read_to_end(&mut read).map(|_| read)
        });
        prefix.advance(400);
        prefix.advance(1000);
        prefix.commit();
        assert_eq!(reader.join().unwrap().unwrap(), data);
    }

    #[test]
    fn restart_after_commit_changes_nothing() {
        let data = vec![3u8; 100];
        let prefix = Prefix::new(100);
        let (_file, stream) = stream_of(&data, &prefix);
        let mut reader = stream.into_reader();
        let mut first = vec![0u8; 50];
        reader.read_exact(&mut first).unwrap();
        prefix.commit();
        prefix.restart();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 50);
    }

    #[test]
    fn guard_after_commit_keeps_committed() {
        let prefix = Prefix::new(0);
        let guard = PrefixGuard(Some(Arc::clone(&prefix)));
        guard.commit();
        drop(guard);
        assert_eq!(prefix.state.lock().unwrap().status, Status::Committed);
    }
}
