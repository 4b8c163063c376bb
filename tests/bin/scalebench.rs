//! `kiungo-scalebench`: end-to-end throughput of 1, 2 and 3 release
//! `kiungo` replicas sharing one PostgreSQL database (through the local
//! Unix socket) and the same RabbitMQ queues, delivering to the FHIR and
//! DHIS2 simulators (`kiungo::sandbox`, in this process, no faults), and
//! where the CPU goes.
//!
//! ```text
//! cargo build --release -p kiungo -p kiungo-tests
//! target/release/kiungo-scalebench --events 30000 --replicas 1,2,3
//! ```
//!
//! Each run has a vhost, a database and simulators of its own. The
//! replicas are started and ready first; then the N events (all
//! originals of the four packs, as `kiungo-loadgen` and
//! `kiungo-deliverybench` use) are published on one confirmed channel
//! while the replicas consume. The clock runs from the first publish until
//! every event is committed and every FHIR bundle delivered (the
//! throughput), and on until no DHIS2 total is left to push (reported
//! apart: totals go out after the push delay, and a claim whose result
//! could not be recorded waits for its lease). CPU seconds (user + system,
//! from `/proc`) are counted until the last FHIR bundle for the replicas,
//! this database's PostgreSQL backends (the bench's own polling included), PostgreSQL's own background processes, RabbitMQ
//! (`beam.smp`, shared with anything else on the broker), and this
//! process (publisher and simulators); "machine busy" is the share of
//! both cores in use (`/proc/stat`), whoever used them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiungo::sandbox::{Faults, Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Store, StoreConfig};
use kiungo_tests::harness::{Publisher, Vhost, local_socket_url, queue_for, wait_ready};
use kiungo_tests::workload::{Mix, Workload, generate_with, load_mappings, packs_dir};

const SOURCES: [&str; 4] = ["cht", "commcare", "kobo", "inhouse"];

struct Args {
    events: usize,
    replicas: Vec<usize>,
    fhir_latency: Duration,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 30_000,
        replicas: vec![1, 2, 3],
        fhir_latency: Duration::ZERO,
        concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--replicas" => {
                a.replicas = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--fhir-latency-ms" => a.fhir_latency = Duration::from_millis(value()?.parse()?),
            "--concurrency" => a.concurrency = value()?.parse()?,
            other => bail!(
                "unknown flag {other}; flags: --events N --replicas 1,2,3 --fhir-latency-ms MS --concurrency N (FHIR, per replica)"
            ),
        }
    }
    Ok(a)
}

/// user + system CPU seconds of a process, and its command line.
fn proc_cpu(pid: &str) -> Option<(f64, String)> {
    use kiungo_tests::harness::{process_cmdline, process_cpu_seconds};
    Some((process_cpu_seconds(pid)?, process_cmdline(pid)?))
}

/// CPU seconds per process group at one instant.
#[derive(Debug, Default, Clone)]
struct Cpu {
    /// By pid, so that a process that ends is still counted up to its
    /// last sample.
    by_pid: HashMap<String, (String, f64)>,
    /// Busy and total CPU seconds of the whole machine.
    machine: (f64, f64),
}

/// Which group a process belongs to, if any.
fn group(cmdline: &str, pid: &str, replicas: &[u32], db: &str) -> Option<String> {
    if pid == std::process::id().to_string() {
        return Some("bench".into());
    }
    if let Some(i) = replicas.iter().position(|p| p.to_string() == pid) {
        return Some(format!("replica{i}"));
    }
    if cmdline.contains("beam.smp") && cmdline.contains("rabbit") {
        return Some("rabbitmq".into());
    }
    if cmdline.starts_with("postgres:") {
        if cmdline.contains(db) {
            return Some("pg_backends".into());
        }
        if [
            "checkpointer",
            "background writer",
            "walwriter",
            "autovacuum",
        ]
        .iter()
        .any(|p| cmdline.contains(p))
        {
            return Some("pg_server".into());
        }
    }
    None
}

fn sample(into: &mut Cpu, replicas: &[u32], db: &str) {
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Some((secs, cmdline)) = proc_cpu(&pid) else {
                continue;
            };
            if let Some(g) = group(&cmdline, &pid, replicas, db) {
                into.by_pid.insert(pid, (g, secs));
            }
        }
    }
    if let Some(machine) = kiungo_tests::harness::machine_cpu_seconds() {
        into.machine = machine;
    }
}

/// CPU seconds per group between two samples (processes that started in
/// between count from zero).
fn delta(before: &Cpu, after: &Cpu) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for (pid, (g, secs)) in &after.by_pid {
        let base = before.by_pid.get(pid).map_or(0.0, |(_, s)| *s).min(*secs);
        *out.entry(g.clone()).or_default() += secs - base;
    }
    out
}

