//! Jittered exponential back-off: each pause is drawn between half and all of the current
//! step, and the step doubles up to a cap — so workers that lost the server at the same
//! moment do not come back in lockstep.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Pauses between retries of one operation.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The next pause; `hint` (a server's `Retry-After`) is honoured when longer, up to the
    /// cap.
    pub(crate) fn next(&mut self, hint: Option<Duration>) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter = half.mul_f64(unit_random());
        let pause = half + jitter;
        match hint {
            Some(h) => pause.max(h.min(self.max)),
            None => pause,
        }
    }

    /// After a success: start again from the first step.
    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A random number in [0, 1), from the standard library's randomly keyed hasher (no
/// random-number crate needed for jitter).
pub(crate) fn unit_random() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x6f72_6973);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let bounds = [
            (50, 100),
            (100, 200),
            (200, 400),
            (400, 800),
            (500, 1000),
            (500, 1000),
        ];
        for (lo, hi) in bounds {
            let p = b.next(None);
            assert!(
                p >= Duration::from_millis(lo) && p <= Duration::from_millis(hi),
                "{p:?} not in {lo}..={hi} ms"
            );
        }
        b.reset();
        assert!(b.next(None) <= Duration::from_millis(100));
        // A server's Retry-After is honoured, within the cap.
        assert_eq!(
            b.next(Some(Duration::from_secs(60))),
            Duration::from_millis(1000)
        );
        assert!(b.next(Some(Duration::from_millis(700))) >= Duration::from_millis(700));
    }

    #[test]
    fn jitter_varies() {
        let draws: std::collections::BTreeSet<u64> =
            (0..32).map(|_| (unit_random() * 1e9) as u64).collect();
        assert!(draws.len() > 16, "{draws:?}");
        assert!(draws.iter().all(|d| *d < 1_000_000_000));
    }
}
