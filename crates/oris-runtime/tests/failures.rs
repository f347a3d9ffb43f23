//! Node failures: retries (backoff, exhaustion, permanent errors, filters), panics, node
//! and run timeouts. Time-based tests run on tokio's paused clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use oris_core::event::{EventBody, Failure, FailureKind};
use oris_core::graph::{END, START};
use oris_core::status::RunStatus;
use oris_runtime::{
    Context, EngineOptions, GraphHandle, NodeError, NodePolicy, RetryPolicy, RunOptions, StateGraph,
};
use tokio::time::Instant;

/// A one-node graph (`START → n → END`) whose node is `body`.
fn single<F, Fut>(policy: NodePolicy, body: F) -> GraphHandle<Lin>
where
    F: Fn(Lin, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<LinUpdate, NodeError>> + Send + 'static,
{
    let g = StateGraph::<Lin>::new("single", "1")
        .node_with("n", policy, body)
        .edge(START, "n")
        .edge("n", END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    engine.register(g)
}

fn retry(policy: RetryPolicy) -> NodePolicy {
    NodePolicy {
        retry: policy,
        timeout: None,
    }
}

/// `(attempt, retry_at - at in ms, error)` of every NodeFailed event.
async fn failures(h: &GraphHandle<Lin>, thread: &str) -> Vec<(u32, Option<i64>, Failure)> {
    all_events(h.engine(), thread)
        .await
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::NodeFailed {
                attempt,
                retry_at,
                error,
                node,
                ..
            } => {
                assert_eq!(node, "n");
                Some((attempt, retry_at.map(|r| r.0 - e.at.0), error))
            }
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 8. Retries
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failing_node_is_retried_with_exponential_backoff_until_it_succeeds() {
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let s2 = seen.clone();
    let policy = RetryPolicy::exponential(3)
        .initial_interval(Duration::from_secs(10))
        .backoff_factor(2.0)
        .jitter(false);
    let h = single(retry(policy), move |_s, ctx| {
        s2.lock().unwrap().push((ctx.attempt(), Instant::now()));
        async move {
            if ctx.attempt() < 3 {
                Err(NodeError::new(format!("flaky attempt {}", ctx.attempt())))
            } else {
                Ok(LinUpdate::default().counter(i64::from(ctx.attempt())))
            }
        }
    });
    let s = h
        .start("retry", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 3, "ctx.attempt() is 3 on the successful attempt");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(seen[1].1 - seen[0].1, Duration::from_secs(10));
    assert_eq!(seen[2].1 - seen[1].1, Duration::from_secs(20));

    let fails = failures(&h, "retry").await;
    assert_eq!(fails.len(), 2);
    for (i, (attempt, delay, error)) in fails.iter().enumerate() {
        assert_eq!(*attempt, i as u32 + 1);
        let want = 10_000 * (1 << i);
        let delay = delay.expect("a retry follows");
        assert!(
            (want - 1_000..=want).contains(&delay),
            "retry_at is {delay} ms after the failure, want {want}"
        );
        assert_eq!(error.kind, FailureKind::NodeError);
        assert_eq!(error.message, format!("flaky attempt {attempt}"));
        assert_eq!(error.node.as_deref(), Some("n"));
    }
    let kinds: Vec<_> = all_events(h.engine(), "retry")
        .await
        .iter()
        .map(|e| (e.body.kind().as_str(), e.body.attempt()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("run_started", None),
            ("node_failed", Some(1)),
            ("node_failed", Some(2)),
            ("node_completed", Some(3)),
            ("run_completed", None),
        ]
    );
    assert!(h.verify("retry").await.unwrap().is_consistent());
}

/// An error with a source, so that the cause chain is visible.
#[derive(Debug)]
struct Outer(std::io::Error);

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("could not fetch the quote")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_fail_the_run_with_the_nodes_error() {
    let runs = Counters::new();
    let r = runs.clone();
    let policy = RetryPolicy::exponential(3)
        .initial_interval(Duration::from_millis(5))
        .jitter(false);
    let h = single(retry(policy), move |_s, _ctx| {
        r.hit("n");
        async {
            let e = Outer(std::io::Error::other("connection reset"));
            Err::<LinUpdate, _>(NodeError::from(e))
        }
    });
    let out = h.start("exhaust", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::NodeError);
    assert_eq!(f.message, "could not fetch the quote");
    assert_eq!(f.chain, ["connection reset"]);
    assert_eq!(f.node.as_deref(), Some("n"));
    assert_eq!(runs.count("n"), 3);
    let fails = failures(&h, "exhaust").await;
    let attempts: Vec<(u32, bool)> = fails.iter().map(|f| (f.0, f.1.is_some())).collect();
    assert_eq!(
        attempts,
        [(1, true), (2, true), (3, false)],
        "no retry_at on the last"
    );
    let run = h.engine().latest_run(&tid("exhaust")).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed { error: f });
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let runs = Counters::new();
    let r = runs.clone();
    let policy = RetryPolicy::exponential(5).initial_interval(Duration::from_millis(5));
    let h = single(retry(policy), move |_s, _ctx| {
        r.hit("n");
        async { Err::<LinUpdate, _>(NodeError::permanent("invalid account number")) }
    });
    let out = h.start("perm", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails");
    assert_eq!(f.kind, FailureKind::NodeError);
    assert_eq!(f.message, "invalid account number");
    assert_eq!(runs.count("n"), 1);
    let fails = failures(&h, "perm").await;
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].1, None);
}

#[tokio::test(start_paused = true)]
async fn retry_filter_decides_which_errors_are_retried() {
    let runs = Counters::new();
    let r = runs.clone();
    let policy = RetryPolicy::exponential(5)
        .initial_interval(Duration::from_millis(5))
        .retry_on(|e| e.message().starts_with("transient"));
    let h = single(retry(policy), move |_s, ctx| {
        r.hit("n");
        async move {
            Err::<LinUpdate, _>(if ctx.attempt() < 3 {
                NodeError::new("transient: 503")
            } else {
                NodeError::new("bad data in row 7")
            })
        }
    });
    let out = h.start("filter", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails");
    assert_eq!(f.message, "bad data in row 7");
    assert_eq!(
        runs.count("n"),
        3,
        "two filtered retries, then a refused one"
    );
    let fails: Vec<(u32, bool)> = failures(&h, "filter")
        .await
        .iter()
        .map(|f| (f.0, f.1.is_some()))
        .collect();
    assert_eq!(fails, [(1, true), (2, true), (3, false)]);
}

#[tokio::test(start_paused = true)]
async fn panicking_node_fails_the_run_without_retry() {
    let runs = Counters::new();
    let r = runs.clone();
    let policy = RetryPolicy::exponential(5).initial_interval(Duration::from_millis(5));
    let h = single(retry(policy), move |s, _ctx| {
        r.hit("n");
        async move {
            if s.counter == 0 {
                panic!("kaboom in node");
            }
            Ok(LinUpdate::default())
        }
    });
    let out = h.start("panic", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::NodePanicked);
    assert!(f.message.contains("kaboom in node"), "{f}");
    assert_eq!(f.node.as_deref(), Some("n"));
    assert_eq!(runs.count("n"), 1);
    let fails = failures(&h, "panic").await;
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].1, None, "no retry scheduled");
    let run = h.engine().latest_run(&tid("panic")).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed { error: f });
    // The engine survives the panic: the same thread takes a new run.
    let s = h
        .start(
            "panic",
            Lin {
                counter: 1,
                log: vec![],
            },
        )
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 1);
}

