//! `deetune export`: a task's exchanges to a bundle file (JSON Lines, `.zst` compressed when
//! the name ends so) or to HAR 1.2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use deetune_store::Store;

use super::Global;

/// Output format of `deetune export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// deetune bundle: JSON Lines, header then one exchange a line (replayable).
    Jsonl,
    /// HAR 1.2 (HTTP exchanges only), for browsers and HAR tools.
    Har,
}

/// Arguments of `deetune export`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Task whose exchanges to export.
    #[arg(long, value_name = "TASK")]
    task: String,
    /// Output file. A name ending in `.zst` is zstd-compressed; `.har` selects HAR.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Output format (default: `har` for a `.har` name, `jsonl` otherwise).
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// Opens the store of the data directory the global options name (shared by the store
/// commands: `export`, `import`, `exchanges`).
pub(crate) fn open_store(global: &Global) -> anyhow::Result<Store> {
    let dir = global
        .data_dir
        .clone()
        .unwrap_or_else(deetune_store::default_data_dir);
    Store::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// The data access of `export`: one call, so it can go through the daemon when one owns
/// the store.
fn export(global: &Global, task: &str, output: &Path, format: Format) -> anyhow::Result<u64> {
    // When a daemon owns the store, it writes the file (same host; absolute path).
    let socket = std::env::var_os("DEETUNE_SOCKET").map_or_else(
        || PathBuf::from(deetune_recorder::DEFAULT_SOCKET),
        PathBuf::from,
    );
    let rt = super::task::runtime()?;
    if let Some(client) = super::task::daemon(&rt, &socket) {
        let abs = std::path::absolute(output)
            .with_context(|| format!("resolving {}", output.display()))?;
        let f = match format {
            Format::Jsonl => "bundle",
            Format::Har => "har",
        };
        return rt
            .block_on(client.export(task, &abs, Some(f)))
            .with_context(|| {
                format!(
                    "exporting task {task} to {} through the daemon",
                    output.display()
                )
            });
    }
    let store = open_store(global)?;
    let n = match format {
        Format::Jsonl => store.export_bundle(task, output),
        Format::Har => store.export_har(task, output),
    };
    n.with_context(|| format!("exporting task {task} to {}", output.display()))
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        task,
        output,
        format,
    } = args;
    let format = format.unwrap_or_else(|| {
        if output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("har"))
        {
            Format::Har
        } else {
            Format::Jsonl
        }
    });
    let n = export(global, &task, &output, format)?;
    eprintln!(
        "exported {n} exchanges of task {task} to {}",
        output.display()
    );
    Ok(crate::exit::success())
}
