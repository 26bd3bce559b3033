//! A latency histogram with bounded relative error and fixed memory.
//!
//! Values (nanoseconds) below 128 have a bucket each; above, every power of two is
//! split into 128 equal buckets, so a reported percentile is within 1/128 (0.8 %) of
//! the true value. One histogram per client, merged at the end: recording never
//! contends.

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The midpoint of bucket `i`'s value range.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB + u64::from(SUB_BITS) - 1;
    let sub = i % SUB;
    let low = (SUB + sub) << (exp - u64::from(SUB_BITS));
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    low + width / 2
}

impl Histogram {
    pub fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.count += 1;
        self.sum += u128::from(nanos);
        self.max = self.max.max(nanos);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / u128::from(self.count)) as u64
        }
    }

    /// The value at quantile `q` (0 < q <= 1): the smallest recorded value such that
    /// at least `q` of all values are at or below it. Never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_the_error_bound() {
        for v in (0..200).chain([1_000, 4_095, 65_537, 1_234_567, 59_999_999_999]) {
            let got = value(index(v));
            let err = got.abs_diff(v) as f64 / (v.max(1)) as f64;
            assert!(err <= 1.0 / SUB as f64, "{v} -> {got}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        let close = |got: u64, want: u64| {
            assert!(
                got.abs_diff(want) as f64 <= want as f64 / SUB as f64,
                "{got} vs {want}"
            )
        };
        close(h.quantile(0.5), 5_000_000);
        close(h.quantile(0.99), 9_900_000);
        close(h.quantile(0.999), 9_990_000);
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.mean(), 5_000_500);

        let mut other = Histogram::default();
        other.record(20_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.quantile(1.0), 20_000_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
