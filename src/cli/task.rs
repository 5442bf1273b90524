//! `deetune task start|list|show|stop|resume`, and the policy flags shared with
//! `deetune record`. Goes through the daemon when its socket answers; otherwise reads (and
//! for `stop`, updates) the store directly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use deetune_protocols::Protocol;
use deetune_recorder::{Client, ClientError, Policy, DEFAULT_SOCKET};
use deetune_store::{Store, TaskRecord, TaskSpec, TaskState};

use super::Global;
use crate::exit;

/// The recording policy, as flags (`task start` and `record`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Client service (glob: `web`, `web-*`).
    #[arg(long, value_name = "SERVICE")]
    from: Option<String>,
    /// Server service (glob).
    #[arg(long, value_name = "SERVICE")]
    to: Option<String>,
    /// Only this protocol: http, redis or mysql.
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<Protocol>,
    /// Interface to record (repeatable): `POST /api/orders*`, `/health`, `GET` (Redis),
    /// `SELECT` or `SELECT users` (SQL). Any one matching is enough.
    #[arg(long = "interface", value_name = "PATTERN")]
    interfaces: Vec<String>,
    /// Stop after this long: `90s`, `10m`, `1h30m`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<u64>,
    /// Stop after exactly this many recorded exchanges.
    #[arg(long, value_parser = parse_count, value_name = "N", allow_negative_numbers = true)]
    count: Option<u64>,
    /// Keep this fraction of the matching exchanges (0 < RATE ≤ 1).
    #[arg(long, value_parser = parse_sample, value_name = "RATE")]
    sample: Option<f64>,
    /// Cut bodies larger than this (`64KiB`, `1MiB`, bytes without a unit).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_body: Option<u64>,
    /// Also redact this header (repeatable; Authorization, Cookie and Set-Cookie always are).
    #[arg(long = "redact-header", value_name = "NAME")]
    redact_headers: Vec<String>,
    /// Redact this JSON path in bodies (repeatable): `$.card.number`, `$.items[*].token`.
    #[arg(long = "redact-json", value_name = "PATH")]
    redact_json: Vec<String>,
    /// A name for the task.
    #[arg(long)]
    name: Option<String>,
}

impl PolicyArgs {
    /// The task spec, validated.
    pub(crate) fn to_spec(&self) -> anyhow::Result<TaskSpec> {
        let spec = TaskSpec {
            name: self.name.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            protocol: self.protocol,
            interfaces: self.interfaces.clone(),
            duration_secs: self.duration,
            count: self.count,
            sample: self.sample,
            max_body: self.max_body,
            redact_headers: self.redact_headers.clone(),
            redact_json: self.redact_json.clone(),
        };
        Policy::compile(&spec).context("invalid policy")?;
        Ok(spec)
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

fn parse_count(s: &str) -> Result<u64, String> {
    let n: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if n <= 0 {
        return Err(format!("the count must be at least 1, got {n}"));
    }
    u64::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

fn parse_sample(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if r > 0.0 && r <= 1.0 {
        Ok(r)
    } else {
        Err(format!("the sample rate must be in (0, 1], got {s}"))
    }
}

/// `90s`, `10m`, `1h30m`, `2d`, or seconds without a unit → seconds (> 0).
pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration (examples: 90s, 10m, 1h30m)");
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mul = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(mul)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() {
        if saw_unit {
            return Err(bad());
        }
        total = num.parse().map_err(|_| bad())?;
    }
    if total == 0 {
        return Err(format!(
            "the duration must be longer than 0 seconds, got `{s}`"
        ));
    }
    Ok(total)
}

/// `1MiB`, `64KiB`, `10k`, `512` → bytes (> 0).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 512, 64KiB, 1MiB)"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit in `{s}` (B, KiB, MiB, GiB, k, M, G)"
            ))
        }
    };
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if v == 0 {
        return Err("the size must be at least 1 byte".to_owned());
    }
    Ok(v)
}

