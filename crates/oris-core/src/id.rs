//! Identifiers.
//!
//! `ThreadId` is chosen by the caller and validated; generated ids are UUIDv7 newtypes with
//! a prefixed display form (`run_0193…`) and a parser that rejects the wrong kind.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted thread id, in bytes.
pub const THREAD_ID_MAX_LEN: usize = 200;

/// Why an id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The thread id was empty.
    #[error("thread_id must not be empty")]
    Empty,
    /// The thread id was longer than [`THREAD_ID_MAX_LEN`].
    #[error("thread_id is {len} bytes long; the limit is {THREAD_ID_MAX_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The thread id contains a character outside the allowed set.
    #[error(
        "thread_id contains {found:?} at byte {position}; allowed are ASCII letters, digits and `-_.:@+=`"
    )]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its byte offset.
        position: usize,
    },
    /// A generated id did not parse.
    #[error("`{input}` is not a valid {kind} id (expected `{prefix}` followed by 32 hex digits)")]
    Malformed {
        /// What kind of id was expected.
        kind: &'static str,
        /// The expected prefix.
        prefix: &'static str,
        /// The rejected text.
        input: String,
    },
}

/// The caller-chosen identity of one durable instance of a graph.
///
/// 1 to 200 bytes of ASCII letters, digits and `-_.:@+=`: safe in URLs, file names, log
/// lines and shells without quoting. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(Arc<str>);

impl ThreadId {
    /// Validates and wraps a thread id.
    ///
    /// # Errors
    /// [`IdError`] naming what is wrong and where.
    pub fn new(id: impl AsRef<str>) -> Result<Self, IdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > THREAD_ID_MAX_LEN {
            return Err(IdError::TooLong { len: id.len() });
        }
        if let Some((position, found)) = id
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "-_.:@+=".contains(*c)))
        {
            return Err(IdError::InvalidChar { found, position });
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ThreadId({:?})", &*self.0)
    }
}

impl AsRef<str> for ThreadId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ThreadId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for ThreadId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ThreadId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// The display prefix.
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id (UUIDv7).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub fn from_uuid(uuid: uuid::Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let malformed = || IdError::Malformed {
                    kind: $kind,
                    prefix: $prefix,
                    input: s.chars().take(80).collect(),
                };
                let hex = s.strip_prefix($prefix).ok_or_else(malformed)?;
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(malformed());
                }
                uuid::Uuid::try_parse(hex).map(Self).map_err(|_| malformed())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// One execution on a thread: `run_` + 32 hex digits.
    RunId,
    "run_",
    "run"
);

uuid_id!(
    /// A pause raised by a node or a breakpoint, waiting for a resume value: `int_` + 32 hex
    /// digits. Unique across threads; stable once recorded.
    InterruptId,
    "int_",
    "interrupt"
);

uuid_id!(
    /// An external event delivered to a thread (`send_event`): `evt_` + 32 hex digits.
    DeliveryId,
    "evt_",
    "delivery"
);

/// Position of an event in a thread's log; the first event has seq 1, 0 means "empty".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The head of an empty log.
    pub const ZERO: Seq = Seq(0);

    /// The next position.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A checkpoint: the state of a thread at a superstep boundary, named by the seq of the
/// event that closed the superstep. Displayed `ckpt_<seq>`; unique within its thread.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId(pub Seq);

impl CheckpointId {
    /// The seq the checkpoint stands at.
    pub fn at_seq(self) -> Seq {
        self.0
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ckpt_{}", self.0.0)
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CheckpointId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("ckpt_")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(|n| CheckpointId(Seq(n)))
            .ok_or_else(|| IdError::Malformed {
                kind: "checkpoint",
                prefix: "ckpt_",
                input: s.chars().take(80).collect(),
            })
    }
}

impl Serialize for CheckpointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CheckpointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus a duration (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_id_validation() {
        for ok in [
            "a",
            "order-42",
            "user@example.com",
            "a:b.c_d+e=f",
            &"x".repeat(200),
        ] {
            assert!(ThreadId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(ThreadId::new(""), Err(IdError::Empty));
        assert_eq!(
            ThreadId::new("x".repeat(201)),
            Err(IdError::TooLong { len: 201 })
        );
        assert_eq!(
            ThreadId::new("a b"),
            Err(IdError::InvalidChar {
                found: ' ',
                position: 1
            })
        );
        assert!(ThreadId::new("a/b").is_err());
        assert!(ThreadId::new("tab\there").is_err());
        assert!(ThreadId::new("é").is_err());
        assert!(serde_json::from_str::<ThreadId>("\"bad id\"").is_err());
    }

    #[test]
    fn run_id_round_trip_and_wrong_kind() {
        let id = RunId::generate();
        let text = id.to_string();
        assert!(text.starts_with("run_") && text.len() == 36);
        assert_eq!(text.parse::<RunId>().unwrap(), id);
        assert_eq!(
            serde_json::from_str::<RunId>(&serde_json::to_string(&id).unwrap()).unwrap(),
            id
        );
        assert!("ckpt_12".parse::<RunId>().is_err());
        assert!(text.replace("run_", "job_").parse::<RunId>().is_err());
        assert!("run_xyz".parse::<RunId>().is_err());
    }

    #[test]
    fn checkpoint_id_round_trip() {
        let id = CheckpointId(Seq(17));
        assert_eq!(id.to_string(), "ckpt_17");
        assert_eq!("ckpt_17".parse::<CheckpointId>().unwrap(), id);
        for bad in ["ckpt_", "ckpt_-1", "17", "ckpt_1x", "run_17"] {
            assert!(bad.parse::<CheckpointId>().is_err(), "{bad}");
        }
    }
}
