//! The daemon: owns the store and the event source (the capture), runs the engine, serves the
//! control API on a Unix socket (mode 0600), and on shutdown flushes and marks running tasks
//! interrupted.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deetune_store::{Store, TaskState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::api::{serve, ApiState};
use crate::engine::{
    now_ms, BackgroundFlushSink, Command, Engine, EngineOptions, EventSource, SinkError, StoreSink,
};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::services::{ServiceNamer, ServiceRule, ServiceRuleError};
use crate::tasks::TaskManager;
use crate::topology::TopologyAggregator;

/// The default control socket.
pub const DEFAULT_SOCKET: &str = "/run/deetune/deetune.sock";

/// The configuration file (TOML). Every field is optional.
///
/// ```toml
/// socket = "/run/deetune/deetune.sock"
/// data_dir = "/var/lib/deetune"
///
/// [[service]]
/// name = "checkout"
/// port = 8080
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// Control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Data directory of the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Page cache of the store in MiB (default 16: the daemon's memory budget is 128 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cache_mib: Option<u64>,
    /// Kernel loopback de-duplication (default on): when both ends of a loopback connection
    /// are captured, only the server end's bytes are copied (see
    /// [`crate::CaptureConfig::loopback_dedup`]). `false` copies both ends, as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback_dedup: Option<bool>,
    /// Capture only connections with a local or remote port in this list (empty, the
    /// default: every TCP connection of the host, for the topology). Keeps other traffic out
    /// of the kernel's ring buffer when only some services matter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capture_ports: Vec<u16>,
    /// Size of the kernel's ring buffer in KiB (default 16384: 16 MiB; rounded up to a power
    /// of two). Larger rides out longer stalls of the daemon (more traffic held before
    /// "ring buffer full" losses); smaller keeps the copies in the CPU caches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_buffer_kib: Option<u32>,
    /// Service naming rules, first match wins.
    #[serde(rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRule>,
}

/// The daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file cannot be read or parsed.
    #[error("cannot read the configuration {path}: {reason}")]
    Config {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A service rule is invalid.
    #[error(transparent)]
    Rule(#[from] ServiceRuleError),
    /// Another daemon answers on the socket.
    #[error("a daemon already runs on {0}")]
    AlreadyRunning(PathBuf),
    /// The socket cannot be set up.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] deetune_store::StoreError),
    /// The store's flusher thread cannot start.
    #[error(transparent)]
    Flusher(SinkError),
}

impl RecorderConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`DaemonError::Config`] when unreadable or invalid.
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|e| DaemonError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| DaemonError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        ServiceNamer::new(&cfg.services)?;
        Ok(cfg)
    }
}

impl RecorderConfig {
    /// The capture configuration of the daemon and of `deetune record`: the defaults, with
    /// loopback de-duplication on unless the file turns it off.
    #[must_use]
    pub fn capture_config(&self) -> crate::CaptureConfig {
        crate::CaptureConfig {
            loopback_dedup: self.loopback_dedup.unwrap_or(true),
            ports: self.capture_ports.clone(),
            ring_buffer_bytes: self
                .ring_buffer_kib
                .map_or(crate::CaptureConfig::default().ring_buffer_bytes, |k| {
                    k.clamp(4, 1 << 20) * 1024
                }),
            ..crate::CaptureConfig::default()
        }
    }

    /// Store options for the daemon.
    #[must_use]
    pub fn store_options(&self) -> deetune_store::StoreOptions {
        deetune_store::StoreOptions {
            cache_bytes: self.store_cache_mib.unwrap_or(16) << 20,
            ..deetune_store::StoreOptions::default()
        }
    }
}

/// Marks tasks left running by a previous daemon as interrupted; returns how many.
///
/// # Errors
/// The store failed.
pub fn interrupt_running(store: &Store) -> Result<usize, deetune_store::StoreError> {
    let mut n = 0;
    for mut t in store.tasks()? {
        if t.state == TaskState::Running {
            t.state = TaskState::Interrupted;
            t.stop_reason = Some("daemon stopped".to_owned());
            t.stopped_ms = Some(now_ms());
            store.put_task(&t)?;
            n += 1;
        }
    }
    store.flush()?;
    Ok(n)
}

