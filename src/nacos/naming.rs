//! Naming requests, and the pushes to subscribers.
//!
//! - `InstanceRequest` (ephemeral): the connection's Distro session publishes exactly
//!   one instance per service (`Distro::publish` replaces the publication); deregister
//!   removes the connection's publication of the service whatever its ip and port.
//! - `BatchInstanceRequest`: the publication becomes the whole list.
//! - `PersistentInstanceRequest`: the `naming_persistent` group's register and
//!   deregister, as `nacosd.v1` does them.
//! - Reads (`SubscribeServiceRequest`, `ServiceQueryRequest`, `ServiceListRequest`) are
//!   local, as in Nacos: the persistent part at `STALE`, the ephemeral part is this
//!   node's Distro copy.
//! - Pushes: every change of a service (either feed) marks it; after `PUSH_DELAY`
//!   (merging a burst) each connection subscribed to it gets a
//!   `NotifySubscriberRequest` with its own `clusters` filter, retried while the
//!   connection lives if the client does not ack.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::api::naming::{list_services, read_service};
use crate::auth::{Access, Principal, Resource};
use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::groups::feed::FeedEvent;
use crate::groups::naming::{validate, Deregister, InstanceRecord, Register, ServiceKey};
use crate::lock;
use crate::nacos::connection::Connection;
use crate::nacos::service::Front;
use crate::nacos::wire::{
    BatchInstanceRequest, Instance, InstanceRequest, NamingTarget, NotifySubscriberRequest, Reply,
    ServiceInfo, ServiceListRequest, ServiceQueryRequest, SubscribeServiceRequest,
};

/// Changes of a service within this delay are pushed once (Nacos waits 500 ms).
const PUSH_DELAY: Duration = Duration::from_millis(100);
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const PUSH_RETRY_DELAY: Duration = Duration::from_secs(1);
const PUSH_ATTEMPTS: u32 = 5;
/// `ServiceInfo.cacheMillis` (Nacos's default push cache).
const CACHE_MILLIS: u64 = 10_000;

fn service_key(t: &NamingTarget) -> Result<ServiceKey> {
    validate::service_key(&t.namespace, &t.group_name, &t.service_name)
}

fn record_of(i: &Instance) -> Result<InstanceRecord> {
    let port = u32::try_from(i.port)
        .map_err(|_| Error::invalid(format!("port {} is out of range", i.port)))?;
    Ok(InstanceRecord {
        addr: validate::addr(&i.ip, port, &i.cluster_name)?,
        weight: validate::weight(Some(i.weight))?,
        healthy: i.healthy,
        enabled: i.enabled,
        metadata: validate::metadata(&i.metadata.clone().into_iter().collect())?,
    })
}

fn instance_of(service: &ServiceKey, r: &InstanceRecord, ephemeral: bool) -> Instance {
    Instance {
        instance_id: r.instance_id(service),
        ip: r.addr.ip.clone(),
        port: r.addr.port as i64,
        weight: r.weight,
        healthy: r.healthy,
        enabled: r.enabled,
        ephemeral,
        cluster_name: r.addr.cluster.clone(),
        service_name: format!("{}@@{}", service.group, service.name),
        metadata: r.metadata.clone(),
    }
}

fn clusters_of(clusters: &str) -> Result<Vec<String>> {
    clusters
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(validate::cluster)
        .collect()
}

/// The service as Nacos's `ServiceInfo`: enabled instances of `clusters` (a
/// comma-separated list, echoed), read locally. A service that does not exist is an
/// empty one.
pub(crate) async fn service_info(
    front: &Front,
    service: &ServiceKey,
    clusters: &str,
    healthy_only: bool,
) -> Result<ServiceInfo> {
    let filter = clusters_of(clusters)?;
    let found = read_service(
        &front.client,
        &front.distro,
        service,
        &filter,
        healthy_only,
        ReadLevel::Stale,
        None,
    )
    .await?;
    let hosts = match found {
        None => Vec::new(),
        Some((_, persistent, ephemeral)) => persistent
            .iter()
            .map(|r| instance_of(service, r, false))
            .chain(
                ephemeral
                    .iter()
                    .map(|e| instance_of(service, &e.record, true)),
            )
            .filter(|i| i.enabled)
            .collect(),
    };
    let now = crate::auth::guard::now_ms();
    let prev = front
        .last_ref
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    Ok(ServiceInfo {
        name: service.name.clone(),
        group_name: service.group.clone(),
        clusters: clusters.to_string(),
        cache_millis: CACHE_MILLIS,
        hosts,
        last_ref_time: now.max(prev + 1),
        checksum: String::new(),
        all_ips: false,
        reach_protection_threshold: false,
        valid: true,
    })
}

