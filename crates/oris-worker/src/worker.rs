//! [`Worker`]: the poll loop and the execution of each attempt.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::Timestamp;
use oris_core::protocol::{
    Ack, AckOutcome, Attempt, GraphRef, Heartbeat, PROTOCOL_VERSION, PollRequest, PollResponse,
    is_valid_worker_id,
};
use oris_core::state::State;
use oris_core::store::Fence;
use oris_runtime::{CompiledGraph, Engine, EngineOptions, LeaseOptions, Stop};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::client::{CallError, Client};
use crate::error::Error;
use crate::remote::{Copies, RemoteStore};

/// First pause after a failed poll.
const POLL_RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest pause between failed polls.
const POLL_RETRY_MAX: Duration = Duration::from_secs(5);
/// Most attempts a worker executes at once (the server's limit too).
pub const MAX_CAPACITY: u32 = 1024;

type Registration = Box<dyn FnOnce(&Engine) + Send>;

/// Settings of a [`Worker`]; see [`Worker::builder`].
pub struct WorkerBuilder {
    server: String,
    token: Option<String>,
    worker_id: Option<String>,
    capacity: u32,
    lease_wait: Duration,
    shutdown_grace: Duration,
    call_timeout: Duration,
    ca_certs: Vec<Vec<u8>>,
    engine_options: EngineOptions,
    graphs: Vec<GraphRef>,
    registrations: Vec<Registration>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("worker_id", &self.worker_id)
            .field("capacity", &self.capacity)
            .field("lease_wait", &self.lease_wait)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("call_timeout", &self.call_timeout)
            .field("ca_certs", &self.ca_certs.len())
            .field("graphs", &self.graphs)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The API key (role `worker`, or `admin`) sent as `Authorization: Bearer`. Without one
    /// the server must run with authentication off.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The worker's identity: 1–128 characters of `[A-Za-z0-9._:-]`, unique among live
    /// workers (it names the lease holder). Default `host-pid-random`.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// How many attempts it executes at once, 1–1024. Default 4.
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = n;
        self
    }

    /// A graph version it executes. Runs are dispatched only to workers registered for
    /// their exact version; register every version whose runs may still be unfinished.
    pub fn graph<S: State>(mut self, graph: CompiledGraph<S>) -> Self {
        self.graphs.push(GraphRef {
            name: graph.name().to_owned(),
            version: graph.version().to_owned(),
        });
        self.registrations.push(Box::new(move |engine: &Engine| {
            engine.register(graph);
        }));
        self
    }

    /// How long one poll may wait on the server when nothing is ready (a long-poll; work
    /// that becomes ready meanwhile is answered at once). Also capped at half the server's
    /// lease TTL. Default 10 s.
    pub fn lease_wait(mut self, d: Duration) -> Self {
        self.lease_wait = d;
        self
    }

    /// How long a graceful shutdown lets running node attempts finish before the executions
    /// are dropped and their leases handed back. Default 30 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Time limit of one request (report, heartbeat, ack; a poll gets its wait on top).
    /// Default 10 s.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// CA certificates (a PEM bundle: one or more `-----BEGIN CERTIFICATE-----` blocks) to
    /// trust for an `https://` server besides the built-in Mozilla roots — a server whose
    /// certificate a private CA signed. Repeatable; each bundle adds its certificates.
    pub fn ca_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certs.push(pem.into());
        self
    }

    /// Options of the worker's engine: snapshot frequency, observer, clock. Its
    /// durability setting does not matter here: a report is durable when the server answers.
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine_options = options;
        self
    }

    /// Checks the settings and builds the worker (nothing is sent yet).
    ///
    /// # Errors
    /// [`Error::Config`]: a server URL that is not `http://…` or `https://…`, an invalid
    /// worker id, a capacity outside 1–1024, no graph, the same graph version twice, or a
    /// [`ca_cert`](Self::ca_cert) that holds no PEM certificate.
    pub fn build(self) -> Result<Worker, Error> {
        let server = self.server.trim().trim_end_matches('/').to_owned();
        let rest = server
            .strip_prefix("http://")
            .or_else(|| server.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "`{server}` is not a server URL (http://HOST:PORT or https://HOST)"
            )));
        }
        let worker_id = match self.worker_id {
            Some(id) => id,
            None => oris_core::protocol::default_worker_id(),
        };
        check_worker_id(&worker_id)?;
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(Error::Config(format!(
                "capacity {} is outside 1–{MAX_CAPACITY}",
                self.capacity
            )));
        }
        if self.graphs.is_empty() {
            return Err(Error::Config(
                "a worker needs at least one graph (WorkerBuilder::graph)".into(),
            ));
        }
        for (i, g) in self.graphs.iter().enumerate() {
            if self.graphs[..i].contains(g) {
                return Err(Error::Config(format!(
                    "graph `{}` version `{}` is registered twice",
                    g.name, g.version
                )));
            }
        }
        let roots = crate::client::root_certificates(&self.ca_certs).map_err(Error::Config)?;
        let client = Client::with_roots(
            &server,
            self.token,
            worker_id.clone(),
            self.call_timeout,
            roots,
        )
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let client = Arc::new(client);
        let store = Arc::new(RemoteStore::new(client.clone()));
        let engine = Engine::with_options(store.clone(), self.engine_options);
        for register in self.registrations {
            register(&engine);
        }
        Ok(Worker {
            shared: Arc::new(Shared {
                client,
                store,
                engine,
                copies: Arc::default(),
                worker_id,
                graphs: self.graphs,
                capacity: self.capacity,
                lease_wait: self.lease_wait,
                shutdown_grace: self.shutdown_grace,
            }),
        })
    }
}

