//! `kiungo-backlogbench`: how fast the release `kiungo` drains a backlog
//! left by an outage, as the backlog grows from 1k to 1M events.
//!
//! ```text
//! cargo build --release -p kiungo -p kiungo-tests
//! target/release/kiungo-backlogbench --store sqlite --sizes 1000,10000,100000,1000000
//! target/release/kiungo-backlogbench --store postgres --sizes 1000,10000,100000,1000000
//! ```
//!
//! For each size, on a fresh database:
//! 1. **Outage.** `kiungo run` ingests `--base` events (the four packs'
//!    originals, as `kiungo-loadgen` publishes them) from RabbitMQ while
//!    both destinations are down (connection refused), then stops.
//! 2. **Accumulated backlog.** The store is grown to the size by copying
//!    those events, their versions, FHIR bundles and DHIS2 contributions
//!    under new event ids (in one statement each), every bundle pending
//!    and due, every DHIS2 total dirty, the circuit breakers reset: what a
//!    longer outage would have left. PostgreSQL is then `ANALYZE`d, as
//!    autovacuum would have.
//! 3. **Drain.** `kiungo run` starts again with the FHIR and DHIS2
//!    simulators (`kiungo::sandbox`, in this process, no faults, no
//!    latency) up. The clock runs from the first transaction the FHIR
//!    simulator receives until it has received `--window` of them (or the
//!    whole backlog, when smaller): the drain rate is those bundles over
//!    that time, and CPU seconds per 1,000 bundles are counted over the
//!    same window for the `kiungo` process and for the whole machine
//!    (`/proc/stat`: PostgreSQL, the simulators and anything else).
//!
//! DHIS2 totals are held back during the drain (`push_delay` and
//! `max_push_delay` 1h): the
//! copies add every contribution to the same few hundred totals (4,000 per
//! total at 1M), whose one recompute reads all of them, work of the whole
//! backlog that would land inside the timed window of the large sizes
//! only. `kiungo-deliverybench` measures DHIS2 pushes.
//!
//! The copies share their bundles' content with the originals, so the
//! FHIR simulator's work per transaction is the same at every size; what
//! changes with the size is only what Kiungo's store holds.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Store};
use kiungo_tests::harness::{Publisher, Vhost, queue_for, wait_ready};
use kiungo_tests::workload::{Mix, generate_with, load_mappings, packs_dir};

const SOURCES: [&str; 4] = ["cht", "commcare", "kobo", "inhouse"];

struct Args {
    sizes: Vec<usize>,
    backend: Backend,
    base: usize,
    window: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        sizes: vec![1_000, 10_000, 100_000, 1_000_000],
        backend: Backend::Sqlite,
        base: 1_000,
        window: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => a.sizes = kiungo_tests::harness::parse_sizes(&value()?)?,
            "--store" => a.backend = kiungo_tests::harness::parse_store(&value()?)?,
            "--base" => a.base = value()?.parse()?,
            "--window" => a.window = value()?.parse()?,
            other => bail!(
                "unknown flag {other}; flags: --sizes 1000,10000,... --store sqlite|postgres \
                 --base N (events ingested) --window N (bundles timed)"
            ),
        }
    }
    if a.sizes.iter().any(|s| *s < a.base || *s % a.base != 0) {
        bail!("every size must be a multiple of --base {}", a.base);
    }
    Ok(a)
}

/// user + system CPU seconds of a process (0 when it is gone).
fn process_cpu(pid: u32) -> f64 {
    kiungo_tests::harness::process_cpu_seconds(&pid.to_string()).unwrap_or(0.0)
}

/// Busy CPU seconds of the whole machine since boot.
fn machine_cpu() -> f64 {
    kiungo_tests::harness::machine_cpu_seconds().map_or(0.0, |(busy, _)| busy)
}

