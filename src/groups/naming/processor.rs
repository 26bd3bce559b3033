//! Deterministic apply and query of the naming group: one method per operation.

use std::sync::Arc;

use crate::codec::{decode_message, decode_stored, encode};
use crate::error::Error;
use crate::groups::client::encode_reply;
use crate::groups::naming::model::*;
use crate::groups::naming::NamingFeed;
use crate::raft::rocks_sm::{ApplyError, KvTxn, KvView, Processor};
use crate::raft::types::Command;

type Txn<'a> = KvTxn<'a, NamingChange>;

pub struct NamingProcessor {
    feed: Arc<NamingFeed>,
}

fn load_service(txn: &Txn<'_>, key: &ServiceKey) -> Result<Option<ServiceRecord>, ApplyError> {
    Ok(match txn.get(&key.service_key())? {
        Some(b) => Some(decode_stored(&b, "service record")?),
        None => None,
    })
}

fn existing_service(txn: &Txn<'_>, key: &ServiceKey) -> Result<ServiceRecord, ApplyError> {
    load_service(txn, key)?
        .ok_or_else(|| Error::NotFound(format!("service {key} does not exist")).into())
}

fn load_instance(
    txn: &Txn<'_>,
    key: &ServiceKey,
    addr: &InstanceAddr,
) -> Result<Option<InstanceRecord>, ApplyError> {
    Ok(match txn.get(&key.instance_key(addr))? {
        Some(b) => Some(decode_stored(&b, "instance record")?),
        None => None,
    })
}

/// Store the service with its revision moved to `index` and announce the change.
fn touch_service(
    txn: &mut Txn<'_>,
    service: ServiceKey,
    mut rec: ServiceRecord,
    index: u64,
    kind: ChangeKind,
) -> ServiceRecord {
    rec.revision = index;
    txn.put(&service.service_key(), encode(&rec));
    txn.emit(NamingChange {
        service,
        index,
        record: Some(rec.clone()),
        kind,
    });
    rec
}

fn settings_record(settings: ServiceSettings) -> ServiceRecord {
    ServiceRecord {
        protect_threshold: settings.protect_threshold,
        metadata: settings.metadata,
        selector: settings.selector,
        revision: 0,
    }
}

impl NamingProcessor {
    pub fn new(feed: Arc<NamingFeed>) -> Self {
        NamingProcessor { feed }
    }

    fn register(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        r: Register,
    ) -> Result<Registered, ApplyError> {
        let rec = load_service(txn, &r.service)?.unwrap_or_default();
        let mut created = Vec::with_capacity(r.instances.len());
        for inst in &r.instances {
            created.push(load_instance(txn, &r.service, &inst.addr)?.is_none());
            txn.put(&r.service.instance_key(&inst.addr), encode(inst));
        }
        touch_service(
            txn,
            r.service,
            rec,
            index,
            ChangeKind::InstancesUpserted(r.instances),
        );
        Ok(Registered {
            created,
            revision: index,
        })
    }

    fn update_instance(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        u: UpdateInstance,
    ) -> Result<Registered, ApplyError> {
        let rec = existing_service(txn, &u.service)?;
        if load_instance(txn, &u.service, &u.instance.addr)?.is_none() {
            return Err(Error::NotFound(format!(
                "instance {} of service {} does not exist",
                u.instance.addr, u.service
            ))
            .into());
        }
        txn.put(
            &u.service.instance_key(&u.instance.addr),
            encode(&u.instance),
        );
        touch_service(
            txn,
            u.service,
            rec,
            index,
            ChangeKind::InstancesUpserted(vec![u.instance]),
        );
        Ok(Registered {
            created: vec![false],
            revision: index,
        })
    }

    fn deregister(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        d: Deregister,
    ) -> Result<Deregistered, ApplyError> {
        let existing = load_instance(txn, &d.service, &d.addr)?;
        let (Some(inst), Some(rec)) = (existing, load_service(txn, &d.service)?) else {
            return Ok(Deregistered {
                existed: false,
                revision: 0,
            });
        };
        txn.delete(&d.service.instance_key(&d.addr));
        touch_service(
            txn,
            d.service,
            rec,
            index,
            ChangeKind::InstancesRemoved(vec![inst]),
        );
        Ok(Deregistered {
            existed: true,
            revision: index,
        })
    }

