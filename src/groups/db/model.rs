//! Data of the embedded-DB group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Value>,
    pub named: BTreeMap<String, Value>,
}

/// A write: statements run in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbCommand {
    pub statements: Vec<Stmt>,
}

/// A read: read-only statements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbQuery {
    pub statements: Vec<Stmt>,
    pub max_rows: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub rows_affected: u64,
    pub last_insert_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What an `Execute` answers: results per statement, and the log index of the
/// transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    pub results: Vec<ExecResult>,
    pub index: u64,
}
