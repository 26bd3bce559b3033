//! What statements may run in the embedded DB, and the limits.
//!
//! The checks run twice: at the API edge before anything is proposed (so a refused
//! statement costs no Raft round), and through the same authorizer while applying (so
//! a statement that slipped through is refused identically on every replica instead
//! of diverging).

use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::{Error, Result};
use crate::groups::db::model::{Stmt, Value};

/// Limits of one request, set by the node that accepts it (`--db-max-*`). They are
/// checked at the API edge only, never while applying: a node's limits may differ
/// from another's, and an apply must not depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbLimits {
    /// Statements in one `Execute` or `Query`.
    pub max_statements: usize,
    /// SQL text of one statement, in bytes.
    pub max_sql_bytes: usize,
    /// Rows one statement of a `Query` returns; more is `RESOURCE_EXHAUSTED`.
    pub max_rows: u32,
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits {
            max_statements: 100,
            max_sql_bytes: 64 * 1024,
            max_rows: 10_000,
        }
    }
}
/// Prefix of the group's own tables.
pub const INTERNAL_PREFIX: &str = "_nacosd";

/// Functions whose result differs between replicas (random, or tied to the
/// connection's history, which differs on a replica that restarted).
const RANDOM_FUNCTIONS: [&str; 5] = [
    "random",
    "randomblob",
    "changes",
    "total_changes",
    "last_insert_rowid",
];
/// Date/time functions: deterministic unless asked for the current time.
const TIME_FUNCTIONS: [&str; 7] = [
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
];

/// Reasons the authorizer refused something while preparing a statement.
#[derive(Default, Clone)]
pub struct Refusals(Arc<Mutex<Vec<String>>>);

impl Refusals {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, reason: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reason);
    }
}

fn internal(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with(INTERNAL_PREFIX)
}

/// An authorizer that refuses (and records why) everything `rules` forbids.
/// `time_used` records whether a date/time function appears.
pub fn authorizer(
    refusals: Refusals,
    time_used: Arc<Mutex<bool>>,
) -> impl for<'r> FnMut(AuthContext<'r>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| {
        let deny = |why: String| {
            refusals.push(why);
            Authorization::Deny
        };
        match ctx.action {
            AuthAction::Function { function_name } => {
                let f = function_name.to_ascii_lowercase();
                if RANDOM_FUNCTIONS.contains(&f.as_str()) {
                    return deny(format!("{f}() gives a different result on every replica"));
                }
                if TIME_FUNCTIONS.contains(&f.as_str()) {
                    *time_used.lock().unwrap_or_else(|e| e.into_inner()) = true;
                }
                Authorization::Allow
            }
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => deny(
                "transactions are managed by the server; send the statements as one batch".into(),
            ),
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                deny("ATTACH and DETACH are not allowed".into())
            }
            AuthAction::Pragma { pragma_name, .. } => {
                deny(format!("PRAGMA {pragma_name} is not allowed"))
            }
            AuthAction::Read { table_name, .. }
            | AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name }
            | AuthAction::CreateTable { table_name }
            | AuthAction::DropTable { table_name }
            | AuthAction::AlterTable { table_name, .. }
            | AuthAction::CreateIndex { table_name, .. }
                if internal(table_name) =>
            {
                deny(format!("table {table_name} is internal to nacosd"))
            }
            _ => Authorization::Allow,
        }
    }
}

/// The current-time keywords are not reported to the authorizer; find them as tokens.
fn mentions_current_time(sql: &str) -> Option<&'static str> {
    let upper = sql.to_ascii_uppercase();
    ["CURRENT_TIMESTAMP", "CURRENT_TIME", "CURRENT_DATE"]
        .into_iter()
        .find(|kw| {
            upper.match_indices(kw).any(|(i, _)| {
                let before = upper[..i].chars().next_back();
                let after = upper[i + kw.len()..].chars().next();
                let ident =
                    |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                !ident(before) && !ident(after)
            })
        })
}

fn is_now(v: &Value) -> bool {
    matches!(v, Value::Text(t) if t.trim().eq_ignore_ascii_case("now"))
}

