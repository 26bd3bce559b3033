//! `nacosd.v1.NamingService`: validate, route to the `naming_persistent` group, map
//! errors; `Subscribe` streams from this node's change feed.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{deadline, level};
use crate::consistency::{self, ReadLevel};
use crate::error::{Error, Result};
use crate::groups::feed::FeedEvent;
use crate::groups::naming::{
    validate, ChangeKind, InstanceRecord, NamingChange, NamingCommand, NamingFeed, NamingQuery,
    NamingReply, ServiceKey, ServiceRecord,
};
use crate::groups::NAMING_PERSISTENT;
use crate::pb;
use crate::raft::node::MultiRaft;
use crate::raft::types::Command;

pub struct NamingApi {
    node: Arc<MultiRaft>,
    feed: Arc<NamingFeed>,
}

impl NamingApi {
    pub fn new(node: Arc<MultiRaft>, feed: Arc<NamingFeed>) -> Self {
        NamingApi { node, feed }
    }

    async fn write(
        &self,
        cmd: NamingCommand,
        service: &ServiceKey,
        op: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<NamingReply> {
        let command = Command::new(op, service.to_string(), bincode::serialize(&cmd)?);
        let bytes = consistency::write(&self.node, NAMING_PERSISTENT, command, timeout).await?;
        Ok(bincode::deserialize(&bytes)?)
    }
}

impl NamingApi {
    /// Create (`create`) or replace a service's settings.
    async fn write_settings(
        &self,
        create: bool,
        service: ServiceKey,
        settings: crate::groups::naming::ServiceSettings,
        timeout: Option<std::time::Duration>,
    ) -> Result<Response<pb::Service>, Status> {
        let (cmd, op) = if create {
            (
                NamingCommand::CreateService {
                    service: service.clone(),
                    settings,
                },
                "create-service",
            )
        } else {
            (
                NamingCommand::UpdateService {
                    service: service.clone(),
                    settings,
                },
                "update-service",
            )
        };
        match self.write(cmd, &service, op, timeout).await? {
            NamingReply::Service { record } => Ok(Response::new(pb_service(&service, &record))),
            other => Err(unexpected(other)),
        }
    }
}

async fn query(
    node: &MultiRaft,
    q: &NamingQuery,
    level: ReadLevel,
    timeout: Option<std::time::Duration>,
) -> Result<NamingReply> {
    let bytes = consistency::read(
        node,
        NAMING_PERSISTENT,
        &bincode::serialize(q)?,
        level,
        timeout,
    )
    .await?;
    Ok(bincode::deserialize(&bytes)?)
}

fn key_of(k: Option<pb::ServiceKey>, field: &str) -> Result<ServiceKey> {
    let k = k.ok_or_else(|| Error::invalid(format!("{field} is required")))?;
    validate::service_key(&k.namespace, &k.group, &k.service_name)
}

fn instance_of(i: Option<pb::Instance>) -> Result<InstanceRecord> {
    let i = i.ok_or_else(|| Error::invalid("instance is required"))?;
    if i.ephemeral {
        return Err(Error::invalid(
            "ephemeral instances are served by the AP side (Distro), which is not available yet; register with ephemeral = false",
        ));
    }
    Ok(InstanceRecord {
        addr: validate::addr(&i.ip, i.port, &i.cluster_name)?,
        weight: validate::weight(i.weight)?,
        healthy: i.healthy.unwrap_or(true),
        enabled: i.enabled.unwrap_or(true),
        metadata: validate::metadata(&i.metadata)?,
    })
}

fn pb_key(k: &ServiceKey) -> pb::ServiceKey {
    pb::ServiceKey {
        namespace: k.namespace.clone(),
        group: k.group.clone(),
        service_name: k.name.clone(),
    }
}

fn pb_service(k: &ServiceKey, r: &ServiceRecord) -> pb::Service {
    pb::Service {
        key: Some(pb_key(k)),
        protect_threshold: r.protect_threshold,
        metadata: r.metadata.clone().into_iter().collect(),
        selector: Some(pb::Selector {
            r#type: if r.selector.r#type.is_empty() {
                "none".into()
            } else {
                r.selector.r#type.clone()
            },
            expression: r.selector.expression.clone(),
        }),
        revision: r.revision,
    }
}

fn pb_instance(k: &ServiceKey, i: &InstanceRecord) -> pb::Instance {
    pb::Instance {
        ip: i.addr.ip.clone(),
        port: i.addr.port as u32,
        weight: Some(i.weight),
        healthy: Some(i.healthy),
        enabled: Some(i.enabled),
        ephemeral: false,
        cluster_name: i.addr.cluster.clone(),
        metadata: i.metadata.clone().into_iter().collect(),
        instance_id: i.instance_id(k),
    }
}

