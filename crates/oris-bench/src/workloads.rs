//! The workloads of WORKLOADS.md: their states, graphs, inputs and final-state checks (S1
//! and S2 use these graphs too, served over HTTP).
//!
//! Each is written exactly as the document defines it so that results compare with other
//! systems run on the same machine; the checks are cheap enough to run after every run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use oris::{CompiledGraph, Context, END, NodeError, START, State, StateGraph};
use serde::{Deserialize, Serialize};

/// W1, W4 and W5: `{counter: int (last-value), log: list[str] (append)}`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct Linear {
    /// Last-value.
    pub counter: i64,
    /// Append.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// W2: `{counter: int (last-value), results: list[str] (append)}`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct FanOut {
    /// Last-value.
    pub counter: i64,
    /// Append.
    #[reducer(append)]
    pub results: Vec<String>,
}

/// W3: `{log: list[str] (append)}`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct Approval {
    /// Append.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// W3's interrupt payload.
pub const W3_PAYLOAD: &str = "approve?";
/// W3's resume value.
pub const W3_ANSWER: &str = "yes";

/// Number of nodes of W1.
const W1_NODES: usize = 10;
/// Number of workers of W2.
const W2_WORKERS: usize = 8;

/// W1: `START→n0→…→n9→END`; `ni` returns `{counter: counter+1, log: ["ni"]}`.
///
/// # Errors
/// Only if the graph does not validate (a bug).
pub fn linear() -> anyhow::Result<CompiledGraph<Linear>> {
    let mut g = StateGraph::<Linear>::new("bench-w1", "1").edge(START, "n0");
    for i in 0..W1_NODES {
        let name = format!("n{i}");
        let entry = name.clone();
        g = g.node(name.clone(), move |s: Linear, _ctx: Context| {
            let entry = entry.clone();
            async move {
                Ok::<_, NodeError>(
                    LinearUpdate::default()
                        .counter(s.counter + 1)
                        .log(vec![entry]),
                )
            }
        });
        let next = if i + 1 < W1_NODES {
            format!("n{}", i + 1)
        } else {
            END.to_owned()
        };
        g = g.edge(name, next);
    }
    Ok(g.compile()?)
}

/// Checks W1's final state: `counter == 10`, `log == ["n0", …, "n9"]`.
pub fn check_linear(s: &Linear) -> Result<(), String> {
    let ok = s.counter == W1_NODES as i64
        && s.log.len() == W1_NODES
        && s.log.iter().enumerate().all(|(i, l)| {
            l.len() >= 2 && l.as_bytes()[0] == b'n' && l[1..].parse::<usize>() == Ok(i)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected counter 10 and log n0..n9, got counter {} and log {:?}",
            s.counter, s.log
        ))
    }
}

/// W2: `START→fan`, `fan→w0 … fan→w7`, join `[w0…w7]→join`, `join→END`.
///
/// `fan` returns `{counter: counter+1}`, `wi` returns `{results: ["wi"]}`, `join` returns
/// `{counter: counter + len(results)}`. A worker that finds itself outside superstep 1 fails
/// the run permanently: the eight workers must share one superstep.
///
/// # Errors
/// Only if the graph does not validate (a bug).
pub fn fan_out() -> anyhow::Result<CompiledGraph<FanOut>> {
    let workers: Vec<String> = (0..W2_WORKERS).map(|i| format!("w{i}")).collect();
    let mut g = StateGraph::<FanOut>::new("bench-w2", "1")
        .node("fan", |s: FanOut, _ctx: Context| async move {
            Ok::<_, NodeError>(FanOutUpdate::default().counter(s.counter + 1))
        })
        .node("join", |s: FanOut, _ctx: Context| async move {
            Ok::<_, NodeError>(FanOutUpdate::default().counter(s.counter + s.results.len() as i64))
        })
        .edge(START, "fan")
        .edge("join", END);
    for w in &workers {
        let entry = w.clone();
        g = g
            .node(w.clone(), move |_s: FanOut, ctx: Context| {
                let entry = entry.clone();
                async move {
                    if ctx.superstep() != 1 {
                        return Err(NodeError::permanent(format!(
                            "worker {entry} ran in superstep {}, not 1",
                            ctx.superstep()
                        )));
                    }
                    Ok(FanOutUpdate::default().results(vec![entry]))
                }
            })
            .edge("fan", w.clone());
    }
    Ok(g.join(workers, "join").compile()?)
}

/// Checks W2's final state: `counter == 9`, sorted results `== ["w0", …, "w7"]`.
pub fn check_fan_out(s: &FanOut) -> Result<(), String> {
    let mut sorted: Vec<&str> = s.results.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let ok = s.counter == W2_WORKERS as i64 + 1
        && sorted.len() == W2_WORKERS
        && sorted
            .iter()
            .enumerate()
            .all(|(i, r)| r.len() >= 2 && r.as_bytes()[0] == b'w' && r[1..].parse() == Ok(i));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected counter 9 and results w0..w7, got counter {} and results {:?}",
            s.counter, s.results
        ))
    }
}

