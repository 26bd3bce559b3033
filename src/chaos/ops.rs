//! Each group seen as registers, one per key, through nacosd's real gRPC client API —
//! and what a failed call means for the history.
//!
//! | group | key | put | delete | compare-and-swap | read |
//! |---|---|---|---|---|---|
//! | config | data id `k<i>` in group `e<epoch>` of namespace `chaos<run>` | PublishConfig | RemoveConfig | PublishConfig with `cas_md5` | GetConfig |
//! | naming | instance `192.0.2.1:<slot>` of service `s<i>` in group `e<epoch>` | RegisterInstance with metadata `v` | DeregisterInstance | — | GetService (every slot at once) |
//! | db | row `k = 'e<epoch>/k<i>'` of table `kv_<run>` | INSERT OR REPLACE | DELETE | UPDATE … WHERE v = old, or INSERT … ON CONFLICT DO NOTHING from absent | SELECT |
//!
//! A value is the config content, the instance's metadata `v`, or the row's `v`.
//!
//! What an error means ([`classify`]) follows nacosd's error model (`src/error.rs`,
//! `src/consistency/write.rs`): a status *the server sent* with INVALID_ARGUMENT,
//! NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED or UNAVAILABLE
//! ("not proposed") means the write was not applied. A failure to connect at all means
//! the request never left. Everything else — UNKNOWN ("outcome unknown"),
//! DEADLINE_EXCEEDED, INTERNAL, and any transport failure after the request may have
//! left (a reset, a keepalive timeout, the client's own deadline) — is an unknown
//! outcome. A status the server sent is told apart from one tonic made up for a
//! transport failure by its type: tonic keeps the transport error as the status's
//! source, a status decoded from the server's trailers has none.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb;
use crate::pb::config_service_client::ConfigServiceClient;
use crate::pb::db_service_client::DbServiceClient;
use crate::pb::naming_service_client::NamingServiceClient;
use crate::peer::wire::never_sent;

/// The three Raft groups the workload drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Config,
    Naming,
    Db,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Config, Group::Naming, Group::Db];

    /// Prefix of this group's keys in the history.
    pub fn name(self) -> &'static str {
        match self {
            Group::Config => "config",
            Group::Naming => "naming",
            Group::Db => "db",
        }
    }

    /// The group's name in ClusterService/Status.
    pub fn raft_group(self) -> &'static str {
        match self {
            Group::Config => "config",
            Group::Naming => "naming_persistent",
            Group::Db => "embedded_db",
        }
    }

    pub fn of_key(key: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| {
            key.strip_prefix(g.name())
                .is_some_and(|r| r.starts_with('/'))
        })
    }

    pub fn supports_cas(self) -> bool {
        self != Group::Naming
    }
}

/// Instances per naming service: a read of the service reads this many registers.
pub const NAMING_SLOTS: u32 = 3;

/// One register: key `index` of `epoch` in `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub group: Group,
    pub epoch: u32,
    pub index: u32,
}

impl Key {
    /// The key's name in the history.
    pub fn name(&self) -> String {
        match self.group {
            Group::Naming => format!(
                "naming/e{}/s{}/p{}",
                self.epoch,
                self.service(),
                self.slot()
            ),
            g => format!("{}/e{}/k{}", g.name(), self.epoch, self.index),
        }
    }

    fn service(&self) -> u32 {
        self.index / NAMING_SLOTS
    }

    /// Port of the naming instance (1-based).
    fn slot(&self) -> u32 {
        self.index % NAMING_SLOTS + 1
    }

    /// The keys one read returns: the whole service for naming, else the key itself.
    pub fn read_set(&self) -> Vec<Key> {
        match self.group {
            Group::Naming => {
                let first = self.service() * NAMING_SLOTS;
                (first..first + NAMING_SLOTS)
                    .map(|index| Key { index, ..*self })
                    .collect()
            }
            _ => vec![*self],
        }
    }
}

/// A write to one register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String),
    Delete,
    Cas {
        expect: Option<String>,
        value: String,
    },
}