/// Grows the store from its `base` events to `size` by copying them under
/// new event ids, and makes everything due now.
fn grow_sql(backend: Backend, copies: usize, now: i64) -> String {
    let analyze = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => "ANALYZE;",
    };
    let n = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies})"
    );
    let reset = format!(
        "UPDATE fhir_outbox SET state = 'pending', attempts = 0, next_attempt_at = 0, \
         lease_until = NULL, last_error = NULL; \
         UPDATE dhis2_dirty SET attempts = 0, next_attempt_at = 0, last_error = NULL, lease_until = NULL, \
         claim = NULL, marked_at = {now}, changed_at = {now}; \
         DELETE FROM destinations;"
    );
    if copies == 0 {
        return format!("{reset} {analyze}");
    }
    format!(
        "{reset} \
         {n} INSERT INTO events (source, event_id, state, superseded_by, mapping, mapping_version, \
           version_hash, version_ts, versions, message_id, payload, received_at, updated_at) \
         SELECT source, event_id || '~' || n.i, state, superseded_by, mapping, mapping_version, version_hash, \
           version_ts, versions, message_id, payload, received_at, updated_at FROM events CROSS JOIN n; \
         {n} INSERT INTO event_versions (source, event_id, version_hash, seen_at) \
         SELECT source, event_id || '~' || n.i, version_hash, seen_at FROM event_versions CROSS JOIN n \
           WHERE event_id NOT LIKE '%~%'; \
         {n} INSERT INTO fhir_outbox (source, event_id, version_hash, mapping, bundle, entries, state, \
           attempts, next_attempt_at, created_at, updated_at) \
         SELECT o.source, o.event_id || '~' || n.i, o.version_hash, o.mapping, o.bundle, o.entries, 'pending', \
           0, 0, o.created_at, o.updated_at FROM fhir_outbox o CROSS JOIN n \
           WHERE o.event_id NOT LIKE '%~%' ORDER BY n.i, o.id; \
         {n} INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, org_unit, coc, \
           aoc, aggregation, value, value_num, event_date, created_at) \
         SELECT source, event_id || '~' || n.i, rule, data_element, period, org_unit, coc, aoc, aggregation, \
           value, value_num, event_date, created_at FROM dhis2_contributions CROSS JOIN n \
           WHERE event_id NOT LIKE '%~%'; \
         {analyze}"
    )
}

