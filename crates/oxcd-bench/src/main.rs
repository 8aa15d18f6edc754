//! `oxcd-bench`: parses the command line, runs one workload, prints the
//! report (text, or one JSON line with `--json`).
//!
//! Exit codes: 0 measured (even with failed requests, which the report
//! counts); 1 could not run; 2 bad usage; 3 the server does not implement
//! the service under test.

use std::process::ExitCode;

use clap::Parser;
use oxcd_bench::{BenchError, Cli};

/// mimalloc, as the server uses: with glibc malloc the load generator
/// spent ~11 % of its CPU in the allocator (perf, put at 1000 clients), CPU
/// the servers under test then lack on a shared machine.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code when the server answers `Unimplemented` for the workload.
const EXIT_UNIMPLEMENTED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd-bench: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(oxcd_bench::run(&cli));
    // Abandoned requests must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(summary) => {
            if cli.global.json {
                println!("{}", summary.to_json_line());
            } else {
                print!("{}", summary.to_text());
            }
            if summary.unimplemented && summary.ok == 0 {
                ExitCode::from(EXIT_UNIMPLEMENTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e @ BenchError::Unimplemented { .. }) => {
            if cli.global.json {
                let line = serde_json::json!({"unimplemented": true, "error": e.to_string()});
                println!("{line}");
            }
            eprintln!("oxcd-bench: {e}");
            ExitCode::from(EXIT_UNIMPLEMENTED)
        }
        Err(e) => {
            eprintln!("oxcd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
