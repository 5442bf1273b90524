//! CPU time per exchange of the store's main operations (insert, read back, export,
//! import), measured with `getrusage` over the whole process (all threads), next to wall
//! time. CPU time is a steadier measure than criterion's wall time when other work shares
//! the cores. Same exchanges as `benches/store.rs` (small HTTP calls).
//!
//! `cargo run --release -p deetune-store --example store_cpu [-- ROUNDS [ONLY]]`: ONLY
//! (`insert`, `read`, `export`, `import`) runs one measure, for a profiler.

use std::io::Write as _;
use std::time::{Duration, Instant};

use deetune_store::Store;

#[path = "../benches/common/mod.rs"]
mod common;
use common::{small_http, task};

const TASK_SIZE: u64 = 100_000;
const BATCH: usize = 1000;

/// User + system CPU time of the whole process.
fn cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `f` `rounds` times; prints the median wall and CPU time per item.
fn measure(name: &str, items: u64, bytes: Option<u64>, rounds: usize, f: &mut dyn FnMut()) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..rounds {
        let (w0, c0) = (Instant::now(), cpu());
        f();
        walls.push(w0.elapsed());
        cpus.push(cpu() - c0);
    }
    walls.sort();
    cpus.sort();
    let (wall, cpu) = (walls[rounds / 2], cpus[rounds / 2]);
    let per = |d: Duration| d.as_secs_f64() * 1e9 / items as f64;
    let rate = items as f64 / wall.as_secs_f64();
    let mb = bytes.map_or(String::new(), |b| {
        format!(
            ", {:.0} MiB/s wall, {:.0} MiB per CPU-second",
            b as f64 / wall.as_secs_f64() / 1048576.0,
            b as f64 / cpu.as_secs_f64() / 1048576.0
        )
    });
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error worth a panic.
    let _ = writeln!(
        out,
        "{name}: {:.0} ns CPU/exchange ({:.2} M/CPU-s), {:.0} ns wall/exchange ({:.2} M/s){mb}",
        per(cpu),
        1e3 / per(cpu),
        per(wall),
        rate / 1e6,
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let only = std::env::args().nth(2);
    let run = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(tmp.path().join("s")).expect("open store");
    store.put_task(&task("t-read")).expect("put task");
    let xs: Vec<_> = (0..TASK_SIZE).map(small_http).collect();
    let mut task = 0;
    let measure = |name: &str, items, bytes, rounds, f: &mut dyn FnMut()| {
        if run(name) {
            measure(name, items, bytes, rounds, f);
        }
    };
    measure(
        "insert (batches of 1000)",
        TASK_SIZE,
        None,
        rounds,
        &mut || {
            task += 1;
            for chunk in xs.chunks(BATCH) {
                store
                    .append(&format!("t-ins{task}"), chunk)
                    .expect("append");
            }
        },
    );
    for chunk in xs.chunks(BATCH) {
        store.append("t-read", chunk).expect("append");
    }
    store.flush().expect("flush");
    measure("read back", TASK_SIZE, None, rounds, &mut || {
        let n = store.exchanges("t-read").map(Result::unwrap).count();
        assert_eq!(n as u64, TASK_SIZE);
    });
    let out = tmp.path().join("export.jsonl");
    store.export_bundle("t-read", &out).expect("export");
    let bytes = std::fs::metadata(&out).expect("bundle").len();
    measure(
        "export (jsonl)",
        TASK_SIZE,
        Some(bytes),
        rounds,
        &mut || {
            store.export_bundle("t-read", &out).expect("export");
        },
    );
    measure(
        "import (jsonl)",
        TASK_SIZE,
        Some(bytes),
        rounds,
        &mut || {
            let s = store.import_bundle(&out).expect("import");
            store.delete_task(&s.task_id).expect("delete");
        },
    );
    let _ = writeln!(
        std::io::stdout().lock(),
        "bytes per exchange: stored blocks {}, sled size_on_disk {} (all tasks)",
        store.task_usage("t-read").expect("usage").bytes / TASK_SIZE,
        store.size_on_disk().expect("size") / TASK_SIZE,
    );
}
