//! `kiungo-loadgen`: measures consume-map-commit-ack throughput and memory
//! of the `kiungo` binary against a bare consumer that only acks, side by
//! side in one run on the same broker.
//!
//! For each of the two consumers it fills the queues with the same N
//! events (the shipped packs, via the workload generator, published the
//! same way), then drains them: the bare consumer in-process, Kiungo as a
//! child process (`target/release/kiungo run`) whose peak resident memory
//! is read from `/proc`.
//!
//! The bare consumer is a plain lapin consumer of the same four
//! queues: one connection (as Kiungo), one channel per queue with Kiungo's
//! prefetch, one task per queue so that the queues drain concurrently, and
//! one `basic.ack` per delivery (not `multiple`) with nothing else done to
//! the message. A queue's task takes its next delivery without waiting for
//! the previous ack to reach the socket (Kiungo does not wait on its acks
//! either); every ack is still awaited before the clock stops. Both clocks
//! start when every consumer is registered (Kiungo: when `/readyz`
//! answers, which it does from that point) and stop when the last message
//! is done with (bare: its ack is written; Kiungo: its event is in the
//! store, seen by a poll every 100 ms).
//!
//! Each side's CPU time is also read from `/proc` over the same interval
//! (the loadgen process for the bare consumer, Kiungo's process for
//! Kiungo; the broker's own CPU in neither): CPU per message does not
//! depend on what else the machine runs, so the CPU share stays
//! comparable between runs where the rates are not.
//!
//! ```text
//! cargo build --release -p kiungo -p kiungo-tests
//! target/release/kiungo-loadgen --events 50000 --prefetch 500 --store sqlite
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Store};
use kiungo_tests::harness::{Vhost, publish, queue_for, wait_ready};
use kiungo_tests::workload::{Mix, generate_with, load_mappings, packs_dir};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

const SOURCES: [&str; 4] = ["cht", "commcare", "kobo", "inhouse"];

struct Args {
    events: usize,
    prefetch: u16,
    backend: Backend,
    duplicates: f64,
    edits: f64,
    batch: usize,
    memory_limit: Option<String>,
    max_wait: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 50_000,
        prefetch: 500,
        backend: Backend::Sqlite,
        duplicates: 0.0,
        edits: 0.0,
        batch: 500,
        memory_limit: None,
        max_wait: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--prefetch" => a.prefetch = value()?.parse()?,
            "--duplicates" => a.duplicates = value()?.parse()?,
            "--edits" => a.edits = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--memory-limit" => a.memory_limit = Some(value()?),
            "--max-wait" => a.max_wait = Some(value()?),
            "--store" => a.backend = kiungo_tests::harness::parse_store(&value()?)?,
            other => bail!(
                "unknown flag {other}; flags: --events N --prefetch P --store sqlite|postgres --duplicates F --edits F --batch N --max-wait DURATION --memory-limit SIZE"
            ),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mappings = load_mappings(&packs_dir())?;
    let workload = generate_with(
        &mappings,
        args.events,
        42,
        Mix {
            duplicates: args.duplicates,
            edits: args.edits,
            poison: 0.0,
        },
    )?;
    let n = workload.messages.len();
    let bytes: usize = workload.messages.iter().map(|m| m.body.len()).sum();
    println!(
        "workload: {n} events, {:.0} bytes average",
        bytes as f64 / n as f64
    );

    // Bare consumer.
    let vhost = Vhost::new()?;
    let prefix = "loadgen";
    let t = Instant::now();
    publish(&vhost.url(), prefix, &workload.messages).await?;
    println!(
        "published {n} in {:.1} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let (bare, bare_cpu) = bare_consumer(&vhost.url(), prefix, args.prefetch, &workload).await?;
    let per_message = |cpu: Option<f64>| cpu.map(|c| 1e6 * c / n as f64);
    let bare_us = per_message(bare_cpu);
    println!(
        "bare consumer (ack only): {bare:.0} msg/s, {} CPU µs per message",
        show(bare_us)
    );

    // Kiungo.
    publish(&vhost.url(), prefix, &workload.messages).await?;
    let db = ScratchDb::new(args.backend).await?;
    let (rate, kiungo_cpu, peak_rss_kb, hwm_kb) = kiungo(
        &vhost.url(),
        prefix,
        &db,
        args.prefetch,
        args.batch,
        &extra_config(&args),
        &workload,
    )
    .await?;
    println!(
        "kiungo ({:?}): {rate:.0} events/s = {:.0}% of bare; peak RSS {:.1} MB (VmHWM {:.1} MB)",
        args.backend,
        100.0 * rate / bare,
        peak_rss_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0
    );
    let kiungo_us = per_message(kiungo_cpu);
    let cpu_share = bare_us
        .zip(kiungo_us)
        .map(|(b, k)| format!("{:.0}%", 100.0 * b / k))
        .unwrap_or_else(|| "?".into());
    println!(
        "kiungo CPU: {} µs per event; bare consumer's CPU per message is {cpu_share} of it",
        show(kiungo_us)
    );
    println!(
        "| {n} | {} | {:?} | {bare:.0} | {rate:.0} | {:.0}% | {} | {} | {cpu_share} | {:.1} MB |",
        args.prefetch,
        args.backend,
        100.0 * rate / bare,
        show(bare_us),
        show(kiungo_us),
        hwm_kb as f64 / 1024.0
    );
    Ok(())
}

/// A figure to one decimal, or `?` where `/proc` could not be read.
fn show(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "?".into())
}

