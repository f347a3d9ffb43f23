//! The Oris control-plane server: graphs registered in Rust code, run durably by an embedded
//! worker pool, operated over an HTTP API (axum, JSON, under `/v1`).
//!
//! Execution never happens inside an HTTP request: handlers record intent through the
//! engine (a queued run, a resume value, a cancellation) and return; the embedded worker
//! pool — and remote worker processes speaking the worker protocol (`/v1/workers/…`) —
//! claim ready runs through the store under a lease and execute them. See `docs/api.md` for
//! every route, the roles, the error codes and the idempotency, auth, SSE and wait
//! contracts.
//!
//! # Layout
//! - [`Server`], [`ServerBuilder`], [`Auth`]: configuration, start, graceful shutdown.
//! - `routes`: the route table and one file per resource (`jobs`, `interrupts`, `graphs`,
//!   `admin`, `system`, `stream`).
//! - `guard`: per-route authentication, role check, idempotency and audit.
//! - [`error`]: the error envelope and the one mapping of engine/store errors to codes.
//! - [`wire`]: the JSON shapes.
//! - `pool`: the embedded worker pool. `dispatch`: the one claim path of the pool and of
//!   remote polls (per-graph limits, [`ServerBuilder::graph_limit`]), the lease reaper, the
//!   queued-run count ([`ServerBuilder::max_queued`]). `routes::workers`: the remote worker
//!   protocol; `routes::dlq`: retries history and the dead-letter queue. `hub`: the engine
//!   observer feeding streams, the pool and metrics (remote workers' reports go through it
//!   too). `metrics`: Prometheus. `limits`: load shedding
//!   ([`ServerBuilder::max_in_flight`]) and per-caller rate limits
//!   ([`ServerBuilder::rate_limit`]). `auth`, `idempotency`, `audit`, `request_id`,
//!   `openapi`.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use oris_core::graph::{END, START};
//! use oris_core::store::MemoryStore;
//! use oris_runtime::{NodeError, StateGraph};
//! use oris_server::Server;
//!
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
//! struct Count { n: i64 }
//! impl oris_core::state::State for Count {
//!     type Update = Option<i64>;
//!     fn apply(&mut self, ups: Vec<(&str, Option<i64>)>) -> Result<(), oris_core::state::ReduceError> {
//!         for (_, u) in ups { if let Some(n) = u { self.n = n } }
//!         Ok(())
//!     }
//!     fn into_update(self) -> Option<i64> { Some(self.n) }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = StateGraph::<Count>::new("count", "1")
//!     .node("inc", |s: Count, _ctx| async move { Ok::<_, NodeError>(Some(s.n + 1)) })
//!     .edge(START, "inc")
//!     .edge("inc", END)
//!     .compile()?;
//! let server = Server::builder()
//!     .store(Arc::new(MemoryStore::new()))
//!     .graph(graph)
//!     .build()
//!     .await?;
//! if let Some(token) = server.bootstrap_token() {
//!     println!("admin token: {token}");
//! }
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod audit;
mod auth;
mod dispatch;
pub mod error;
mod guard;
mod hub;
mod idempotency;
mod limits;
mod metrics;
mod openapi;
mod pending;
mod pool;
mod request_id;
mod routes;
mod state;
mod time;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oris_core::id::Timestamp;
use oris_core::state::State;
use oris_core::store::{self, Store};
use oris_runtime::{CompiledGraph, Engine, EngineOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use auth::{Access, Auth, DEFAULT_HASH_KEY, KEY_CACHE_TTL, Role};
pub use error::{ApiError, ErrorCode};
pub use idempotency::{HEADER as IDEMPOTENCY_HEADER, IN_FLIGHT_WAIT, REPLAYED_HEADER};
pub use metrics::{
    CLAIM_WAIT, HTTP_REQUEST_DURATION, HTTP_REQUESTS_REJECTED_TOTAL, HTTP_REQUESTS_TOTAL,
    INTERRUPTS_PENDING, LEASE_LOST_TOTAL, LEASES_EXPIRED_TOTAL, NODE_DURATION, QUEUE_DEPTH,
    RUN_DURATION, RUNS_TOTAL, WORKER_POLLS_TOTAL, WORKER_REPORTS_TOTAL, WORKERS_ACTIVE,
};
pub use openapi::document as openapi_document;
pub use request_id::REQUEST_ID_HEADER;
pub use routes::{RouteSpec, Verb, specs as route_specs};

use crate::auth::{Authenticator, Hasher, Token};
use crate::hub::Hub;
use crate::state::{AppState, Config, Inner};

/// Why the server could not be built or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is missing or wrong.
    #[error("server configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::Error),
    /// Serving HTTP failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

type Registration = Box<dyn FnOnce(&Engine) + Send>;

/// The default of [`ServerBuilder::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The default of [`ServerBuilder::max_streams`].
pub const DEFAULT_MAX_STREAMS: usize = 4096;

/// Configures a [`Server`]. Every setting but the store has a default.
pub struct ServerBuilder {
    store: Option<Arc<dyn Store>>,
    engine_options: EngineOptions,
    graphs: Vec<Registration>,
    schemas: HashMap<(String, String), Value>,
    config: Config,
    auth: Auth,
    admin_token: Option<String>,
    hash_key: Vec<u8>,
    wakes: Vec<pool::WakeSource>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("store", &self.store)
            .field("graphs", &self.graphs.len())
            .field("config", &self.config)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// The store (required).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Engine options (durability, snapshots, limits, clock). An `observer` given here is
    /// called too, besides the server's own.
    pub fn engine_options(mut self, o: EngineOptions) -> Self {
        self.engine_options = o;
        self
    }

    /// Registers a graph version (its input is not described in `GET /v1/graphs/{name}`).
    pub fn graph<S: State>(mut self, g: CompiledGraph<S>) -> Self {
        self.graphs.push(Box::new(move |e: &Engine| {
            e.register(g);
        }));
        self
    }

    /// Registers a graph version whose state type describes itself, so its input JSON
    /// Schema is served.
    pub fn graph_with_schema<S: State + utoipa::ToSchema>(mut self, g: CompiledGraph<S>) -> Self {
        self.schemas.insert(
            (g.name().to_owned(), g.version().to_owned()),
            json_schema::<S>(),
        );
        self.graph(g)
    }

    /// Executions at once in the embedded pool. Default 64; 0 runs no embedded pool: the
    /// server serves the API and remote workers (`/v1/workers/…`; the lease reaper runs
    /// either way), and other processes execute.
    pub fn workers(mut self, concurrency: usize) -> Self {
        self.config.workers = concurrency;
        self
    }

    /// Authentication. Default [`Auth::Keys`].
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Provisions this admin token (`oris_<key_id>_<secret>`) at build: created when its key
    /// id is not in the store yet. Without it, the first start of an empty key store
    /// creates a random admin key ([`Server::bootstrap_token`]).
    pub fn admin_token(mut self, token: String) -> Self {
        self.admin_token = Some(token);
        self
    }

    /// The key of the HMAC that stores API key secrets. Default [`DEFAULT_HASH_KEY`].
    /// Changing it invalidates every stored key.
    pub fn hash_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.hash_key = key.into();
        self
    }

    /// Largest request body in bytes (413 `payload_too_large` above). Default 1 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// How long an idempotency key is remembered. Default 24 h.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.config.idempotency_ttl = ttl;
        self
    }

    /// Lease length and heartbeat of the pool's executions. Default 10 s / 3 s.
    pub fn lease(mut self, ttl: Duration, heartbeat: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self.config.heartbeat = heartbeat;
        self
    }

    /// How often an idle pool looks for runs made ready elsewhere. Default 1 s.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.config.poll_interval = d;
        self
    }

    /// Also wakes the worker pool whenever `signal` yields an item: for runs made ready by
    /// other processes, which the pool otherwise finds only at its next poll
    /// ([`poll_interval`](Self::poll_interval)). Each item asks for a claim; items that
    /// arrive while a claim is under way coalesce into one more claim, so a busy signal
    /// costs at most one claim per claim round trip. The stream is polled while the pool
    /// runs ([`Server::serve`], [`Server::run_workers`]) and dropped when the pool stops or
    /// the stream ends. Call it again to add another source; it has no effect with
    /// `workers(0)`.
    ///
    /// With PostgreSQL, feed it the store's change notifications, so that a run made ready
    /// by another process (created, answered, sent an event, released) starts within
    /// milliseconds: `futures_util::stream::unfold(listener, |mut l| async move {
    /// l.recv().await.map(|_| ((), l)) })` turns the `oris_postgres::Listener` of
    /// `PostgresStore::listen_ready` into such a stream (every `Wake` — `Changed(thread)` or
    /// `Reconnected` — becomes one wake-up; they include this server's own commits, which
    /// cost a claim that usually finds nothing).
    ///
    /// # Example
    /// ```no_run
    /// # use std::sync::Arc;
    /// # async fn run(store: Arc<dyn oris_core::store::Store>) -> Result<(), oris_server::ServerError> {
    /// let (tx, rx) = tokio::sync::mpsc::channel::<()>(16);
    /// let signal = futures_util::stream::unfold(rx, |mut rx| async move {
    ///     rx.recv().await.map(|()| ((), rx))
    /// });
    /// let server = oris_server::Server::builder()
    ///     .store(store)
    ///     .wake_on(signal)
    ///     .build()
    ///     .await?;
    /// // Whatever learns that work became ready elsewhere:
    /// let _ = tx.try_send(());
    /// # Ok(()) }
    /// ```
    pub fn wake_on(
        mut self,
        signal: impl futures_util::Stream<Item = ()> + Send + 'static,
    ) -> Self {
        self.wakes.push(pool::WakeSource(Box::pin(signal)));
        self
    }

    /// Requests handled at once before load shedding. Default [`DEFAULT_MAX_IN_FLIGHT`];
    /// 0 turns shedding off. A request beyond it is answered at once with 503 `overloaded`
    /// and `Retry-After: 1`, before authentication and without touching the store (not
    /// audited; counted in [`HTTP_REQUESTS_REJECTED_TOTAL`] with `reason="overloaded"`).
    /// Never shed: the public routes (`/healthz`, `/readyz`, `/metrics`,
    /// `/v1/openapi.json`). Not counted here: the long-lived ones (`wait` long-polls and SSE
    /// `stream`s, which mostly sleep), limited by [`max_streams`](Self::max_streams).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }

    /// Long-polls (`wait`) and SSE `stream`s open at once. Default [`DEFAULT_MAX_STREAMS`];
    /// 0 turns the limit off. One more is refused like a request beyond
    /// [`max_in_flight`](Self::max_in_flight): 503 `overloaded`, `Retry-After: 1`. A
    /// stream holds its place until its body ends (its run ended, the client went away,
    /// the server shuts down).
    pub fn max_streams(mut self, n: usize) -> Self {
        self.config.max_streams = n;
        self
    }

    /// Limits each caller to `per_second` requests a second with bursts of up to `burst`
    /// (a token bucket per API key id; with [`Auth::Disabled`], per client IP). Off by
    /// default. A call over it is answered with 429 `rate_limited` and `Retry-After` = the
    /// whole seconds until the caller's next token (at least 1); it is not audited and is
    /// counted in [`HTTP_REQUESTS_REJECTED_TOTAL`] with `reason="rate_limited"`. Every
    /// authenticated route counts, long-polls and streams included; the public routes do
    /// not. The buckets live in this process: with several servers on one store, each
    /// limits on its own. Both numbers must be at least 1 ([`ServerBuilder::build`] fails
    /// otherwise).
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.config.rate_limit = Some(limits::Rate { per_second, burst });
        self
    }

    /// At most `n` runs of graph `name` (any version) execute at once — leased by the
    /// embedded pool and remote workers together. Before each claim (the pool's and every
    /// worker poll's) the server reads the store's lease counts and claims runs of `name`
    /// only while fewer than `n` are leased, at most the remaining room. Exact within one
    /// server (its claims of limited graphs are serialized); with several servers on one
    /// store, concurrent claims of different servers may overshoot by up to the number of
    /// runs they claim at the same moment. `n` must be at least 1 ([`ServerBuilder::build`]
    /// fails otherwise). Call again for another graph. Runs that are suspended (interrupted,
    /// waiting) hold no lease and do not count.
    pub fn graph_limit(mut self, name: impl Into<String>, n: usize) -> Self {
        self.config.graph_limits.insert(name.into(), n);
        self
    }

    /// Backpressure: while `n` or more runs are queued (created, not yet claimed),
    /// `POST /v1/jobs` answers 429 `queue_full` with `Retry-After: 1` and records nothing.
    /// The count is read from the store (at most `n` runs) and reused for up to 100 ms, so
    /// a burst may overshoot `n` by the jobs created within that time. Off by default; `n`
    /// must be at least 1.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.config.max_queued = Some(n);
        self
    }

    /// How long a shutdown waits for running node executions. Default 30 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.shutdown_grace = d;
        self
    }

    /// Builds the server: registers the graphs and provisions the bootstrap admin key.
    ///
    /// # Errors
    /// [`ServerError::Config`] without a store, with a malformed admin token or one whose
    /// key id exists with another secret, with a rate limit, a graph limit or `max_queued`
    /// of 0; [`ServerError::Store`].
    pub async fn build(self) -> Result<Server, ServerError> {
        let store = self
            .store
            .ok_or_else(|| ServerError::Config("a store is required".into()))?;
        if self.config.heartbeat >= self.config.lease_ttl {
            return Err(ServerError::Config(
                "the lease heartbeat must be shorter than the lease".into(),
            ));
        }
        if let Some(r) = self.config.rate_limit
            && (r.per_second == 0 || r.burst == 0)
        {
            return Err(ServerError::Config(
                "a rate limit needs at least 1 request per second and a burst of at least 1".into(),
            ));
        }
        if let Some((name, _)) = self.config.graph_limits.iter().find(|(_, n)| **n == 0) {
            return Err(ServerError::Config(format!(
                "the concurrency limit of graph `{name}` must be at least 1"
            )));
        }
        if self.config.max_queued == Some(0) {
            return Err(ServerError::Config("max_queued must be at least 1".into()));
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let mut options = self.engine_options;
        let (hub, ended) = Hub::new(metrics.clone(), options.observer.take());
        let hub = Arc::new(hub);
        options.observer = Some(hub.clone());
        let engine = Engine::with_options(store.clone(), options);
        for register in self.graphs {
            register(&engine);
        }
        let auth = Authenticator::new(self.auth, Hasher::new(&self.hash_key), store.clone());
        let bootstrap = bootstrap(&auth, store.as_ref(), self.admin_token).await?;
        let inner = Inner::new(
            engine,
            self.config,
            auth,
            hub,
            metrics,
            self.schemas,
            oris_core::protocol::default_worker_id(),
            ended,
            self.wakes,
        );
        if self.auth == Auth::Disabled {
            warn_no_auth();
        }
        Ok(Server {
            inner: Arc::new(inner),
            bootstrap_token: bootstrap.map(Arc::from),
        })
    }
}