    fn create_service(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        c: CreateService,
    ) -> Result<ServiceRecord, ApplyError> {
        if load_service(txn, &c.service)?.is_some() {
            return Err(
                Error::AlreadyExists(format!("service {} already exists", c.service)).into(),
            );
        }
        Ok(touch_service(
            txn,
            c.service,
            settings_record(c.settings),
            index,
            ChangeKind::ServiceUpdated,
        ))
    }

    fn update_service(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        u: UpdateService,
    ) -> Result<ServiceRecord, ApplyError> {
        existing_service(txn, &u.service)?;
        Ok(touch_service(
            txn,
            u.service,
            settings_record(u.settings),
            index,
            ChangeKind::ServiceUpdated,
        ))
    }

    fn delete_service(
        &self,
        txn: &mut Txn<'_>,
        index: u64,
        d: DeleteService,
    ) -> Result<Deleted, ApplyError> {
        existing_service(txn, &d.service)?;
        let remaining = txn.scan_keys(&d.service.instance_prefix())?.len();
        if remaining > 0 {
            return Err(Error::FailedPrecondition(format!(
                "service {} still has {remaining} instance(s); deregister them first",
                d.service
            ))
            .into());
        }
        txn.delete(&d.service.service_key());
        txn.emit(NamingChange {
            service: d.service,
            index,
            record: None,
            kind: ChangeKind::ServiceDeleted,
        });
        Ok(Deleted { revision: index })
    }

    fn get_service(&self, view: &KvView<'_>, q: GetService) -> Result<ServiceDetail, Error> {
        let record: Option<ServiceRecord> = match view.get(&q.service.service_key())? {
            Some(b) => Some(decode_stored(&b, "service record")?),
            None => None,
        };
        let mut instances = Vec::new();
        if record.is_some() {
            for (_, v) in view.scan(&q.service.instance_prefix(), None, usize::MAX)? {
                let inst: InstanceRecord = decode_stored(&v, "instance record")?;
                if (q.clusters.is_empty() || q.clusters.contains(&inst.addr.cluster))
                    && (!q.healthy_only || inst.healthy)
                {
                    instances.push(inst);
                }
            }
        }
        Ok(ServiceDetail {
            record,
            instances,
            as_of: view.applied_index()?,
        })
    }

    fn list_services(&self, view: &KvView<'_>, q: ListServices) -> Result<ServicePage, Error> {
        let prefix = ServiceKey::group_prefix(&q.namespace, &q.group);
        let mut services = Vec::new();
        let mut total = 0u64;
        view.for_each(&prefix, |k, v| {
            let Some(name) = ServiceKey::name_from_service_key(&k) else {
                return Ok(());
            };
            if total >= q.offset && services.len() < q.limit as usize {
                let rec: ServiceRecord = decode_stored(&v, "service record")?;
                let key = ServiceKey {
                    namespace: q.namespace.clone(),
                    group: q.group.clone(),
                    name: name.clone(),
                };
                let count = view.scan(&key.instance_prefix(), None, usize::MAX)?.len() as u32;
                services.push((name, count, rec.revision));
            }
            total += 1;
            Ok(())
        })?;
        Ok(ServicePage { services, total })
    }
}

impl Processor for NamingProcessor {
    type Event = NamingChange;

    fn apply(&self, txn: &mut Txn<'_>, index: u64, cmd: &Command) -> Result<Vec<u8>, ApplyError> {
        match decode_message(&cmd.payload, "naming command")? {
            NamingCommand::Register(c) => encode_reply(self.register(txn, index, c)),
            NamingCommand::UpdateInstance(c) => encode_reply(self.update_instance(txn, index, c)),
            NamingCommand::Deregister(c) => encode_reply(self.deregister(txn, index, c)),
            NamingCommand::CreateService(c) => encode_reply(self.create_service(txn, index, c)),
            NamingCommand::UpdateService(c) => encode_reply(self.update_service(txn, index, c)),
            NamingCommand::DeleteService(c) => encode_reply(self.delete_service(txn, index, c)),
        }
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        match decode_message(query, "naming query")? {
            NamingQuery::GetService(q) => encode_reply(self.get_service(view, q)),
            NamingQuery::ListServices(q) => encode_reply(self.list_services(view, q)),
        }
    }

    fn on_applied(&self, events: Vec<NamingChange>) {
        self.feed.publish(events);
    }

    fn on_restored(&self) {
        self.feed.resync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::rocks_sm::ProcessorHarness;

    fn harness() -> ProcessorHarness<NamingProcessor> {
        ProcessorHarness::new(NamingProcessor::new(Arc::new(NamingFeed::new(16))))
    }

    fn svc(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: name.into(),
        }
    }

