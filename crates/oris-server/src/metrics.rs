//! Prometheus metrics, recorded into a recorder owned by the server (not the process-wide
//! one), so several servers in one process keep separate counts.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// HTTP requests by `route` (the route template, `unmatched` for 404s), `method`, `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Requests refused before their handler ran, by `reason` (`overloaded`, `rate_limited`)
/// and `route`. They are in [`HTTP_REQUESTS_TOTAL`] too (503, 429).
pub const HTTP_REQUESTS_REJECTED_TOTAL: &str = "http_requests_rejected_total";
/// HTTP request latency in seconds, by `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Runs that ended, by `graph` and `outcome` (`completed`, `failed`, `cancelled`).
pub const RUNS_TOTAL: &str = "runs_total";
/// Run duration from creation to end, in seconds, by `graph` and `outcome`.
pub const RUN_DURATION: &str = "run_duration_seconds";
/// Node attempt duration in seconds (from the commit that scheduled it to its own), by
/// `node`.
pub const NODE_DURATION: &str = "node_duration_seconds";
/// Queued runs waiting for a worker (computed at scrape time).
pub const QUEUE_DEPTH: &str = "queue_depth";
/// Time from a run's creation to its first claim by a worker, in seconds.
pub const CLAIM_WAIT: &str = "claim_wait_seconds";
/// Interrupts waiting for a resume value (computed at scrape time).
pub const INTERRUPTS_PENDING: &str = "interrupts_pending";

/// Leases the reaper cleared after they expired, by `graph`.
pub const LEASES_EXPIRED_TOTAL: &str = "oris_leases_expired_total";
/// Remote workers seen within the lease TTL and not stopped (computed at scrape time).
pub const WORKERS_ACTIVE: &str = "oris_workers_active";
/// Remote worker polls, by `outcome` (`attempts`: it got work, `empty`).
pub const WORKER_POLLS_TOTAL: &str = "oris_worker_polls_total";
/// Remote worker reports (`report-step`) applied, by `outcome` (`applied`, `replayed`).
pub const WORKER_REPORTS_TOTAL: &str = "oris_worker_reports_total";
/// Worker calls refused with `lease_lost`, by `route` (`heartbeat`, `report-step`, `ack`).
pub const LEASE_LOST_TOTAL: &str = "oris_lease_lost_total";

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 3600.0,
];

/// The server's metrics.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics { recorder, handle };
        m.with(|| {
            metrics::describe_counter!(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests by route, method and status"
            );
            metrics::describe_counter!(
                HTTP_REQUESTS_REJECTED_TOTAL,
                "HTTP requests refused by load shedding or rate limits, by reason and route"
            );
            metrics::describe_histogram!(
                HTTP_REQUEST_DURATION,
                metrics::Unit::Seconds,
                "HTTP request latency"
            );
            metrics::describe_counter!(RUNS_TOTAL, "Runs that ended, by graph and outcome");
            metrics::describe_histogram!(
                RUN_DURATION,
                metrics::Unit::Seconds,
                "Run duration from creation to end"
            );
            metrics::describe_histogram!(
                NODE_DURATION,
                metrics::Unit::Seconds,
                "Node attempt duration"
            );
            metrics::describe_gauge!(QUEUE_DEPTH, "Queued runs waiting for a worker");
            metrics::describe_histogram!(
                CLAIM_WAIT,
                metrics::Unit::Seconds,
                "Run creation to first claim"
            );
            metrics::describe_gauge!(INTERRUPTS_PENDING, "Interrupts waiting for a resume value");
            metrics::describe_counter!(
                LEASES_EXPIRED_TOTAL,
                "Expired leases cleared by the reaper, by graph"
            );
            metrics::describe_gauge!(WORKERS_ACTIVE, "Remote workers seen within the lease TTL");
            metrics::describe_counter!(WORKER_POLLS_TOTAL, "Remote worker polls, by outcome");
            metrics::describe_counter!(
                WORKER_REPORTS_TOTAL,
                "Remote worker reports applied, by outcome"
            );
            metrics::describe_counter!(
                LEASE_LOST_TOTAL,
                "Worker calls refused because the lease was lost, by route"
            );
        });
        m
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    pub fn http_request(&self, route: &'static str, method: &str, status: u16, d: Duration) {
        let method = method.to_owned();
        self.with(|| {
            metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route, "method" => method.clone(), "status" => status.to_string())
                .increment(1);
            metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route, "method" => method)
                .record(d.as_secs_f64());
        });
    }

    pub fn rejected(&self, reason: &'static str, route: &'static str) {
        self.with(|| {
            metrics::counter!(HTTP_REQUESTS_REJECTED_TOTAL, "reason" => reason, "route" => route)
                .increment(1);
        });
    }

    pub fn run_finished(&self, graph: &str, outcome: &'static str, d: Duration) {
        let graph = graph.to_owned();
        self.with(|| {
            metrics::counter!(RUNS_TOTAL, "graph" => graph.clone(), "outcome" => outcome)
                .increment(1);
            metrics::histogram!(RUN_DURATION, "graph" => graph, "outcome" => outcome)
                .record(d.as_secs_f64());
        });
    }

    pub fn node_finished(&self, node: &str, d: Duration) {
        let node = node.to_owned();
        self.with(|| metrics::histogram!(NODE_DURATION, "node" => node).record(d.as_secs_f64()));
    }

    pub fn claim_wait(&self, d: Duration) {
        self.with(|| metrics::histogram!(CLAIM_WAIT).record(d.as_secs_f64()));
    }

    pub fn gauges(&self, queue_depth: usize, interrupts_pending: usize) {
        self.with(|| {
            metrics::gauge!(QUEUE_DEPTH).set(queue_depth as f64);
            metrics::gauge!(INTERRUPTS_PENDING).set(interrupts_pending as f64);
        });
    }

    pub fn lease_expired(&self, graph: &str) {
        let graph = graph.to_owned();
        self.with(|| metrics::counter!(LEASES_EXPIRED_TOTAL, "graph" => graph).increment(1));
    }

    pub fn worker_poll(&self, got_work: bool) {
        let outcome = if got_work { "attempts" } else { "empty" };
        self.with(|| metrics::counter!(WORKER_POLLS_TOTAL, "outcome" => outcome).increment(1));
    }

    pub fn worker_report(&self, replayed: bool) {
        let outcome = if replayed { "replayed" } else { "applied" };
        self.with(|| metrics::counter!(WORKER_REPORTS_TOTAL, "outcome" => outcome).increment(1));
    }

    pub fn lease_lost(&self, route: &'static str) {
        self.with(|| metrics::counter!(LEASE_LOST_TOTAL, "route" => route).increment(1));
    }

    pub fn workers_active(&self, n: usize) {
        self.with(|| metrics::gauge!(WORKERS_ACTIVE).set(n as f64));
    }

    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}
