//! The pool, one connection in use ([`Conn`]), and the transaction runner with its retry
//! rules.
//!
//! Statements go through [`Conn::query`] and [`Conn::execute`] with their parameter types
//! spelled out, so either path works: with the statement cache, each connection prepares
//! a statement once (named, server-side) and binds it afterwards; without it (for poolers
//! such as PgBouncer in transaction mode, which reject named prepared statements), each
//! call sends an unnamed Parse/Bind/Execute in one round trip. Transactions are opened
//! and closed with simple-protocol `BEGIN`/`COMMIT`, which every pooler accepts.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use futures_util::{TryStreamExt, pin_mut};
use oris_core::id::ThreadId;
use oris_core::store::{Error, Result};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::codec::{Fault, describe, is_connection_lost, is_transient};
use crate::queries::Sql;

/// A parameter with its type.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// How many times a transaction is tried before giving up with `Unavailable`.
const ATTEMPTS: u32 = 5;

/// The shared state of a store: its pool and statements.
#[derive(Debug)]
pub(crate) struct Db {
    pub pool: Pool,
    pub cached: bool,
    pub sql: Sql,
    /// The URL with its password redacted, for messages.
    pub url: String,
}

/// One pooled connection in use. A connection dropped inside a transaction (a panic, or
/// a cancelled read) is closed rather than returned to the pool, so no later user can
/// inherit the transaction.
pub(crate) struct Conn {
    obj: Option<Object>,
    cached: bool,
    in_tx: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("cached", &self.cached)
            .field("in_tx", &self.in_tx)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.in_tx
            && let Some(obj) = self.obj.take()
        {
            // Detached from the pool: dropping the client closes the connection, and the
            // server rolls the transaction back.
            drop(Object::take(obj));
        }
    }
}

impl Conn {
    fn client(&self) -> &Object {
        self.obj
            .as_ref()
            .expect("invariant: a Conn holds its connection until dropped")
    }

    /// Runs a statement and returns its rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let client = self.client();
        if self.cached {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let stmt = client.prepare_typed_cached(sql, &types).await?;
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            client.query(&stmt, &values).await
        } else {
            client.query_typed(sql, params).await
        }
    }

    /// Runs a statement and returns at most one row.
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs a statement and returns the number of rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, tokio_postgres::Error> {
        let client = self.client();
        if self.cached {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let stmt = client.prepare_typed_cached(sql, &types).await?;
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            client.execute(&stmt, &values).await
        } else {
            let stream = client
                .query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone())))
                .await?;
            pin_mut!(stream);
            while stream.try_next().await?.is_some() {}
            Ok(stream.rows_affected().unwrap_or(0))
        }
    }

    /// Runs statements with the simple protocol (no parameters).
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute(sql).await
    }
}

