//! The embedded-DB state machine over a SQLite file.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use crate::codec::{decode_message as dec_message, encode as enc};
use crate::error::{Error, Result};
use crate::groups::db::determinism::{self, EntryInputs};
use crate::groups::db::model::*;
use crate::groups::db::rules::{self, Refusals};
use crate::raft::group::{ApplyItem, DigestBuilder, SnapshotSource, StateDigest, StateMachine};
use crate::raft::types::{AppliedState, CommandResult};

const DB_FILE: &str = "db.sqlite";
const META_TABLE: &str = "_nacosd_meta";

/// The most SQL a batch may have for [`SqliteStateMachine::try_check`] to prepare it on
/// the caller's thread: a few statements of ordinary length. Longer batches go to the
/// blocking pool (preparing is linear in the SQL's length).
pub const INLINE_CHECK_SQL_BYTES: usize = 4096;

pub struct SqliteStateMachine {
    path: PathBuf,
    dir: PathBuf,
    /// Applies (and restores) through this one; `None` only while a restore swaps files.
    writer: Mutex<Option<Connection>>,
    /// Queries, snapshot copies and the API's statement checks.
    reader: Mutex<Option<Connection>>,
    /// The turn of async callers' statement checks at the reader ([`Self::check_in_turn`]).
    check_turn: tokio::sync::Mutex<()>,
    /// The log entry the writer is applying: its deterministic "now" and random seed.
    inputs: Arc<EntryInputs>,
    /// Page cache per connection, in KiB (`--db-page-cache-kib`), also for the
    /// connections a snapshot or a restore opens.
    page_cache_kib: usize,
}

/// Files a crash can leave behind: a snapshot copy being written or a received
/// snapshot not yet swapped in. Neither is live state.
fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover = name.ends_with(".tmp")
            && (name.starts_with("snapshot-copy-") || name.starts_with("restore-"));
        if leftover {
            tracing::info!(file = %entry.path().display(), "removing a leftover of an interrupted snapshot");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn sql_err(e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("sqlite: {e}"))
}

/// The applying connection. `synchronous=NORMAL`: a commit is not fsync'd, which the
/// group's recovery covers (the module's note, `super`).
fn open_writer(
    path: &Path,
    inputs: &Arc<EntryInputs>,
    page_cache_kib: usize,
) -> io::Result<Connection> {
    let conn = Connection::open(path).map_err(sql_err)?;
    determinism::install(&conn, inputs).map_err(sql_err)?;
    set_page_cache(&conn, page_cache_kib)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;
         CREATE TABLE IF NOT EXISTS {META_TABLE} (k TEXT PRIMARY KEY, v BLOB NOT NULL);"
    ))
    .map_err(sql_err)?;
    Ok(conn)
}

fn open_reader(path: &Path, page_cache_kib: usize) -> io::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err)?;
    set_page_cache(&conn, page_cache_kib)?;
    Ok(conn)
}

/// Bound `conn`'s page cache to `kib` KiB (SQLite takes a negative size as KiB).
fn set_page_cache(conn: &Connection, kib: usize) -> io::Result<()> {
    conn.execute_batch(&format!("PRAGMA cache_size = -{kib};"))
        .map_err(sql_err)
}

fn read_applied(conn: &Connection) -> io::Result<AppliedState> {
    let v: Option<Vec<u8>> = conn
        .query_row(
            &format!("SELECT v FROM {META_TABLE} WHERE k = 'applied'"),
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sql_err)?;
    match v {
        Some(b) => AppliedState::decode(&b),
        None => Ok(AppliedState::default()),
    }
}

fn write_applied(conn: &Connection, applied: &AppliedState) -> io::Result<()> {
    conn.execute(
        &format!("INSERT OR REPLACE INTO {META_TABLE} (k, v) VALUES ('applied', ?1)"),
        [applied.encode()],
    )
    .map_err(sql_err)?;
    Ok(())
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// True for failures of the local machine (disk, memory, corruption), which must stop
/// the group rather than be answered: another replica would not fail the same way.
fn is_local_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            SystemIoFailure | DiskFull | DatabaseCorrupt | NotADatabase | OutOfMemory
                | CannotOpen | FileLockingProtocolFailed | DatabaseBusy | DatabaseLocked
                | PermissionDenied | ReadOnly
        )
    )
}