// ---------------------------------------------------------------------------------------
// 9. Timeouts
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn node_timeout_fails_the_attempt_with_node_timeout() {
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = single(
        NodePolicy {
            retry: RetryPolicy::none(),
            timeout: Some(Duration::from_secs(5)),
        },
        move |_s, _ctx| {
            let b = b.clone();
            async move {
                b.block().await;
                Ok(LinUpdate::default())
            }
        },
    );
    let t0 = Instant::now();
    let out = within("the run", h.start("slow", Lin::default()))
        .await
        .unwrap();
    probe.started().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    let f = out.failure().expect("the run fails");
    assert_eq!(f.kind, FailureKind::NodeTimeout);
    assert_eq!(f.node.as_deref(), Some("n"));
    within("the timed-out attempt to be dropped", dropped)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempt_is_retried_like_any_error() {
    let policy = NodePolicy {
        retry: RetryPolicy::exponential(2)
            .initial_interval(Duration::from_secs(1))
            .jitter(false),
        timeout: Some(Duration::from_secs(5)),
    };
    let h = single(policy, move |_s, ctx| async move {
        if ctx.attempt() == 1 {
            std::future::pending::<()>().await;
        }
        Ok(LinUpdate::default().counter(i64::from(ctx.attempt())))
    });
    let t0 = Instant::now();
    let s = h
        .start("slow-once", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 2);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(6),
        "5 s timeout + 1 s backoff"
    );
    let fails = failures(&h, "slow-once").await;
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].2.kind, FailureKind::NodeTimeout);
}

