//! `corekv-loadgen`: parse the command line, run the load, print the summary, write the JSON.
//!
//! Nothing else lives here. The run itself is [`run::run`]; progress goes to stderr once a
//! second, and the final table to stdout, so `corekv-loadgen > result.txt` keeps only the result.
//! Exit status: 0 after a run (even one with errors, which the summary reports), 1 when the run
//! could not be carried out (unreachable server, unwritable `--json` file), 2 for a bad command
//! line.

mod config;
mod connection;
mod protocol;
mod routed;
mod run;
mod schedule;
mod stats;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Config, Distribution};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::from_cli(&cli) {
        Ok(cfg) => cfg,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start {} worker threads: {e}", cfg.threads);
            return ExitCode::FAILURE;
        }
    };
    let mode = match cfg.rate_ops_per_sec {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_owned(),
    };
    eprintln!(
        "corekv-loadgen: {} connections x {} in flight to {}, {mode}, mix {}, {} keys ({}), \
         warmup {:.1} s, duration {:.1} s",
        cfg.connections,
        cfg.pipeline,
        cfg.addr,
        cfg.mix,
        cfg.keys,
        match cfg.distribution {
            Distribution::Uniform => "uniform".to_owned(),
            Distribution::Zipf => format!("zipf theta {}", cfg.zipf_theta),
        },
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64()
    );
    let summary = match runtime.block_on(run::run(&cfg)) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary.table());
    if let Some(path) = &cli.json
        && let Err(e) = std::fs::write(path, summary.to_json() + "\n")
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