/// The control socket option every daemon-aware command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, env = "DEETUNE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub(crate) socket: PathBuf,
}

/// A runtime for the short async parts of the CLI.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A client when a daemon answers on `socket`, else none (logged at `-v`).
pub(crate) fn daemon(rt: &tokio::runtime::Runtime, socket: &Path) -> Option<Client> {
    let c = Client::new(socket);
    match rt.block_on(c.status()) {
        Ok(s) => {
            tracing::info!(socket = %socket.display(), pid = s.pid, "Using the daemon.");
            Some(c)
        }
        Err(e) => {
            tracing::info!(socket = %socket.display(), reason = %e, "No daemon answers; opening the store directly.");
            None
        }
    }
}

/// Opens the store of `--data-dir` (or the default).
pub(crate) fn open_store(global: &Global) -> anyhow::Result<Store> {
    let dir = global
        .data_dir
        .clone()
        .unwrap_or_else(deetune_store::default_data_dir);
    Store::open(&dir).with_context(|| format!("cannot open the store in {}", dir.display()))
}

/// Subcommands of `deetune task`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Start a recording task in the daemon.
    Start {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        socket: SocketArg,
        /// Print the task as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the tasks.
    List {
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one task: its policy, state and counters.
    Show {
        /// Task id.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running task.
    Stop {
        /// Task id.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Resume an interrupted (or stopped) task in the daemon.
    Resume {
        /// Task id.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// A daemon answer as a CLI result: API refusals become "could not run" with the message.
fn api<T>(r: Result<T, ClientError>) -> anyhow::Result<Result<T, ExitCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e @ ClientError::Api { .. }) => {
            eprintln!("error: {e}");
            Ok(Err(exit::could_not_run()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn run(global: &Global, command: Command) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match command {
        Command::Start {
            policy,
            socket,
            json,
        } => {
            let spec = policy.to_spec()?;
            let Some(client) = daemon(&rt, &socket.socket) else {
                anyhow::bail!(
                    "no daemon answers on {}: start one with `deetune daemon`, or record in the foreground with `deetune record`",
                    socket.socket.display()
                );
            };
            let t = match api(rt.block_on(client.start(&spec)))? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            print_one(&t, json)?;
        }
        Command::List { socket, json } => {
            let tasks = match daemon(&rt, &socket.socket) {
                Some(c) => match api(rt.block_on(c.tasks()))? {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                },
                None => open_store(global)?
                    .tasks()
                    .context("cannot read the tasks")?,
            };
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&tasks)?))?;
            } else {
                print_table(&tasks)?;
            }
        }
        Command::Show { id, socket, json } => {
            let t = match daemon(&rt, &socket.socket) {
                Some(c) => match api(rt.block_on(c.task(&id)))? {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                },
                None => {
                    let Some(t) = open_store(global)?
                        .task(&id)
                        .context("cannot read the task")?
                    else {
                        eprintln!("error: no task `{id}`");
                        return Ok(exit::could_not_run());
                    };
                    t
                }
            };
            print_one(&t, json)?;
        }
        Command::Stop { id, socket } => {
            let t = match daemon(&rt, &socket.socket) {
                Some(c) => match api(rt.block_on(c.stop(&id)))? {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                },
                None => {
                    let store = open_store(global)?;
                    let Some(mut t) = store.task(&id).context("cannot read the task")? else {
                        eprintln!("error: no task `{id}`");
                        return Ok(exit::could_not_run());
                    };
                    if !matches!(t.state, TaskState::Running | TaskState::Interrupted) {
                        eprintln!("error: task `{id}` is not running");
                        return Ok(exit::could_not_run());
                    }
                    t.state = TaskState::Stopped;
                    t.stop_reason = Some(deetune_recorder::reason::USER.to_owned());
                    t.stopped_ms = Some(deetune_recorder::now_ms());
                    store.put_task(&t).context("cannot save the task")?;
                    store.flush().context("cannot flush the store")?;
                    t
                }
            };
            print_one(&t, false)?;
        }
        Command::Resume { id, socket } => {
            let Some(client) = daemon(&rt, &socket.socket) else {
                anyhow::bail!(
                    "no daemon answers on {}: start one with `deetune daemon`",
                    socket.socket.display()
                );
            };
            let t = match api(rt.block_on(client.resume(&id)))? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            print_one(&t, false)?;
        }
    }
    Ok(exit::success())
}

fn state(t: &TaskRecord) -> &'static str {
    match t.state {
        TaskState::Running => "running",
        TaskState::Stopped => "stopped",
        TaskState::Interrupted => "interrupted",
        TaskState::Imported => "imported",
    }
}

fn print_table(tasks: &[TaskRecord]) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<20} {:<12} {:<11} {:>9} {:>9} {:>9} {:>9}  POLICY",
        "ID", "NAME", "STATE", "MATCHED", "RECORDED", "DROPPED", "TRUNC"
    );
    for t in tasks {
        let s = &t.stats;
        let dropped =
            s.dropped_gap + s.dropped_ring_buffer + s.dropped_body_over_cap + s.dropped_sampling;
        let _ = writeln!(
            o,
            "{:<20} {:<12} {:<11} {:>9} {:>9} {:>9} {:>9}  {}",
            t.id,
            t.spec.name.as_deref().unwrap_or("-"),
            state(t),
            s.matched,
            s.recorded,
            dropped,
            s.truncated,
            policy_summary(&t.spec)
        );
    }
    out(&o)
}

