//! `deetune capture`: a debugging sniffer on the eBPF capture core. Prints connections and
//! payload previews (or JSON lines) and, on Ctrl-C or at the end of `--duration`, the counts.
//! Also the quickest check that a host supports deetune.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use deetune_protocols::Direction;
use deetune_recorder::{Capture, CaptureConfig, CaptureStats, ConnInfo, StreamEvent};

use super::daemon::terminated;
use super::task::{parse_duration, parse_size};
use super::Global;
use crate::exit;

/// Arguments of `deetune capture`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only connections with this local or remote port (repeatable; filtered in the kernel).
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Only this process id (repeatable; filtered in the kernel).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Only processes with this name (`comm`, repeatable; filtered in user space).
    #[arg(long = "comm", value_name = "NAME")]
    comms: Vec<String>,
    /// Print JSON lines (one object per event, then a `stats` object) instead of text.
    #[arg(long)]
    json: bool,
    /// Bytes captured per syscall at most (the rest is a counted gap; at most 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = CaptureConfig::default().max_bytes_per_syscall)]
    max_bytes: u32,
    /// Stop after this long (e.g. 10s, 5m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<u64>,
    /// Print only the final counts, no events (for benchmarks and host checks).
    #[arg(long)]
    summary: bool,
    /// Copy a loopback connection once, from its server end, when both ends are captured
    /// (the client end then shows open and close only).
    #[arg(long)]
    loopback_dedup: bool,
    /// Payload bytes shown per data event in text mode.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    preview: usize,
    /// Size of the kernel's ring buffer (rounded up to a power of two, 4KiB..1GiB): larger
    /// rides out longer stalls of this reader, smaller keeps the copies in the CPU caches.
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size, default_value = "16MiB")]
    ring_buffer: u32,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if v > 1 << 30 {
        return Err(format!("the ring buffer can be at most 1GiB, got `{s}`"));
    }
    u32::try_from(v).map_err(|_| format!("`{s}` is too large"))
}

pub(crate) fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(sniff(args))
}

async fn sniff(args: Args) -> anyhow::Result<ExitCode> {
    let config = CaptureConfig {
        max_bytes_per_syscall: args.max_bytes,
        pids: args.pids.clone(),
        ports: args.ports.clone(),
        loopback_dedup: args.loopback_dedup,
        ring_buffer_bytes: args.ring_buffer,
        ..CaptureConfig::default()
    };
    let mut capture = Capture::start(config).context("cannot start the eBPF capture")?;
    if !args.json && !args.summary {
        eprintln!("Capturing TCP traffic (Ctrl-C stops).");
    }
    let stop = async {
        match args.duration {
            Some(s) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(s)) => {},
                    () = terminated() => {},
                }
            }
            None => terminated().await,
        }
    };
    tokio::pin!(stop);
    let mut shown: HashMap<u64, bool> = HashMap::new();
    let stdout = std::io::stdout();
    let mut batch = Vec::new();
    loop {
        let more = tokio::select! {
            () = &mut stop => break,
            more = capture.next_events(&mut batch) => more,
        };
        if !args.summary {
            let mut out = stdout.lock();
            for ev in &batch {
                print_event(&mut out, &args, &mut shown, ev)?;
            }
            out.flush()?;
        }
        batch.clear();
        if !more {
            break;
        }
    }
    let stats = capture.stats();
    print_stats(&mut stdout.lock(), args.json, &stats)?;
    Ok(exit::success())
}

fn wanted(args: &Args, info: &ConnInfo) -> bool {
    args.comms.is_empty() || args.comms.contains(&info.comm)
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Request => "request",
        Direction::Response => "response",
    }
}

fn preview(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes[..bytes.len().min(max)]
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > max {
        s.push('…');
    }
    s
}

