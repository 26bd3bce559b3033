//! `nacosd.v1.DbService`: the replicated SQLite database.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};

use crate::api::{deadline, level};
use crate::auth::{Access, Auth, Resource};
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::groups::db::rules::{self, DbLimits};
use crate::groups::db::{DbCommand, DbQuery, SqliteStateMachine, Stmt, Value};
use crate::pb;
use crate::raft::node::MultiRaft;

pub struct DbApi {
    client: GroupClient,
    auth: Arc<Auth>,
    db: Arc<OnceLock<Arc<SqliteStateMachine>>>,
    limits: DbLimits,
}

impl DbApi {
    pub fn new(
        node: Arc<MultiRaft>,
        auth: Arc<Auth>,
        db: Arc<OnceLock<Arc<SqliteStateMachine>>>,
        limits: DbLimits,
    ) -> Self {
        DbApi {
            client: GroupClient::new(node),
            auth,
            db,
            limits,
        }
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

/// Check a batch against the live schema with the same rules the apply enforces: here,
/// after the checks of other calls, when it is short and the reader connection is not
/// busy with a query, otherwise on the blocking pool (it prepares SQL;
/// `SqliteStateMachine::check_in_turn`).
async fn check(
    db: Option<Arc<SqliteStateMachine>>,
    stmts: Vec<Stmt>,
    limits: DbLimits,
) -> Result<Vec<Stmt>> {
    if let Some(db) = &db {
        if let Some(done) = db.check_in_turn(&stmts, &limits).await {
            return done.map(|()| stmts);
        }
    }
    tokio::task::spawn_blocking(move || {
        match db {
            Some(db) => db.check(&stmts, &limits)?,
            None => rules::check_limits(&stmts, &limits)?,
        }
        Ok(stmts)
    })
    .await
    .map_err(|e| Error::internal(format!("statement check failed: {e}")))?
}

#[tonic::async_trait]
impl pb::db_service_server::DbService for DbApi {
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> std::result::Result<Response<pb::ExecuteResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        caller.require(Resource::Db, Access::Write, "")?;
        let stmts = statements(req.into_inner().statements)?;
        let statements = check(self.db.get().cloned(), stmts, self.limits).await?;
        let done = self
            .client
            .mutate(DbCommand { statements }, timeout)
            .await?;
        Ok(Response::new(pb::ExecuteResponse {
            results: done
                .results
                .into_iter()
                .map(|r| pb::ExecuteResult {
                    rows_affected: r.rows_affected,
                    last_insert_id: r.last_insert_id,
                })
                .collect(),
            index: done.index,
        }))
    }

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> std::result::Result<Response<pb::QueryResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        caller.require(Resource::Db, Access::Read, "")?;
        let r = req.into_inner();
        let stmts = statements(r.statements)?;
        rules::check_limits(&stmts, &self.limits)?;
        let q = DbQuery {
            statements: stmts,
            max_rows: self.limits.max_rows,
        };
        let results = self.client.query(q, level(r.consistency)?, timeout).await?;
        Ok(Response::new(pb::QueryResponse {
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
        }))
    }
}
