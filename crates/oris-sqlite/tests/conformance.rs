//! The storage conformance suite of `oris-testkit`, on a fresh database file per case.

use oris_sqlite::{SqliteOptions, SqliteStore};

oris_testkit::store_conformance!(guarded: || async {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("oris.db"), SqliteOptions::default())
        .await
        .expect("the store opens");
    (store, dir)
});
