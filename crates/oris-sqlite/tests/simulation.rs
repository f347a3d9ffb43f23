//! The deterministic simulation of workers, leases and failover (`oris_testkit::sim`) on a
//! durable SQLite file: a few seeds (the many-seed run is on the memory store, in
//! oris-testkit). `ORIS_SIM_SEED=<seed>` replays one seed; `ORIS_SIM_SEEDS=<n>` runs n.

use std::sync::Arc;

use oris_sqlite::{SqliteOptions, SqliteStore};
use oris_testkit::sim::{SimConfig, SimStats, seeds_from_env, simulate};

#[test]
fn simulation_sqlite_store_few_seeds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime");
    let mut total = SimStats::default();
    for seed in seeds_from_env(20) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let report = rt.block_on(async {
            let store = SqliteStore::open(dir.path().join("sim.db"), SqliteOptions::default())
                .await
                .expect("open the store");
            simulate(Arc::new(store), seed, &SimConfig::default()).await
        });
        match report {
            Ok(r) => total.add(&r.stats),
            Err(failure) => panic!("SQLite: {failure}"),
        }
    }
    assert_eq!(total.runs_ended, total.runs);
    assert!(total.reclaimed > 0 && total.fenced_out > 0, "{total:?}");
}
