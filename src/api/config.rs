//! `nacosd.v1.ConfigService`: validate, build a typed request for the `config` group,
//! convert the answer. The Watch engine lives with the group (`groups::config::watch`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{deadline, level};
use crate::auth::{Access, Auth, Principal, Resource};
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::groups::config::watch::{self, WatchEvent, WatchInput, WatchRequest};
use crate::groups::config::{
    md5_hex, validate, ConfigFeed, ConfigKey, ConfigRecord, Get, History, HistoryAt, HistoryOp,
    HistoryRecord, List, Publish, Remove,
};
use crate::pb;
use crate::raft::node::MultiRaft;

/// Limits of the config API.
#[derive(Debug, Clone)]
pub struct ConfigLimits {
    /// Largest content accepted, in bytes (Nacos default: 100 KiB).
    pub max_content_bytes: usize,
    /// Revisions of history kept per item.
    pub history_limit: u32,
}

impl Default for ConfigLimits {
    fn default() -> Self {
        ConfigLimits {
            max_content_bytes: 100 * 1024,
            history_limit: 30,
        }
    }
}

pub struct ConfigApi {
    client: GroupClient,
    auth: Arc<Auth>,
    feed: Arc<ConfigFeed>,
    limits: ConfigLimits,
}

impl ConfigApi {
    pub fn new(
        node: Arc<MultiRaft>,
        auth: Arc<Auth>,
        feed: Arc<ConfigFeed>,
        limits: ConfigLimits,
    ) -> Self {
        ConfigApi {
            client: GroupClient::new(node),
            auth,
            feed,
            limits,
        }
    }
}

fn key_of(k: Option<pb::ConfigKey>) -> Result<ConfigKey> {
    let k = k.ok_or_else(|| Error::invalid("key is required"))?;
    validate::key(&k.namespace, &k.group, &k.data_id)
}

fn pb_key(k: &ConfigKey) -> pb::ConfigKey {
    pb::ConfigKey {
        namespace: k.namespace.clone(),
        group: k.group.clone(),
        data_id: k.data_id.clone(),
    }
}

fn pb_item(k: &ConfigKey, r: ConfigRecord) -> pb::ConfigItem {
    pb::ConfigItem {
        key: Some(pb_key(k)),
        content: r.content,
        md5: r.md5,
        r#type: r.r#type,
        app_name: r.app_name,
        tags: r.tags,
        description: r.description,
        created_time_ms: r.created_ms as i64,
        modified_time_ms: r.modified_ms as i64,
        revision: r.revision,
    }
}

fn pb_history(k: &ConfigKey, h: HistoryRecord) -> pb::ConfigHistoryEntry {
    pb::ConfigHistoryEntry {
        key: Some(pb_key(k)),
        revision: h.revision,
        operation: match h.op {
            HistoryOp::Publish => pb::ConfigOperation::Publish,
            HistoryOp::Remove => pb::ConfigOperation::Remove,
        } as i32,
        md5: h.md5,
        time_ms: h.time_ms as i64,
        content: h.content,
        r#type: h.r#type,
    }
}

fn pb_event(e: WatchEvent) -> pb::WatchEvent {
    pb::WatchEvent {
        key: Some(pb_key(&e.key)),
        deleted: e.md5.is_none(),
        md5: e.md5.unwrap_or_default(),
        log_index: e.log_index,
    }
}

/// A client Watch message as the engine's input: validated, or the error that ends
/// the stream.
fn watch_input(msg: std::result::Result<pb::WatchRequest, Status>) -> WatchInput {
    let req = match msg {
        Ok(r) => r,
        Err(_) => return WatchInput::Broken,
    };
    let parse = || -> Result<WatchRequest> {
        let mut out = WatchRequest::default();
        for k in req.remove {
            out.remove
                .push(validate::key(&k.namespace, &k.group, &k.data_id)?);
        }
        for w in req.add {
            let key = key_of(w.key)?;
            validate::md5("md5", &w.md5)?;
            out.add.push((key, (!w.md5.is_empty()).then_some(w.md5)));
        }
        Ok(out)
    };
    match parse() {
        Ok(r) => WatchInput::Request(r),
        Err(e) => WatchInput::Invalid(e),
    }
}

/// A Watch stream may only add keys of namespaces the caller may read; one that is not
/// ends the stream with PERMISSION_DENIED.
fn authorize_watch(caller: &Principal, input: WatchInput) -> WatchInput {
    if let WatchInput::Request(r) = &input {
        for (key, _) in &r.add {
            if let Err(e) = caller.require(Resource::Config, Access::Read, &key.namespace) {
                return WatchInput::Invalid(e);
            }
        }
    }
    input
}

type WatchStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::config_service_server::ConfigService for ConfigApi {
    async fn publish_config(
        &self,
        req: Request<pb::PublishConfigRequest>,
    ) -> std::result::Result<Response<pb::PublishConfigResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let key = key_of(r.key)?;
        caller.require(Resource::Config, Access::Write, &key.namespace)?;
        let r#type = validate::publish_fields(
            &r.content,
            self.limits.max_content_bytes,
            &r.r#type,
            &r.app_name,
            &r.tags,
            &r.description,
        )?;
        if let Some(cas) = &r.cas_md5 {
            validate::md5("cas_md5", cas)?;
        }
        let publish = Publish {
            key,
            md5: md5_hex(r.content.as_bytes()),
            content: r.content,
            r#type,
            app_name: r.app_name,
            tags: r.tags,
            description: r.description,
            cas_md5: r.cas_md5,
            history_limit: self.limits.history_limit,
        };
        let done = self.client.mutate(publish, timeout).await?;
        Ok(Response::new(pb::PublishConfigResponse {
            md5: done.md5,
            revision: done.revision,
            modified_time_ms: done.modified_ms as i64,
        }))
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> std::result::Result<Response<pb::ConfigItem>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let key = key_of(r.key)?;
        caller.require(Resource::Config, Access::Read, &key.namespace)?;
        let level = level(r.consistency)?;
        match self
            .client
            .query(Get { key: key.clone() }, level, timeout)
            .await?
        {
            Some(rec) => Ok(Response::new(pb_item(&key, rec))),
            None => Err(Error::NotFound(format!("config {key} does not exist")).into()),
        }
    }

    async fn remove_config(
        &self,
        req: Request<pb::RemoveConfigRequest>,
    ) -> std::result::Result<Response<pb::RemoveConfigResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let key = key_of(r.key)?;
        caller.require(Resource::Config, Access::Write, &key.namespace)?;
        if let Some(cas) = &r.cas_md5 {
            validate::md5("cas_md5", cas)?;
        }
        let remove = Remove {
            key,
            cas_md5: r.cas_md5,
            history_limit: self.limits.history_limit,
        };
        let done = self.client.mutate(remove, timeout).await?;
        Ok(Response::new(pb::RemoveConfigResponse {
            existed: done.existed,
            revision: done.revision,
        }))
    }

    async fn list_configs(
        &self,
        req: Request<pb::ListConfigsRequest>,
    ) -> std::result::Result<Response<pb::ListConfigsResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let namespace = validate::namespace(&r.namespace)?;
        caller.require(Resource::Config, Access::Read, &namespace)?;
        validate::pattern("group_pattern", &r.group_pattern)?;
        validate::pattern("data_id_pattern", &r.data_id_pattern)?;
        let (page_no, page_size) = validate::page(r.page_no, r.page_size)?;
        let list = List {
            namespace,
            group_pattern: r.group_pattern,
            data_id_pattern: r.data_id_pattern,
            offset: (page_no as u64 - 1) * page_size as u64,
            limit: page_size,
        };
        let page = self
            .client
            .query(list, level(r.consistency)?, timeout)
            .await?;
        Ok(Response::new(pb::ListConfigsResponse {
            items: page
                .items
                .into_iter()
                .map(|(k, rec)| pb_item(&k, rec))
                .collect(),
            total: page.total,
            page_no,
            page_size,
        }))
    }

    async fn list_config_history(
        &self,
        req: Request<pb::ListConfigHistoryRequest>,
    ) -> std::result::Result<Response<pb::ListConfigHistoryResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let key = key_of(r.key)?;
        caller.require(Resource::Config, Access::Read, &key.namespace)?;
        let (page_no, page_size) = validate::page(r.page_no, r.page_size)?;
        let history = History {
            key: key.clone(),
            offset: (page_no as u64 - 1) * page_size as u64,
            limit: page_size,
        };
        let page = self
            .client
            .query(history, level(r.consistency)?, timeout)
            .await?;
        Ok(Response::new(pb::ListConfigHistoryResponse {
            entries: page
                .entries
                .into_iter()
                .map(|h| pb_history(&key, h))
                .collect(),
            total: page.total,
        }))
    }

    async fn get_config_history(
        &self,
        req: Request<pb::GetConfigHistoryRequest>,
    ) -> std::result::Result<Response<pb::ConfigHistoryEntry>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let key = key_of(r.key)?;
        caller.require(Resource::Config, Access::Read, &key.namespace)?;
        let at = HistoryAt {
            key: key.clone(),
            revision: r.revision,
        };
        match self
            .client
            .query(at, level(r.consistency)?, timeout)
            .await?
        {
            Some(h) => Ok(Response::new(pb_history(&key, h))),
            None => Err(Error::NotFound(format!(
                "config {key} has no revision {} in its history",
                r.revision
            ))
            .into()),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        let caller = self.auth.authenticate(&req).await?;
        let input = req
            .into_inner()
            .map(move |msg| authorize_watch(&caller, watch_input(msg)));
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before the first state read so no change can fall in between.
        let feed = self.feed.subscribe();
        tokio::spawn(watch::serve(self.client.clone(), input, feed, tx));
        let events = ReceiverStream::new(rx).map(|e| e.map(pb_event).map_err(Status::from));
        Ok(Response::new(Box::pin(events)))
    }
}
