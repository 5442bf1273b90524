//! `deetune daemon`: the long-running recorder. Owns the capture and the store and serves the
//! control API on a Unix socket; SIGTERM or Ctrl-C flushes and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use deetune_recorder::{run_daemon, Capture, NoEvents, RecorderConfig, DEFAULT_SOCKET};
use deetune_store::Store;

use super::Global;
use crate::exit;

/// Arguments of `deetune daemon`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML: `socket`, `data_dir`, `[[service]]` rules).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket (default: the config's, else /run/deetune/deetune.sock).
    #[arg(long, env = "DEETUNE_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Serve the API and the store without the eBPF capture (nothing is recorded; for tests
    /// and for reading a store while no capture is possible).
    #[arg(long, hide = true)]
    no_capture: bool,
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM received."),
                _ = i.recv() => tracing::info!("SIGINT received."),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(p) => RecorderConfig::load(p)?,
        None => RecorderConfig::default(),
    };
    let socket = args
        .socket
        .or_else(|| config.socket.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let dir = global
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(deetune_store::default_data_dir);
    // One thread: the engine waits on the ring buffer in its own epoll and the API shares the
    // thread (slow store reads such as exports run on the blocking pool). A multi-threaded
    // runtime cost a cross-thread wake-up per ring-buffer batch (ci/bench-record profile).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let store = Arc::new(
            Store::open_with(&dir, &config.store_options())
                .with_context(|| format!("cannot open the store in {}", dir.display()))?,
        );
        if args.no_capture {
            tracing::warn!("Running without the capture: nothing will be recorded.");
            run_daemon(
                store,
                &config.services,
                &socket,
                NoEvents,
                false,
                terminated(),
            )
            .await?;
        } else {
            let capture =
                Capture::start(config.capture_config()).context("cannot start the eBPF capture")?;
            run_daemon(
                store,
                &config.services,
                &socket,
                capture,
                true,
                terminated(),
            )
            .await?;
        }
        anyhow::Ok(())
    })?;
    Ok(exit::success())
}
