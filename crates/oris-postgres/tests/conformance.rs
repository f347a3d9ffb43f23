//! The storage conformance suite of `oris-testkit`, in a fresh schema per case (dropped
//! after it), twice: with the statement cache (named prepared statements) and without it
//! (unnamed statements, as behind PgBouncer in transaction mode).
//!
//! Needs `ORIS_TEST_PG_URL` (`./scripts/test.sh` starts a throwaway server and sets it);
//! without it every case fails, saying so.

mod support;

mod cached {
    use super::support;

    oris_testkit::store_conformance!(guarded: || support::fresh(true));
}

mod uncached {
    use super::support;

    oris_testkit::store_conformance!(guarded: || support::fresh(false));
}
