//! The nacosd server.

use clap::Parser;
use nacosd::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "nacosd",
    version,
    about = "nacosd: multi-raft consistency core of a Nacos-style registry and config center"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

/// The process's allocator: jemalloc, for Rust and, through the unprefixed `malloc` and
/// `free` it exports, for RocksDB's C++ and SQLite as well. glibc's malloc was about
/// 18 % of a publishing node's CPU, most of it RocksDB freeing and coalescing buffers
/// (`malloc_consolidate`); with jemalloc, CPU per publish fell 16 % and throughput rose
/// 14 % (bench/ab.sh, docs/BENCHMARKS.md). mimalloc as Rust's allocator alone had made
/// no difference: RocksDB's allocations stayed on glibc.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`MALLOC_CONF` in the environment is
/// applied after them, so an operator can still change any): two arenas, as the hot
/// paths run on two tokio workers and the default of four per core only keeps more
/// memory (5 MiB less RSS per node, same throughput); and a background thread that
/// returns freed pages to the system within a tenth of a second, off the request
/// threads. A load's buffers (connections, batches) are freed when it ends; with a
/// decay of one second they were still counted in the RSS right after a benchmark
/// (3-6 MiB per node more), at the same throughput and CPU per write
/// (docs/BENCHMARKS.md, "Probes"); 100 ms instead of 250 gave 1-3 MiB less again,
/// with throughput B/A medians of 1.00 and 1.03 over seven rounds at 64 and at 256
/// clients ("Replies coalesced"). A node that falls idle also purges every arena at
/// once (`nacosd::idle`).
#[cfg(target_os = "linux")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 69] =
    b"narenas:2,background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NACOSD_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let cli = Cli::parse();
    let config = match cli.config.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nacosd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut builder = nacosd::runtime_builder();
    if config.client_threads > 0 {
        builder.worker_threads(config.client_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nacosd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(nacosd::server::run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nacosd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
