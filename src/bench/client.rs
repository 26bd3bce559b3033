//! One benchmark operation against nacosd's client API or etcd's KV API.

use tonic::transport::Channel;
use tonic::Code;

use crate::bench::{Level, Options, Target, Workload};
use crate::nacos::wire::client::{open_bi_stream, RequestClient};
use crate::nacos::wire::{parse_reply, request_payload};
use crate::pb;
use crate::pb::config_service_client::ConfigServiceClient;
use crate::pb::db_service_client::DbServiceClient;
use crate::pb::etcd::kv_client::KvClient;
use crate::pb::naming_service_client::NamingServiceClient;
use crate::pb::session_service_client::SessionServiceClient;

/// Group of the benchmark's configuration items.
pub const CONFIG_GROUP: &str = "BENCH";
/// Table of the `db-insert` workload.
pub const DB_TABLE: &str = "nacosd_bench";

/// splitmix64: a small, fast generator; quality is ample for picking keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub fn key_name(k: u64) -> String {
    format!("bench-{k:08}")
}

/// What one operation does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Put(u64),
    Get(u64),
    Register(u64),
    RegisterEphemeral(u64),
    Insert(u64),
}

impl Op {
    /// The next operation of a workload.
    pub fn next(workload: Workload, opts: &Options, rng: &mut Rng) -> Op {
        let k = rng.below(opts.keys);
        match workload {
            Workload::ConfigPublish => Op::Put(k),
            Workload::ConfigGet => Op::Get(k),
            Workload::NamingRegister => Op::Register(k),
            Workload::NamingRegisterEphemeral => Op::RegisterEphemeral(k),
            Workload::DbInsert => Op::Insert(k),
            Workload::Mixed => {
                if (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= opts.read_ratio {
                    Op::Get(k)
                } else {
                    Op::Put(k)
                }
            }
        }
    }
}

/// nacosd's services over one connection.
#[derive(Clone)]
pub struct NacosdClients {
    config: ConfigServiceClient<Channel>,
    naming: NamingServiceClient<Channel>,
    db: DbServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    /// The session of this connection (ephemeral workload).
    session_id: String,
}

/// The Nacos front end over one connection: the unary client, and the bi-stream that
/// registers the connection (set up once, shared by the clones).
#[derive(Clone)]
pub struct NacosClients {
    channel: Channel,
    request: RequestClient<Channel>,
    stream: std::sync::Arc<
        tokio::sync::OnceCell<tokio::sync::mpsc::Sender<crate::nacos::wire::Payload>>,
    >,
}

/// A client over one connection, for one target.
#[derive(Clone)]
pub enum Client {
    Nacosd(Box<NacosdClients>),
    Etcd(KvClient<Channel>),
    Nacos(Box<NacosClients>),
}

impl Client {
    pub fn new(target: Target, channel: Channel) -> Client {
        match target {
            Target::Nacosd => Client::Nacosd(Box::new(NacosdClients {
                config: ConfigServiceClient::new(channel.clone()),
                naming: NamingServiceClient::new(channel.clone()),
                db: DbServiceClient::new(channel.clone()),
                sessions: SessionServiceClient::new(channel),
                session_id: String::new(),
            })),
            Target::Etcd => Client::Etcd(KvClient::new(channel)),
            Target::Nacos => Client::Nacos(Box::new(NacosClients {
                request: RequestClient::new(channel.clone()),
                channel,
                stream: Default::default(),
            })),
        }
    }

