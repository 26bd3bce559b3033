//! Deterministic apply and query of the naming group.

use std::sync::Arc;

use crate::error::Error;
use crate::groups::naming::model::*;
use crate::groups::naming::NamingFeed;
use crate::raft::kv::{ApplyError, KvTxn, KvView, Processor};
use crate::raft::types::Command;

pub struct NamingProcessor {
    feed: Arc<NamingFeed>,
}

impl NamingProcessor {
    pub fn new(feed: Arc<NamingFeed>) -> Self {
        NamingProcessor { feed }
    }
}

use crate::groups::codec::{dec, dec_message, enc};

type Txn<'a> = KvTxn<'a, NamingChange>;

fn load_service(txn: &Txn<'_>, key: &ServiceKey) -> Result<Option<ServiceRecord>, ApplyError> {
    Ok(match txn.get(&key.service_key())? {
        Some(b) => Some(dec(&b, "service record")?),
        None => None,
    })
}

fn save_service(txn: &mut Txn<'_>, key: &ServiceKey, rec: &ServiceRecord) {
    txn.put(&key.service_key(), enc(rec));
}

fn load_instance(
    txn: &Txn<'_>,
    key: &ServiceKey,
    addr: &InstanceAddr,
) -> Result<Option<InstanceRecord>, ApplyError> {
    Ok(match txn.get(&key.instance_key(addr))? {
        Some(b) => Some(dec(&b, "instance record")?),
        None => None,
    })
}

/// Store a service's settings (create or replace) and announce it.
fn put_settings(
    txn: &mut Txn<'_>,
    service: ServiceKey,
    settings: ServiceSettings,
    index: u64,
) -> NamingReply {
    let rec = ServiceRecord {
        protect_threshold: settings.protect_threshold,
        metadata: settings.metadata,
        selector: settings.selector,
        revision: index,
    };
    save_service(txn, &service, &rec);
    txn.emit(NamingChange {
        service,
        index,
        record: Some(rec.clone()),
        kind: ChangeKind::ServiceUpdated,
    });
    NamingReply::Service { record: rec }
}

impl Processor for NamingProcessor {
    type Event = NamingChange;

    fn apply(&self, txn: &mut Txn<'_>, index: u64, cmd: &Command) -> Result<Vec<u8>, ApplyError> {
        let command: NamingCommand = dec_message(&cmd.payload, "naming command")?;
        let reply = match command {
            NamingCommand::Register { service, instances } => {
                let mut rec = load_service(txn, &service)?.unwrap_or_default();
                rec.revision = index;
                save_service(txn, &service, &rec);
                let mut created = Vec::with_capacity(instances.len());
                for inst in instances {
                    created.push(load_instance(txn, &service, &inst.addr)?.is_none());
                    txn.put(&service.instance_key(&inst.addr), enc(&inst));
                    txn.emit(NamingChange {
                        service: service.clone(),
                        index,
                        record: Some(rec.clone()),
                        kind: ChangeKind::InstanceUpserted(inst),
                    });
                }
                NamingReply::Registered {
                    created,
                    revision: index,
                }
            }
            NamingCommand::Update { service, instance } => {
                let Some(mut rec) = load_service(txn, &service)? else {
                    return Err(Error::NotFound(format!("service {service} does not exist")).into());
                };
                if load_instance(txn, &service, &instance.addr)?.is_none() {
                    return Err(Error::NotFound(format!(
                        "instance {} of service {service} does not exist",
                        instance.addr
                    ))
                    .into());
                }
                rec.revision = index;
                save_service(txn, &service, &rec);
                txn.put(&service.instance_key(&instance.addr), enc(&instance));
                txn.emit(NamingChange {
                    service,
                    index,
                    record: Some(rec),
                    kind: ChangeKind::InstanceUpserted(instance),
                });
                NamingReply::Registered {
                    created: vec![false],
                    revision: index,
                }
            }
            NamingCommand::Deregister { service, addr } => {
                let existing = load_instance(txn, &service, &addr)?;
                match (existing, load_service(txn, &service)?) {
                    (Some(inst), Some(mut rec)) => {
                        rec.revision = index;
                        save_service(txn, &service, &rec);
                        txn.delete(&service.instance_key(&addr));
                        txn.emit(NamingChange {
                            service,
                            index,
                            record: Some(rec),
                            kind: ChangeKind::InstanceRemoved(inst),
                        });
                        NamingReply::Deregistered {
                            existed: true,
                            revision: index,
                        }
                    }
                    _ => NamingReply::Deregistered {
                        existed: false,
                        revision: 0,
                    },
                }
            }
            NamingCommand::CreateService { service, settings } => {
                if load_service(txn, &service)?.is_some() {
                    return Err(
                        Error::AlreadyExists(format!("service {service} already exists")).into(),
                    );
                }
                put_settings(txn, service, settings, index)
            }
            NamingCommand::UpdateService { service, settings } => {
                if load_service(txn, &service)?.is_none() {
                    return Err(Error::NotFound(format!("service {service} does not exist")).into());
                }
                put_settings(txn, service, settings, index)
            }
            NamingCommand::DeleteService { service } => {
                if load_service(txn, &service)?.is_none() {
                    return Err(Error::NotFound(format!("service {service} does not exist")).into());
                }
                let remaining = txn.scan_keys(&service.instance_prefix())?.len();
                if remaining > 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "service {service} still has {remaining} instance(s); deregister them first"
                    ))
                    .into());
                }
                txn.delete(&service.service_key());
                txn.emit(NamingChange {
                    service,
                    index,
                    record: None,
                    kind: ChangeKind::ServiceDeleted,
                });
                NamingReply::Deleted { revision: index }
            }
        };
        Ok(enc(&reply))
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        let query: NamingQuery = dec_message(query, "naming query")?;
        let reply = match query {
            NamingQuery::Get {
                service,
                clusters,
                healthy_only,
            } => {
                let record: Option<ServiceRecord> = match view.get(&service.service_key())? {
                    Some(b) => Some(dec(&b, "service record")?),
                    None => None,
                };
                let mut instances = Vec::new();
                if record.is_some() {
                    for (_, v) in view.scan(&service.instance_prefix(), None, usize::MAX)? {
                        let inst: InstanceRecord = dec(&v, "instance record")?;
                        if (clusters.is_empty() || clusters.contains(&inst.addr.cluster))
                            && (!healthy_only || inst.healthy)
                        {
                            instances.push(inst);
                        }
                    }
                }
                NamingReply::Detail { record, instances }
            }
            NamingQuery::List {
                namespace,
                group,
                offset,
                limit,
            } => {
                let prefix = ServiceKey::group_prefix(&namespace, &group);
                let mut services = Vec::new();
                let mut total = 0u64;
                view.for_each(&prefix, |k, v| {
                    if total >= offset && services.len() < limit as usize {
                        let Some(name) = ServiceKey::name_from_service_key(&k) else {
                            return Ok(());
                        };
                        let rec: ServiceRecord = dec(&v, "service record")?;
                        let key = ServiceKey {
                            namespace: namespace.clone(),
                            group: group.clone(),
                            name: name.clone(),
                        };
                        let count =
                            view.scan(&key.instance_prefix(), None, usize::MAX)?.len() as u32;
                        services.push((name, count, rec.revision));
                    }
                    total += 1;
                    Ok(())
                })?;
                NamingReply::Page { services, total }
            }
        };
        Ok(enc(&reply))
    }

    fn on_applied(&self, events: Vec<NamingChange>) {
        self.feed.publish(events);
    }

    fn on_restored(&self) {
        self.feed.resync();
    }
}
