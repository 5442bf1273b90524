//! `deetune exchanges list|show`: look at recorded exchanges.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use deetune_protocols::{Exchange, MysqlResponse, RespValue, Response};
use deetune_store::{ExchangeId, ExchangeQuery, TaskId};

use super::Global;

/// Subcommands of `deetune exchanges`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List a task's exchanges in recorded order, one a line.
    List {
        /// Task whose exchanges to list.
        #[arg(long, value_name = "TASK")]
        task: String,
        /// Only exchanges whose interface matches this glob (`GET /api/*`, `SET`, `SELECT*`).
        #[arg(long, value_name = "GLOB")]
        interface: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one exchange in full (pretty JSON).
    Show {
        /// Exchange id (first column of `exchanges list`).
        #[arg(value_name = "ID")]
        id: ExchangeId,
    },
}

/// The data access of `exchanges list`: one call, so it can go through the daemon.
fn list(
    global: &Global,
    task: &str,
    query: &ExchangeQuery,
) -> anyhow::Result<Vec<(ExchangeId, Exchange)>> {
    let rt = super::task::runtime()?;
    if let Some(client) = super::task::daemon(&rt, &daemon_socket()) {
        let rows = rt
            .block_on(client.exchanges(task, query.interface.as_deref(), query.limit))
            .with_context(|| format!("listing the exchanges of task {task} through the daemon"))?;
        return Ok(rows
            .into_iter()
            .map(|r| (ExchangeId(r.id), r.exchange))
            .collect());
    }
    let store = super::export::open_store(global)?;
    store
        .find_exchanges(task, query)
        .with_context(|| format!("listing the exchanges of task {task}"))
}

/// The data access of `exchanges show`: one call, so it can go through the daemon.
fn show(global: &Global, id: ExchangeId) -> anyhow::Result<(TaskId, Exchange)> {
    let rt = super::task::runtime()?;
    if let Some(client) = super::task::daemon(&rt, &daemon_socket()) {
        let r = rt
            .block_on(client.exchange(id.0))
            .with_context(|| format!("reading exchange {id} through the daemon"))?;
        return Ok((r.task.unwrap_or_default(), r.exchange));
    }
    let store = super::export::open_store(global)?;
    store
        .exchange(id)
        .with_context(|| format!("reading exchange {id}"))
}

/// The daemon's socket (`DEETUNE_SOCKET` or the default).
fn daemon_socket() -> std::path::PathBuf {
    std::env::var_os("DEETUNE_SOCKET").map_or_else(
        || std::path::PathBuf::from(deetune_recorder::DEFAULT_SOCKET),
        std::path::PathBuf::from,
    )
}

fn outcome(x: &Exchange) -> String {
    match &x.response {
        None => "-".to_owned(),
        Some(Response::Http(r)) => r.status.to_string(),
        Some(Response::Redis(RespValue::Error(e))) => {
            format!("ERR {}", e.split_whitespace().next().unwrap_or(""))
        }
        Some(Response::Redis(_)) => "ok".to_owned(),
        Some(Response::Mysql(MysqlResponse::Err { code, .. })) => format!("ERR {code}"),
        Some(Response::Mysql(MysqlResponse::ResultSets { sets })) => {
            format!("{} rows", sets.iter().map(|s| s.rows.len()).sum::<usize>())
        }
        Some(Response::Mysql(_)) => "ok".to_owned(),
        Some(Response::Raw { data }) => format!("{} bytes", data.len()),
    }
}

pub(crate) fn run(global: &Global, command: Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::List {
            task,
            interface,
            limit,
        } => {
            let rows = list(global, &task, &ExchangeQuery { interface, limit })?;
            writeln!(
                out,
                "{:>10}  {:>8}  {:>5}  {:<6}  {:<10}  {:>10}  INTERFACE",
                "ID", "CONN", "SEQ", "PROTO", "RESULT", "LATENCY"
            )?;
            for (id, x) in &rows {
                let latency = x.timing.latency_ns().map_or_else(
                    || "-".to_owned(),
                    |ns| format!("{:.3}ms", Duration(ns).ms()),
                );
                writeln!(
                    out,
                    "{:>10}  {:>8}  {:>5}  {:<6}  {:<10}  {:>10}  {}",
                    id,
                    x.conn.id,
                    x.seq,
                    x.protocol.as_str(),
                    outcome(x),
                    latency,
                    x.interface()
                )?;
            }
        }
        Command::Show { id } => {
            let (task, x) = show(global, id)?;
            let doc = serde_json::json!({"id": id, "task": task, "interface": x.interface(), "exchange": x});
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    Ok(crate::exit::success())
}

struct Duration(u64);

impl Duration {
    fn ms(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let ms = self.0 as f64 / 1e6;
        ms
    }
}
