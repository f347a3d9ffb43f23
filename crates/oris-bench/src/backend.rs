//! A fresh store per workload, and the counters read around a workload: store-side commits
//! and group transactions (fsyncs), and bytes used.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use oris::ThreadId;
use oris::store::{MemoryStore, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store};

use crate::cli::Backend;

/// A store opened for one workload.
#[derive(Debug)]
pub struct Opened {
    /// The store, as the engine takes it.
    pub store: Arc<dyn Store>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Memory(Arc<MemoryStore>),
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

/// Store counters at one moment; `None` where the backend has no such counter.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Group transactions.
    pub transactions: Option<u64>,
    /// Group transactions fsynced at commit (those holding a `sync` or `exit` commit).
    pub fsyncs: Option<u64>,
    /// Engine commits the store received.
    pub commits: Option<u64>,
    /// Bytes the database uses, after a WAL checkpoint.
    pub bytes: Option<u64>,
}

/// Opens a fresh store of kind `backend`; SQLite uses the file `path`, replacing any file
/// already there; PostgreSQL uses the database at `ORIS_BENCH_PG_URL`, in a schema named
/// after the file (`oris_bench_w1`…), dropped and re-created.
///
/// # Errors
/// If the store cannot be opened, or `backend` is not available in this build.
pub async fn open(backend: Backend, path: &Path) -> anyhow::Result<Opened> {
    match backend {
        Backend::Memory => {
            let m = Arc::new(MemoryStore::new());
            Ok(Opened {
                store: m.clone(),
                kind: Kind::Memory(m),
            })
        }
        Backend::Sqlite => {
            crate::calibrate::remove_db(path);
            let s = SqliteStore::open(path, SqliteOptions::default())
                .await
                .with_context(|| format!("cannot open SQLite store {}", path.display()))?;
            let s = Arc::new(s);
            Ok(Opened {
                store: s.clone(),
                kind: Kind::Sqlite(s),
            })
        }
        Backend::Postgres => {
            let url = std::env::var("ORIS_BENCH_PG_URL")
                .context("--backend postgres needs ORIS_BENCH_PG_URL=postgres://…")?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("w");
            // W5 keeps 32 runs in flight: one connection each by default;
            // `ORIS_BENCH_PG_POOL` sets another size (how throughput grows with connections).
            let pool_size = match std::env::var("ORIS_BENCH_PG_POOL") {
                Ok(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| {
                        format!("ORIS_BENCH_PG_POOL={v}: expected a positive number")
                    })?,
                Err(_) => 32,
            };
            let options = PostgresOptions {
                schema: Some(format!("oris_bench_{stem}")),
                pool_size,
                ..PostgresOptions::default()
            };
            let redacted = oris::store::redact_url(&url);
            let stale = PostgresStore::connect(&url, options.clone())
                .await
                .with_context(|| format!("cannot connect to {redacted}"))?;
            stale
                .drop_schema()
                .await
                .context("cannot drop the previous bench schema")?;
            let s = PostgresStore::connect(&url, options)
                .await
                .with_context(|| format!("cannot connect to {redacted}"))?;
            let s = Arc::new(s);
            Ok(Opened {
                store: s.clone(),
                kind: Kind::Postgres(s),
            })
        }
    }
}

impl Opened {
    /// The store's counters now. For SQLite this checkpoints the WAL (to count bytes), so
    /// call it outside timed sections.
    ///
    /// # Errors
    /// If the store cannot report its size.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        match &self.kind {
            Kind::Memory(_) => Ok(Counters::default()),
            Kind::Postgres(s) => Ok(Counters {
                bytes: Some(
                    s.bytes_used()
                        .await
                        .context("cannot read the PostgreSQL size")?,
                ),
                ..Counters::default()
            }),
            Kind::Sqlite(s) => {
                let stats = s.stats();
                let bytes = s
                    .bytes_used()
                    .await
                    .context("cannot read the SQLite size")?;
                Ok(Counters {
                    transactions: Some(stats.transactions),
                    fsyncs: Some(stats.synced_transactions),
                    commits: Some(stats.commits),
                    bytes: Some(bytes),
                })
            }
        }
    }

    /// Bytes the memory store holds for the threads `{prefix}0 … {prefix}{n-1}`
    /// (`MemoryStore::approx_bytes`); `None` for other stores.
    pub fn memory_bytes(&self, prefix: &str, n: u64) -> Option<u64> {
        match &self.kind {
            Kind::Memory(m) => Some(
                (0..n)
                    .filter_map(|i| ThreadId::new(format!("{prefix}{i}")).ok())
                    .map(|t| m.approx_bytes(&t) as u64)
                    .sum(),
            ),
            Kind::Sqlite(_) | Kind::Postgres(_) => None,
        }
    }
}
