//! Client-facing gRPC services (port 9848). Handlers are thin: decode and validate,
//! route to a group through the consistency layer, map the error to a status.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod naming;
pub mod session;

use std::time::Duration;

use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::pb;

/// The client's deadline (`grpc-timeout`), less a margin so that our answer, not the
/// transport's cancellation, reaches the client.
pub fn deadline<T>(req: &tonic::Request<T>) -> Option<Duration> {
    let raw = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (d / 20).min(Duration::from_millis(50));
    Some(d.saturating_sub(margin))
}

/// The read level of a request's `consistency` field.
pub fn level(consistency: i32) -> Result<ReadLevel> {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Unspecified) | Ok(pb::Consistency::Linearizable) => {
            Ok(ReadLevel::Linearizable)
        }
        Ok(pb::Consistency::Lease) => Ok(ReadLevel::Lease),
        Ok(pb::Consistency::Stale) => Ok(ReadLevel::Stale),
        Err(_) => Err(Error::invalid(format!(
            "consistency {consistency} is not a known level"
        ))),
    }
}
