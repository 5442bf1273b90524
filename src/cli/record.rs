//! `deetune record`: one task in the foreground, without a daemon, into a bundle file; ends at
//! its duration or count, or on Ctrl-C, and prints the task's counters.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use deetune_recorder::{new_task, record, BundleSink, Capture, RecorderConfig};

use super::daemon::terminated;
use super::task::{print_one, PolicyArgs};
use super::Global;
use crate::exit;

/// Arguments of `deetune record`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Bundle file to write (`.jsonl`, or `.jsonl.zst` compressed).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Configuration file with `[[service]]` rules.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the final task record as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        policy,
        output,
        config,
        json,
    } = args;
    let spec = policy.to_spec()?;
    let config = match &config {
        Some(p) => RecorderConfig::load(p)?,
        None => RecorderConfig::default(),
    };
    let header = new_task(spec);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (task, mut sink) = rt.block_on(async {
        let capture =
            Capture::start(config.capture_config()).context("cannot start the eBPF capture")?;
        let sink = BundleSink::create(output.clone(), &header)?;
        eprintln!("Recording into {} (Ctrl-C stops).", output.display());
        let (task, sink, _stats) =
            record(header, &config.services, capture, sink, terminated()).await?;
        anyhow::Ok((task, sink))
    })?;
    let n = sink.finish()?;
    print_one(&task, json)?;
    eprintln!("Wrote {n} exchanges to {}.", output.display());
    Ok(exit::success())
}
