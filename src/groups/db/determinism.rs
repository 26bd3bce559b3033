//! Replicas of the embedded DB compute the same values by construction.
//!
//! A textual guard ("refuse `random()`, refuse `'now'`") cannot be complete: SQL can
//! hide a call in a DEFAULT expression, a trigger or a view, build `'now'` from pieces,
//! or read it from a column. So instead of refusing, the apply connection replaces
//! every source of non-determinism SQLite has with a function of the log entry being
//! applied, which every replica applies with the same inputs:
//!
//! - `random()` and `randomblob(N)` draw from a generator seeded by the entry's log
//!   index, reset before each command.
//! - The date/time functions (`date`, `time`, `datetime`, `julianday`, `unixepoch`,
//!   `strftime`, `timediff`) and the `CURRENT_TIME`/`CURRENT_DATE`/`CURRENT_TIMESTAMP`
//!   keywords (which SQLite compiles to calls of functions of the same names) are
//!   wrappers: a time value of `'now'`, or a call with no time value, becomes the
//!   entry's timestamp (the clock of the node that accepted the write, stored in the
//!   entry), and the
//!   `'localtime'` and `'utc'` modifiers are dropped, so the database's time zone is
//!   UTC on every host. The wrapper then calls SQLite's own function on a private
//!   in-memory connection, so every other rule of SQLite's date arithmetic is
//!   SQLite's.
//! - `changes()`, `total_changes()` and `last_insert_rowid()` depend on the
//!   connection's history (a replica that restarted has a different one); they fail
//!   with a clear error wherever they are called.
//!
//! Reads run on the reader connections with SQLite's own functions: a read is local,
//! and "now" there means now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, Error as SqlError};

/// The inputs of the entry being applied.
#[derive(Default)]
pub struct EntryInputs {
    now_ms: AtomicU64,
    rng: AtomicU64,
}

impl EntryInputs {
    /// Set before each command: its log index seeds the generator, its timestamp is
    /// "now".
    pub fn begin(&self, index: u64, timestamp_ms: u64) {
        self.now_ms.store(timestamp_ms, Ordering::Relaxed);
        self.rng.store(index, Ordering::Relaxed);
    }

