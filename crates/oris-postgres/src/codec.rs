//! Conversions between Rust values and columns, with validation on the way back, and the
//! mapping of driver errors.
//!
//! Everything read back is checked: a value out of range, of an unknown code, or that does
//! not decode becomes [`Fault::Bad`] with the column name, which the caller turns into
//! [`Error::Corrupt`] naming the thread and seq. Nothing read back is defaulted.

use oris_core::event::{Boundary, EventKind, Payload};
use oris_core::id::{Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::Error;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;

/// Why an operation failed inside the backend, before it becomes an [`Error`].
#[derive(Debug)]
pub(crate) enum Fault {
    /// The driver failed.
    Db(tokio_postgres::Error),
    /// A stored value is malformed; the detail names the column. Needs the thread (and
    /// seq) from the caller to become [`Error::Corrupt`].
    Bad(String),
    /// A store-level outcome (validation failure, corruption with context).
    Store(Error),
    /// A race that re-running the transaction resolves (a concurrent first commit of the
    /// same thread, a concurrent delivery with the same idempotency key).
    Retry,
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Fault::Db(e)
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Store(e)
    }
}

impl Fault {
    /// Gives a [`Fault::Bad`] its thread and seq.
    pub(crate) fn at(self, thread_id: &ThreadId, seq: Option<Seq>) -> Fault {
        match self {
            Fault::Bad(detail) => Fault::Store(Error::Corrupt {
                thread_id: thread_id.clone(),
                seq,
                detail,
            }),
            other => other,
        }
    }

    /// Prefixes the detail of a [`Fault::Bad`].
    pub(crate) fn within(self, prefix: impl std::fmt::Display) -> Fault {
        match self {
            Fault::Bad(d) => Fault::Bad(format!("{prefix}: {d}")),
            other => other,
        }
    }

    /// The error to return across the [`Store`](oris_core::store::Store) boundary.
    /// `thread_id` names the thread of a write refused by a schema constraint.
    pub(crate) fn into_error(self, thread_id: Option<&ThreadId>) -> Error {
        match self {
            Fault::Db(e) if is_data_error(&e) => Error::InvalidCommit {
                thread_id: thread_id.cloned().unwrap_or_else(unknown_thread),
                detail: format!("refused by the schema: {}", describe(&e)),
            },
            Fault::Db(e) => unavailable(&e),
            // Every decoder is called with its thread at hand; reaching this is a bug in
            // this crate, reported as corruption of an unnamed thread rather than hidden.
            Fault::Bad(detail) => Error::Corrupt {
                thread_id: thread_id.cloned().unwrap_or_else(unknown_thread),
                seq: None,
                detail,
            },
            Fault::Store(e) => e,
            Fault::Retry => Error::Unavailable(
                "postgres: a concurrent write kept changing the rows this one depends on".into(),
            ),
        }
    }
}

/// A driver error as text: the server's message and SQLSTATE when there is one. Driver
/// errors never carry the connection URL, so this never shows a password.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            // The driver's message alone can be vague ("error connecting to server"): add
            // its causes ("Connection refused (os error 111)").
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let c = cause.to_string();
                if !text.contains(&c) {
                    text.push_str(": ");
                    text.push_str(&c);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// Maps a driver error. Driver errors never cross the `Store` trait.
pub(crate) fn unavailable(e: &tokio_postgres::Error) -> Error {
    Error::Unavailable(format!("postgres: {}", describe(e)))
}

/// Whether a driver error is about the data of one write (a constraint refused it) rather
/// than the database.
pub(crate) fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("23"))
}

/// Whether the error is a unique violation of `constraint`.
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// Whether re-running the whole transaction may succeed: serialization failures and
/// deadlocks.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Whether the connection is gone (the server restarted, the socket broke): nothing of the
/// current transaction was committed, unless the error came from its `COMMIT`.
pub(crate) fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(c) = e.code() {
        let c = c.code();
        return c.starts_with("08") || c.starts_with("57P");
    }
    std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

/// The thread named in a corruption report when the stored thread id itself is unreadable.
pub(crate) fn unknown_thread() -> ThreadId {
    ThreadId::new("unknown").expect("`unknown` is a valid thread id")
}

pub(crate) fn invalid(thread_id: &ThreadId, detail: impl Into<String>) -> Fault {
    Fault::Store(Error::InvalidCommit {
        thread_id: thread_id.clone(),
        detail: detail.into(),
    })
}

// ---------------------------------------------------------------------------------------
// Event kinds

/// The storage code of an event kind ([`EventKind::code`], the same numbers in every
/// backend). `Option` for symmetry with [`kind_from_code`]: every kind has one.
pub(crate) fn kind_code(kind: EventKind) -> Option<i16> {
    Some(i16::from(kind.code()))
}

/// The inverse of [`kind_code`]; `None` for an unknown code.
pub(crate) fn kind_from_code(code: i16) -> Option<EventKind> {
    EventKind::from_code(i64::from(code))
}

// ---------------------------------------------------------------------------------------
// Status and boundary

