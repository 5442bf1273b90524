//! `deetune`: the command line. Thin: parse, dispatch to the library crates, print.

mod cli;
mod exit;

use std::process::ExitCode;

use clap::Parser as _;

/// jemalloc: the recorder and the replayer allocate and free many small strings per exchange,
/// often on different threads; it costs less CPU per exchange than glibc's malloc (figures in
/// docs/benchmarks.md, "allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
