//! `kiungo-commitbench`: what the store's ingest commit costs per event,
//! alone: no broker, no mapping inside the timed part.
//!
//! ```text
//! cargo build --release -p kiungo-tests --bin kiungo-commitbench
//! target/release/kiungo-commitbench --events 50000 --store sqlite
//! target/release/kiungo-commitbench --events 50000 --store postgres
//! ```
//!
//! The loadgen's workload (the four packs' events, as `kiungo-loadgen`
//! publishes them) is mapped first, as the ingest pipeline maps it
//! (`kiungo::ingest::prepare`); then the prepared events are committed in
//! batches of `--batch` (the default `ingest.max_events`), one after the
//! other, as the committer does. Reported over the commit loop only:
//! events per second, this process's CPU per event and per thread (SQLite
//! runs in it, on its connection threads), on SQLite the file I/O per
//! event (journal writes, checkpoints, pages read back), on PostgreSQL
//! the CPU of the server's backends for this store's database, and the
//! rows written per event. `--batches-before N` commits N batches untimed
//! first, so that the timed part writes into a store that already holds
//! them. `--sql FILE` runs a script on the new store first (to compare a
//! schema change before writing it as a migration).

use std::time::Instant;

use anyhow::{Context, bail};
use kiungo::ingest::{Limits, Origin, prepare};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Ingest, Store};
use kiungo_tests::workload::{Mix, generate_with, load_mappings, packs_dir};

struct Args {
    events: usize,
    batch: usize,
    backend: Backend,
    before: usize,
    sql: Option<std::path::PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 50_000,
        batch: 500,
        backend: Backend::Sqlite,
        before: 0,
        sql: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--batches-before" => a.before = value()?.parse()?,
            "--sql" => a.sql = Some(value()?.into()),
            "--store" => a.backend = kiungo_tests::harness::parse_store(&value()?)?,
            other => bail!(
                "unknown flag {other}; flags: --events N --batch N --batches-before N --store sqlite|postgres --sql FILE"
            ),
        }
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    Ok(a)
}

/// Rows in the tables an ingest commit writes.
async fn rows(store: &Store) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let mut out = Vec::new();
    for table in [
        "events",
        "event_versions",
        "fhir_outbox",
        "dhis2_contributions",
        "dhis2_dirty",
    ] {
        out.push((table, store.count_rows(table).await?));
    }
    Ok(out)
}

/// CPU seconds of this process's threads, summed by thread name (the
/// SQLite connection threads are `sqlx-sqlite-worker-N`, cut to 15
/// characters by the kernel).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        if let Some(cpu) = kiungo_tests::harness::process_cpu_seconds(&format!("self/task/{tid}")) {
            *out.entry(name).or_insert(0.0) += cpu;
        }
    }
    out
}

/// This process's I/O counters from `/proc/self/io`: bytes and calls
/// written and read through system calls (`wchar`, `syscw`, `rchar`,
/// `syscr`), whether or not they reached the disk.
fn io_counters() -> std::collections::BTreeMap<String, f64> {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse::<f64>().ok()?)))
        .collect()
}

/// The allocator `kiungo run` uses, so that the commit's own allocations
/// cost here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mappings = load_mappings(&packs_dir())?;
    let total = args.events + args.before * args.batch;
    let workload = generate_with(
        &mappings,
        total,
        42,
        Mix {
            duplicates: 0.0,
            edits: 0.0,
            poison: 0.0,
        },
    )?;
    let prepared: Vec<Ingest> = workload
        .messages
        .into_iter()
        .map(|m| {
            let origin = Origin {
                source: m.source,
                queue: Some("commitbench".into()),
                message_id: Some(m.message_id),
                timestamp_ms: Some(i64::try_from(m.timestamp).unwrap_or(i64::MAX) * 1000),
                headers: None,
                route: Ok(None),
            };
            prepare(&mappings, origin, m.body, Limits { max_bytes: 1 << 20 })
        })
        .collect();
    let rejected = prepared.iter().filter(|i| i.result.is_err()).count();
    let payload_bytes: usize = prepared.iter().map(|i| i.payload.len()).sum();
    let bundle_bytes: usize = prepared
        .iter()
        .filter_map(|i| i.result.as_ref().ok())
        .filter_map(|o| o.bundle.as_ref())
        .map(|(b, _)| b.len())
        .sum();
    let scratch = ScratchDb::new(args.backend).await?;
    let store = Store::open(&scratch.config).await?;
    if let Some(file) = &args.sql {
        let script =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        store.execute_script(&script).await?;
        println!("ran {} on the new store", file.display());
    }
    let (warm, timed) = prepared.split_at(args.before * args.batch);
    for batch in warm.chunks(args.batch) {
        store.commit(batch).await?;
    }
    // PostgreSQL's backends serving this store (`postgres: USER DB …`).
    let database = scratch
        .config
        .url
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .unwrap_or_default()
        .to_owned();
    let server_cpu = || {
        kiungo_tests::harness::processes_cpu_seconds(|c| {
            // `postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE`
            c.starts_with("postgres:") && c.split_whitespace().any(|w| w == database)
        })
    };
    let server0 = server_cpu();
    let threads0 = cpu_by_thread();
    let io0 = io_counters();
    let cpu0 = kiungo_tests::harness::process_cpu_seconds("self");
    let t = Instant::now();
    for batch in timed.chunks(args.batch) {
        store.commit(batch).await?;
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = kiungo_tests::harness::process_cpu_since("self", cpu0);
    let n = timed.len() as f64;
    let threads1 = cpu_by_thread();
    let server = server_cpu() - server0;
    let io1 = io_counters();
    println!(
        "store {:?}: {} events committed in batches of {} after {} untimed ({} rejected by mapping)",
        args.backend,
        timed.len(),
        args.batch,
        warm.len(),
        rejected
    );
    println!(
        "{:.0} events/s, {} CPU µs/event (this process)",
        n / wall,
        cpu.map_or("?".into(), |c| format!("{:.1}", 1e6 * c / n))
    );
    for (name, after) in &threads1 {
        let spent = after - threads0.get(name).copied().unwrap_or(0.0);
        if spent > 0.0 {
            println!("  thread {name}: {:.1} CPU µs/event", 1e6 * spent / n);
        }
    }
    let io =
        |k: &str| (io1.get(k).copied().unwrap_or(0.0) - io0.get(k).copied().unwrap_or(0.0)) / n;
    // SQLite's file I/O (journal, checkpoint, pages read back); on
    // PostgreSQL the server does its own, in its backends.
    if args.backend == Backend::Postgres {
        println!(
            "  PostgreSQL backends of this store: {:.1} CPU µs/event",
            1e6 * server / n
        );
    }
    if args.backend == Backend::Sqlite {
        println!(
            "  file I/O per event: {:.0} bytes written in {:.1} calls, {:.0} bytes read in {:.1} calls",
            io("wchar"),
            io("syscw"),
            io("rchar"),
            io("syscr")
        );
    }
    println!(
        "  per event: {} payload bytes, {} bundle bytes",
        payload_bytes / total.max(1),
        bundle_bytes / total.max(1)
    );
    for (table, count) in rows(&store).await? {
        println!(
            "  {table}: {count} rows ({:.2} per event)",
            count as f64 / total as f64
        );
    }
    Ok(())
}