struct Run {
    replicas: usize,
    publish_secs: f64,
    /// From the first publish until every event was committed.
    committed_secs: f64,
    /// ... until no DHIS2 total was left to push.
    dhis2_secs: f64,
    secs: f64,
    bundles: i64,
    cpu: HashMap<String, f64>,
    machine_busy: f64,
    /// CPU seconds of everything else on the machine meanwhile.
    other: f64,
    per_replica_events: Vec<f64>,
    deadlocks: usize,
    /// Warnings in the replicas' logs: count and first line, by message,
    /// most frequent first.
    warnings: Vec<(usize, String)>,
}

/// The text without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn run(
    n_replicas: usize,
    workload: &Workload,
    args: &Args,
    bin: &Path,
) -> anyhow::Result<Run> {
    let mut sandbox_config = SandboxConfig::for_test();
    sandbox_config.workers = 2;
    sandbox_config.fhir.faults = Faults {
        latency: args.fhir_latency,
        ..Faults::default()
    };
    let sandbox = Sandbox::start(sandbox_config).await?;
    let vhost = Vhost::new()?;
    let prefix = "scalebench";
    let db = ScratchDb::new(Backend::Postgres).await?;
    let url = local_socket_url(&db.config.url);
    let db_name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map_or("", |(_, d)| d)
        .to_owned();
    // Migrations once, before the replicas.
    let store = Store::open(&StoreConfig {
        url: url.clone(),
        ..StoreConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("key"),
        "kiungo-scalebench-pseudonym-key-0123456789",
    )?;
    std::fs::write(dir.path().join("pw"), "district")?;
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for(prefix, s)
        ));
    }
    let mut children = Vec::new();
    let mut ports = Vec::new();
    let mut logs: Vec<PathBuf> = Vec::new();
    for i in 0..n_replicas {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let yaml = format!(
            "mappings: {mappings}\npseudonym_key_file: key\nstore:\n  url: '{url}'\n\
             rabbitmq:\n  url: {amqp}\n  prefetch: 500\n  queues:\n{queues}http:\n  listen: 127.0.0.1:{port}\n\
             destinations:\n  fhir:\n    server: {{base_url: '{fhir}'}}\n    concurrency: {conc}\n\
             \x20 dhis2:\n    server:\n      base_url: '{dhis2}'\n      auth: {{type: basic, username: admin, password: {{file: {pw}}}}}\n    push_delay: 1s\n",
            mappings = packs_dir().display(),
            amqp = vhost.url(),
            fhir = sandbox.fhir_url(),
            dhis2 = sandbox.dhis2_url(),
            conc = args.concurrency,
            pw = dir.path().join("pw").display(),
        );
        let config = dir.path().join(format!("replica-{i}.yaml"));
        std::fs::write(&config, yaml)?;
        let log = dir.path().join(format!("replica-{i}.log"));
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push(child);
        ports.push(port);
        logs.push(log);
    }
    for port in &ports {
        wait_ready(*port, Duration::from_secs(30)).await?;
    }
    let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();

    let mut before = Cpu::default();
    sample(&mut before, &pids, &db_name);
    let mut last = before.clone();
    let want = workload.messages.len() as i64;
    let publisher = Publisher::connect(&vhost.url(), prefix).await?;
    let t0 = Instant::now();
    let messages = workload.messages.clone();
    let publishing = tokio::spawn(async move {
        publisher.send(&messages).await?;
        let secs = t0.elapsed().as_secs_f64();
        publisher.close().await?;
        anyhow::Ok(secs)
    });
    let deadline = t0 + Duration::from_secs(900);
    let (mut committed_secs, mut fhir_secs) = (None, None);
    let mut at_fhir = None;
    // Cheap polls (index-backed counts, twice a second): the database is
    // what is being measured.
    let dhis2_secs = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample(&mut last, &pids, &db_name);
        if committed_secs.is_none() && store.count_events().await? >= want {
            committed_secs = Some(t0.elapsed().as_secs_f64());
        }
        if committed_secs.is_some() {
            let b = store.backlog().await?;
            if fhir_secs.is_none() && b.fhir_pending + b.fhir_retrying + b.fhir_delivering == 0 {
                fhir_secs = Some(t0.elapsed().as_secs_f64());
                at_fhir = Some(last.clone());
            }
            if fhir_secs.is_some() && b.dhis2_pending == 0 {
                break t0.elapsed().as_secs_f64();
            }
        }
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            bail!("not done in 900 s: {:?}", store.backlog().await?);
        }
    };
    // The throughput and CPU figures run until the last FHIR bundle.
    let secs = fhir_secs.unwrap_or(dhis2_secs);
    let last = at_fhir.unwrap_or(last);
    let publish_secs = publishing.await??;
    let bundles = store
        .outbox_states()
        .await?
        .into_iter()
        .find(|(state, _)| state == "delivered")
        .map_or(0, |(_, n)| n);

    let mut per_replica_events = Vec::new();
    for port in &ports {
        per_replica_events.push(events_committed(*port));
    }
    for c in &mut children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let texts: Vec<String> = logs
        .iter()
        .map(|l| strip_ansi(&std::fs::read_to_string(l).unwrap_or_default()))
        .collect();
    let deadlocks = texts
        .iter()
        .map(|t| t.matches("deadlock detected").count())
        .sum();
    // By message (without fields): count and the first line in full.
    let mut warnings: HashMap<String, (usize, String)> = HashMap::new();
    for line in texts.iter().flat_map(|t| t.lines()) {
        if let Some((_, rest)) = line.split_once(" WARN ") {
            // `target: message key=value ...`: the message without fields.
            let head = rest.split_once('=').map_or(rest, |(h, _)| h);
            let message = head.rsplit_once(' ').map_or(head, |(m, _)| m).trim();
            let e = warnings
                .entry(message.to_owned())
                .or_insert_with(|| (0, rest.chars().take(300).collect()));
            e.0 += 1;
        }
    }
    let mut warnings: Vec<(usize, String)> = warnings.into_values().collect();
    warnings.sort_by_key(|w| std::cmp::Reverse(w.0));
    sandbox.stop().await;
    store.close().await;
    let (busy, total) = (
        last.machine.0 - before.machine.0,
        last.machine.1 - before.machine.1,
    );
    let cpu = delta(&before, &last);
    let other = (busy - cpu.values().sum::<f64>()).max(0.0);
    Ok(Run {
        other,
        replicas: n_replicas,
        committed_secs: committed_secs.unwrap_or(secs),
        dhis2_secs,
        publish_secs,
        secs,
        bundles,
        cpu,
        machine_busy: if total > 0.0 { busy / total } else { 0.0 },
        per_replica_events,
        deadlocks,
        warnings,
    })
}