/// A remote worker: polls an Oris server for attempts of its graphs and executes them under
/// the server's leases. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Arc<Client>,
    store: Arc<RemoteStore>,
    engine: Engine,
    copies: Arc<Copies>,
    worker_id: String,
    graphs: Vec<GraphRef>,
    capacity: u32,
    lease_wait: Duration,
    shutdown_grace: Duration,
}

/// The lease settings the server announced.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    heartbeat: Duration,
}

impl Worker {
    /// Settings for a worker of the server at `server_url` (`http://HOST:PORT`).
    pub fn builder(server_url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            server: server_url.into(),
            token: None,
            worker_id: None,
            capacity: 4,
            lease_wait: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            ca_certs: Vec::new(),
            engine_options: EngineOptions::default(),
            graphs: Vec::new(),
            registrations: Vec::new(),
        }
    }

    /// The worker's identity (the lease holder's name).
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The graph versions it executes.
    pub fn graphs(&self) -> &[GraphRef] {
        &self.shared.graphs
    }

    /// Polls and executes until `shutdown` is cancelled, then shuts down gracefully: no new
    /// poll; running executions start no new node attempt, let the running ones finish and
    /// report them, and hand their runs back (claimable at once by another worker); after
    /// `shutdown_grace` whatever still runs is dropped and its lease handed back; the server
    /// is told the worker stopped (`POST /v1/workers/{id}/stop`); then this returns.
    ///
    /// The server being unreachable or overloaded is not an error: polls back off (jittered,
    /// up to 5 s) and executions keep going while their leases last.
    ///
    /// Cancel safety: dropping the future drops every execution like a crash would (no
    /// report, no release): their leases expire and other workers continue the runs from
    /// their last reported step. A poll cut short by `shutdown` may have claimed runs
    /// whose answer never arrived; their leases expire the same way.
    ///
    /// # Errors
    /// [`Error::Refused`] when the server refuses the worker for good (credentials, role,
    /// protocol version, invalid poll); running executions are shut down gracefully first.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let span = tracing::info_span!("worker", worker_id = %self.shared.worker_id);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = &self.shared;
        tracing::info!(server = %shared.client.base(), capacity = shared.capacity, graphs = ?shared.graphs, "worker started");
        let exec_stop = CancellationToken::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut lease: Option<Lease> = None;
        let mut idle_beat: Option<AbortOnDropHandle<()>> = None;
        let mut backoff = Backoff::new(POLL_RETRY_FIRST, POLL_RETRY_MAX);
        let capacity = shared.capacity as usize;
        let result = loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let free = capacity.saturating_sub(tasks.len());
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tasks.join_next() => continue,
                }
            }
            // The first poll answers at once and tells the lease settings; later ones wait
            // on the server up to half the lease TTL.
            let wait = lease.map_or(Duration::ZERO, |l| shared.lease_wait.min(l.ttl / 2));
            let request = PollRequest {
                worker_id: shared.worker_id.clone(),
                protocol: PROTOCOL_VERSION,
                graphs: shared.graphs.clone(),
                capacity: shared.capacity,
                max: free as u32,
                wait_ms: wait.as_millis() as u64,
            };
            let sent = Instant::now();
            let answer = tokio::select! {
                a = shared.client.poll(&request) => a,
                _ = shutdown.cancelled() => break Ok(()),
            };
            let resp = match answer {
                Ok(resp) => resp,
                Err(e) if e.is_transient() => {
                    let pause = backoff.next(e.retry_after());
                    tracing::warn!(url = %format!("{}/v1/workers/poll", shared.client.base()), error = %e, retry_in = ?pause, "poll failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
                Err(e) => break Err(refused(shared, &e)),
            };
            backoff.reset();
            let l = lease_of(&resp);
            if lease.is_none() {
                tracing::info!(lease_ttl = ?l.ttl, heartbeat = ?l.heartbeat, "registered with the server");
                idle_beat = Some(spawn_idle_heartbeat(shared.client.clone(), l.heartbeat));
            }
            lease = Some(l);
            for attempt in resp.attempts {
                let shared = shared.clone();
                let stop = exec_stop.child_token();
                tasks.spawn(async move { execute(&shared, attempt, l, sent, stop).await });
            }
        };
        // Graceful stop.
        exec_stop.cancel();
        if !tasks.is_empty() {
            tracing::info!(in_flight = tasks.len(), grace = ?shared.shutdown_grace, "worker stopping: letting running nodes finish");
        }
        let drained = tokio::time::timeout(shared.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tasks.shutdown().await;
            let left = shared.store.leases();
            tracing::warn!(
                runs = left.len(),
                "grace period over: executions dropped, leases handed back"
            );
            for fence in left {
                send_ack(
                    shared,
                    fence,
                    AckOutcome::Released,
                    Some("worker shutdown".into()),
                )
                .await;
                shared.store.forget_lease(fence);
            }
        }
        drop(idle_beat);
        if lease.is_some() {
            match shared.client.stop().await {
                Ok(()) => tracing::info!("worker stopped; the server was told"),
                Err(e) => {
                    tracing::warn!(error = %e, "worker stopped; the stop announcement failed")
                }
            }
        }
        result
    }
}

