//! `deetune task` (not built yet).

use std::process::ExitCode;

use super::Global;

/// Subcommands of `deetune task`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List them.
    List,
}

pub(crate) fn run(_global: &Global, _command: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`deetune task` is not available in this build yet")
}
