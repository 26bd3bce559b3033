//! The Nacos envelope: a `Payload` whose `metadata.type` names the Java class of a
//! JSON body carried in `Any.value`; the JSON models of the requests served and of the
//! answers; the response envelope and its codes.
//!
//! Parsing is lenient like Jackson with `FAIL_ON_UNKNOWN_PROPERTIES` off: unknown
//! fields are ignored, missing ones take their defaults, and a JSON `null` anywhere in
//! an object counts as missing (nacos-sdk-python 2.0.x sends `"udpPort": null`).
//! Writing is strict the other way: never a `null` (pydantic rejects it for `str`
//! fields), every response carries `resultCode`, `errorCode`, `message`, `requestId`
//! and `success`.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// Generated from `proto/nacos/nacos_grpc_service.proto` (no package: module `_`).
#[allow(clippy::all, missing_docs, non_camel_case_types)]
mod pb {
    tonic::include_proto!("_");
}

pub use pb::bi_request_stream_server::{BiRequestStream, BiRequestStreamServer};
pub use pb::request_server::{Request as RequestService, RequestServer};
pub use pb::{Metadata, Payload};

/// Clients for the tests (nacosd itself never calls a Nacos server).
pub mod client {
    pub use super::pb::bi_request_stream_client::BiRequestStreamClient;
    pub use super::pb::request_client::RequestClient;

    use super::{request_payload, Payload};
    use tonic::transport::Channel;

    /// Open the bi-stream of the connection `channel` is, with `setup` as its
    /// `ConnectionSetupRequest`. Returns the sender of what the client writes on the
    /// stream (dropping it ends the stream) and the server's pushes.
    pub async fn open_bi_stream(
        channel: Channel,
        setup: serde_json::Value,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<Payload>,
            tonic::Streaming<Payload>,
        ),
        tonic::Status,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The channel is new and has room: the setup goes first, whatever follows.
        let _ = tx.try_send(request_payload("ConnectionSetupRequest", setup));
        let pushes = BiRequestStreamClient::new(channel)
            .request_bi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, pushes))
    }
}

/// Nacos error codes (`NacosException`, `ResponseCode`) the SDKs act on.
pub mod code {
    pub const SUCCESS: i32 = 200;
    pub const FAIL: i32 = 500;
    /// Also ConfigQueryResponse's "config data not exist".
    pub const INVALID_SERVER_STATUS: i32 = 300;
    pub const CONFIG_NOT_FOUND: i32 = 300;
    /// The connection is not (or no longer) registered: the client reconnects.
    pub const UN_REGISTER: i32 = 301;
    pub const NO_HANDLER: i32 = 302;
    pub const INVALID_PARAM: i32 = 400;
    pub const NO_RIGHT: i32 = 403;
    pub const SERVER_ERROR: i32 = 500;
    /// The request body could not be parsed.
    pub const BAD_GATEWAY: i32 = 502;
    pub const OVER_THRESHOLD: i32 = 503;
}

/// A request as received: its type, its headers (metadata and body merged, names
/// lower-cased: Nacos compares them without case), its body.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub kind: String,
    pub client_ip: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Incoming {
    pub fn from_payload(p: Payload) -> Result<Incoming, Reply> {
        let meta = p.metadata.unwrap_or_default();
        let raw = p.body.map(|b| b.value).unwrap_or_default();
        let body: Value = if raw.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(&raw).map_err(|e| {
                Reply::error(code::BAD_GATEWAY, format!("request body is not JSON: {e}"))
            })?
        };
        let body = without_nulls(body);
        let mut headers = HashMap::new();
        if let Some(Value::Object(h)) = body.get("headers") {
            for (k, v) in h {
                if let Value::String(v) = v {
                    headers.insert(k.to_ascii_lowercase(), v.clone());
                }
            }
        }
        for (k, v) in meta.headers {
            headers.insert(k.to_ascii_lowercase(), v);
        }
        Ok(Incoming {
            kind: meta.r#type,
            client_ip: meta.client_ip,
            headers,
            body,
        })
    }

    /// The body as `T`; a body that does not fit is an invalid argument.
    pub fn parse<T: DeserializeOwned>(&self) -> crate::error::Result<T> {
        T::deserialize(&self.body)
            .map_err(|e| Error::invalid(format!("{} does not parse: {e}", self.kind)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The bi-stream `requestId` a response carries (acks of server pushes).
    pub fn request_id(&self) -> &str {
        self.body
            .get("requestId")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// An ack counts as a success when `resultCode` is 200 (Nacos's
    /// `RpcAckCallbackSynchronizer`); any response type is accepted as the ack.
    pub fn ack_ok(&self) -> bool {
        self.body.get("resultCode").and_then(Value::as_i64) == Some(code::SUCCESS as i64)
    }
}

/// `v` with every `null` object member removed, recursively.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// A request as a client sends it (the benchmark's and the tests' side of the protocol).
pub fn request_payload(kind: &str, body: impl Serialize) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: serde_json::to_vec(&body).unwrap_or_default(),
        }),
    }
}

