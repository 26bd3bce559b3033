//! Config requests, and the change pushes to listeners.
//!
//! - Namespaces: Nacos's default tenant is `""`; `""`, `"public"` and `"null"` all
//!   name nacosd's default namespace `public`, for listens too. Pushes and change lists
//!   echo the tenant as the client sent it.
//! - md5: lowercase hex MD5 of the UTF-8 content, and `""` for a config that does not
//!   exist (Nacos's `Constants.NULL`); "up to date" is string equality.
//! - `ConfigQueryRequest` reads locally (`STALE`, as Nacos serves its local cache); a
//!   missing config is a `ConfigQueryResponse` with errorCode 300, which the SDKs read
//!   as "not found".
//! - `ConfigPublishRequest` and `ConfigRemoveRequest` are the `config` group's publish
//!   (with `casMd5` as its compare-and-swap) and remove. Gray publishes (`betaIps`,
//!   `tag`) are refused.
//! - `ConfigBatchListenRequest`: each connection has one Watch engine
//!   (`groups::config::watch`). The answer lists the listened configs whose md5
//!   differs from the client's; later changes are pushed as `ConfigChangeNotifyRequest`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::auth::{Access, Principal, Resource};
use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::groups::config::watch::{self, WatchEvent, WatchInput, WatchRequest};
use crate::groups::config::{md5_hex, validate, ConfigKey, Get, Publish, Remove, States};
use crate::lock;
use crate::nacos::connection::{ConfigListen, Connection};
use crate::nacos::service::Front;
use crate::nacos::wire::{
    code, ConfigBatchListenRequest, ConfigContext, ConfigPublishRequest, ConfigQueryResponse,
    ConfigTarget, Reply,
};

const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const PUSH_ATTEMPTS: u32 = 5;

/// The namespace a Nacos tenant names.
pub fn namespace_of(tenant: &str) -> &str {
    match tenant {
        "" | "public" | "null" => crate::groups::names::DEFAULT_NAMESPACE,
        t => t,
    }
}

fn key_of(t: &ConfigTarget) -> Result<ConfigKey> {
    key_from(&t.tenant, &t.group, &t.data_id)
}

fn key_from(tenant: &str, group: &str, data_id: &str) -> Result<ConfigKey> {
    validate::key(namespace_of(tenant), group, data_id)
}

pub(crate) async fn query(front: &Front, caller: &Principal, req: ConfigTarget) -> Result<Reply> {
    let key = key_of(&req)?;
    caller.require(Resource::Config, Access::Read, &key.namespace)?;
    let found = front
        .client
        .query(Get { key }, ReadLevel::Stale, None)
        .await?;
    let Some(rec) = found else {
        return Ok(Reply::fail(
            "ConfigQueryResponse",
            code::CONFIG_NOT_FOUND,
            "config data not exist",
        ));
    };
    Ok(Reply::ok(
        "ConfigQueryResponse",
        ConfigQueryResponse {
            content: rec.content,
            encrypted_data_key: String::new(),
            content_type: rec.r#type,
            md5: rec.md5,
            last_modified: rec.modified_ms,
            beta: false,
        },
    ))
}

pub(crate) async fn publish(
    front: &Front,
    caller: &Principal,
    req: ConfigPublishRequest,
) -> Result<Reply> {
    let key = key_of(&req.target)?;
    caller.require(Resource::Config, Access::Write, &key.namespace)?;
    if !req.addition("betaIps").is_empty() || !req.addition("tag").is_empty() {
        return Err(Error::invalid(
            "gray publishing (betaIps, tag) is not supported by nacosd",
        ));
    }
    let tags: Vec<String> = req
        .addition("config_tags")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let app_name = req.addition("appName").to_string();
    let description = req.addition("desc").to_string();
    let r#type = validate::publish_fields(
        &req.content,
        front.limits.max_content_bytes,
        req.addition("type"),
        &app_name,
        &tags,
        &description,
    )?;
    let cas_md5 = (!req.cas_md5.is_empty()).then(|| req.cas_md5.clone());
    if let Some(cas) = &cas_md5 {
        validate::md5("casMd5", cas)?;
    }
    let publish = Publish {
        key,
        md5: md5_hex(req.content.as_bytes()),
        content: req.content,
        r#type,
        app_name,
        tags,
        description,
        cas_md5,
        history_limit: front.limits.history_limit,
    };
    front.client.mutate(publish, None).await?;
    Ok(Reply::ok("ConfigPublishResponse", serde_json::json!({})))
}

