//! `oris serve`: the control-plane server with the demo graphs, on the embedded SQLite store
//! by default.
//!
//! # What it prints
//! Messages go to stderr, one per line, each starting with `oris: `; the first one after a
//! successful start is always
//!
//! ```text
//! oris: listening on http://127.0.0.1:8080
//! ```
//!
//! with the bound address (the real port when `--addr` asks for port 0) — scripts and tests
//! parse it. On the first start of an empty key store without a provisioned token, the
//! bootstrap admin token is printed once, alone on a line of **stdout** (so
//! `oris serve > token.txt` captures it). Logs (`tracing`) go to stderr too: readable text,
//! or JSON lines with `--log-format json`.
//!
//! # Stopping
//! SIGINT (Ctrl-C) or SIGTERM stops it gracefully: no new connections or claims, running
//! node attempts finish and commit within `--shutdown-grace`, unfinished runs are handed back
//! for the next start; the process then exits with status 0. A second signal exits at once
//! (status 130); what was committed is kept and the next start continues from there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use oris::server::{Auth, Server};

use crate::demo;

/// Options of `oris serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; see the `listening on` line).
    #[arg(long, env = "ORIS_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Turn authentication off, for local development only: anyone who can reach the port
    /// can do anything.
    #[arg(long)]
    pub no_auth: bool,
    /// File holding the admin token to provision at start (`oris_<id>_<secret>`, e.g. from
    /// a secret store), for scripts, tests and containers. Also `ORIS_ADMIN_TOKEN` (the token
    /// itself). Without either, the first start creates an admin key and prints its token
    /// once on stdout.
    #[arg(long, value_name = "PATH", conflicts_with = "no_auth")]
    pub admin_token_file: Option<PathBuf>,
    /// Runs executed at once by the embedded worker pool (0: serve the API only).
    #[arg(long, env = "ORIS_WORKERS", default_value_t = 64)]
    pub workers: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// How long idempotency keys are remembered (`24h`, `30m`, `90s`).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "24h")]
    pub idempotency_ttl: Duration,
    /// How long running node attempts may take to finish at shutdown.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "30s")]
    pub shutdown_grace: Duration,
    /// How long a worker's claim on a run lasts without a heartbeat: after a crash, another
    /// worker (or the next start) continues the run once it expired.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    pub lease: Duration,
    /// How often a running execution renews its lease (shorter than `--lease`).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "3s")]
    pub heartbeat: Duration,
    /// How often idle workers look for runs made ready elsewhere (other processes, expired
    /// leases, timers).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "1s")]
    pub poll_interval: Duration,
    /// Requests handled at once; more are answered 503 `overloaded` at once (0: no limit).
    /// Health, metrics, long-polls and streams are not counted (see --max-streams).
    #[arg(long, value_name = "N", default_value_t = oris::server::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Long-polls (`wait`) and SSE streams open at once; more are answered 503 `overloaded`
    /// (0: no limit).
    #[arg(long, value_name = "N", default_value_t = oris::server::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Per-caller rate limit (per API key; per client IP with --no-auth): `PER_SEC` or
    /// `PER_SEC/BURST` (burst defaults to the rate). Calls over it get 429 `rate_limited`.
    /// Off by default. Counted per server process.
    #[arg(long, value_name = "PER_SEC[/BURST]", value_parser = rate_limit)]
    pub rate_limit: Option<(u32, u32)>,
    /// At most N runs of graph NAME execute at once (embedded pool and remote workers
    /// together); repeat for several graphs. Exact within one server; servers sharing a
    /// PostgreSQL database may overshoot by their concurrent claims.
    #[arg(long = "graph-limit", value_name = "NAME=N", value_parser = graph_limit)]
    pub graph_limits: Vec<(String, usize)>,
    /// While N runs are queued, `POST /v1/jobs` answers 429 `queue_full` with Retry-After
    /// (off by default).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub max_queued: Option<usize>,
}

/// Parses a count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` must be a whole number of at least 1")),
    }
}

/// Parses `NAME=N` with N at least 1.
fn graph_limit(s: &str) -> Result<(String, usize), String> {
    let bad = || format!("`{s}` is not a graph limit (`NAME=N`, N at least 1)");
    let (name, n) = s.split_once('=').ok_or_else(bad)?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if name.trim().is_empty() || n == 0 {
        return Err(bad());
    }
    Ok((name.trim().to_owned(), n))
}

/// Parses `PER_SEC` or `PER_SEC/BURST`, both at least 1.
fn rate_limit(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a rate limit (`10` or `10/20`: per second, burst)");
    let (rate, burst) = match s.trim().split_once('/') {
        Some((r, b)) => (r, Some(b)),
        None => (s.trim(), None),
    };
    let rate: u32 = rate.parse().map_err(|_| bad())?;
    let burst: u32 = match burst {
        Some(b) => b.parse().map_err(|_| bad())?,
        None => rate,
    };
    if rate == 0 || burst == 0 {
        return Err(format!("`{s}`: the rate and the burst must be at least 1"));
    }
    Ok((rate, burst))
}

