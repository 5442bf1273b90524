//! `deetune topology [--format table|json|dot]`: the service edges the recorder saw, from the
//! daemon when it runs, else from the store.

use std::process::ExitCode;

use anyhow::Context as _;
use deetune_store::TopologyEdge;

use super::task::{daemon, open_store, out, runtime, SocketArg};
use super::Global;
use crate::exit;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Dot,
}

/// Arguments of `deetune topology`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    socket: SocketArg,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Args { format, socket } = args;
    let rt = runtime()?;
    let edges = match daemon(&rt, &socket.socket) {
        Some(c) => rt
            .block_on(c.topology())
            .context("cannot read the topology from the daemon")?,
        None => open_store(global)?
            .edges()
            .context("cannot read the topology")?,
    };
    match format {
        Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(&edges)?))?,
        Format::Dot => out(&dot(&edges))?,
        Format::Table => out(&table(&edges))?,
    }
    Ok(exit::success())
}

fn proto(e: &TopologyEdge) -> &'static str {
    e.protocol.map_or("?", deetune_protocols::Protocol::as_str)
}

fn ms_to_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

fn table(edges: &[TopologyEdge]) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:>5} {:<6} {:>6} {:>9} {:>6} {:>9} {:>9} {:>11} {:>11} {:>8} {:>8}\n",
        "CLIENT",
        "SERVER",
        "PORT",
        "PROTO",
        "CONNS",
        "EXCHANGES",
        "ERRORS",
        "P50",
        "P99",
        "SENT",
        "RECEIVED",
        "FIRST",
        "LAST"
    );
    for e in edges {
        out.push_str(&format!(
            "{:<20} {:<24} {:>5} {:<6} {:>6} {:>9} {:>6} {:>7}µs {:>7}µs {:>11} {:>11} {:>8} {:>8}\n",
            e.client,
            e.server,
            e.port,
            proto(e),
            e.connections,
            e.exchanges,
            e.errors,
            e.p50_us,
            e.p99_us,
            e.bytes_sent,
            e.bytes_received,
            ms_to_time(e.first_seen_ms),
            ms_to_time(e.last_seen_ms),
        ));
    }
    out
}

fn dot(edges: &[TopologyEdge]) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("digraph deetune {\n  rankdir=LR;\n  node [shape=box];\n");
    for e in edges {
        out.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{} :{}\\n{} exchanges, {} errors\\np50 {}µs p99 {}µs\"];\n",
            q(&e.client),
            q(&e.server),
            proto(e),
            e.port,
            e.exchanges,
            e.errors,
            e.p50_us,
            e.p99_us
        ));
    }
    out.push_str("}\n");
    out
}
