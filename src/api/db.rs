//! `nacosd.v1.DbService`: the replicated SQLite database.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};

use crate::api::{deadline, level};
use crate::consistency;
use crate::error::{Error, Result};
use crate::groups::codec::enc;
use crate::groups::db::rules::{self, DbLimits};
use crate::groups::db::{DbCommand, DbQuery, DbReply, SqliteStateMachine, Stmt, Value};
use crate::groups::EMBEDDED_DB;
use crate::pb;
use crate::raft::node::MultiRaft;
use crate::raft::types::Command;

pub struct DbApi {
    node: Arc<MultiRaft>,
    db: Arc<OnceLock<Arc<SqliteStateMachine>>>,
    limits: DbLimits,
}

impl DbApi {
    pub fn new(
        node: Arc<MultiRaft>,
        db: Arc<OnceLock<Arc<SqliteStateMachine>>>,
        limits: DbLimits,
    ) -> Self {
        DbApi { node, db, limits }
    }
}

fn value_of(v: Option<pb::Value>, what: &str) -> Result<Value> {
    use pb::value::Value as V;
    Ok(match v.and_then(|v| v.value) {
        None | Some(V::Null(_)) => Value::Null,
        Some(V::Integer(i)) => Value::Integer(i),
        Some(V::Real(f)) if f.is_finite() => Value::Real(f),
        Some(V::Real(f)) => {
            return Err(Error::invalid(format!(
                "{what}: {f} is not a finite number"
            )))
        }
        Some(V::Text(s)) => Value::Text(s),
        Some(V::Blob(b)) => Value::Blob(b),
    })
}

fn pb_value(v: Value) -> pb::Value {
    use pb::value::Value as V;
    pb::Value {
        value: Some(match v {
            Value::Null => V::Null(true),
            Value::Integer(i) => V::Integer(i),
            Value::Real(f) => V::Real(f),
            Value::Text(s) => V::Text(s),
            Value::Blob(b) => V::Blob(b),
        }),
    }
}

fn statements(input: Vec<pb::Statement>) -> Result<Vec<Stmt>> {
    let mut out = Vec::with_capacity(input.len());
    for (i, s) in input.into_iter().enumerate() {
        let params = s
            .params
            .into_iter()
            .enumerate()
            .map(|(n, v)| value_of(Some(v), &format!("statement {i} parameter {}", n + 1)))
            .collect::<Result<_>>()?;
        let mut named = std::collections::BTreeMap::new();
        for (k, v) in s.named_params {
            if !k.starts_with([':', '@', '$']) {
                return Err(Error::invalid(format!(
                    "statement {i}: named parameter {k:?} must start with ':', '@' or '$'"
                )));
            }
            let v = value_of(Some(v), &format!("statement {i} parameter {k}"))?;
            named.insert(k, v);
        }
        out.push(Stmt {
            sql: s.sql,
            params,
            named,
        });
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::db_service_server::DbService for DbApi {
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let timeout = deadline(&req);
        let stmts = statements(req.into_inner().statements)?;
        match self.db.get() {
            Some(db) => db.check(&stmts, &self.limits)?,
            None => rules::check_limits(&stmts, &self.limits)?,
        }
        let first = stmts
            .first()
            .map(|s| s.sql.chars().take(64).collect::<String>())
            .unwrap_or_default();
        let cmd = Command::new("execute", first, enc(&DbCommand { statements: stmts }));
        let bytes = consistency::write(&self.node, EMBEDDED_DB, cmd, timeout).await?;
        match crate::groups::codec::dec::<DbReply>(&bytes, "db reply")? {
            DbReply::Executed { results, index } => Ok(Response::new(pb::ExecuteResponse {
                results: results
                    .into_iter()
                    .map(|r| pb::ExecuteResult {
                        rows_affected: r.rows_affected,
                        last_insert_id: r.last_insert_id,
                    })
                    .collect(),
                index,
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let stmts = statements(r.statements)?;
        rules::check_limits(&stmts, &self.limits)?;
        let q = DbQuery {
            statements: stmts,
            max_rows: self.limits.max_rows,
        };
        let bytes = consistency::read(
            &self.node,
            EMBEDDED_DB,
            &enc(&q),
            level(r.consistency)?,
            timeout,
        )
        .await?;
        match crate::groups::codec::dec::<DbReply>(&bytes, "db reply")? {
            DbReply::Rows(results) => Ok(Response::new(pb::QueryResponse {
                results: results
                    .into_iter()
                    .map(|q| pb::QueryResult {
                        columns: q.columns,
                        types: q.types,
                        rows: q
                            .rows
                            .into_iter()
                            .map(|row| pb::Row {
                                values: row.into_iter().map(pb_value).collect(),
                            })
                            .collect(),
                    })
                    .collect(),
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }
}