#[tokio::test(start_paused = true)]
async fn run_timeout_fails_the_run_and_drops_running_nodes() {
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = single(NodePolicy::default(), move |_s, _ctx| {
        let b = b.clone();
        async move {
            b.block().await;
            Ok(LinUpdate::default())
        }
    });
    let t0 = Instant::now();
    let out = within(
        "the run",
        h.start_with(
            "deadline",
            Lin::default(),
            RunOptions {
                timeout: Some(Duration::from_secs(3)),
                ..RunOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    probe.started().await;
    let elapsed = t0.elapsed();
    assert!(
        (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&elapsed),
        "{elapsed:?}"
    );
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::RunTimeout);
    within("the node to be dropped", dropped).await.unwrap();
    let run = h.engine().latest_run(&tid("deadline")).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed { error: f });
    match &all_events(h.engine(), "deadline").await[0].body {
        EventBody::RunStarted { settings, .. } => assert!(settings.deadline.is_some()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn run_timeout_counts_from_the_start_across_supersteps() {
    // Each superstep takes 1 s; a 5.5 s budget allows exactly five.
    let g = StateGraph::<Lin>::new("ticks", "1")
        .node("tick", |s: Lin, _ctx| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1))
        })
        .edge(START, "tick")
        .conditional_edge("tick", ["tick", END], |_s: &Lin| "tick")
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions {
        run_timeout: Some(Duration::from_millis(5_500)),
        ..EngineOptions::default()
    });
    let h = engine.register(g);
    let out = h.start("ticks", Lin::default()).await.unwrap();
    assert_eq!(out.failure().unwrap().kind, FailureKind::RunTimeout);
    assert_eq!(h.state("ticks").await.unwrap().values.counter, 5);
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_retry_backoff_ends_the_run_at_once() {
    let runs = Counters::new();
    let r = runs.clone();
    let policy = RetryPolicy::exponential(3)
        .initial_interval(Duration::from_secs(3_600))
        .jitter(false);
    let g = StateGraph::<Lin>::new("single", "1")
        .node_with("n", retry(policy), move |_s: Lin, _ctx| {
            r.hit("n");
            async { Err::<LinUpdate, _>(NodeError::new("down")) }
        })
        .edge(START, "n")
        .edge("n", END)
        .compile()
        .unwrap();
    let rec = Recorder::new();
    let (_store, engine) = memory_engine(rec.options());
    let h = engine.register(g);
    let task = {
        let h = h.clone();
        tokio::spawn(async move { h.start("backoff", Lin::default()).await })
    };
    within(
        "the first failure",
        rec.wait_until("backoff", |c| c.len() == 2),
    )
    .await;
    let t0 = Instant::now();
    engine.cancel(&tid("backoff"), "give up").await.unwrap();
    let out = within("the run", task).await.unwrap().unwrap();
    assert!(
        matches!(out, oris_runtime::RunOutcome::Cancelled { .. }),
        "{out:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "did not wait out the backoff"
    );
    assert_eq!(runs.count("n"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_panicking_before_its_future_is_built_fails_the_run_with_node_panicked() {
    // The closure panics in its synchronous part (e.g. an index out of bounds before the
    // `async` block): still a node panic, alone or next to other tasks.
    for parallel in [false, true] {
        let sync_panic = |s: Lin, _ctx: Context| {
            let first = &s.log[5];
            let first = first.clone();
            async move { Ok::<_, NodeError>(LinUpdate::default().log(vec![first])) }
        };
        let ok = |_s: Lin, _ctx: Context| async {
            Ok::<_, NodeError>(LinUpdate::default().log(vec!["ok".to_owned()]))
        };
        let mut g = StateGraph::<Lin>::new("sync-panic", "1")
            .node("bad", sync_panic)
            .edge(START, "bad")
            .edge("bad", END);
        if parallel {
            g = g.node("good", ok).edge(START, "good").edge("good", END);
        }
        let (_store, engine) = memory_engine(EngineOptions::default());
        let h = engine.register(g.compile().unwrap());
        let thread = format!("sync-panic-{parallel}");
        let run = {
            let h = h.clone();
            let thread = thread.clone();
            tokio::spawn(async move { h.start(thread, Lin::default()).await })
        };
        let out = within("the run", run)
            .await
            .expect("the driver must not panic")
            .unwrap();
        let f = out.failure().expect("the run fails");
        assert_eq!(f.kind, FailureKind::NodePanicked, "parallel: {parallel}");
        assert_eq!(f.node.as_deref(), Some("bad"));
        assert!(f.message.contains("index out of bounds"), "{f}");
        let run = engine.latest_run(&tid(&thread)).await.unwrap();
        assert!(matches!(run.status, RunStatus::Failed { .. }), "{run:?}");
    }
}
