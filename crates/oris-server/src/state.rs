//! What every handler shares.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oris_core::id::RunId;
use oris_core::store::Store;
use oris_runtime::Engine;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::dispatch::Dispatch;
use crate::hub::Hub;
use crate::limits::{InFlight, Rate, RateLimiter};
use crate::metrics::Metrics;
use crate::pool::WakeSource;

pub(crate) type AppState = Arc<Inner>;

/// Settings, with the builder's defaults.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub workers: usize,
    pub body_limit: usize,
    pub idempotency_ttl: Duration,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    /// Requests handled at once before shedding (0: no limit).
    pub max_in_flight: usize,
    /// Long-polls and streams open at once before shedding (0: no limit).
    pub max_streams: usize,
    /// Per-caller rate limit, off when `None`.
    pub rate_limit: Option<Rate>,
    /// Most runs of a graph (by name) leased at once, across the embedded pool and remote
    /// workers; graphs not named here have no limit.
    pub graph_limits: BTreeMap<String, usize>,
    /// `POST /v1/jobs` is refused (429 `queue_full`) while this many runs are queued.
    pub max_queued: Option<usize>,
}

/// The worker pool's state, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PoolState {
    NotStarted = 0,
    Running = 1,
    Stopped = 2,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// JSON Schema of the input of graph versions registered with one.
    pub schemas: HashMap<(String, String), Value>,
    /// Signalled whenever an idempotent request finished here (waiting duplicates re-check).
    pub idempotency_done: Notify,
    /// Cancelled when the server shuts down: streams and long-polls end.
    pub shutdown: CancellationToken,
    pub worker_id: String,
    /// The (graph, version) pairs registered at build: what the pool claims, what this
    /// server can continue. Read once, since describing a graph renders its diagram.
    pub graph_versions: Vec<(String, String)>,
    pool: AtomicU8,
    /// Ids of runs that ended (from the hub), taken by the metrics task.
    pub ended: Mutex<Option<mpsc::UnboundedReceiver<RunId>>>,
    /// External wake-up sources of the pool, taken when the pool starts.
    pub wakes: Mutex<Vec<WakeSource>>,
    /// The requests being handled (load shedding).
    pub in_flight: InFlight,
    /// The long-polls and streams open (load shedding).
    pub streams: InFlight,
    /// Per-caller token buckets, when rate limits are on.
    pub rate_limiter: Option<RateLimiter>,
    /// Claims under per-graph limits, lease holders granted here, the queued-run count.
    pub dispatch: Dispatch,
}

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        config: Config,
        auth: Authenticator,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        schemas: HashMap<(String, String), Value>,
        worker_id: String,
        ended: mpsc::UnboundedReceiver<RunId>,
        wakes: Vec<WakeSource>,
    ) -> Self {
        let graph_versions = engine
            .graphs()
            .into_iter()
            .map(|g| (g.name, g.version))
            .collect();
        Inner {
            in_flight: InFlight::new(config.max_in_flight),
            streams: InFlight::new(config.max_streams),
            rate_limiter: config.rate_limit.map(RateLimiter::new),
            dispatch: Dispatch::default(),
            graph_versions,
            store: engine.store().clone(),
            engine,
            config,
            auth,
            hub,
            metrics,
            schemas,
            idempotency_done: Notify::new(),
            shutdown: CancellationToken::new(),
            worker_id,
            pool: AtomicU8::new(PoolState::NotStarted as u8),
            ended: Mutex::new(Some(ended)),
            wakes: Mutex::new(wakes),
        }
    }

    pub fn pool_state(&self) -> PoolState {
        match self.pool.load(Ordering::Acquire) {
            1 => PoolState::Running,
            2 => PoolState::Stopped,
            _ => PoolState::NotStarted,
        }
    }

    pub fn set_pool_state(&self, s: PoolState) {
        self.pool.store(s as u8, Ordering::Release);
    }

    /// Whether this server has the graph version.
    pub fn has_graph(&self, graph: &str, version: &str) -> bool {
        self.graph_versions
            .iter()
            .any(|(g, v)| g == graph && v == version)
    }
}
