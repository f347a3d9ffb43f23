//! Parsing of ids and list query strings, with 400 `invalid_input` naming the parameter.

use std::str::FromStr;

use oris_core::id::{CheckpointId, InterruptId, ThreadId, Timestamp};
use serde_json::json;

use crate::error::ApiError;
use crate::time::parse_rfc3339;

/// Default and largest page size of list routes.
pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 500;

pub(crate) fn thread(s: &str) -> Result<ThreadId, ApiError> {
    ThreadId::new(s).map_err(|e| {
        ApiError::invalid(format!("invalid thread_id: {e}"))
            .details(json!({ "field": "thread_id" }))
    })
}

pub(crate) fn interrupt(s: &str) -> Result<InterruptId, ApiError> {
    InterruptId::from_str(s).map_err(|e| {
        ApiError::invalid(format!("invalid interrupt_id: {e}"))
            .details(json!({ "field": "interrupt_id" }))
    })
}

pub(crate) fn checkpoint(s: &str) -> Result<CheckpointId, ApiError> {
    CheckpointId::from_str(s).map_err(|e| {
        ApiError::invalid(format!("invalid checkpoint_id `{s}`: {e}"))
            .details(json!({ "field": "checkpoint_id" }))
    })
}

/// Query parameters as pairs, checked against the names a route knows.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// `known` names; a name ending in `.` is a prefix (`metadata.`).
    pub fn new(pairs: Vec<(String, String)>, known: &[&str]) -> Result<Self, ApiError> {
        for (k, _) in &pairs {
            let ok = known.iter().any(|n| {
                if n.ends_with('.') {
                    k.starts_with(n) && k.len() > n.len()
                } else {
                    k == n
                }
            });
            if !ok {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{k}` (known: {})",
                    known.join(", ")
                ))
                .details(json!({ "field": k })));
            }
        }
        Ok(Params(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    pub fn limit(&self, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT.min(max)),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad("limit", format!("must be a number from 1 to {max}"))),
            },
        }
    }

    pub fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.get(name)
            .map(|s| {
                parse_rfc3339(s).ok_or_else(|| {
                    bad(
                        name,
                        "must be an RFC 3339 time, e.g. 2026-05-01T12:00:00Z".into(),
                    )
                })
            })
            .transpose()
    }

    pub fn parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|s| s.parse::<T>().map_err(|e| bad(name, e.to_string())))
            .transpose()
    }
}

pub(crate) fn bad(name: &str, why: String) -> ApiError {
    ApiError::invalid(format!("query parameter `{name}`: {why}")).details(json!({ "field": name }))
}