/// Drains the queues with one channel and one task per queue, acking each
/// delivery on its own, and returns messages per second from the moment
/// every consumer is registered until the last ack is written, and the
/// CPU seconds this process spent meanwhile.
async fn bare_consumer(
    url: &str,
    prefix: &str,
    prefetch: u16,
    workload: &kiungo_tests::workload::Workload,
) -> anyhow::Result<(f64, Option<f64>)> {
    let n = workload.messages.len();
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut queues = Vec::new();
    for s in SOURCES {
        let want = workload.messages.iter().filter(|m| m.source == s).count();
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue_for(prefix, s).into(),
                "bare".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        queues.push((channel, consumer, want));
    }
    let wanted: usize = queues.iter().map(|(_, _, want)| want).sum();
    if wanted != n {
        bail!(
            "{} of {n} messages are for queues Kiungo does not consume",
            n - wanted
        );
    }
    // t0: every consumer is registered, the point from which Kiungo's
    // `/readyz` answers.
    let t0 = Instant::now();
    let cpu0 = kiungo_tests::harness::process_cpu_seconds("self");
    let tasks = queues
        .into_iter()
        .map(|(channel, consumer, want)| tokio::spawn(drain(channel, consumer, want)));
    let acked: usize = tokio::time::timeout(
        Duration::from_secs(600),
        futures_util::future::try_join_all(tasks),
    )
    .await
    .context("bare consumer did not finish in 600 s")??
    .into_iter()
    .sum::<anyhow::Result<usize>>()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = kiungo_tests::harness::process_cpu_since("self", cpu0);
    conn.close(200, "done".into()).await?;
    Ok((acked as f64 / secs, cpu))
}

/// Acks `want` deliveries of one queue, each with its own `basic.ack`, and
/// returns how many were acked. The next delivery is taken while earlier
/// acks are still being written; the acks are polled first, so each ack's
/// frame goes out on the loop's next turn after its delivery came in.
async fn drain(channel: Channel, mut consumer: Consumer, want: usize) -> anyhow::Result<usize> {
    let mut acks = FuturesUnordered::new();
    let (mut received, mut acked) = (0, 0);
    while acked < want {
        tokio::select! {
            biased;
            Some(ack) = acks.next() => {
                ack?;
                acked += 1;
            }
            delivery = consumer.next(), if received < want => {
                let delivery = delivery.context("consumer stream ended")??;
                acks.push(channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()));
                received += 1;
            }
            else => bail!("nothing left to receive or ack after {acked} of {want}"),
        }
    }
    Ok(acked)
}

fn kiungo_release_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("kiungo");
    if !bin.exists() {
        bail!("{} missing: cargo build --release -p kiungo", bin.display());
    }
    Ok(bin)
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Config lines the flags add: `ingest.max_wait` (in the `ingest:`
/// block the config ends with) and `memory_limit`.
fn extra_config(args: &Args) -> String {
    let mut out = String::new();
    if let Some(wait) = &args.max_wait {
        out.push_str(&format!("  max_wait: {wait}\n"));
    }
    if let Some(limit) = &args.memory_limit {
        out.push_str(&format!("memory_limit: {limit}\n"));
    }
    out
}

async fn kiungo(
    url: &str,
    prefix: &str,
    db: &ScratchDb,
    prefetch: u16,
    batch: usize,
    extra: &str,
    workload: &kiungo_tests::workload::Workload,
) -> anyhow::Result<(f64, Option<f64>, u64, u64)> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let key = dir.path().join("key");
    std::fs::write(&key, "kiungo-loadgen-pseudonym-key-0123456789abcdef")?;
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for(prefix, s)
        ));
    }
    let config = dir.path().join("kiungo.yaml");
    std::fs::write(
        &config,
        format!(
            "mappings: {}\npseudonym_key_file: {}\nstore:\n  url: {}\nrabbitmq:\n  url: {url}\n  prefetch: {prefetch}\n  queues:\n{queues}http:\n  listen: 127.0.0.1:{port}\ningest:\n  max_events: {batch}\n{extra}",
            packs_dir().display(),
            key.display(),
            db.config.url,
        ),
    )?;
    let mut child = std::process::Command::new(kiungo_release_binary()?)
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("KIUNGO_LOADGEN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    let pid = child.id();
    // t0: the service answers /readyz.
    if let Err(e) = wait_ready(port, Duration::from_secs(30)).await {
        let _ = child.kill();
        return Err(e);
    }
    let t0 = Instant::now();
    let cpu0 = kiungo_tests::harness::process_cpu_seconds(&pid.to_string());
    let store = Store::open(&db.config).await?;
    let want = workload
        .messages
        .iter()
        .filter_map(|m| m.key.as_ref())
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kb(pid, "VmRSS:").unwrap_or(0));
        let done = store.count_events().await?;
        if done >= want {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            bail!("kiungo did not finish in 600 s: {done} of {want} events stored");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = kiungo_tests::harness::process_cpu_since(&pid.to_string(), cpu0);
    let hwm = rss_kb(pid, "VmHWM:").unwrap_or(0);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Ok((workload.messages.len() as f64 / secs, cpu, peak, hwm))
}
