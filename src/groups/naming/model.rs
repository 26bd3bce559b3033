//! Data of the naming group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// namespace + group + service name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub group: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@@{}", self.namespace, self.group, self.name)
    }
}

const SEP: u8 = 0;
const SERVICE: u8 = b's';
const INSTANCE: u8 = b'n';

impl ServiceKey {
    fn push_parts(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.namespace.as_bytes());
        out.push(SEP);
        out.extend_from_slice(self.group.as_bytes());
        out.push(SEP);
        out.extend_from_slice(self.name.as_bytes());
    }

    /// `s ns \0 group \0 name`
    pub fn service_key(&self) -> Vec<u8> {
        let mut k = vec![SERVICE];
        self.push_parts(&mut k);
        k
    }

    /// `n ns \0 group \0 name \0` — prefix of the service's instances.
    pub fn instance_prefix(&self) -> Vec<u8> {
        let mut k = vec![INSTANCE];
        self.push_parts(&mut k);
        k.push(SEP);
        k
    }

    pub fn instance_key(&self, id: &InstanceAddr) -> Vec<u8> {
        let mut k = self.instance_prefix();
        k.extend_from_slice(id.to_string().as_bytes());
        k
    }

    /// Prefix of every service key of a namespace and group.
    pub fn group_prefix(namespace: &str, group: &str) -> Vec<u8> {
        let mut k = vec![SERVICE];
        k.extend_from_slice(namespace.as_bytes());
        k.push(SEP);
        k.extend_from_slice(group.as_bytes());
        k.push(SEP);
        k
    }

    /// The service name inside a service key under [`ServiceKey::group_prefix`].
    pub fn name_from_service_key(key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(&[SERVICE])?;
        let name = rest.split(|b| *b == SEP).nth(2)?;
        String::from_utf8(name.to_vec()).ok()
    }
}

/// ip + port + cluster: what identifies an instance inside its service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceAddr {
    pub ip: String,
    pub port: u16,
    pub cluster: String,
}

impl std::fmt::Display for InstanceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}#{}", self.ip, self.port, self.cluster)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    pub r#type: String,
    pub expression: String,
}

/// Service settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub protect_threshold: f32,
    pub metadata: BTreeMap<String, String>,
    pub selector: Selector,
    /// Log index of the last change to the service or its instances.
    pub revision: u64,
}

/// A persistent instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub addr: InstanceAddr,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub metadata: BTreeMap<String, String>,
}

impl InstanceRecord {
    /// Nacos instance id: `ip#port#cluster#group@@service`.
    pub fn instance_id(&self, service: &ServiceKey) -> String {
        format!("{}#{}@@{}", self.addr, service.group, service.name)
    }
}

/// Service settings as given by a client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSettings {
    pub protect_threshold: f32,
    pub metadata: BTreeMap<String, String>,
    pub selector: Selector,
}

/// Upsert instances (one, or a batch: all or nothing), creating the service if needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub service: ServiceKey,
    pub instances: Vec<InstanceRecord>,
}

/// Replace an existing instance; `NOT_FOUND` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateInstance {
    pub service: ServiceKey,
    pub instance: InstanceRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deregister {
    pub service: ServiceKey,
    pub addr: InstanceAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateService {
    pub service: ServiceKey,
    pub settings: ServiceSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateService {
    pub service: ServiceKey,
    pub settings: ServiceSettings,
}

/// Delete a service; refused while it has instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteService {
    pub service: ServiceKey,
}

/// The naming group's log entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NamingCommand {
    Register(Register),
    UpdateInstance(UpdateInstance),
    Deregister(Deregister),
    CreateService(CreateService),
    UpdateService(UpdateService),
    DeleteService(DeleteService),
}

/// What a register or an update answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// Per instance: whether it was new.
    pub created: Vec<bool>,
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deregistered {
    pub existed: bool,
    /// The change's log index (0 when nothing was removed).
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub revision: u64,
}

/// A service and its instances (filtered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetService {
    pub service: ServiceKey,
    pub clusters: Vec<String>,
    pub healthy_only: bool,
}

/// The answer to [`GetService`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDetail {
    pub record: Option<ServiceRecord>,
    pub instances: Vec<InstanceRecord>,
    /// The log index the answer reflects: everything applied up to it, nothing after.
    pub as_of: u64,
}

/// A page of a namespace and group's services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListServices {
    pub namespace: String,
    pub group: String,
    pub offset: u64,
    pub limit: u32,
}

/// The answer to [`ListServices`]: (name, instance count, revision) per service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePage {
    pub services: Vec<(String, u32, u64)>,
    pub total: u64,
}

/// The naming group's reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NamingQuery {
    GetService(GetService),
    ListServices(ListServices),
}

/// What a subscriber hears about a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    /// Instances added or replaced by one command (a batch registers several).
    InstancesUpserted(Vec<InstanceRecord>),
    InstancesRemoved(Vec<InstanceRecord>),
    ServiceUpdated,
    ServiceDeleted,
}

/// One command's change of one service: exactly one per (service, log index), so a
/// subscriber that has seen index `i` has seen everything up to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamingChange {
    pub service: ServiceKey,
    pub index: u64,
    /// The service settings after the change (`None` once deleted).
    pub record: Option<ServiceRecord>,
    pub kind: ChangeKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_their_service_and_group() {
        let a = ServiceKey {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: "orders".into(),
        };
        let longer = ServiceKey {
            name: "orders2".into(),
            ..a.clone()
        };
        let addr = InstanceAddr {
            ip: "10.0.0.1".into(),
            port: 8080,
            cluster: "DEFAULT".into(),
        };
        assert!(a.instance_key(&addr).starts_with(&a.instance_prefix()));
        assert!(!longer.instance_key(&addr).starts_with(&a.instance_prefix()));
        assert!(a
            .service_key()
            .starts_with(&ServiceKey::group_prefix("public", "DEFAULT_GROUP")));
        assert!(!a
            .service_key()
            .starts_with(&ServiceKey::group_prefix("public", "DEFAULT")));
        assert_eq!(
            ServiceKey::name_from_service_key(&a.service_key()).as_deref(),
            Some("orders")
        );
        let rec = InstanceRecord {
            addr,
            weight: 1.0,
            healthy: true,
            enabled: true,
            metadata: Default::default(),
        };
        assert_eq!(
            rec.instance_id(&a),
            "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
        );
    }
}
