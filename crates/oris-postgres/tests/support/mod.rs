//! The PostgreSQL test fixture: a fresh schema per test in the database at
//! `ORIS_TEST_PG_URL`, dropped when the guard is.

#![allow(dead_code)]

use oris_postgres::{PostgresOptions, PostgresStore};

/// The database URL the tests use. Panics (the test fails, it is never skipped) when it
/// is not set.
pub fn url() -> String {
    match std::env::var("ORIS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "ORIS_TEST_PG_URL is not set: the PostgreSQL tests need a server. Run \
             ./scripts/test.sh (it starts a throwaway one), or set \
             ORIS_TEST_PG_URL=postgres://USER@HOST:PORT/DB"
        ),
    }
}

/// A fresh schema name.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// Drops its schema when dropped (from a thread of its own, so it may be dropped inside
/// a runtime).
#[derive(Debug)]
pub struct SchemaGuard {
    pub url: String,
    pub schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to drop the schema");
                let driver = tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .expect("drop the schema");
                drop(client);
                let _ = driver.await;
            });
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("dropping schema {} failed", self.schema);
        }
    }
}

/// Options for a store in `schema`.
pub fn options(schema: &str, statement_cache: bool) -> PostgresOptions {
    PostgresOptions {
        schema: Some(schema.to_owned()),
        statement_cache,
        ..PostgresOptions::default()
    }
}

/// A store in a fresh schema, and the guard that drops the schema.
pub async fn fresh(statement_cache: bool) -> (PostgresStore, SchemaGuard) {
    let url = url();
    let schema = fresh_schema();
    let guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let store = PostgresStore::connect(&url, options(&schema, statement_cache))
        .await
        .expect("the store connects");
    (store, guard)
}

/// Runs SQL on a connection of its own, with `search_path` set to `schema`.
pub async fn raw(schema: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\"; {sql}"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = driver.await;
}

/// Runs a query returning one text column per row, with `search_path` set to `schema`.
pub async fn raw_query(schema: &str, sql: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
        .expect("search_path");
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = driver.await;
    rows.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect()
}