fn warn_no_auth() {
    tracing::warn!(
        "AUTHENTICATION IS DISABLED: every caller is an admin. Use this for local development only."
    );
}

/// Provisions the admin key; returns the token when it was generated here.
async fn bootstrap(
    auth: &Authenticator,
    store: &dyn Store,
    admin_token: Option<String>,
) -> Result<Option<String>, ServerError> {
    if auth.mode == Auth::Disabled {
        return Ok(None);
    }
    if let Some(text) = admin_token {
        let token = Token::parse(text.trim()).ok_or_else(|| {
            ServerError::Config(
                "the admin token must look like `oris_<key_id>_<secret>`: key id of lowercase \
                 letters and digits, secret of 16–128 letters and digits"
                    .into(),
            )
        })?;
        match store.api_key(&token.key_id).await? {
            None => {
                store
                    .create_api_key(&auth.record(&token, "bootstrap admin", Role::Admin))
                    .await?;
                tracing::info!(key_id = %token.key_id, "admin key provisioned from the configured token");
            }
            Some(r) if !auth.hasher.verify(&token.secret, &r.secret_hash) => {
                return Err(ServerError::Config(format!(
                    "API key `{}` exists with another secret than the configured admin token",
                    token.key_id
                )));
            }
            Some(r) if r.revoked_at.is_some() => {
                tracing::warn!(key_id = %r.key_id, "the configured admin token was revoked; it stays revoked");
            }
            Some(_) => {}
        }
        return Ok(None);
    }
    if !store.api_keys().await?.is_empty() {
        return Ok(None);
    }
    let token = Token::generate();
    store
        .create_api_key(&auth.record(&token, "bootstrap admin", Role::Admin))
        .await?;
    tracing::info!(key_id = %token.key_id, "no API keys yet: created a bootstrap admin key");
    Ok(Some(token.render()))
}