async fn bind(socket: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    let sock_err = |source| DaemonError::Socket {
        path: socket.to_owned(),
        source,
    };
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(DaemonError::AlreadyRunning(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(sock_err)?;
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(sock_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(sock_err)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(sock_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    Ok(listener)
}

/// Runs the daemon until `shutdown` resolves (or the source ends): binds `socket`, marks
/// previously running tasks interrupted, serves the API, records, and at the end flushes,
/// marks running tasks interrupted and removes the socket.
///
/// # Errors
/// Start-up failures; see [`DaemonError`].
pub async fn run_daemon<E: EventSource>(
    store: Arc<Store>,
    rules: &[ServiceRule],
    socket: &Path,
    source: E,
    capture: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let namer = ServiceNamer::new(rules)?;
    let listener = bind(socket).await?;
    let interrupted = interrupt_running(&store)?;
    if interrupted > 0 {
        tracing::warn!(tasks = interrupted, "Tasks left running by the previous daemon are now interrupted; `deetune task resume ID` restarts them.");
    }
    let topology = TopologyAggregator::from_edges(store.edges()?);
    let pipeline = Pipeline::new(
        PipelineConfig::default(),
        namer,
        TaskManager::new(),
        topology,
    );
    // The periodic fsync on its own thread: a slow disk must not stall the ring buffer's
    // consumer (the daemon's runtime has one thread).
    let sink =
        BackgroundFlushSink::new(StoreSink::new(store.clone())).map_err(DaemonError::Flusher)?;
    let mut engine = Engine::new(pipeline, sink, EngineOptions::default());
    let (tx, rx) = mpsc::channel::<Command>(64);
    let api = tokio::spawn(serve(
        listener,
        ApiState {
            commands: tx,
            store: store.clone(),
            capture,
        },
    ));
    tracing::info!(socket = %socket.display(), data_dir = %store.dir().display(), capture, "The daemon is ready.");
    let end = engine.run(source, rx, shutdown).await;
    api.abort();
    let running = engine.pipeline.tasks.running_at(now_ms());
    let edges = engine.pipeline.topology.edges();
    drop(engine);
    tracing::info!(?end, "The daemon is stopping.");
    // Running tasks survive as interrupted.
    let now = now_ms();
    for mut t in running {
        t.state = TaskState::Interrupted;
        t.stop_reason = Some("daemon stopped".to_owned());
        t.stopped_ms = Some(now);
        store.put_task(&t)?;
    }
    store.put_edges(&edges)?;
    store.flush()?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the example shipped in `docs/deploy/`: it must load.
    #[test]
    fn example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/deetune.toml");
        let cfg = RecorderConfig::load(&p).expect("example config");
        assert_eq!(cfg.services.len(), 2);
        assert_eq!(cfg.store_options().cache_bytes, 16 << 20);
        assert!(cfg.capture_config().loopback_dedup, "on by default");
        assert!(
            cfg.capture_config().ports.is_empty(),
            "the whole host by default"
        );
        let off: RecorderConfig =
            toml::from_str("loopback_dedup = false\ncapture_ports = [80, 6379]\n").expect("parses");
        assert!(!off.capture_config().loopback_dedup);
        assert_eq!(off.capture_config().ports, [80, 6379]);
        assert_eq!(
            cfg.capture_config().ring_buffer_bytes,
            16 << 20,
            "16 MiB by default"
        );
        let ring: RecorderConfig = toml::from_str("ring_buffer_kib = 65536\n").expect("parses");
        assert_eq!(ring.capture_config().ring_buffer_bytes, 64 << 20);
        let huge: RecorderConfig =
            toml::from_str("ring_buffer_kib = 4294967295\n").expect("parses");
        assert_eq!(
            huge.capture_config().ring_buffer_bytes,
            1 << 30,
            "clamped to 1 GiB, no overflow"
        );
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[[service]]\nname = \"x\"\n").expect("write");
        assert!(matches!(
            RecorderConfig::load(&p),
            Err(DaemonError::Rule(_))
        ));
        std::fs::write(&p, "bogus = 1\n").expect("write");
        assert!(matches!(
            RecorderConfig::load(&p),
            Err(DaemonError::Config { .. })
        ));
        assert!(matches!(
            RecorderConfig::load(&dir.path().join("none.toml")),
            Err(DaemonError::Config { .. })
        ));
    }
}