/// The type and JSON body of a payload a server wrote (`{}` for an empty body).
pub fn parse_reply(p: Payload) -> (String, Value) {
    let kind = p.metadata.map(|m| m.r#type).unwrap_or_default();
    let body = p
        .body
        .and_then(|b| serde_json::from_slice(&b.value).ok())
        .unwrap_or(Value::Object(Map::new()));
    (kind, body)
}

/// A message the server writes: a response (unary, or an ack the server never sends)
/// or a server request pushed on the bi-stream. `kind` is its Java class name.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub kind: &'static str,
    pub body: Map<String, Value>,
}

impl Reply {
    /// A successful response of type `kind` with the fields of `body` (an object).
    pub fn ok(kind: &'static str, body: impl Serialize) -> Reply {
        let mut r = Reply {
            kind,
            body: object(body),
        };
        r.set_status(code::SUCCESS, 0, "");
        r
    }

    /// A failed response of type `kind` (`resultCode` 500, `errorCode` = `code`), the
    /// form typed failures take (ConfigQueryResponse's not-found, for example).
    pub fn fail(kind: &'static str, code: i32, message: impl Into<String>) -> Reply {
        let mut r = Reply {
            kind,
            body: Map::new(),
        };
        r.set_status(code::FAIL, code, &message.into());
        r
    }

    /// Nacos's generic `ErrorResponse`: `resultCode` = `errorCode` = `code`.
    pub fn error(code: i32, message: impl Into<String>) -> Reply {
        let mut r = Reply {
            kind: "ErrorResponse",
            body: Map::new(),
        };
        r.set_status(code, code, &message.into());
        r
    }

    /// A server request pushed on the bi-stream (no status fields).
    pub fn push(kind: &'static str, body: impl Serialize) -> Reply {
        Reply {
            kind,
            body: object(body),
        }
    }

    fn set_status(&mut self, result: i32, error: i32, message: &str) {
        self.body.insert("resultCode".into(), result.into());
        self.body.insert("errorCode".into(), error.into());
        self.body.insert("message".into(), message.into());
        self.body.insert("requestId".into(), "".into());
        self.body
            .insert("success".into(), (result == code::SUCCESS).into());
    }

    pub fn is_success(&self) -> bool {
        self.body.get("resultCode").and_then(Value::as_i64) == Some(code::SUCCESS as i64)
    }

    pub fn with_request_id(mut self, id: &str) -> Reply {
        self.body.insert("requestId".into(), id.into());
        self
    }

    pub fn to_payload(&self) -> Payload {
        let value = serde_json::to_vec(&self.body).unwrap_or_default();
        Payload {
            metadata: Some(Metadata {
                r#type: self.kind.to_string(),
                client_ip: String::new(),
                headers: HashMap::new(),
            }),
            body: Some(prost_types::Any {
                type_url: String::new(),
                value,
            }),
        }
    }

    /// The failed response for `err` in the answer to a `kind` request.
    pub fn from_error(kind: &'static str, err: &Error) -> Reply {
        let code = match err {
            Error::InvalidArgument(_) | Error::AlreadyExists(_) => code::INVALID_PARAM,
            Error::NotFound(_) => code::INVALID_PARAM,
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => code::NO_RIGHT,
            Error::ResourceExhausted(_) => code::OVER_THRESHOLD,
            _ => code::SERVER_ERROR,
        };
        Reply::fail(kind, code, err.to_string())
    }
}

fn object(body: impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

// ----- connection -----

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionSetupRequest {
    pub client_version: String,
    pub tenant: String,
    pub labels: HashMap<String, String>,
    /// Present (even empty) from SDKs that negotiate abilities and wait for
    /// `SetupAckRequest`.
    pub ability_table: Option<HashMap<String, bool>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCheckResponse {
    pub connection_id: String,
    pub support_ability_negotiation: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupAckRequest {
    pub ability_table: BTreeMap<String, bool>,
}

// ----- naming -----

/// An instance as the SDKs send it and as pushes and queries return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Instance {
    pub instance_id: String,
    pub ip: String,
    pub port: i64,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub ephemeral: bool,
    pub cluster_name: String,
    /// The grouped name `group@@name` in what the server writes.
    pub service_name: String,
    pub metadata: BTreeMap<String, String>,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            instance_id: String::new(),
            ip: String::new(),
            port: 0,
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster_name: String::new(),
            service_name: String::new(),
            metadata: BTreeMap::new(),
        }
    }
}

