//! Messages handled over the last second, per entity: a ring of quarter-second buckets that the
//! agent writes once per batch of messages (a store), and a reader sums.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many buckets the ring keeps: more than the window spans, so that a reader never sums a
/// bucket the agent is reusing.
const SLOTS: usize = 8;
/// The window: this many buckets, the current one partly.
const WINDOW: u64 = 4;

struct Slot {
    bucket: AtomicU64,
    count: AtomicU64,
}

/// The counts of the last few quarter-seconds.
pub(crate) struct Window {
    slots: [Slot; SLOTS],
    /// Clock ticks in a bucket (a quarter of a second).
    ticks_per_bucket: u64,
}

impl Window {
    pub(crate) fn new(ticks_per_second: u64) -> Self {
        Window {
            slots: std::array::from_fn(|_| Slot { bucket: AtomicU64::new(u64::MAX), count: AtomicU64::new(0) }),
            ticks_per_bucket: (ticks_per_second / WINDOW).max(1),
        }
    }

    /// The bucket of the raw clock reading `now`.
    #[inline]
    pub(crate) fn bucket(&self, now: u64) -> u64 {
        now / self.ticks_per_bucket
    }

    /// Sets the count of messages handled in `bucket` so far. Only the entity's agent writes.
    #[inline]
    pub(crate) fn note(&self, bucket: u64, count: u64) {
        let slot = &self.slots[(bucket % SLOTS as u64) as usize];
        slot.count.store(count, Ordering::Relaxed);
        slot.bucket.store(bucket, Ordering::Release);
    }

    /// Messages handled per second over the last second, as of the raw clock reading `now`.
    pub(crate) fn per_second(&self, now: u64) -> u64 {
        let current = self.bucket(now);
        let first = current.saturating_sub(WINDOW - 1);
        let handled: u64 = self
            .slots
            .iter()
            .filter(|slot| (first..=current).contains(&slot.bucket.load(Ordering::Acquire)))
            .map(|slot| slot.count.load(Ordering::Relaxed))
            .sum();
        // The full buckets before the current one, and what has passed of it.
        let span = (current - first) * self.ticks_per_bucket + (now - current * self.ticks_per_bucket);
        let ticks_per_second = self.ticks_per_bucket * WINDOW;
        (handled as u128 * ticks_per_second as u128 / span.max(1) as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_second_only() {
        // A clock of 1,000 ticks a second: buckets of 250.
        let w = Window::new(1_000);
        w.note(0, 100);
        w.note(1, 100);
        w.note(2, 100);
        w.note(3, 100);
        // At the end of bucket 3, a second of 400 messages.
        assert_eq!(w.per_second(999), 400);
        // Two seconds later, with nothing handled since: none.
        assert_eq!(w.per_second(2_999), 0);
        // Half a second into bucket 9 after 50 in bucket 8 and 50 in 9: 100 over 0.75 + 0.125 s.
        w.note(8, 50);
        w.note(9, 50);
        assert_eq!(w.per_second(9 * 250 + 125), 100 * 1_000 / 875);
    }
}
