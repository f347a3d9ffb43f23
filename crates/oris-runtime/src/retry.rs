//! Per-node retry policies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::node::NodeError;

type RetryFilter = Arc<dyn Fn(&NodeError) -> bool + Send + Sync>;

/// How often and how fast a failing node is tried again.
///
/// The delay before attempt `n + 1` is `initial_interval × backoff_factor^(n-1)`, capped at
/// `max_interval`; with `jitter` it is drawn uniformly from `[delay/2, delay]` so that
/// many failing runs do not retry in lockstep. Only errors that are
/// [retryable](NodeError::is_retryable) and pass the optional filter are retried.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retry). Default 1.
    pub max_attempts: u32,
    /// Delay before the second attempt. Default 200 ms.
    pub initial_interval: Duration,
    /// Multiplier per further attempt. Default 2.0.
    pub backoff_factor: f64,
    /// Upper bound of a delay. Default 30 s.
    pub max_interval: Duration,
    /// Randomise delays. Default true.
    pub jitter: bool,
    retry_on: Option<RetryFilter>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_interval: Duration::from_millis(200),
            backoff_factor: 2.0,
            max_interval: Duration::from_secs(30),
            jitter: true,
            retry_on: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_interval", &self.initial_interval)
            .field("backoff_factor", &self.backoff_factor)
            .field("max_interval", &self.max_interval)
            .field("jitter", &self.jitter)
            .field("retry_on", &self.retry_on.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self::default()
    }

    /// Exponential backoff with jitter, `max_attempts` in total.
    pub fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// Sets the first delay.
    pub fn initial_interval(mut self, d: Duration) -> Self {
        self.initial_interval = d;
        self
    }

    /// Sets the growth factor.
    pub fn backoff_factor(mut self, f: f64) -> Self {
        self.backoff_factor = f.max(1.0);
        self
    }

    /// Caps every delay.
    pub fn max_interval(mut self, d: Duration) -> Self {
        self.max_interval = d;
        self
    }

    /// Turns jitter on or off.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Retries only errors for which `filter` returns true.
    pub fn retry_on(mut self, filter: impl Fn(&NodeError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_on = Some(Arc::new(filter));
        self
    }

    /// Whether attempt `attempt` (from 1) that failed with `error` gets another try.
    pub fn should_retry(&self, error: &NodeError, attempt: u32) -> bool {
        attempt < self.max_attempts
            && error.is_retryable()
            && self.retry_on.as_ref().is_none_or(|f| f(error))
    }

    /// The delay after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_factor
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_interval.as_secs_f64() * exp).min(self.max_interval.as_secs_f64());
        let d = Duration::from_secs_f64(secs.max(0.0));
        if self.jitter && !d.is_zero() {
            d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
        } else {
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::exponential(10)
            .initial_interval(Duration::from_millis(100))
            .max_interval(Duration::from_millis(500))
            .jitter(false);
        let d: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_in_range() {
        let p = RetryPolicy::exponential(3).initial_interval(Duration::from_millis(100));
        for _ in 0..100 {
            let d = p.delay(1).as_millis();
            assert!((50..=100).contains(&d), "{d}");
        }
    }

    #[test]
    fn retry_decision() {
        let p = RetryPolicy::exponential(3).retry_on(|e| e.message().contains("flaky"));
        assert!(p.should_retry(&NodeError::new("flaky net"), 1));
        assert!(p.should_retry(&NodeError::new("flaky net"), 2));
        assert!(!p.should_retry(&NodeError::new("flaky net"), 3));
        assert!(!p.should_retry(&NodeError::new("bad input"), 1));
        assert!(!p.should_retry(&NodeError::permanent("flaky but permanent"), 1));
        assert!(!RetryPolicy::none().should_retry(&NodeError::new("x"), 1));
    }
}
