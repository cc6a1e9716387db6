//! A set of byte ranges, merged as they are added.

/// Half-open byte ranges `start..end`, kept sorted and merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        self.ranges.retain(|&(s, e)| {
            let overlaps = s <= end && start <= e;
            if overlaps {
                start = start.min(s);
                end = end.max(e);
            }
            !overlaps
        });
        let position = self.ranges.partition_point(|&(s, _)| s < start);
        self.ranges.insert(position, (start, end));
    }

    /// End of the range that starts at byte 0: every byte before it is covered.
    pub fn contiguous_end(&self) -> u64 {
        match self.ranges.first() {
            Some(&(0, end)) => end,
            _ => 0,
        }
    }

    /// The parts of `0..size` not covered, split into pieces of at most `chunk` bytes.
    pub fn missing(&self, size: u64, chunk: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut position = 0;
        for &(start, end) in self.ranges.iter().chain(std::iter::once(&(size, size))) {
            let mut gap_start = position;
            while gap_start < start.min(size) {
                let gap_end = (gap_start + chunk).min(start);
                gaps.push((gap_start, gap_end));
                gap_start = gap_end;
            }
            position = position.max(end);
        }
        gaps
    }

    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

/// Splits `ranges` (ascending, non-overlapping) again so that the first `workers` pieces grow
/// from `chunk / workers` to `chunk` bytes, and every later piece is at most `chunk` bytes.
///
/// `workers` connections that start these pieces together, each at the same rate, then finish
/// them one after another in ascending offset, and keep that spacing for the pieces after. So
/// the contiguous written prefix that a consumer reads grows steadily, where pieces of equal
/// size would all end together and grow it in steps of `workers` pieces.
pub fn ramp(ranges: &[(u64, u64)], workers: usize, chunk: u64) -> Vec<(u64, u64)> {
    let workers = workers.max(1) as u64;
    let chunk = chunk.max(1);
    let mut pieces = Vec::new();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => merged.push((start, end)),
        }
    }
    for (mut start, end) in merged {
        while start < end {
            let index = pieces.len() as u64;
            let size = if index < workers {
                // Cumulative ends, so the rounding of each piece does not pile up into a
                // last piece of a few bytes (one more request for nothing).
                let end = |pieces: u64| {
                    let growth = u128::from(pieces) * u128::from(pieces + 1) / 2;
                    (u128::from(chunk) * growth / u128::from(workers)) as u64
                };
                (end(index + 1) - end(index)).max(1)
            } else {
                chunk
            };
            let piece_end = (start + size).min(end);
            pieces.push((start, piece_end));
            start = piece_end;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_grows_pieces_keeps_bytes() {
        assert_eq!(
            ramp(&[(10, 20), (20, 30), (30, 40), (40, 45)], 4, 10),
            vec![(10, 12), (12, 17), (17, 25), (25, 35), (35, 45)]
        );
        // The growing pieces add up to (workers + 1) / 2 chunks, so a blob of whole chunks
        // ends in a whole chunk, or in a half one, never in a few leftover bytes.
        let pieces = ramp(&[(0, 4 * 6_291_456)], 3, 2_097_152);
        assert_eq!(
            pieces[..3].iter().map(|(s, e)| e - s).sum::<u64>(),
            2 * 2_097_152
        );
        assert!(pieces.iter().all(|(s, e)| e - s >= 2_097_152 / 3));
        for workers in 1..6 {
            for chunk in 1..9u64 {
                let mut set = RangeSet::default();
                set.insert(3, 7);
                set.insert(20, 21);
                let missing = set.missing(40, chunk);
                let pieces = ramp(&missing, workers, chunk);
                let mut covered = RangeSet::default();
                let mut previous_end = 0;
                for &(start, end) in &pieces {
                    assert!(start >= previous_end, "pieces overlap or go backwards");
                    assert!(start < end, "empty piece");
                    assert!(end - start <= chunk, "piece longer than a chunk");
                    covered.insert(start, end);
                    previous_end = end;
                }
                let mut expected = RangeSet::default();
                for &(start, end) in &missing {
                    expected.insert(start, end);
                }
                assert_eq!(covered, expected, "workers {workers}, chunk {chunk}");
            }
        }
        assert_eq!(ramp(&[(0, 30)], 1, 10), vec![(0, 10), (10, 20), (20, 30)]);
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent_ranges() {
        let mut set = RangeSet::default();
        set.insert(10, 20);
        set.insert(30, 40);
        set.insert(20, 30);
        assert_eq!(set.ranges, vec![(10, 40)]);
        set.insert(0, 5);
        assert_eq!(set.contiguous_end(), 5);
        set.insert(5, 10);
        assert_eq!(set.contiguous_end(), 40);
        assert_eq!(set.covered(), 40);
    }

    #[test]
    fn missing_splits_gaps_into_chunks() {
        let mut set = RangeSet::default();
        assert_eq!(set.missing(25, 10), vec![(0, 10), (10, 20), (20, 25)]);
        set.insert(5, 12);
        assert_eq!(set.missing(25, 10), vec![(0, 5), (12, 22), (22, 25)]);
        set.insert(0, 25);
        assert!(set.missing(25, 10).is_empty());
        assert!(RangeSet::default().missing(0, 10).is_empty());
    }
}
