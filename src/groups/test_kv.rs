//! A replicated key-value state machine: put, delete, compare-and-swap, get, scan.
//!
//! It is the smallest real group: the integration tests plug it into nodes (it is not
//! one of the built-in groups) and drive the raft layer through it.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_message as decode, encode};
use crate::error::Error;
use crate::raft::rocks_sm::{ApplyError, KvTxn, KvView, Processor};
use crate::raft::types::Command;

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Write `value` (or delete, if `None`) only if the current value equals `expected`
    /// (`None`: the key must be absent). Fails with `FailedPrecondition` otherwise.
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    Get {
        key: Vec<u8>,
    },
    Scan {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    },
}

/// The answer to a command or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// A write was applied at this log index; `previous` is the value it replaced.
    Written {
        index: u64,
        previous: Option<Vec<u8>>,
    },
    Value(Option<Vec<u8>>),
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
}

pub const MAX_KEY: usize = 4096;

impl KvCommand {
    pub fn into_command(self) -> Command {
        let (op, key) = match &self {
            KvCommand::Put { key, .. } => ("put", key),
            KvCommand::Delete { key } => ("delete", key),
            KvCommand::Cas { key, .. } => ("cas", key),
        };
        let key = String::from_utf8_lossy(key).into_owned();
        Command::new(op, key, encode(&self))
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::invalid(format!(
            "key must be 1..={MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

/// The processor.
pub struct KvProcessor;

impl Processor for KvProcessor {
    type Event = ();

    fn apply(&self, txn: &mut KvTxn<'_>, index: u64, cmd: &Command) -> Result<Vec<u8>, ApplyError> {
        let op: KvCommand = decode(&cmd.payload, "kv command")?;
        let resp = match op {
            KvCommand::Put { key, value } => {
                check_key(&key)?;
                let previous = txn.get(&key)?;
                txn.put(&key, value);
                KvResponse::Written { index, previous }
            }
            KvCommand::Delete { key } => {
                check_key(&key)?;
                let previous = txn.get(&key)?;
                txn.delete(&key);
                KvResponse::Written { index, previous }
            }
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                check_key(&key)?;
                let current = txn.get(&key)?;
                if current != expected {
                    return Err(Error::FailedPrecondition(format!(
                        "compare-and-swap on {:?}: current value differs from expected",
                        String::from_utf8_lossy(&key)
                    ))
                    .into());
                }
                match value {
                    Some(v) => txn.put(&key, v),
                    None => txn.delete(&key),
                }
                KvResponse::Written {
                    index,
                    previous: current,
                }
            }
        };
        Ok(encode(&resp))
    }

    fn query(&self, view: &KvView<'_>, query: &[u8]) -> Result<Vec<u8>, Error> {
        let resp = match decode::<KvQuery>(query, "kv query")? {
            KvQuery::Get { key } => KvResponse::Value(view.get(&key)?),
            KvQuery::Scan {
                prefix,
                start_after,
                limit,
            } => KvResponse::Pairs(view.scan(
                &prefix,
                start_after.as_deref(),
                limit.min(10_000) as usize,
            )?),
        };
        Ok(encode(&resp))
    }
}
