//! The one place values become bytes and back: bincode, for Raft log entries, stored
//! records and peer messages.
//!
//! Every decode is bounded by the length of its input: bincode refuses a length prefix
//! that claims more bytes than remain, so a corrupt record or a forged peer message can
//! never make the node allocate more than the bytes it was handed. Two decoders differ
//! only in whose fault a failure is:
//! - [`decode_stored`]: bytes this node wrote itself (its RocksDB, its snapshots): a
//!   failure is local corruption, an `io::Error` of kind `InvalidData`;
//! - [`decode_message`]: bytes from a client or a peer: a failure is the sender's
//!   fault, `INVALID_ARGUMENT`.
//!
//! The options are bincode 1's defaults (fixed-width little-endian integers, trailing
//! bytes allowed), so everything written with them before stays readable.

use std::io;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Encode plain data. Serializing owned data structures into a `Vec` cannot fail (no
/// I/O, no maps with non-string keys issues in bincode), so this does not return a
/// `Result`.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    options()
        .serialize(v)
        .expect("bincode serializes plain data into a Vec")
}

/// The length [`encode`] would produce, without encoding.
pub fn encoded_len<T: Serialize + ?Sized>(v: &T) -> usize {
    options()
        .serialized_size(v)
        .map(|n| n as usize)
        .unwrap_or(usize::MAX)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    options().with_limit(bytes.len() as u64).deserialize(bytes)
}

/// Decode bytes this node stored itself; failure means corrupt local data.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    decode(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt {what} in local storage: {e}"),
        )
    })
}

/// Decode a message from a client or a peer; failure is the sender's fault.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    decode(bytes).map_err(|e| Error::invalid(format!("malformed {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatible_with_plain_bincode_serialize() {
        let v: (u64, String, Vec<u8>) = (7, "x".into(), vec![1, 2, 3]);
        let legacy = bincode::serialize(&v).unwrap();
        assert_eq!(encode(&v), legacy);
        let back: (u64, String, Vec<u8>) = decode_stored(&legacy, "test").unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_forged_length_prefix_is_refused_without_allocating() {
        // A Vec<u8> claiming 2^60 bytes, followed by three.
        let mut forged = (1u64 << 60).to_le_bytes().to_vec();
        forged.extend_from_slice(&[1, 2, 3]);
        let err = decode_message::<Vec<u8>>(&forged, "vector").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        let err = decode_stored::<Vec<u8>>(&forged, "vector").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
