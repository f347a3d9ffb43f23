//! Per-run figures from the server's [`CountingStore`] snapshots.

use std::collections::BTreeMap;

pub use oris_testkit::counting::{Calls, CountingStore};
use serde::Serialize;

/// Per-run calls and mean time of each method between two snapshots.
pub fn per_run(
    before: &BTreeMap<String, Calls>,
    after: &BTreeMap<String, Calls>,
    runs: u64,
) -> BTreeMap<String, PerRun> {
    let runs = runs.max(1) as f64;
    after
        .iter()
        .filter_map(|(m, a)| {
            let b = before.get(m).copied().unwrap_or_default();
            let calls = a.calls - b.calls;
            (calls > 0).then(|| {
                let nanos = a.nanos - b.nanos;
                let p = PerRun {
                    per_run: crate::report::round(calls as f64 / runs, 3),
                    mean_us: crate::report::round(nanos as f64 / calls as f64 / 1e3, 1),
                };
                (m.clone(), p)
            })
        })
        .collect()
}

/// One method's share of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerRun {
    /// Calls per run.
    pub per_run: f64,
    /// Mean time of a call, in microseconds (as the caller waits for it: queueing included).
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_run_divides_the_difference() {
        let before = BTreeMap::from([(
            "thread".to_owned(),
            Calls {
                calls: 2,
                nanos: 2_000,
            },
        )]);
        let after = BTreeMap::from([
            (
                "thread".to_owned(),
                Calls {
                    calls: 6,
                    nanos: 10_000,
                },
            ),
            (
                "api_keys".to_owned(),
                Calls {
                    calls: 1,
                    nanos: 500,
                },
            ),
        ]);
        let p = per_run(&before, &after, 2);
        assert_eq!(p["thread"].per_run, 2.0);
        assert_eq!(p["thread"].mean_us, 2.0);
        assert_eq!(p["api_keys"].per_run, 0.5);
    }
}