fn unexpected(r: NamingReply) -> Status {
    Status::internal(format!("unexpected reply from the naming group: {r:?}"))
}

fn settings_of(
    threshold: f32,
    metadata: &std::collections::HashMap<String, String>,
    selector: &Option<pb::Selector>,
) -> Result<crate::groups::naming::ServiceSettings> {
    let (t, e) = selector
        .as_ref()
        .map(|s| (s.r#type.as_str(), s.expression.as_str()))
        .unwrap_or(("", ""));
    validate::settings(threshold, metadata, t, e)
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::naming_service_server::NamingService for NamingApi {
    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::RegisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        let inst = instance_of(r.instance)?;
        let id = inst.instance_id(&service);
        let cmd = NamingCommand::Register {
            service: service.clone(),
            instances: vec![inst],
        };
        match self.write(cmd, &service, "register", timeout).await? {
            NamingReply::Registered { created, revision } => {
                Ok(Response::new(pb::RegisterInstanceResponse {
                    instance_id: id,
                    created: created.first().copied().unwrap_or(false),
                    revision,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn deregister_instance(
        &self,
        req: Request<pb::DeregisterInstanceRequest>,
    ) -> Result<Response<pb::DeregisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        let addr = validate::addr(&r.ip, r.port, &r.cluster_name)?;
        let cmd = NamingCommand::Deregister {
            service: service.clone(),
            addr,
        };
        match self.write(cmd, &service, "deregister", timeout).await? {
            NamingReply::Deregistered { existed, revision } => {
                Ok(Response::new(pb::DeregisterInstanceResponse {
                    existed,
                    revision,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn update_instance(
        &self,
        req: Request<pb::UpdateInstanceRequest>,
    ) -> Result<Response<pb::RegisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        let instance = instance_of(r.instance)?;
        let id = instance.instance_id(&service);
        let cmd = NamingCommand::Update {
            service: service.clone(),
            instance,
        };
        match self
            .write(cmd, &service, "update-instance", timeout)
            .await?
        {
            NamingReply::Registered { revision, .. } => {
                Ok(Response::new(pb::RegisterInstanceResponse {
                    instance_id: id,
                    created: false,
                    revision,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn batch_register_instances(
        &self,
        req: Request<pb::BatchRegisterInstancesRequest>,
    ) -> Result<Response<pb::BatchRegisterInstancesResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        if r.instances.is_empty() {
            return Err(Error::invalid("instances must not be empty").into());
        }
        if r.instances.len() > 1000 {
            return Err(Error::invalid(format!(
                "{} instances in one batch; the limit is 1000",
                r.instances.len()
            ))
            .into());
        }
        let mut instances = Vec::with_capacity(r.instances.len());
        for (i, inst) in r.instances.into_iter().enumerate() {
            instances.push(instance_of(Some(inst)).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::invalid(format!("instances[{i}]: {m}")),
                other => other,
            })?);
        }
        let ids = instances.iter().map(|i| i.instance_id(&service)).collect();
        let cmd = NamingCommand::Register {
            service: service.clone(),
            instances,
        };
        match self.write(cmd, &service, "batch-register", timeout).await? {
            NamingReply::Registered { revision, .. } => {
                Ok(Response::new(pb::BatchRegisterInstancesResponse {
                    instance_ids: ids,
                    revision,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key, "key")?;
        let settings = settings_of(r.protect_threshold, &r.metadata, &r.selector)?;
        self.write_settings(true, key, settings, timeout).await
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let key = key_of(r.key, "key")?;
        let settings = settings_of(r.protect_threshold, &r.metadata, &r.selector)?;
        self.write_settings(false, key, settings, timeout).await
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        let cmd = NamingCommand::DeleteService {
            service: service.clone(),
        };
        match self.write(cmd, &service, "delete-service", timeout).await? {
            NamingReply::Deleted { revision } => {
                Ok(Response::new(pb::DeleteServiceResponse { revision }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceDetail>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        let clusters = r
            .clusters
            .iter()
            .map(|c| validate::cluster(c))
            .collect::<Result<Vec<_>>>()?;
        let q = NamingQuery::Get {
            service: service.clone(),
            clusters,
            healthy_only: r.healthy_only,
        };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            NamingReply::Detail {
                record: Some(record),
                instances,
            } => Ok(Response::new(pb::ServiceDetail {
                service: Some(pb_service(&service, &record)),
                instances: instances.iter().map(|i| pb_instance(&service, i)).collect(),
            })),
            NamingReply::Detail { record: None, .. } => {
                Err(Error::NotFound(format!("service {service} does not exist")).into())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let timeout = deadline(&req);
        let r = req.into_inner();
        let (namespace, group) = validate::namespace_and_group(&r.namespace, &r.group)?;
        let (page_no, page_size) = crate::groups::config::validate::page(r.page_no, r.page_size)?;
        let q = NamingQuery::List {
            namespace,
            group,
            offset: (page_no as u64 - 1) * page_size as u64,
            limit: page_size,
        };
        match query(&self.node, &q, level(r.consistency)?, timeout).await? {
            NamingReply::Page { services, total } => Ok(Response::new(pb::ListServicesResponse {
                services: services
                    .into_iter()
                    .map(
                        |(service_name, instance_count, revision)| pb::ServiceSummary {
                            service_name,
                            instance_count,
                            revision,
                        },
                    )
                    .collect(),
                total,
            })),
            other => Err(unexpected(other)),
        }
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before reading the state so no change can fall in between.
        let feed = self.feed.subscribe();
        tokio::spawn(serve_subscription(
            self.node.clone(),
            service,
            r.last_index,
            feed,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The full current state, if the client (who has seen up to `seen`) missed anything.
async fn full_state_if_missed(
    node: &MultiRaft,
    service: &ServiceKey,
    seen: u64,
    level: ReadLevel,
) -> Result<Option<pb::ServiceEvent>> {
    let q = NamingQuery::Get {
        service: service.clone(),
        clusters: vec![],
        healthy_only: false,
    };
    let (record, instances) = match query(node, &q, level, None).await? {
        NamingReply::Detail { record, instances } => (record, instances),
        other => return Err(Error::internal(format!("unexpected reply {other:?}"))),
    };
    let index = match &record {
        Some(r) => r.revision,
        // A deleted (or never created) service has no revision: use how far this node
        // has applied, so the client never keeps a stale view.
        None => node
            .group(NAMING_PERSISTENT)?
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0),
    };
    if seen != 0 && index <= seen {
        return Ok(None);
    }
    Ok(Some(pb::ServiceEvent {
        kind: pb::ServiceEventKind::FullState as i32,
        index,
        service: record.as_ref().map(|r| pb_service(service, r)),
        instances: instances.iter().map(|i| pb_instance(service, i)).collect(),
    }))
}

use openraft::rt::watch::WatchReceiver;

fn change_event(c: &NamingChange) -> pb::ServiceEvent {
    let (kind, instances) = match &c.kind {
        ChangeKind::InstanceUpserted(i) => (
            pb::ServiceEventKind::InstanceUpserted,
            vec![pb_instance(&c.service, i)],
        ),
        ChangeKind::InstanceRemoved(i) => (
            pb::ServiceEventKind::InstanceRemoved,
            vec![pb_instance(&c.service, i)],
        ),
        ChangeKind::ServiceUpdated => (pb::ServiceEventKind::ServiceUpdated, vec![]),
        ChangeKind::ServiceDeleted => (pb::ServiceEventKind::ServiceDeleted, vec![]),
    };
    pb::ServiceEvent {
        kind: kind as i32,
        index: c.index,
        service: c.record.as_ref().map(|r| pb_service(&c.service, r)),
        instances,
    }
}

async fn serve_subscription(
    node: Arc<MultiRaft>,
    service: ServiceKey,
    last_index: u64,
    mut feed: broadcast::Receiver<FeedEvent<NamingChange>>,
    tx: mpsc::Sender<std::result::Result<pb::ServiceEvent, Status>>,
) {
    // Linearizable: the first answer reflects every change acknowledged before the call.
    let mut seen = last_index;
    match full_state_if_missed(&node, &service, seen, ReadLevel::Linearizable).await {
        Ok(Some(ev)) => {
            seen = seen.max(ev.index);
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    }
    loop {
        tokio::select! {
            ev = feed.recv() => {
                let resync = match ev {
                    Ok(FeedEvent::Changed(c)) => {
                        if c.service == service && c.index > seen {
                            seen = c.index;
                            if tx.send(Ok(change_event(&c))).await.is_err() {
                                return;
                            }
                        }
                        false
                    }
                    Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if resync {
                    match full_state_if_missed(&node, &service, seen, ReadLevel::Stale).await {
                        Ok(Some(ev)) => {
                            seen = seen.max(ev.index);
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
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
