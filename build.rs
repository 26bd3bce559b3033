//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed, and embeds the descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/nacosd/v1/peer.proto",
        "proto/nacosd/v1/common.proto",
        "proto/nacosd/v1/cluster.proto",
        "proto/nacosd/v1/config.proto",
        "proto/nacosd/v1/naming.proto",
        "proto/nacosd/v1/session.proto",
        "proto/nacosd/v1/db.proto",
        "proto/nacosd/v1/auth.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("nacosd_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    // The Nacos 2.x client protocol (src/nacos/): no package, so the generated module is
    // `_` and the services' paths are `/Request/request` and
    // `/BiRequestStream/requestBiStream`, as the Nacos SDKs call them. Server only, plus a
    // client for the tests; not part of the descriptor set that reflection serves.
    let nacos = "proto/nacos/nacos_grpc_service.proto";
    println!("cargo:rerun-if-changed={nacos}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(protox::compile([nacos], ["proto"])?)?;

    // etcd's KV API, for the benchmark's side-by-side runs: a client only, and not
    // part of the descriptor set that reflection serves.
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
