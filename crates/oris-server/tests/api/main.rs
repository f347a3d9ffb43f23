//! The HTTP API against a real server on a loopback port, over SQLite.

mod auth;
mod bad_input;
mod cancel;
mod common;
mod dlq;
mod hot_path;
mod idempotency;
mod jobs;
mod limits;
mod ops;
mod pending;
mod stream;
mod verify;
mod workers;
