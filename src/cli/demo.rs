//! `deetune demo`: the whole loop on one machine. Starts Redis and MariaDB (when installed),
//! the demo shop v1, records the generated `web` → `shop-v1` traffic with eBPF into a
//! temporary store, prints the topology, replays against shop v2 ("staging") with v1 as the
//! noise baseline, prints the report, and stops everything it started (also on Ctrl-C).
//!
//! The shop and the traffic generator run as child processes of this binary (hidden
//! subcommands `demo __shop` and `demo __loadgen`), because the recorder does not capture
//! its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use deetune_fixtures::{MariaDb, MysqlTarget, RedisServer, RedisTarget, ShopConfig, ShopVersion};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::Global;

/// Arguments of `deetune demo`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    /// Folder for the reports (HTML, JSON, learned noise rules); default: `deetune-demo`
    /// in the system temporary folder. Kept after the demo.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rounds of generated traffic (16 requests each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Run the shop without Redis and MariaDB even when they are installed.
    #[arg(long)]
    http_only: bool,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// The demo's child processes (hidden from `--help`).
#[derive(Debug, clap::Subcommand)]
enum Internal {
    /// Run a demo shop.
    #[command(name = "__shop", hide = true)]
    Shop(ShopArgs),
    /// Send the demo traffic.
    #[command(name = "__loadgen", hide = true)]
    Loadgen(LoadgenArgs),
}

#[derive(Debug, clap::Args)]
struct ShopArgs {
    /// v1 or v2.
    #[arg(long, default_value = "v1")]
    shop_version: ShopVersion,
    /// Process name (at most 15 bytes).
    #[arg(long, default_value = "shop")]
    name: String,
    /// Port on 127.0.0.1 (0: any; the address is printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Redis `HOST:PORT`.
    #[arg(long)]
    redis: Option<String>,
    /// Redis database index this shop owns.
    #[arg(long, default_value_t = 0)]
    redis_db: u32,
    /// MySQL `HOST:PORT`.
    #[arg(long)]
    mysql: Option<String>,
    /// MySQL user.
    #[arg(long, default_value = "deetune")]
    mysql_user: String,
    /// MySQL password.
    #[arg(
        long,
        env = "DEETUNE_DEMO_MYSQL_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    mysql_password: String,
    /// MySQL database this shop owns (dropped and re-created).
    #[arg(long, default_value = "shop")]
    mysql_db: String,
    /// Exit when standard input closes (the parent died).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// Shop address `HOST:PORT`.
    #[arg(long)]
    target: SocketAddr,
    /// Rounds of the plan.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

pub(crate) fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.internal {
        Some(Internal::Shop(a)) => run_shop(a),
        Some(Internal::Loadgen(a)) => run_loadgen(&a),
        None => run_demo(args.out, args.rounds, args.http_only),
    }
}

fn run_shop(a: ShopArgs) -> anyhow::Result<ExitCode> {
    let config = ShopConfig {
        version: a.shop_version,
        redis: a.redis.map(|addr| RedisTarget {
            addr,
            password: None,
            db: a.redis_db,
        }),
        mysql: a.mysql.map(|addr| MysqlTarget {
            addr,
            user: a.mysql_user,
            password: a.mysql_password,
            database: a.mysql_db,
        }),
    };
    deetune_fixtures::run_shop_process(&a.name, &config, a.port, a.exit_on_stdin_eof)?;
    Ok(crate::exit::success())
}

fn run_loadgen(a: &LoadgenArgs) -> anyhow::Result<ExitCode> {
    deetune_fixtures::set_process_name("web");
    let summary = deetune_fixtures::run_loadgen(a.target, a.rounds)
        .with_context(|| format!("sending the demo traffic to {}", a.target))?;
    let statuses: Vec<String> = summary
        .statuses
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect();
    println!(
        "web: {} requests ({})",
        summary.requests,
        statuses.join(", ")
    );
    Ok(crate::exit::success())
}

/// A folder removed on drop.
struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shop child process, killed on drop (and it exits by itself when our pipe closes).
struct ShopChild {
    child: Child,
    addr: SocketAddr,
}

