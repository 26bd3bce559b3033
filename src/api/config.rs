//! `nacosd.v1.ConfigService`: validate, route to the `config` group, map errors.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{deadline, level};
use crate::consistency::{self, ReadLevel};
use crate::error::{Error, Result};
use crate::groups::config::model::HistoryOp;
use crate::groups::config::watch::FeedEvent;
use crate::groups::config::{
    md5_hex, validate, ConfigCommand, ConfigFeed, ConfigKey, ConfigQuery, ConfigRecord,
    ConfigReply, HistoryRecord,
};
use crate::groups::CONFIG;
use crate::pb;
use crate::raft::node::MultiRaft;
use crate::raft::types::Command;

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
    node: Arc<MultiRaft>,
    feed: Arc<ConfigFeed>,
    limits: ConfigLimits,
}

impl ConfigApi {
    pub fn new(node: Arc<MultiRaft>, feed: Arc<ConfigFeed>, limits: ConfigLimits) -> Self {
        ConfigApi { node, feed, limits }
    }

    async fn write(
        &self,
        cmd: ConfigCommand,
        key: &ConfigKey,
        op: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<ConfigReply> {
        let command = Command::new(op, key.to_string(), bincode::serialize(&cmd)?);
        let bytes = consistency::write(&self.node, CONFIG, command, timeout).await?;
        Ok(bincode::deserialize(&bytes)?)
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

async fn query(
    node: &MultiRaft,
    q: &ConfigQuery,
    level: ReadLevel,
    timeout: Option<std::time::Duration>,
) -> Result<ConfigReply> {
    let bytes = consistency::read(node, CONFIG, &bincode::serialize(q)?, level, timeout).await?;
    Ok(bincode::deserialize(&bytes)?)
}

fn unexpected(r: ConfigReply) -> Status {
    Status::internal(format!("unexpected reply from the config group: {r:?}"))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::config_service_server::ConfigService for ConfigApi {
    async fn publish_config(
        &self,
        req: Request<pb::PublishConfigRequest>,
    ) -> Result<Response<pb::PublishConfigResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key)?;
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
        let cmd = ConfigCommand::Publish {
            key: key.clone(),
            md5: md5_hex(r.content.as_bytes()),
            content: r.content,
            r#type,
            app_name: r.app_name,
            tags: r.tags,
            description: r.description,
            cas_md5: r.cas_md5,
            history_limit: self.limits.history_limit,
        };
        match self.write(cmd, &key, "publish", timeout).await? {
            ConfigReply::Published {
                md5,
                revision,
                modified_ms,
            } => Ok(Response::new(pb::PublishConfigResponse {
                md5,
                revision,
                modified_time_ms: modified_ms as i64,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigItem>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key)?;
        let q = ConfigQuery::Get { key: key.clone() };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            ConfigReply::Item(Some(rec)) => Ok(Response::new(pb_item(&key, rec))),
            ConfigReply::Item(None) => {
                Err(Error::NotFound(format!("config {key} does not exist")).into())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn remove_config(
        &self,
        req: Request<pb::RemoveConfigRequest>,
    ) -> Result<Response<pb::RemoveConfigResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key)?;
        if let Some(cas) = &r.cas_md5 {
            validate::md5("cas_md5", cas)?;
        }
        let cmd = ConfigCommand::Remove {
            key: key.clone(),
            cas_md5: r.cas_md5,
            history_limit: self.limits.history_limit,
        };
        match self.write(cmd, &key, "remove", timeout).await? {
            ConfigReply::Removed { existed, revision } => {
                Ok(Response::new(pb::RemoveConfigResponse {
                    existed,
                    revision,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_configs(
        &self,
        req: Request<pb::ListConfigsRequest>,
    ) -> Result<Response<pb::ListConfigsResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let namespace = validate::namespace(&r.namespace)?;
        validate::pattern("group_pattern", &r.group_pattern)?;
        validate::pattern("data_id_pattern", &r.data_id_pattern)?;
        let (page_no, page_size) = validate::page(r.page_no, r.page_size)?;
        let q = ConfigQuery::List {
            namespace,
            group_pattern: r.group_pattern,
            data_id_pattern: r.data_id_pattern,
            offset: (page_no as u64 - 1) * page_size as u64,
            limit: page_size,
        };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            ConfigReply::Page { items, total } => Ok(Response::new(pb::ListConfigsResponse {
                items: items.into_iter().map(|(k, rec)| pb_item(&k, rec)).collect(),
                total,
                page_no,
                page_size,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_config_history(
        &self,
        req: Request<pb::ListConfigHistoryRequest>,
    ) -> Result<Response<pb::ListConfigHistoryResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key)?;
        let (page_no, page_size) = validate::page(r.page_no, r.page_size)?;
        let q = ConfigQuery::History {
            key: key.clone(),
            offset: (page_no as u64 - 1) * page_size as u64,
            limit: page_size,
        };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            ConfigReply::History { entries, total } => {
                Ok(Response::new(pb::ListConfigHistoryResponse {
                    entries: entries.into_iter().map(|h| pb_history(&key, h)).collect(),
                    total,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_config_history(
        &self,
        req: Request<pb::GetConfigHistoryRequest>,
    ) -> Result<Response<pb::ConfigHistoryEntry>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key)?;
        let q = ConfigQuery::HistoryAt {
            key: key.clone(),
            revision: r.revision,
        };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            ConfigReply::HistoryEntry(Some(h)) => Ok(Response::new(pb_history(&key, h))),
            ConfigReply::HistoryEntry(None) => Err(Error::NotFound(format!(
                "config {key} has no revision {} in its history",
                r.revision
            ))
            .into()),
            other => Err(unexpected(other)),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before the first state read so no change can fall in between.
        let feed = self.feed.subscribe();
        tokio::spawn(serve_watch(self.node.clone(), incoming, feed, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What the client is known to hold for a watched key: md5 (None: absent) and the
/// revision of the state that md5 describes.
type Known = HashMap<ConfigKey, (Option<String>, u64)>;

fn event(key: &ConfigKey, md5: &Option<String>, log_index: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        key: Some(pb_key(key)),
        md5: md5.clone().unwrap_or_default(),
        deleted: md5.is_none(),
        log_index,
    }
}

async fn states(
    node: &MultiRaft,
    keys: Vec<ConfigKey>,
    level: ReadLevel,
) -> Result<Vec<(Option<String>, u64)>> {
    match query(node, &ConfigQuery::States { keys }, level, None).await? {
        ConfigReply::States(s) => Ok(s),
        other => Err(Error::internal(format!("unexpected reply {other:?}"))),
    }
}

async fn serve_watch(
    node: Arc<MultiRaft>,
    mut incoming: Streaming<pb::WatchRequest>,
    mut feed: broadcast::Receiver<FeedEvent<crate::groups::config::ConfigChange>>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let mut known = Known::new();
    // A client that half-closes (sends no more requests) still receives events until
    // it cancels the call.
    let mut requests_open = true;
    loop {
        tokio::select! {
            msg = incoming.next(), if requests_open => {
                let req = match msg {
                    Some(Ok(req)) => req,
                    None => {
                        requests_open = false;
                        continue;
                    }
                    Some(Err(_)) => return, // the client broke the stream
                };
                if let Err(e) = handle_watch_request(&node, req, &mut known, &tx).await {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            ev = feed.recv() => {
                let resync = match ev {
                    Ok(FeedEvent::Changed(c)) => {
                        if let Some((md5, rev)) = known.get_mut(&c.key) {
                            if c.log_index > *rev {
                                *rev = c.log_index;
                                if *md5 != c.md5 {
                                    *md5 = c.md5.clone();
                                    if tx.send(Ok(event(&c.key, &c.md5, c.log_index))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        false
                    }
                    Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if resync && !known.is_empty() {
                    let keys: Vec<ConfigKey> = known.keys().cloned().collect();
                    match states(&node, keys.clone(), ReadLevel::Stale).await {
                        Ok(s) => {
                            for (key, (md5, rev)) in keys.into_iter().zip(s) {
                                let entry = known.get_mut(&key).expect("key from map");
                                if entry.0 != md5
                                    && tx.send(Ok(event(&key, &md5, rev))).await.is_err() {
                                        return;
                                    }
                                *entry = (md5, rev.max(entry.1));
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
            }
            _ = tx.closed() => return,
        }
    }
}

async fn handle_watch_request(
    node: &MultiRaft,
    req: pb::WatchRequest,
    known: &mut Known,
    tx: &mpsc::Sender<Result<pb::WatchEvent, Status>>,
) -> Result<()> {
    for k in req.remove {
        known.remove(&validate::key(&k.namespace, &k.group, &k.data_id)?);
    }
    let mut added = Vec::with_capacity(req.add.len());
    for w in req.add {
        let key = key_of(w.key)?;
        validate::md5("md5", &w.md5)?;
        added.push((key, if w.md5.is_empty() { None } else { Some(w.md5) }));
    }
    if added.is_empty() {
        return Ok(());
    }
    let keys: Vec<ConfigKey> = added.iter().map(|(k, _)| k.clone()).collect();
    // Linearizable: the answer reflects every change acknowledged before the request.
    let current = states(node, keys, ReadLevel::Linearizable).await?;
    for ((key, held), (md5, rev)) in added.into_iter().zip(current) {
        if held != md5 && tx.send(Ok(event(&key, &md5, rev))).await.is_err() {
            return Ok(());
        }
        known.insert(key, (md5, rev));
    }
    Ok(())
}
