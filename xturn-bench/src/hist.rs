//! A log-linear histogram of nanosecond durations: fixed memory, ~1.6 % relative precision.

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^40 ns (about 18 minutes).
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (MAX_BITS as usize + 1) * SUB;

/// Counts of durations in logarithmic buckets, each split linearly into 64.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    let value = value.min((1u64 << MAX_BITS) - 1);
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (value >> shift) as usize & (SUB - 1);
    ((shift + 1) as usize) * SUB + sub
}

/// The smallest value that falls in bucket `i` (a lower bound of its values).
fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let sub = (i % SUB) as u64;
    (SUB as u64 + sub) << shift
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding it.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(lower_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..64 {
            assert_eq!(lower_bound(index(v)), v);
        }
    }

    #[test]
    fn buckets_are_within_two_percent() {
        let mut v = 64u64;
        while v < 1 << 39 {
            let lb = lower_bound(index(v));
            assert!(lb <= v, "{lb} > {v}");
            assert!(
                (v - lb) as f64 / v as f64 <= 1.0 / 64.0 + 1e-9,
                "{v} → {lb}"
            );
            v = v * 17 / 16 + 1;
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).expect("p50") as f64;
        let p99 = h.quantile(0.99).expect("p99") as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(
            h.quantile(1.0),
            Some(10_000_000).map(|m| lower_bound(index(m)))
        );
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000_000);
    }

    #[test]
    fn empty_has_no_quantiles() {
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(Histogram::default().mean(), None);
    }
}
