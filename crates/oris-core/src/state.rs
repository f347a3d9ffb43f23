//! Typed state and its reducers.
//!
//! A graph's state is a serde struct. Each field has a reducer that says how the updates
//! nodes return are merged into it at the end of a superstep:
//!
//! | reducer | field type | an update … |
//! |---|---|---|
//! | last-value (default) | any | replaces the value; two writers in one superstep is an error |
//! | append | `Vec<T>` (anything [`Append`]) | is concatenated to the list |
//! | merge | `BTreeMap`/`HashMap`/JSON object ([`Merge`]) | inserts or replaces entries by key |
//! | custom | any | is combined by a `fn(&mut T, T)` of yours |
//!
//! `#[derive(State)]` (crate `oris-derive`, re-exported by `oris`) writes the [`State`]
//! impl and the companion `…Update` type; implementing [`State`] by hand is the escape
//! hatch for anything the derive cannot express.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Who wrote an update: a node name, or [`INPUT_WRITER`] for a run's input.
pub type Writer<'a> = &'a str;

/// The writer name used for a run's input.
pub const INPUT_WRITER: &str = "__input__";

/// The typed state of a graph.
///
/// `apply` receives every update of one superstep **in the deterministic task order** (never
/// arrival order) and must be a pure function of `self` and the updates: replaying the same
/// events must always give the same state (invariant 1). It must either apply all updates or
/// leave `self` unchanged when it returns an error.
pub trait State: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static {
    /// A partial write: only the fields a node sets.
    type Update: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static;

    /// Merges one superstep's updates, in order, through each field's reducer.
    ///
    /// # Errors
    /// [`ReduceError::ConflictingWrites`] when two writers set the same last-value field, or
    /// [`ReduceError::Custom`] from a custom reducer. On error `self` is unchanged.
    fn apply(&mut self, updates: Vec<(Writer<'_>, Self::Update)>) -> Result<(), ReduceError>;

    /// The whole value as an update that sets every field (how a run's input is applied).
    fn into_update(self) -> Self::Update;

    /// The fields and their reducers, for schema output and documentation.
    fn fields() -> &'static [FieldInfo] {
        &[]
    }
}

/// Description of one state field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field name as serialized.
    pub name: &'static str,
    /// The reducer applied to updates of this field.
    pub reducer: ReducerKind,
}

/// The reducer of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReducerKind {
    /// The update replaces the value; at most one writer per superstep.
    LastValue,
    /// The update is concatenated to the current list.
    Append,
    /// The update's entries are inserted into the current map.
    Merge,
    /// A user-supplied function.
    Custom,
}

/// Why a superstep's updates could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReduceError {
    /// Two writers set the same last-value field in one superstep.
    #[error(
        "field `{field}` is last-value but was written by both `{first}` and `{second}` in one superstep; give it a reducer (append, merge, custom) or write it from one node"
    )]
    ConflictingWrites {
        /// The field.
        field: &'static str,
        /// The first writer, in task order.
        first: String,
        /// The second writer.
        second: String,
    },
    /// A custom reducer refused an update.
    #[error("reducer of field `{field}` rejected the update from `{writer}`: {message}")]
    Custom {
        /// The field.
        field: &'static str,
        /// The writer whose update was refused.
        writer: String,
        /// The reducer's message.
        message: String,
    },
}

/// Tracks writers of one last-value field during [`State::apply`]; used by the derive.
///
/// Call [`LastValueGuard::write`] for every update that sets the field *before* mutating
/// anything, so that a conflict leaves the state untouched.
#[derive(Debug)]
pub struct LastValueGuard<'a> {
    field: &'static str,
    writer: Option<&'a str>,
}

impl<'a> LastValueGuard<'a> {
    /// A guard for `field`.
    pub fn new(field: &'static str) -> Self {
        Self {
            field,
            writer: None,
        }
    }

    /// Records that `writer` sets the field.
    ///
    /// # Errors
    /// [`ReduceError::ConflictingWrites`] if another writer already set it.
    pub fn write(&mut self, writer: &'a str) -> Result<(), ReduceError> {
        match self.writer {
            Some(first) => Err(ReduceError::ConflictingWrites {
                field: self.field,
                first: first.to_owned(),
                second: writer.to_owned(),
            }),
            None => {
                self.writer = Some(writer);
                Ok(())
            }
        }
    }
}

/// Fields that can use the append reducer.
pub trait Append {
    /// Concatenates `update` to `self`.
    fn append(&mut self, update: Self);
}

impl<T> Append for Vec<T> {
    fn append(&mut self, mut update: Self) {
        Vec::append(self, &mut update);
    }
}

impl Append for String {
    fn append(&mut self, update: Self) {
        self.push_str(&update);
    }
}

impl<T> Append for std::collections::VecDeque<T> {
    fn append(&mut self, mut update: Self) {
        std::collections::VecDeque::append(self, &mut update);
    }
}

/// Fields that can use the merge reducer.
pub trait Merge {
    /// Inserts every entry of `update` into `self`, replacing existing keys.
    fn merge(&mut self, update: Self);
}

impl<K: Ord, V> Merge for BTreeMap<K, V> {
    fn merge(&mut self, update: Self) {
        self.extend(update);
    }
}

impl<K: Eq + Hash, V, H: std::hash::BuildHasher> Merge for HashMap<K, V, H> {
    fn merge(&mut self, update: Self) {
        self.extend(update);
    }
}

impl Merge for serde_json::Map<String, serde_json::Value> {
    fn merge(&mut self, update: Self) {
        self.extend(update);
    }
}

/// A stable hash of a state: SHA-256 of its canonical JSON (object keys sorted), hex.
///
/// Used to prove that replaying the event log gives the same state bit for bit. Map
/// iteration order (e.g. `HashMap`) does not change the hash.
///
/// # Errors
/// Fails only if the state cannot be serialized.
pub fn state_hash<S: Serialize>(state: &S) -> Result<String, serde_json::Error> {
    // `serde_json::Value` keeps object keys sorted (no `preserve_order`), which makes the
    // encoding canonical.
    let canonical = serde_json::to_vec(&serde_json::to_value(state)?)?;
    let digest = Sha256::digest(&canonical);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_value_guard_names_both_writers() {
        let mut g = LastValueGuard::new("counter");
        g.write("a").unwrap();
        let err = g.write("b").unwrap_err();
        assert_eq!(
            err,
            ReduceError::ConflictingWrites {
                field: "counter",
                first: "a".into(),
                second: "b".into()
            }
        );
        assert!(err.to_string().contains("`counter`"));
    }

    #[test]
    fn append_and_merge() {
        let mut v = vec![1, 2];
        Append::append(&mut v, vec![3]);
        assert_eq!(v, [1, 2, 3]);
        let mut m = BTreeMap::from([("a", 1), ("b", 2)]);
        Merge::merge(&mut m, BTreeMap::from([("b", 3), ("c", 4)]));
        assert_eq!(m, BTreeMap::from([("a", 1), ("b", 3), ("c", 4)]));
    }

    #[test]
    fn hash_is_independent_of_map_order() {
        let a: HashMap<String, i32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, i32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(state_hash(&a).unwrap(), state_hash(&b).unwrap());
        assert_ne!(state_hash(&a).unwrap(), state_hash(&1).unwrap());
    }
}
