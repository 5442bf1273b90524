//! `deetune capture` (not built yet).

use std::process::ExitCode;

use super::Global;

/// Arguments of `deetune capture`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_global: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`deetune capture` is not available in this build yet")
}
