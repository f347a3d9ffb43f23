//! Property tests of the reducers and of replay: the same events give the same state,
//! snapshot + tail equals a full replay, and a run through the engine equals the fold of
//! its updates, from snapshots or from the log alone.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use oris_core::event::Payload;
use oris_core::graph::{END, START};
use oris_core::id::CheckpointId;
use oris_core::state::{ReduceError, State};
use oris_core::store::Store;
use oris_runtime::{EngineOptions, NodeError, StateGraph};
use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn add(total: &mut i64, update: i64) {
    *total += update;
}

/// One field per reducer kind, plus `steps` for routing the engine loop.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Mixed {
    counter: i64,
    /// Last-value `Option`: a write of `None` (JSON `null`) must survive the log.
    label: Option<String>,
    #[reducer(append)]
    log: Vec<String>,
    #[reducer(merge)]
    scores: HashMap<String, i64>,
    #[reducer(custom = add)]
    total: i64,
    steps: u32,
}

/// A superstep: `(writer, update)` in task order.
type Superstep = Vec<(String, MixedUpdate)>;

fn word() -> impl Strategy<Value = String> {
    vec(proptest::char::range('a', 'e'), 1..4).prop_map(String::from_iter)
}

fn update() -> impl Strategy<Value = MixedUpdate> {
    (
        option::of(-50i64..50),
        option::of(option::of(word())),
        option::of(vec(word(), 0..3)),
        option::of(hash_map(word(), -9i64..9, 0..3)),
        option::of(-9i64..9),
    )
        .prop_map(|(counter, label, log, scores, total)| MixedUpdate {
            counter,
            label,
            log,
            scores,
            total,
            steps: None,
        })
}

/// 1–4 writers; each last-value field keeps the value of at most one (random) writer.
fn superstep() -> impl Strategy<Value = Superstep> {
    (vec(update(), 1..5), any::<usize>(), any::<usize>()).prop_map(|(ups, oc, ol)| {
        let n = ups.len();
        ups.into_iter()
            .enumerate()
            .map(|(i, mut u)| {
                if i != oc % n {
                    u.counter = None;
                }
                if i != ol % n {
                    u.label = None;
                }
                (format!("w{i}"), u)
            })
            .collect()
    })
}

fn supersteps() -> impl Strategy<Value = Vec<Superstep>> {
    vec(superstep(), 0..12)
}

fn initial() -> impl Strategy<Value = Mixed> {
    (update(), 0u32..3).prop_map(|(u, steps)| {
        let mut s = Mixed {
            steps,
            ..Mixed::default()
        };
        s.apply(vec![("__input__", u)]).unwrap();
        s
    })
}

/// Through the log's encoding, as a stored event would be.
fn via_json<T: Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    Payload::encode(v).unwrap().decode().unwrap()
}