fn lease_of(resp: &PollResponse) -> Lease {
    Lease {
        ttl: Duration::from_millis(resp.lease_ttl_ms.max(1)),
        heartbeat: Duration::from_millis(resp.heartbeat_ms.max(1)),
    }
}

fn refused(shared: &Shared, e: &CallError) -> Error {
    let url = format!("{}/v1/workers/poll", shared.client.base());
    tracing::error!(url = %url, error = %e, "the server refused the worker");
    match e {
        CallError::Refused {
            status,
            code,
            message,
            ..
        } => Error::Refused {
            url,
            status: status.as_u16(),
            code: code.clone(),
            message: message.clone(),
        },
        // Transport errors are transient: never here.
        CallError::Transport(m) => Error::Refused {
            url,
            status: 0,
            code: "transport".into(),
            message: m.clone(),
        },
    }
}

/// Heartbeats without leases while the worker runs: they keep it `active` in
/// `GET /v1/workers` between polls (executions renew their own leases).
fn spawn_idle_heartbeat(client: Arc<Client>, every: Duration) -> AbortOnDropHandle<()> {
    let beat = async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = client.heartbeat(&Heartbeat { leases: Vec::new() }).await {
                tracing::debug!(error = %e, "idle heartbeat failed");
            }
        }
    };
    AbortOnDropHandle::new(tokio::spawn(beat.in_current_span()))
}

/// Executes one attempt: loads the thread's image, runs the engine under the lease, acks.
async fn execute(
    shared: &Arc<Shared>,
    attempt: Attempt,
    lease: Lease,
    sent: Instant,
    stop: CancellationToken,
) {
    let span = tracing::info_span!(
        "attempt",
        worker_id = %shared.worker_id,
        attempt_id = %attempt.attempt_id,
        thread_id = %attempt.run.thread_id,
        run_id = %attempt.run.run_id,
    );
    execute_inner(shared, attempt, lease, sent, stop)
        .instrument(span)
        .await
}

async fn execute_inner(
    shared: &Arc<Shared>,
    attempt: Attempt,
    lease: Lease,
    sent: Instant,
    stop: CancellationToken,
) {
    let fence = attempt.fence;
    let Attempt { mut run, image, .. } = attempt;
    tracing::info!(graph = %run.graph, version = %run.graph_version, "attempt claimed");
    shared.store.hold(fence, sent, lease.ttl);
    let copy = shared
        .copies
        .acquire(shared.store.clone(), run.thread_id.clone());
    if let Err(e) = shared.store.local.load_image(image) {
        tracing::warn!(error = %e, "the thread image does not load; handing the run back");
        send_ack(
            shared,
            fence,
            AckOutcome::Released,
            Some(format!("image: {e}")),
        )
        .await;
        shared.store.forget_lease(fence);
        drop(copy);
        return;
    }
    // The expiry on this machine's clock: at least `ttl` after the poll was sent (the
    // engine compares it with its own clock when the server cannot be reached).
    let elapsed = sent.elapsed();
    if let Some(holder) = &mut run.lease {
        holder.expires_at =
            Timestamp(Timestamp::now().0 - elapsed.as_millis() as i64).plus(lease.ttl);
    }
    let options = LeaseOptions {
        worker_id: shared.worker_id.clone(),
        ttl: lease.ttl,
        heartbeat: lease.heartbeat,
    };
    let result = shared.engine.execute(run, options, stop).await;
    match result {
        Ok(done) => match done.stop {
            Stop::Finished => {
                tracing::info!(status = done.status.as_str(), "attempt finished");
                send_ack(shared, fence, AckOutcome::Finished, None).await;
            }
            Stop::Suspended => {
                tracing::info!(status = done.status.as_str(), "attempt suspended");
                send_ack(shared, fence, AckOutcome::Suspended, None).await;
            }
            // The engine handed the run back itself.
            Stop::Shutdown => tracing::info!("attempt handed back (shutdown)"),
            Stop::LeaseLost => {
                tracing::warn!(status = done.status.as_str(), "attempt stopped: lease lost");
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "attempt failed; handing the run back");
            send_ack(shared, fence, AckOutcome::Released, Some(e.to_string())).await;
        }
    }
    shared.store.forget_lease(fence);
    drop(copy);
}