/// A statement error as a deterministic answer naming the statement.
fn statement_error(i: usize, e: rusqlite::Error) -> Error {
    let constraint = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    );
    let msg = format!("statement {i}: {e}");
    if constraint {
        Error::FailedPrecondition(msg)
    } else {
        Error::InvalidArgument(msg)
    }
}

/// Why a statement could not be prepared or run.
enum PrepareError {
    /// The rules forbid it (decided before proposing where possible).
    Refused(Error),
    /// SQLite rejected it (e.g. a table that an earlier statement creates).
    Sql(Error),
    /// The local machine failed (see [`is_local_failure`]).
    Local(io::Error),
}

impl From<PrepareError> for Error {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Refused(e) | PrepareError::Sql(e) => e,
            PrepareError::Local(e) => Error::internal(e),
        }
    }
}

/// Classify a SQLite error of statement `i`.
fn sql_failure(i: usize, e: rusqlite::Error) -> PrepareError {
    if is_local_failure(&e) {
        PrepareError::Local(io::Error::other(format!("statement {i}: {e}")))
    } else {
        PrepareError::Sql(statement_error(i, e))
    }
}

/// Prepare a user statement under the rules' authorizer and bind its parameters.
fn prepare<'c>(
    conn: &'c Connection,
    i: usize,
    stmt: &Stmt,
) -> std::result::Result<rusqlite::Statement<'c>, PrepareError> {
    use PrepareError::Refused;
    let refusals = Refusals::default();
    conn.authorizer(Some(rules::authorizer(refusals.clone())));
    let prepared = conn.prepare(&stmt.sql);
    conn.authorizer(None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>);
    let refused = refusals.take();
    if let Some(why) = refused.first() {
        return Err(Refused(Error::invalid(format!("statement {i}: {why}"))));
    }
    let mut prepared = prepared.map_err(|e| sql_failure(i, e))?;
    for (n, v) in stmt.params.iter().enumerate() {
        prepared
            .raw_bind_parameter(n + 1, v)
            .map_err(|e| Refused(statement_error(i, e)))?;
    }
    for (name, v) in &stmt.named {
        let idx = prepared
            .parameter_index(name)
            .map_err(|e| Refused(statement_error(i, e)))?
            .ok_or_else(|| {
                Refused(Error::invalid(format!(
                    "statement {i}: no parameter named {name}"
                )))
            })?;
        prepared
            .raw_bind_parameter(idx, v)
            .map_err(|e| Refused(statement_error(i, e)))?;
    }
    Ok(prepared)
}

/// Run one command's statements; on error the caller rolls back its savepoint.
fn execute_all(
    conn: &Connection,
    cmd: &DbCommand,
) -> std::result::Result<Vec<ExecResult>, PrepareError> {
    let mut out = Vec::with_capacity(cmd.statements.len());
    for (i, stmt) in cmd.statements.iter().enumerate() {
        let mut prepared = prepare(conn, i, stmt)?;
        let before = conn.total_changes();
        let mut rows = prepared.raw_query();
        while rows.next().map_err(|e| sql_failure(i, e))?.is_some() {}
        drop(rows);
        // changes() and last_insert_rowid() keep the values of an earlier statement on
        // this connection (history that differs between replicas): a statement that
        // modified nothing reports 0 for both. (An UPDATE or DELETE reports the rowid
        // of the connection's last INSERT, as SQLite's own API does; it is an answer
        // detail, not replicated state.)
        let modified = conn.total_changes() != before;
        out.push(ExecResult {
            rows_affected: if modified { conn.changes() } else { 0 },
            last_insert_id: if modified {
                conn.last_insert_rowid()
            } else {
                0
            },
        });
    }
    Ok(out)
}

