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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NamingCommand {
    /// Upsert instances (one, or a batch: all or nothing), creating the service if needed.
    Register {
        service: ServiceKey,
        instances: Vec<InstanceRecord>,
    },
    /// Replace an existing instance; NotFound otherwise.
    Update {
        service: ServiceKey,
        instance: InstanceRecord,
    },
    Deregister {
        service: ServiceKey,
        addr: InstanceAddr,
    },
    CreateService {
        service: ServiceKey,
        settings: ServiceSettings,
    },
    UpdateService {
        service: ServiceKey,
        settings: ServiceSettings,
    },
    DeleteService {
        service: ServiceKey,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NamingQuery {
    Get {
        service: ServiceKey,
        clusters: Vec<String>,
        healthy_only: bool,
    },
    List {
        namespace: String,
        group: String,
        offset: u64,
        limit: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NamingReply {
    Registered {
        created: Vec<bool>,
        revision: u64,
    },
    Deregistered {
        existed: bool,
        revision: u64,
    },
    Service {
        record: ServiceRecord,
    },
    Deleted {
        revision: u64,
    },
    Detail {
        record: Option<ServiceRecord>,
        instances: Vec<InstanceRecord>,
    },
    Page {
        services: Vec<(String, u32, u64)>,
        total: u64,
    },
}

/// What a subscriber hears about a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    InstanceUpserted(InstanceRecord),
    InstanceRemoved(InstanceRecord),
    ServiceUpdated,
    ServiceDeleted,
}

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
