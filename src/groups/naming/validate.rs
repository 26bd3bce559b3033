//! Input rules of the naming API (documented in `proto/nacosd/v1/naming.proto`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::groups::names::{
    self, check_name as check, is_id_char as ns_char, is_name_char as name_char, or_default,
    DEFAULT_GROUP,
};
use crate::groups::naming::model::{InstanceAddr, Selector, ServiceKey, ServiceSettings};

pub const DEFAULT_CLUSTER: &str = "DEFAULT";
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY: usize = 128;
pub const MAX_METADATA_VALUE: usize = 1024;
pub const MAX_METADATA_TOTAL: usize = 16 * 1024;
pub const MAX_WEIGHT: f64 = 10_000.0;

pub fn namespace_and_group(namespace: &str, group: &str) -> Result<(String, String)> {
    let namespace = names::namespace(namespace)?;
    let group = or_default(group, DEFAULT_GROUP);
    check("group", group, 128, name_char, "[A-Za-z0-9._:-]")?;
    Ok((namespace, group.into()))
}

pub fn service_key(namespace: &str, group: &str, name: &str) -> Result<ServiceKey> {
    let (namespace, group) = namespace_and_group(namespace, group)?;
    check("service_name", name, 256, name_char, "[A-Za-z0-9._:-]")?;
    Ok(ServiceKey {
        namespace,
        group,
        name: name.into(),
    })
}

pub fn cluster(c: &str) -> Result<String> {
    let c = if c.is_empty() { DEFAULT_CLUSTER } else { c };
    check("cluster_name", c, 64, ns_char, "[A-Za-z0-9_-]")?;
    Ok(c.into())
}

/// An IPv4/IPv6 literal or an RFC 1123 hostname.
pub fn ip(ip: &str) -> Result<String> {
    if ip.is_empty() {
        return Err(Error::invalid("ip must not be empty"));
    }
    if ip.parse::<IpAddr>().is_ok() {
        return Ok(ip.into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if ip.len() <= 253 && ip.split('.').all(label_ok) {
        Ok(ip.to_ascii_lowercase())
    } else {
        Err(Error::invalid(format!(
            "ip {ip:?} is neither an IPv4/IPv6 address nor a valid hostname"
        )))
    }
}

pub fn port(port: u32) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(Error::invalid(format!("port {port} is outside 1..=65535"))),
    }
}

pub fn addr(ip_: &str, port_: u32, cluster_: &str) -> Result<InstanceAddr> {
    Ok(InstanceAddr {
        ip: ip(ip_)?,
        port: port(port_)?,
        cluster: cluster(cluster_)?,
    })
}

pub fn weight(w: Option<f64>) -> Result<f64> {
    let w = w.unwrap_or(1.0);
    if !(0.0..=MAX_WEIGHT).contains(&w) || w.is_nan() {
        return Err(Error::invalid(format!("weight {w} is outside 0..=10000")));
    }
    Ok(w)
}

pub fn metadata(m: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(format!(
            "metadata has {} entries; the limit is {MAX_METADATA_ENTRIES}",
            m.len()
        )));
    }
    let mut total = 0;
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(Error::invalid(format!(
                "metadata key {k:?} must be 1..={MAX_METADATA_KEY} bytes"
            )));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(Error::invalid(format!(
                "metadata value of {k:?} is {} bytes; the limit is {MAX_METADATA_VALUE}",
                v.len()
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_TOTAL {
        return Err(Error::invalid(format!(
            "metadata is {total} bytes in all; the limit is {MAX_METADATA_TOTAL}"
        )));
    }
    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub fn settings(
    protect_threshold: f32,
    meta: &HashMap<String, String>,
    selector_type: &str,
    selector_expression: &str,
) -> Result<ServiceSettings> {
    if !(0.0..=1.0).contains(&protect_threshold) || protect_threshold.is_nan() {
        return Err(Error::invalid(format!(
            "protect_threshold {protect_threshold} is outside 0..=1"
        )));
    }
    let t = if selector_type.is_empty() {
        "none"
    } else {
        selector_type
    };
    if t != "none" && t != "label" {
        return Err(Error::invalid(format!(
            "selector type {t:?} is not one of none, label"
        )));
    }
    if selector_expression.len() > 1024 {
        return Err(Error::invalid(
            "selector expression is longer than 1024 bytes",
        ));
    }
    Ok(ServiceSettings {
        protect_threshold,
        metadata: metadata(meta)?,
        selector: Selector {
            r#type: t.into(),
            expression: selector_expression.into(),
        },
    })
}
