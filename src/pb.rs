//! Code generated from `proto/` (package `nacosd.v1`), and the descriptor set that
//! server reflection serves.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("nacosd.v1");

/// Encoded `FileDescriptorSet` of every nacosd proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nacosd_descriptor.bin"));

/// The subset of etcd's v3 KV API (`etcdserverpb.KV`: Range, Put) that the benchmark
/// drives for its side-by-side runs. Client only; see `proto/etcd/kv.proto`.
pub mod etcd {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}