/// What a write that got an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// A compare-and-swap: whether it swapped.
    Swapped(bool),
}

/// What a failed call means for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Certainly not applied.
    NotApplied,
    /// May or may not have been applied.
    Unknown,
}

/// A failed call: what it means and the status code, for the tables.
#[derive(Debug, Clone)]
pub struct CallError {
    pub failure: Failure,
    /// The code, with `transport:` in front when tonic made it up.
    pub code: String,
    pub message: String,
}

/// See the module docs.
pub fn classify(status: &Status) -> Failure {
    if std::error::Error::source(status).is_some() {
        return if never_sent(status) {
            Failure::NotApplied
        } else {
            Failure::Unknown
        };
    }
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Unavailable => Failure::NotApplied,
        _ => Failure::Unknown,
    }
}

/// Whether the server itself answered with `code` (not a transport failure).
fn server_said(status: &Status, code: Code) -> bool {
    status.code() == code && std::error::Error::source(status).is_none()
}

fn call_error(status: &Status) -> CallError {
    let transport = std::error::Error::source(status).is_some();
    CallError {
        failure: classify(status),
        code: format!(
            "{}{:?}",
            if transport { "transport:" } else { "" },
            status.code()
        ),
        message: status.message().to_string(),
    }
}

/// Everything the operations need besides the key: the run's names and the call.
#[derive(Debug, Clone)]
pub struct Target {
    pub run_id: String,
    pub channel: Channel,
    pub timeout: Duration,
}