/// `kiungo_events_total` of a replica (its `/metrics`).
fn events_committed(port: u16) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with("kiungo_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiungo::tls::install_crypto_provider();
    let args = args()?;
    let bin = std::env::current_exe()?.with_file_name("kiungo");
    if !bin.exists() {
        bail!("{} missing: cargo build --release -p kiungo", bin.display());
    }
    let mappings = load_mappings(&packs_dir())?;
    let workload = generate_with(
        &mappings,
        args.events,
        7,
        Mix {
            duplicates: 0.0,
            edits: 0.0,
            poison: 0.0,
        },
    )?;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "{} events, {cores} cores, FHIR simulator latency {:?}, FHIR concurrency {} per replica",
        workload.messages.len(),
        args.fhir_latency,
        args.concurrency
    );
    let mut runs = Vec::new();
    for &r in &args.replicas {
        let run = run(r, &workload, &args, &bin).await?;
        let c = |g: &str| run.cpu.get(g).copied().unwrap_or(0.0);
        let kiungo: f64 = (0..run.replicas).map(|i| c(&format!("replica{i}"))).sum();
        println!(
            "{} replica(s): all FHIR bundles delivered after {:.1} s ({:.0} events/s); published in {:.1} s, all committed after {:.1} s, DHIS2 done after {:.1} s, {} bundles delivered; \
             CPU s: kiungo {kiungo:.1} ({}), PostgreSQL {:.1} + {:.1} server, RabbitMQ {:.1}, bench {:.1}; \
             machine busy {:.0}% (others {:.1} CPU s); events per replica {:?}; {} commits retried after a deadlock",
            run.replicas,
            run.secs,
            workload.messages.len() as f64 / run.secs,
            run.publish_secs,
            run.committed_secs,
            run.dhis2_secs,
            run.bundles,
            (0..run.replicas)
                .map(|i| format!("{:.1}", c(&format!("replica{i}"))))
                .collect::<Vec<_>>()
                .join(" + "),
            c("pg_backends"),
            c("pg_server"),
            c("rabbitmq"),
            c("bench"),
            run.machine_busy * 100.0,
            run.other,
            run.per_replica_events,
            run.deadlocks,
        );
        for (n, first) in run.warnings.iter().take(6) {
            println!("    {n} × WARN, first: {first}");
        }
        runs.push(run);
    }
    println!();
    println!(
        "| replicas | all committed | all FHIR bundles delivered | events/s end to end | last DHIS2 total pushed | kiungo CPU s | PostgreSQL CPU s | RabbitMQ CPU s | simulators + publisher CPU s | other processes CPU s | both cores busy | deadlock retries |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for run in &runs {
        let c = |g: &str| run.cpu.get(g).copied().unwrap_or(0.0);
        let kiungo: f64 = (0..run.replicas).map(|i| c(&format!("replica{i}"))).sum();
        println!(
            "| {} | {:.1} s | {:.1} s | {:.0} | {:.1} s | {kiungo:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} % | {} |",
            run.replicas,
            run.committed_secs,
            run.secs,
            workload.messages.len() as f64 / run.secs,
            run.dhis2_secs,
            c("pg_backends") + c("pg_server"),
            c("rabbitmq"),
            c("bench"),
            run.other,
            run.machine_busy * 100.0,
            run.deadlocks,
        );
    }
    Ok(())
}