/// The fields every naming request has (`AbstractNamingRequest`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NamingTarget {
    pub namespace: String,
    pub service_name: String,
    pub group_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstanceRequest {
    #[serde(flatten)]
    pub target: NamingTarget,
    pub r#type: String,
    pub instance: Instance,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BatchInstanceRequest {
    #[serde(flatten)]
    pub target: NamingTarget,
    pub r#type: String,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SubscribeServiceRequest {
    #[serde(flatten)]
    pub target: NamingTarget,
    pub subscribe: bool,
    pub clusters: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceQueryRequest {
    #[serde(flatten)]
    pub target: NamingTarget,
    pub cluster: String,
    pub healthy_only: bool,
    /// nacos-sdk-python's spelling of `healthyOnly`.
    pub health_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceListRequest {
    #[serde(flatten)]
    pub target: NamingTarget,
    pub page_no: u32,
    pub page_size: u32,
}

/// A service with its instances, as Nacos's `ServiceInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// The plain name, never `group@@name`: the SDKs key their caches on it.
    pub name: String,
    pub group_name: String,
    /// The subscriber's `clusters` string, echoed.
    pub clusters: String,
    pub cache_millis: u64,
    pub hosts: Vec<Instance>,
    /// Must grow: nacos-sdk-python drops data whose `lastRefTime` is not newer.
    pub last_ref_time: u64,
    pub checksum: String,
    #[serde(rename = "allIPs")]
    pub all_ips: bool,
    pub reach_protection_threshold: bool,
    pub valid: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifySubscriberRequest {
    pub service_info: ServiceInfo,
}

// ----- config -----

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigTarget {
    pub data_id: String,
    pub group: String,
    pub tenant: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigPublishRequest {
    #[serde(flatten)]
    pub target: ConfigTarget,
    pub content: String,
    pub cas_md5: String,
    pub addition_map: HashMap<String, Value>,
}

impl ConfigPublishRequest {
    /// An `additionMap` entry as a string (`""` when absent, null or not a string).
    pub fn addition(&self, key: &str) -> &str {
        self.addition_map
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigListenContext {
    pub data_id: String,
    pub group: String,
    pub tenant: String,
    pub md5: String,
}

#[derive(Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigBatchListenRequest {
    pub listen: bool,
    pub config_listen_contexts: Vec<ConfigListenContext>,
}

impl Default for ConfigBatchListenRequest {
    fn default() -> Self {
        ConfigBatchListenRequest {
            listen: true,
            config_listen_contexts: Vec::new(),
        }
    }
}

/// A config named as the client named it (tenant echoed as sent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigContext {
    pub group: String,
    pub data_id: String,
    pub tenant: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigQueryResponse {
    pub content: String,
    pub encrypted_data_key: String,
    pub content_type: String,
    pub md5: String,
    pub last_modified: u64,
    pub beta: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(kind: &str, body: Value, headers: &[(&str, &str)]) -> Payload {
        Payload {
            metadata: Some(Metadata {
                r#type: kind.into(),
                client_ip: "10.0.0.9".into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            body: Some(prost_types::Any {
                // The Rust SDK sets the type name here; it must not matter.
                type_url: kind.into(),
                value: serde_json::to_vec(&body).unwrap(),
            }),
        }
    }

    fn reply_json(r: &Reply) -> Value {
        let p = r.to_payload();
        assert_eq!(p.metadata.as_ref().unwrap().r#type, r.kind);
        assert_eq!(p.body.as_ref().unwrap().type_url, "");
        serde_json::from_slice(&p.body.unwrap().value).unwrap()
    }

    #[test]
    fn a_python_2_register_with_nulls_parses_with_defaults() {
        let body = json!({
            "headers": {"accessToken": "body-token", "app": "demo"},
            "requestId": "", "module": "",
            "namespace": "public", "serviceName": "svc", "groupName": "DEFAULT_GROUP",
            "type": "registerInstance",
            "instance": {"instanceId": null, "ip": "10.0.0.1", "port": 8080, "weight": 1.0,
                         "healthy": true, "enabled": true, "ephemeral": true,
                         "clusterName": "DEFAULT", "serviceName": null, "metadata": {"k": "v"},
                         "unknownField": 1}
        });
        let inc = Incoming::from_payload(payload(
            "InstanceRequest",
            body,
            &[("AccessToken", "meta-token")],
        ))
        .unwrap();
        assert_eq!(inc.kind, "InstanceRequest");
        assert_eq!(
            inc.header("accesstoken"),
            Some("meta-token"),
            "metadata headers win, names without case"
        );
        assert_eq!(inc.header("app"), Some("demo"));
        let r: InstanceRequest = inc.parse().unwrap();
        assert_eq!(r.target.service_name, "svc");
        assert_eq!(r.r#type, "registerInstance");
        assert_eq!(r.instance.ip, "10.0.0.1");
        assert_eq!(r.instance.port, 8080);
        assert_eq!(r.instance.instance_id, "");
        assert_eq!(r.instance.metadata.get("k").unwrap(), "v");
    }

    #[test]
    fn missing_fields_take_the_java_defaults() {
        let inc = Incoming::from_payload(payload(
            "InstanceRequest",
            json!({"instance": {"ip": "1.2.3.4", "port": 1}}),
            &[],
        ))
        .unwrap();
        let r: InstanceRequest = inc.parse().unwrap();
        assert_eq!(r.instance.weight, 1.0);
        assert!(r.instance.healthy && r.instance.enabled && r.instance.ephemeral);
        let l: ConfigBatchListenRequest = Incoming::from_payload(payload(
            "ConfigBatchListenRequest",
            json!({"configListenContexts": [{"dataId": "d", "group": "g", "md5": ""}]}),
            &[],
        ))
        .unwrap()
        .parse()
        .unwrap();
        assert!(l.listen, "listen defaults to true");
        assert_eq!(l.config_listen_contexts[0].tenant, "");
        let q: ServiceQueryRequest = Incoming::from_payload(payload(
            "ServiceQueryRequest",
            json!({"healthOnly": true}),
            &[],
        ))
        .unwrap()
        .parse()
        .unwrap();
        assert!(q.health_only && !q.healthy_only);
    }

    #[test]
    fn an_empty_body_is_an_empty_object_and_garbage_is_bad_gateway() {
        let p = Payload {
            metadata: Some(Metadata {
                r#type: "HealthCheckRequest".into(),
                ..Default::default()
            }),
            body: None,
        };
        let inc = Incoming::from_payload(p).unwrap();
        assert_eq!(inc.body, json!({}));
        let mut bad = payload("InstanceRequest", json!({}), &[]);
        bad.body.as_mut().unwrap().value = b"{not json".to_vec();
        let err = Incoming::from_payload(bad).unwrap_err();
        let j = reply_json(&err);
        assert_eq!(j["errorCode"], 502);
        assert_eq!(j["resultCode"], 502);
        assert_eq!(j["success"], false);
    }

    #[test]
    fn responses_carry_every_envelope_field_and_no_null() {
        let ok = reply_json(&Reply::ok(
            "InstanceResponse",
            json!({"type": "registerInstance"}),
        ));
        assert_eq!(
            ok,
            json!({"type": "registerInstance", "resultCode": 200, "errorCode": 0,
                   "message": "", "requestId": "", "success": true})
        );
        let err = reply_json(&Reply::error(code::NO_HANDLER, "RequestHandler Not Found"));
        assert_eq!(err["resultCode"], 302);
        assert_eq!(err["errorCode"], 302);
        assert_eq!(err["success"], false);
        let nf = reply_json(&Reply::fail(
            "ConfigQueryResponse",
            code::CONFIG_NOT_FOUND,
            "config data not exist",
        ));
        assert_eq!(nf["resultCode"], 500);
        assert_eq!(nf["errorCode"], 300);
        let ack = reply_json(&Reply::ok("X", json!({})).with_request_id("7"));
        assert_eq!(ack["requestId"], "7");
        let info = ServiceInfo {
            name: "svc".into(),
            group_name: "DEFAULT_GROUP".into(),
            clusters: "".into(),
            cache_millis: 10_000,
            hosts: vec![Instance {
                ip: "1.1.1.1".into(),
                port: 80,
                ..Default::default()
            }],
            last_ref_time: 1,
            checksum: "".into(),
            all_ips: false,
            reach_protection_threshold: false,
            valid: true,
        };
        let push = reply_json(&Reply::push(
            "NotifySubscriberRequest",
            NotifySubscriberRequest { service_info: info },
        ));
        fn no_nulls(v: &Value) -> bool {
            match v {
                Value::Null => false,
                Value::Object(m) => m.values().all(no_nulls),
                Value::Array(a) => a.iter().all(no_nulls),
                _ => true,
            }
        }
        assert!(no_nulls(&push));
        assert_eq!(push["serviceInfo"]["name"], "svc");
        assert_eq!(push["serviceInfo"]["allIPs"], false);
        assert_eq!(push["serviceInfo"]["hosts"][0]["clusterName"], "");
        assert!(push.get("resultCode").is_none(), "a push is a request");
    }

    #[test]
    fn errors_map_to_the_codes_the_sdks_check() {
        let j = |e: Error| reply_json(&Reply::from_error("InstanceResponse", &e));
        assert_eq!(j(Error::invalid("x"))["errorCode"], 400);
        assert_eq!(j(Error::PermissionDenied("x".into()))["errorCode"], 403);
        assert_eq!(j(Error::Unauthenticated("x".into()))["errorCode"], 403);
        assert_eq!(j(Error::internal("x"))["errorCode"], 500);
        assert_eq!(j(Error::internal("x"))["resultCode"], 500);
    }
}
