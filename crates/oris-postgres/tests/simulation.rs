//! The deterministic simulation of workers, leases and failover (`oris_testkit::sim`) on
//! PostgreSQL: a few seeds, each in a fresh schema (the many-seed run is on the memory
//! store, in oris-testkit). `ORIS_SIM_SEED=<seed>` replays one seed; `ORIS_SIM_SEEDS=<n>`
//! runs n. Needs `ORIS_TEST_PG_URL`; see `support`.

mod support;

use std::sync::Arc;

use oris_testkit::sim::{SimConfig, SimStats, seeds_from_env, simulate};
use support::fresh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_postgres_store_few_seeds() {
    let mut total = SimStats::default();
    for seed in seeds_from_env(8) {
        let (store, _guard) = fresh(true).await;
        match simulate(Arc::new(store), seed, &SimConfig::default()).await {
            Ok(r) => total.add(&r.stats),
            Err(failure) => panic!("PostgreSQL: {failure}"),
        }
    }
    assert_eq!(total.runs_ended, total.runs);
    assert!(total.reclaimed > 0 && total.fenced_out > 0, "{total:?}");
}