impl ShopChild {
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

struct Backends {
    redis: Option<RedisServer>,
    mysql: Option<MariaDb>,
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn run_demo(out: Option<PathBuf>, rounds: u32, http_only: bool) -> anyhow::Result<ExitCode> {
    if !deetune_fixtures::is_root() {
        bail!(
            "`deetune demo` records with eBPF and needs root: run it as root \
             (`sudo deetune demo`, or `sudo -E cargo run --release -- demo`)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let code = rt.block_on(async {
        // Registered first, so that Ctrl-C at any point reaches us instead of killing the
        // process with children still running. The listener runs on a worker thread, so it
        // notices a signal even while a blocking step holds this thread.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing the Ctrl-C handler")?;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let notify = Arc::new(tokio::sync::Notify::new());
        let (flag, wake) = (Arc::clone(&interrupted), Arc::clone(&notify));
        tokio::spawn(async move {
            let what = tokio::select! {
                _ = sigint.recv() => "Ctrl-C",
                _ = sigterm.recv() => "SIGTERM",
            };
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("\n{what}: stopping everything the demo started");
            wake.notify_one();
        });
        tokio::select! {
            r = demo(out, rounds, http_only) => r,
            // Dropping `demo` here kills the shops, Redis and MariaDB, detaches the eBPF
            // programs and removes the temporary store.
            () = notify.notified() => Ok(ExitCode::from(130)),
        }
    });
    // Dropping the runtime waits for a blocking step still running (its result, a server
    // or the capture, is dropped and so stopped).
    drop(rt);
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(ExitCode::from(130));
    }
    code
}

/// Attaches the eBPF capture to these ports (the verifier takes a moment: off the runtime).
async fn start_capture(ports: Vec<u16>) -> anyhow::Result<deetune_recorder::Capture> {
    tokio::task::spawn_blocking(move || {
        deetune_recorder::Capture::start(deetune_recorder::CaptureConfig {
            ports,
            ..deetune_recorder::CaptureConfig::default()
        })
        .context("starting the eBPF capture (Linux ≥ 6.3 on x86_64 with BTF, as root)")
    })
    .await
    .context("starting the eBPF capture")?
}

async fn demo(out: Option<PathBuf>, rounds: u32, http_only: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding this program's path")?;
    let out = out.unwrap_or_else(|| std::env::temp_dir().join("deetune-demo"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    step("Starting the shop's backends");
    let backends = tokio::task::spawn_blocking(move || start_backends(http_only))
        .await
        .context("starting the backends")??;

    // The shop opens its Redis and MySQL connections when it starts: attach the capture to the
    // backends' ports first, so those connections are seen from their handshake (a MySQL
    // connection that predates the capture cannot be decoded). The shop's own port is added
    // once it listens. Without backends nothing is attached yet (an empty port list would
    // mean "every port").
    let backend_ports: Vec<u16> = backends
        .redis
        .as_ref()
        .map(RedisServer::port)
        .into_iter()
        .chain(backends.mysql.as_ref().map(MariaDb::port))
        .collect();
    let early_capture = if backend_ports.is_empty() {
        None
    } else {
        step("Attaching the eBPF capture to the backends' ports");
        Some(start_capture(backend_ports.clone()).await?)
    };

    step("Starting shop v1 (the version in production)");
    let v1 = spawn_shop(&exe, &backends, "shop-v1", ShopVersion::V1, 1).await?;
    println!("shop-v1 listens on http://{}", v1.addr);

    // The store: temporary, removed when the demo ends.
    let store_dir =
        TempFolder(std::env::temp_dir().join(format!("deetune-demo-store-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&store_dir.0);
    let store = Arc::new(
        deetune_store::Store::open(&store_dir.0)
            .with_context(|| format!("opening a temporary store in {}", store_dir.0.display()))?,
    );

    step("Recording web → shop-v1 with eBPF (task: --from web --to shop-v1)");
    let mut ports = vec![v1.addr.port()];
    ports.extend(backend_ports);
    let capture = match early_capture {
        Some(mut capture) => {
            capture
                .set_ports(&ports)
                .context("adding the shop's port to the capture")?;
            capture
        }
        None => start_capture(ports).await?,
    };
    let spec = deetune_store::TaskSpec {
        name: Some("demo".into()),
        from: Some("web".into()),
        to: Some("shop-v1".into()),
        ..deetune_store::TaskSpec::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recording = deetune_recorder::record(
        deetune_recorder::new_task(spec),
        &[],
        capture,
        deetune_recorder::StoreSink::new(Arc::clone(&store)),
        async {
            let _ = stop_rx.await;
        },
    );
    let traffic = async {
        let r = run_web(&exe, v1.addr, rounds).await;
        // Let the last events drain from the ring buffer before stopping.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = stop_tx.send(());
        r
    };
    let (recorded, traffic) = tokio::join!(recording, traffic);
    traffic?;
    let (task, _sink, _stats) = recorded.context("recording")?;
    let s = &task.stats;
    println!(
        "task {}: {} exchanges matched, {} recorded, {} dropped (gaps {}, ring buffer {})",
        task.id,
        s.matched,
        s.recorded,
        s.dropped_gap + s.dropped_ring_buffer + s.dropped_body_over_cap + s.dropped_sampling,
        s.dropped_gap,
        s.dropped_ring_buffer
    );
    v1.stop().await;

    step("Topology seen by the recorder");
    print_topology(&store)?;
    if s.recorded == 0 {
        bail!("nothing was recorded: the capture saw no web → shop-v1 exchange (see `deetune capture` to check this host)");
    }

    step("Starting shop v2 as \"staging\" and v1 again as the noise baseline");
    let staging = spawn_shop(&exe, &backends, "shop-v2", ShopVersion::V2, 2).await?;
    let baseline = spawn_shop(&exe, &backends, "shop-v1-base", ShopVersion::V1, 3).await?;
    println!("staging (v2):  http://{}", staging.addr);
    println!("baseline (v1): http://{}", baseline.addr);

    step("Replaying the recording against staging");
    let config = deetune_replayer::ReplayConfig {
        targets: vec![deetune_replayer::Target::parse(&format!(
            "http://{}",
            staging.addr
        ))?],
        baselines: vec![deetune_replayer::Target::parse(&format!(
            "http://{}",
            baseline.addr
        ))?],
        concurrency: 4,
        ..deetune_replayer::ReplayConfig::default()
    };
    let source = store.exchanges(&task.id).map(|r| r.map(|(_, x)| x));
    let report = deetune_replayer::replay_async(source, config)
        .await
        .context("replaying")?;
    staging.stop().await;
    baseline.stop().await;

    println!("{}", report.summary());
    let html = out.join("report.html");
    let json = out.join("report.json");
    let noise = out.join("noise-rules.toml");
    report.write_html(&html)?;
    report.write_json(&json)?;
    report.write_noise(&noise)?;

    step("Verdict");
    print_verdict(&report);
    println!("HTML report:   {}", html.display());
    println!("JSON report:   {}", json.display());
    println!("learned noise: {}", noise.display());

    drop(store);
    drop(store_dir);
    drop(backends);
    println!(
        "\nDone in {:.1} s; everything the demo started is stopped.",
        started.elapsed().as_secs_f64()
    );
    Ok(crate::exit::success())
}

fn start_backends(http_only: bool) -> anyhow::Result<Backends> {
    if http_only {
        println!("--http-only: the shop keeps products, carts and orders in memory");
        return Ok(Backends {
            redis: None,
            mysql: None,
        });
    }
    let redis = if RedisServer::is_installed() {
        let r = RedisServer::start().context("starting redis-server")?;
        println!("redis-server on 127.0.0.1:{} (pid {})", r.port(), r.pid());
        Some(r)
    } else {
        println!("redis-server is not installed: carts stay in memory (apt-get install redis-server to enable)");
        None
    };
    let mysql = if MariaDb::is_installed() {
        let m = MariaDb::start().context("starting MariaDB")?;
        println!("mariadbd on 127.0.0.1:{} (pid {})", m.port(), m.pid());
        Some(m)
    } else {
        println!("MariaDB is not installed: products and orders stay in memory (apt-get install mariadb-server mariadb-client to enable)");
        None
    };
    Ok(Backends { redis, mysql })
}

async fn spawn_shop(
    exe: &Path,
    backends: &Backends,
    name: &'static str,
    version: ShopVersion,
    instance: u32,
) -> anyhow::Result<ShopChild> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "demo",
        "__shop",
        "--shop-version",
        version.as_str(),
        "--name",
        name,
    ])
    .arg("--exit-on-stdin-eof");
    if let Some(r) = &backends.redis {
        cmd.arg("--redis")
            .arg(format!("127.0.0.1:{}", r.port()))
            .arg("--redis-db")
            .arg(instance.to_string());
    }
    if let Some(m) = &backends.mysql {
        cmd.arg("--mysql")
            .arg(format!("127.0.0.1:{}", m.port()))
            .arg("--mysql-user")
            .arg(&m.config().user)
            .arg("--mysql-db")
            .arg(format!("shop_{}", name.replace('-', "_")))
            .env("DEETUNE_DEMO_MYSQL_PASSWORD", &m.config().password);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("shop stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("{name} did not start within 30 s"))?
        .with_context(|| format!("reading {name}'s address"))?
        .with_context(|| format!("{name} exited before it listened"))?;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{name} printed `{line}` instead of its address"))?;
    Ok(ShopChild { child, addr })
}

async fn run_web(exe: &Path, target: SocketAddr, rounds: u32) -> anyhow::Result<()> {
    let status = Command::new(exe)
        .args(["demo", "__loadgen", "--target", &target.to_string()])
        .arg("--rounds")
        .arg(rounds.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("starting the traffic generator")?;
    if !status.success() {
        bail!("the traffic generator failed ({status})");
    }
    Ok(())
}

fn print_topology(store: &deetune_store::Store) -> anyhow::Result<()> {
    let mut edges = store.edges().context("reading the topology")?;
    edges.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
    if edges.is_empty() {
        println!("(no edges)");
    }
    println!(
        "{:<14} {:<16} {:>6} {:<6} {:>5} {:>9} {:>8}",
        "client", "server", "port", "proto", "conns", "exchanges", "p50 µs"
    );
    for e in &edges {
        println!(
            "{:<14} {:<16} {:>6} {:<6} {:>5} {:>9} {:>8}",
            e.client,
            e.server,
            e.port,
            e.protocol.map_or("?", deetune_protocols::Protocol::as_str),
            e.connections,
            e.exchanges,
            e.p50_us
        );
    }
    Ok(())
}

fn print_verdict(report: &deetune_replayer::Report) {
    let t = &report.totals.counts;
    let regressed: Vec<&str> = report
        .interfaces
        .iter()
        .filter(|i| i.counts.regression > 0)
        .map(|i| i.name.as_str())
        .collect();
    let noisy: Vec<&str> = report
        .interfaces
        .iter()
        .filter(|i| i.counts.noise_only > 0)
        .map(|i| i.name.as_str())
        .collect();
    println!(
        "{} exchanges: {} pass, {} regression, {} noise only, {} error, {} skipped",
        t.total(),
        t.pass,
        t.regression,
        t.noise_only,
        t.error,
        t.skipped
    );
    if regressed.is_empty() {
        println!("No regression found (the demo expected one in POST /api/cart).");
    } else {
        println!(
            "REGRESSION in {}: shop v2 computes cart totals without the quantities (the injected bug).",
            regressed.join(", ")
        );
    }
    if !noisy.is_empty() {
        println!(
            "Noise absorbed in {}: timestamps, request ids and the new served_by value differ on every call.",
            noisy.join(", ")
        );
    }
    println!(
        "(The demo exits 0 whatever the replay found; `deetune replay` exits 1 on regressions.)"
    );
}
