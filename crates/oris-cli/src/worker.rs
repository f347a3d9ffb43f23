//! `oris worker`: a remote worker process executing the demo graphs for an `oris serve`
//! elsewhere (started with `--workers 0` to leave every run to remote workers, or alongside
//! its embedded pool).
//!
//! It prints `oris: worker <id> polling <url>` on stderr when it starts. SIGINT/SIGTERM stop
//! it gracefully: no new attempt is taken, running node attempts finish and are reported,
//! unfinished runs are handed back (another worker continues them at once), the server is
//! told, and the process exits with status 0. A second signal exits at once (status 130);
//! the runs it held continue elsewhere once their leases expire.

use std::time::Duration;

use clap::Args;
use oris_worker::{CancellationToken, Worker};

use crate::demo;

/// Options of `oris worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The server's URL (http:// or https://).
    #[arg(long, env = "ORIS_URL", value_name = "URL")]
    pub server: String,
    /// An API key with the `worker` (or `admin`) role; none when the server runs with
    /// `--no-auth`.
    #[arg(long, env = "ORIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for https, besides the built-in roots
    /// (a private CA).
    #[arg(long, env = "ORIS_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// The worker's identity (1–128 of `[A-Za-z0-9._:-]`); default `host-pid-random`.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Attempts executed at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub capacity: u32,
    /// A demo graph to execute (repeatable); default all of them.
    #[arg(long = "graph", value_name = "NAME")]
    pub graphs: Vec<String>,
    /// How long running node attempts may take to finish at shutdown, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_grace: u64,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let server = args.server.trim_end_matches('/').to_owned();
    let worker = build(args)?;
    eprintln!(
        "oris: worker {} polling {server} for {}",
        worker.worker_id(),
        worker
            .graphs()
            .iter()
            .map(|g| format!("{}@{}", g.name, g.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!(
            "oris: stopping: finishing running nodes, handing runs back (signal again to exit now)"
        );
        on_signal.cancel();
        signals.recv().await;
        eprintln!("oris: exiting now; held runs continue elsewhere once their leases expire");
        std::process::exit(130);
    });
    worker.run(shutdown).await?;
    eprintln!("oris: worker stopped");
    Ok(())
}

/// The worker `args` describe: the demo graphs they name (all by default).
fn build(args: WorkerArgs) -> anyhow::Result<Worker> {
    for g in &args.graphs {
        anyhow::ensure!(
            demo::SERVED.contains(&g.as_str()),
            "unknown graph `{g}`; the demo graphs are {}",
            demo::SERVED.join(", ")
        );
    }
    let wanted = |name: &str| args.graphs.is_empty() || args.graphs.iter().any(|g| g == name);
    let graphs = demo::graphs()?;
    let mut builder = Worker::builder(&args.server)
        .capacity(args.capacity)
        .shutdown_grace(Duration::from_secs(args.shutdown_grace));
    if let Some(t) = args.token.clone() {
        builder = builder.token(t);
    }
    if let Some(id) = args.worker_id.clone() {
        builder = builder.worker_id(id);
    }
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--ca-cert: cannot read `{}`: {e}", path.display()))?;
        builder = builder.ca_cert(pem);
    }
    if wanted(graphs.expense.name()) {
        builder = builder.graph(graphs.expense);
    }
    if wanted(graphs.research.name()) {
        builder = builder.graph(graphs.research);
    }
    if wanted(graphs.flaky.name()) {
        builder = builder.graph(graphs.flaky);
    }
    if wanted(graphs.reminder.name()) {
        builder = builder.graph(graphs.reminder);
    }
    if wanted(graphs.batch.name()) {
        builder = builder.graph(graphs.batch);
    }
    Ok(builder.build()?)
}

/// SIGINT and SIGTERM, listened to from creation on (a signal arriving before the first
/// `recv` is not lost, nor handled by the default action that kills the process).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use oris::server::{Auth, Server};
    use oris_worker::CancellationToken;
    use serde_json::{Value, json};

    use super::*;

    fn args(server: &str, graphs: &[&str]) -> WorkerArgs {
        WorkerArgs {
            server: server.to_owned(),
            token: None,
            ca_cert: None,
            worker_id: Some("cli-test".into()),
            capacity: 2,
            graphs: graphs.iter().map(|g| (*g).to_owned()).collect(),
            shutdown_grace: 5,
        }
    }

    #[test]
    fn graphs_are_chosen_by_name() {
        let w = build(args("http://127.0.0.1:1", &[])).unwrap();
        let names: Vec<&str> = w.graphs().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, demo::SERVED, "all demo graphs by default");
        let w = build(args("http://127.0.0.1:1", &["flaky", "batch"])).unwrap();
        let names: Vec<&str> = w.graphs().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["flaky", "batch"]);
        let e = build(args("http://127.0.0.1:1", &["nope"])).unwrap_err();
        assert!(e.to_string().contains("unknown graph `nope`"), "{e}");
        // https is spoken (rustls on ring).
        build(args("https://example.com", &[])).expect("an https URL builds");
    }

    /// `--ca-cert`: an unreadable file and a file without a certificate stop the worker
    /// before it starts, naming the file or the problem.
    #[test]
    fn ca_cert_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args("https://oris.internal", &[]);
        a.ca_cert = Some(dir.path().join("missing.pem"));
        let e = build(a).unwrap_err().to_string();
        assert!(
            e.contains("--ca-cert: cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let mut a = args("https://oris.internal", &[]);
        a.ca_cert = Some(junk);
        let e = build(a).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    /// A server serving the demo graphs with no embedded workers; `oris worker`'s worker
    /// executes a run of the flaky demo (it retries) to its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_executes_demo_runs_for_a_server() {
        let g = demo::graphs().unwrap();
        let server = Server::builder()
            .store(std::sync::Arc::new(oris::store::MemoryStore::new()))
            .graph(g.expense)
            .graph(g.research)
            .graph(g.flaky)
            .graph(g.reminder)
            .graph(g.batch)
            .workers(0)
            .auth(Auth::Disabled)
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let serving = tokio::spawn(server.serve(listener, async move { s.cancelled().await }));
        let worker = build(args(&url, &["flaky"])).unwrap();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { worker.run(shutdown).await }
        });
        let http = reqwest::Client::new();
        let created = http
            .post(format!("{url}/v1/jobs"))
            .json(&json!({"graph": "flaky", "thread_id": "cli-flaky"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 202);
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let job: Value = http
                .get(format!("{url}/v1/jobs/cli-flaky"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "completed" {
                break job;
            }
            assert!(Instant::now() < deadline, "not completed: {job:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(job["values"]["attempts"], 3, "{job:#}");
        let workers: Value = http
            .get(format!("{url}/v1/workers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            workers["workers"][0]["worker_id"], "cli-test",
            "{workers:#}"
        );
        assert_eq!(
            workers["workers"][0]["graphs"],
            json!([{"name": "flaky", "version": "1"}])
        );
        shutdown.cancel();
        running.await.unwrap().unwrap();
        stop.cancel();
        serving.await.unwrap().unwrap();
    }
}