/// Parses `250ms`, `30s`, `5m`, `24h`, or a number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (`250ms`, `30s`, `5m`, `24h`)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("unknown unit in `{s}` (ms, s, m, h)")),
    };
    Ok(d)
}

pub async fn serve(db: &str, args: ServeArgs) -> anyhow::Result<()> {
    let shown_db = oris::store::redact_url(db);
    let token = if args.no_auth {
        None
    } else {
        admin_token(args.admin_token_file.as_deref())?
    };
    // Bind before anything is created in the store: a start that cannot listen must not
    // consume the one-time display of a bootstrap token.
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let (store, wakes) = oris::server::open_store(db)
        .await
        // Unsupported URLs are echoed whole by the facade: never show a password.
        .map_err(|e| anyhow::anyhow!(e.to_string().replace(db, &shown_db)))?;
    let graphs = demo::graphs()?;
    let mut builder = Server::builder().store(store);
    if let Some(wakes) = wakes {
        builder = builder.wake_on(wakes);
    }
    builder = builder
        .graph_with_schema(graphs.expense)
        .graph_with_schema(graphs.research)
        .graph_with_schema(graphs.flaky)
        .graph_with_schema(graphs.reminder)
        .graph_with_schema(graphs.batch)
        .workers(args.workers)
        .body_limit(args.body_limit)
        .idempotency_ttl(args.idempotency_ttl)
        .lease(args.lease, args.heartbeat)
        .poll_interval(args.poll_interval)
        .shutdown_grace(args.shutdown_grace)
        .max_in_flight(args.max_in_flight)
        .max_streams(args.max_streams);
    if let Some((per_second, burst)) = args.rate_limit {
        builder = builder.rate_limit(per_second, burst);
    }
    for (name, n) in &args.graph_limits {
        builder = builder.graph_limit(name.clone(), *n);
    }
    if let Some(n) = args.max_queued {
        builder = builder.max_queued(n);
    }
    if args.no_auth {
        builder = builder.auth(Auth::Disabled);
    } else if let Some(token) = token {
        builder = builder.admin_token(token);
    }
    let server = builder
        .build()
        .await
        .with_context(|| format!("cannot start the server on {shown_db}"))?;
    announce(addr, &shown_db, &args, server.bootstrap_token());
    server
        .serve(listener, shutdown_signal(args.shutdown_grace))
        .await?;
    eprintln!("oris: stopped");
    Ok(())
}

/// The startup messages (stderr) and the bootstrap token (stdout).
fn announce(addr: SocketAddr, db: &str, args: &ServeArgs, bootstrap: Option<&str>) {
    let url = format!("http://{addr}");
    eprintln!("oris: listening on {url}");
    eprintln!("oris: store {db}");
    eprintln!("oris: graphs {}", demo::SERVED.join(", "));
    eprintln!(
        "oris: {} workers; API reference at {url}/v1/openapi.json",
        args.workers
    );
    if args.no_auth {
        eprintln!(
            "oris: WARNING: AUTHENTICATION IS OFF (--no-auth): anyone who can reach {url} can \
             read and change every run. Local development only."
        );
        eprintln!("oris: try: curl {url}/v1/graphs");
    } else if let Some(token) = bootstrap {
        eprintln!(
            "oris: created the admin API key; its token, printed on stdout, is shown only this \
             once — keep it:"
        );
        println!("{token}");
        eprintln!("oris: try: curl -H \"Authorization: Bearer $TOKEN\" {url}/v1/graphs");
    } else {
        eprintln!("oris: authentication on (API keys); use your admin token or a key made with it");
    }
}

/// The admin token from `--admin-token-file` or `ORIS_ADMIN_TOKEN`.
fn admin_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let token = text.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the admin token file {} is empty",
            path.display()
        );
        return Ok(Some(token.to_owned()));
    }
    Ok(std::env::var("ORIS_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM; a second one exits the process at once.
async fn shutdown_signal(grace: Duration) {
    signal().await;
    eprintln!(
        "oris: shutting down: finishing running nodes (up to {}s; signal again to exit now)",
        grace.as_secs()
    );
    tokio::spawn(async {
        signal().await;
        eprintln!("oris: exiting now; unfinished runs continue at the next start");
        std::process::exit(130);
    });
}

/// The next SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("45", Duration::from_secs(45)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
        ] {
            assert_eq!(duration(text), Ok(d), "{text}");
        }
        for bad in ["", "s", "1.5s", "10d", "-1s", "ms5"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn graph_limits() {
        assert_eq!(graph_limit("batch=4"), Ok(("batch".to_owned(), 4)));
        for bad in [
            "", "batch", "batch=", "=4", "batch=0", "batch=-1", "batch=x",
        ] {
            assert!(graph_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limits() {
        assert_eq!(rate_limit("10"), Ok((10, 10)));
        assert_eq!(rate_limit("2/5"), Ok((2, 5)));
        for bad in ["", "0", "5/0", "0/5", "a", "1/", "/2", "1.5", "-1", "1/2/3"] {
            assert!(rate_limit(bad).is_err(), "{bad}");
        }
    }
}