pub(crate) async fn instance(
    front: &Front,
    conn: &Connection,
    caller: &Principal,
    req: InstanceRequest,
) -> Result<Reply> {
    let service = service_key(&req.target)?;
    caller.require(Resource::Naming, Access::Write, &service.namespace)?;
    let records = match req.r#type.as_str() {
        "registerInstance" => vec![record_of(&req.instance)?],
        "deregisterInstance" => Vec::new(),
        other => {
            return Err(Error::invalid(format!(
                "InstanceRequest type {other:?}: expected registerInstance or deregisterInstance"
            )))
        }
    };
    conn.ensure_session(&front.distro)?;
    front.distro.publish(&conn.id, &service, records)?;
    Ok(Reply::ok(
        "InstanceResponse",
        serde_json::json!({ "type": req.r#type }),
    ))
}

pub(crate) async fn batch(
    front: &Front,
    conn: &Connection,
    caller: &Principal,
    req: BatchInstanceRequest,
) -> Result<Reply> {
    let service = service_key(&req.target)?;
    caller.require(Resource::Naming, Access::Write, &service.namespace)?;
    if req.r#type != "batchRegisterInstance" {
        return Err(Error::invalid(format!(
            "BatchInstanceRequest type {:?}: only batchRegisterInstance is accepted",
            req.r#type
        )));
    }
    if req.instances.len() > 1000 {
        return Err(Error::invalid(format!(
            "{} instances in one batch; the limit is 1000",
            req.instances.len()
        )));
    }
    let records = req
        .instances
        .iter()
        .enumerate()
        .map(|(n, i)| {
            record_of(i).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::invalid(format!("instances[{n}]: {m}")),
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    conn.ensure_session(&front.distro)?;
    front.distro.publish(&conn.id, &service, records)?;
    Ok(Reply::ok(
        "BatchInstanceResponse",
        serde_json::json!({ "type": req.r#type }),
    ))
}

pub(crate) async fn persistent(
    front: &Front,
    caller: &Principal,
    req: InstanceRequest,
) -> Result<Reply> {
    let service = service_key(&req.target)?;
    caller.require(Resource::Naming, Access::Write, &service.namespace)?;
    match req.r#type.as_str() {
        "registerInstance" => {
            let register = Register {
                service,
                instances: vec![record_of(&req.instance)?],
            };
            front.client.mutate(register, None).await?;
        }
        "deregisterInstance" => {
            let i = &req.instance;
            let port = u32::try_from(i.port)
                .map_err(|_| Error::invalid(format!("port {} is out of range", i.port)))?;
            let addr = validate::addr(&i.ip, port, &i.cluster_name)?;
            front
                .client
                .mutate(Deregister { service, addr }, None)
                .await?;
        }
        other => {
            return Err(Error::invalid(format!(
                "PersistentInstanceRequest type {other:?}: expected registerInstance or deregisterInstance"
            )))
        }
    }
    Ok(Reply::ok(
        "InstanceResponse",
        serde_json::json!({ "type": req.r#type }),
    ))
}

pub(crate) async fn subscribe(
    front: &Front,
    conn: &Connection,
    caller: &Principal,
    req: SubscribeServiceRequest,
) -> Result<Reply> {
    let service = service_key(&req.target)?;
    caller.require(Resource::Naming, Access::Read, &service.namespace)?;
    clusters_of(&req.clusters)?;
    {
        let mut subs = lock(&conn.subscriptions);
        if req.subscribe {
            subs.insert(service.clone(), req.clusters.clone());
        } else {
            subs.remove(&service);
        }
    }
    let info = service_info(front, &service, &req.clusters, false).await?;
    Ok(Reply::ok(
        "SubscribeServiceResponse",
        serde_json::json!({ "serviceInfo": info }),
    ))
}

pub(crate) async fn query(
    front: &Front,
    caller: &Principal,
    req: ServiceQueryRequest,
) -> Result<Reply> {
    let service = service_key(&req.target)?;
    caller.require(Resource::Naming, Access::Read, &service.namespace)?;
    let healthy_only = req.healthy_only || req.health_only;
    let info = service_info(front, &service, &req.cluster, healthy_only).await?;
    Ok(Reply::ok(
        "QueryServiceResponse",
        serde_json::json!({ "serviceInfo": info }),
    ))
}

pub(crate) async fn list(
    front: &Front,
    caller: &Principal,
    req: ServiceListRequest,
) -> Result<Reply> {
    let (namespace, group) =
        validate::namespace_and_group(&req.target.namespace, &req.target.group_name)?;
    caller.require(Resource::Naming, Access::Read, &namespace)?;
    let (page_no, page_size) =
        crate::groups::config::validate::page(req.page_no.max(1), req.page_size.max(1))?;
    let offset = (page_no as u64 - 1) * page_size as u64;
    let (services, total) = list_services(
        &front.client,
        &front.distro,
        namespace,
        group,
        (offset, page_size),
        ReadLevel::Stale,
        None,
    )
    .await?;
    let names: Vec<String> = services.into_iter().map(|(name, _, _)| name).collect();
    Ok(Reply::ok(
        "ServiceListResponse",
        serde_json::json!({ "count": total, "serviceNames": names }),
    ))
}

/// The push loop: services changed on this node (persistent or ephemeral) are pushed
/// to their subscribers.
pub(crate) fn start_pushes(front: &Arc<Front>, stop: &watch::Sender<bool>) -> JoinHandle<()> {
    let front = front.clone();
    let mut stop = stop.subscribe();
    let mut naming = front.naming_feed.subscribe();
    let mut ephemeral = front.distro.subscribe();
    tokio::spawn(async move {
        loop {
            let mut changed = HashSet::new();
            let mut all = false;
            // Wait for a first change, then gather what follows within the delay.
            let mut deadline = None;
            loop {
                let sleep = async move {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = sleep => break,
                    ev = naming.recv() => match ev {
                        Ok(FeedEvent::Changed(c)) => { changed.insert(c.service); }
                        Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => all = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    ev = ephemeral.recv() => match ev {
                        Ok(FeedEvent::Changed(c)) => { changed.insert(c.service); }
                        Ok(FeedEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => all = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + PUSH_DELAY);
                }
            }
            for conn in front.conns.all() {
                let subs: Vec<(ServiceKey, String)> = lock(&conn.subscriptions)
                    .iter()
                    .filter(|(s, _)| all || changed.contains(*s))
                    .map(|(s, c)| (s.clone(), c.clone()))
                    .collect();
                for (service, clusters) in subs {
                    tokio::spawn(push(front.clone(), conn.clone(), service, clusters));
                }
            }
        }
    })
}

/// Push the current state of `service` to one subscriber, retrying while it is
/// subscribed and connected.
async fn push(front: Arc<Front>, conn: Arc<Connection>, service: ServiceKey, clusters: String) {
    for attempt in 0..PUSH_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(PUSH_RETRY_DELAY).await;
        }
        let still = lock(&conn.subscriptions).get(&service) == Some(&clusters);
        if conn.is_closed() || !still {
            return;
        }
        let info = match service_info(&front, &service, &clusters, false).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(%service, error = %e, "building a Nacos push");
                continue;
            }
        };
        let notify = Reply::push(
            "NotifySubscriberRequest",
            NotifySubscriberRequest { service_info: info },
        );
        if conn
            .request(notify, &front.conns.push_ids, PUSH_TIMEOUT)
            .await
        {
            return;
        }
    }
    tracing::debug!(connection = %conn.id, %service, "a Nacos subscriber did not ack its push");
}
