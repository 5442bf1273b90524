//! `deetune export` (not built yet).

use std::process::ExitCode;

use super::Global;

/// Arguments of `deetune export`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_global: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`deetune export` is not available in this build yet")
}
