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
    /// The server's URL (plain HTTP).
    #[arg(long, env = "ORIS_URL", value_name = "URL")]
    pub server: String,
    /// An API key with the `worker` (or `admin`) role; none when the server runs with
    /// `--no-auth`.
    #[arg(long, env = "ORIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    if let Some(t) = args.token {
        builder = builder.token(t);
    }
    if let Some(id) = args.worker_id {
        builder = builder.worker_id(id);
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
    let worker = builder.build()?;
    eprintln!(
        "oris: worker {} polling {} for {}",
        worker.worker_id(),
        args.server.trim_end_matches('/'),
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
