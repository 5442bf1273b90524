//! `deetune replay`: re-send a recording (a bundle file or a task in the store) to staging
//! targets, diff the responses, write reports, exit 0 / 1 / 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use deetune_replayer::{Outcome, Pace, ReplayConfig, RulesFile, Target, Tolerance};

use super::Global;
use crate::exit;

/// Arguments of `deetune replay`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 no regression, 1 regressions (or target errors), 2 could not run."
)]
pub(crate) struct Args {
    /// Bundle file to replay (`.jsonl` or `.jsonl.zst`).
    #[arg(
        value_name = "FILE",
        required_unless_present = "task",
        conflicts_with = "task"
    )]
    file: Option<PathBuf>,
    /// Replay a task's exchanges from the store instead of a file.
    #[arg(long, value_name = "TASK")]
    task: Option<String>,
    /// Target `[SERVICE=]URL`: http://, https://, redis://[:password@]host:port[/db],
    /// mysql://user:pass@host:port/db. Without SERVICE= it applies to every service of its
    /// protocol. Repeatable.
    #[arg(long, value_name = "[SERVICE=]URL", required = true)]
    target: Vec<String>,
    /// Baseline (the current version), same syntax: differences between the recording and the
    /// baseline are noise; only what the candidate changes beyond that is a regression.
    #[arg(long, value_name = "[SERVICE=]URL")]
    baseline: Vec<String>,
    /// Sessions (recorded connections) replayed at the same time.
    #[arg(long, default_value_t = 32, value_name = "N")]
    concurrency: usize,
    /// Replay at the recorded pace scaled: 1x, 2x, 0.5x.
    #[arg(long, value_name = "FACTOR", conflicts_with = "rps")]
    speed: Option<String>,
    /// Replay at a fixed rate (requests per second over all sessions).
    #[arg(long, value_name = "N")]
    rps: Option<f64>,
    /// Only exchanges whose interface matches this glob (`GET /api/*`, `HGET*`, `SELECT *`).
    /// Repeatable.
    #[arg(long, value_name = "GLOB")]
    interface: Vec<String>,
    /// Only reads: HTTP GET/HEAD/OPTIONS, Redis read commands, SQL SELECT/SHOW.
    #[arg(long)]
    only_reads: bool,
    /// Set a header on every HTTP request (`Name: value`). Repeatable.
    #[arg(long, value_name = "HEADER")]
    set_header: Vec<String>,
    /// Rewrite an HTTP path prefix (`/v1/=/v2/`). Repeatable; first match wins.
    #[arg(long, value_name = "FROM=TO")]
    rewrite_path: Vec<String>,
    /// Allow a target that is the recorded production server.
    #[arg(long)]
    allow_production_target: bool,
    /// Ignore differences at a path (`body:$.items[*].updated_at`, `header:etag`). Repeatable.
    #[arg(long, value_name = "PATH")]
    ignore: Vec<String>,
    /// Compare an array without order (`body:$.tags`). Repeatable.
    #[arg(long, value_name = "PATH")]
    unordered: Vec<String>,
    /// Compare MySQL result rows without order.
    #[arg(long)]
    unordered_rows: bool,
    /// Numeric tolerance `PATH=ABS` (`body:$.total=0.01`). Repeatable.
    #[arg(long, value_name = "PATH=ABS")]
    tolerance: Vec<String>,
    /// Rules file (TOML; the format --write-noise writes).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Write the noise learned from --baseline as a rules file.
    #[arg(long, value_name = "FILE", requires = "baseline")]
    write_noise: Option<PathBuf>,
    /// https targets: trust the CA certificates in this PEM file too (a staging CA or a
    /// self-signed certificate's issuer), besides the built-in web roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// https targets: accept any server certificate (self-signed staging). Still encrypted,
    /// but the server is not authenticated.
    #[arg(long)]
    insecure: bool,
    /// Seconds to wait for a connection or a response.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Write the JSON report.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write a JUnit XML report (one testsuite per interface).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a self-contained HTML report with side-by-side diffs.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

fn config(global: &Global, args: &Args) -> anyhow::Result<ReplayConfig> {
    let parse_targets = |v: &[String]| -> anyhow::Result<Vec<Target>> {
        v.iter()
            .map(|t| Target::parse(t).map_err(anyhow::Error::from))
            .collect()
    };
    let mut rules = match &args.rules {
        Some(p) => RulesFile::load(p)?,
        None => RulesFile::default(),
    };
    for p in args.ignore.iter().chain(&args.unordered) {
        deetune_replayer::check_path(p)?;
    }
    rules.ignore.extend(args.ignore.iter().cloned());
    rules.unordered.extend(args.unordered.iter().cloned());
    rules.unordered_rows |= args.unordered_rows;
    for t in &args.tolerance {
        let (path, abs) = t
            .rsplit_once('=')
            .with_context(|| format!("--tolerance `{t}`: expected PATH=ABS"))?;
        let abs: f64 = abs
            .parse()
            .with_context(|| format!("--tolerance `{t}`: `{abs}` is not a number"))?;
        deetune_replayer::check_path(path)?;
        rules.tolerance.push(Tolerance {
            path: path.to_owned(),
            absolute: Some(abs),
            relative: None,
        });
    }
    let pace = match (&args.speed, args.rps) {
        (Some(s), _) => Pace::parse_speed(s).map_err(anyhow::Error::msg)?,
        (None, Some(r)) if r.is_finite() && r > 0.0 => Pace::Rps(r),
        (None, Some(r)) => anyhow::bail!("--rps must be positive, not {r}"),
        (None, None) => Pace::AsFastAsPossible,
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    Ok(ReplayConfig {
        targets: parse_targets(&args.target)?,
        baselines: parse_targets(&args.baseline)?,
        concurrency: args.concurrency.max(1),
        pace,
        interfaces: args.interface.clone(),
        only_reads: args.only_reads,
        set_headers: args
            .set_header
            .iter()
            .map(|h| deetune_replayer::parse_header(h).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        rewrite_path: args
            .rewrite_path
            .iter()
            .map(|r| deetune_replayer::parse_rewrite(r).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        allow_production_target: args.allow_production_target,
        rules,
        timeout: Duration::from_secs_f64(args.timeout),
        insecure: args.insecure,
        ca_certs: args.ca_cert.clone(),
        progress: !global.quiet,
        max_details: 500,
    })
}

pub(crate) fn run(global: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let config = config(global, args)?;
    let report = if let Some(task) = &args.task {
        let store = super::export::open_store(global)?;
        let source = store.exchanges(task).map(|r| r.map(|(_, x)| x));
        deetune_replayer::replay(source, config)
    } else {
        let file = args
            .file
            .as_ref()
            .context("a bundle FILE or --task is required")?;
        let reader = deetune_store::BundleReader::open(file)
            .with_context(|| format!("opening {}", file.display()))?;
        deetune_replayer::replay(reader, config)
    }
    .context("replaying")?;
    if let Some(p) = &args.report_json {
        report.write_json(p)?;
    }
    if let Some(p) = &args.junit {
        report.write_junit(p)?;
    }
    if let Some(p) = &args.html {
        report.write_html(p)?;
    }
    if let Some(p) = &args.write_noise {
        report.write_noise(p)?;
    }
    if !global.quiet {
        eprint!("{}", report.summary());
    }
    Ok(match report.outcome() {
        Outcome::Clean => exit::success(),
        Outcome::Regressions => exit::regressions(),
        Outcome::CouldNotRun => {
            eprintln!("error: nothing could be replayed (no exchange was answered by a target)");
            exit::could_not_run()
        }
    })
}
