//! Online backup (`VACUUM INTO` on a read-only connection) and restore (copy, validate,
//! swap into place) of a store's database file. The public entry points are
//! [`SqliteStore::backup_to`](crate::SqliteStore::backup_to) and
//! [`SqliteStore::restore_from`](crate::SqliteStore::restore_from); everything here is
//! blocking and runs on Tokio's blocking pool.
//!
//! Why `VACUUM INTO` rather than the online backup API (`sqlite3_backup_*`): it copies the
//! database as of **one read transaction**, so the copy is a consistent snapshot taken at
//! one instant, and in WAL mode a reader blocks neither the writer nor other readers, so
//! commits go on while it runs. The backup API copies a few pages per step and, when another
//! connection writes between steps (here: the store's write connection, continuously under
//! load), starts over — under a steady workload it may never finish; copying everything in
//! one step would be as consistent but copies free pages too and needs a second connection
//! open on the destination. `VACUUM INTO` writes a compact, self-contained file (no `-wal`,
//! free pages dropped, rollback-journal mode) that opens as a store directly.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oris_core::store::Error;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::schema;

/// Writes a consistent copy of the database at `source` to `dest`, which must not exist.
pub(crate) fn backup(source: &Path, dest: &Path, busy_timeout: Duration) -> Result<(), Error> {
    let dest_str = dest.to_str().ok_or_else(|| {
        Error::Unavailable(format!(
            "backup path {} is not valid UTF-8; SQLite needs it as text",
            dest.display()
        ))
    })?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| {
            Error::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    // Reserve the name atomically: an existing file (or one created meanwhile) is never
    // touched, and on failure we only remove the file we created. `VACUUM INTO` accepts an
    // empty file.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Unavailable(format!(
                    "backup target {} already exists; refusing to overwrite it (choose a new \
                     path or remove it first)",
                    dest.display()
                ))
            } else {
                Error::Unavailable(format!("cannot create backup {}: {e}", dest.display()))
            }
        })?;
    let result = vacuum_into(source, dest, dest_str, busy_timeout);
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

fn vacuum_into(
    source: &Path,
    dest: &Path,
    dest_str: &str,
    busy_timeout: Duration,
) -> Result<(), Error> {
    let failed = |e: rusqlite::Error| {
        Error::Unavailable(format!(
            "backup of {} to {} failed: {e}",
            source.display(),
            dest.display()
        ))
    };
    // A connection of its own (not one of the read pool, which keeps serving reads while
    // the copy runs), read-only: it never takes the write lock.
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    conn.busy_timeout(busy_timeout).map_err(failed)?;
    conn.execute("VACUUM INTO ?1", [dest_str]).map_err(failed)?;
    drop(conn);
    // `VACUUM INTO` does not promise to fsync what it wrote: do it, and the directory entry.
    let io = |e: std::io::Error| {
        Error::Unavailable(format!("cannot sync backup {}: {e}", dest.display()))
    };
    File::open(dest).and_then(|f| f.sync_all()).map_err(io)?;
    sync_dir(dest).map_err(io)?;
    tracing::info!(source = %source.display(), backup = %dest.display(), "sqlite backup written");
    Ok(())
}

/// Replaces (or creates) the database at `target` with a validated copy of `backup`.
pub(crate) fn restore(backup: &Path, target: &Path, busy_timeout: Duration) -> Result<(), Error> {
    let meta = fs::metadata(backup)
        .map_err(|e| Error::Unavailable(format!("cannot read backup {}: {e}", backup.display())))?;
    if !meta.is_file() {
        return Err(Error::Unavailable(format!(
            "backup {} is not a file",
            backup.display()
        )));
    }
    if let (Ok(a), Ok(b)) = (fs::canonicalize(backup), fs::canonicalize(target))
        && a == b
    {
        return Err(Error::Unavailable(format!(
            "backup and target are the same file ({})",
            a.display()
        )));
    }
    let dir = match target.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| {
        Error::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
    })?;
    ensure_not_open(target)?;

    // Copy next to the target (same file system, so the final rename is atomic), validate
    // the copy — never the backup itself, which stays untouched — then swap it in.
    let name = target
        .file_name()
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "restore target {} has no file name",
                target.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let temp = dir.join(format!(".{name}.restoring-{}", std::process::id()));
    remove_with_sidecars(&temp);
    let result = copy_validate_swap(backup, &temp, target, busy_timeout);
    remove_with_sidecars(&temp);
    result
}

