//! `nacosd.v1.NamingService`: validate, route persistent instances to the
//! `naming_persistent` group and ephemeral ones (with a session) to this node's
//! [`Distro`], map errors; reads merge both, each instance marked; `Subscribe` streams
//! from this node's change feeds.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{deadline, level};
use crate::auth::{Access, Auth, Resource};
use crate::distro::{Distro, EphemeralInstance};
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::groups::naming::subscribe::{self, EventKind, Feeds, ServiceEvent};
use crate::groups::naming::{
    validate, CreateService, DeleteService, Deregister, GetService, InstanceRecord, ListServices,
    NamingFeed, Register, ServiceKey, ServiceRecord, UpdateInstance, UpdateService,
};
use crate::pb;
use crate::raft::node::MultiRaft;

pub struct NamingApi {
    client: GroupClient,
    auth: Arc<Auth>,
    feed: Arc<NamingFeed>,
    distro: Arc<Distro>,
}

impl NamingApi {
    pub fn new(
        node: Arc<MultiRaft>,
        auth: Arc<Auth>,
        feed: Arc<NamingFeed>,
        distro: Arc<Distro>,
    ) -> Self {
        NamingApi {
            client: GroupClient::new(node),
            auth,
            feed,
            distro,
        }
    }
}

fn key_of(k: Option<pb::ServiceKey>, field: &str) -> Result<ServiceKey> {
    let k = k.ok_or_else(|| Error::invalid(format!("{field} is required")))?;
    validate::service_key(&k.namespace, &k.group, &k.service_name)
}

/// The instance, and its session when it is ephemeral.
fn instance_of(i: Option<pb::Instance>) -> Result<(InstanceRecord, Option<String>)> {
    let i = i.ok_or_else(|| Error::invalid("instance is required"))?;
    let session = match (i.ephemeral, i.session_id.is_empty()) {
        (true, true) => {
            return Err(Error::invalid(
                "an ephemeral instance needs session_id (open a session with SessionService/OpenSession)",
            ))
        }
        (false, false) => {
            return Err(Error::invalid(
                "session_id is only for ephemeral instances; set ephemeral = true or leave session_id empty",
            ))
        }
        (true, false) => Some(i.session_id.clone()),
        (false, true) => None,
    };
    let record = InstanceRecord {
        addr: validate::addr(&i.ip, i.port, &i.cluster_name)?,
        weight: validate::weight(i.weight)?,
        healthy: i.healthy.unwrap_or(true),
        enabled: i.enabled.unwrap_or(true),
        metadata: validate::metadata(&i.metadata)?,
    };
    Ok((record, session))
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
        session_id: String::new(),
    }
}

fn pb_ephemeral(k: &ServiceKey, e: &EphemeralInstance) -> pb::Instance {
    pb::Instance {
        ephemeral: true,
        session_id: e.session.clone(),
        ..pb_instance(k, &e.record)
    }
}

