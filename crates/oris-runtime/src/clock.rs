//! The clock durable timers read: the system clock, or a manual one tests advance.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use oris_core::id::Timestamp;
use tokio::sync::Notify;

use crate::node::BoxFuture;

/// Time as durable timers see it (`ctx.sleep`, wait deadlines, waking waiting runs).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Completes at or after `at`.
    fn sleep_until(&self, at: Timestamp) -> BoxFuture<()>;
}

/// The wall clock, with Tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<()> {
        let left = at.0.saturating_sub(Timestamp::now().0).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(left)))
    }
}

/// A clock that only moves when told to: tests advance it instead of sleeping.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: AtomicI64::new(start.0),
                moved: Notify::new(),
            }),
        }
    }

    /// Moves the clock forward and wakes every sleeper whose time has come.
    pub fn advance(&self, by: Duration) {
        self.inner
            .now
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.inner.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                if inner.now.load(Ordering::SeqCst) >= at.0 {
                    return;
                }
                moved.await;
            }
        })
    }
}
