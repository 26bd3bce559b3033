//! Every integration test of nacosd, in one test binary.
//!
//! One binary instead of one per file: each links the whole crate with RocksDB and
//! SQLite, and on a 2-core CI machine nine separate links cost minutes. Run one area
//! with `cargo test --test integration cluster::` (or any test name filter).
//!
//! | module | what it covers |
//! |---|---|
//! | `storage_suite` | openraft's storage test suite against the RocksDB log with both kinds of state machine |
//! | `cluster` | in-process clusters: elections, replication, failover, restart, snapshot catch-up |
//! | `consistency` | forwarding, exactly-once across leader changes, read levels, lagging followers, apply I/O errors |
//! | `config_api`, `naming_api`, `db_api` | the gRPC APIs on in-process clusters |
//! | `ephemeral` | sessions and ephemeral instances (Distro): sync, close, expiry, health, merged syncs, startup snapshot, Subscribe |
//! | `nacos_sdk` | the Nacos 2.x front end: the real nacos-sdk-python against 3-node clusters, and the raw protocol's handshake and errors |
//! | `multiprocess` | real `nacosd` processes: kill -9 under load, `nacosctl` |
//! | `readme_examples` | the README's grpcurl examples against a live node |
//! | `safety` | cluster identity, wiped disks, vote hold after restart, power loss, large entries, quorum loss |
//! | `security` | TLS on the client port, mutual TLS between peers, certificate rotation, auth and permissions |
//! | `membership` | join, remove, replace, address change, leader transfer, force-new-cluster, refusals |
//! | `bench` | the load generator against nacosd and etcd |

mod common;

mod bench;
mod cluster;
mod config_api;
mod consistency;
mod db_api;
mod ephemeral;
mod membership;
mod multiprocess;
mod nacos_sdk;
mod naming_api;
mod readme_examples;
mod safety;
mod security;
mod storage_suite;
