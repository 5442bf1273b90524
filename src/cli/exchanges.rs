//! `deetune exchanges` (not built yet).

use std::process::ExitCode;

use super::Global;

/// Subcommands of `deetune exchanges`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List them.
    List,
}

pub(crate) fn run(_global: &Global, _command: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`deetune exchanges` is not available in this build yet")
}
