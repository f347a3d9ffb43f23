//! Conversions between Rust values and columns, with validation on the way back.
//!
//! Everything read from the file is checked: a value of the wrong type, out of range, or
//! that does not decode becomes [`Fault::Bad`] with the column name, which the caller turns
//! into [`Error::Corrupt`] naming the thread and seq. Nothing read back is defaulted.

use oris_core::event::{Boundary, EventKind, Payload};
use oris_core::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::Error;
use rusqlite::Row;
use rusqlite::types::ValueRef;

/// Why an operation failed inside the backend, before it becomes a [`Error`].
#[derive(Debug)]
pub(crate) enum Fault {
    /// The driver failed: [`Error::Unavailable`] (in the writer, for the whole group).
    Sql(rusqlite::Error),
    /// A stored value is malformed; the detail names the column. Needs the thread (and
    /// seq) from the caller to become [`Error::Corrupt`].
    Bad(String),
    /// A store-level outcome (validation failure, corruption with context).
    Store(Error),
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Fault::Sql(e)
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

    /// The error to return across the [`Store`](oris_core::store::Store) boundary.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Fault::Sql(e) => unavailable(e),
            // Every decoder is called with its thread at hand; reaching this is a bug in
            // this crate, reported as corruption of an unnamed thread rather than hidden.
            Fault::Bad(detail) => Error::Corrupt {
                thread_id: unknown_thread(),
                seq: None,
                detail,
            },
            Fault::Store(e) => e,
        }
    }
}