    /// splitmix64: small, fast, and every replica draws the same sequence.
    fn next(&self) -> u64 {
        let s = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The entry's time as a Julian day number, SQLite's native time value.
    fn now_julian(&self) -> f64 {
        self.now_ms.load(Ordering::Relaxed) as f64 / 86_400_000.0 + 2_440_587.5
    }
}

/// SQLite's default limit on the length of a string or blob.
const MAX_BLOB: i64 = 1_000_000_000;

/// Date/time functions and the position of their (first) time value; `strftime`'s
/// first argument is the format.
const TIME_FUNCTIONS: [(&str, usize); 7] = [
    ("date", 0),
    ("time", 0),
    ("datetime", 0),
    ("julianday", 0),
    ("unixepoch", 0),
    ("strftime", 1),
    ("timediff", 0),
];
/// The current-time keywords and the function each one means.
const CURRENT_TIME_KEYWORDS: [(&str, &str); 3] = [
    ("current_timestamp", "datetime"),
    ("current_date", "date"),
    ("current_time", "time"),
];
/// Functions whose value depends on the connection's history.
const HISTORY_FUNCTIONS: [&str; 3] = ["changes", "total_changes", "last_insert_rowid"];

fn user_error(msg: String) -> SqlError {
    SqlError::UserFunctionError(msg.into())
}

fn is_text(v: &SqlValue, word: &str) -> bool {
    matches!(v, SqlValue::Text(t) if t.trim().eq_ignore_ascii_case(word))
}

/// The arguments for SQLite's own function: 'now' (or a missing time value) replaced
/// by the entry's time, the time-zone modifiers dropped.
fn pinned_args(
    name: &str,
    time_at: usize,
    args: Vec<SqlValue>,
    inputs: &EntryInputs,
) -> Vec<SqlValue> {
    let now = SqlValue::Real(inputs.now_julian());
    // timediff(A, B) takes two time values and no modifiers.
    let time_positions = if name == "timediff" { 2 } else { 1 };
    let mut out = Vec::with_capacity(args.len() + 1);
    for (i, v) in args.into_iter().enumerate() {
        let is_time_value = i >= time_at && i < time_at + time_positions;
        if is_time_value && is_text(&v, "now") {
            out.push(now.clone());
        } else if i >= time_at + time_positions && (is_text(&v, "localtime") || is_text(&v, "utc"))
        {
            continue;
        } else {
            out.push(v);
        }
    }
    // No time value at all means now (a strftime with no format stays SQLite's
    // business).
    if out.len() == time_at {
        out.push(now);
    }
    out
}

fn args_of(ctx: &Context<'_>) -> Vec<SqlValue> {
    (0..ctx.len())
        .map(|i| SqlValue::from(ctx.get_raw(i)))
        .collect()
}

/// Call SQLite's own `name(args…)` on the private connection.
fn call_builtin(
    helper: &Mutex<Connection>,
    name: &str,
    args: &[SqlValue],
) -> rusqlite::Result<SqlValue> {
    let conn = crate::lock(helper);
    let placeholders = (1..=args.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut stmt = conn.prepare_cached(&format!("SELECT {name}({placeholders})"))?;
    stmt.query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
}

/// Install the deterministic functions on the apply connection.
pub fn install(conn: &Connection, inputs: &Arc<EntryInputs>) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    let i = inputs.clone();
    conn.create_scalar_function("random", 0, flags, move |_| Ok(i.next() as i64))?;
    let i = inputs.clone();
    conn.create_scalar_function("randomblob", 1, flags, move |ctx| {
        let n = match ctx.get_raw(0) {
            ValueRef::Integer(n) => n,
            ValueRef::Real(r) => r as i64,
            _ => 1,
        }
        .max(1);
        if n > MAX_BLOB {
            return Err(user_error(format!(
                "randomblob({n}): string or blob too big"
            )));
        }
        let mut blob = Vec::with_capacity(n as usize);
        while blob.len() < n as usize {
            blob.extend_from_slice(&i.next().to_le_bytes());
        }
        blob.truncate(n as usize);
        Ok(blob)
    })?;

    let helper = Arc::new(Mutex::new(Connection::open_in_memory()?));
    // Deterministic within a statement (SQLite's own flag for these is "slow
    // change"); flagging them lets them appear in indexes and generated columns as the
    // built-ins can.
    let time_flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for (name, time_at) in TIME_FUNCTIONS {
        let (i, h) = (inputs.clone(), helper.clone());
        conn.create_scalar_function(name, -1, time_flags, move |ctx| {
            let args = pinned_args(name, time_at, args_of(ctx), &i);
            call_builtin(&h, name, &args)
        })?;
    }
    for (keyword, function) in CURRENT_TIME_KEYWORDS {
        let (i, h) = (inputs.clone(), helper.clone());
        conn.create_scalar_function(keyword, 0, time_flags, move |_| {
            call_builtin(&h, function, &[SqlValue::Real(i.now_julian())])
        })?;
    }
    for name in HISTORY_FUNCTIONS {
        conn.create_scalar_function(name, 0, flags, move |_| -> rusqlite::Result<i64> {
            Err(user_error(format!(
                "{name}() depends on the connection's history, which differs between replicas"
            )))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_at(index: u64, ms: u64) -> (Connection, Arc<EntryInputs>) {
        let conn = Connection::open_in_memory().unwrap();
        let inputs = Arc::new(EntryInputs::default());
        install(&conn, &inputs).unwrap();
        inputs.begin(index, ms);
        (conn, inputs)
    }

    fn one(conn: &Connection, sql: &str) -> SqlValue {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    // 2024-02-29 12:34:56.789 UTC
    const T: u64 = 1_709_210_096_789;

    #[test]
    fn now_is_the_entry_time_in_every_spelling() {
        let (c, _) = conn_at(7, T);
        let expect = SqlValue::Text("2024-02-29 12:34:56".into());
        for sql in [
            "SELECT datetime('now')",
            "SELECT datetime('NOW')",
            "SELECT datetime()",
            "SELECT datetime('no'||'w')",
            "SELECT CURRENT_TIMESTAMP",
            "SELECT datetime('now', 'localtime')",
            "SELECT datetime(datetime('now', 'utc'))",
        ] {
            assert_eq!(one(&c, sql), expect, "{sql}");
        }
        assert_eq!(
            one(&c, "SELECT CURRENT_DATE"),
            SqlValue::Text("2024-02-29".into())
        );
        assert_eq!(one(&c, "SELECT time()"), SqlValue::Text("12:34:56".into()));
        assert_eq!(
            one(&c, "SELECT strftime('%s')"),
            SqlValue::Text("1709210096".into())
        );
        assert_eq!(
            one(&c, "SELECT strftime('%Y %f', 'now')"),
            SqlValue::Text("2024 56.789".into())
        );
        assert_eq!(
            one(&c, "SELECT unixepoch()"),
            SqlValue::Integer(1_709_210_096)
        );
        assert_eq!(
            one(&c, "SELECT date('now', '+1 day', 'start of month')"),
            SqlValue::Text("2024-03-01".into())
        );
        c.execute_batch("CREATE TABLE t(c); INSERT INTO t VALUES ('now')")
            .unwrap();
        assert_eq!(one(&c, "SELECT datetime(c) FROM t"), expect);
    }

    #[test]
    fn fixed_times_keep_sqlites_own_arithmetic() {
        let (c, _) = conn_at(1, T);
        assert_eq!(
            one(&c, "SELECT datetime('2024-01-31', '+1 month')"),
            SqlValue::Text("2024-03-02 00:00:00".into())
        );
        assert_eq!(
            one(&c, "SELECT julianday('2000-01-01')"),
            SqlValue::Real(2_451_544.5)
        );
        assert_eq!(
            one(&c, "SELECT timediff('2024-03-01', '2024-02-28')"),
            SqlValue::Text("+0000-00-02 00:00:00.000".into())
        );
        assert_eq!(one(&c, "SELECT date(NULL)"), SqlValue::Null);
    }

    #[test]
    fn random_follows_the_log_index() {
        let sql = "SELECT random(), hex(randomblob(20))";
        let row = |c: &Connection| -> (i64, String) {
            c.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
        };
        let (a, ai) = conn_at(42, T);
        let (b, bi) = conn_at(42, T + 5);
        let first = row(&a);
        assert_eq!(first, row(&b));
        assert_eq!(first.1.len(), 40);
        ai.begin(43, T);
        assert_ne!(row(&a), first);

        // DEFAULT expressions and triggers go through the same functions.
        let mut stored = Vec::new();
        for (c, inputs) in [(&a, &ai), (&b, &bi)] {
            c.execute_batch(
                "CREATE TABLE d(x, r DEFAULT (random()), t DEFAULT CURRENT_TIMESTAMP);
                 CREATE TABLE log(r);
                 CREATE TRIGGER d_log AFTER INSERT ON d BEGIN
                     INSERT INTO log VALUES (randomblob(8));
                 END;",
            )
            .unwrap();
            inputs.begin(50, T);
            c.execute("INSERT INTO d(x) VALUES (1)", []).unwrap();
            stored.push(
                c.query_row("SELECT r, t, (SELECT hex(r) FROM log) FROM d", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .unwrap(),
            );
        }
        assert_eq!(stored[0], stored[1]);
        assert_eq!(stored[0].1, "2024-02-29 12:34:56");
    }

    #[test]
    fn history_functions_fail_everywhere() {
        let (c, _) = conn_at(1, T);
        c.execute_batch("CREATE TABLE t(x, n DEFAULT (last_insert_rowid()))")
            .unwrap();
        let err = c.execute("INSERT INTO t(x) VALUES (1)", []).unwrap_err();
        assert!(err.to_string().contains("connection's history"), "{err}");
        assert!(c
            .query_row("SELECT changes()", [], |r| r.get::<_, i64>(0))
            .is_err());
    }
}