fn policy_summary(s: &TaskSpec) -> String {
    let mut p = format!(
        "{} → {}",
        s.from.as_deref().unwrap_or("*"),
        s.to.as_deref().unwrap_or("*")
    );
    if let Some(proto) = s.protocol {
        p.push_str(&format!(" {proto}"));
    }
    for i in &s.interfaces {
        p.push_str(&format!(" '{i}'"));
    }
    if let Some(d) = s.duration_secs {
        p.push_str(&format!(" {d}s"));
    }
    if let Some(c) = s.count {
        p.push_str(&format!(" count={c}"));
    }
    p
}

/// Prints one task as text (or JSON).
pub(crate) fn print_one(t: &TaskRecord, json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(t)?))?;
        return Ok(());
    }
    let mut o = String::new();
    let s = &t.stats;
    let _ = writeln!(
        o,
        "task      {}{}",
        t.id,
        t.spec
            .name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "state     {}{}",
        state(t),
        t.stop_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let _ = writeln!(o, "policy    {}", policy_summary(&t.spec));
    let _ = writeln!(o, "matched   {}", s.matched);
    let _ = writeln!(o, "recorded  {}", s.recorded);
    let _ = writeln!(
        o,
        "dropped   {} (gap {}, ring buffer {}, body over cap {}, sampling {})",
        s.dropped_gap + s.dropped_ring_buffer + s.dropped_body_over_cap + s.dropped_sampling,
        s.dropped_gap,
        s.dropped_ring_buffer,
        s.dropped_body_over_cap,
        s.dropped_sampling
    );
    let _ = writeln!(o, "truncated {}", s.truncated);
    out(&o)?;
    Ok(())
}

/// Writes to stdout; a closed pipe comes back as an error the caller treats as success.
pub(crate) fn out(s: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_counts() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("45"), Ok(45));
        for bad in ["", "0s", "10x", "m", "1h30", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert!(parse_size("0").is_err() && parse_size("1XB").is_err());
        assert_eq!(parse_count("2000"), Ok(2000));
        assert!(
            parse_count("-1").is_err() && parse_count("0").is_err() && parse_count("x").is_err()
        );
        assert!(
            parse_sample("0").is_err()
                && parse_sample("1.01").is_err()
                && parse_sample("0.25").is_ok()
        );
    }
}