/// Calls of date/time functions whose arguments mean "the current time": none at all,
/// or only a format for `strftime`. Scans the SQL text, skipping quoted literals.
fn implicit_now_call(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\'' || c == b'"' {
            // Skip the literal; a doubled quote inside it is an escaped quote.
            i += 1;
            while i < bytes.len() {
                if bytes[i] == c {
                    if i + 1 < bytes.len() && bytes[i + 1] == c {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let word = &lower[start..i];
        if !TIME_FUNCTIONS.contains(&word) {
            continue;
        }
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'(' {
            continue;
        }
        // Count the top-level arguments up to the matching parenthesis.
        let (mut depth, mut commas, mut any) = (0i32, 0usize, false);
        let mut k = j + 1;
        while k < bytes.len() {
            match bytes[k] {
                q @ (b'\'' | b'"') => {
                    any = true;
                    k += 1;
                    while k < bytes.len() && bytes[k] != q {
                        k += 1;
                    }
                }
                b'(' => {
                    depth += 1;
                    any = true;
                }
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                b',' if depth == 0 => commas += 1,
                b if !b.is_ascii_whitespace() => any = true,
                _ => {}
            }
            k += 1;
        }
        let args = if any { commas + 1 } else { 0 };
        if args == 0 || (word == "strftime" && args == 1) {
            return Some(word.to_string());
        }
    }
    None
}

/// Refuse a statement that uses a date/time function with 'now' (in the SQL or a
/// parameter) or with no time value, or a current-time keyword.
pub fn check_time(stmt: &Stmt, time_used: bool) -> Result<()> {
    if let Some(kw) = mentions_current_time(&stmt.sql) {
        return Err(Error::invalid(format!(
            "{kw} gives a different result on every replica; pass the time as a parameter"
        )));
    }
    if let Some(f) = implicit_now_call(&stmt.sql) {
        return Err(Error::invalid(format!(
            "{f}() without a time value means 'now', which gives a different result on every replica; pass the time as a parameter"
        )));
    }
    if time_used {
        let lower = stmt.sql.to_ascii_lowercase();
        let literal_now = lower.contains("'now'") || lower.contains("\"now\"");
        let param_now = stmt.params.iter().chain(stmt.named.values()).any(is_now);
        if literal_now || param_now {
            return Err(Error::invalid(
                "date/time functions with 'now' give a different result on every replica; pass the time as a parameter",
            ));
        }
    }
    Ok(())
}

/// Size and count limits of a batch.
pub fn check_limits(statements: &[Stmt], limits: &DbLimits) -> Result<()> {
    if statements.is_empty() {
        return Err(Error::invalid("statements must not be empty"));
    }
    if statements.len() > limits.max_statements {
        return Err(Error::invalid(format!(
            "{} statements in one request; the limit is {} (db-max-statements)",
            statements.len(),
            limits.max_statements
        )));
    }
    for (i, s) in statements.iter().enumerate() {
        if s.sql.trim().is_empty() {
            return Err(Error::invalid(format!(
                "statement {i}: sql must not be empty"
            )));
        }
        if s.sql.len() > limits.max_sql_bytes {
            return Err(Error::invalid(format!(
                "statement {i}: sql is {} bytes; the limit is {} (db-max-sql-bytes)",
                s.sql.len(),
                limits.max_sql_bytes
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str, params: Vec<Value>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
            named: Default::default(),
        }
    }

    #[test]
    fn current_time_keywords_are_found_as_tokens_only() {
        assert!(check_time(
            &stmt("INSERT INTO t VALUES (CURRENT_TIMESTAMP)", vec![]),
            false
        )
        .is_err());
        assert!(check_time(&stmt("select current_date", vec![]), false).is_err());
        assert!(check_time(&stmt("SELECT my_current_time_col FROM t", vec![]), false).is_ok());
    }

    #[test]
    fn time_functions_without_a_time_value_are_refused() {
        for sql in [
            "SELECT date()",
            "CREATE TABLE t (c DEFAULT (datetime( )))",
            "SELECT strftime('%s')",
            "SELECT julianday ()",
        ] {
            assert!(check_time(&stmt(sql, vec![]), false).is_err(), "{sql}");
        }
        for sql in [
            "SELECT date('2024-01-01')",
            "SELECT strftime('%s', '2024-01-01')",
            "SELECT 'date()' AS literal",
            "SELECT datetime(ts, '+1 day') FROM t",
            "SELECT mydate() FROM t",
        ] {
            assert!(check_time(&stmt(sql, vec![]), false).is_ok(), "{sql}");
        }
    }

    #[test]
    fn now_is_refused_only_with_time_functions() {
        assert!(check_time(&stmt("SELECT datetime('now')", vec![]), true).is_err());
        assert!(check_time(
            &stmt("SELECT datetime(?)", vec![Value::Text("NOW".into())]),
            true
        )
        .is_err());
        assert!(check_time(&stmt("SELECT datetime('2024-01-01')", vec![]), true).is_ok());
        assert!(check_time(&stmt("INSERT INTO t VALUES ('now')", vec![]), false).is_ok());
    }
}