/// The `status` and `status_data` columns of a status ([`RunStatus::to_columns`]).
pub(crate) fn encode_status(status: &RunStatus) -> Result<(&'static str, String), String> {
    status.to_columns()
}

/// Rebuilds a status from its two columns ([`RunStatus::from_columns`]).
pub(crate) fn decode_status(status: &str, data: String) -> Result<RunStatus, Fault> {
    RunStatus::from_columns(status, data).map_err(Fault::Bad)
}

/// A snapshot's `boundary` column.
pub(crate) fn decode_boundary(text: String) -> Result<Boundary, Fault> {
    let payload = Payload::from_json(text)
        .map_err(|e| Fault::Bad(format!("column `boundary` is not JSON: {e}")))?;
    payload
        .decode()
        .map_err(|e| Fault::Bad(format!("column `boundary` {e}")))
}

// ---------------------------------------------------------------------------------------
// Columns

/// A nullable column.
pub(crate) fn opt<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    col: &str,
) -> Result<Option<T>, Fault> {
    row.try_get::<_, Option<T>>(i)
        .map_err(|e| Fault::Bad(format!("column `{col}`: {e}")))
}

/// A NOT NULL column.
pub(crate) fn req<'a, T: FromSql<'a>>(row: &'a Row, i: usize, col: &str) -> Result<T, Fault> {
    opt(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A `bigint` holding a seq, or null.
pub(crate) fn opt_seq(row: &Row, i: usize, col: &str) -> Result<Option<Seq>, Fault> {
    opt::<i64>(row, i, col)?
        .map(|v| {
            u64::try_from(v)
                .map(Seq)
                .map_err(|_| Fault::Bad(format!("column `{col}`: {v} is not a seq")))
        })
        .transpose()
}

/// A NOT NULL `bigint` holding a seq.
pub(crate) fn seq(row: &Row, i: usize, col: &str) -> Result<Seq, Fault> {
    opt_seq(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A `bigint` holding a `u32`, or null.
pub(crate) fn opt_u32(row: &Row, i: usize, col: &str) -> Result<Option<u32>, Fault> {
    opt::<i64>(row, i, col)?
        .map(|v| {
            u32::try_from(v).map_err(|_| Fault::Bad(format!("column `{col}`: {v} is out of range")))
        })
        .transpose()
}

/// A NOT NULL `bigint` holding a `u32`.
pub(crate) fn u32_col(row: &Row, i: usize, col: &str) -> Result<u32, Fault> {
    opt_u32(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A NOT NULL timestamp (milliseconds).
pub(crate) fn time(row: &Row, i: usize, col: &str) -> Result<Timestamp, Fault> {
    req::<i64>(row, i, col).map(Timestamp)
}

/// A `text` column holding JSON, or null.
pub(crate) fn opt_payload(row: &Row, i: usize, col: &str) -> Result<Option<Payload>, Fault> {
    opt::<String>(row, i, col)?
        .map(|t| {
            Payload::from_json(t)
                .map_err(|e| Fault::Bad(format!("column `{col}` is not JSON: {e}")))
        })
        .transpose()
}

/// A NOT NULL `text` column holding JSON.
pub(crate) fn payload(row: &Row, i: usize, col: &str) -> Result<Payload, Fault> {
    opt_payload(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A NOT NULL thread id column.
pub(crate) fn thread_id(row: &Row, i: usize, col: &str) -> Result<ThreadId, Fault> {
    let raw: String = req(row, i, col)?;
    ThreadId::new(&raw).map_err(|e| Fault::Bad(format!("column `{col}` holds {raw:?}: {e}")))
}

/// A seq as a `bigint` parameter.
pub(crate) fn seq_param(thread_id: &ThreadId, s: Seq) -> Result<i64, Fault> {
    i64::try_from(s.0).map_err(|_| invalid(thread_id, format!("seq {s} is out of range")))
}

/// Redacts the password of a connection string (URL or `key=value` form), for messages.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                    None => authority.to_owned(),
                }
            }
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => kv.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{scheme}{authority}{tail}")
    } else {
        url.split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, want) in [
            (
                "postgres://oris:s3cret@db:5432/oris",
                "postgres://oris:***@db:5432/oris",
            ),
            (
                "postgresql://oris:p%40ss@db/oris?sslmode=disable",
                "postgresql://oris:***@db/oris?sslmode=disable",
            ),
            (
                "postgres://oris@db/oris?password=s3cret&x=1",
                "postgres://oris@db/oris?password=***&x=1",
            ),
            ("postgres://db", "postgres://db"),
            (
                "host=db user=oris password=s3cret",
                "host=db user=oris password=***",
            ),
        ] {
            let got = redact_url(url);
            assert_eq!(got, want);
            assert!(!got.contains("s3cret") && !got.contains("p%40ss"));
        }
    }

    #[test]
    fn kind_codes_round_trip() {
        for k in EventKind::ALL {
            let code = kind_code(k).unwrap();
            assert_eq!(kind_from_code(code), Some(k));
        }
        assert_eq!(kind_from_code(99), None);
    }
}
