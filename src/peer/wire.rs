//! What travels on the peer port besides the protobuf envelopes: the metadata naming
//! the sender, and the classification of call failures.
//!
//! Payload encoding itself is [`crate::codec`] (bincode, bounded by the input length).

use tonic::metadata::MetadataMap;

use crate::config::NodeId;
use crate::raft::identity::ClusterId;

/// Metadata key: the sender's cluster id.
pub const CLUSTER_HEADER: &str = "x-nacosd-cluster";
/// Metadata key: the sender's node id.
pub const NODE_HEADER: &str = "x-nacosd-node";

/// Who sent a peer call, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub cluster: Option<ClusterId>,
    pub node: Option<NodeId>,
}

impl Sender {
    pub fn of(metadata: &MetadataMap) -> Self {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        Sender {
            cluster: text(CLUSTER_HEADER).and_then(ClusterId::parse),
            node: text(NODE_HEADER).and_then(|v| v.parse().ok()),
        }
    }

    /// Stamp `metadata` as sent by `node` of `cluster`.
    pub fn stamp(metadata: &mut MetadataMap, cluster: Option<ClusterId>, node: NodeId) {
        if let Some(c) = cluster {
            if let Ok(v) = c.to_string().parse() {
                metadata.insert(CLUSTER_HEADER, v);
            }
        }
        if let Ok(v) = node.to_string().parse() {
            metadata.insert(NODE_HEADER, v);
        }
    }
}

/// True when a failed call provably never reached the peer: the connection could not be
/// established (refused, unroutable, name not resolvable, connect timeout), so retrying
/// cannot apply anything twice. Decided on the error's type — tonic wraps every failure
/// of its connector in [`tonic::ConnectError`] and keeps it as the status's source —
/// never on message text. A reset or broken connection after the request went out is
/// not "never sent": the peer may have taken it.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_metadata_reads_back() {
        let mut md = MetadataMap::new();
        let cluster = ClusterId(0x1234);
        Sender::stamp(&mut md, Some(cluster), 7);
        assert_eq!(
            Sender::of(&md),
            Sender {
                cluster: Some(cluster),
                node: Some(7)
            }
        );
        let mut md = MetadataMap::new();
        Sender::stamp(&mut md, None, 2);
        assert_eq!(Sender::of(&md).cluster, None);
    }

    #[test]
    fn only_a_connect_error_in_the_source_chain_means_never_sent() {
        let mut connect = tonic::Status::unavailable("whatever the text says");
        connect.set_source(std::sync::Arc::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert!(never_sent(&connect));
        // The same words without the type prove nothing.
        let text_only =
            tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(!never_sent(&text_only));
        let mut reset = tonic::Status::unavailable("connection reset");
        reset.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!never_sent(&reset));
    }
}