fn fold(mut state: Mixed, steps: &[Superstep]) -> Mixed {
    for step in steps {
        let ups = step
            .iter()
            .map(|(w, u)| (w.as_str(), via_json(u)))
            .collect();
        state
            .apply(ups)
            .expect("generated supersteps never conflict");
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (a) Applying the same events twice, independently, gives the same state.
    #[test]
    fn same_events_give_the_same_state(init in initial(), steps in supersteps()) {
        let a = fold(init.clone(), &steps);
        let b = fold(init, &steps);
        prop_assert_eq!(hash(&a), hash(&b));
        prop_assert_eq!(a, b);
    }

    /// (b) Checkpoint + tail == full replay: fold k supersteps, take the state through
    /// JSON like a snapshot, apply the rest.
    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        init in initial(),
        steps in supersteps(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let k = cut.index(steps.len() + 1);
        let full = fold(init.clone(), &steps);
        let snapshot: Mixed = via_json(&fold(init, &steps[..k]));
        let resumed = fold(snapshot, &steps[k..]);
        prop_assert_eq!(hash(&resumed), hash(&full));
        prop_assert_eq!(resumed, full);
    }

    /// A second writer of a last-value field is refused, naming both, and the state is
    /// left exactly as it was (nothing of the superstep is applied).
    #[test]
    fn conflicting_last_value_writes_change_nothing(
        init in initial(),
        step in superstep(),
        value in -50i64..50,
    ) {
        let mut step = step;
        if !step.iter().any(|(_, u)| u.counter.is_some()) {
            step[0].1.counter = Some(value);
        }
        let first = step.iter().find(|(_, u)| u.counter.is_some()).unwrap().0.clone();
        step.push(("intruder".to_owned(), MixedUpdate::default().counter(value).log(vec!["x".to_owned()])));
        let before = hash(&init);
        let mut s = init;
        let err = s
            .apply(step.iter().map(|(w, u)| (w.as_str(), u.clone())).collect())
            .unwrap_err();
        prop_assert_eq!(
            err,
            ReduceError::ConflictingWrites { field: "counter", first, second: "intruder".into() }
        );
        prop_assert_eq!(hash(&s), before);
    }
}

/// The plan of an engine run: per superstep, the updates of node `p` and node `q`.
fn engine_plan() -> impl Strategy<Value = Vec<(MixedUpdate, MixedUpdate)>> {
    vec(superstep(), 1..8).prop_map(|steps| {
        steps
            .into_iter()
            .map(|mut s| {
                let q = if s.len() > 1 {
                    s.swap_remove(1).1
                } else {
                    MixedUpdate::default()
                };
                let mut p = s.swap_remove(0).1;
                // One writer per last-value field per superstep.
                if q.counter.is_some() {
                    p.counter = None;
                }
                if q.label.is_some() {
                    p.label = None;
                }
                (p, q)
            })
            .collect()
    })
}

/// `START → p, START → q`; both loop on themselves while `steps < plan.len()`. In
/// superstep `k`, `p` writes `plan[k].0` (and `steps = k + 1`), `q` writes `plan[k].1`.
fn plan_graph(plan: Arc<Vec<(MixedUpdate, MixedUpdate)>>) -> StateGraph<Mixed> {
    let n = plan.len() as u32;
    let pp = plan.clone();
    StateGraph::<Mixed>::new("plan", "1")
        .node("p", move |_s: Mixed, ctx| {
            let u = pp[ctx.superstep() as usize]
                .0
                .clone()
                .steps(ctx.superstep() + 1);
            async move { Ok::<_, NodeError>(u) }
        })
        .node("q", move |_s: Mixed, ctx| {
            let u = plan[ctx.superstep() as usize].1.clone();
            async move { Ok::<_, NodeError>(u) }
        })
        .edge(START, "p")
        .edge(START, "q")
        .conditional_edge(
            "p",
            ["p", END],
            move |s: &Mixed| {
                if s.steps < n { "p" } else { END }
            },
        )
        .conditional_edge(
            "q",
            ["q", END],
            move |s: &Mixed| {
                if s.steps < n { "q" } else { END }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (c) A run through the engine equals the fold of its updates; `verify()` agrees; the
    /// state at every checkpoint is the fold of the supersteps before it; after deleting
    /// the snapshots the state hash is unchanged.
    #[test]
    fn engine_runs_equal_the_fold_of_their_updates(
        init in initial(),
        plan in engine_plan(),
        snapshot_every in 1u32..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plan = Arc::new(plan);
        let input = Mixed { steps: 0, ..init.clone() };
        let mut expected = vec![{
            let mut s = Mixed::default();
            s.apply(vec![("__input__", input.clone().into_update())]).unwrap();
            s
        }];
        for (k, (p, q)) in plan.iter().enumerate() {
            let mut s = expected.last().unwrap().clone();
            let p = p.clone().steps(k as u32 + 1);
            s.apply(vec![("p", via_json(&p)), ("q", via_json(q))]).unwrap();
            expected.push(s);
        }
        let model = expected.last().unwrap().clone();

        rt.block_on(async {
            let (store, engine) = memory_engine(EngineOptions {
                snapshot_every,
                ..EngineOptions::default()
            });
            let h = engine.register(plan_graph(plan.clone()).compile().unwrap());
            let s = h.start("prop", input).await.unwrap().expect_completed();
            prop_assert_eq!(hash(&s), hash(&model));
            prop_assert_eq!(&s, &model);

            let v = h.verify("prop").await.unwrap();
            prop_assert!(v.is_consistent());
            prop_assert_eq!(&v.replayed_hash, &hash(&model));

            let cps = engine.checkpoints(&tid("prop")).await.unwrap();
            prop_assert_eq!(cps.len(), plan.len() + 1);
            for (cp, want) in cps.iter().zip(&expected) {
                let at = h.state_at("prop", cp.id).await.unwrap();
                prop_assert_eq!(hash(&at), hash(want));
            }
            let last = cps.last().unwrap().id;
            prop_assert_eq!(h.state("prop").await.unwrap().checkpoint, Some(last));
            prop_assert!(store.delete_snapshots(&tid("prop")).await.unwrap() > 0);
            prop_assert_eq!(hash(&h.state("prop").await.unwrap().values), hash(&model));
            prop_assert_eq!(hash(&h.state_at("prop", CheckpointId(last.at_seq())).await.unwrap()), hash(&model));
            Ok(())
        })?;
    }
}
