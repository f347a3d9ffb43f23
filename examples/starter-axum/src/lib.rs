//! `starter-axum`: an expense-approval service that owns its HTTP layer and embeds Oris.
//!
//! One Axum app, one process:
//! - `/api/expenses…` — the business API ([`expenses`]), behind its own bearer token, with
//!   its own error shape ([`error`]);
//! - `/oris/v1/…` — the Oris control plane ([`oris::server::Server::router`] nested under
//!   `/oris`), behind Oris API keys, for operators and the `oris` CLI
//!   (`--url http://HOST/oris`);
//! - `/healthz` — public;
//! - the embedded worker pool ([`oris::server::Server::run_workers`]) executing the
//!   approval runs ([`graph`]).
//!
//! [`serve`] runs it all until a shutdown signal, then stops gracefully: no new
//! connections, in-flight requests answered, running nodes finished and committed, leases
//! of unfinished runs released (the next start continues them).

pub mod error;
pub mod expenses;
pub mod graph;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use oris::server::Server;
use tokio_util::sync::CancellationToken;

use crate::telemetry::BearerToken;

/// What the business handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The embedded Oris server (its engine records and reads runs).
    pub server: Server,
    /// Cancelled when the service shuts down.
    pub stop: CancellationToken,
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The business API's bearer token.
    pub api_token: String,
    /// The Oris admin token to provision (`oris_<key_id>_<secret>`); without it the first
    /// start creates one ([`Service::bootstrap_token`]).
    pub oris_admin_token: Option<String>,
    /// How long the policy service takes (the `route` node's recorded step).
    pub policy_latency: Duration,
    /// How long a shutdown waits for running nodes and open requests.
    pub shutdown_grace: Duration,
    /// Executions at once in the embedded pool.
    pub workers: usize,
}

/// The service, built and ready to serve.
#[derive(Debug)]
pub struct Service {
    server: Server,
    api_token: BearerToken,
    grace: Duration,
}

impl Service {
    /// Opens the database (`sqlite://FILE` or `postgres://…`; the schema is created or
    /// migrated) and registers the approval graph on an Oris server over it.
    ///
    /// # Errors
    /// The database cannot be opened, a malformed admin token, an empty API token.
    pub async fn build(db: &str, config: Config) -> anyhow::Result<Service> {
        anyhow::ensure!(
            !config.api_token.trim().is_empty(),
            "the business API token must not be empty"
        );
        // On PostgreSQL with its change notifications as wake-ups, so that with several
        // replicas on one database a run made ready by another replica (an expense approved
        // there, a lease released by one shutting down) starts here within milliseconds.
        let (store, wakes) = oris::server::open_store(db).await?;
        let mut builder = Server::builder()
            .store(store)
            .graph(graph::expense_approval(config.policy_latency)?)
            .workers(config.workers)
            .shutdown_grace(config.shutdown_grace);
        if let Some(w) = wakes {
            builder = builder.wake_on(w);
        }
        if let Some(t) = config.oris_admin_token {
            builder = builder.admin_token(t);
        }
        Ok(Service {
            server: builder.build().await?,
            api_token: BearerToken(Arc::from(config.api_token.trim())),
            grace: config.shutdown_grace,
        })
    }

    /// The Oris admin token created at this start (first start, none configured).
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.server.bootstrap_token()
    }

    /// The whole app: business routes, `/healthz`, the control plane under `/oris`.
    pub fn router(&self, stop: CancellationToken) -> Router {
        let state = AppState {
            server: self.server.clone(),
            stop,
        };
        let business = Router::new()
            .route("/api/expenses", post(expenses::create))
            .route("/api/expenses/{id}", get(expenses::show))
            .route("/api/expenses/{id}/approve", post(expenses::approve))
            .route("/api/expenses/{id}/reject", post(expenses::reject))
            .route_layer(axum::middleware::from_fn_with_state(
                self.api_token.clone(),
                telemetry::require_bearer,
            ))
            .with_state(state)
            .fallback(expenses::not_found)
            .layer(axum::middleware::from_fn(telemetry::request_span));
        Router::new()
            .route("/healthz", get(healthz))
            .merge(business)
            // `/oris/v1/jobs`, `/oris/v1/interrupts`, … with Oris API keys; its own
            // `/oris/healthz`, `/oris/readyz`, `/oris/metrics` are public.
            .nest("/oris", self.server.router())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops gracefully (see the
    /// crate docs). At most the shutdown grace is spent waiting for open HTTP connections.
    ///
    /// # Errors
    /// Serving HTTP failed.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let watcher = tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight requests and nodes");
                stop.cancel();
            }
        });
        let app = self
            .router(stop.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let http =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let grace = self.grace;
        let http = async {
            let drained = {
                let stop = stop.clone();
                async move {
                    stop.cancelled().await;
                    tokio::time::sleep(grace).await;
                }
            };
            tokio::select! {
                r = http => r,
                _ = drained => {
                    tracing::warn!("grace period over: open HTTP connections dropped");
                    Ok(())
                }
            }
        };
        // The pool stops when `stop` is cancelled: running nodes finish (within the grace)
        // and commit, unfinished runs' leases are released.
        let workers = self.server.run_workers(stop.clone().cancelled_owned());
        let (h, w) = tokio::join!(http, workers);
        watcher.abort();
        h?;
        w?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}