impl SqliteStateMachine {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        remove_leftovers(dir)?;
        let path = dir.join(DB_FILE);
        let inputs = Arc::new(EntryInputs::default());
        let page_cache_kib = crate::config::DEFAULT_DB_PAGE_CACHE_KIB;
        let writer = open_writer(&path, &inputs, page_cache_kib)?;
        let reader = open_reader(&path, page_cache_kib)?;
        Ok(SqliteStateMachine {
            path,
            dir: dir.to_path_buf(),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(Some(reader)),
            check_turn: tokio::sync::Mutex::new(()),
            inputs,
            page_cache_kib,
        })
    }

    /// Give each connection a page cache of `kib` KiB (`--db-page-cache-kib`) instead of
    /// SQLite's default of about 2 MiB: the writer's fills under a steady insert load
    /// and stays, a connection's cache being its own until it closes.
    pub fn with_page_cache(mut self, kib: usize) -> io::Result<Self> {
        self.page_cache_kib = kib;
        for conn in [&self.writer, &self.reader] {
            if let Some(c) = Self::lock(conn).as_ref() {
                set_page_cache(c, kib)?;
            }
        }
        Ok(self)
    }

    fn lock(m: &Mutex<Option<Connection>>) -> MutexGuard<'_, Option<Connection>> {
        crate::lock(m)
    }

    /// Check a batch at the API edge, without running it: the same rules the apply
    /// enforces. Blocks while the reader connection is busy (a query, a snapshot copy).
    pub fn check(&self, statements: &[Stmt], limits: &rules::DbLimits) -> Result<()> {
        rules::check_limits(statements, limits)?;
        Self::check_on(&Self::lock(&self.reader), statements)
    }

    /// [`Self::check`] without waiting: `None` when the batch's SQL is longer than
    /// [`INLINE_CHECK_SQL_BYTES`] or the reader connection is busy, and the caller
    /// should run [`Self::check`] where blocking is allowed. A short batch prepares in
    /// microseconds, so an async caller may run this on its own thread: under an insert
    /// load, sending every check to the blocking pool cost two thread hand-offs per
    /// write and grew the pool by a thread per waiting call (docs/BENCHMARKS.md).
    pub fn try_check(&self, statements: &[Stmt], limits: &rules::DbLimits) -> Option<Result<()>> {
        let sql: usize = statements.iter().map(|s| s.sql.len()).sum();
        if sql > INLINE_CHECK_SQL_BYTES {
            return None;
        }
        if let Err(e) = rules::check_limits(statements, limits) {
            return Some(Err(e));
        }
        let guard = match self.reader.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Self::check_on(&guard, statements))
    }

    /// [`Self::try_check`] for an async caller, which waits (without holding a thread)
    /// while another async caller's check has the reader: checks from async callers
    /// take turns, so they never find the reader busy with one another, and `None` is
    /// left for a long batch or a reader busy with a query or a snapshot copy. Without
    /// the turns, two workers checking at once sent one of them to the blocking pool,
    /// where it held the reader (a blocking lock) while the next checks, finding it
    /// busy, went to the pool as well: under an insert load at 64 clients the pool grew
    /// to 20-40 threads, each waiting for the reader.
    pub async fn check_in_turn(
        &self,
        statements: &[Stmt],
        limits: &rules::DbLimits,
    ) -> Option<Result<()>> {
        let _turn = self.check_turn.lock().await;
        self.try_check(statements, limits)
    }

    fn check_on(reader: &Option<Connection>, statements: &[Stmt]) -> Result<()> {
        let conn = reader
            .as_ref()
            .ok_or_else(|| Error::unavailable("database is being restored"))?;
        for (i, s) in statements.iter().enumerate() {
            // A statement that refers to a table an earlier statement of the batch
            // creates cannot be prepared yet; only the rules' refusals count here, and
            // the apply checks again.
            if let Err(PrepareError::Refused(e)) = prepare(conn, i, s) {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl StateMachine for SqliteStateMachine {
    fn applied_state(&self) -> io::Result<AppliedState> {
        let guard = Self::lock(&self.writer);
        read_applied(
            guard
                .as_ref()
                .ok_or_else(|| io::Error::other("database closed"))?,
        )
    }

    fn apply(
        &self,
        items: &[ApplyItem<'_>],
        applied: &AppliedState,
    ) -> io::Result<Vec<CommandResult>> {
        let guard = Self::lock(&self.writer);
        let conn = guard
            .as_ref()
            .ok_or_else(|| io::Error::other("database closed"))?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
        let mut results = Vec::new();
        let outcome = (|| -> io::Result<()> {
            for item in items {
                let Some(cmd) = item.command else { continue };
                let parsed: Result<DbCommand> = dec_message(&cmd.payload, "db command");
                let result = match parsed {
                    Err(e) => Err(e),
                    Ok(batch) => {
                        self.inputs.begin(item.index, cmd.timestamp_ms);
                        conn.execute_batch("SAVEPOINT cmd").map_err(sql_err)?;
                        match execute_all(conn, &batch) {
                            Ok(r) => {
                                conn.execute_batch("RELEASE cmd").map_err(sql_err)?;
                                Ok(enc(&Executed {
                                    results: r,
                                    index: item.index,
                                }))
                            }
                            Err(PrepareError::Local(e)) => return Err(e),
                            Err(e) => {
                                conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd")
                                    .map_err(sql_err)?;
                                Err(e.into())
                            }
                        }
                    }
                };
                results.push(CommandResult(result));
            }
            write_applied(conn, applied)
        })();
        match outcome {
            Ok(()) => {
                conn.execute_batch("COMMIT").map_err(sql_err)?;
                Ok(results)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        let q: DbQuery = dec_message(query, "db query")?;
        if q.statements.is_empty() {
            return Err(Error::invalid("statements must not be empty"));
        }
        let guard = Self::lock(&self.reader);
        let conn = guard
            .as_ref()
            .ok_or_else(|| Error::unavailable("database is being restored"))?;
        // One read transaction: every statement sees the same state.
        conn.execute_batch("BEGIN").map_err(Error::internal)?;
        let result = (|| {
            let mut out = Vec::with_capacity(q.statements.len());
            for (i, s) in q.statements.iter().enumerate() {
                let mut prepared = prepare(conn, i, s).map_err(Error::from)?;
                if !prepared.readonly() {
                    return Err(Error::invalid(format!(
                        "statement {i} would modify the database; use Execute for writes"
                    )));
                }
                let columns: Vec<String> = prepared
                    .column_names()
                    .into_iter()
                    .map(String::from)
                    .collect();
                let types: Vec<String> = prepared
                    .columns()
                    .iter()
                    .map(|c| c.decl_type().unwrap_or("").to_string())
                    .collect();
                let n = columns.len();
                let mut rows_out = Vec::new();
                let mut rows = prepared.raw_query();
                while let Some(row) = rows.next().map_err(|e| statement_error(i, e))? {
                    if rows_out.len() >= q.max_rows as usize {
                        return Err(Error::ResourceExhausted(format!(
                            "statement {i} returns more than {} rows (db-max-rows); add a LIMIT",
                            q.max_rows
                        )));
                    }
                    let mut values = Vec::with_capacity(n);
                    for c in 0..n {
                        values.push(value_of(row.get_ref(c).map_err(|e| statement_error(i, e))?));
                    }
                    rows_out.push(values);
                }
                out.push(QueryResult {
                    columns,
                    types,
                    rows: rows_out,
                });
            }
            Ok(out)
        })();
        let _ = conn.execute_batch("COMMIT");
        Ok(enc(&result?))
    }

    fn begin_snapshot(&self) -> io::Result<Box<dyn SnapshotSource>> {
        // VACUUM INTO writes a consistent copy, including the applied position stored
        // inside the database.
        let copy = self
            .dir
            .join(format!("snapshot-copy-{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&copy);
        {
            let guard = Self::lock(&self.reader);
            let conn = guard
                .as_ref()
                .ok_or_else(|| io::Error::other("database closed"))?;
            conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
                .map_err(sql_err)?;
        }
        let applied = {
            let c = open_reader(&copy, self.page_cache_kib)?;
            read_applied(&c)?
        };
        Ok(Box::new(FileSource {
            path: copy,
            applied,
        }))
    }

    fn digest(&self) -> io::Result<StateDigest> {
        let guard = Self::lock(&self.reader);
        let conn = guard
            .as_ref()
            .ok_or_else(|| io::Error::other("database closed"))?;
        // One read transaction: the tables and the applied position agree.
        conn.execute_batch("BEGIN").map_err(sql_err)?;
        let result = (|| {
            let applied = read_applied(conn)?
                .last_applied
                .map(|l| l.index)
                .unwrap_or(0);
            let mut digest = DigestBuilder::default();
            let mut tables = conn
                .prepare(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_nacosd%' ORDER BY name",
                )
                .map_err(sql_err)?;
            let list: Vec<(String, String)> = tables
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql_err)?;
            for (name, sql) in list {
                digest.record(&[name.as_bytes(), sql.as_bytes()]);
                let quoted = name.replace('"', "\"\"");
                let stmt = conn
                    .prepare(&format!("SELECT * FROM \"{quoted}\""))
                    .map_err(sql_err)?;
                let n = stmt.column_count();
                let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
                drop(stmt);
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT * FROM \"{quoted}\" ORDER BY {}",
                        order.join(", ")
                    ))
                    .map_err(sql_err)?;
                let mut rows = stmt.raw_query();
                while let Some(row) = rows.next().map_err(sql_err)? {
                    let values: Vec<Value> = (0..n)
                        .map(|c| row.get_ref(c).map(value_of))
                        .collect::<rusqlite::Result<_>>()
                        .map_err(sql_err)?;
                    digest.record(&[&enc(&values)]);
                }
            }
            Ok(digest.finish(applied))
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn restore(&self, data: &mut dyn Read, applied: &AppliedState) -> io::Result<()> {
        let incoming = self.dir.join(format!("restore-{}.tmp", std::process::id()));
        // Write the incoming file and record the snapshot's position inside it before it
        // goes live; if that fails, nothing changed but the file, which goes too.
        let prepared = (|| {
            {
                let mut f = std::fs::File::create(&incoming)?;
                io::copy(data, &mut f)?;
                f.sync_all()?;
            }
            let c = open_writer(&incoming, &self.inputs, self.page_cache_kib)?;
            write_applied(&c, applied)?;
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
                .map_err(sql_err)
        })();
        if let Err(e) = prepared {
            let _ = std::fs::remove_file(&incoming);
            for ext in ["-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{ext}", incoming.display()));
            }
            return Err(e);
        }
        let mut w = Self::lock(&self.writer);
        let mut r = Self::lock(&self.reader);
        r.take();
        let swapped = (|| {
            // Fold the live WAL into the database first: until the rename below, the
            // old file must stay complete on its own.
            if let Some(conn) = w.take() {
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                    .map_err(sql_err)?;
            }
            for ext in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
            }
            std::fs::rename(&incoming, &self.path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        // Whether or not the swap happened, the group gets its connections back: on
        // the new file, or on the old one, which is still complete.
        *w = Some(open_writer(&self.path, &self.inputs, self.page_cache_kib)?);
        *r = Some(open_reader(&self.path, self.page_cache_kib)?);
        if swapped.is_err() {
            let _ = std::fs::remove_file(&incoming);
        }
        swapped
    }
}

/// Snapshot data of the embedded DB: the bytes of a consistent copy of the file.
struct FileSource {
    path: PathBuf,
    applied: AppliedState,
}

impl SnapshotSource for FileSource {
    fn applied(&self) -> &AppliedState {
        &self.applied
    }

    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut f = std::fs::File::open(&self.path)?;
        io::copy(&mut f, out)?;
        Ok(())
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #11 (smaller items): files an interrupted snapshot copy or restore left
    /// behind are removed when the group opens; the database itself is untouched.
    #[test]
    fn crash_leftovers_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = SqliteStateMachine::open(dir.path()).unwrap();
            drop(sm);
        }
        let leftovers = ["snapshot-copy-123.tmp", "restore-456.tmp"];
        for f in leftovers {
            std::fs::write(dir.path().join(f), b"partial").unwrap();
        }
        std::fs::write(dir.path().join("keep.tmp"), b"not ours").unwrap();
        let _sm = SqliteStateMachine::open(dir.path()).unwrap();
        for f in leftovers {
            assert!(!dir.path().join(f).exists(), "{f} was left behind");
        }
        assert!(dir.path().join("keep.tmp").exists());
        assert!(dir.path().join(DB_FILE).exists());
    }

    /// A short batch is checked on the caller's thread when the reader connection is
    /// free, with the verdicts of `check`; a long batch or a busy reader is left to
    /// `check` (`None`).
    #[test]
    fn try_check_decides_short_batches_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let sm = SqliteStateMachine::open(dir.path()).unwrap();
        let limits = rules::DbLimits::default();
        let stmt = |sql: &str| Stmt {
            sql: sql.to_string(),
            params: vec![],
            named: Default::default(),
        };
        let fine = [stmt("CREATE TABLE t (x INTEGER)"), stmt("SELECT 1")];
        assert!(matches!(sm.try_check(&fine, &limits), Some(Ok(()))));
        let refused = [stmt("SELECT 1"), stmt("PRAGMA user_version = 3")];
        let Some(Err(e)) = sm.try_check(&refused, &limits) else {
            panic!("a PRAGMA must be refused right away");
        };
        assert!(e.to_string().contains("PRAGMA"), "{e}");
        assert!(
            matches!(sm.try_check(&[], &limits), Some(Err(_))),
            "the limits are checked too"
        );

        let long = [stmt(&format!(
            "SELECT 1 /* {} */",
            "x".repeat(INLINE_CHECK_SQL_BYTES)
        ))];
        assert!(
            sm.try_check(&long, &limits).is_none(),
            "too long to check here"
        );
        assert!(sm.check(&long, &limits).is_ok());

        let busy = SqliteStateMachine::lock(&sm.reader);
        assert!(sm.try_check(&fine, &limits).is_none(), "the reader is busy");
        drop(busy);
        assert!(matches!(sm.try_check(&fine, &limits), Some(Ok(()))));
    }

    /// Async callers checking at once take turns at the reader: none of them finds it
    /// busy and is sent to the blocking pool. A query holding the reader still does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_checks_take_turns_at_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let sm = Arc::new(SqliteStateMachine::open(dir.path()).unwrap());
        let checkers: Vec<_> = (0..4)
            .map(|_| {
                let sm = sm.clone();
                tokio::spawn(async move {
                    let limits = rules::DbLimits::default();
                    let stmts = [Stmt {
                        sql: "CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT)".into(),
                        params: vec![],
                        named: Default::default(),
                    }];
                    let mut decided = 0;
                    for _ in 0..300 {
                        if let Some(done) = sm.check_in_turn(&stmts, &limits).await {
                            done.unwrap();
                            decided += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    decided
                })
            })
            .collect();
        for c in checkers {
            assert_eq!(c.await.unwrap(), 300, "every check decided in turn");
        }
        let stmts = [Stmt {
            sql: "SELECT 1".into(),
            params: vec![],
            named: Default::default(),
        }];
        let query = SqliteStateMachine::lock(&sm.reader);
        let limits = rules::DbLimits::default();
        let busy = futures::FutureExt::now_or_never(sm.check_in_turn(&stmts, &limits))
            .expect("no other check has the turn");
        assert!(busy.is_none(), "the reader is busy with a query");
        drop(query);
    }

    /// A restore whose incoming data is not a database fails without leaving the group
    /// without connections: the old state still answers.
    #[test]
    fn a_failed_restore_keeps_the_group_usable() {
        let dir = tempfile::tempdir().unwrap();
        let sm = SqliteStateMachine::open(dir.path()).unwrap();
        let before = sm.applied_state().unwrap();
        let garbage = b"this is not a sqlite file, not even close".repeat(100);
        assert!(sm
            .restore(&mut &garbage[..], &AppliedState::default())
            .is_err());
        assert_eq!(sm.applied_state().unwrap(), before);
        assert!(sm.digest().is_ok(), "the reader still works");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("restore-"))
            .collect();
        assert!(leftovers.is_empty(), "the incoming file was not cleaned up");
    }

    /// Each connection's `cache_size` (negative: KiB).
    fn sizes(sm: &SqliteStateMachine) -> Vec<i64> {
        [&sm.writer, &sm.reader]
            .into_iter()
            .map(|c| {
                let guard = SqliteStateMachine::lock(c);
                let conn = guard.as_ref().expect("connection open");
                conn.query_row("PRAGMA cache_size", [], |r| r.get(0))
                    .unwrap()
            })
            .collect()
    }

    /// The page cache bound holds on both connections, and on the ones a restore opens.
    #[test]
    fn the_page_cache_bound_holds_across_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let default = SqliteStateMachine::open(&dir.path().join("default")).unwrap();
        let kib = crate::config::DEFAULT_DB_PAGE_CACHE_KIB as i64;
        assert_eq!(
            sizes(&default),
            [-kib, -kib],
            "the default, without a setting"
        );
        let sm = SqliteStateMachine::open(dir.path())
            .unwrap()
            .with_page_cache(256)
            .unwrap();
        assert_eq!(sizes(&sm), [-256, -256]);
        let garbage = b"not a database".repeat(100);
        assert!(sm
            .restore(&mut &garbage[..], &AppliedState::default())
            .is_err());
        assert_eq!(sizes(&sm), [-256, -256], "the reopened connections");
    }
}