/// The JSON Schema of `S` (draft 2020-12), with referenced types under `$defs`.
fn json_schema<S: utoipa::ToSchema>() -> Value {
    let mut defs = Vec::new();
    S::schemas(&mut defs);
    let mut root = serde_json::to_value(S::schema()).unwrap_or(Value::Null);
    let mut map = serde_json::Map::new();
    for (name, s) in defs {
        map.insert(name, serde_json::to_value(s).unwrap_or(Value::Null));
    }
    fn rewrite(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/components/schemas/")
                {
                    *r = format!("#/$defs/{name}");
                }
                m.values_mut().for_each(rewrite);
            }
            Value::Array(a) => a.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut defs = Value::Object(map);
    rewrite(&mut root);
    rewrite(&mut defs);
    if let Value::Object(m) = &mut root {
        m.insert(
            "$schema".into(),
            Value::String("https://json-schema.org/draft/2020-12/schema".into()),
        );
        if defs.as_object().is_some_and(|d| !d.is_empty()) {
            m.insert("$defs".into(), defs);
        }
    }
    root
}

/// A configured server. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Server {
    inner: AppState,
    bootstrap_token: Option<Arc<str>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("worker_id", &self.inner.worker_id)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            store: None,
            engine_options: EngineOptions::default(),
            graphs: Vec::new(),
            schemas: HashMap::new(),
            config: Config {
                workers: 64,
                body_limit: 1024 * 1024,
                idempotency_ttl: Duration::from_secs(24 * 3600),
                lease_ttl: Duration::from_secs(10),
                heartbeat: Duration::from_secs(3),
                poll_interval: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(30),
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                max_streams: DEFAULT_MAX_STREAMS,
                rate_limit: None,
                graph_limits: Default::default(),
                max_queued: None,
            },
            auth: Auth::Keys,
            admin_token: None,
            hash_key: DEFAULT_HASH_KEY.to_vec(),
            wakes: Vec::new(),
        }
    }

    /// The admin token created at this start (first start of an empty key store, no
    /// admin token given): print it once.
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.bootstrap_token.as_deref()
    }

    /// The engine (registered graphs, reads, in-process use). Register graphs through the
    /// builder: the pool claims runs of the versions registered at build.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// This server's worker id (`host-pid-random`).
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The HTTP app, with state applied: mount it under a prefix with
    /// `Router::nest("/prefix", server.router())` in an embedding service (and run
    /// [`Server::run_workers`] beside it).
    pub fn router(&self) -> axum::Router {
        routes::router(self.inner.clone())
    }

    /// Runs the worker pool and the server's background tasks (run metrics, idempotency
    /// purge, the lease reaper) until `shutdown` resolves, then stops them gracefully (see [`Server::serve`]).
    /// For embedding the [`Server::router`] in another service; [`Server::serve`] calls it.
    ///
    /// # Errors
    /// None yet; the result leaves room for startup checks.
    pub async fn run_workers(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let stop = self.inner.shutdown.clone();
        let watcher = tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
        let r = self.workers_until(stop).await;
        watcher.abort();
        r
    }

    async fn workers_until(&self, stop: CancellationToken) -> Result<(), ServerError> {
        let app = self.inner.clone();
        let background = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let ended = app.ended.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ended) = ended {
            tasks.spawn(run_metrics(app.clone(), ended, background.clone()));
        }
        tasks.spawn(purge_idempotency(app.clone(), background.clone()));
        // The reaper runs with or without the embedded pool: a server may serve remote
        // workers only.
        tasks.spawn(dispatch::reaper(app.clone(), background.clone()));
        // So does the starter of pending runs (multitask strategy `enqueue`).
        tasks.spawn(pending::starter(app.clone(), background.clone()));
        if app.config.workers > 0 {
            let wakes = std::mem::take(&mut *app.wakes.lock().unwrap_or_else(|e| e.into_inner()));
            for source in wakes {
                tasks.spawn(pool::forward_wakes(
                    app.hub.clone(),
                    source,
                    background.clone(),
                ));
            }
            pool::run(app.clone(), stop).await;
        } else {
            stop.cancelled().await;
        }
        background.cancel();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Serves HTTP on `listener` with the worker pool until `shutdown` resolves. Then it
    /// stops accepting connections, ends streams and long-polls, lets in-flight requests
    /// and node executions finish within the shutdown grace period (committing them),
    /// releases the leases of unfinished runs — so the next start or another worker
    /// continues them — and returns.
    ///
    /// # Errors
    /// [`ServerError::Io`] when serving fails.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        if self.inner.auth.mode == Auth::Disabled {
            warn_no_auth();
        }
        let stop = self.inner.shutdown.clone();
        let watcher = tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                stop.cancel();
            }
        });
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, worker_id = %self.inner.worker_id, "serving");
        }
        let grace = self.inner.config.shutdown_grace;
        let app = self
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let http =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let http = async {
            let drained = {
                let stop = stop.clone();
                async move {
                    stop.cancelled().await;
                    tokio::time::sleep(grace).await;
                }
            };
            tokio::select! {
                r = http => r.map_err(ServerError::Io),
                _ = drained => {
                    tracing::warn!("grace period over: open HTTP connections dropped");
                    Ok(())
                }
            }
        };
        let (h, w) = tokio::join!(http, self.workers_until(stop.clone()));
        watcher.abort();
        h?;
        w?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Records `runs_total` and `run_duration_seconds` for runs that ended in this process but
/// that the hub did not see start (created and claimed elsewhere): from their stored record.
async fn run_metrics(
    app: AppState,
    mut ended: tokio::sync::mpsc::UnboundedReceiver<oris_core::id::RunId>,
    stop: CancellationToken,
) {
    loop {
        let id = tokio::select! {
            id = ended.recv() => match id { Some(id) => id, None => return },
            _ = stop.cancelled() => return,
        };
        if let Ok(Some(r)) = app.store.run(id).await
            && r.status.is_terminal()
        {
            let ms = (r.updated_at.as_millis() - r.created_at.as_millis()).max(0);
            app.metrics.run_finished(
                &r.graph,
                r.status.kind().as_str(),
                Duration::from_millis(ms as u64),
            );
        }
    }
}

/// Deletes expired idempotency records, hourly.
async fn purge_idempotency(app: AppState, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        match app.store.purge_idempotency(Timestamp::now()).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed"),
        }
    }
}
