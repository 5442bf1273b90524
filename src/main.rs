//! `deetune`: the command line. Thin: parse, dispatch to the library crates, print.

mod cli;
mod exit;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli.global);
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                return exit::success();
            }
            eprintln!("error: {err:#}");
            exit::could_not_run()
        }
    }
}