/// Nodes of S1.
pub const S1_NODES: [&str; 3] = ["s1", "s2", "s3"];

/// S1: `START→s1→s2→s3→END`; each node returns `{counter: counter+1, log: [its name]}` —
/// next to nothing, so that the server's own cost per run is what S1 measures.
///
/// # Errors
/// Only if the graph does not validate (a bug).
pub fn three_steps() -> anyhow::Result<CompiledGraph<Linear>> {
    let mut g = StateGraph::<Linear>::new("bench-s1", "1").edge(START, S1_NODES[0]);
    for (i, name) in S1_NODES.into_iter().enumerate() {
        g = g.node(name, move |s: Linear, _ctx: Context| async move {
            Ok::<_, NodeError>(
                LinearUpdate::default()
                    .counter(s.counter + 1)
                    .log(vec![name.to_owned()]),
            )
        });
        g = g.edge(name, S1_NODES.get(i + 1).copied().unwrap_or(END));
    }
    Ok(g.compile()?)
}

/// Checks S1's final state: `counter == 3`, `log == ["s1", "s2", "s3"]`.
pub fn check_three_steps(s: &Linear) -> Result<(), String> {
    if s.counter == S1_NODES.len() as i64 && s.log == S1_NODES {
        Ok(())
    } else {
        Err(format!(
            "expected counter 3 and log [s1, s2, s3], got counter {} and log {:?}",
            s.counter, s.log
        ))
    }
}

/// W4's item for step `i`: `format!("{:04}", i)` followed by 60 `x` (64 bytes below 10,000).
pub fn item(i: i64) -> String {
    let mut s = format!("{i:04}");
    s.push_str(&"x".repeat(60));
    s
}

/// W4: one node `step`, `START→step`, then back to `step` while `counter < steps`, else END.
/// With `i = counter`, `step` returns `{counter: i+1, log: [item(i)]}`.
///
/// # Errors
/// Only if the graph does not validate (a bug).
pub fn growth(steps: u32) -> anyhow::Result<CompiledGraph<Linear>> {
    let steps = i64::from(steps);
    Ok(StateGraph::<Linear>::new("bench-w4", "1")
        .node("step", |s: Linear, _ctx: Context| async move {
            let i = s.counter;
            Ok::<_, NodeError>(LinearUpdate::default().counter(i + 1).log(vec![item(i)]))
        })
        .edge(START, "step")
        .conditional_edge("step", ["step", END], move |s: &Linear| {
            if s.counter < steps { "step" } else { END }
        })
        .compile()?)
}

/// Checks W4's final state: `counter == steps`, `steps` items, item `i` is [`item`]`(i)`
/// (so the last starts with `"0099"` at 100 steps).
pub fn check_growth(s: &Linear, steps: u32) -> Result<(), String> {
    let n = steps as usize;
    if s.counter != i64::from(steps) || s.log.len() != n {
        return Err(format!(
            "expected counter {steps} and {steps} items, got counter {} and {} items",
            s.counter,
            s.log.len()
        ));
    }
    for (i, l) in s.log.iter().enumerate() {
        let digits = l.len().saturating_sub(60);
        let ok = l.len() >= 64
            && l[..digits].parse::<usize>() == Ok(i)
            && l.as_bytes()[digits..].iter().all(|&b| b == b'x');
        if !ok {
            return Err(format!("item {i} is {l:?}"));
        }
    }
    Ok(())
}

/// How many times W3's node `a` ran, per thread: it must run exactly once per cycle, so a
/// resume that ran it again shows here even if its update were dropped.
#[derive(Debug, Default)]
pub struct NodeRuns(Mutex<HashMap<String, u32>>);

impl NodeRuns {
    fn hit(&self, thread: &str) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(thread.to_owned()).or_insert(0) += 1;
    }

    /// Executions counted in total, and the number of threads counted more than once (S2,
    /// where the server runs the graph and nothing is taken).
    pub fn summary(&self) -> (u64, u64) {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total = m.values().map(|&n| u64::from(n)).sum();
        let repeated = m.values().filter(|&&n| n > 1).count() as u64;
        (total, repeated)
    }

    /// The executions counted for `thread`, forgetting them (keeps the map small).
    pub fn take(&self, thread: &str) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.remove(thread).unwrap_or(0)
    }
}

