//! [`store_conformance!`](crate::store_conformance) and the runner behind it.

/// Instantiates the storage conformance suite: one `#[test]` per case of
/// [`conformance`](crate::conformance), each run on a fresh multi-thread Tokio runtime
/// against a fresh store from the factory.
///
/// ```ignore
/// // A factory returning the store:
/// oris_testkit::store_conformance!(|| async { MemoryStore::new() });
///
/// // A factory returning `(store, guard)`: the guard (a temp dir, a database schema…) lives
/// // until the case ends; when the case passes it is dropped after the store, still inside
/// // the runtime (so its `Drop` may use `tokio::runtime::Handle::current()`).
/// oris_testkit::store_conformance!(guarded: || async {
///     let dir = tempfile::tempdir().unwrap();
///     let store = SqliteStore::open(dir.path().join("oris.db")).await.unwrap();
///     (store, dir)
/// });
///
/// // Attributes before the factory go on every generated test:
/// oris_testkit::store_conformance!(
///     #[cfg_attr(not(feature = "pg-tests"), ignore = "needs a PostgreSQL server")]
///     guarded: || async { pg_fixture().await }
/// );
/// ```
///
/// The factory is any expression callable with no arguments that returns a future (a
/// closure `|| async { … }` or the name of an `async fn`). It is called once per case and
/// must return a store that no other case sees; setup failures should panic. The generated
/// tests are plain `#[test]` functions named after the cases (wrap the macro in a `mod` to
/// instantiate it twice in one file); the runtime is built by the testkit, so the calling
/// crate needs no dependency but `oris-testkit` and whatever its factory uses. Each case
/// fails after [`CASE_TIMEOUT`](crate::CASE_TIMEOUT) rather than hanging on a deadlock.
#[macro_export]
macro_rules! store_conformance {
    ($(#[$attr:meta])* guarded: $factory:expr $(,)?) => {
        $crate::__conformance_cases! { tests [$(#[$attr])*] run_guarded_case ($factory) }
    };
    ($(#[$attr:meta])* $factory:expr $(,)?) => {
        $crate::__conformance_cases! { tests [$(#[$attr])*] run_case ($factory) }
    };
}

/// The one list of cases: expands `__conformance_emit!` with it. Every `pub async fn` of
/// `conformance` must appear here; the testkit's `cases_are_listed` test checks it.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($($mode:tt)*) => {
        $crate::__conformance_emit! {
            [$($mode)*]
            // lifecycle
            first_commit_creates_thread,
            append_with_expected_head_advances,
            wrong_expected_head_conflicts,
            empty_commit_checks_head,
            unknown_thread_or_run_is_not_found,
            second_run_rejected_while_first_active,
            next_run_continues_the_log,
            next_run_of_another_graph_is_rejected,
            // validation
            non_contiguous_seqs_are_invalid,
            events_of_inactive_run_are_invalid,
            run_creation_rules_are_enforced,
            allowed_transitions_succeed,
            disallowed_transitions_are_rejected,
            status_of_another_threads_run_is_invalid,
            // endings
            terminal_status_requires_its_event,
            terminal_event_requires_its_status,
            terminal_event_must_be_last,
            terminal_event_must_match_status,
            status_change_without_events_is_invalid,
            // reads
            events_paging_returns_exact_slices,
            extreme_read_bounds,
            // snapshots
            snapshot_round_trips,
            snapshot_respects_bound,
            newer_snapshot_replaces_older,
            delete_snapshots_counts,
            snapshot_outside_log_is_invalid,
            snapshot_only_commit,
            snapshot_of_another_run_is_invalid,
            // runs
            runs_filter_by_thread_graph_status,
            runs_unfinished,
            runs_paginate_in_creation_order,
            // payloads
            every_event_body_round_trips,
            large_payloads_round_trip,
            json_is_stored_verbatim,
            workflow_event_bodies_round_trip,
            // edges
            thread_id_edge_cases,
            all_durabilities_are_accepted,
            // atomicity
            failed_commit_is_all_or_nothing,
            failing_commit_does_not_affect_other_threads,
            // concurrency
            concurrent_appends_exactly_one_wins,
            concurrent_creations_exactly_one_wins,
            status_change_races_append_exactly_one_wins,
            many_threads_commit_concurrently,
            reads_during_writes_see_committed_prefixes,
            // suspension
            suspended_statuses_round_trip,
            suspended_statuses_refuse_other_edges,
            runs_unfinished_lists_suspended_runs,
            // interrupts
            raised_interrupts_are_recorded,
            answer_interrupt_records_once,
            resumed_interrupts_are_marked_applied,
            interrupt_of_ended_run_is_not_pending,
            duplicate_interrupt_id_is_invalid,
            concurrent_answers_exactly_one_wins,
            // deliveries
            deliveries_are_buffered_in_order,
            delivery_keys_are_idempotent,
            concurrent_deliveries_with_one_key_record_one,
            // edits
            idle_thread_accepts_edits_by_last_run,
            // retention
            delete_thread_removes_everything,
            prune_keeps_a_self_contained_log,
            // timers
            due_runs_are_found_by_wake_time,
            // claims
            queued_runs_are_claimed_once_per_lease,
            claims_follow_priority_then_readiness,
            claims_honour_the_graph_filter,
            only_ready_unfinished_runs_are_claimable,
            concurrent_claimers_take_each_run_once,
            // leases
            fenced_commits_need_the_current_lease,
            fenced_commit_of_another_run_is_lost,
            renewals_extend_only_a_live_lease,
            releases_hand_runs_back,
            // reaping
            reaping_clears_only_expired_leases,
            reaping_takes_at_most_limit,
            lease_counts_count_live_leases_per_graph,
            // workers
            workers_register_touch_and_list,
            // pending runs
            pending_runs_queue_per_thread,
            pending_threads_are_free_threads_with_pending_runs,
            // readiness
            status_changes_end_or_keep_the_lease,
            answers_make_interrupted_runs_ready,
            deliveries_make_waiting_runs_ready,
            released_suspended_runs_stay_ready,
            library_runs_are_never_claimable,
            // listing
            runs_filter_by_time_and_metadata,
            interrupts_are_listed_across_threads,
            // idempotency
            idempotency_keys_reserve_replay_and_expire,
            purge_deletes_expired_idempotency_records,
            concurrent_reservations_reserve_once,
            // access
            api_keys_are_stored_listed_and_revoked,
            audit_log_appends_and_filters,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_emit {
    ([names] $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
    ([tests $attrs:tt $runner:ident $factory:tt] $($case:ident),* $(,)?) => {
        $( $crate::__conformance_test! { $attrs $runner $factory $case } )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ([$(#[$attr:meta])*] $runner:ident ($factory:expr) $case:ident) => {
        $(#[$attr])*
        #[test]
        fn $case() {
            $crate::__private::$runner(
                stringify!($case),
                $factory,
                $crate::conformance::$case,
            );
        }
    };
}

/// Support for the macro; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::sync::Arc;

    use oris_core::store::Store;

    /// Runs `case` against the store the factory returns.
    pub fn run_case<F, Fut, S, C, CFut>(name: &str, factory: F, case: C)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = S>,
        S: Store,
        C: FnOnce(Arc<dyn Store>) -> CFut,
        CFut: Future<Output = ()>,
    {
        run_guarded_case(name, || async { (factory().await, ()) }, case);
    }

    /// Runs `case` against the store of the `(store, guard)` the factory returns; the guard
    /// is dropped after the store.
    pub fn run_guarded_case<F, Fut, S, G, C, CFut>(name: &str, factory: F, case: C)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (S, G)>,
        S: Store,
        C: FnOnce(Arc<dyn Store>) -> CFut,
        CFut: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{name}: cannot build a Tokio runtime: {e}"));
        runtime.block_on(async {
            // Declared first, dropped last: after the store, even when the case panics.
            let (store, guard) = factory().await;
            let store: Arc<dyn Store> = Arc::new(store);
            if tokio::time::timeout(crate::CASE_TIMEOUT, case(store))
                .await
                .is_err()
            {
                panic!(
                    "{name}: did not finish within {:?} (a deadlock or a lost wake-up?)",
                    crate::CASE_TIMEOUT
                );
            }
            drop(guard);
        });
    }
}