    fn inst(ip: &str, port: u16) -> InstanceRecord {
        InstanceRecord {
            addr: InstanceAddr {
                ip: ip.into(),
                port,
                cluster: "DEFAULT".into(),
            },
            weight: 1.0,
            healthy: true,
            enabled: true,
            metadata: Default::default(),
        }
    }

    fn register(name: &str, instances: Vec<InstanceRecord>) -> NamingCommand {
        NamingCommand::Register(Register {
            service: svc(name),
            instances,
        })
    }

    fn deregister(name: &str, ip: &str, port: u16) -> NamingCommand {
        NamingCommand::Deregister(Deregister {
            service: svc(name),
            addr: inst(ip, port).addr,
        })
    }

    fn service_op(name: &str, op: &str) -> NamingCommand {
        let service = svc(name);
        let settings = ServiceSettings {
            protect_threshold: 0.5,
            ..Default::default()
        };
        match op {
            "create" => NamingCommand::CreateService(CreateService { service, settings }),
            "update" => NamingCommand::UpdateService(UpdateService { service, settings }),
            _ => NamingCommand::DeleteService(DeleteService { service }),
        }
    }

    /// Each row: a command, and whether it is applied (`Ok`) or refused with a
    /// message containing the text.
    #[test]
    fn naming_apply_table() {
        let mut h = harness();
        let mut moved = inst("10.0.0.1", 80);
        moved.weight = 3.0;
        let rows: Vec<(NamingCommand, Result<(), &str>)> = vec![
            (service_op("web", "update"), Err("does not exist")),
            (service_op("web", "create"), Ok(())),
            (service_op("web", "create"), Err("already exists")),
            (
                register("web", vec![inst("10.0.0.1", 80), inst("10.0.0.2", 80)]),
                Ok(()),
            ),
            (service_op("web", "delete"), Err("still has 2 instance(s)")),
            (
                NamingCommand::UpdateInstance(UpdateInstance {
                    service: svc("web"),
                    instance: inst("10.9.9.9", 1),
                }),
                Err("does not exist"),
            ),
            (
                NamingCommand::UpdateInstance(UpdateInstance {
                    service: svc("web"),
                    instance: moved,
                }),
                Ok(()),
            ),
            (deregister("web", "10.0.0.2", 80), Ok(())),
            (deregister("web", "10.0.0.2", 80), Ok(())),
            (register("api", vec![inst("10.0.1.1", 90)]), Ok(())),
        ];
        for (i, (cmd, want)) in rows.into_iter().enumerate() {
            match (h.apply(1_000, &cmd), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(text)) => {
                    assert!(e.to_string().contains(text), "row {i}: {e} lacks {text:?}")
                }
                (got, want) => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
        let detail: ServiceDetail = h.query(&NamingQuery::GetService(GetService {
            service: svc("web"),
            clusters: vec![],
            healthy_only: false,
        }));
        assert_eq!(detail.instances.len(), 1);
        assert_eq!(detail.instances[0].weight, 3.0);
        assert_eq!(detail.record.map(|r| r.protect_threshold), Some(0.5));
        let page: ServicePage = h.query(&NamingQuery::ListServices(ListServices {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            offset: 0,
            limit: 10,
        }));
        let names: Vec<(String, u32)> = page.services.into_iter().map(|(n, c, _)| (n, c)).collect();
        assert_eq!(names, vec![("api".into(), 1), ("web".into(), 1)]);
    }

    #[test]
    fn a_batch_reports_each_instance_and_a_repeat_is_an_update() {
        let mut h = harness();
        let batch = vec![inst("10.0.0.1", 80), inst("10.0.0.2", 80)];
        let first: Registered = h.reply(1, &register("web", batch.clone())).unwrap();
        assert_eq!(first.created, vec![true, true]);
        let again: Registered = h.reply(1, &register("web", batch)).unwrap();
        assert_eq!((again.created, again.revision), (vec![false, false], 2));
        let gone: Deregistered = h.reply(1, &deregister("web", "10.0.0.1", 80)).unwrap();
        assert_eq!((gone.existed, gone.revision), (true, 3));
        let absent: Deregistered = h.reply(1, &deregister("web", "10.0.0.1", 80)).unwrap();
        assert_eq!((absent.existed, absent.revision), (false, 0));
    }
}