/// W3: `START→a→b→c→END`. `a` returns `{log: ["a"]}` (counted in `a_runs`); `b` interrupts
/// with the payload `"approve?"` and, resumed with `v`, returns `{log: ["b:" + v]}`; `c`
/// returns `{log: ["c"]}`.
///
/// `b` also checks that it sees `log == ["a"]` (the state the run stands at while paused)
/// and fails the run permanently otherwise.
///
/// # Errors
/// Only if the graph does not validate (a bug).
pub fn interrupt_resume(a_runs: Arc<NodeRuns>) -> anyhow::Result<CompiledGraph<Approval>> {
    Ok(StateGraph::<Approval>::new("bench-w3", "1")
        .node("a", move |_s: Approval, ctx: Context| {
            a_runs.hit(ctx.thread_id().as_str());
            async move { Ok::<_, NodeError>(ApprovalUpdate::default().log(vec!["a".to_owned()])) }
        })
        .node("b", |s: Approval, ctx: Context| async move {
            if s.log != ["a"] {
                return Err(NodeError::permanent(format!(
                    "b expected log [\"a\"], got {:?}",
                    s.log
                )));
            }
            let v: String = ctx.interrupt(&W3_PAYLOAD).await?;
            Ok(ApprovalUpdate::default().log(vec![format!("b:{v}")]))
        })
        .node("c", |_s: Approval, _ctx: Context| async move {
            Ok::<_, NodeError>(ApprovalUpdate::default().log(vec!["c".to_owned()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
        .compile()?)
}

/// Checks W3's state after the resume: `log == ["a", "b:yes", "c"]`.
pub fn check_approval(s: &Approval) -> Result<(), String> {
    if s.log == ["a", "b:yes", "c"] {
        Ok(())
    } else {
        Err(format!("expected log [a, b:yes, c], got {:?}", s.log))
    }
}

#[cfg(test)]
mod tests {
    use oris::Engine;
    use oris::store::MemoryStore;
    use std::sync::Arc;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn items_are_64_bytes() {
        assert_eq!(item(0).len(), 64);
        assert!(item(99).starts_with("0099x"));
        assert_eq!(item(9999).len(), 64);
    }

    #[test]
    fn workloads_end_in_the_expected_state() {
        rt().block_on(async {
            let engine = Engine::new(Arc::new(MemoryStore::new()));
            let w1 = engine.register(linear().unwrap());
            let s = w1.start("w1", Linear::default()).await.unwrap();
            check_linear(&s.expect_completed()).unwrap();

            let w2 = engine.register(fan_out().unwrap());
            let s = w2.start("w2", FanOut::default()).await.unwrap();
            check_fan_out(&s.expect_completed()).unwrap();

            let s1 = engine.register(three_steps().unwrap());
            let s = s1.start("s1", Linear::default()).await.unwrap();
            check_three_steps(&s.expect_completed()).unwrap();

            let w4 = engine.register(growth(20).unwrap());
            let s = w4.start("w4", Linear::default()).await.unwrap();
            let s = s.expect_completed();
            check_growth(&s, 20).unwrap();
            assert!(s.log[19].starts_with("0019"));

            let a_runs = Arc::new(NodeRuns::default());
            let w3 = engine.register(interrupt_resume(a_runs.clone()).unwrap());
            let first = w3.start("w3", Approval::default()).await.unwrap();
            let [pending] = first.interrupts() else {
                panic!("expected one interrupt, got {first:?}");
            };
            assert_eq!(pending.node, "b");
            assert_eq!(pending.payload, W3_PAYLOAD);
            assert_eq!(w3.state("w3").await.unwrap().values.log, ["a"]);
            let done = w3.resume(pending.interrupt_id, &W3_ANSWER).await.unwrap();
            check_approval(&done.expect_completed()).unwrap();
            assert_eq!(a_runs.summary(), (1, 0));
            assert_eq!(a_runs.take("w3"), 1);
            assert_eq!(a_runs.take("w3"), 0);
            assert_eq!(a_runs.summary(), (0, 0));
        });
    }

    #[test]
    fn checks_reject_wrong_states() {
        let mut s = Linear {
            counter: 10,
            log: (0..10).map(|i| format!("n{i}")).collect(),
        };
        check_linear(&s).unwrap();
        s.log.swap(0, 1);
        assert!(check_linear(&s).is_err());
        let f = FanOut {
            counter: 9,
            results: (0..7).map(|i| format!("w{i}")).collect(),
        };
        assert!(check_fan_out(&f).is_err());
        let g = Linear {
            counter: 3,
            log: vec![item(0), item(2), item(1)],
        };
        assert!(check_growth(&g, 3).is_err());
        let a = Approval {
            log: vec!["a".into(), "b:no".into(), "c".into()],
        };
        assert!(check_approval(&a).is_err());
        let s1 = Linear {
            counter: 3,
            log: vec!["s1".into(), "s3".into(), "s2".into()],
        };
        assert!(check_three_steps(&s1).is_err());
    }
}