pub(crate) async fn remove(front: &Front, caller: &Principal, req: ConfigTarget) -> Result<Reply> {
    let key = key_of(&req)?;
    caller.require(Resource::Config, Access::Write, &key.namespace)?;
    let remove = Remove {
        key,
        cas_md5: None,
        history_limit: front.limits.history_limit,
    };
    front.client.mutate(remove, None).await?;
    Ok(Reply::ok("ConfigRemoveResponse", serde_json::json!({})))
}

pub(crate) async fn listen(
    front: &Front,
    conn: &Arc<Connection>,
    caller: &Principal,
    req: ConfigBatchListenRequest,
) -> Result<Reply> {
    let mut contexts = Vec::with_capacity(req.config_listen_contexts.len());
    for c in &req.config_listen_contexts {
        let key = key_from(&c.tenant, &c.group, &c.data_id)?;
        caller.require(Resource::Config, Access::Read, &key.namespace)?;
        validate::md5("md5", &c.md5)?;
        let named = ConfigContext {
            group: c.group.clone(),
            data_id: c.data_id.clone(),
            tenant: c.tenant.clone(),
        };
        contexts.push((key, named, c.md5.clone()));
    }
    if !req.listen {
        let mut watch = WatchRequest::default();
        if let Some(l) = lock(&conn.config).as_mut() {
            for (key, _, _) in contexts {
                l.keys.remove(&key);
                watch.remove.push(key);
            }
            let _ = l.input.send(WatchInput::Request(watch));
        }
        return Ok(Reply::ok(
            "ConfigChangeBatchListenResponse",
            serde_json::json!({ "changedConfigs": [] }),
        ));
    }
    // The answer: what differs from the client's md5 here, now.
    let keys: Vec<ConfigKey> = contexts.iter().map(|(k, _, _)| k.clone()).collect();
    let states = front
        .client
        .query(States { keys }, ReadLevel::Stale, None)
        .await?;
    let mut changed = Vec::new();
    let mut watch = WatchRequest::default();
    for ((key, named, client_md5), (md5, _)) in contexts.iter().zip(states) {
        let server_md5 = md5.clone().unwrap_or_default();
        if server_md5 != *client_md5 {
            changed.push(named.clone());
        }
        // The engine starts from what the client is now told it holds, and pushes any
        // change after that.
        watch.add.push((key.clone(), md5));
    }
    {
        let mut config = lock(&conn.config);
        let l = config.get_or_insert_with(|| start_listen(front, conn));
        for (key, named, _) in contexts {
            l.keys.insert(key, named);
        }
        let _ = l.input.send(WatchInput::Request(watch));
    }
    Ok(Reply::ok(
        "ConfigChangeBatchListenResponse",
        serde_json::json!({ "changedConfigs": changed }),
    ))
}

/// Start this connection's Watch engine and the task that turns its events into
/// pushes.
fn start_listen(front: &Front, conn: &Arc<Connection>) -> ConfigListen {
    let (input, input_rx) = mpsc::unbounded_channel();
    let (tx, mut events) = mpsc::channel(256);
    // Subscribe before the engine's first state read so no change falls in between.
    let feed = front.config_feed.subscribe();
    let engine = tokio::spawn(watch::serve(
        front.client.clone(),
        UnboundedReceiverStream::new(input_rx).boxed(),
        feed,
        tx,
    ));
    let conn = conn.clone();
    let ids = front.conns.push_ids.clone();
    let pusher = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Ok(ev) => {
                    tokio::spawn(notify(conn.clone(), ids.clone(), ev));
                }
                Err(e) => {
                    tracing::debug!(connection = %conn.id, error = %e, "config listen engine ended");
                    return;
                }
            }
        }
    });
    ConfigListen {
        input,
        keys: HashMap::new(),
        tasks: vec![engine, pusher],
    }
}

/// Tell a listener that a config changed; retried (after 2 s, 4 s, ...) while the
/// connection lives, as Nacos's `RpcConfigChangeNotifier` does.
async fn notify(conn: Arc<Connection>, ids: Arc<AtomicU64>, ev: WatchEvent) {
    let Some(named) = lock(&conn.config)
        .as_ref()
        .and_then(|l| l.keys.get(&ev.key).cloned())
    else {
        return;
    };
    for attempt in 0..PUSH_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2 * attempt as u64)).await;
        }
        if conn.is_closed() {
            return;
        }
        let push = Reply::push("ConfigChangeNotifyRequest", &named);
        if conn.request(push, &ids, PUSH_TIMEOUT).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenants_name_the_public_namespace() {
        assert_eq!(namespace_of(""), "public");
        assert_eq!(namespace_of("public"), "public");
        assert_eq!(namespace_of("null"), "public");
        assert_eq!(namespace_of("dev"), "dev");
        assert_eq!(key_from("", "", "d").unwrap().group, "DEFAULT_GROUP");
    }
}