impl Db {
    /// A connection from the pool.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        let obj = self.pool.get().await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot get a connection to {}: {}",
                self.url,
                pool_error(&e)
            ))
        })?;
        Ok(Conn {
            obj: Some(obj),
            cached: self.cached,
            in_tx: false,
        })
    }

    /// Opens a transaction on a pooled connection (see [`transact!`]). `sync = false`
    /// commits with `synchronous_commit = off` (the commit returns before its WAL is
    /// flushed).
    pub(crate) async fn begin(&self, sync: bool) -> Result<Conn, Fault> {
        let mut conn = self.conn().await.map_err(Fault::Store)?;
        conn.in_tx = true;
        conn.batch(if sync {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL synchronous_commit = off"
        })
        .await?;
        Ok(conn)
    }

    /// Ends the transaction of attempt `attempt` whose body returned `outcome`: commits
    /// it, or rolls it back and decides whether to run it again.
    ///
    /// Runs it again (up to [`ATTEMPTS`] times, after a short pause) when it hit a
    /// serialization failure or deadlock, lost its connection before `COMMIT` (the pool
    /// then hands out a fresh one), or asked to with [`Fault::Retry`]. A connection lost
    /// *during* `COMMIT` leaves the outcome unknown: that is `Unavailable`, never retried.
    /// `thread_id` names the thread in errors about refused data.
    pub(crate) async fn finish<T>(
        &self,
        conn: Option<Conn>,
        outcome: Result<T, Fault>,
        attempt: u32,
        thread_id: Option<&ThreadId>,
    ) -> Step<T> {
        let last = attempt >= ATTEMPTS;
        let fault = match (conn, outcome) {
            (Some(mut conn), Ok(value)) => match conn.batch("COMMIT").await {
                Ok(()) => {
                    conn.in_tx = false;
                    return Step::Done(Ok(value));
                }
                Err(e) if is_transient(&e) => Fault::Db(e),
                Err(e) if is_connection_lost(&e) => {
                    return Step::Done(Err(Error::Unavailable(format!(
                        "postgres: the connection was lost during COMMIT, so whether the \
                         write was applied is unknown: {}",
                        describe(&e)
                    ))));
                }
                Err(e) => return Step::Done(Err(Fault::Db(e).into_error(thread_id))),
            },
            (conn, Err(fault)) => {
                if let Some(mut conn) = conn
                    && !matches!(&fault, Fault::Db(e) if is_connection_lost(e))
                    && conn.batch("ROLLBACK").await.is_ok()
                {
                    conn.in_tx = false;
                }
                fault
            }
            (None, Ok(_)) => unreachable!("invariant: a body only runs on an open transaction"),
        };
        let again = match &fault {
            Fault::Retry => true,
            Fault::Db(e) => is_transient(e) || is_connection_lost(e),
            _ => false,
        };
        if again && !last {
            if let Fault::Db(e) = &fault {
                retry_pause(attempt, e).await;
            }
            return Step::Again;
        }
        Step::Done(Err(fault.into_error(thread_id)))
    }

    /// Ends a read (see [`read!`]): whether to run it again on a fresh connection (the
    /// pooled one turned out to be broken).
    pub(crate) async fn finish_read<T>(
        &self,
        conn: Conn,
        outcome: Result<T, Fault>,
        attempt: u32,
    ) -> Step<T> {
        let mut conn = conn;
        match outcome {
            Ok(v) => {
                conn.in_tx = false;
                Step::Done(Ok(v))
            }
            Err(Fault::Db(e)) if is_connection_lost(&e) && attempt < ATTEMPTS => {
                retry_pause(attempt, &e).await;
                Step::Again
            }
            Err(f) => {
                conn.in_tx = false;
                Step::Done(Err(f.into_error(None)))
            }
        }
    }

    /// A connection for a read. Marked busy until [`finish_read`](Self::finish_read): a
    /// read cancelled midway closes its connection rather than return it with a result
    /// pending.
    pub(crate) async fn read_conn(&self) -> Result<Conn> {
        let mut conn = self.conn().await?;
        conn.in_tx = true;
        Ok(conn)
    }
}

/// What [`Db::finish`] decided.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// The result.
    Done(Result<T>),
    /// Run the transaction again.
    Again,
}

/// Runs `$body` (an expression using `$conn: &Conn`, evaluating to a future of
/// `Result<T, Fault>`) in a transaction, with [`Db::finish`]'s retry rules. A macro rather
/// than a function taking a closure: an async closure borrowing the connection cannot
/// (yet) promise that its future is `Send` for every borrow.
macro_rules! transact {
    ($db:expr, $thread:expr, $sync:expr, |$conn:ident| $body:expr) => {{
        let db: &$crate::conn::Db = &$db;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let step = match db.begin($sync).await {
                Ok(conn) => {
                    let outcome = {
                        let $conn = &conn;
                        $body.await
                    };
                    db.finish(Some(conn), outcome, attempt, $thread).await
                }
                Err(fault) => db.finish::<_>(None, Err(fault), attempt, $thread).await,
            };
            match step {
                $crate::conn::Step::Done(result) => break result,
                $crate::conn::Step::Again => continue,
            }
        }
    }};
}

/// Runs `$body` (as for [`transact!`]) outside a transaction — one statement sees one
/// snapshot — retrying on a fresh connection if the pooled one was broken.
macro_rules! read {
    ($db:expr, |$conn:ident| $body:expr) => {{
        let db: &$crate::conn::Db = &$db;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let conn = match db.read_conn().await {
                Ok(conn) => conn,
                Err(e) => break Err(e),
            };
            let outcome = {
                let $conn = &conn;
                $body.await
            };
            match db.finish_read(conn, outcome, attempt).await {
                $crate::conn::Step::Done(result) => break result,
                $crate::conn::Step::Again => continue,
            }
        }
    }};
}

async fn retry_pause(attempt: u32, e: &tokio_postgres::Error) {
    tracing::debug!(attempt, error = %describe(e), "postgres transaction retried");
    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
}

/// A pool error as text (never containing the URL's password: the driver's messages do
/// not include the connection string).
pub(crate) fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => describe(e),
        PoolError::Timeout(_) => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}
