//! `deetune import`: load a bundle file into the store as a new task, all or nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use deetune_store::ImportSummary;

use super::Global;

/// Arguments of `deetune import`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Bundle file (`.jsonl`, `.jsonl.zst`) written by `deetune export` or `deetune record`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// The data access of `import`: one call, so it can go through the daemon when one owns
/// the store.
fn import(global: &Global, file: &Path) -> anyhow::Result<ImportSummary> {
    let store = super::export::open_store(global)?;
    store
        .import_bundle(file)
        .with_context(|| format!("importing {}", file.display()))
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Args { file } = args;
    let summary = import(global, &file)?;
    eprintln!(
        "imported {} exchanges from {} as task {}",
        summary.exchanges,
        file.display(),
        summary.task_id
    );
    println!("{}", summary.task_id);
    Ok(crate::exit::success())
}
