//! Overload protection and rate limits, both in memory and per process.
//!
//! - Load shedding ([`InFlight`]): at most `max_in_flight` requests are handled at once;
//!   one beyond that is answered at once with 503 `overloaded` and `Retry-After: 1`, before
//!   authentication, without touching the store (no audit entry: writing under overload
//!   makes it worse). Public routes (`/healthz`, `/readyz`, `/metrics`, the OpenAPI
//!   document) are never shed. The long-lived routes (`wait` long-polls, SSE `stream`s),
//!   which mostly sleep, have their own limit, `max_streams`, held until the long-poll
//!   returns or the stream's body ends; beyond it they are refused the same way.
//! - Rate limits ([`RateLimiter`]): a token bucket per caller (the API key id; with
//!   authentication disabled, the client IP, or `anonymous` when the app is served without
//!   connection info), refilled at `per_second` up to `burst`. A call finding the bucket
//!   empty is answered with 429 `rate_limited` and `Retry-After` = whole seconds until a
//!   token is available (at least 1). Not audited either. With several servers on one
//!   store, each server limits on its own: a caller spread over N servers gets up to N
//!   times the rate.
//!
//! Both rejections are counted in `http_requests_rejected_total{reason, route}` and logged
//! at debug level.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often idle buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Counts the requests being handled.
#[derive(Debug)]
pub(crate) struct InFlight {
    max: usize,
    now: Arc<AtomicUsize>,
}

/// One counted request; leaves when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// At most `max` at once; 0 means no limit.
    pub fn new(max: usize) -> Self {
        InFlight {
            max,
            now: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A slot, or `None` when `max` requests are already in flight.
    pub fn enter(&self) -> Option<Slot> {
        let before = self.now.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.now.clone());
        if self.max > 0 && before >= self.max {
            drop(slot);
            return None;
        }
        Some(slot)
    }
}

/// The rate-limit setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    swept: Instant,
}

/// Token buckets by caller.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate: f64::from(rate.per_second),
            burst: f64::from(rate.burst),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Takes a token of `who`'s bucket at `now`; when it is empty, the whole seconds until
    /// one is available (at least 1).
    pub fn take(&self, who: &str, now: Instant) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(b.swept) >= SWEEP_EVERY {
            b.swept = now;
            let (rate, burst) = (self.rate, self.burst);
            // A bucket that has refilled is the same as no bucket.
            b.map.retain(|_, k| refilled(k, now, rate, burst) < burst);
        }
        let burst = self.burst;
        let bucket = b.map.entry(who.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.rate, self.burst);
        bucket.at = now.max(bucket.at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.rate;
        Err((wait.ceil() as u64).max(1))
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

fn refilled(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_admits_up_to_max_and_frees_on_drop() {
        let f = InFlight::new(2);
        let a = f.enter().expect("first");
        let b = f.enter().expect("second");
        assert!(f.enter().is_none(), "a third is refused");
        drop(a);
        let c = f.enter().expect("a slot was freed");
        assert!(f.enter().is_none());
        drop((b, c));
        assert_eq!(f.now.load(Ordering::Acquire), 0, "refusals leave no count");
        let unlimited = InFlight::new(0);
        let held: Vec<_> = (0..5000).map(|_| unlimited.enter().unwrap()).collect();
        assert_eq!(held.len(), 5000);
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(Rate {
            per_second: 2,
            burst: 2,
        });
        let t0 = Instant::now();
        assert_eq!(l.take("a", t0), Ok(()));
        assert_eq!(l.take("a", t0), Ok(()));
        assert_eq!(l.take("a", t0), Err(1), "empty: a token in 0.5 s → 1");
        assert_eq!(l.take("b", t0), Ok(()), "another caller has its own bucket");
        assert_eq!(l.take("a", t0 + Duration::from_millis(400)), Err(1));
        assert_eq!(l.take("a", t0 + Duration::from_millis(500)), Ok(()));
        assert_eq!(l.take("a", t0 + Duration::from_millis(500)), Err(1));
        // Long idle: refilled to the burst, not beyond.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(l.take("a", later), Ok(()));
        assert_eq!(l.take("a", later), Ok(()));
        assert!(l.take("a", later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_the_wait() {
        let l = RateLimiter::new(Rate {
            per_second: 1,
            burst: 1,
        });
        let t0 = Instant::now();
        assert_eq!(l.take("a", t0), Ok(()));
        assert_eq!(l.take("a", t0), Err(1));
        let slow = RateLimiter::new(Rate {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            slow.take("a", t0).unwrap();
        }
        assert_eq!(slow.take("a", t0 + Duration::from_millis(100)), Err(1));
        // 0.1 token after 100 ms at 1/s: 0.9 s to go, said as 1.
        assert_eq!(slow.take("a", t0 + Duration::from_millis(1100)), Ok(()));
        assert_eq!(slow.take("a", t0 + Duration::from_millis(1100)), Err(1));
    }

    #[test]
    fn full_buckets_are_swept() {
        let l = RateLimiter::new(Rate {
            per_second: 10,
            burst: 5,
        });
        let t0 = Instant::now();
        for i in 0..100 {
            l.take(&format!("k{i}"), t0).unwrap();
        }
        assert_eq!(l.buckets(), 100);
        // After the sweep interval every bucket has refilled: all dropped but the caller's.
        l.take("busy", t0 + SWEEP_EVERY + Duration::from_secs(1))
            .unwrap();
        assert_eq!(l.buckets(), 1);
    }
}
