//! How long handlers take, as a distribution: a small log-linear histogram per entity, written
//! by its agent once per batch of messages and read by anyone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: a bucket spans a quarter of its power, so a quantile read
/// from it is within 25% of the true value.
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
/// Values below `2^LOW` clock ticks (about 64 ns) share the first bucket.
const LOW: u32 = 6;
/// Values from `2^HIGH` ticks (about 73 minutes) share the last.
const HIGH: u32 = 42;
const BUCKETS: usize = 1 + (HIGH - LOW) as usize * SUB + 1;

/// Handling times of one entity's messages, in clock ticks, with 4 buckets per power of two
/// between about 64 ns and an hour: 584 bytes, allocated when the entity first handles a
/// message. Only the agent writes it (plain loads and stores); anyone reads it.
pub(crate) struct Histogram {
    counts: [AtomicU32; BUCKETS],
}

/// The handling time of an entity's messages at three quantiles (see [`Stats::handling`]).
/// Each is the upper end of the histogram bucket it falls in, within 25% of the true value and
/// never above the longest handler ([`Stats::max`]). Handlers under a microsecond are timed in
/// batches of up to 64 (see `Timing` in the agent), so theirs are batch means, and one such
/// batch in 16 is recorded for the others; slower ones are timed and recorded one by one. All
/// zero before the entity handles its first message.
///
/// [`Stats::handling`]: crate::Stats::handling
/// [`Stats::max`]: crate::Stats::max
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Latency {
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

/// The bucket of a value of `ticks`.
fn bucket(ticks: u64) -> usize {
    if ticks < 1 << LOW {
        return 0;
    }
    let power = 63 - ticks.leading_zeros();
    if power >= HIGH {
        return BUCKETS - 1;
    }
    let sub = (ticks >> (power - SUB_BITS)) as usize & (SUB - 1);
    1 + (power - LOW) as usize * SUB + sub
}

/// The largest value of bucket `index`, in ticks.
fn upper(index: usize) -> u64 {
    if index == 0 {
        return (1 << LOW) - 1;
    }
    if index == BUCKETS - 1 {
        return u64::MAX;
    }
    let power = LOW + ((index - 1) / SUB) as u32;
    let sub = ((index - 1) % SUB) as u64;
    let width = 1u64 << (power - SUB_BITS);
    (1u64 << power) + (sub + 1) * width - 1
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU32::new(0)) }
    }

    /// Counts `n` messages that took `ticks` in all, each at the mean, `weight` times (a
    /// sampled batch stands for the ones not recorded). Only the entity's agent calls this.
    #[inline]
    pub(crate) fn record(&self, ticks: u64, n: u32, weight: u32) {
        // A batch of one, the common case of a graph in lockstep, needs no division.
        let each = if n == 1 { ticks } else { ticks / u64::from(n) };
        let slot = &self.counts[bucket(each)];
        slot.store(slot.load(Ordering::Relaxed).saturating_add(n.saturating_mul(weight)), Ordering::Relaxed);
    }

    /// The values at `quantiles` (each in 0..=1, ascending), in ticks, none above `max`.
    fn quantiles<const N: usize>(&self, quantiles: [f64; N], max: u64) -> [u64; N] {
        let counts: Vec<u64> = self.counts.iter().map(|c| u64::from(c.load(Ordering::Relaxed))).collect();
        let total: u64 = counts.iter().sum();
        let mut out = [0; N];
        if total == 0 {
            return out;
        }
        let mut seen = 0;
        let mut next = 0;
        for (index, &count) in counts.iter().enumerate() {
            seen += count;
            // The smallest value with at least this share of the messages at or below it.
            while next < N && seen as f64 >= quantiles[next] * total as f64 && seen > 0 {
                out[next] = upper(index).min(max);
                next += 1;
            }
        }
        for value in &mut out[next..] {
            *value = max;
        }
        out
    }

    /// The median, 90th and 99th percentiles, none above `max` ticks; `to_duration` converts
    /// ticks.
    pub(crate) fn latency(&self, max: u64, to_duration: impl Fn(u64) -> Duration) -> Latency {
        let [p50, p90, p99] = self.quantiles([0.5, 0.9, 0.99], max);
        Latency { p50: to_duration(p50), p90: to_duration(p90), p99: to_duration(p99) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_upper_end_is_within_a_quarter() {
        for ticks in (0..20_000u64).chain([1 << 30, (1 << 30) + 12_345, (1 << 41) + 7, u64::MAX / 3]) {
            let index = bucket(ticks);
            assert!(upper(index) >= ticks, "{ticks} above its bucket {index}");
            if (1 << LOW..1 << HIGH).contains(&ticks) {
                assert!(upper(index) as f64 <= ticks as f64 * 1.25 + 1.0, "{ticks}: {}", upper(index));
                assert!(index == 0 || upper(index - 1) < ticks, "{ticks} belongs lower than {index}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_known_mix() {
        let histogram = Histogram::new();
        // 900 messages of 1,000 ticks, 90 of 10,000 and 10 of 1,000,000.
        histogram.record(1_000 * 100, 100, 9);
        histogram.record(10_000 * 90, 90, 1);
        histogram.record(1_000_000, 1, 1);
        histogram.record(1_000_000 * 9, 9, 1);
        let [p50, p90, p99, p999] = histogram.quantiles([0.5, 0.9, 0.99, 0.999], 1_000_000);
        assert!((1_000..=1_250).contains(&p50), "{p50}");
        assert!((1_000..=1_250).contains(&p90), "{p90}");
        assert!((10_000..=12_500).contains(&p99), "{p99}");
        assert_eq!(p999, 1_000_000, "capped by the maximum");
        assert_eq!(Histogram::new().quantiles([0.5], 5), [0]);
    }
}