fn print_event(
    out: &mut impl std::io::Write,
    args: &Args,
    shown: &mut HashMap<u64, bool>,
    ev: &StreamEvent,
) -> std::io::Result<()> {
    match ev {
        StreamEvent::Opened(info) => {
            let keep = wanted(args, info);
            shown.insert(info.id, keep);
            if !keep {
                return Ok(());
            }
            if args.json {
                let v = serde_json::json!({
                    "type": "open", "conn": info.id, "pid": info.pid, "comm": info.comm,
                    "cgroup_id": info.cgroup_id, "role": format!("{:?}", info.role).to_lowercase(),
                    "local": info.local.to_string(), "remote": info.remote.to_string(),
                    "ts_ns": info.opened_ns,
                });
                writeln!(out, "{v}")
            } else {
                writeln!(
                    out,
                    "#{} open  {} ({}) {} {} -> {}",
                    info.id,
                    info.comm,
                    info.pid,
                    format!("{:?}", info.role).to_lowercase(),
                    info.local,
                    info.remote
                )
            }
        }
        StreamEvent::Data {
            conn,
            dir,
            ts_ns,
            bytes,
        } => {
            if !shown.get(conn).copied().unwrap_or(false) {
                return Ok(());
            }
            if args.json {
                let v = serde_json::json!({
                    "type": "data", "conn": conn, "dir": dir_name(*dir), "ts_ns": ts_ns,
                    "len": bytes.len(), "text": String::from_utf8_lossy(bytes),
                });
                writeln!(out, "{v}")
            } else {
                let arrow = if *dir == Direction::Request { ">" } else { "<" };
                writeln!(
                    out,
                    "#{conn} {arrow} {} bytes: {}",
                    bytes.len(),
                    preview(bytes, args.preview)
                )
            }
        }
        StreamEvent::Gap {
            conn,
            dir,
            ts_ns,
            len,
            reason,
        } => {
            if !shown.get(conn).copied().unwrap_or(false) {
                return Ok(());
            }
            if args.json {
                let v = serde_json::json!({
                    "type": "gap", "conn": conn, "dir": dir_name(*dir), "ts_ns": ts_ns,
                    "len": len, "reason": format!("{reason:?}"),
                });
                writeln!(out, "{v}")
            } else {
                writeln!(
                    out,
                    "#{conn} gap {} {len} bytes missing ({reason:?})",
                    dir_name(*dir)
                )
            }
        }
        StreamEvent::Closed { conn, ts_ns } => {
            if !shown.remove(conn).unwrap_or(false) {
                return Ok(());
            }
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "close", "conn": conn, "ts_ns": ts_ns})
                )
            } else {
                writeln!(out, "#{conn} close")
            }
        }
    }
}

fn print_stats(out: &mut impl std::io::Write, json: bool, s: &CaptureStats) -> std::io::Result<()> {
    let lost = s.kernel.lost_bytes();
    if json {
        let v = serde_json::json!({
            "type": "stats", "events": s.events, "bytes": s.bytes,
            "request_bytes": s.request_bytes, "response_bytes": s.response_bytes, "gaps": s.gaps,
            "gap_bytes": s.gap_bytes, "lost_bytes": lost, "connections": s.connections,
            "kernel": s.kernel, "kernel_events": s.kernel_events, "kernel_bytes": s.kernel_bytes,
            "dedup_bytes": s.dedup_bytes,
        });
        writeln!(out, "{v}")
    } else {
        writeln!(
            out,
            "{} events, {} connections, {} bytes, {} gaps ({} bytes), {} bytes lost \
             (over cap {}, ring buffer full {}, unreadable {}, sendfile/splice/io_uring {}, \
             after close {}), \
             {} control events lost, {} kernel program runs skipped, \
             {} bytes left to the server end (loopback dedup)",
            s.events,
            s.connections,
            s.bytes,
            s.gaps,
            s.gap_bytes,
            lost,
            s.kernel.over_cap_bytes,
            s.kernel.ring_full_bytes,
            s.kernel.read_failed_bytes,
            s.kernel.other_path_bytes,
            s.kernel.after_close_bytes,
            s.kernel.control_events_lost,
            s.kernel.skipped_runs,
            s.dedup_bytes,
        )
    }
}
