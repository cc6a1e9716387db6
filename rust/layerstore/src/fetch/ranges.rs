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

#[cfg(test)]
mod tests {
    use super::*;

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
