//! nacosd-chaos: the fault-injection runner (see `docs/FAULTS.md`).
//!
//! Exit status: 0 clean run; 1 the run found problems (violations, divergence, a
//! crash, a node that never recovered); 2 the harness itself failed; 130 interrupted.
//! Every exit path removes the network and the processes the run created.

use std::process::ExitCode;

use clap::Parser;
use nacosd::chaos::history::History;
use nacosd::chaos::runner::{self, Options};
use nacosd::chaos::{net, runner::RunResult};

#[derive(Parser)]
#[command(
    name = "nacosd-chaos",
    version,
    about = "Fault injection against a real nacosd cluster, with a linearizability check"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

fn main() -> ExitCode {
    let opts = Cli::parse().options;
    if let Some(path) = &opts.check {
        return check_file(path);
    }
    if let Err(e) = opts.validate() {
        eprintln!("nacosd-chaos: {e}");
        return ExitCode::from(2);
    }
    let missing = net::missing_tools();
    if !missing.is_empty() {
        eprintln!(
            "nacosd-chaos: missing {} (scripts/chaos.sh installs them)",
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    let run_id = runner::run_id(seed);
    println!("nacosd-chaos: seed {seed}, run {run_id} (replay the faults with --seed {seed})");
    let cleaned = net::cleanup_leftovers();
    if !cleaned.is_empty() {
        println!(
            "nacosd-chaos: removed leftovers of earlier runs: {}",
            cleaned.join(", ")
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nacosd-chaos: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let measure = opts.measure_failover;
    let outcome = runtime.block_on(async move {
        let work = async {
            if measure {
                runner::measure_failover(opts, run_id).await
            } else {
                runner::run(opts, seed, run_id).await
            }
        };
        tokio::select! {
            result = work => Some(result),
            _ = interrupted() => None,
        }
    });
    // Dropping the run's future above killed the nodes and removed the network; the
    // runtime's shutdown reaps what is left.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        None => {
            eprintln!("nacosd-chaos: interrupted; cleaned up");
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            eprintln!("nacosd-chaos: harness error: {e}");
            ExitCode::from(2)
        }
        Some(Ok(result)) => report(&result, seed),
    }
}

fn report(result: &RunResult, seed: u64) -> ExitCode {
    println!("\n{}", result.summary);
    println!("output: {}", result.out.display());
    if result.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        // The output directory may not outlive the machine (CI): the violations'
        // story goes into the console too.
        if let Some(violations) = &result.violations {
            println!("\n{violations}");
        }
        eprintln!(
            "nacosd-chaos: {} problem(s) found with seed {seed}",
            result.problems.len()
        );
        ExitCode::from(1)
    }
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

fn check_file(path: &std::path::Path) -> ExitCode {
    let history = match History::load(path) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("nacosd-chaos: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match runner::check_history(&history) {
        Ok(report) => {
            print!("{report}");
            if report.is_linearizable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("nacosd-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