/// The settings shown for a service that only ephemeral instances make exist: the
/// defaults (the service has no persistent record).
fn implicit_service() -> ServiceRecord {
    ServiceRecord::default()
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

fn pb_event(k: &ServiceKey, e: ServiceEvent) -> pb::ServiceEvent {
    let kind = match e.kind {
        EventKind::FullState => pb::ServiceEventKind::FullState,
        EventKind::InstancesUpserted => pb::ServiceEventKind::InstanceUpserted,
        EventKind::InstancesRemoved => pb::ServiceEventKind::InstanceRemoved,
        EventKind::ServiceUpdated => pb::ServiceEventKind::ServiceUpdated,
        EventKind::ServiceDeleted => pb::ServiceEventKind::ServiceDeleted,
    };
    let service = match (&e.service, e.kind) {
        (Some(r), _) => Some(pb_service(k, r)),
        (None, EventKind::FullState) if !e.ephemeral.is_empty() => {
            Some(pb_service(k, &implicit_service()))
        }
        (None, _) => None,
    };
    pb::ServiceEvent {
        kind: kind as i32,
        index: e.index,
        service,
        instances: e
            .instances
            .iter()
            .map(|i| pb_instance(k, i))
            .chain(e.ephemeral.iter().map(|i| pb_ephemeral(k, i)))
            .collect(),
    }
}

/// A service as reads show it: its settings, its persistent instances read at
/// `level`, and this node's ephemeral instances, both filtered by `clusters` (empty:
/// all) and health; `None` when it has neither a record nor ephemeral instances.
/// Shared by `GetService` and the Nacos front end.
pub(crate) async fn read_service(
    client: &GroupClient,
    distro: &Distro,
    service: &ServiceKey,
    clusters: &[String],
    healthy_only: bool,
    level: crate::consistency::ReadLevel,
    timeout: Option<std::time::Duration>,
) -> Result<Option<(ServiceRecord, Vec<InstanceRecord>, Vec<EphemeralInstance>)>> {
    let q = GetService {
        service: service.clone(),
        clusters: clusters.to_vec(),
        healthy_only,
    };
    let detail = client.query(q, level, timeout).await?;
    let all_ephemeral = distro.instances_of(service);
    let exists = detail.record.is_some() || !all_ephemeral.is_empty();
    let ephemeral: Vec<EphemeralInstance> = all_ephemeral
        .into_iter()
        .filter(|e| {
            (clusters.is_empty() || clusters.contains(&e.record.addr.cluster))
                && (!healthy_only || e.record.healthy)
        })
        .collect();
    if !exists {
        return Ok(None);
    }
    let record = detail.record.unwrap_or_else(implicit_service);
    Ok(Some((record, detail.instances, ephemeral)))
}

/// One page (`(offset, limit)`) of the services of a namespace and group, persistent
/// ones read at `level` merged with this node's ephemeral ones: (name, instance count,
/// revision) in name order, and the total. Shared by `ListServices` and the Nacos front
/// end.
pub(crate) async fn list_services(
    client: &GroupClient,
    distro: &Distro,
    namespace: String,
    group: String,
    (offset, limit): (u64, u32),
    level: crate::consistency::ReadLevel,
    timeout: Option<std::time::Duration>,
) -> Result<(Vec<(String, u32, u64)>, u64)> {
    let ephemeral = distro.services_in(&namespace, &group);
    if ephemeral.is_empty() {
        let q = ListServices {
            namespace,
            group,
            offset,
            limit,
        };
        let page = client.query(q, level, timeout).await?;
        return Ok((page.services, page.total));
    }
    // Both kinds: merge every persistent service with the ephemeral ones, then page.
    let q = ListServices {
        namespace,
        group,
        offset: 0,
        limit: u32::MAX,
    };
    let page = client.query(q, level, timeout).await?;
    let mut merged: std::collections::BTreeMap<String, (u32, u64)> = page
        .services
        .into_iter()
        .map(|(name, count, rev)| (name, (count, rev)))
        .collect();
    for (name, count) in ephemeral {
        merged.entry(name).or_insert((0, 0)).0 += count;
    }
    let total = merged.len() as u64;
    let services = merged
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|(name, (count, rev))| (name, count, rev))
        .collect();
    Ok((services, total))
}

type SubscribeStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ServiceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::naming_service_server::NamingService for NamingApi {
    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> std::result::Result<Response<pb::RegisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let (inst, session) = instance_of(r.instance)?;
        let instance_id = inst.instance_id(&service);
        if let Some(session) = session {
            let created = self
                .distro
                .register(&session, &service, vec![inst], false)?;
            return Ok(Response::new(pb::RegisterInstanceResponse {
                instance_id,
                created: created.first().copied().unwrap_or(false),
                revision: 0,
            }));
        }
        let register = Register {
            service,
            instances: vec![inst],
        };
        let done = self.client.mutate(register, timeout).await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            instance_id,
            created: done.created.first().copied().unwrap_or(false),
            revision: done.revision,
        }))
    }

    async fn deregister_instance(
        &self,
        req: Request<pb::DeregisterInstanceRequest>,
    ) -> std::result::Result<Response<pb::DeregisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let addr = validate::addr(&r.ip, r.port, &r.cluster_name)?;
        if !r.session_id.is_empty() {
            let existed = self.distro.deregister(&r.session_id, &service, &addr)?;
            return Ok(Response::new(pb::DeregisterInstanceResponse {
                existed,
                revision: 0,
            }));
        }
        let done = self
            .client
            .mutate(Deregister { service, addr }, timeout)
            .await?;
        Ok(Response::new(pb::DeregisterInstanceResponse {
            existed: done.existed,
            revision: done.revision,
        }))
    }

    async fn update_instance(
        &self,
        req: Request<pb::UpdateInstanceRequest>,
    ) -> std::result::Result<Response<pb::RegisterInstanceResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let (instance, session) = instance_of(r.instance)?;
        let instance_id = instance.instance_id(&service);
        if let Some(session) = session {
            self.distro
                .register(&session, &service, vec![instance], true)?;
            return Ok(Response::new(pb::RegisterInstanceResponse {
                instance_id,
                created: false,
                revision: 0,
            }));
        }
        let done = self
            .client
            .mutate(UpdateInstance { service, instance }, timeout)
            .await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            instance_id,
            created: false,
            revision: done.revision,
        }))
    }

    async fn batch_register_instances(
        &self,
        req: Request<pb::BatchRegisterInstancesRequest>,
    ) -> std::result::Result<Response<pb::BatchRegisterInstancesResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
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
        let mut session = None;
        for (i, inst) in r.instances.into_iter().enumerate() {
            let (inst, s) = instance_of(Some(inst)).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::invalid(format!("instances[{i}]: {m}")),
                other => other,
            })?;
            if i == 0 {
                session = s;
            } else if s != session {
                return Err(Error::invalid(format!(
                    "instances[{i}]: a batch is all persistent or all ephemeral of one session"
                ))
                .into());
            }
            instances.push(inst);
        }
        let instance_ids = instances.iter().map(|i| i.instance_id(&service)).collect();
        if let Some(session) = session {
            self.distro.register(&session, &service, instances, false)?;
            return Ok(Response::new(pb::BatchRegisterInstancesResponse {
                instance_ids,
                revision: 0,
            }));
        }
        let done = self
            .client
            .mutate(Register { service, instances }, timeout)
            .await?;
        Ok(Response::new(pb::BatchRegisterInstancesResponse {
            instance_ids,
            revision: done.revision,
        }))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let settings = settings_of(r.protect_threshold, &r.metadata, &r.selector)?;
        let record = self
            .client
            .mutate(
                CreateService {
                    service: service.clone(),
                    settings,
                },
                timeout,
            )
            .await?;
        Ok(Response::new(pb_service(&service, &record)))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let settings = settings_of(r.protect_threshold, &r.metadata, &r.selector)?;
        let record = self
            .client
            .mutate(
                UpdateService {
                    service: service.clone(),
                    settings,
                },
                timeout,
            )
            .await?;
        Ok(Response::new(pb_service(&service, &record)))
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> std::result::Result<Response<pb::DeleteServiceResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        caller.require(Resource::Naming, Access::Write, &service.namespace)?;
        let done = self
            .client
            .mutate(DeleteService { service }, timeout)
            .await?;
        Ok(Response::new(pb::DeleteServiceResponse {
            revision: done.revision,
        }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> std::result::Result<Response<pb::ServiceDetail>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.key, "key")?;
        caller.require(Resource::Naming, Access::Read, &service.namespace)?;
        let clusters = r
            .clusters
            .iter()
            .map(|c| validate::cluster(c))
            .collect::<Result<Vec<_>>>()?;
        let found = read_service(
            &self.client,
            &self.distro,
            &service,
            &clusters,
            r.healthy_only,
            level(r.consistency)?,
            timeout,
        )
        .await?;
        let Some((record, persistent, ephemeral)) = found else {
            return Err(Error::NotFound(format!("service {service} does not exist")).into());
        };
        Ok(Response::new(pb::ServiceDetail {
            service: Some(pb_service(&service, &record)),
            instances: persistent
                .iter()
                .map(|i| pb_instance(&service, i))
                .chain(ephemeral.iter().map(|e| pb_ephemeral(&service, e)))
                .collect(),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> std::result::Result<Response<pb::ListServicesResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let (namespace, group) = validate::namespace_and_group(&r.namespace, &r.group)?;
        caller.require(Resource::Naming, Access::Read, &namespace)?;
        let (page_no, page_size) = crate::groups::config::validate::page(r.page_no, r.page_size)?;
        let offset = (page_no as u64 - 1) * page_size as u64;
        let (services, total) = list_services(
            &self.client,
            &self.distro,
            namespace,
            group,
            (offset, page_size),
            level(r.consistency)?,
            timeout,
        )
        .await?;
        Ok(Response::new(pb::ListServicesResponse {
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
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> std::result::Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        let service = key_of(r.service, "service")?;
        caller.require(Resource::Naming, Access::Read, &service.namespace)?;
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before reading the state so no change can fall in between.
        let feeds = Feeds {
            naming: self.feed.subscribe(),
            ephemeral: self.distro.subscribe(),
        };
        // The first read is done before the stream is returned: a change acknowledged
        // after the call returns is always an event of its own.
        let sub = subscribe::Subscription::open(
            self.client.clone(),
            self.distro.clone(),
            service.clone(),
            r.last_index,
            feeds,
            &tx,
        )
        .await
        .map_err(Status::from)?;
        tokio::spawn(sub.serve(tx));
        let events = ReceiverStream::new(rx)
            .map(move |e| e.map(|e| pb_event(&service, e)).map_err(Status::from));
        Ok(Response::new(Box::pin(events)))
    }
}