impl Target {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.timeout);
        req
    }

    fn namespace(&self) -> String {
        format!("chaos{}", self.run_id)
    }

    pub fn table(&self) -> String {
        format!("kv_{}", self.run_id)
    }

    pub(crate) fn config_key(&self, key: &Key) -> pb::ConfigKey {
        pb::ConfigKey {
            namespace: self.namespace(),
            group: format!("e{}", key.epoch),
            data_id: format!("k{}", key.index),
        }
    }

    pub(crate) fn service_key(&self, key: &Key) -> pb::ServiceKey {
        pb::ServiceKey {
            namespace: self.namespace(),
            group: format!("e{}", key.epoch),
            service_name: format!("s{}", key.service()),
        }
    }

    /// Creates the db group's table (idempotent).
    pub async fn create_table(&self) -> Result<(), CallError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            self.table()
        );
        self.execute(vec![statement(&sql, &[])]).await.map(|_| ())
    }

    /// Applies `write` to `key`.
    pub async fn write(&self, key: &Key, write: &Write) -> Result<Written, CallError> {
        match key.group {
            Group::Config => self.config_write(key, write).await,
            Group::Naming => self.naming_write(key, write).await,
            Group::Db => self.db_write(key, write).await,
        }
    }

    /// Reads `key.read_set()` at `level`: one value per key, `None` for absent.
    pub async fn read(
        &self,
        key: &Key,
        level: pb::Consistency,
    ) -> Result<Vec<(Key, Option<String>)>, CallError> {
        match key.group {
            Group::Config => self.config_read(key, level).await,
            Group::Naming => self.naming_read(key, level).await,
            Group::Db => self.db_read(key, level).await,
        }
    }

    async fn config_write(&self, key: &Key, write: &Write) -> Result<Written, CallError> {
        let mut client = ConfigServiceClient::new(self.channel.clone());
        let publish = |content: &str, cas_md5: Option<String>| pb::PublishConfigRequest {
            key: Some(self.config_key(key)),
            content: content.to_string(),
            cas_md5,
            ..Default::default()
        };
        match write {
            Write::Put(value) => client
                .publish_config(self.request(publish(value, None)))
                .await
                .map(|_| Written::Done)
                .map_err(|s| call_error(&s)),
            Write::Delete => client
                .remove_config(self.request(pb::RemoveConfigRequest {
                    key: Some(self.config_key(key)),
                    cas_md5: None,
                }))
                .await
                .map(|_| Written::Done)
                .map_err(|s| call_error(&s)),
            Write::Cas { expect, value } => {
                let md5 = expect
                    .as_deref()
                    .map(|e| crate::groups::config::md5_hex(e.as_bytes()))
                    .unwrap_or_default();
                match client
                    .publish_config(self.request(publish(value, Some(md5))))
                    .await
                {
                    Ok(_) => Ok(Written::Swapped(true)),
                    Err(s) if server_said(&s, Code::FailedPrecondition) => {
                        Ok(Written::Swapped(false))
                    }
                    Err(s) => Err(call_error(&s)),
                }
            }
        }
    }

    async fn config_read(
        &self,
        key: &Key,
        level: pb::Consistency,
    ) -> Result<Vec<(Key, Option<String>)>, CallError> {
        let mut client = ConfigServiceClient::new(self.channel.clone());
        let req = self.request(pb::GetConfigRequest {
            key: Some(self.config_key(key)),
            consistency: level as i32,
        });
        match client.get_config(req).await {
            Ok(item) => Ok(vec![(*key, Some(item.into_inner().content))]),
            Err(s) if server_said(&s, Code::NotFound) => Ok(vec![(*key, None)]),
            Err(s) => Err(call_error(&s)),
        }
    }

    async fn naming_write(&self, key: &Key, write: &Write) -> Result<Written, CallError> {
        let mut client = NamingServiceClient::new(self.channel.clone());
        let result = match write {
            Write::Put(value) => client
                .register_instance(self.request(pb::RegisterInstanceRequest {
                    service: Some(self.service_key(key)),
                    instance: Some(pb::Instance {
                        ip: INSTANCE_IP.to_string(),
                        port: key.slot(),
                        metadata: HashMap::from([("v".to_string(), value.clone())]),
                        ..Default::default()
                    }),
                }))
                .await
                .map(|_| ()),
            Write::Delete => client
                .deregister_instance(self.request(pb::DeregisterInstanceRequest {
                    service: Some(self.service_key(key)),
                    ip: INSTANCE_IP.to_string(),
                    port: key.slot(),
                    cluster_name: String::new(),
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
            Write::Cas { .. } => {
                return Err(CallError {
                    failure: Failure::NotApplied,
                    code: "harness".to_string(),
                    message: "the naming group has no compare-and-swap".to_string(),
                })
            }
        };
        result.map(|()| Written::Done).map_err(|s| call_error(&s))
    }

    async fn naming_read(
        &self,
        key: &Key,
        level: pb::Consistency,
    ) -> Result<Vec<(Key, Option<String>)>, CallError> {
        let mut client = NamingServiceClient::new(self.channel.clone());
        let req = self.request(pb::GetServiceRequest {
            key: Some(self.service_key(key)),
            consistency: level as i32,
            ..Default::default()
        });
        let instances = match client.get_service(req).await {
            Ok(detail) => detail.into_inner().instances,
            Err(s) if server_said(&s, Code::NotFound) => Vec::new(),
            Err(s) => return Err(call_error(&s)),
        };
        Ok(key
            .read_set()
            .into_iter()
            .map(|k| {
                let value = instances
                    .iter()
                    .find(|i| i.port == k.slot() && i.ip == INSTANCE_IP)
                    .map(|i| i.metadata.get("v").cloned().unwrap_or_default());
                (k, value)
            })
            .collect())
    }

    async fn execute(&self, statements: Vec<pb::Statement>) -> Result<Vec<u64>, CallError> {
        let mut client = DbServiceClient::new(self.channel.clone());
        client
            .execute(self.request(pb::ExecuteRequest { statements }))
            .await
            .map(|r| {
                r.into_inner()
                    .results
                    .iter()
                    .map(|r| r.rows_affected)
                    .collect()
            })
            .map_err(|s| call_error(&s))
    }

    async fn db_write(&self, key: &Key, write: &Write) -> Result<Written, CallError> {
        let t = self.table();
        let k = db_key(key);
        let (sql, params): (String, Vec<&str>) = match write {
            Write::Put(v) => (
                format!("INSERT OR REPLACE INTO {t} (k, v) VALUES (?1, ?2)"),
                vec![&k, v],
            ),
            Write::Delete => (format!("DELETE FROM {t} WHERE k = ?1"), vec![&k]),
            Write::Cas {
                expect: Some(old),
                value,
            } => (
                format!("UPDATE {t} SET v = ?3 WHERE k = ?1 AND v = ?2"),
                vec![&k, old, value],
            ),
            Write::Cas {
                expect: None,
                value,
            } => (
                format!("INSERT INTO {t} (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO NOTHING"),
                vec![&k, value],
            ),
        };
        let rows = self.execute(vec![statement(&sql, &params)]).await?;
        Ok(match write {
            Write::Cas { .. } => Written::Swapped(rows.first() == Some(&1)),
            _ => Written::Done,
        })
    }

    async fn db_read(
        &self,
        key: &Key,
        level: pb::Consistency,
    ) -> Result<Vec<(Key, Option<String>)>, CallError> {
        let mut client = DbServiceClient::new(self.channel.clone());
        let sql = format!("SELECT v FROM {} WHERE k = ?1", self.table());
        let k = db_key(key);
        let req = self.request(pb::QueryRequest {
            statements: vec![statement(&sql, &[&k])],
            consistency: level as i32,
        });
        let resp = client
            .query(req)
            .await
            .map_err(|s| call_error(&s))?
            .into_inner();
        let row = resp
            .results
            .first()
            .and_then(|r| r.rows.first())
            .and_then(|row| row.values.first());
        let value = match row.and_then(|v| v.value.as_ref()) {
            None => None,
            Some(pb::value::Value::Text(t)) => Some(t.clone()),
            Some(other) => Some(format!("{other:?}")),
        };
        Ok(vec![(*key, value)])
    }
}

/// The address of every naming instance; instances differ by port.
pub(crate) const INSTANCE_IP: &str = "192.0.2.1";

fn db_key(key: &Key) -> String {
    format!("e{}/k{}", key.epoch, key.index)
}

fn statement(sql: &str, params: &[&str]) -> pb::Statement {
    pb::Statement {
        sql: sql.to_string(),
        params: params
            .iter()
            .map(|p| pb::Value {
                value: Some(pb::value::Value::Text(p.to_string())),
            })
            .collect(),
        named_params: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_the_server_sent_mean_not_applied() {
        assert_eq!(
            classify(&Status::unavailable("no leader")),
            Failure::NotApplied
        );
        assert_eq!(
            classify(&Status::failed_precondition("md5")),
            Failure::NotApplied
        );
        assert_eq!(classify(&Status::unknown("outcome")), Failure::Unknown);
        assert_eq!(
            classify(&Status::deadline_exceeded("late")),
            Failure::Unknown
        );
        assert_eq!(classify(&Status::internal("bug")), Failure::Unknown);
        // The same code made up by tonic for a broken connection proves nothing.
        let mut reset = Status::unavailable("connection reset");
        reset.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&reset), Failure::Unknown);
        let mut refused = Status::unavailable("connect");
        refused.set_source(std::sync::Arc::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert_eq!(classify(&refused), Failure::NotApplied);
    }

    #[test]
    fn key_names_and_read_sets() {
        let k = Key {
            group: Group::Naming,
            epoch: 2,
            index: 4,
        };
        assert_eq!(k.name(), "naming/e2/s1/p2");
        let names: Vec<String> = k.read_set().iter().map(Key::name).collect();
        assert_eq!(
            names,
            ["naming/e2/s1/p1", "naming/e2/s1/p2", "naming/e2/s1/p3"]
        );
        let c = Key {
            group: Group::Db,
            epoch: 0,
            index: 5,
        };
        assert_eq!(c.name(), "db/e0/k5");
        assert_eq!(c.read_set(), vec![c]);
        assert_eq!(Group::of_key("naming/e2/s1/p2"), Some(Group::Naming));
        assert_eq!(Group::of_key("dbx/e1"), None);
    }
}
