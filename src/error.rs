//! The crate's one error type.
//!
//! Variants are grouped by what the caller can do about them, not by where they come
//! from; each maps to exactly one gRPC status code (see [`Error::code`]). Errors are
//! serializable because a follower relays the leader's answer to a forwarded write or
//! read verbatim.
//!
//! Deterministic errors (bad input, not found, a failed precondition) are *answers*:
//! a state machine returns them from `apply` and every replica computes the same one.
//! An I/O error while applying a committed entry is not an answer; it stops the group
//! (see `raft::state_machine`) so that replicas never diverge.

use serde::{Deserialize, Serialize};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error nacosd reports to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The request is malformed or violates a documented limit. Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The addressed object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object already exists and the operation required it not to.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The operation's precondition does not hold (a compare-and-swap mismatch, deleting
    /// a service that still has instances). Nothing was written.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The group has no reachable leader, or the node is shutting down. The write was
    /// not proposed, so retrying is safe.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        /// The leader as last known: (node id, peer address).
        leader: Option<(u64, String)>,
    },
    /// The deadline passed before the operation finished. For a write that was already
    /// proposed this is reported as [`Error::UnknownOutcome`] instead.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A write was handed to a leader but its outcome could not be learned (timeout or
    /// lost connection after proposal). It may or may not have been applied; it is
    /// never retried automatically.
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    /// A request exceeds a size or count limit.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A bug or an unexpected local failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// The call carries no valid credentials (auth is on): no token, or one that is
    /// malformed, forged, expired or whose user is gone.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but its roles do not allow this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }

    pub fn unavailable(msg: impl Into<String>) -> Self {
        Error::Unavailable {
            message: msg.into(),
            leader: None,
        }
    }

    /// The gRPC status code this error maps to.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::Unavailable { .. } => tonic::Code::Unavailable,
            Error::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            // The operation may have taken effect: the client must check before
            // retrying, which is what UNKNOWN tells a gRPC client.
            Error::UnknownOutcome(_) => tonic::Code::Unknown,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::Internal(_) => tonic::Code::Internal,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        if let Error::Unavailable {
            leader: Some((id, addr)),
            ..
        } = &e
        {
            // Machine-readable hint for clients that want to reconnect to the leader.
            if let Ok(v) = format!("{id}={addr}").parse() {
                status.metadata_mut().insert("x-nacosd-leader", v);
            }
        }
        status
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("I/O error: {e}"))
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Internal(format!("rocksdb: {e}"))
    }
}

impl From<bincode::Error> for Error {
    fn from(e: bincode::Error) -> Self {
        Error::Internal(format!("encoding: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_own_code() {
        let cases = [
            (Error::invalid("x"), tonic::Code::InvalidArgument),
            (Error::NotFound("x".into()), tonic::Code::NotFound),
            (Error::AlreadyExists("x".into()), tonic::Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (Error::unavailable("x"), tonic::Code::Unavailable),
            (
                Error::DeadlineExceeded("x".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (Error::UnknownOutcome("x".into()), tonic::Code::Unknown),
            (
                Error::ResourceExhausted("x".into()),
                tonic::Code::ResourceExhausted,
            ),
            (Error::internal("x"), tonic::Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err.clone()).code(), code, "{err}");
        }
    }

    #[test]
    fn unavailable_carries_the_leader_hint() {
        let e = Error::Unavailable {
            message: "not leader of group config".into(),
            leader: Some((2, "node-2:7848".into())),
        };
        let status = tonic::Status::from(e);
        assert_eq!(
            status.metadata().get("x-nacosd-leader").unwrap(),
            "2=node-2:7848"
        );
        assert!(status.message().contains("not leader of group config"));
    }
}