fn config(
    dir: &std::path::Path,
    store: &str,
    amqp: &str,
    port: u16,
    fhir: &str,
    dhis2: &str,
    delay: &str,
) -> anyhow::Result<std::path::PathBuf> {
    std::fs::write(
        dir.join("key"),
        "kiungo-backlogbench-pseudonym-key-0123456789",
    )?;
    std::fs::write(dir.join("pw"), "district")?;
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for("backlogbench", s)
        ));
    }
    let yaml = format!(
        "mappings: {mappings}\npseudonym_key_file: key\nstore:\n  url: {store}\n\
         rabbitmq:\n  url: {amqp}\n  queues:\n{queues}http:\n  listen: 127.0.0.1:{port}\n\
         destinations:\n  fhir:\n    server: {{base_url: '{fhir}'}}\n    concurrency: 64\n\
         \x20 dhis2:\n    server:\n      base_url: '{dhis2}'\n      auth: {{type: basic, username: admin, password: {{file: {pw}}}}}\n    push_delay: {delay}\n    max_push_delay: {delay}\n",
        mappings = packs_dir().display(),
        pw = dir.join("pw").display(),
    );
    let path = dir.join(format!("kiungo-{port}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The release `kiungo` beside this binary, logging to `log`.
struct Kiungo(std::process::Child);

impl Kiungo {
    fn start(config: &std::path::Path, log: &std::path::Path, level: &str) -> anyhow::Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("kiungo");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = std::process::Command::new(&bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self(child))
    }

    /// SIGTERM, then wait for the exit.
    fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Kiungo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Drain {
    size: usize,
    bundles: u64,
    secs: f64,
    kiungo_cpu: f64,
    machine_cpu: f64,
    fill_secs: f64,
}

async fn run_size(a: &Args, size: usize, sandbox: &Sandbox) -> anyhow::Result<Drain> {
    let vhost = Vhost::new()?;
    let db = ScratchDb::new(a.backend).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("kiungo.log");

    // 1. Outage: ingest the base events with both destinations refusing.
    let down = "http://127.0.0.1:9";
    let port = free_port()?;
    let cfg = config(
        dir.path(),
        &db.config.url,
        &vhost.url(),
        port,
        down,
        down,
        "1s",
    )?;
    let kiungo = Kiungo::start(&cfg, &log, "error")?;
    wait_ready(port, Duration::from_secs(60)).await?;
    let mappings = load_mappings(&packs_dir())?;
    let workload = generate_with(
        &mappings,
        a.base,
        7,
        Mix {
            duplicates: 0.0,
            edits: 0.0,
            poison: 0.0,
        },
    )?;
    let publisher = Publisher::connect(&vhost.url(), "backlogbench").await?;
    publisher.send(&workload.messages).await?;
    let store = Store::open(&db.config).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while store.count_events().await? < a.base as i64 {
        if Instant::now() > deadline {
            bail!(
                "the base events were not stored in 300 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kiungo.stop()?;

    // 2. The backlog a longer outage would have left.
    let fill = Instant::now();
    store
        .execute_script(&grow_sql(
            a.backend,
            size / a.base - 1,
            kiungo::store::now_ms(),
        ))
        .await?;
    let fill_secs = fill.elapsed().as_secs_f64();
    let stored = store.count_events().await?;
    if stored != size as i64 {
        bail!("grew the store to {stored} events, not {size}");
    }
    store.close().await;

    // 3. Drain with both destinations up.
    let before = sandbox.fhir_overlaps()["requests"].as_u64().unwrap_or(0);
    let port = free_port()?;
    let cfg = config(
        dir.path(),
        &db.config.url,
        &vhost.url(),
        port,
        &sandbox.fhir_url(),
        &sandbox.dhis2_url(),
        // DHIS2 totals wait: see the module docs.
        "1h",
    )?;
    let kiungo = Kiungo::start(&cfg, &log, "warn")?;
    let pid = kiungo.0.id();
    let target = a.window.min(size) as u64;
    let sent = || sandbox.fhir_overlaps()["requests"].as_u64().unwrap_or(0) - before;
    let deadline = Instant::now() + Duration::from_secs(600);
    while sent() == 0 {
        if Instant::now() > deadline {
            bail!(
                "no bundle reached the FHIR simulator (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (start, first) = (Instant::now(), sent());
    let (k0, m0) = (process_cpu(pid), machine_cpu());
    let mut last = first;
    let mut tick = (Instant::now(), last);
    while last < target {
        if Instant::now() > deadline {
            bail!(
                "only {last} of {target} bundles sent in 600 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        last = sent();
        if tick.0.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {size}: {} bundles/s", last - tick.1);
            tick = (Instant::now(), last);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (k1, m1) = (process_cpu(pid), machine_cpu());
    kiungo.stop()?;
    // The service's log (warnings: slow statements, failures), kept.
    let kept = std::env::temp_dir().join(format!("kiungo-backlogbench-{size}.log"));
    std::fs::copy(&log, &kept)?;
    Ok(Drain {
        size,
        bundles: last - first,
        secs,
        kiungo_cpu: k1 - k0,
        machine_cpu: m1 - m0,
        fill_secs,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiungo::tls::install_crypto_provider();
    let a = args()?;
    let mut config = SandboxConfig::for_test();
    config.workers = 2;
    let sandbox = Sandbox::start(config).await?;
    let store = match a.backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL over TCP",
    };
    println!(
        "| store | backlog (events) | bundles timed | drain, bundles/s | vs smallest | kiungo CPU-s / 1k | machine CPU-s / 1k | backlog built in |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut first_rate = None;
    for &size in &a.sizes {
        let d = run_size(&a, size, &sandbox).await?;
        let rate = d.bundles as f64 / d.secs;
        let base = *first_rate.get_or_insert(rate);
        let per_k = |cpu: f64| cpu * 1000.0 / d.bundles.max(1) as f64;
        println!(
            "| {store} | {} | {} | {rate:.0} | {:+.0} % | {:.2} | {:.2} | {:.0} s |",
            d.size,
            d.bundles,
            (rate / base - 1.0) * 100.0,
            per_k(d.kiungo_cpu),
            per_k(d.machine_cpu),
            d.fill_secs,
        );
    }
    sandbox.stop().await;
    Ok(())
}
