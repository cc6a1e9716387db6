//! Written buffers kept in memory until the hashing task reaches them.
//!
//! A chunked download writes ranges out of order, and the digest needs the bytes in order, so
//! the hashing task reads most bytes back from the partial file. Buffers written close behind
//! the hashed prefix are kept instead, within a byte budget shared by every download of a
//! fetcher, and hashed from memory: that saves copying them out of the page cache again. The
//! bytes kept are the bytes the successful `pwritev` wrote, so the digest still covers exactly
//! the file's content.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Maximum bytes a fetcher keeps for hashing, across all its downloads. Buffers more than this far
/// beyond a blob's hashed prefix are not kept either, so the budget goes to the bytes the
/// hashing task reaches first.
pub(crate) const RETAIN_LIMIT: usize = 32 << 20;

/// A cap on the bytes kept for hashing, shared by the downloads of one fetcher.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `bytes`, or returns `None` when that would exceed the limit.
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + bytes > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: Arc::clone(self),
                        bytes,
                    })
                }
                Err(current) => used = current,
            }
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes taken from a [`MemoryBudget`], returned to it when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One step of hashing a prefix: buffers from memory, or a byte range to read from the file.
#[derive(Debug)]
pub(crate) enum Piece {
    Memory(Vec<Bytes>, Reservation),
    File { start: u64, end: u64 },
}

/// Written, not yet hashed buffers of one blob, by offset.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    buffers: BTreeMap<u64, (u64, Vec<Bytes>, Reservation)>,
}

impl Retained {
    /// Keeps `buffers`, written at `start..end`, if they lie within [`RETAIN_LIMIT`] of
    /// `hashed` and the budget has room. Returns false (and keeps nothing) otherwise.
    pub(crate) fn offer(
        &mut self,
        budget: &Arc<MemoryBudget>,
        hashed: u64,
        start: u64,
        end: u64,
        buffers: Vec<Bytes>,
    ) -> bool {
        if start < hashed || end > hashed + RETAIN_LIMIT as u64 {
            return false;
        }
        let Some(reservation) = budget.try_reserve((end - start) as usize) else {
            return false;
        };
        self.buffers.insert(start, (end, buffers, reservation));
        true
    }

    /// Removes the kept buffers inside `from..to` and returns the pieces that hash `from..to`
    /// in order: those buffers, and file ranges for the bytes between them.
    pub(crate) fn take(&mut self, from: u64, to: u64) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut position = from;
        let later = self.buffers.split_off(&to);
        let inside = std::mem::replace(&mut self.buffers, later);
        for (start, (end, buffers, reservation)) in inside {
            // Buffers that overlap bytes already covered, or run past `to`, are dropped, because
            // the file has those bytes too.
            if start < position || end > to {
                continue;
            }
            if start > position {
                pieces.push(Piece::File {
                    start: position,
                    end: start,
                });
            }
            pieces.push(Piece::Memory(buffers, reservation));
            position = end;
        }
        if position < to {
            pieces.push(Piece::File {
                start: position,
                end: to,
            });
        }
        pieces
    }

    pub(crate) fn clear(&mut self) {
        self.buffers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(length: usize) -> Vec<Bytes> {
        vec![Bytes::from(vec![7u8; length])]
    }

    fn describe(pieces: &[Piece]) -> Vec<(char, u64)> {
        pieces
            .iter()
            .map(|piece| match piece {
                Piece::Memory(buffers, _) => ('m', buffers.iter().map(|b| b.len() as u64).sum()),
                Piece::File { start, end } => ('f', end - start),
            })
            .collect()
    }

    #[test]
    fn take_fills_gaps_with_file_ranges() {
        let budget = MemoryBudget::new(1 << 20);
        let mut retained = Retained::default();
        assert!(retained.offer(&budget, 0, 10, 20, buffer(10)));
        assert!(retained.offer(&budget, 0, 30, 35, buffer(5)));
        assert!(retained.offer(&budget, 0, 50, 60, buffer(10)));
        let pieces = retained.take(0, 40);
        assert_eq!(
            describe(&pieces),
            vec![('f', 10), ('m', 10), ('f', 10), ('m', 5), ('f', 5)]
        );
        drop(pieces);
        assert_eq!(budget.used(), 10, "only the buffer past 40 stays reserved");
        assert_eq!(describe(&retained.take(40, 60)), vec![('f', 10), ('m', 10)]);
    }

    #[test]
    fn offer_respects_budget_and_window() {
        let budget = MemoryBudget::new(100);
        let mut retained = Retained::default();
        assert!(retained.offer(&budget, 0, 0, 80, buffer(80)));
        assert!(
            !retained.offer(&budget, 0, 80, 130, buffer(50)),
            "over budget"
        );
        assert!(
            !retained.offer(&budget, 50, 0, 10, buffer(10)),
            "already hashed"
        );
        let far = RETAIN_LIMIT as u64;
        assert!(
            !retained.offer(&budget, 0, far, far + 1, buffer(1)),
            "too far ahead"
        );
        retained.clear();
        assert_eq!(budget.used(), 0);
    }
}