    /// Run one operation; `value` is the content written by puts and inserts.
    pub async fn run(&mut self, op: Op, opts: &Options, value: &str) -> Result<(), Code> {
        let level = opts.level;
        let result = match self {
            Client::Nacosd(c) => match op {
                Op::Put(k) => c
                    .config
                    .publish_config(pb::PublishConfigRequest {
                        key: Some(config_key(k)),
                        content: value.to_string(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Op::Get(k) => c
                    .config
                    .get_config(pb::GetConfigRequest {
                        key: Some(config_key(k)),
                        consistency: level.pb() as i32,
                    })
                    .await
                    .map(drop),
                Op::Register(k) => c
                    .naming
                    .register_instance(register_request(k, opts, None))
                    .await
                    .map(drop),
                Op::RegisterEphemeral(k) => c
                    .naming
                    .register_instance(register_request(k, opts, Some(&c.session_id)))
                    .await
                    .map(drop),
                Op::Insert(k) => {
                    c.db.execute(pb::ExecuteRequest {
                        statements: vec![pb::Statement {
                            sql: format!("INSERT INTO {DB_TABLE} (k, v) VALUES (?1, ?2)"),
                            params: vec![
                                pb::Value {
                                    value: Some(pb::value::Value::Integer(k as i64)),
                                },
                                pb::Value {
                                    value: Some(pb::value::Value::Text(value.to_string())),
                                },
                            ],
                            ..Default::default()
                        }],
                    })
                    .await
                    .map(drop)
                }
            },
            Client::Etcd(kv) => match op {
                Op::Put(k) => kv
                    .put(pb::etcd::PutRequest {
                        key: key_name(k).into_bytes(),
                        value: value.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Op::Get(k) => kv
                    .range(pb::etcd::RangeRequest {
                        key: key_name(k).into_bytes(),
                        serializable: level == Level::Stale,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                Op::Register(_) | Op::RegisterEphemeral(_) | Op::Insert(_) => Err(
                    tonic::Status::unimplemented("etcd runs only the config workloads"),
                ),
            },
            Client::Nacos(c) => {
                let (kind, body) = match op {
                    Op::RegisterEphemeral(k) => {
                        let r = register_request(k, opts, None);
                        let (svc, i) = (
                            r.service.unwrap_or_default(),
                            r.instance.unwrap_or_default(),
                        );
                        let instance =
                            serde_json::json!({"ip": i.ip, "port": i.port, "ephemeral": true});
                        let body = serde_json::json!({"serviceName": svc.service_name, "groupName": "DEFAULT_GROUP",
                            "namespace": "public", "type": "registerInstance", "instance": instance});
                        ("InstanceRequest", body)
                    }
                    Op::Put(k) => (
                        "ConfigPublishRequest",
                        serde_json::json!({"dataId": key_name(k),
                        "group": CONFIG_GROUP, "tenant": "", "content": value, "casMd5": "", "additionMap": {}}),
                    ),
                    Op::Get(k) => (
                        "ConfigQueryRequest",
                        serde_json::json!({"dataId": key_name(k),
                        "group": CONFIG_GROUP, "tenant": "", "tag": ""}),
                    ),
                    Op::Register(_) | Op::Insert(_) => {
                        return Err(Code::Unimplemented);
                    }
                };
                match c.request.request(request_payload(kind, body)).await {
                    Ok(r) => {
                        let (_, body) = parse_reply(r.into_inner());
                        let code = body["errorCode"].as_i64();
                        // A missing config is an answer, not a failure.
                        if code == Some(0) || (kind == "ConfigQueryRequest" && code == Some(300)) {
                            Ok(())
                        } else {
                            Err(tonic::Status::internal(body["message"].to_string()))
                        }
                    }
                    Err(s) => Err(s),
                }
            }
        };
        result.map_err(|s| s.code())
    }

    /// Open this connection's session on the node it reaches, with the longest TTL the
    /// node allows.
    pub async fn open_session(&mut self) -> Result<(), tonic::Status> {
        if let Client::Nacos(c) = self {
            return c.connect().await;
        }
        if let Client::Nacosd(c) = self {
            let mut ttl_ms = 300_000;
            let opened = loop {
                match c
                    .sessions
                    .open_session(pb::OpenSessionRequest {
                        ttl_ms,
                        id: String::new(),
                    })
                    .await
                {
                    // A node with a shorter maximum: ask for its default instead.
                    Err(s) if s.code() == tonic::Code::InvalidArgument && ttl_ms != 0 => ttl_ms = 0,
                    other => break other?,
                }
            };
            c.session_id = opened.into_inner().id;
        }
        Ok(())
    }

    /// Prepare the target for a workload: the table of `db-insert`.
    pub async fn prepare(&mut self, workload: Workload) -> Result<(), tonic::Status> {
        if let (Client::Nacosd(c), Workload::DbInsert) = (self, workload) {
            c.db.execute(pb::ExecuteRequest {
                statements: vec![pb::Statement {
                    sql: format!(
                        "CREATE TABLE IF NOT EXISTS {DB_TABLE} \
                         (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)"
                    ),
                    ..Default::default()
                }],
            })
            .await?;
        }
        Ok(())
    }
}

impl NacosClients {
    /// Register this connection with the Nacos front end (once for all clones): open the
    /// bi-stream, send the setup, and wait until a health check is answered.
    async fn connect(&self) -> Result<(), tonic::Status> {
        self.stream
            .get_or_try_init(|| async {
                let setup = serde_json::json!({"clientVersion": "nacosctl-bench", "tenant": "",
                    "labels": {"source": "sdk", "module": "naming"}});
                let (tx, mut inbound) = open_bi_stream(self.channel.clone(), setup).await?;
                // Nothing is subscribed, so no push needs an answer: drain the stream.
                tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
                let mut request = self.request.clone();
                for _ in 0..50 {
                    let r = request
                        .request(request_payload("HealthCheckRequest", serde_json::json!({})))
                        .await?;
                    if parse_reply(r.into_inner()).0 == "HealthCheckResponse" {
                        return Ok(tx);
                    }
                }
                Err(tonic::Status::unavailable(
                    "the Nacos connection was never registered",
                ))
            })
            .await
            .map(drop)
    }
}

fn config_key(k: u64) -> pb::ConfigKey {
    pb::ConfigKey {
        namespace: String::new(),
        group: CONFIG_GROUP.into(),
        data_id: key_name(k),
    }
}

/// Registration of instance `k` of the naming workloads: persistent, or ephemeral in
/// `session`.
fn register_request(k: u64, opts: &Options, session: Option<&str>) -> pb::RegisterInstanceRequest {
    pb::RegisterInstanceRequest {
        service: Some(pb::ServiceKey {
            service_name: format!("bench-svc-{}", k % opts.services.max(1)),
            ..Default::default()
        }),
        instance: Some(pb::Instance {
            ip: format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255),
            port: 8080,
            ephemeral: session.is_some(),
            session_id: session.unwrap_or_default().to_string(),
            ..Default::default()
        }),
    }
}
