//! Argument parsing and dispatch. Each subcommand lives in its own module with its `Args`
//! and a `run` function returning the process exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod capture;
mod daemon;
mod demo;
mod exchanges;
mod export;
mod import;
mod record;
mod replay;
mod task;
mod topology;

/// Record service-to-service traffic with eBPF and replay it against staging, diffing every
/// response.
#[derive(Debug, Parser)]
#[command(name = "deetune", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// Data directory of the embedded store (default: /var/lib/deetune as root, the XDG data
    /// directory otherwise).
    #[arg(long, global = true, env = "DEETUNE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole loop on this machine: record a demo shop, replay against a regressed
    /// version, show the report (root).
    Demo(demo::Args),
    /// Sniff TCP traffic with eBPF and print connections and payloads (root): a debugging tool
    /// and a check that this host supports deetune.
    Capture(capture::Args),
    /// Record exchanges in the foreground into a bundle file, without a daemon (root).
    Record(record::Args),
    /// Run the recorder daemon: owns the capture and the store, serves the control API.
    Daemon(daemon::Args),
    /// Start, list, show and stop recording tasks.
    #[command(subcommand)]
    Task(task::Command),
    /// Show the service topology seen by the recorder.
    Topology(topology::Args),
    /// Look at recorded exchanges.
    #[command(subcommand)]
    Exchanges(exchanges::Command),
    /// Write a task's exchanges to a bundle file (JSON Lines, `.zst` compressed) or HAR.
    Export(export::Args),
    /// Load a bundle file into the store (all or nothing).
    Import(import::Args),
    /// Re-send a recording to targets and diff the responses.
    Replay(replay::Args),
}

pub(crate) fn init_logging(global: &Global) {
    use tracing_subscriber::EnvFilter;
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Demo(a) => demo::run(g, a),
        Command::Capture(a) => capture::run(g, a),
        Command::Record(a) => record::run(g, a),
        Command::Daemon(a) => daemon::run(g, a),
        Command::Task(c) => task::run(g, c),
        Command::Topology(a) => topology::run(g, a),
        Command::Exchanges(c) => exchanges::run(g, c),
        Command::Export(a) => export::run(g, a),
        Command::Import(a) => import::run(g, a),
        Command::Replay(a) => replay::run(g, &a),
    }
}