/// Acks an attempt: retried while the server cannot be reached, within the lease; a refusal
/// (the lease is gone) is logged, nothing more to do.
async fn send_ack(shared: &Shared, fence: Fence, outcome: AckOutcome, error: Option<String>) {
    let ack = Ack {
        fence,
        outcome,
        error,
    };
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match shared.client.ack(&ack).await {
            Ok(r) => {
                tracing::debug!(status = %r.status, ?outcome, "acked");
                return;
            }
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                let pause = backoff.next(e.retry_after());
                tracing::debug!(error = %e, "ack not delivered; sending it again");
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?outcome, "ack refused or not delivered");
                return;
            }
        }
    }
}

/// 1–128 characters of `[A-Za-z0-9._:-]` (the server's rule).
fn check_worker_id(id: &str) -> Result<(), Error> {
    if is_valid_worker_id(id) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "worker id `{id}` must be 1–128 characters of [A-Za-z0-9._:-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids() {
        assert!(check_worker_id("w-1.a_b:c").is_ok());
        assert!(check_worker_id(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "w/1", "é", &"a".repeat(129)] {
            assert!(check_worker_id(bad).is_err(), "{bad}");
        }
        let id = oris_core::protocol::default_worker_id();
        assert!(check_worker_id(&id).is_ok(), "{id}");
        assert_ne!(
            oris_core::protocol::default_worker_id(),
            id,
            "the suffix is random"
        );
    }

    /// A self-signed CA certificate (its key was thrown away).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUXnI5J+GHhEKCseFADrLT0f7OaI0wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTb3JpcyB3b3JrZXIgdGVzdCBDQTAgFw0yNjExMjYyMDE3Mjla
GA8yMTI2MTEwMjIwMTcyOVowHjEcMBoGA1UEAwwTb3JpcyB3b3JrZXIgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMZUgn27SDan7CDA2p/9hSMnqxCH
DcYewJ+T4KlJX2xSfh0sgLWOOc6mqCvZjMMxPtv1NubwkDoOAKJqQenPH8GjUzBR
MB0GA1UdDgQWBBTkp6cBpiVgZgPtuMgGNu8Cjwnu3jAfBgNVHSMEGDAWgBTkp6cB
piVgZgPtuMgGNu8Cjwnu3jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQD0iPglfZ7lCdTaZuiwOWOhYESYORmbPyObj6d+Ezk8qAIgX0n0UTUt1WoY
mQqgHiIE9HLZjFfWNjCNbDLI8IXn9UA=
-----END CERTIFICATE-----
";

    fn one_graph() -> CompiledGraph<Counter> {
        oris_runtime::StateGraph::<Counter>::new("g", "1")
            .node("n", |_s: Counter, _ctx| async {
                Ok::<_, oris_runtime::NodeError>(CounterUpdate::default())
            })
            .edge(oris_core::graph::START, "n")
            .edge("n", oris_core::graph::END)
            .compile()
            .unwrap()
    }

    #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
    #[oris(crate = "::oris_core")]
    struct Counter {
        n: i64,
    }

    /// A CA file that holds no certificate, or a broken one, is a build error naming the
    /// problem — not a worker that silently trusts only the built-in roots.
    #[test]
    fn a_bad_ca_certificate_is_a_build_error() {
        let build = |pem: &[u8]| {
            Worker::builder("https://oris.internal")
                .graph(one_graph())
                .ca_cert(pem)
                .build()
        };
        let err = build(b"not a certificate at all\n").unwrap_err();
        let Error::Config(m) = &err else {
            panic!("{err:?}")
        };
        assert!(m.contains("holds no certificate"), "{m}");
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        let err = build(broken).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains("CA certificate"), "{err}");
        // The second of two bundles is named.
        let err = Worker::builder("https://oris.internal")
            .graph(one_graph())
            .ca_cert(TEST_CA)
            .ca_cert("")
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("PEM #2 holds no certificate"),
            "{err}"
        );
        // A real certificate builds.
        let w = Worker::builder("https://oris.internal")
            .graph(one_graph())
            .ca_cert(TEST_CA)
            .build()
            .unwrap();
        assert_eq!(w.graphs().len(), 1);
    }
}