fn copy_validate_swap(
    backup: &Path,
    temp: &Path,
    target: &Path,
    busy_timeout: Duration,
) -> Result<(), Error> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::Unavailable(format!("cannot {what} {}: {e}", path.display()))
    };
    fs::copy(backup, temp).map_err(|e| io("copy the backup to", temp, e))?;
    validate(backup, temp, busy_timeout)?;
    File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", temp, e))?;
    // The old database's WAL, shared-memory index or rollback journal would be replayed
    // onto the restored file: they go first.
    for sidecar in sidecars(target) {
        match fs::remove_file(&sidecar) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &sidecar, e)),
        }
    }
    fs::rename(temp, target).map_err(|e| io("move the restored copy to", target, e))?;
    sync_dir(target).map_err(|e| io("sync the directory of", target, e))?;
    tracing::info!(backup = %backup.display(), target = %target.display(), "sqlite backup restored");
    Ok(())
}

/// Checks the copy at `path` of `backup`: a sound SQLite database (`PRAGMA
/// integrity_check`) holding an Oris schema this build can open, brought up to the current
/// version (the same migrations as on open), and left without a `-wal` file.
fn validate(backup: &Path, path: &Path, busy_timeout: Duration) -> Result<(), Error> {
    let refused = |detail: String| {
        Error::Incompatible(format!(
            "cannot restore from {}: {detail}",
            backup.display()
        ))
    };
    let sql = |e: rusqlite::Error| refused(format!("not a usable SQLite database: {e}"));
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(busy_timeout).map_err(sql)?;
    let problems: Vec<String> = {
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(sql)?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)?
    };
    if problems != ["ok"] {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        return Err(refused(format!(
            "integrity check failed ({} problem(s)): {}",
            problems.len(),
            shown.join("; ")
        )));
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if version == 0 {
        return Err(refused(
            "it holds no Oris schema (schema version 0): not an Oris backup".into(),
        ));
    }
    schema::migrate(&mut conn, path).map_err(|e| match e {
        Error::Incompatible(detail) => refused(detail),
        other => other,
    })?;
    conn.query_row("SELECT count(*) FROM threads", [], |r| r.get::<_, i64>(0))
        .map_err(|e| refused(format!("it is not an Oris database: {e}")))?;
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .map_err(sql)?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql)?;
    }
    conn.close().map_err(|(_, e)| sql(e))?;
    // A WAL left behind would not follow the file through the rename: refuse rather than
    // lose what is in it.
    let wal = sidecar(path, "-wal");
    if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(Error::Unavailable(format!(
            "the restored copy {} kept a non-empty WAL",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses when a connection (of this or another process) has the database at `target`
/// open: taking SQLite's exclusive lock on the file fails then. Best effort — it cannot see
/// a process that opens the file right after the check, nor locks on file systems that do
/// not implement them (some network file systems).
fn ensure_not_open(target: &Path) -> Result<(), Error> {
    if fs::symlink_metadata(target).is_err() {
        return Ok(());
    }
    let Ok(conn) = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Ok(());
    };
    let _ = conn.busy_timeout(Duration::ZERO);
    let locked = conn
        .pragma_update(None, "locking_mode", "EXCLUSIVE")
        .and_then(|()| conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;"));
    match locked {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            Err(Error::Unavailable(format!(
                "cannot restore over {}: the database is open (in this or another process); \
                 close every store using it first",
                target.display()
            )))
        }
        // Not a database, corrupt, …: nobody can be using it as a store; it is replaced.
        _ => Ok(()),
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sidecars(path: &Path) -> [PathBuf; 3] {
    [
        sidecar(path, "-wal"),
        sidecar(path, "-shm"),
        sidecar(path, "-journal"),
    ]
}

fn remove_with_sidecars(path: &Path) {
    let _ = fs::remove_file(path);
    for s in sidecars(path) {
        let _ = fs::remove_file(s);
    }
}

/// fsyncs the directory holding `path`, so that a new or renamed entry survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
