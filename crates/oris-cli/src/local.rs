//! Commands on a store opened directly (`--db`), not through a server: `migrate`,
//! `backup`, `restore`, `verify`, and `timeline --db`.

use std::path::{Path, PathBuf};

use oris::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use oris::{Engine, Seq, ThreadId};
use serde_json::json;

use crate::client::{Failure, Result, exit};
use crate::demo;
use crate::output::{Format, Out, note};

/// What a `--db` URL names.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
    Memory,
}

fn parse(url: &str) -> Result<Db> {
    if url == "memory://" || url == "memory:" {
        return Ok(Db::Memory);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Db::Postgres(url.to_owned()));
    }
    if let Some(p) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        return Ok(Db::Sqlite(PathBuf::from(p)));
    }
    Err(Failure::usage(format!(
        "unsupported store URL `{url}`: expected sqlite://PATH or postgres://…"
    )))
}

fn store_err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::failed(format!("{what}: {e}"))
}

/// The schema version of a SQLite file (0 for a new or non-Oris one), read without
/// migrating it.
fn sqlite_version(path: &Path) -> Result<i64> {
    if !path.exists() {
        return Ok(0);
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_err(&format!("cannot open `{}`", path.display()), e))?;
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| store_err(&format!("cannot read `{}`", path.display()), e))
}

pub async fn migrate(db: &str, format: Format) -> Result<()> {
    let out = Out::new(format);
    let (before, after) = match parse(db)? {
        Db::Sqlite(path) => {
            let before = sqlite_version(&path)?;
            let store = SqliteStore::open(&path, SqliteOptions::default())
                .await
                .map_err(|e| store_err(&format!("cannot migrate `{db}`"), e))?;
            drop(store);
            (Some(before), oris_sqlite::SCHEMA_VERSION)
        }
        Db::Postgres(url) => {
            let store = PostgresStore::connect(&url, PostgresOptions::default())
                .await
                .map_err(|e| {
                    store_err(
                        &format!("cannot migrate `{}`", oris::store::redact_url(&url)),
                        e,
                    )
                })?;
            let v = store
                .migrate()
                .await
                .map_err(|e| store_err("migration failed", e))?;
            (None, i64::from(v))
        }
        Db::Memory => return Err(Failure::usage("memory:// has no schema to migrate")),
    };
    if out.json() {
        out.value(&json!({ "db": redact(db), "from": before, "version": after }));
    } else {
        match before {
            Some(b) if b == after => println!("schema version {after} (up to date)"),
            Some(b) => println!("schema version {after} (migrated from {b})"),
            None => println!("schema version {after}"),
        }
    }
    Ok(())
}

fn redact(db: &str) -> String {
    if db.starts_with("postgres") {
        oris::store::redact_url(db)
    } else {
        db.to_owned()
    }
}

const PG_BACKUP: &str = "PostgreSQL stores are backed up and restored with PostgreSQL's own tools: \
     `pg_dump -Fc` and `pg_restore` (or continuous archiving); see docs/storage.md";

pub async fn backup(db: &str, dest: &Path) -> Result<()> {
    match parse(db)? {
        Db::Sqlite(path) => {
            let store = SqliteStore::open(&path, SqliteOptions::default())
                .await
                .map_err(|e| store_err(&format!("cannot open `{db}`"), e))?;
            store
                .backup_to(dest)
                .await
                .map_err(|e| store_err("backup failed", e))?;
            note(format!(
                "oris: backed up {} to {}",
                path.display(),
                dest.display()
            ));
            Ok(())
        }
        Db::Postgres(_) => Err(Failure::usage(PG_BACKUP)),
        Db::Memory => Err(Failure::usage("memory:// has nothing to back up")),
    }
}

pub async fn restore(db: &str, src: &Path) -> Result<()> {
    match parse(db)? {
        Db::Sqlite(path) => {
            if !src.exists() {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    format!("no backup at `{}`", src.display()),
                ));
            }
            SqliteStore::restore_from(src, &path)
                .await
                .map_err(|e| store_err("restore failed", e))?;
            note(format!(
                "oris: restored {} from {}; start the server to continue unfinished runs",
                path.display(),
                src.display()
            ));
            Ok(())
        }
        Db::Postgres(_) => Err(Failure::usage(PG_BACKUP)),
        Db::Memory => Err(Failure::usage("memory:// cannot be restored")),
    }
}

async fn open(db: &str) -> Result<Engine> {
    let store = oris::open_store(db)
        .await
        .map_err(|e| store_err("cannot open the store", e))?;
    Ok(Engine::new(store))
}

fn thread_id(t: &str) -> Result<ThreadId> {
    ThreadId::new(t).map_err(|e| Failure::usage(format!("invalid thread id: {e}")))
}

pub async fn verify(db: &str, thread: &str, format: Format) -> Result<()> {
    let out = Out::new(format);
    let engine = open(db).await?;
    let id = thread_id(thread)?;
    let record = engine
        .store()
        .thread(&id)
        .await
        .map_err(|e| store_err("cannot read the thread", e))?
        .ok_or_else(|| Failure::new(exit::NOT_FOUND, format!("no thread `{thread}` in {db}")))?;
    let g = demo::graphs().map_err(|e| store_err("demo graphs", e))?;
    let v = match record.graph.as_str() {
        "expense-approval" => engine.register(g.expense).verify(&id).await,
        "research" => engine.register(g.research).verify(&id).await,
        "flaky" => engine.register(g.flaky).verify(&id).await,
        "reminder" => engine.register(g.reminder).verify(&id).await,
        "batch" => engine.register(g.batch).verify(&id).await,
        other => {
            return Err(Failure::failed(format!(
                "thread `{thread}` belongs to graph `{other}`: `oris verify` knows the demo \
                 graphs ({}); verify threads of your graphs with GraphHandle::verify in your \
                 binary",
                demo::SERVED.join(", ")
            )));
        }
    }
    .map_err(|e| store_err("verification failed", e))?;
    let consistent = v.is_consistent();
    if out.json() {
        out.value(&json!({
            "thread_id": thread, "graph": record.graph, "head": v.head.0,
            "replayed_hash": v.replayed_hash, "current_hash": v.current_hash,
            "consistent": consistent, "mismatch": v.mismatch,
        }));
    } else {
        out.fields(&[
            ("thread", thread.to_owned()),
            ("graph", record.graph.clone()),
            ("head", format!("#{}", v.head.0)),
            ("replayed", v.replayed_hash.clone()),
            ("current", v.current_hash.clone()),
            (
                "result",
                if consistent {
                    "consistent".to_owned()
                } else {
                    format!("MISMATCH: {}", v.mismatch.clone().unwrap_or_default())
                },
            ),
        ]);
    }
    if consistent {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "thread `{thread}` does not verify: {}",
            v.mismatch.unwrap_or_else(|| "hashes differ".into())
        )))
    }
}

/// `oris timeline THREAD --db URL`: the events of a local store.
pub async fn timeline(db: &str, thread: &str, format: Format) -> Result<()> {
    let engine = open(db).await?;
    let id = thread_id(thread)?;
    demo::print_timeline(&engine, &id, Seq::ZERO, format == Format::Json)
        .await
        .map_err(|e| {
            if e.to_string().contains("has no events") {
                Failure::new(exit::NOT_FOUND, format!("{e:#}"))
            } else {
                Failure::failed(format!("{e:#}"))
            }
        })
}
