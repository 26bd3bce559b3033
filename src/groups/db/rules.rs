//! What statements may run in the embedded DB, and the limits.
//!
//! The checks run twice: at the API edge before anything is proposed (so a refused
//! statement costs no Raft round), and through the same authorizer while applying (so
//! a statement that slipped through is refused identically on every replica instead
//! of diverging).

use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::{Error, Result};
use crate::groups::db::model::Stmt;

pub use crate::config::DbLimits;

/// Prefix of the group's own tables.
pub const INTERNAL_PREFIX: &str = "_nacosd";

/// Functions whose result depends on the connection's history, which differs on a
/// replica that restarted. (Randomness and the clock are made deterministic instead:
/// see `determinism`.)
const HISTORY_FUNCTIONS: [&str; 3] = ["changes", "total_changes", "last_insert_rowid"];

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
pub fn authorizer(
    refusals: Refusals,
) -> impl for<'r> FnMut(AuthContext<'r>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| {
        let deny = |why: String| {
            refusals.push(why);
            Authorization::Deny
        };
        match ctx.action {
            AuthAction::Function { function_name } => {
                let f = function_name.to_ascii_lowercase();
                if HISTORY_FUNCTIONS.contains(&f.as_str()) {
                    return deny(format!(
                        "{f}() depends on the connection's history, which differs between replicas"
                    ));
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