/// Maps a driver error. Driver errors never cross the `Store` trait.
pub(crate) fn unavailable(e: rusqlite::Error) -> Error {
    Error::Unavailable(format!("sqlite: {e}"))
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

/// The storage code of an event kind ([`EventKind::code`], shared with every backend).
/// `Option` for symmetry with [`kind_from_code`]: every kind has one.
pub(crate) fn kind_code(kind: EventKind) -> Option<i64> {
    Some(i64::from(kind.code()))
}

/// The inverse of [`kind_code`]; `None` for an unknown code.
pub(crate) fn kind_from_code(code: i64) -> Option<EventKind> {
    EventKind::from_code(code)
}

// ---------------------------------------------------------------------------------------
// Event keys

/// Largest seq an event key can hold.
pub(crate) const MAX_SEQ: u64 = u32::MAX as u64;

/// The rowid of an event: `(thread_key << 32) | seq`. One thread's events are a contiguous
/// rowid range, so reading a thread's log is a range scan, and appending to a thread that
/// is the newest one writes at the end of the table, where SQLite fills pages completely.
/// Seqs up to 2^32 − 1 per thread and thread keys up to 2^31 − 1 fit.
pub(crate) fn event_id(thread_key: i64, seq: u64) -> Option<i64> {
    if seq > MAX_SEQ || !(0..=i64::from(i32::MAX)).contains(&thread_key) {
        return None;
    }
    Some((thread_key << 32) | seq as i64)
}

/// Splits an event rowid into `(thread_key, seq)`.
pub(crate) fn split_event_id(id: i64) -> (i64, Seq) {
    (id >> 32, Seq((id & MAX_SEQ as i64) as u64))
}

// ---------------------------------------------------------------------------------------
// Snapshot state

/// Format byte: the rest is the state's JSON text.
pub(crate) const STATE_JSON: u8 = 0;
/// Format byte: the rest is `lz4_flex::compress_prepend_size` of the JSON text.
pub(crate) const STATE_LZ4: u8 = 1;

/// Encodes a snapshot state: format byte, then JSON, compressed when longer than
/// `compress_over` bytes and when compression actually saves space.
pub(crate) fn encode_state(state: &Payload, compress_over: usize) -> Vec<u8> {
    let json = state.json().as_bytes();
    if json.len() > compress_over {
        let packed = lz4_flex::compress_prepend_size(json);
        if packed.len() < json.len() {
            let mut out = Vec::with_capacity(packed.len() + 1);
            out.push(STATE_LZ4);
            out.extend_from_slice(&packed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(json.len() + 1);
    out.push(STATE_JSON);
    out.extend_from_slice(json);
    out
}

/// Decodes [`encode_state`]'s output.
pub(crate) fn decode_state(bytes: &[u8]) -> Result<Payload, Fault> {
    let bad = |what: String| Fault::Bad(format!("column `state`: {what}"));
    let json = match bytes.split_first() {
        None => return Err(bad("empty (no format byte)".into())),
        Some((&STATE_JSON, rest)) => rest.to_vec(),
        Some((&STATE_LZ4, rest)) => {
            // LZ4 cannot expand more than ~255:1; refuse a damaged size prefix before it
            // makes the decompressor allocate gigabytes.
            let claimed = rest
                .get(..4)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize)
                .ok_or_else(|| bad("LZ4 data shorter than its size prefix".into()))?;
            if claimed > rest.len().saturating_mul(256) + 64 {
                return Err(bad(format!(
                    "LZ4 size prefix {claimed} is impossible for {} compressed bytes",
                    rest.len()
                )));
            }
            lz4_flex::decompress_size_prepended(rest)
                .map_err(|e| bad(format!("LZ4 data does not decompress: {e}")))?
        }
        Some((other, _)) => return Err(bad(format!("unknown format byte {other}"))),
    };
    let text = String::from_utf8(json).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    Payload::from_json(text).map_err(|e| bad(format!("not JSON: {e}")))
}

// ---------------------------------------------------------------------------------------
// Status

/// The `status` and `status_data` columns of a status ([`RunStatus::to_columns`]).
pub(crate) fn encode_status(status: &RunStatus) -> Result<(&'static str, String), String> {
    status.to_columns()
}

/// Rebuilds a status from its two columns ([`RunStatus::from_columns`]).
pub(crate) fn decode_status(status: &str, data: String) -> Result<RunStatus, Fault> {
    RunStatus::from_columns(status, data).map_err(Fault::Bad)
}

/// The `boundary` column of a snapshot.
pub(crate) fn decode_boundary(text: String) -> Result<Boundary, Fault> {
    let payload = Payload::from_json(text)
        .map_err(|e| Fault::Bad(format!("column `boundary` is not JSON: {e}")))?;
    payload
        .decode()
        .map_err(|e| Fault::Bad(format!("column `boundary` {e}")))
}

// ---------------------------------------------------------------------------------------
// Columns

fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "null",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

fn wrong(col: &str, expected: &str, found: ValueRef<'_>) -> Fault {
    Fault::Bad(format!(
        "column `{col}`: expected {expected}, found {}",
        type_name(found)
    ))
}

/// An INTEGER column that may be null.
pub(crate) fn opt_int(row: &Row<'_>, i: usize, col: &str) -> Result<Option<i64>, Fault> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(v) => Ok(Some(v)),
        other => Err(wrong(col, "an integer", other)),
    }
}

/// A NOT NULL INTEGER column.
pub(crate) fn int(row: &Row<'_>, i: usize, col: &str) -> Result<i64, Fault> {
    opt_int(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// An INTEGER column holding a `u32`, or null.
pub(crate) fn opt_u32(row: &Row<'_>, i: usize, col: &str) -> Result<Option<u32>, Fault> {
    opt_int(row, i, col)?
        .map(|v| {
            u32::try_from(v).map_err(|_| Fault::Bad(format!("column `{col}`: {v} is out of range")))
        })
        .transpose()
}

/// A NOT NULL INTEGER column holding a `u32`.
pub(crate) fn u32_col(row: &Row<'_>, i: usize, col: &str) -> Result<u32, Fault> {
    opt_u32(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A NOT NULL INTEGER column holding a seq.
pub(crate) fn seq_col(row: &Row<'_>, i: usize, col: &str) -> Result<Seq, Fault> {
    opt_seq(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A TEXT column that may be null.
pub(crate) fn opt_text(row: &Row<'_>, i: usize, col: &str) -> Result<Option<String>, Fault> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => String::from_utf8(t.to_vec())
            .map(Some)
            .map_err(|_| Fault::Bad(format!("column `{col}` is not UTF-8"))),
        other => Err(wrong(col, "text", other)),
    }
}

/// A NOT NULL TEXT column.
pub(crate) fn text(row: &Row<'_>, i: usize, col: &str) -> Result<String, Fault> {
    opt_text(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A NOT NULL BLOB column.
pub(crate) fn blob(row: &Row<'_>, i: usize, col: &str) -> Result<Vec<u8>, Fault> {
    match row.get_ref(i)? {
        ValueRef::Blob(b) => Ok(b.to_vec()),
        other => Err(wrong(col, "a blob", other)),
    }
}

/// A UUID column (16-byte blob) that may be null.
fn opt_uuid(row: &Row<'_>, i: usize, col: &str) -> Result<Option<uuid::Uuid>, Fault> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b)
            .map(Some)
            .map_err(|_| Fault::Bad(format!("column `{col}`: {} bytes, not 16", b.len()))),
        other => Err(wrong(col, "a blob", other)),
    }
}

/// A NOT NULL UUID column.
fn uuid_col(row: &Row<'_>, i: usize, col: &str) -> Result<uuid::Uuid, Fault> {
    opt_uuid(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A run id column (16-byte blob) that may be null.
pub(crate) fn opt_run_id(row: &Row<'_>, i: usize, col: &str) -> Result<Option<RunId>, Fault> {
    Ok(opt_uuid(row, i, col)?.map(RunId::from_uuid))
}

/// A NOT NULL interrupt id column (16-byte blob).
pub(crate) fn interrupt_id(row: &Row<'_>, i: usize, col: &str) -> Result<InterruptId, Fault> {
    uuid_col(row, i, col).map(InterruptId::from_uuid)
}

/// A NOT NULL delivery id column (16-byte blob).
pub(crate) fn delivery_id(row: &Row<'_>, i: usize, col: &str) -> Result<DeliveryId, Fault> {
    uuid_col(row, i, col).map(DeliveryId::from_uuid)
}

/// An INTEGER column holding a seq, or null.
pub(crate) fn opt_seq(row: &Row<'_>, i: usize, col: &str) -> Result<Option<Seq>, Fault> {
    opt_int(row, i, col)?
        .map(|v| {
            u64::try_from(v)
                .map(Seq)
                .map_err(|_| Fault::Bad(format!("column `{col}`: {v} is not a seq")))
        })
        .transpose()
}

/// A TEXT column holding a JSON payload, or null.
pub(crate) fn opt_payload(row: &Row<'_>, i: usize, col: &str) -> Result<Option<Payload>, Fault> {
    opt_text(row, i, col)?
        .map(|t| {
            Payload::from_json(t)
                .map_err(|e| Fault::Bad(format!("column `{col}` is not JSON: {e}")))
        })
        .transpose()
}

/// A NOT NULL TEXT column holding a JSON payload.
pub(crate) fn payload(row: &Row<'_>, i: usize, col: &str) -> Result<Payload, Fault> {
    opt_payload(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A NOT NULL run id column.
pub(crate) fn run_id(row: &Row<'_>, i: usize, col: &str) -> Result<RunId, Fault> {
    opt_run_id(row, i, col)?.ok_or_else(|| Fault::Bad(format!("column `{col}` is null")))
}

/// A timestamp column.
pub(crate) fn time(row: &Row<'_>, i: usize, col: &str) -> Result<Timestamp, Fault> {
    int(row, i, col).map(Timestamp)
}

/// A thread id column.
pub(crate) fn thread_id(row: &Row<'_>, i: usize, col: &str) -> Result<ThreadId, Fault> {
    let raw = text(row, i, col)?;
    ThreadId::new(&raw).map_err(|e| Fault::Bad(format!("column `{col}` holds {raw:?}: {e}")))
}

/// The blob form of a run id.
pub(crate) fn run_id_blob(id: RunId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// The blob form of an interrupt id.
pub(crate) fn interrupt_id_blob(id: InterruptId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// The blob form of a delivery id.
pub(crate) fn delivery_id_blob(id: DeliveryId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// A seq as an INTEGER column value.
pub(crate) fn seq_value(seq: Seq) -> Option<i64> {
    i64::try_from(seq.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_both_ways() {
        for kind in EventKind::ALL {
            let code = kind_code(kind).expect("every kind has a code");
            assert_eq!(kind_from_code(code), Some(kind), "{kind:?}");
        }
        for code in -2..64 {
            if let Some(kind) = kind_from_code(code) {
                assert_eq!(kind_code(kind), Some(code));
            }
        }
        assert_eq!(kind_from_code(15), None);
        assert_eq!(kind_from_code(-1), None);
        // The codes are on disk: pin them.
        assert_eq!(kind_code(EventKind::NodeCompleted), Some(0));
        assert_eq!(kind_code(EventKind::RunStarted), Some(1));
        assert_eq!(kind_code(EventKind::NodeFailed), Some(2));
        assert_eq!(kind_code(EventKind::RunCompleted), Some(3));
        assert_eq!(kind_code(EventKind::RunFailed), Some(4));
        assert_eq!(kind_code(EventKind::RunCancelled), Some(5));
        assert_eq!(kind_code(EventKind::StepRecorded), Some(6));
        assert_eq!(kind_code(EventKind::InterruptRaised), Some(7));
        assert_eq!(kind_code(EventKind::InterruptResumed), Some(8));
        assert_eq!(kind_code(EventKind::RunSuspended), Some(9));
        assert_eq!(kind_code(EventKind::RunResumed), Some(10));
        assert_eq!(kind_code(EventKind::EventReceived), Some(11));
        assert_eq!(kind_code(EventKind::RunRebased), Some(12));
        assert_eq!(kind_code(EventKind::StateUpdated), Some(13));
        assert_eq!(kind_code(EventKind::HistoryPruned), Some(14));
    }

    #[test]
    fn event_ids_pack_and_unpack() {
        for (key, seq) in [(1, 1), (7, 12345), (i64::from(i32::MAX), MAX_SEQ)] {
            let id = event_id(key, seq).unwrap();
            assert!(id > 0);
            assert_eq!(split_event_id(id), (key, Seq(seq)));
        }
        // Order within and across threads is (thread_key, seq).
        assert!(event_id(1, MAX_SEQ).unwrap() < event_id(2, 0).unwrap());
        assert_eq!(event_id(1, MAX_SEQ + 1), None);
        assert_eq!(event_id(i64::from(i32::MAX) + 1, 1), None);
        assert_eq!(event_id(-1, 1), None);
    }

    fn state(json: &str) -> Payload {
        Payload::from_json(json.to_owned()).unwrap()
    }

    #[test]
    fn small_states_are_stored_raw() {
        let s = state(r#"{"counter":1}"#);
        let bytes = encode_state(&s, 512);
        assert_eq!(bytes[0], STATE_JSON);
        assert_eq!(&bytes[1..], s.json().as_bytes());
        assert_eq!(decode_state(&bytes).unwrap(), s);
    }

    #[test]
    fn big_states_are_compressed_and_round_trip() {
        let items: Vec<String> = (0..100)
            .map(|i| format!("{i:04}{}", "x".repeat(60)))
            .collect();
        let s = Payload::encode(&serde_json::json!({ "counter": 100, "log": items })).unwrap();
        let bytes = encode_state(&s, 512);
        assert_eq!(bytes[0], STATE_LZ4);
        assert!(bytes.len() < s.json().len() / 3, "{} bytes", bytes.len());
        assert_eq!(decode_state(&bytes).unwrap(), s);
    }

    #[test]
    fn incompressible_big_states_stay_raw() {
        // Digits of a cheap pseudo-random sequence: LZ4 cannot shrink them.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let digits: String = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let s = Payload::encode(&digits).unwrap();
        let bytes = encode_state(&s, 512);
        assert_eq!(bytes[0], STATE_JSON);
        assert_eq!(decode_state(&bytes).unwrap(), s);
    }

    #[test]
    fn damaged_states_are_reported() {
        let detail = |bytes: &[u8]| match decode_state(bytes) {
            Err(Fault::Bad(d)) => d,
            other => panic!("expected Bad, got {other:?}"),
        };
        assert!(detail(&[]).contains("empty"));
        assert!(detail(&[9, b'{', b'}']).contains("unknown format byte 9"));
        assert!(detail(&[STATE_JSON, b'{']).contains("not JSON"));
        assert!(detail(&[STATE_LZ4, 1]).contains("shorter"));
        assert!(detail(&[STATE_LZ4, 0xff, 0xff, 0xff, 0x7f, 0]).contains("impossible"));
        assert!(detail(&[STATE_LZ4, 10, 0, 0, 0, 0xff]).contains("decompress"));
        assert!(detail(&[STATE_JSON, 0xff]).contains("UTF-8"));
    }

    #[test]
    fn statuses_round_trip_and_mismatches_are_caught() {
        let s = RunStatus::Cancelled {
            reason: "operator".into(),
        };
        let (kind, data) = encode_status(&s).unwrap();
        assert_eq!(decode_status(kind, data.clone()).unwrap(), s);
        assert!(
            matches!(decode_status("running", data), Err(Fault::Bad(d)) if d.contains("says running"))
        );
        assert!(
            matches!(decode_status("paused", "{}".into()), Err(Fault::Bad(d)) if d.contains("unknown status"))
        );
        assert!(matches!(
            decode_status("queued", r#"{"status":"paused"}"#.into()),
            Err(Fault::Bad(d)) if d.contains("`status_data`")
        ));
    }
}
